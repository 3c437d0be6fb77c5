//! RTSP pull: the tokio driver of one pull connection (D80-D83). The protocol lives in the sans-IO
//! [`crate::proto::rtsp_client`]; payloads in [`crate::proto::rtp_depack`]; RTCP statistics and
//! receiver reports in [`crate::proto::rtcp`]. This file owns the sockets and the clock.
//!
//! How the relay drives it (the relay owns attempts, backoff, the hub stream and idle stop):
//!
//! ```text
//! let mut pull = rtsp_pull::connect(url, &opts).await?;   // returns once PLAY succeeded
//! let cause = rtsp_pull::run(&mut pull, |frame| publisher.frame(frame)).await;
//! pull.close().await;                                     // TEARDOWN (also sent on drop)
//! ```
//!
//! `next_frame` keeps the session alive (GET_PARAMETER or OPTIONS at half the session timeout,
//! RFC 2326 12.37) and sends an RTCP receiver report per track about every 5 s (RFC 3550 6.4.2),
//! over UDP to the server's RTCP port or interleaved on the track's odd channel. UDP packets
//! pass a reorder buffer (D81); only datagrams from the server's address are taken.
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::client::pull::{PullError, PullOptions, PullTransport};
use crate::frame::{Frame, MediaKind};
use crate::proto::rtcp;
use crate::proto::rtp::reorder::{ReorderBuffer, Reordered};
use crate::proto::rtp::RtpPacket;
use crate::proto::rtp_depack::Depacketizer;
use crate::proto::rtsp_client::{
    not_implemented, parse_url, redact, Client, ClientError, Incoming, Lower, Reader, Step, TrackTransport,
};
use crate::proto::sdp;
use crate::util::RateLimit;

/// Reorder ring per UDP track (packets) and how long a gap may wait for a late packet.
const REORDER_CAPACITY: usize = 512;
const REORDER_DELAY_US: u64 = 200_000;
/// UDP datagrams, and their bytes, queued between the socket readers and the session (beyond:
/// dropped, counted), so that a server flooding a pull that is not read costs bounded memory.
const UDP_QUEUE: usize = 2048;
const UDP_QUEUE_BYTES: usize = 4 << 20;
/// Largest UDP datagram taken (RTP over UDP stays under the path MTU; 64 KiB is the protocol bound).
const MAX_DATAGRAM: usize = 65_536;
/// Wait for the first video keyframe after PLAY, at least (a camera's GOP may be several seconds).
const MIN_KEYFRAME_WAIT: Duration = Duration::from_secs(10);
/// TCP reads are at most this big; the reader then holds at most one message beyond it.
const READ_CHUNK: usize = 64 * 1024;

/// Counters of one pull connection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PullStats {
    /// `tcp` or `udp`: the transport in use.
    pub transport: &'static str,
    /// The first transport was refused (461) and the other one is in use.
    pub fell_back: bool,
    /// RTP packets and their bytes (whole packets, headers included).
    pub packets: u64,
    pub bytes: u64,
    /// Sequence numbers lost (reorder buffer on UDP, sequence gaps on TCP).
    pub lost: u64,
    pub frames: u64,
    /// Video keyframes.
    pub keyframes: u64,
    pub rr_sent: u64,
    pub sr_received: u64,
    pub keepalives: u64,
    /// RTP/RTCP that could not be parsed, came from another address, or overflowed the queue.
    pub dropped: u64,
}

struct PullTrack {
    kind: MediaKind,
    depack: Depacketizer,
    transport: TrackTransport,
    rtcp: rtcp::Receiver,
    /// UDP only: the reorder buffer and where RTCP goes.
    reorder: Option<ReorderBuffer>,
    rtcp_socket: Option<Arc<UdpSocket>>,
    server_rtcp: Option<SocketAddr>,
    /// Receiver reports that left (the RTCP receiver counts the ones built).
    rr_sent: u64,
}

struct Datagram {
    track: usize,
    rtcp: bool,
    data: Bytes,
}

/// One playing RTSP pull.
pub struct RtspPull {
    name: String,
    peer: SocketAddr,
    rd: OwnedReadHalf,
    wr: Option<OwnedWriteHalf>,
    client: Client,
    reader: Reader,
    tracks: Vec<PullTrack>,
    udp_rx: Option<mpsc::Receiver<Datagram>>,
    udp_tasks: Vec<JoinHandle<()>>,
    udp_dropped: Arc<AtomicU64>,
    udp_queued: Arc<AtomicUsize>,
    frames: VecDeque<Frame>,
    stats: PullStats,
    epoch: Instant,
    timeout: Duration,
    last_media: Instant,
    play_at: Instant,
    keyframe_seen: bool,
    closed: bool,
    log: RateLimit,
    read_buf: BytesMut,
}

fn map_err(e: ClientError) -> PullError {
    match e {
        ClientError::Url(m) | ClientError::Protocol(m) => PullError::Protocol(m),
        ClientError::Auth(m) => PullError::Auth(m),
        ClientError::Status { status: 401 | 403, .. } => PullError::Auth(e.to_string()),
        ClientError::Status { .. } => PullError::Refused(e.to_string()),
        ClientError::SessionLost(m) => PullError::Ended(m),
    }
}

fn micros(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// Binds an even RTP port and the odd RTCP port above it (RFC 3550 11), on `ip`.
async fn bind_pair(ip: IpAddr) -> std::io::Result<(UdpSocket, UdpSocket)> {
    let mut last = None;
    for _ in 0..16 {
        let rtp = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let port = rtp.local_addr()?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        match UdpSocket::bind(SocketAddr::new(ip, port + 1)).await {
            Ok(rtcp) => return Ok((rtp, rtcp)),
            Err(e) => last = Some(e),
        }
    }
    // Any pair will do: the ports are named in SETUP, parity is a convention.
    let _ = last;
    Ok((UdpSocket::bind(SocketAddr::new(ip, 0)).await?, UdpSocket::bind(SocketAddr::new(ip, 0)).await?))
}

async fn write_bounded(wr: &mut OwnedWriteHalf, data: &[u8], timeout: Duration) -> Result<(), PullError> {
    match tokio::time::timeout(timeout, wr.write_all(data)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(PullError::Ended(format!("write: {e}"))),
        Err(_) => Err(PullError::NoAnswer(format!("write stalled for {timeout:?}"))),
    }
}

/// Connects, negotiates and plays `url`; returns once PLAY succeeded. Each step (TCP connect, each
/// answer) is bounded by `opts.timeout`.
pub async fn connect(url: &str, opts: &PullOptions) -> Result<RtspPull, PullError> {
    let u = parse_url(url).map_err(map_err)?;
    let name = redact(&u.url);
    let timeout = opts.timeout.max(Duration::from_millis(100));
    let (first, fallback) = match opts.transport {
        PullTransport::Auto => (Lower::Tcp, true),
        PullTransport::Tcp => (Lower::Tcp, false),
        PullTransport::Udp => (Lower::Udp, true),
    };
    let addrs = match tokio::time::timeout(timeout, tokio::net::lookup_host((u.host.as_str(), u.port))).await {
        Ok(Ok(a)) => a.collect::<Vec<_>>(),
        Ok(Err(e)) => return Err(PullError::Refused(format!("{name}: cannot resolve {}: {e}", u.host))),
        Err(_) => return Err(PullError::NoAnswer(format!("{name}: resolving {} timed out", u.host))),
    };
    let addr = *addrs.first().ok_or_else(|| PullError::Refused(format!("{name}: {} has no address", u.host)))?;
    let sock = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(PullError::Refused(format!("{name}: connect {addr}: {e}"))),
        Err(_) => return Err(PullError::NoAnswer(format!("{name}: connect {addr} timed out after {timeout:?}"))),
    };
    let _ = sock.set_nodelay(true);
    let local_ip = sock.local_addr().map(|a| a.ip()).map_err(|e| PullError::Ended(e.to_string()))?;
    let (mut rd, mut wr) = sock.into_split();
    let epoch = Instant::now();
    let ms = || epoch.elapsed().as_millis() as u64;
    let mut client = Client::new(u, first, fallback, rand::random());
    let mut reader = Reader::new();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut sdp_desc: Option<(sdp::Sdp, Vec<usize>)> = None;
    let mut udp: Vec<Option<(UdpSocket, UdpSocket)>> = Vec::new();
    write_bounded(&mut wr, &client.start(ms()), timeout).await?;
    // Each answer is due `timeout` after its request, however much else the server sends meanwhile.
    let mut deadline = tokio::time::Instant::now() + timeout;
    let negotiated: Result<(), PullError> = async {
        'play: loop {
            // The next message, within the deadline of the request in flight.
            let msg = loop {
                if let Some(m) = reader.next_message().map_err(map_err)? {
                    break m;
                }
                buf.clear();
                let n = match tokio::time::timeout_at(deadline, rd.read_buf(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => return Err(PullError::Ended(format!("{name}: read: {e}"))),
                    Err(_) => return Err(PullError::NoAnswer(format!("{name}: no answer within {timeout:?}"))),
                };
                if n == 0 {
                    return Err(PullError::Ended(format!("{name}: server closed the connection during setup")));
                }
                reader.push(&buf[..n]);
            };
            let answer = match msg {
                Incoming::Response(a) => a,
                Incoming::Request { cseq, .. } => {
                    write_bounded(&mut wr, &not_implemented(cseq), timeout).await?;
                    continue;
                }
                // Media before the PLAY answer is read: nothing is set up to take it yet.
                Incoming::Interleaved { .. } => continue,
            };
            debug!(stream = %name, status = answer.status, "RTSP answer");
            let mut step = client.on_response(answer, ms()).map_err(|e| {
                let e = map_err(e);
                match e {
                    PullError::Refused(m) => PullError::Refused(format!("{name}: {m}")),
                    PullError::Auth(m) => PullError::Auth(format!("{name}: {m}")),
                    PullError::Protocol(m) => PullError::Protocol(format!("{name}: {m}")),
                    other => other,
                }
            })?;
            loop {
                step = match step {
                    Step::Send(req) => {
                        write_bounded(&mut wr, &req, timeout).await?;
                        deadline = tokio::time::Instant::now() + timeout;
                        break;
                    }
                    Step::Idle => break,
                    Step::Playing => break 'play,
                    Step::Described { sdp: body, base } => {
                        let desc = sdp::parse(&body).map_err(|e| PullError::Protocol(format!("{name}: SDP: {e}")))?;
                        // The first video and the first audio track we can depacketize.
                        let mut chosen = Vec::new();
                        for kind in [sdp::MediaKind::Video, sdp::MediaKind::Audio] {
                            if let Some(i) =
                                desc.media.iter().position(|m| m.kind == kind && Depacketizer::new(m).is_ok())
                            {
                                chosen.push(i);
                            }
                        }
                        if chosen.is_empty() {
                            let encodings: Vec<&str> = desc.media.iter().map(|m| m.encoding.as_str()).collect();
                            return Err(PullError::Protocol(format!("{name}: no supported track in {encodings:?}")));
                        }
                        let urls = chosen.iter().map(|&i| desc.media[i].control_url(&base)).collect();
                        let aggregate = desc.control.as_deref().map(|c| sdp::resolve_control(&base, Some(c)));
                        udp = chosen.iter().map(|_| None).collect();
                        sdp_desc = Some((desc, chosen));
                        client.setup(urls, aggregate, ms()).map_err(map_err)?
                    }
                    Step::NeedUdpPorts { index } => {
                        let (rtp, rtcp) = bind_pair(local_ip)
                            .await
                            .map_err(|e| PullError::Protocol(format!("{name}: cannot bind UDP ports: {e}")))?;
                        let (a, b) = (
                            rtp.local_addr().map(|a| a.port()).unwrap_or(0),
                            rtcp.local_addr().map(|a| a.port()).unwrap_or(0),
                        );
                        if let Some(slot) = udp.get_mut(index) {
                            *slot = Some((rtp, rtcp));
                        }
                        Step::Send(client.udp_ports(index, a, b, ms()).map_err(map_err)?)
                    }
                };
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = negotiated {
        // A session set up before the failure would hold server resources until its timeout.
        if let Some(req) = client.teardown(ms()) {
            let _ = tokio::time::timeout(timeout, wr.write_all(&req)).await;
        }
        return Err(e);
    }
    let (desc, chosen) = sdp_desc.ok_or_else(|| PullError::Protocol(format!("{name}: PLAY before DESCRIBE")))?;
    let peer = rd.peer_addr().map_err(|e| PullError::Ended(e.to_string()))?;
    let own_ssrc: u32 = rand::random();
    let cname = format!("gbgate@{local_ip}");
    let (tx, udp_rx) = mpsc::channel(UDP_QUEUE);
    let udp_dropped = Arc::new(AtomicU64::new(0));
    let udp_queued = Arc::new(AtomicUsize::new(0));
    let mut tracks = Vec::new();
    let mut udp_tasks = Vec::new();
    for (i, (&m, t)) in chosen.iter().zip(client.tracks()).enumerate() {
        let media = &desc.media[m];
        let depack = Depacketizer::new(media).map_err(|e| PullError::Protocol(format!("{name}: {e}")))?;
        let kind = if media.kind == sdp::MediaKind::Video { MediaKind::Video } else { MediaKind::Audio };
        let transport = t.transport.ok_or_else(|| PullError::Protocol(format!("{name}: track {i} not set up")))?;
        let rtcp = rtcp::Receiver::new(own_ssrc, &cname, depack.clock_rate(), rtcp::REPORT_INTERVAL_US);
        let mut track = PullTrack {
            kind,
            depack,
            transport,
            rtcp,
            reorder: None,
            rtcp_socket: None,
            server_rtcp: None,
            rr_sent: 0,
        };
        if let TrackTransport::Udp { server_rtcp, .. } = transport {
            let (rtp_sock, rtcp_sock) = udp
                .get_mut(i)
                .and_then(Option::take)
                .ok_or_else(|| PullError::Protocol(format!("{name}: UDP track {i} has no sockets")))?;
            let rtcp_sock = Arc::new(rtcp_sock);
            track.reorder = Some(ReorderBuffer::new(REORDER_CAPACITY, REORDER_DELAY_US));
            track.server_rtcp = server_rtcp.map(|p| SocketAddr::new(peer.ip(), p));
            track.rtcp_socket = Some(rtcp_sock.clone());
            for (sock, is_rtcp) in [(Arc::new(rtp_sock), false), (rtcp_sock, true)] {
                let counters = (udp_dropped.clone(), udp_queued.clone());
                udp_tasks.push(tokio::spawn(udp_reader(sock, i, is_rtcp, peer.ip(), tx.clone(), counters)));
            }
        }
        tracks.push(track);
    }
    let fell_back = client.stats().fell_back.is_some();
    if let Some((from, to)) = client.stats().fell_back {
        info!(stream = %name, "the server refused RTP over {}, pulling over {}", from.name(), to.name());
    }
    info!(stream = %name, %peer, transport = client.lower().name(), tracks = tracks.len(), "RTSP pull playing");
    let now = Instant::now();
    let mut pull = RtspPull {
        stats: PullStats { transport: client.lower().name(), fell_back, ..Default::default() },
        name,
        peer,
        rd,
        wr: Some(wr),
        client,
        reader,
        tracks,
        udp_rx: (!udp_tasks.is_empty()).then_some(udp_rx),
        udp_tasks,
        udp_dropped,
        udp_queued,
        frames: VecDeque::new(),
        epoch,
        timeout,
        last_media: now,
        play_at: now,
        keyframe_seen: false,
        closed: false,
        log: RateLimit::new(Duration::from_secs(5)),
        read_buf: BytesMut::with_capacity(READ_CHUNK),
    };
    // Media read together with the PLAY answer is already in the reader.
    pull.drain_tcp().await?;
    Ok(pull)
}

/// Reads one UDP socket into the session's queue; only datagrams from the server's address.
async fn udp_reader(
    sock: Arc<UdpSocket>,
    track: usize,
    rtcp: bool,
    server: IpAddr,
    tx: mpsc::Sender<Datagram>,
    (dropped, queued): (Arc<AtomicU64>, Arc<AtomicUsize>),
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            // An ICMP error for a report we sent (a server without an RTCP socket) is not the
            // end of the media.
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset) =>
            {
                continue
            }
            Err(_) => return,
        };
        if from.ip() != server || queued.load(Ordering::Relaxed) + n > UDP_QUEUE_BYTES {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let d = Datagram { track, rtcp, data: Bytes::copy_from_slice(&buf[..n]) };
        queued.fetch_add(n, Ordering::Relaxed);
        match tx.try_send(d) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                queued.fetch_sub(n, Ordering::Relaxed);
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

impl RtspPull {
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The URL pulled, without credentials (for logs).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> PullStats {
        let mut s = self.stats.clone();
        s.rr_sent = self.tracks.iter().map(|t| t.rr_sent).sum();
        s.sr_received = self.tracks.iter().map(|t| t.rtcp.counters().sr_received).sum();
        s.keepalives = self.client.stats().keepalives;
        s.dropped += self.udp_dropped.load(Ordering::Relaxed);
        s.lost = self
            .tracks
            .iter()
            .map(|t| match &t.reorder {
                Some(r) => r.stats().lost,
                None => t.depack.stats().lost,
            })
            .sum();
        s
    }

    /// The next frame, as the source sent it. Errors end the pull: `Ended` (connection closed,
    /// no media for the timeout, session lost), `NoKeyframe` (video flows, no keyframe in time).
    pub async fn next_frame(&mut self) -> Result<Frame, PullError> {
        loop {
            if let Some(f) = self.frames.pop_front() {
                return Ok(f);
            }
            if self.closed {
                return Err(PullError::Ended(format!("{}: closed", self.name)));
            }
            let deadline = self.next_deadline();
            let sleep = tokio::time::sleep_until(deadline.into());
            tokio::select! {
                r = self.rd.read_buf(&mut self.read_buf) => {
                    match r {
                        Ok(0) => return Err(self.end(PullError::Ended(format!("{}: server closed the connection", self.name)))),
                        Ok(_) => {
                            self.reader.push(&self.read_buf);
                            self.read_buf.clear();
                            self.drain_tcp().await.map_err(|e| self.end(e))?;
                        }
                        Err(e) => return Err(self.end(PullError::Ended(format!("{}: read: {e}", self.name)))),
                    }
                }
                d = recv_opt(&mut self.udp_rx) => {
                    if let Some(d) = d {
                        self.on_datagram(d);
                    }
                }
                _ = sleep => {}
            }
            self.on_timers().await.map_err(|e| self.end(e))?;
        }
    }

    fn end(&mut self, e: PullError) -> PullError {
        warn!(stream = %self.name, "RTSP pull ended: {e}");
        e
    }

    fn next_deadline(&self) -> Instant {
        let mut at = self.last_media + self.timeout;
        let us = |t: u64| self.epoch + Duration::from_micros(t);
        if let Some(k) = self.client.next_keepalive_ms() {
            at = at.min(self.epoch + Duration::from_millis(k));
        }
        for t in &self.tracks {
            if let Some(r) = t.rtcp.poll_timeout() {
                at = at.min(us(r));
            }
            if let Some(r) = t.reorder.as_ref().and_then(|r| r.poll_timeout()) {
                at = at.min(us(r));
            }
        }
        if !self.keyframe_seen && self.tracks.iter().any(|t| t.kind == MediaKind::Video) {
            at = at.min(self.play_at + self.keyframe_wait());
        }
        at
    }

    fn keyframe_wait(&self) -> Duration {
        self.timeout.max(MIN_KEYFRAME_WAIT)
    }

    async fn on_timers(&mut self) -> Result<(), PullError> {
        let now = Instant::now();
        let now_us = micros(self.epoch);
        if now.duration_since(self.last_media) >= self.timeout {
            return Err(PullError::Ended(format!("{}: no media for {:?}", self.name, self.timeout)));
        }
        if !self.keyframe_seen
            && self.tracks.iter().any(|t| t.kind == MediaKind::Video)
            && now.duration_since(self.play_at) >= self.keyframe_wait()
        {
            return Err(PullError::NoKeyframe(format!(
                "{}: no video keyframe within {:?} of PLAY",
                self.name,
                self.keyframe_wait()
            )));
        }
        let mut out = Vec::new();
        for i in 0..self.tracks.len() {
            if let Some(r) = self.tracks[i].reorder.as_mut() {
                r.handle_timeout(now_us, &mut out);
                self.take_reordered(i, &mut out);
            }
        }
        if let Some(req) = self.client.poll_keepalive(now.duration_since(self.epoch).as_millis() as u64) {
            debug!(stream = %self.name, "RTSP keep-alive");
            self.write(&req).await?;
        }
        for i in 0..self.tracks.len() {
            let Some(rr) = self.tracks[i].rtcp.poll_report(now_us) else { continue };
            let t = &self.tracks[i];
            match (t.transport, &t.rtcp_socket, t.server_rtcp) {
                (TrackTransport::Tcp { rtcp_channel, .. }, _, _) => {
                    // RFC 2326 10.12: RTCP goes on the odd channel of the track.
                    let mut frame = Vec::with_capacity(4 + rr.len());
                    frame.extend_from_slice(&[b'$', rtcp_channel]);
                    frame.extend_from_slice(&(rr.len() as u16).to_be_bytes());
                    frame.extend_from_slice(&rr);
                    self.write(&frame).await?;
                    self.tracks[i].rr_sent += 1;
                }
                (TrackTransport::Udp { .. }, Some(sock), Some(to)) if sock.try_send_to(&rr, to).is_ok() => {
                    self.tracks[i].rr_sent += 1;
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), PullError> {
        let Some(wr) = self.wr.as_mut() else { return Ok(()) };
        write_bounded(wr, data, self.timeout).await
    }

    async fn drain_tcp(&mut self) -> Result<(), PullError> {
        loop {
            let msg = match self.reader.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(e) => return Err(PullError::Protocol(format!("{}: {e}", self.name))),
            };
            match msg {
                Incoming::Interleaved { channel, data } => self.on_interleaved(channel, data),
                Incoming::Response(a) => {
                    let now_ms = self.epoch.elapsed().as_millis() as u64;
                    if let Step::Send(req) = self.client.on_response(a, now_ms).map_err(map_err)? {
                        self.write(&req).await?;
                    }
                }
                Incoming::Request { cseq, .. } => self.write(&not_implemented(cseq)).await?,
            }
        }
    }

    fn on_interleaved(&mut self, channel: u8, data: Bytes) {
        let hit = self.tracks.iter().enumerate().find_map(|(i, t)| match t.transport {
            TrackTransport::Tcp { rtp_channel, .. } if rtp_channel == channel => Some((i, false)),
            TrackTransport::Tcp { rtcp_channel, .. } if rtcp_channel == channel => Some((i, true)),
            _ => None,
        });
        match hit {
            Some((track, rtcp)) => self.on_packet(track, rtcp, data),
            None => self.stats.dropped += 1,
        }
    }

    fn on_datagram(&mut self, d: Datagram) {
        self.udp_queued.fetch_sub(d.data.len(), Ordering::Relaxed);
        self.on_packet(d.track, d.rtcp, d.data);
    }

    fn on_packet(&mut self, i: usize, is_rtcp: bool, data: Bytes) {
        let now_us = micros(self.epoch);
        let Some(t) = self.tracks.get_mut(i) else { return };
        if is_rtcp {
            t.rtcp.on_rtcp(&data, now_us);
            return;
        }
        let len = data.len();
        let pkt = match RtpPacket::parse(data) {
            Ok(p) => p,
            Err(e) => {
                self.stats.dropped += 1;
                if let Some(n) = self.log.check(Instant::now()) {
                    debug!(stream = %self.name, suppressed = n, "bad RTP packet: {e}");
                }
                return;
            }
        };
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        self.last_media = Instant::now();
        t.rtcp.on_rtp(pkt.ssrc, pkt.seq, pkt.timestamp, now_us);
        let mut out = Vec::new();
        match t.reorder.as_mut() {
            Some(r) => {
                r.push(pkt, now_us, &mut out);
                self.take_reordered(i, &mut out);
            }
            None => self.depack(i, &pkt),
        }
    }

    fn take_reordered(&mut self, i: usize, out: &mut Vec<Reordered>) {
        for r in out.drain(..) {
            match r {
                Reordered::Packet(p) => self.depack(i, &p),
                Reordered::Lost { .. } => {}
                Reordered::Reset => self.tracks[i].depack.reset(),
            }
        }
    }

    fn depack(&mut self, i: usize, pkt: &RtpPacket) {
        let mut frames = Vec::new();
        self.tracks[i].depack.push(pkt, &mut frames);
        for f in frames {
            self.stats.frames += 1;
            if f.keyframe && f.kind() == MediaKind::Video {
                self.stats.keyframes += 1;
                self.keyframe_seen = true;
            }
            self.frames.push_back(f);
        }
    }

    /// Sends TEARDOWN (bounded by the timeout) and closes the connection.
    pub async fn close(mut self) {
        self.teardown().await;
    }

    async fn teardown(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if let (Some(req), Some(mut wr)) = (self.client.teardown(now_ms), self.wr.take()) {
            let _ = tokio::time::timeout(self.timeout, wr.write_all(&req)).await;
            let _ = wr.shutdown().await;
        }
    }
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<Datagram>>) -> Option<Datagram> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Drop for RtspPull {
    fn drop(&mut self) {
        for t in &self.udp_tasks {
            t.abort();
        }
        if self.closed {
            return;
        }
        // TEARDOWN from a task: Drop cannot wait (RFC 2326 10.7; the session would otherwise
        // hold server resources until its timeout).
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if let (Some(req), Some(mut wr), Ok(rt)) =
            (self.client.teardown(now_ms), self.wr.take(), tokio::runtime::Handle::try_current())
        {
            let timeout = self.timeout;
            rt.spawn(async move {
                let _ = tokio::time::timeout(timeout, wr.write_all(&req)).await;
                let _ = wr.shutdown().await;
            });
        }
    }
}

/// Pulls frames into `sink` until the pull ends; returns why. The relay calls this after
/// [`connect`] and owns what happens next (retry, backoff, idle stop).
pub async fn run(pull: &mut RtspPull, mut sink: impl FnMut(Frame)) -> PullError {
    loop {
        match pull.next_frame().await {
            Ok(f) => sink(f),
            Err(e) => return e,
        }
    }
}

// The relay moves pulls between tasks.
const _: fn() = || {
    fn is_send<T: Send>() {}
    is_send::<RtspPull>();
};
