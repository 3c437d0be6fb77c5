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
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use crate::proto::sip::{self, rsip::SipMessage};
use crate::util::RateLimit;

/// Where a message came from, and so where its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Udp(SocketAddr),
    Tcp { conn: u64, addr: SocketAddr },
}

impl Peer {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Peer::Udp(a) | Peer::Tcp { addr: a, .. } => *a,
        }
    }
    pub fn reliable(&self) -> bool {
        matches!(self, Peer::Tcp { .. })
    }
    pub fn via(&self) -> &'static str {
        if self.reliable() {
            "TCP"
        } else {
            "UDP"
        }
    }
}

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
    let tcp = TcpListener::bind(listen).await?;
    let bound = tcp.local_addr()?;
    let domain = if bound.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let udp = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Big catalogs arrive as IP-fragmented datagrams (wvp #853): a roomy buffer helps.
    let _ = udp.set_recv_buffer_size(4 * 1024 * 1024);
    udp.set_nonblocking(true)?;
    udp.bind(&bound.into())?;
    Ok((UdpSocket::from_std(udp.into())?, tcp, bound))
}

/// Starts the socket tasks; returns the sender and the queue of parsed messages.
pub fn start(
    udp: UdpSocket,
    tcp: TcpListener,
    max_tcp: usize,
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
    tokio::spawn(tcp_accept(tcp, sender.clone(), tx, max_tcp, shutdown));
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
    max: usize,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(max));
    let next_id = AtomicU64::new(1);
    loop {
        let (socket, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => { warn!("SIP TCP accept error: {e}"); tokio::time::sleep(Duration::from_millis(100)).await; continue; }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            sender.counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let conn = next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, tx, shutdown) = (sender.clone(), tx.clone(), shutdown.clone());
        tokio::spawn(
            async move {
                tcp_connection(socket, addr, conn, sender.clone(), tx.clone(), shutdown).await;
                sender.tcp.lock().unwrap_or_else(|e| e.into_inner()).remove(&conn);
                let _ = tx.try_send(Inbound::Closed(conn));
                drop(permit);
            }
            .instrument(tracing::info_span!("sip_tcp", peer = %addr)),
        );
    }
}

async fn tcp_connection(
    socket: TcpStream,
    addr: SocketAddr,
    conn: u64,
    sender: Arc<SipSender>,
    tx: mpsc::Sender<Inbound>,
    stop: CancellationToken,
) {
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
    let peer = Peer::Tcp { conn, addr };
    let reader = async {
        let mut frames = FramedRead::new(rd, BoundedSipCodec(SipCodec::new()));
        while let Some(item) = frames.next().await {
            match item {
                Ok(SipCodecType::Message(msg)) => {
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
        if let Some(end) = src.windows(4).position(|w| w == b"\r\n\r\n") {
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
