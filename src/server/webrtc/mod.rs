//! WebRTC playback: ICE-lite sessions on one UDP port, one tokio task for all of them (D135).
//!
//! [`WebRtc::open`] (called by the WHEP handler) builds a str0m [`Rtc`] for an SDP offer and
//! answers it; the session then lives in the driver task, which owns the socket, every `Rtc`
//! and every session's hub subscription. Datagrams are routed by STUN USERNAME, then by source
//! address ([`demux`]). The `Rtc` instances are sans-IO: the driver only moves datagrams, frames
//! and `now` in and datagrams out.
pub mod audio;
pub mod demux;
pub mod session;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SelectAll, Stream as FStream, StreamExt};
use serde::Serialize;
use str0m::change::SdpOffer;
use str0m::media::{MediaKind as RtcKind, Mid};
use str0m::{Candidate, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::WebRtcConfig;
use crate::frame::{Codec, CodecConfig, Frame};
use crate::hub::{Stream, Subscription, SubscriptionEnded};
use session::{End, Limits, Session};

/// Why an offer was not answered.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("too many WebRTC sessions ({0}, webrtc.max_sessions)")]
    Full(usize),
    #[error("too many WebRTC sessions from this address ({0}, webrtc.max_sessions_per_source)")]
    FullSource(usize),
    #[error("bad SDP offer: {0}")]
    BadOffer(String),
    #[error("the offer has no codec this stream can be sent in ({0})")]
    NoCodec(String),
    #[error("the WebRTC driver is not running")]
    Stopped,
}

/// Counters of the WebRTC output.
#[derive(Debug, Default)]
pub struct WebRtcStats {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    pub refused_full: AtomicU64,
    pub timed_out: AtomicU64,
    pub unrouted_datagrams: AtomicU64,
    pub send_errors: AtomicU64,
    pub queue_drops: AtomicU64,
}

/// A snapshot for the API.
#[derive(Debug, Clone, Serialize)]
pub struct WebRtcSnapshot {
    pub listen: SocketAddr,
    pub sessions: usize,
    pub max_sessions: usize,
    pub opened: u64,
    pub closed: u64,
    pub refused_full: u64,
    pub timed_out: u64,
    pub unrouted_datagrams: u64,
    pub send_errors: u64,
    pub queue_drops: u64,
}

/// An answered offer.
#[derive(Debug)]
pub struct Opened {
    pub answer: String,
    pub resource: String,
}

enum Command {
    Add(Box<Session>, Subscription, oneshot::Sender<()>),
    Delete(String, String, oneshot::Sender<bool>),
}

/// The handle of the WebRTC output (shared by the WHEP handlers).
pub struct WebRtc {
    cfg: WebRtcConfig,
    local_addr: SocketAddr,
    cmd: mpsc::Sender<Command>,
    sessions: Arc<AtomicUsize>,
    per_source: PerSource,
    next_key: AtomicU64,
    cert: str0m::config::DtlsCert,
    crypto: Arc<str0m::crypto::CryptoProvider>,
    pub stats: Arc<WebRtcStats>,
}

impl WebRtc {
    /// Binds the UDP port and starts the driver.
    pub async fn start(cfg: &WebRtcConfig, shutdown: CancellationToken) -> std::io::Result<Arc<WebRtc>> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(cfg.listen),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        sock.set_nonblocking(true)?;
        // Bursts (a GOP from the cache to several players) should not meet a full buffer.
        let _ = sock.set_send_buffer_size(4 << 20);
        let _ = sock.set_recv_buffer_size(1 << 20);
        sock.bind(&cfg.listen.into())?;
        let socket = UdpSocket::from_std(sock.into())?;
        let local_addr = socket.local_addr()?;
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        let cert = crypto
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| std::io::Error::other("cannot generate the DTLS certificate"))?;
        let (tx, rx) = mpsc::channel(256);
        let stats = Arc::new(WebRtcStats::default());
        let sessions = Arc::new(AtomicUsize::new(0));
        let per_source = PerSource::default();
        let driver = Driver {
            socket,
            rx,
            sessions: HashMap::new(),
            by_resource: HashMap::new(),
            demux: demux::Demux::default(),
            frames: SelectAll::new(),
            schedule: std::collections::BTreeSet::new(),
            scheduled: HashMap::new(),
            cancel: HashMap::new(),
            count: sessions.clone(),
            per_source: per_source.clone(),
            stats: stats.clone(),
        };
        tokio::spawn(driver.run(shutdown));
        tracing::info!(%local_addr, "WebRTC (ICE-lite) listening");
        Ok(Arc::new(WebRtc {
            cfg: cfg.clone(),
            local_addr,
            cmd: tx,
            sessions,
            per_source,
            next_key: AtomicU64::new(1),
            cert,
            crypto,
            stats,
        }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Whether a new session would be refused.
    pub fn is_full(&self) -> bool {
        self.sessions() >= self.cfg.max_sessions
    }

    pub fn snapshot(&self) -> WebRtcSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.stats;
        WebRtcSnapshot {
            listen: self.local_addr,
            sessions: self.sessions(),
            max_sessions: self.cfg.max_sessions,
            opened: l(&s.opened),
            closed: l(&s.closed),
            refused_full: l(&s.refused_full),
            timed_out: l(&s.timed_out),
            unrouted_datagrams: l(&s.unrouted_datagrams),
            send_errors: l(&s.send_errors),
            queue_drops: l(&s.queue_drops),
        }
    }

    /// The addresses put in the answer's candidates for a player at `peer`.
    fn candidate_ips(&self, peer: SocketAddr) -> Vec<IpAddr> {
        if !self.cfg.advertise.is_empty() {
            return self.cfg.advertise.clone();
        }
        if !self.local_addr.ip().is_unspecified() {
            return vec![self.local_addr.ip()];
        }
        // Listening on every interface: the one the player is reached through.
        let probe = match peer {
            SocketAddr::V4(_) => std::net::UdpSocket::bind("0.0.0.0:0"),
            SocketAddr::V6(_) => std::net::UdpSocket::bind("[::]:0"),
        };
        let ip = probe.and_then(|s| s.connect(peer).and_then(|_| s.local_addr())).map(|a| a.ip());
        match ip {
            Ok(ip) if !ip.is_unspecified() => vec![ip],
            _ => vec![IpAddr::from([127, 0, 0, 1])],
        }
    }

    /// Answers `offer` for a player of `stream` at `peer`, and starts the session.
    pub async fn open(&self, offer: &str, stream: &Arc<Stream>, peer: SocketAddr) -> Result<Opened, OpenError> {
        if self.is_full() {
            self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err(OpenError::Full(self.cfg.max_sessions));
        }
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| OpenError::BadOffer(e.to_string()))?;
        let video = stream_video(stream);
        let now = Instant::now();
        let ufrag = random_token(8);
        let creds = str0m::IceCreds { ufrag: ufrag.clone(), pass: random_token(24) };
        let mut rtc_cfg = RtcConfig::new()
            .set_ice_lite(true)
            .set_local_ice_credentials(creds)
            .set_crypto_provider(self.crypto.clone())
            .set_dtls_cert(self.cert.clone())
            .clear_codecs()
            .enable_h264(true)
            .enable_pcma(true, false)
            .enable_pcmu(true, false);
        if video.is_some_and(|(c, _)| c == Codec::H265) {
            rtc_cfg = rtc_cfg.enable_h265(true);
        }
        let mut rtc = rtc_cfg.build(now);
        for ip in self.candidate_ips(peer) {
            let addr = SocketAddr::new(ip, self.local_addr.port());
            if let Ok(c) = Candidate::host(addr, "udp") {
                rtc.add_local_candidate(c);
            }
        }
        let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| OpenError::BadOffer(e.to_string()))?;
        // The negotiated media: str0m announces them as events only once DTLS is up, so they are
        // read from the answer (each m-line's kind and its a=mid).
        let answer_sdp = answer.to_sdp_string();
        let mids = answer_mids(&answer_sdp);
        let ulaw = stream.announced_audio().is_some_and(|(c, _)| c == Codec::G711U);
        let tracks = session::pick_tracks(&mut rtc, &mids, video, ulaw);
        tracing::debug!(stream = %stream.name, ?mids, ?video, ?tracks, "WHEP offer negotiated");
        if tracks.video.is_none() && tracks.audio.is_none() {
            let what = match video {
                Some((c, _)) => format!("{c} video, PCMA/PCMU audio"),
                None => "PCMA/PCMU audio".into(),
            };
            return Err(OpenError::NoCodec(what));
        }
        if video.is_some() && tracks.video.is_none() {
            let c = video.map(|(c, _)| c.to_string()).unwrap_or_default();
            return Err(OpenError::NoCodec(format!("{c} video")));
        }
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let resource = random_token(16);
        let limits = Limits {
            connect_timeout: self.cfg.connect_timeout.0,
            idle_timeout: self.cfg.idle_timeout.0,
            max_queue_bytes: self.cfg.max_queue_bytes,
            rate: self.cfg.max_bitrate as f64 / 8.0,
        };
        let s = Session::new(
            key,
            resource.clone(),
            ufrag,
            stream.name.clone(),
            peer,
            self.local_addr,
            rtc,
            tracks,
            limits,
            now,
        );
        // Counted before the driver has it, so that concurrent offers cannot pass the caps.
        if !self.per_source.take(peer.ip(), self.cfg.max_sessions_per_source) {
            self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err(OpenError::FullSource(self.cfg.max_sessions_per_source));
        }
        if self.sessions.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_sessions {
            self.sessions.fetch_sub(1, Ordering::Relaxed);
            self.per_source.give(peer.ip());
            self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err(OpenError::Full(self.cfg.max_sessions));
        }
        let sub = stream.subscribe_as("webrtc");
        let (ack, added) = oneshot::channel();
        if self.cmd.send(Command::Add(Box::new(s), sub, ack)).await.is_err() || added.await.is_err() {
            self.sessions.fetch_sub(1, Ordering::Relaxed);
            self.per_source.give(peer.ip());
            return Err(OpenError::Stopped);
        }
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Opened { answer: answer_sdp, resource })
    }

    /// Ends the session `resource` of `stream`; false when there is none.
    pub async fn close(&self, stream: &str, resource: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Delete(stream.to_string(), resource.to_string(), tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

/// The stream's video codec and profile, from its GOP cache, else its stats (profile unknown).
fn stream_video(stream: &Stream) -> Option<(Codec, u8)> {
    if let Some((codec, cfg)) = stream.cached_video() {
        let profile = match cfg.as_ref() {
            CodecConfig::Video(v) => v.profile,
            CodecConfig::Audio(_) => 0,
        };
        return Some((codec, profile));
    }
    let v = stream.stats().video?;
    Some((if v.codec == "h265" { Codec::H265 } else { Codec::H264 }, 0))
}

/// Runs `f` on one session; a panic inside str0m (peer bytes we did not foresee) ends that
/// session instead of the task that drives every other one.
fn guarded(s: &mut Session, f: impl FnOnce(&mut Session)) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(s))).is_err() {
        tracing::error!(stream = %s.stream, peer = %s.peer, "WebRTC session panicked; ended");
        s.ended = Some(End::Error);
    }
}

/// Sessions per player address (`webrtc.max_sessions_per_source`).
#[derive(Clone, Default)]
struct PerSource(Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>);

impl PerSource {
    fn take(&self, ip: IpAddr, max: usize) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn give(&self, ip: IpAddr) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Each m-line's mid and kind in an SDP.
fn answer_mids(sdp: &str) -> Vec<(Mid, RtcKind)> {
    let mut out = Vec::new();
    let mut kind = None;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            kind = match m.split(' ').next() {
                Some("video") => Some(RtcKind::Video),
                Some("audio") => Some(RtcKind::Audio),
                _ => None,
            };
        } else if let (Some(mid), Some(k)) = (line.strip_prefix("a=mid:"), kind) {
            out.push((Mid::from(mid.trim()), k));
            kind = None;
        }
    }
    out
}

fn random_token(n: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut r = rand::thread_rng();
    (0..n).map(|_| ALPHABET[r.gen_range(0..ALPHABET.len())] as char).collect()
}

type FrameStream = Pin<Box<dyn FStream<Item = (u64, Result<Frame, SubscriptionEnded>)> + Send>>;

struct Driver {
    socket: UdpSocket,
    rx: mpsc::Receiver<Command>,
    sessions: HashMap<u64, Session>,
    by_resource: HashMap<String, u64>,
    demux: demux::Demux,
    frames: SelectAll<FrameStream>,
    /// Each session's next deadline, earliest first (no scan of every session per event).
    schedule: std::collections::BTreeSet<(Instant, u64)>,
    scheduled: HashMap<u64, Instant>,
    cancel: HashMap<u64, CancellationToken>,
    count: Arc<AtomicUsize>,
    per_source: PerSource,
    stats: Arc<WebRtcStats>,
}

/// A session's subscription as a stream of frames, ended by its token.
fn frames_of(key: u64, sub: Subscription, token: CancellationToken) -> FrameStream {
    Box::pin(futures_util::stream::unfold((sub, token, false), move |(mut sub, token, done)| async move {
        if done {
            return None;
        }
        tokio::select! {
            _ = token.cancelled() => None,
            r = sub.recv() => {
                let ended = r.is_err();
                Some(((key, r), (sub, token, ended)))
            }
        }
    }))
}

impl Driver {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut buf = vec![0u8; 2048];
        let mut out: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        loop {
            let next = self.schedule.first().map_or_else(|| Instant::now() + Duration::from_secs(3600), |(t, _)| *t);
            let touched: Option<u64>;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                cmd = self.rx.recv() => match cmd {
                    None => break,
                    Some(c) => touched = self.command(c),
                },
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        let now = Instant::now();
                        match self.demux.lookup(from, &buf[..n]) {
                            Some(key) => {
                                if let Some(s) = self.sessions.get_mut(&key) {
                                    let d = &buf[..n];
                                    guarded(s, |s| s.receive(now, from, d));
                                }
                                touched = Some(key);
                            }
                            None => {
                                self.stats.unrouted_datagrams.fetch_add(1, Ordering::Relaxed);
                                touched = None;
                            }
                        }
                    }
                    Err(e) => {
                        // ICMP port unreachable from a vanished player, on some systems.
                        tracing::trace!("WebRTC recv: {e}");
                        touched = None;
                    }
                },
                Some((key, r)) = self.frames.next(), if !self.frames.is_empty() => {
                    let now = Instant::now();
                    if let Some(s) = self.sessions.get_mut(&key) {
                        match r {
                            Ok(f) => guarded(s, |s| s.frame(now, &f)),
                            Err(SubscriptionEnded::TooSlow) => s.end(End::TooSlow),
                            Err(SubscriptionEnded::StreamEnded) => s.end(End::StreamEnded),
                        }
                    }
                    touched = Some(key);
                },
                _ = tokio::time::sleep_until(next.into()) => {
                    let now = Instant::now();
                    let due: Vec<u64> =
                        self.schedule.iter().take_while(|(t, _)| *t <= now).map(|(_, k)| *k).collect();
                    for key in due {
                        if let Some(s) = self.sessions.get_mut(&key) {
                            guarded(s, |s| s.tick(now));
                        }
                        self.flush(key, &mut out);
                    }
                    touched = None;
                },
            }
            if let Some(key) = touched {
                self.flush(key, &mut out);
            }
        }
        let keys: Vec<u64> = self.sessions.keys().copied().collect();
        for key in keys {
            if let Some(s) = self.sessions.get_mut(&key) {
                s.end(End::Shutdown);
            }
            self.flush(key, &mut out);
        }
    }

    fn command(&mut self, c: Command) -> Option<u64> {
        match c {
            Command::Add(s, sub, ack) => {
                let key = s.key;
                self.demux.add(key, &s.ufrag);
                self.by_resource.insert(s.resource.clone(), key);
                let token = CancellationToken::new();
                self.frames.push(frames_of(key, sub, token.clone()));
                self.cancel.insert(key, token);
                tracing::info!(stream = %s.stream, peer = %s.peer, "WebRTC player joined");
                self.sessions.insert(key, *s);
                let _ = ack.send(());
                Some(key)
            }
            Command::Delete(stream, resource, reply) => {
                let key = self.by_resource.get(&resource).copied();
                let found = key.and_then(|k| self.sessions.get_mut(&k)).filter(|s| s.stream == stream);
                let ok = match found {
                    Some(s) => {
                        s.end(End::Deleted);
                        true
                    }
                    None => false,
                };
                let _ = reply.send(ok);
                key.filter(|_| ok)
            }
        }
    }

    /// Sends what session `key` has due, learns its addresses, and removes it when it ended.
    fn flush(&mut self, key: u64, out: &mut Vec<(SocketAddr, Vec<u8>)>) {
        let Some(s) = self.sessions.get_mut(&key) else { return };
        let now = Instant::now();
        for to in s.sent_to.drain(..) {
            self.demux.learn(key, to);
        }
        out.clear();
        s.due(now, out);
        for (to, b) in out.drain(..) {
            if let Err(e) = self.socket.try_send_to(&b, to) {
                if self.stats.send_errors.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                    tracing::debug!(%to, "WebRTC send: {e}");
                }
            }
        }
        let Some(why) = s.ended else {
            let at = s.deadline();
            if let Some(old) = self.scheduled.insert(key, at) {
                self.schedule.remove(&(old, key));
            }
            self.schedule.insert((at, key));
            return;
        };
        if let Some(old) = self.scheduled.remove(&key) {
            self.schedule.remove(&(old, key));
        }
        let Some(s) = self.sessions.remove(&key) else { return };
        self.by_resource.remove(&s.resource);
        self.demux.remove(key, &s.ufrag);
        if let Some(t) = self.cancel.remove(&key) {
            t.cancel();
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.per_source.give(s.peer.ip());
        self.stats.closed.fetch_add(1, Ordering::Relaxed);
        self.stats.queue_drops.fetch_add(s.stats.queue_drops, Ordering::Relaxed);
        if matches!(why, End::ConnectTimeout | End::IdleTimeout) {
            self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
        }
        let st = s.stats;
        tracing::info!(
            stream = %s.stream,
            peer = %s.peer,
            video_frames = st.video_frames,
            audio_packets = st.audio_packets,
            skipped = st.skipped_frames,
            bytes = st.bytes_sent,
            "WebRTC player left: {}",
            why.as_str()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_caps_and_releases() {
        let p = PerSource::default();
        let (a, b) = (IpAddr::from([127, 0, 0, 2]), IpAddr::from([127, 0, 0, 3]));
        assert!(p.take(a, 2) && p.take(a, 2));
        assert!(!p.take(a, 2), "third from one address");
        assert!(p.take(b, 2), "another address is not affected");
        p.give(a);
        assert!(p.take(a, 2));
        p.give(a);
        p.give(a);
        p.give(a);
        assert!(p.0.lock().unwrap().get(&a).is_none(), "no entry left behind");
    }

    #[test]
    fn mids_come_from_the_answer() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 8\r\na=mid:1\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        let m = answer_mids(sdp);
        assert_eq!(m, vec![(Mid::from("0"), RtcKind::Video), (Mid::from("1"), RtcKind::Audio)]);
    }
}
