//! SIP sockets: UDP and TCP on one address. Parsed messages go to the signalling task through a
//! bounded queue (a flood fills it and is dropped at the socket, never buffered without limit);
//! TCP is framed with rsipstack's `SipCodec` (Content-Length, 64 KiB cap).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use rsipstack::transport::stream::{SipCodec, SipCodecType};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use crate::proto::sip::{self, rsip::SipMessage};
use crate::util::admit::{Admission, Ticket};
use crate::util::RateLimit;

pub use super::core::Peer;

pub enum Inbound {
    Message(Box<SipMessage>, Peer),
    Closed(u64),
}

#[derive(Debug, Default, serde::Serialize)]
pub struct SipCounters {
    pub received: AtomicU64,
    pub malformed: AtomicU64,
    pub queue_drops: AtomicU64,
    pub tcp_refused: AtomicU64,
}

/// Sends bytes to a peer: UDP directly, TCP through the connection's writer queue.
pub struct SipSender {
    udp: Arc<UdpSocket>,
    tcp: Mutex<HashMap<u64, mpsc::Sender<Bytes>>>,
    pub counters: Arc<SipCounters>,
    /// Lines a TCP peer can trigger, for all connections together.
    log: Mutex<RateLimit>,
    /// Messages queued to TCP connections and not written yet (what `flush` waits for).
    tcp_unwritten: AtomicUsize,
}

impl SipSender {
    pub fn send(&self, peer: Peer, bytes: Vec<u8>) {
        match peer {
            Peer::Udp(addr) => {
                if let Err(e) = self.udp.try_send_to(&bytes, addr) {
                    debug!(%addr, "SIP UDP send failed: {e}");
                }
            }
            Peer::Tcp { conn, addr } => {
                let tx = self.tcp.lock().unwrap_or_else(|e| e.into_inner()).get(&conn).cloned();
                match tx {
                    Some(tx) => {
                        self.tcp_unwritten.fetch_add(1, Ordering::Relaxed);
                        if tx.try_send(Bytes::from(bytes)).is_err() {
                            self.tcp_unwritten.fetch_sub(1, Ordering::Relaxed);
                            debug!(%addr, "SIP TCP queue full or closed; message dropped");
                        }
                    }
                    None => debug!(%addr, "SIP TCP connection gone; message dropped"),
                }
            }
        }
    }

    /// Waits until every TCP connection's queue is written out (or `limit` passed).
    pub async fn flush(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.tcp_unwritten.load(Ordering::Relaxed) == 0 || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn has_conn(&self, conn: u64) -> bool {
        self.tcp.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&conn)
    }
}

pub async fn bind(listen: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener, SocketAddr)> {
    crate::util::bind_same_port(listen, || bind_once(listen))
}

fn bind_once(listen: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener, SocketAddr)> {
    let tcp = std::net::TcpListener::bind(listen)?;
    tcp.set_nonblocking(true)?;
    let tcp = TcpListener::from_std(tcp)?;
    let bound = tcp.local_addr()?;
    let domain = if bound.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let udp = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Big catalogs arrive as IP-fragmented datagrams (wvp #853): a roomy buffer helps.
    let _ = udp.set_recv_buffer_size(4 * 1024 * 1024);
    udp.set_nonblocking(true)?;
    udp.bind(&bound.into())?;
    Ok((UdpSocket::from_std(udp.into())?, tcp, bound))
}

/// How SIP over TCP admits and times out connections (issue 8, hole 12).
#[derive(Clone)]
pub struct TcpLimits {
    /// Global and per-source caps; pending connections (no whole message yet) give way first.
    pub admission: Arc<Admission>,
    /// The first whole message must arrive within this.
    pub request_timeout: Duration,
    /// Later, a whole message at least this often (bytes that never make a message do not count).
    pub idle_timeout: Duration,
}

/// Starts the socket tasks; returns the sender and the queue of parsed messages.
pub fn start(
    udp: UdpSocket,
    tcp: TcpListener,
    limits: TcpLimits,
    queue: usize,
    shutdown: CancellationToken,
) -> (Arc<SipSender>, mpsc::Receiver<Inbound>) {
    let udp = Arc::new(udp);
    let sender = Arc::new(SipSender {
        udp: udp.clone(),
        tcp: Mutex::new(HashMap::new()),
        counters: Arc::default(),
        log: Mutex::new(RateLimit::new(Duration::from_secs(10))),
        tcp_unwritten: AtomicUsize::new(0),
    });
    let (tx, rx) = mpsc::channel(queue);
    tokio::spawn(udp_loop(udp, sender.clone(), tx.clone(), shutdown.clone()));
    tokio::spawn(tcp_accept(tcp, sender.clone(), tx, limits, shutdown));
    (sender, rx)
}

async fn udp_loop(udp: Arc<UdpSocket>, sender: Arc<SipSender>, tx: mpsc::Sender<Inbound>, shutdown: CancellationToken) {
    let mut buf = vec![0u8; 65_536];
    let mut bad_log = RateLimit::new(Duration::from_secs(10));
    loop {
        let (n, from) = tokio::select! {
            r = udp.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => { debug!("SIP UDP receive error: {e}"); continue; }
            },
            _ = shutdown.cancelled() => return,
        };
        let data = &buf[..n];
        // CRLF keepalives (RFC 5626) and stray bytes.
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        sender.counters.received.fetch_add(1, Ordering::Relaxed);
        match sip::parse(data) {
            Ok(msg) => {
                if tx.try_send(Inbound::Message(Box::new(msg), Peer::Udp(from))).is_err() {
                    sender.counters.queue_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                sender.counters.malformed.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = bad_log.check(Instant::now()) {
                    warn!(peer = %from, suppressed, "malformed SIP datagram dropped: {e}");
                }
            }
        }
    }
}

async fn tcp_accept(
    listener: TcpListener,
    sender: Arc<SipSender>,
    tx: mpsc::Sender<Inbound>,
    limits: TcpLimits,
    shutdown: CancellationToken,
) {
    let next_id = AtomicU64::new(1);
    let mut refused_log = RateLimit::new(Duration::from_secs(10));
    loop {
        let (socket, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => { warn!("SIP TCP accept error: {e}"); tokio::time::sleep(Duration::from_millis(100)).await; continue; }
            },
            _ = shutdown.cancelled() => return,
        };
        let ticket = match limits.admission.admit(addr.ip()) {
            Ok(t) => t,
            Err(e) => {
                sender.counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = refused_log.check(Instant::now()) {
                    warn!(peer = %addr, suppressed, "SIP TCP connection refused: {e}");
                }
                continue;
            }
        };
        let conn = next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, tx, shutdown, limits) = (sender.clone(), tx.clone(), shutdown.clone(), limits.clone());
        tokio::spawn(
            async move {
                tokio::select! {
                    // `shutdown` is handled inside: the last BYEs are still written on stop.
                    _ = tcp_connection(socket, Peer::Tcp { conn, addr }, sender.clone(), tx.clone(), shutdown, &ticket, &limits) => {}
                    _ = ticket.evicted.cancelled() => debug!("SIP TCP connection evicted: no message yet and the listener is full"),
                }
                sender.tcp.lock().unwrap_or_else(|e| e.into_inner()).remove(&conn);
                let _ = tx.try_send(Inbound::Closed(conn));
                drop(ticket);
            }
            .instrument(tracing::info_span!("sip_tcp", peer = %addr)),
        );
    }
}

async fn tcp_connection(
    socket: TcpStream,
    peer: Peer,
    sender: Arc<SipSender>,
    tx: mpsc::Sender<Inbound>,
    stop: CancellationToken,
    ticket: &Ticket,
    limits: &TcpLimits,
) {
    let Peer::Tcp { conn, .. } = peer else { return };
    let (rd, mut wr) = socket.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(256);
    sender.tcp.lock().unwrap_or_else(|e| e.into_inner()).insert(conn, out_tx);
    let written = sender.clone();
    let writer = async move {
        // On stop, what is queued (the core's last BYEs) is still written, then the
        // connection closes.
        let mut stopping = false;
        loop {
            let b = if stopping {
                out_rx.try_recv().ok()
            } else {
                tokio::select! {
                    b = out_rx.recv() => b,
                    _ = stop.cancelled() => { stopping = true; continue; }
                }
            };
            let Some(b) = b else { break };
            let ok = tokio::time::timeout(Duration::from_secs(10), wr.write_all(&b)).await.is_ok_and(|r| r.is_ok());
            written.tcp_unwritten.fetch_sub(1, Ordering::Relaxed);
            if !ok {
                break;
            }
        }
        // Queued and never written: not waited for.
        while out_rx.try_recv().is_ok() {
            written.tcp_unwritten.fetch_sub(1, Ordering::Relaxed);
        }
    };
    let reader = async {
        let mut frames = FramedRead::new(rd, BoundedSipCodec(SipCodec::new()));
        // The deadline runs from the last whole message, so a peer dripping bytes that never make
        // one cannot hold its slot (a read timeout would restart with every byte).
        let mut wait = limits.request_timeout;
        loop {
            let item = match tokio::time::timeout(wait, frames.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => return,
                Err(_) => {
                    ticket.timed_out();
                    debug!(timeout = ?wait, "SIP over TCP: no whole message in time; closing");
                    return;
                }
            };
            match item {
                Ok(SipCodecType::Message(msg)) => {
                    ticket.established();
                    wait = limits.idle_timeout;
                    sender.counters.received.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = sip::validate(&msg) {
                        sender.counters.malformed.fetch_add(1, Ordering::Relaxed);
                        debug!("malformed SIP message dropped: {e}");
                        continue;
                    }
                    if tx.send(Inbound::Message(Box::new(msg), peer)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // Framing is lost (bad Content-Length, message over 64 KiB): close.
                    sender.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    let ok = sender.log.lock().unwrap_or_else(|e| e.into_inner()).check(Instant::now());
                    if let Some(suppressed) = ok {
                        warn!(suppressed, "SIP over TCP: {e}; closing");
                    }
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
}

/// rsipstack's `SipCodec`, after a check of the Content-Length it adds unchecked to the header
/// length (a value near `usize::MAX` overflows there): above [`sip::MAX_MESSAGE`], or not a
/// number, the connection's framing is refused before the inner codec sees it.
struct BoundedSipCodec(SipCodec);

/// The Content-Length of a header block (full or compact name), `Some(Err)` when unusable.
fn content_length(head: &[u8]) -> Option<Result<usize, ()>> {
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let v = std::str::from_utf8(line[colon + 1..].trim_ascii()).unwrap_or("x");
            return Some(
                sip::clamped_number(v, sip::MAX_MESSAGE as u64 + 1)
                    .filter(|n| *n <= sip::MAX_MESSAGE as u64)
                    .map(|n| n as usize)
                    .ok_or(()),
            );
        }
    }
    None
}

impl tokio_util::codec::Decoder for BoundedSipCodec {
    type Item = SipCodecType;
    type Error = rsipstack::Error;

    fn decode(&mut self, src: &mut bytes::BytesMut) -> Result<Option<SipCodecType>, rsipstack::Error> {
        if let Some(end) = memchr::memmem::find(src, b"\r\n\r\n") {
            if let Some(Err(())) = content_length(&src[..end]) {
                return Err(rsipstack::Error::Error("Content-Length not a number up to 65535".into()));
            }
        }
        self.0.decode(src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::codec::Decoder;

    #[test]
    fn a_content_length_near_usize_max_is_refused_not_added() {
        let head = "MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP 1.2.3.4;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:a@b>\r\nCall-ID: 1\r\nCSeq: 1 MESSAGE\r\nContent-Length: ";
        for cl in ["18446744073709551615", "18446744073709551612", "65536", "-1", "x"] {
            let mut buf = bytes::BytesMut::from(format!("{head}{cl}\r\n\r\nabc").as_bytes());
            assert!(BoundedSipCodec(SipCodec::new()).decode(&mut buf).is_err(), "{cl}");
        }
        let mut buf = bytes::BytesMut::from(format!("{head}3\r\n\r\nabc").as_bytes());
        assert!(matches!(BoundedSipCodec(SipCodec::new()).decode(&mut buf), Ok(Some(SipCodecType::Message(_)))));
        let mut buf = bytes::BytesMut::from(format!("{head}10\r\n\r\nabc").as_bytes());
        assert!(matches!(BoundedSipCodec(SipCodec::new()).decode(&mut buf), Ok(None)), "waits for the body");
    }
}
