//! The RTMP server: play any hub stream at `rtmp://HOST:PORT/<stream name>`, and publish into the
//! hub (ffmpeg, OBS). A thin tokio driver around `rml_rtmp` (handshake + chunk/session, sans-IO)
//! and [`crate::proto::flv`] (tag bodies).
//!
//! One task per connection. It reads the socket, and for a player also takes frames from its hub
//! subscription and writes them itself: nothing is buffered beyond one frame's chunks, a write
//! stalled longer than `rtmp.push_timeout` disconnects, and a player that cannot keep up is
//! skipped to the next keyframe by the hub (it never slows ingest).
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult, StreamMetadata};
use rml_rtmp::time::RtmpTimestamp;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::batch;
use super::direct::{Direct, DirectPlace, Packer, SharedWrite};
use crate::auth::{self, Action, AuthConfig};
use crate::config::RtmpConfig;
use crate::hub::{Hub, PublishError, Source, Subscription, Takeover, Transport};
use crate::media::Frame;
use crate::proto::flv;
use crate::proto::flv_flow::{FlvFlow, Out};
use crate::proto::rtmp_chunk::{ByteBudget, ChunkLimits};
use crate::proto::rtmp_guard::{RtmpCommandGuard, RtmpGuardError};
use crate::server::rtp::RtpShared;
use crate::util::admit::{Admission, Ticket};
use crate::util::io::{read_timeout, write_timeout};
use crate::util::RateLimit;

/// A publisher that sends nothing for this long is disconnected (its stream ends).
const PUBLISH_IDLE: Duration = Duration::from_secs(10);

/// How long a play request waits for its stream to appear.
const PLAY_WAIT: Duration = Duration::from_secs(5);

/// What the RTMP listener shares between its connections: the byte budget for unfinished
/// messages, and counters of what peers were refused (`GET /api/v1/rtmp`).
pub struct RtmpShared {
    pub limits: ChunkLimits,
    pub budget: Arc<ByteBudget>,
    /// Connections open now.
    pub connections: AtomicUsize,
    /// Connections closed for what they sent (malformed or hostile chunks or AMF0, limits).
    pub refused: AtomicU64,
    /// Publish requests refused: a reserved prefix, a live name, a full gateway, no credential.
    pub publish_refused: AtomicU64,
    /// Publish and play requests refused for their credential (`[auth]`).
    pub auth_refused: AtomicU64,
    /// Reloadable (SIGHUP).
    pub auth: auth::SharedAuth,
    /// Where publishers' media stages come from (the audio worker pool, shared with RTP).
    media: Arc<RtpShared>,
    /// Connections closed for not completing handshake + connect + publish/play in time.
    pub setup_timeouts: AtomicU64,
}

/// Why a connection was closed by the server's own limits (counted, logged rate-limited).
#[derive(Debug, thiserror::Error)]
pub enum RtmpLimitError {
    #[error("no publish or play within {0:?} (rtmp.setup_timeout)")]
    SetupTimeout(Duration),
    #[error("closed to make room for a newcomer (it was not publishing or playing yet)")]
    Evicted,
}

/// `GET /api/v1/rtmp`.
#[derive(Debug, Clone, Serialize)]
pub struct RtmpCounters {
    pub connections: usize,
    /// Bytes of unfinished messages held now, and the budget (`rtmp.max_partial_bytes`).
    pub partial_bytes: usize,
    pub max_partial_bytes: usize,
    pub max_message_bytes: usize,
    /// Messages refused for their size (`rtmp.max_message_bytes`, or a connection's share).
    pub oversized_messages: u64,
    /// Connections closed because the shared budget was exhausted.
    pub budget_exhausted: u64,
    /// Connections closed for what they sent (all of the above included).
    pub refused_connections: u64,
    /// Publish requests refused (`NetStream.Publish.BadName` / `Rejected`).
    pub publish_refused: u64,
    /// Publish and play requests refused for their credential.
    pub auth_refused: u64,
    /// Closed for not completing handshake + connect + publish/play within `rtmp.setup_timeout`.
    pub setup_timeouts: u64,
}

impl RtmpShared {
    pub fn new(cfg: &RtmpConfig, auth: &AuthConfig, media: Arc<RtpShared>) -> Arc<RtmpShared> {
        // A connection may hold one whole message and a little of another (audio interleaved
        // with a large keyframe).
        let limits = ChunkLimits {
            max_message: cfg.max_message_bytes,
            max_partial: cfg.max_message_bytes.saturating_add(256 << 10),
        };
        Arc::new(RtmpShared {
            limits,
            budget: Arc::new(ByteBudget::new(cfg.max_partial_bytes)),
            connections: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            publish_refused: AtomicU64::new(0),
            auth_refused: AtomicU64::new(0),
            auth: auth::SharedAuth::new(auth.clone()),
            media,
            setup_timeouts: AtomicU64::new(0),
        })
    }

    pub fn guard(&self) -> RtmpCommandGuard {
        RtmpCommandGuard::new(self.limits, self.budget.clone())
    }

    pub fn snapshot(&self) -> RtmpCounters {
        RtmpCounters {
            connections: self.connections.load(Ordering::Relaxed),
            partial_bytes: self.budget.used(),
            max_partial_bytes: self.budget.limit(),
            max_message_bytes: self.limits.max_message,
            oversized_messages: self.budget.oversized.load(Ordering::Relaxed),
            budget_exhausted: self.budget.exhausted.load(Ordering::Relaxed),
            refused_connections: self.refused.load(Ordering::Relaxed),
            publish_refused: self.publish_refused.load(Ordering::Relaxed),
            auth_refused: self.auth_refused.load(Ordering::Relaxed),
            setup_timeouts: self.setup_timeouts.load(Ordering::Relaxed),
        }
    }
}

/// Rate limit of the warnings about peers refused for what they sent.
static REFUSED_LOG: std::sync::Mutex<RateLimit> = std::sync::Mutex::new(RateLimit::new(Duration::from_secs(1)));
/// Rate limit of the warnings about connections refused or closed by the listener's limits.
static ACCEPT_LOG: std::sync::Mutex<RateLimit> = std::sync::Mutex::new(RateLimit::new(Duration::from_secs(1)));
/// Rate limit of the warnings about refused publish requests.
static PUBLISH_LOG: std::sync::Mutex<RateLimit> = std::sync::Mutex::new(RateLimit::new(Duration::from_secs(1)));

/// Name prefixes that belong to other kinds of source: `gb/` (GB28181 channels) and `rtp/` (RTP
/// cameras by SSRC). An RTMP publisher may not publish under them (compared ignoring case).
pub const RESERVED_PREFIXES: [&str; 2] = ["gb/", "rtp/"];

/// The reserved prefix `name` starts with, if any.
pub fn reserved_prefix(name: &str) -> Option<&'static str> {
    RESERVED_PREFIXES.into_iter().find(|p| name.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p)))
}

/// Kernel send buffer per RTMP connection (the kernel doubles it): about 2 s of a 2 Mbit/s stream.
const PLAYER_SEND_BUFFER: usize = 256 * 1024;

/// Serves RTMP on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    cfg: RtmpConfig,
    shared: Arc<RtmpShared>,
    admission: Arc<Admission>,
    shutdown: CancellationToken,
) {
    let rules = shared.auth.get();
    if rules.publish && rules.secret.is_empty() && rules.keys.is_empty() {
        info!("RTMP publishing is open to this host only: set [auth] secret or keys to publish from others");
    }
    loop {
        let (sock, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!("RTMP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // A global cap and one per source address; when reached, the oldest connection not yet
        // publishing or playing makes room (D33, the listeners' shared admission D60).
        let ticket = match admission.admit(peer.ip()) {
            Ok(t) => t,
            Err(e) => {
                if let Some(suppressed) = ACCEPT_LOG.lock().unwrap_or_else(|p| p.into_inner()).check(Instant::now()) {
                    warn!(%peer, suppressed, "RTMP connection refused: {e}");
                }
                continue;
            }
        };
        let (hub, cfg, shared, shutdown) = (hub.clone(), cfg.clone(), shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            shared.connections.fetch_add(1, Ordering::Relaxed);
            let r = connection(sock, peer, hub, cfg, shared.clone(), &ticket, shutdown).await;
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            match r {
                Ok(()) => debug!(%peer, "RTMP connection closed"),
                Err(e) if matches!(e.downcast_ref::<RtmpLimitError>(), Some(RtmpLimitError::Evicted)) => {
                    debug!(%peer, "RTMP connection closed: {e:#}");
                }
                Err(e) if e.downcast_ref::<RtmpLimitError>().is_some() => {
                    shared.setup_timeouts.fetch_add(1, Ordering::Relaxed);
                    ticket.timed_out();
                    if let Some(suppressed) = ACCEPT_LOG.lock().unwrap_or_else(|p| p.into_inner()).check(Instant::now())
                    {
                        warn!(%peer, suppressed, "RTMP connection closed: {e:#}");
                    }
                }
                Err(e) if e.downcast_ref::<RtmpGuardError>().is_some() => {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    // A peer's hostile bytes: logged, rate-limited (a flood must not flood the log).
                    if let Some(suppressed) =
                        REFUSED_LOG.lock().unwrap_or_else(|p| p.into_inner()).check(Instant::now())
                    {
                        warn!(%peer, suppressed, "RTMP connection closed: {e:#}");
                    }
                }
                Err(e) => debug!(%peer, "RTMP connection ended: {e:#}"),
            }
        });
    }
}

/// The chunk size both rml_rtmp sessions announce (`ServerSessionConfig`/`ClientSessionConfig`).
const CHUNK_SIZE: u32 = 4096;
/// Socket reads of a connection that plays (the handshake's 1.5 kB packets need 4 kB before).
const PLAYER_READ: usize = 1024;

/// An `onMetaData` data message (`@setDataFrame` first when publishing) at timestamp 0, as chunk
/// bytes. rml_rtmp stamps metadata with its connection clock, which ffmpeg then reads as a data
/// track starting late; this serialises it ourselves on the data chunk stream (3), which the
/// session's own serialiser uses for nothing else once playing/publishing.
fn metadata_packet(stream_id: u32, m: &StreamMetadata, publishing: bool) -> anyhow::Result<Vec<u8>> {
    use rml_rtmp::chunk_io::ChunkSerializer;
    use rml_rtmp::messages::RtmpMessage;
    use rml_rtmp::rml_amf0::Amf0Value;
    let props = crate::proto::flv_file::metadata_props(m);
    let mut values = Vec::new();
    if publishing {
        values.push(Amf0Value::Utf8String("@setDataFrame".to_string()));
    }
    values.push(Amf0Value::Utf8String("onMetaData".to_string()));
    values.push(Amf0Value::Object(props));
    let payload = RtmpMessage::Amf0Data { values }
        .into_message_payload(RtmpTimestamp::new(0), stream_id)
        .map_err(|e| anyhow!("metadata: {e:?}"))?;
    let mut ser = ChunkSerializer::new();
    ser.set_max_chunk_size(CHUNK_SIZE, RtmpTimestamp::new(0)).map_err(|e| anyhow!("metadata: {e:?}"))?;
    Ok(ser.serialize(&payload, true, false).map_err(|e| anyhow!("metadata: {e:?}"))?.bytes)
}

/// The chunk stream and message type of a player's media messages: the ones rml_rtmp's own
/// serialiser would pick (video 4, audio 5), which it uses for nothing else once playing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MediaChunks {
    csid: u8,
    type_id: u8,
}

impl MediaChunks {
    pub(crate) const VIDEO: MediaChunks = MediaChunks { csid: 4, type_id: 9 };
    pub(crate) const AUDIO: MediaChunks = MediaChunks { csid: 5, type_id: 8 };
}

/// Appends one media message as RTMP chunks of [`CHUNK_SIZE`] (D163): a full (type 0) header,
/// then the body in chunk-size slices, each after a one-byte type 3 header (plus the extended
/// timestamp past 0xFFFFFF ms, as rml_rtmp writes it). The headers are this player's bytes; the
/// body slices are the frame's shared tag, referenced rather than copied (rml_rtmp's session
/// serialiser copied every body into a fresh buffer per player). Every message carries a full
/// header, so nothing depends on what rml_rtmp last sent on these chunk streams.
pub(crate) fn put_media(out: &mut batch::Batch, kind: MediaChunks, stream_id: u32, ts: u32, body: &bytes::Bytes) {
    const MAX_TS: u32 = 0xFF_FFFF;
    let ext = ts >= MAX_TS;
    let mut h = [0u8; 16];
    h[0] = kind.csid; // fmt 0
    h[1..4].copy_from_slice(&ts.min(MAX_TS).to_be_bytes()[1..]);
    h[4..7].copy_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    h[7] = kind.type_id;
    h[8..12].copy_from_slice(&stream_id.to_le_bytes());
    h[12..16].copy_from_slice(&ts.to_be_bytes());
    out.own(&h[..if ext { 16 } else { 12 }]);
    let mut cont = [0u8; 5];
    cont[0] = 0xC0 | kind.csid; // fmt 3
    cont[1..].copy_from_slice(&ts.to_be_bytes());
    let size = CHUNK_SIZE as usize;
    let mut at = 0;
    while at < body.len() {
        if at > 0 {
            out.own(&cont[..if ext { 5 } else { 1 }]);
        }
        let end = (at + size).min(body.len());
        out.shared_range(body, at, end);
        at = end;
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The hub stream name of an RTMP (app, stream key): `app/key`, or `app` alone when the key is
/// empty. A query string (`?token=..`) is dropped.
pub fn stream_name(app: &str, key: &str) -> String {
    let strip = |s: &str| s.split('?').next().unwrap_or("").trim_matches('/').to_string();
    let (app, key) = (strip(app), strip(key));
    match (app.is_empty(), key.is_empty()) {
        (_, true) => app,
        (true, false) => key,
        _ => format!("{app}/{key}"),
    }
}

/// The query string a client sent with its stream key (`key?txSecret=..`), or with the app.
fn query_of<'a>(app: &'a str, key: &'a str) -> &'a str {
    [key, app].into_iter().find_map(|s| s.split_once('?').map(|(_, q)| q)).unwrap_or("")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

struct Player {
    stream_id: u32,
    sub: Subscription,
    /// The FLV/chunk packetiser, under the lock it shares with the publisher's direct writes (D183).
    pack: Arc<Direct<RtmpPack>>,
    /// Whether the publisher may write to this player (per-frame writes).
    direct: bool,
    /// Its place among the direct players (bounded).
    _place: Option<DirectPlace>,
    /// Whether the task last saw itself in direct mode (asked again when unsure).
    direct_on: bool,
    /// Video was sent: audio may then wait for the next video frame (one write per frame).
    seen_video: bool,
    /// Any media was written: the first (GOP cache) write never waits for a merge.
    wrote_media: bool,
}

/// A player's packetiser: FLV tag bodies from frames, then RTMP chunks.
struct RtmpPack {
    stream_id: u32,
    flow: FlvFlow,
    scratch: Vec<Out>,
}

impl Packer for RtmpPack {
    fn append(&mut self, frame: &Frame, out: &mut batch::Batch) -> bool {
        let mut video_sent = false;
        self.flow.push(frame, &mut self.scratch);
        for o in self.scratch.drain(..) {
            let (kind, body, ts) = match o {
                Out::Meta(m) => {
                    match metadata_packet(self.stream_id, &m, false) {
                        Ok(b) => out.own(&b),
                        Err(e) => debug!("RTMP metadata not sent: {e}"),
                    }
                    continue;
                }
                Out::Video(b, ts) => {
                    video_sent = true;
                    (MediaChunks::VIDEO, b, ts)
                }
                Out::Audio(b, ts) => (MediaChunks::AUDIO, b, ts),
            };
            put_media(out, kind, self.stream_id, ts.value, &body);
        }
        video_sent
    }
}

/// An RTMP publisher: its FLV demuxer in front of the shared source stage.
struct Publisher {
    inner: super::publish::Publisher,
    demux: flv::FlvDemuxer,
    errors_logged: bool,
}

struct Conn {
    peer: SocketAddr,
    hub: Arc<Hub>,
    shared: Arc<RtmpShared>,
    cfg: RtmpConfig,
    session: ServerSession,
    /// Sees every byte before `session` does (see `proto::rtmp_guard`).
    guard: RtmpCommandGuard,
    player: Option<Player>,
    /// Boxed (D189): 1.8 kB that every player's task would carry unused.
    publisher: Option<Box<Publisher>>,
    /// Bytes to send, in order: the session's messages and media chunk headers copied, media
    /// bodies referenced from the frames' shared tags (D163).
    pending: batch::Batch,
    /// A request was refused: close once the answer is sent (as nginx-rtmp does on a failed
    /// authentication), so a refused peer holds no connection slot.
    close: Option<String>,
    /// It published or played once (the setup deadline no longer applies).
    had_role: bool,
    /// The write half, shared with the publisher's direct writes (D183).
    sock: Arc<tokio::net::tcp::OwnedWriteHalf>,
}

async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    hub: Arc<Hub>,
    cfg: RtmpConfig,
    shared: Arc<RtmpShared>,
    ticket: &Ticket,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let limit = cfg.push_timeout.0;
    let _ = sock.set_nodelay(true);
    // Cap the kernel's send buffer (autotuning grows it to megabytes): a player that stops
    // reading then blocks our writes within about a second of video, so the write deadline and the
    // hub's slow-subscriber rule find it, and kernel memory per player stays bounded.
    let _ = socket2::SockRef::from(&sock).set_send_buffer_size(PLAYER_SEND_BUFFER);
    let (mut rd, wr) = sock.into_split();
    let mut wr = SharedWrite(Arc::new(wr));
    // Handshake, connect and publish/play must be done by this deadline (a peer that stops
    // after the handshake held its slot for ever before).
    let setup = cfg.setup_timeout.0;
    let setup_deadline = tokio::time::Instant::now() + setup;
    let setup_left = || setup_deadline.saturating_duration_since(tokio::time::Instant::now());
    // Small until the peer has shown it speaks RTMP (the handshake's packets are 1,537 bytes).
    let mut buf = vec![0u8; 4096];
    // The handshake (1.6 kB, its packet kept inline) lives in this block only: its room in the
    // connection's task is then shared with the later states instead of kept for ever (D189).
    let leftover = {
        let mut hs = Handshake::new(PeerType::Server);
        loop {
            let read = tokio::time::timeout(setup_left(), read_timeout(&mut rd, &mut buf, limit));
            let n = tokio::select! {
                r = read => match r {
                    Ok(r) => r.context("handshake")?,
                    Err(_) => return Err(RtmpLimitError::SetupTimeout(setup).into()),
                },
                _ = ticket.evicted.cancelled() => return Err(RtmpLimitError::Evicted.into()),
            };
            match hs.process_bytes(&buf[..n]).map_err(|e| anyhow!("handshake: {e:?}"))? {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    write_timeout(&mut wr, &response_bytes, limit).await?;
                }
                HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                    write_timeout(&mut wr, &response_bytes, limit).await?;
                    break remaining_bytes;
                }
            }
        }
    };
    // Reads stay small until the peer publishes (a player only sends a few commands and
    // acknowledgements: 60 kB more per player was most of its memory, D164).
    let (session, results) = ServerSession::new(ServerSessionConfig::new()).map_err(|e| anyhow!("session: {e:?}"))?;
    let mut c = Conn {
        peer,
        hub,
        cfg,
        session,
        guard: shared.guard(),
        shared,
        player: None,
        publisher: None,
        pending: batch::Batch::default(),
        close: None,
        had_role: false,
        sock: wr.0.clone(),
    };
    let result = async {
        c.results(results).await?;
        if !leftover.is_empty() {
            c.input(&leftover).await?;
        }
        c.flush(&mut wr).await?;
        // When held media (audio waiting for video, or a merged write) must go out at the latest.
        let mut hold_until: Option<tokio::time::Instant> = None;
        // Per-frame writes: since when audio is held for the next video frame (no timer, D177).
        let mut held_at: Option<tokio::time::Instant> = None;
        let merging = !c.cfg.merge_write.0.is_zero();
        // Made once, not per wake-up (D177): a `cancelled()` per select registered and removed a
        // waiter under the token's locks, and a read timeout per select armed and cancelled a
        // timer, per frame and player. The idle timer is pushed back lazily: it fires at most
        // once per PUBLISH_IDLE and then looks at when the last read was.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let idle = tokio::time::sleep(PUBLISH_IDLE);
        tokio::pin!(idle);
        let mut last_read = tokio::time::Instant::now();
        // A direct player's shared side, for the publisher's hand-backs (D183).
        let mut direct_pack: Option<Arc<Direct<RtmpPack>>> = None;
        loop {
            if direct_pack.is_none() {
                direct_pack = c.player.as_ref().filter(|p| p.direct).map(|p| p.pack.clone());
            }
            // A caught-up per-frame player lets the publisher write to it (D183).
            if let Some(p) = c.player.as_mut().filter(|p| p.direct && !p.direct_on) {
                p.direct_on = p.pack.resume(&p.sub, &c.pending);
            }
            let mut hold = false;
            // A merging player does not wake for each frame: its queue is drained when the interval ends.
            let take_frames = !(merging && hold_until.is_some());
            // Until it publishes or plays, a connection lives by the setup deadline.
            let unset = c.publisher.is_none() && c.player.is_none() && !c.had_role;
            tokio::select! {
                _ = &mut cancelled => return Ok(()),
                _ = tokio::time::sleep_until(setup_deadline), if unset => {
                    return Err(RtmpLimitError::SetupTimeout(setup).into());
                }
                _ = ticket.evicted.cancelled(), if unset => return Err(RtmpLimitError::Evicted.into()),
                _ = batch::sleep_until_opt(hold_until) => {
                    c.leave_direct();
                    if merging {
                        c.append_frames(None)?;
                    }
                }
                _ = fell_back(direct_pack.as_deref()) => c.leave_direct(),
                _ = &mut idle => {
                    let due = last_read + PUBLISH_IDLE;
                    if tokio::time::Instant::now() < due {
                        idle.as_mut().reset(due);
                        continue;
                    }
                    if c.publisher.is_some() {
                        bail!("publisher silent for {PUBLISH_IDLE:?}");
                    }
                    // Neither playing nor publishing any more, and silent: nothing to keep.
                    if c.player.is_none() {
                        bail!("idle for {PUBLISH_IDLE:?}");
                    }
                    idle.as_mut().reset(tokio::time::Instant::now() + PUBLISH_IDLE);
                    continue;
                }
                r = rd.read(&mut buf) => {
                    // Out of direct mode before anything is written (replies, acknowledgements).
                    c.leave_direct();
                    let n = r?;
                    last_read = tokio::time::Instant::now();
                    if n == 0 {
                        return Ok(());
                    }
                    c.input(&buf[..n]).await?;
                    if c.publisher.is_some() && buf.len() < 64 * 1024 {
                        // A publisher's media comes in large reads.
                        buf.resize(64 * 1024, 0);
                    } else if c.player.is_some() && buf.len() > PLAYER_READ {
                        // A player only sends acknowledgements and the odd command: 3 kB less
                        // per player (D195).
                        buf.truncate(PLAYER_READ);
                        buf.shrink_to_fit();
                    }
                    if !c.had_role && (c.publisher.is_some() || c.player.is_some()) {
                        // Publishing or playing: no longer first in line to make room.
                        c.had_role = true;
                        ticket.established();
                    }
                    if c.publisher.as_ref().is_some_and(|p| !c.hub.get(&p.inner.stream.name).is_some_and(|s| Arc::ptr_eq(&s, &p.inner.stream))) {
                        // Another source took the name: this one stops (its stream is closed).
                        c.publisher = None;
                        bail!("another source replaced this publisher's stream");
                    }
                }
                f = next_frame(&mut c.player), if take_frames => match f {
                    Some(frame) => {
                        c.leave_direct();
                        let merge = c.cfg.merge_write.0;
                        let video_sent = c.append_frames(Some(frame))?;
                        let p = c.player.as_mut().expect("playing");
                        p.seen_video |= video_sent;
                        if !c.pending.is_empty() {
                            match batch::hold(merge, video_sent, p.seen_video, p.wrote_media, c.pending.len()) {
                                None => p.wrote_media = true,
                                // Per frame, held audio arms no timer (D177).
                                Some(_) if merge.is_zero() => {
                                    hold = !batch::held_too_long(&mut held_at);
                                }
                                Some(wait) => {
                                    hold = true;
                                    hold_until.get_or_insert_with(|| tokio::time::Instant::now() + wait);
                                }
                            }
                        }
                    }
                    None => {
                        // The stream ended: tell the player, then close.
                        c.leave_direct();
                        let p = c.player.take().expect("playing");
                        p.pack.close();
                        if let Ok(packet) = c.session.finish_playing(p.stream_id) {
                            c.pending.own(&packet.bytes);
                        }
                        c.flush(&mut wr).await?;
                        return Ok(());
                    }
                },
            }
            if !hold {
                hold_until = None;
                held_at = None;
                c.flush(&mut wr).await?;
            }
            if let Some(why) = c.close.take() {
                c.flush(&mut wr).await?;
                debug!(peer = %c.peer, "RTMP connection closed after a refusal: {why}");
                return Ok(());
            }
        }
    }
    .await;
    if let Some(p) = c.player.take() {
        p.pack.close();
    }
    if let Some(p) = c.publisher.take() {
        let name = p.inner.stream.name.clone();
        p.inner.finish(&c.hub);
        info!(stream = %name, peer = %c.peer, "RTMP publisher left");
    }
    result
}

async fn fell_back(pack: Option<&Direct<RtmpPack>>) {
    match pack {
        Some(p) => p.fell_back().await,
        None => std::future::pending().await,
    }
}

async fn next_frame(player: &mut Option<Player>) -> Option<Frame> {
    match player {
        Some(p) => p.sub.recv().await.ok(),
        None => std::future::pending().await,
    }
}

impl Conn {
    /// Serialises `first` (if any) and every frame already queued for the player into `pending`,
    /// up to a batch; returns whether video was among them.
    fn append_frames(&mut self, first: Option<Frame>) -> anyhow::Result<bool> {
        let Some(p) = self.player.as_mut() else { return Ok(false) };
        let mut video_sent = false;
        // At the end of a merge interval everything queued goes; otherwise up to a batch.
        let drain_all = first.is_none();
        let mut next = first.or_else(|| p.sub.try_recv().and_then(Result::ok));
        while let Some(frame) = next.take() {
            // Locked per frame: the publisher may wait on this lock (to queue), never long.
            video_sent |= p.pack.lock().packer.append(&frame, &mut self.pending);
            // The end of the stream is seen again by the next `recv`.
            if self.pending.len() < batch::BATCH_BYTES || drain_all {
                next = p.sub.try_recv().and_then(Result::ok);
            }
        }
        Ok(video_sent)
    }

    /// Leaves direct mode (D183), taking what the publisher could not write: whatever the task
    /// writes or appends next follows it, never interleaves with a frame.
    fn leave_direct(&mut self) {
        if let Some(p) = self.player.as_mut().filter(|p| p.direct) {
            p.pack.leave(&mut self.pending);
            p.direct_on = false;
        }
    }

    async fn flush<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) -> anyhow::Result<()> {
        if !self.pending.is_empty() {
            self.pending.write_timeout(wr, self.cfg.push_timeout.0).await?;
        }
        Ok(())
    }

    async fn input(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        // The session never reads the peer's chunks: the guard reassembles them within limits,
        // refuses what rml_rtmp would panic or overflow its stack on, and hands on whole messages
        // (D10, D30). Any other panic there is still caught, so a bad peer ends its own
        // connection, nothing more.
        let bytes = self.guard.filter(bytes)?;
        if bytes.is_empty() {
            return Ok(());
        }
        let session = &mut self.session;
        let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session.handle_input(&bytes)))
            .map_err(|_| anyhow!("malformed RTMP message"))?
            .map_err(|e| anyhow!("RTMP: {e:?}"))?;
        self.results(results).await
    }

    async fn results(&mut self, results: Vec<ServerSessionResult>) -> anyhow::Result<()> {
        let mut queue = std::collections::VecDeque::from(results);
        while let Some(r) = queue.pop_front() {
            match r {
                ServerSessionResult::OutboundResponse(p) => self.pending.own(&p.bytes),
                ServerSessionResult::RaisedEvent(e) => {
                    let more = self.event(e).await?;
                    for (i, m) in more.into_iter().enumerate() {
                        queue.insert(i, m);
                    }
                }
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    /// Answers a publish request with `code`, counted and logged (rate-limited).
    fn refuse_publish(
        &mut self,
        request_id: u32,
        name: &str,
        code: &str,
        why: &str,
    ) -> anyhow::Result<Vec<ServerSessionResult>> {
        self.shared.publish_refused.fetch_add(1, Ordering::Relaxed);
        self.close = Some(format!("publish {name}: {code}"));
        if let Some(suppressed) = PUBLISH_LOG.lock().unwrap_or_else(|p| p.into_inner()).check(Instant::now()) {
            warn!(stream = %name, peer = %self.peer, code, suppressed, "RTMP publish refused: {why}");
        }
        self.session.reject_request(request_id, code, why).map_err(|e| anyhow!("{e:?}"))
    }

    /// The cc's `on_publish` / `on_play` answer (no latency without a hook: D97).
    async fn ask_cc(&mut self, kind: crate::notify::AccessKind, name: &str, query: &str) -> crate::notify::Decision {
        let notifier = self.hub.notifier();
        if !notifier.is_enabled() {
            return crate::notify::Decision::Fallback(String::new());
        }
        let req = crate::notify::AccessRequest {
            kind,
            stream: name.to_string(),
            protocol: "rtmp",
            peer: self.peer,
            params: (!query.is_empty()).then(|| query.to_string()),
        };
        // Boxed (D189): the hook's HTTP request state would otherwise be part of every
        // connection's task for its lifetime.
        Box::pin(notifier.authorize(req)).await
    }

    fn accept(&mut self, request_id: u32) -> anyhow::Result<Vec<ServerSessionResult>> {
        self.session.accept_request(request_id).map_err(|e| anyhow!("accept: {e:?}"))
    }

    async fn event(&mut self, e: ServerSessionEvent) -> anyhow::Result<Vec<ServerSessionResult>> {
        match e {
            ServerSessionEvent::ConnectionRequested { request_id, .. } => self.accept(request_id),
            ServerSessionEvent::PublishStreamRequested { request_id, app_name, stream_key, .. } => {
                let name = stream_name(&app_name, &stream_key);
                if self.publisher.is_some() || self.player.is_some() || name.is_empty() {
                    return self.refuse_publish(
                        request_id,
                        &name,
                        "NetStream.Publish.BadName",
                        "one stream per connection",
                    );
                }
                let query = query_of(&app_name, &stream_key);
                // The cc's on_publish hook first (D97): its allow or deny replaces `[auth]`; when it
                // has no hook or fails, `[auth]` decides.
                let checked = match self.ask_cc(crate::notify::AccessKind::Publish, &name, query).await {
                    crate::notify::Decision::Allow => Ok(auth::Granted::Open),
                    crate::notify::Decision::Deny(why) => {
                        self.shared.auth_refused.fetch_add(1, Ordering::Relaxed);
                        let why = format!("denied by the control center: {why}");
                        return self.refuse_publish(request_id, &name, "NetStream.Publish.Rejected", &why);
                    }
                    crate::notify::Decision::Fallback(_) => {
                        auth::check(&self.shared.auth, Action::Publish, &name, query, self.peer.ip(), unix_now())
                    }
                };
                if let Err(e) = checked {
                    self.shared.auth_refused.fetch_add(1, Ordering::Relaxed);
                    let why = format!("authentication failed: {e}");
                    return self.refuse_publish(request_id, &name, "NetStream.Publish.Rejected", &why);
                }
                if let Some(prefix) = reserved_prefix(&name) {
                    // `gb/` and `rtp/` belong to GB28181 and RTP sources (issue 8, hole 2).
                    let why = format!("names under {prefix} belong to GB28181/RTP sources");
                    return self.refuse_publish(request_id, &name, "NetStream.Publish.BadName", &why);
                }
                let source = Source { transport: Transport::Rtmp, peer: self.peer, ssrc: None };
                match self.hub.create(&name, source, Takeover::Refuse) {
                    Ok(stream) => {
                        info!(stream = %name, peer = %self.peer, "RTMP publish");
                        self.publisher = Some(Box::new(Publisher {
                            inner: super::publish::Publisher::new(stream, &self.shared.media),
                            demux: flv::FlvDemuxer::new(),
                            errors_logged: false,
                        }));
                        self.accept(request_id)
                    }
                    Err(e) => {
                        // A live name belongs to its source (NetStream.Publish.BadName, as SRS and
                        // nginx-rtmp answer a duplicate publish); a full gateway is Rejected.
                        let code = match e {
                            PublishError::NameTaken { .. } => "NetStream.Publish.BadName",
                            PublishError::TooManyStreams(_) => "NetStream.Publish.Rejected",
                        };
                        self.refuse_publish(request_id, &name, code, &e.to_string())
                    }
                }
            }
            ServerSessionEvent::PlayStreamRequested { request_id, app_name, stream_key, stream_id, .. } => {
                let candidates =
                    [stream_name(&app_name, &stream_key), stream_name("", &app_name), stream_name("", &stream_key)];
                // Checked before anything is started on demand: a credential signs the name asked
                // for, as the client wrote it (app/key, or the key alone).
                let query = query_of(&app_name, &stream_key);
                let (peer, now) = (self.peer.ip(), unix_now());
                let mut verdict = Err(auth::AuthError::Missing);
                match self.ask_cc(crate::notify::AccessKind::Play, &candidates[0], query).await {
                    crate::notify::Decision::Allow => verdict = Ok(auth::Granted::Open),
                    crate::notify::Decision::Deny(why) => {
                        self.shared.auth_refused.fetch_add(1, Ordering::Relaxed);
                        info!(stream = %candidates[0], peer = %self.peer, "RTMP play denied by the control center: {why}");
                        let why = format!("denied by the control center: {why}");
                        return self
                            .session
                            .reject_request(request_id, "NetStream.Play.Failed", &why)
                            .map_err(|e| anyhow!("{e:?}"));
                    }
                    crate::notify::Decision::Fallback(_) => {
                        for n in candidates.iter().filter(|n| !n.is_empty()) {
                            verdict = auth::check(&self.shared.auth, Action::Play, n, query, peer, now);
                            if verdict.is_ok() {
                                break;
                            }
                        }
                    }
                }
                if let Err(e) = verdict {
                    self.shared.auth_refused.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) =
                        PUBLISH_LOG.lock().unwrap_or_else(|p| p.into_inner()).check(Instant::now())
                    {
                        warn!(stream = %candidates[0], peer = %self.peer, suppressed, "RTMP play refused: {e}");
                    }
                    let why = format!("authentication failed: {e}");
                    return self
                        .session
                        .reject_request(request_id, "NetStream.Play.Failed", &why)
                        .map_err(|e| anyhow!("{e:?}"));
                }
                // Why an on-demand start failed (a pull's cause), told to the player.
                let mut failed: Option<String> = None;
                if candidates.iter().all(|n| self.hub.get(n).is_none()) {
                    // Not live: a handler may start it (GB28181 play on demand, pulls).
                    for n in candidates.iter().filter(|n| !n.is_empty()) {
                        match Box::pin(self.hub.get_or_demand(n)).await {
                            Ok(_) => break,
                            // The first name a handler claimed is the one asked for: another
                            // reading of the URL is not tried (no second series of attempts).
                            Err(crate::hub::NotLive::Failed(why)) => {
                                failed = Some(why);
                                break;
                            }
                            Err(crate::hub::NotLive::Unknown) => {}
                        }
                    }
                }
                // A failed start is final; otherwise a publisher may still be on its way.
                let deadline = tokio::time::Instant::now() + if failed.is_some() { Duration::ZERO } else { PLAY_WAIT };
                let stream = loop {
                    if let Some(s) = candidates.iter().find_map(|n| self.hub.get(n)) {
                        break Some(s);
                    }
                    if tokio::time::Instant::now() >= deadline || self.player.is_some() {
                        break None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                let Some(stream) = stream.filter(|_| self.player.is_none() && self.publisher.is_none()) else {
                    let why = failed.unwrap_or_else(|| "no such stream".into());
                    info!(stream = %candidates[0], peer = %self.peer, "RTMP play: not found: {why}");
                    return self
                        .session
                        .reject_request(request_id, "NetStream.Play.StreamNotFound", &why)
                        .map_err(|e| anyhow!("{e:?}"));
                };
                info!(stream = %stream.name, peer = %self.peer, "RTMP play");
                let mut results = self.accept(request_id)?;
                // The two data messages rml_rtmp sends on play (`|RtmpSampleAccess`, then
                // `NetStream.Data.Start` header-compressed against it) carry the session clock as
                // their timestamp; ffmpeg reads a data message at a non-zero time as an extra data
                // track. Both are Flash-only and are dropped together (dropping one would break
                // the chunk header compression); onMetaData then goes out with a full header.
                results.retain(|r| {
                    !matches!(r, ServerSessionResult::OutboundResponse(p)
                        if contains(&p.bytes, b"|RtmpSampleAccess") || contains(&p.bytes, b"NetStream.Data.Start"))
                });
                let per_frame = self.cfg.merge_write.0.is_zero();
                // The publisher writes to a per-frame player while it keeps up (D183).
                let place = (per_frame && self.cfg.direct_write).then(DirectPlace::take).flatten();
                let direct = place.is_some();
                let pack = Direct::new(
                    self.sock.clone(),
                    RtmpPack { stream_id, flow: FlvFlow::new(&stream.name, self.cfg.hevc), scratch: Vec::new() },
                );
                self.player = Some(Player {
                    stream_id,
                    // Audio with the next video frame only for per-frame writes (D178).
                    sub: if direct {
                        stream.subscribe_direct("rtmp", pack.clone())
                    } else if per_frame {
                        stream.subscribe_player("rtmp")
                    } else {
                        stream.subscribe_as("rtmp")
                    },
                    pack,
                    direct,
                    _place: place,
                    direct_on: false,
                    seen_video: false,
                    wrote_media: false,
                });
                Ok(results)
            }
            ServerSessionEvent::VideoDataReceived { data, timestamp, .. } => {
                self.published(true, timestamp.value, &data);
                Ok(Vec::new())
            }
            ServerSessionEvent::AudioDataReceived { data, timestamp, .. } => {
                self.published(false, timestamp.value, &data);
                Ok(Vec::new())
            }
            ServerSessionEvent::PublishStreamFinished { .. } => {
                if let Some(p) = self.publisher.take() {
                    let name = p.inner.stream.name.clone();
                    p.inner.stream.event("stop", "RTMP publish finished");
                    p.inner.finish(&self.hub);
                    info!(stream = %name, "RTMP publish finished");
                }
                Ok(Vec::new())
            }
            ServerSessionEvent::PlayStreamFinished { .. } => {
                if let Some(p) = self.player.take() {
                    p.pack.close();
                }
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    fn published(&mut self, video: bool, ts: u32, data: &[u8]) {
        let Some(p) = self.publisher.as_mut() else { return };
        let r = if video { p.demux.video(ts, data) } else { p.demux.audio(ts, data) };
        match r {
            Ok(Some(f)) => p.inner.frame(f),
            Ok(None) => {}
            Err(e) => {
                if !p.errors_logged {
                    p.errors_logged = true;
                    warn!(stream = %p.inner.stream.name, "RTMP publish: tag ignored: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_prefixes() {
        assert_eq!(reserved_prefix("gb/34020000001320000001"), Some("gb/"));
        assert_eq!(reserved_prefix("RTP/05F5E101"), Some("rtp/"));
        assert_eq!(reserved_prefix(&stream_name("rtp", "0BEBC201")), Some("rtp/"));
        assert_eq!(reserved_prefix("live/gb"), None);
        assert_eq!(reserved_prefix("rtpx/1"), None);
        assert_eq!(reserved_prefix("g"), None);
    }

    /// The media chunks written by `put_media` are byte for byte what rml_rtmp's serialiser makes
    /// of the same message on a fresh chunk stream (full header, then type 3 continuations),
    /// including the extended timestamp past 0xFFFFFF ms.
    #[test]
    fn media_chunks_match_rml_rtmp() {
        use rml_rtmp::chunk_io::ChunkSerializer;
        use rml_rtmp::messages::MessagePayload;
        for (kind, type_id) in [(MediaChunks::VIDEO, 9u8), (MediaChunks::AUDIO, 8)] {
            for len in [1usize, 300, 4096, 4097, 10_000, 70_000] {
                for ts in [0u32, 40, 0xFF_FFFE, 0xFF_FFFF, 0x1234_5678] {
                    let body = bytes::Bytes::from((0..len).map(|i| (i * 7) as u8).collect::<Vec<u8>>());
                    let mut ser = ChunkSerializer::new();
                    ser.set_max_chunk_size(CHUNK_SIZE, RtmpTimestamp::new(0)).unwrap();
                    let payload = MessagePayload {
                        timestamp: RtmpTimestamp::new(ts),
                        type_id,
                        message_stream_id: 1,
                        data: body.clone(),
                    };
                    let want = ser.serialize(&payload, false, false).unwrap().bytes;
                    let mut b = batch::Batch::default();
                    put_media(&mut b, kind, 1, ts, &body);
                    assert_eq!(b.to_vec(), want, "type {type_id}, {len} bytes at {ts}");
                }
            }
        }
    }

    #[test]
    fn stream_names() {
        assert_eq!(stream_name("rtp", "0BEBC201"), "rtp/0BEBC201");
        assert_eq!(stream_name("rtp/0BEBC201", ""), "rtp/0BEBC201");
        assert_eq!(stream_name("live", "test?token=1"), "live/test");
        assert_eq!(stream_name("", "x"), "x");
    }
}
