//! RTSP server: the tokio driver around [`crate::proto::rtsp::ServerSession`].
//!
//! One task per connection reads requests, answers them, and (once playing) writes the
//! subscribed frames as RTP: `$`-interleaved on the RTSP connection or as UDP datagrams. Each
//! player writes from its own task with a write deadline, so a player that stops reading only
//! stalls itself (the hub skips it to the next keyframe, and it is dropped when a write blocks
//! longer than [`WRITE_TIMEOUT`]).
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::admit::{Admission, Ticket};
use super::batch;
use super::direct::{Direct, DirectPlace, Packer, SharedWrite};
use super::rtsp_ingest::{Publishing, RtspIngest, UdpSlot};
use crate::codec::rtp_pack;
use crate::config::RtspConfig;
use crate::hub::tracks::AUDIO_SETTLED_FRAMES;
use crate::hub::{Hub, NotLive, Stream, Subscription, SubscriptionEnded};
use crate::media::frame::{Codec, CodecConfig, Frame, MediaKind, CLOCK_RATE};
use crate::proto::rtsp::{Action, Env, Input, Parser, Refusal, ServerSession, TrackDesc, TrackSetup, TrackTransport};
use crate::proto::sdp::Sdp;

/// A player whose socket accepts nothing for this long is disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long DESCRIBE waits for a young stream's parameter sets / first audio frame.
const DESCRIBE_WAIT: Duration = Duration::from_secs(3);
/// How long DESCRIBE of a young stream whose video is known waits for its audio.
const AUDIO_WAIT: Duration = Duration::from_secs(1);
/// Kernel send buffer per player connection: bounds what a stalled player can hold.
const SEND_BUFFER: usize = 256 * 1024;
/// Socket reads of a connection before it plays (requests, a publisher's interleaved media), and
/// once it plays.
const READ_BUFFER: usize = 8192;
const PLAYER_READ: usize = 1024;
const SR_INTERVAL: Duration = Duration::from_secs(1);
/// After the source ends and BYE is sent, how long the player gets to send TEARDOWN before we close.
const BYE_GRACE: Duration = Duration::from_secs(2);

/// Accepts RTSP connections until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    cfg: RtspConfig,
    admission: Arc<Admission>,
    ingest: Arc<RtspIngest>,
    shutdown: CancellationToken,
) {
    let local_ip = listener.local_addr().map(|a| a.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let mut refused_log = crate::util::RateLimit::new(Duration::from_secs(10));
    info!(addr = ?listener.local_addr().ok(), "RTSP server listening");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!("RTSP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ticket = match admission.admit(peer.ip()) {
            Ok(t) => t,
            Err(e) => {
                if let Some(suppressed) = refused_log.check(Instant::now()) {
                    warn!(%peer, suppressed, "RTSP connection refused: {e}");
                }
                tokio::spawn(async move {
                    let mut sock = sock;
                    let busy = crate::proto::rtsp::Response::new(503).header("Connection", "close").to_bytes();
                    let _ = tokio::time::timeout(Duration::from_secs(1), sock.write_all(&busy)).await;
                });
                continue;
            }
        };
        let (hub, cfg, shutdown, ingest) = (hub.clone(), cfg.clone(), shutdown.clone(), ingest.clone());
        tokio::spawn(async move {
            // An unspecified listen address: answer from the address the player connected to.
            let ip = match local_ip.is_unspecified() {
                true => sock.local_addr().map(|a| a.ip()).unwrap_or(local_ip),
                false => local_ip,
            };
            if let Err(e) = connection(sock, peer, ip, hub, cfg, &ticket, ingest, shutdown).await {
                debug!(%peer, "RTSP connection ended: {e}");
            }
            drop(ticket);
        });
    }
}

/// A stream's tracks for DESCRIBE. A stream that has published its parameter sets and its
/// audio is answered at once from what it remembers ([`known_tracks`], D167): no frame is
/// awaited, whatever its GOP cache holds. A young stream (or one still starting on demand) waits
/// until it knows its tracks: at most [`AUDIO_WAIT`] for audio once its video is known, at most
/// [`DESCRIBE_WAIT`] in all.
pub async fn stream_tracks(hub: &Hub, name: &str) -> Result<Vec<TrackDesc>, NotLive> {
    let stream = hub.get_or_demand(name).await?;
    if let Some(tracks) = known_tracks(&stream, false) {
        return Ok(tracks);
    }
    let started = tokio::time::Instant::now();
    let deadline = started + DESCRIBE_WAIT;
    // Each published frame wakes us (the hints are updated before it is queued); the cached GOP
    // is already in the hints, so skip it.
    let mut sub = stream.subscribe_as("rtsp");
    for _ in 0..4096 {
        if !matches!(sub.try_recv(), Some(Ok(_))) {
            break;
        }
    }
    let mut video_since: Option<tokio::time::Instant> = None;
    loop {
        if let Some(tracks) = known_tracks(&stream, false) {
            return Ok(tracks);
        }
        if video_since.is_none() && stream.track_hints().video.is_some() {
            video_since = Some(tokio::time::Instant::now());
        }
        // Video without audio yet: a stream without audio is not kept waiting long.
        let until = video_since.map_or(deadline, |t| (t + AUDIO_WAIT).min(deadline));
        match tokio::time::timeout_at(until, sub.recv()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    known_tracks(&stream, true).ok_or(NotLive::Unknown)
}

/// The tracks `stream` can be described with now, from the configs it published
/// ([`crate::hub::TrackHints`]) and the audio its media stage announced (AAC, known before the
/// first AAC frame and before the G.711 rate is decided, D63). `None` while a track may still
/// come: no video parameter sets yet, or audio not yet known on a stream younger than 2 s (or
/// whose stats say it has audio). With `give_up`, whatever is known.
pub fn known_tracks(stream: &Stream, give_up: bool) -> Option<Vec<TrackDesc>> {
    let hints = stream.track_hints();
    let old = stream.started_at.elapsed().unwrap_or_default() > Duration::from_secs(2);
    let desc = |(codec, config): (Codec, Arc<CodecConfig>)| TrackDesc { codec, config };
    let audio = match (stream.announced_audio(), hints.audio) {
        // The frames' own config once they come (the same codec), else the announcement.
        (Some(a), Some(h)) if h.0 == a.0 => Some(desc(h)),
        (Some(a), _) => Some(desc(a)),
        // Passthrough: a young stream's first G.711 frames may not have their rate settled.
        (None, Some(h)) if old || hints.audio_frames >= AUDIO_SETTLED_FRAMES || give_up => Some(desc(h)),
        (None, _) => None,
    };
    let video = hints.video.map(desc);
    let complete = match (&video, &audio) {
        (Some(_), Some(_)) => true,
        (None, None) => false,
        _ if give_up => true,
        // One track known: an older stream whose stats show no other track has only this one.
        (Some(_), None) => old && stream.stats().audio.is_none(),
        (None, Some(_)) => old && stream.stats().video.is_none(),
    };
    complete.then(|| video.into_iter().chain(audio).collect())
}

/// The sockets of one UDP track.
struct UdpPair {
    rtp: Arc<UdpSocket>,
    rtcp: Arc<UdpSocket>,
    reader: JoinHandle<()>,
    /// A publisher's receive pair is counted against `rtsp.max_record_udp_tracks`.
    _slot: Option<UdpSlot>,
}

struct DriverEnv<'a> {
    prefetched: Option<(String, Result<Vec<TrackDesc>, NotLive>)>,
    ip: IpAddr,
    udp: &'a mut HashMap<usize, UdpPair>,
    activity: &'a Arc<AtomicU64>,
    t0: Instant,
    hub: &'a Hub,
    peer: SocketAddr,
    ingest: &'a Arc<RtspIngest>,
    /// The session publishes: UDP pairs it binds receive and are bounded.
    recording: bool,
    /// The stream an ANNOUNCE created.
    created: &'a mut Option<Arc<crate::hub::Stream>>,
    /// The cc's `on_publish` hook allowed this ANNOUNCE: `[auth]` is not asked (D97).
    cc_allowed: bool,
}

fn bind_std(ip: IpAddr, port: u16) -> io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

impl Env for DriverEnv<'_> {
    fn announce(&mut self, stream: &str, query: &str, sdp: &Sdp) -> Result<(), Refusal> {
        *self.created = Some(self.ingest.announce(self.hub, stream, query, self.peer, self.cc_allowed)?);
        for m in &sdp.media {
            debug!(stream, "RTSP ANNOUNCE media: {m:?}");
            if let Err(e) = crate::proto::rtp_depack::Depacketizer::new(m) {
                warn!(stream, peer = %self.peer, "RTSP publish: track {:?} ignored: {e}", m.control);
            }
        }
        Ok(())
    }

    fn tracks(&mut self, stream: &str) -> Option<Vec<TrackDesc>> {
        match &self.prefetched {
            Some((name, tracks)) if name == stream => tracks.clone().ok(),
            _ => None,
        }
    }

    fn why_missing(&mut self, stream: &str) -> Option<String> {
        match &self.prefetched {
            Some((name, Err(NotLive::Failed(why)))) if name == stream => Some(why.clone()),
            _ => None,
        }
    }

    fn bind_udp(&mut self, index: usize) -> Option<(u16, u16)> {
        let rtp = bind_std(self.ip, 0).ok()?;
        let slot = match self.recording {
            true => Some(self.ingest.udp_slot()?),
            false => None,
        };
        let port = rtp.local_addr().ok()?.port();
        let rtcp = port.checked_add(1).and_then(|p| bind_std(self.ip, p).ok()).or_else(|| bind_std(self.ip, 0).ok())?;
        let rtcp_port = rtcp.local_addr().ok()?.port();
        let rtcp = Arc::new(rtcp);
        // Receiver reports keep the session alive.
        let (r, activity, t0) = (rtcp.clone(), self.activity.clone(), self.t0);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while r.recv_from(&mut buf).await.is_ok() {
                activity.store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        });
        if let Some(old) = self.udp.insert(index, UdpPair { rtp: Arc::new(rtp), rtcp, reader, _slot: slot }) {
            old.reader.abort();
        }
        Some((port, rtcp_port))
    }

    fn random(&mut self) -> u32 {
        rand::thread_rng().gen()
    }
}

/// One set-up track while playing.
struct TrackOut {
    setup: TrackSetup,
    kind: MediaKind,
    clock: u32,
    channels: u8,
    seq: u16,
    packets: u32,
    octets: u32,
    /// pts of the last frame sent.
    last_pts: Option<i64>,
    udp: Option<(Arc<UdpSocket>, Arc<UdpSocket>, SocketAddr, SocketAddr)>,
}

impl TrackOut {
    fn rtp_ts(&self, pts: i64, base: i64) -> u32 {
        let delta = (pts - base) as i128 * self.clock as i128 / CLOCK_RATE as i128;
        self.setup.rtptime.wrapping_add(delta as i64 as u32)
    }
}

struct Player {
    sub: Subscription,
    /// The packetiser, under the lock it shares with the publisher's direct writes (D183).
    pack: Arc<Direct<Pack>>,
    /// Whether the publisher may write to this player (per-frame, all tracks interleaved).
    direct: bool,
    /// Its place among the direct players (bounded).
    _place: Option<DirectPlace>,
    has_video: bool,
    /// Whether the player's task last saw itself in direct mode (asked again when unsure).
    direct_on: bool,
    /// Whether any media was written yet: the first (GOP cache) write never waits for a merge.
    wrote_media: bool,
    /// `merge_write` for interleaved players; zero when a track is on UDP (bursts would overflow
    /// the player's socket buffer).
    merge: Duration,
}

impl Player {
    fn append(&self, frame: &Frame, out: &mut batch::Batch) -> bool {
        self.pack.lock().packer.append(frame, out)
    }
}

/// A player's packetiser state.
struct Pack {
    tracks: Vec<TrackOut>,
    max_payload: usize,
    /// pts mapped to each track's `rtptime` (npt 0) and to `wall_base` for sender reports.
    pts_base: Option<i64>,
    wall_base_us: u64,
    need_keyframe: bool,
    paused: bool,
    play_at: Instant,
    first_key_logged: bool,
}

impl Packer for Pack {
    fn append(&mut self, frame: &Frame, out: &mut batch::Batch) -> bool {
        let max = self.max_payload;
        append_frame(self, frame, out, max)
    }
}

enum Event {
    Shutdown,
    Read(io::Result<usize>),
    Frame(Result<Frame, SubscriptionEnded>),
    Tick,
    FlushHeld,
    /// A request did not complete in time.
    RequestTimeout,
    /// Evicted by the admission to make room for a newcomer (it had completed no request).
    Evicted,
    /// A publisher's UDP datagram (track, packet).
    Udp(Option<(usize, bytes::Bytes)>),
    /// A publisher's reorder buffer has packets due.
    Reorder,
    /// The publisher handed a frame back to the player's task (D183).
    FellBack,
}

async fn recv_udp(p: Option<&mut Publishing>) -> Option<(usize, bytes::Bytes)> {
    match p {
        Some(p) => p.recv_udp().await,
        None => std::future::pending().await,
    }
}

async fn recv_frame(player: Option<&mut Player>) -> Result<Frame, SubscriptionEnded> {
    match player {
        Some(p) => p.sub.recv().await,
        None => std::future::pending().await,
    }
}

async fn fell_back(pack: Option<&Direct<Pack>>) {
    match pack {
        Some(p) => p.fell_back().await,
        None => std::future::pending().await,
    }
}

async fn write_batch(w: &mut SharedWrite, out: &mut batch::Batch) -> io::Result<()> {
    out.write_timeout(w, WRITE_TIMEOUT).await.map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut => io::Error::new(io::ErrorKind::TimedOut, "player stopped reading"),
        _ => e,
    })
}

async fn write_timed(w: &mut SharedWrite, buf: &[u8]) -> io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(buf)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "player stopped reading")),
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    ip: IpAddr,
    hub: Arc<Hub>,
    cfg: RtspConfig,
    ticket: &Ticket,
    ingest: Arc<RtspIngest>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let _ = sock.set_nodelay(true);
    let _ = socket2::SockRef::from(&sock).set_send_buffer_size(SEND_BUFFER);
    let (mut rd, wr) = sock.into_split();
    // Shared with the publisher's direct writes (D183).
    let mut wr = SharedWrite(Arc::new(wr));
    let t0 = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let session_id = format!("{:016X}", rand::thread_rng().gen::<u64>());
    let timeout = cfg.session_timeout.0.max(Duration::from_secs(1));
    let mut session = ServerSession::new(session_id, timeout.as_secs().max(1));
    let mut parser = Parser::new();
    let mut udp: HashMap<usize, UdpPair> = HashMap::new();
    let mut player: Option<Player> = None;
    // A direct player's shared side, for the publisher's hand-backs (D183).
    let mut direct_pack: Option<Arc<Direct<Pack>>> = None;
    let mut tick = tokio::time::interval(SR_INTERVAL);
    let mut buf = vec![0u8; READ_BUFFER];
    let mut closing_at: Option<Instant> = None;
    // Interleaved bytes not yet written (headers copied, payloads shared: D162), and when held
    // audio must go out at the latest.
    let mut out = batch::Batch::default();
    let mut hold_until: Option<tokio::time::Instant> = None;
    // Per-frame writes: since when audio is held for the next video frame (no timer, D177).
    let mut held_at: Option<tokio::time::Instant> = None;
    // Made once, not per wake-up (D177): each `cancelled()` made and dropped per select took the
    // token's locks to register and unregister a waiter, per frame and player.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let evicted = ticket.evicted.cancelled();
    tokio::pin!(evicted);
    // The first request, and later any request in progress, must complete by this deadline (D60):
    // idle and slow-loris connections give their slot back.
    let request_timeout = cfg.request_timeout.0.max(Duration::from_millis(100));
    let mut request_deadline = Some(tokio::time::Instant::now() + request_timeout);
    // A publisher: the stream its ANNOUNCE created (until RECORD), then its receiving side.
    let mut announced: Option<(Arc<crate::hub::Stream>, Instant)> = None;
    let notifier = hub.notifier();
    // The cc's answers on this connection, so DESCRIBE then SETUP ask once (bounded).
    let mut cc_answers: Vec<(crate::notify::AccessKind, String, crate::notify::Decision)> = Vec::new();
    // Boxed (D189): a publisher's state is 2.2 kB that a player's task would carry unused.
    let mut publishing: Option<Box<Publishing>> = None;
    let mut reorder_at: Option<tokio::time::Instant> = None;
    let publish_timeout = cfg.publish_timeout.0.max(Duration::from_secs(1));
    let result = 'conn: loop {
        // A caught-up per-frame player lets the publisher write to it (D183).
        if let Some(p) = player.as_mut().filter(|p| p.direct && !p.direct_on && out.is_empty()) {
            p.direct_on = p.pack.resume(&p.sub, &out);
        }
        let merging = player.as_ref().is_some_and(|p| !p.merge.is_zero());
        // A merging player does not wake for each frame: its queue is drained when the interval ends.
        let take_frames = !(merging && hold_until.is_some());
        let ev = tokio::select! {
            _ = &mut cancelled => Event::Shutdown,
            r = rd.read(&mut buf) => Event::Read(r),
            f = recv_frame(player.as_mut()), if take_frames => Event::Frame(f),
            _ = tick.tick() => Event::Tick,
            _ = batch::sleep_until_opt(hold_until) => Event::FlushHeld,
            _ = batch::sleep_until_opt(request_deadline) => Event::RequestTimeout,
            _ = &mut evicted => Event::Evicted,
            d = recv_udp(publishing.as_deref_mut()) => Event::Udp(d),
            _ = batch::sleep_until_opt(reorder_at) => Event::Reorder,
            _ = fell_back(direct_pack.as_deref()) => Event::FellBack,
        };
        // Out of direct mode before anything is written or appended (D183), taking what the
        // publisher could not write: replies and reports never interleave with a frame, and
        // frames queued after a hand-back follow its remainder. A frame or a hand-back wakes the
        // task only after the publisher left direct mode; other events are rare (requests, the
        // once-a-second report), and the task re-enters direct mode once caught up.
        if let Some(p) = player.as_mut().filter(|p| p.direct) {
            p.pack.leave(&mut out);
            p.direct_on = false;
        }
        if merging && !matches!(ev, Event::Frame(_)) {
            if let Some(p) = player.as_mut() {
                while let Some(Ok(f)) = p.sub.try_recv() {
                    p.append(&f, &mut out);
                }
            }
        }
        // Anything but a frame first writes what is held, so replies and reports keep their order.
        if !matches!(ev, Event::Frame(Ok(_))) && !out.is_empty() {
            hold_until = None;
            held_at = None;
            if let Err(e) = write_batch(&mut wr, &mut out).await {
                break Err(e);
            }
        }
        match ev {
            Event::Shutdown => break Ok(()),
            Event::Evicted => {
                debug!(%peer, "RTSP connection evicted: no request yet and the listener is full");
                break Ok(());
            }
            Event::RequestTimeout => {
                ticket.timed_out();
                debug!(%peer, buffered = parser.buffered(), "RTSP request not completed in time");
                break Ok(());
            }
            Event::Read(Err(e)) => break Err(e),
            Event::Read(Ok(0)) => break Ok(()),
            Event::Read(Ok(n)) => {
                activity.store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                parser.push(&buf[..n]);
                loop {
                    let req = match parser.next_input() {
                        Ok(None) => {
                            // A request (or interleaved frame) in progress must complete in time.
                            let partial = parser.buffered() > 0;
                            if !partial && !ticket.is_pending() {
                                request_deadline = None;
                            } else if partial && request_deadline.is_none() {
                                request_deadline = Some(tokio::time::Instant::now() + request_timeout);
                            }
                            break;
                        }
                        Ok(Some(Input::Interleaved { channel, data })) => {
                            // A whole message arrived: a publisher streaming over the connection
                            // is never "a request in progress" for longer than one packet.
                            request_deadline = None;
                            if let Some(p) = publishing.as_mut() {
                                p.interleaved(channel, data);
                            }
                            continue;
                        }
                        Ok(Some(Input::Request(r))) => {
                            ticket.established();
                            request_deadline = None;
                            r
                        }
                        Err(e) => {
                            debug!(%peer, "bad RTSP request: {e}");
                            let _ = write_timed(&mut wr, &ServerSession::bad_request().to_bytes()).await;
                            break 'conn Ok(());
                        }
                    };
                    // The cc's access hooks (D97), asked before anything is looked up or created.
                    let access = match req.method.as_str() {
                        "ANNOUNCE" => crate::proto::rtsp::parse_uri(&req.uri)
                            .map(|(n, _)| (crate::notify::AccessKind::Publish, n)),
                        _ => session.stream_needed(&req).map(|n| (crate::notify::AccessKind::Play, n)),
                    };
                    let mut cc_allowed = false;
                    if let Some((kind, name)) = access.filter(|_| notifier.is_enabled()) {
                        let known = cc_answers.iter().find(|(k, n, _)| *k == kind && *n == name).map(|a| a.2.clone());
                        let decision = match known {
                            Some(d) => d,
                            None => {
                                let query = crate::proto::rtsp::uri_query(&req.uri);
                                // Boxed (D189): the hook's HTTP request state is kB that would
                                // otherwise be part of every connection's task for its lifetime.
                                let d = Box::pin(notifier.authorize(crate::notify::AccessRequest {
                                    kind,
                                    stream: name.clone(),
                                    protocol: "rtsp",
                                    peer,
                                    params: (!query.is_empty()).then(|| query.to_string()),
                                }))
                                .await;
                                if cc_answers.len() >= 8 {
                                    cc_answers.remove(0);
                                }
                                cc_answers.push((kind, name.clone(), d.clone()));
                                d
                            }
                        };
                        match decision {
                            crate::notify::Decision::Allow => cc_allowed = true,
                            crate::notify::Decision::Deny(why) => {
                                info!(%peer, stream = %name, "RTSP {:?} denied by the control center: {why}", kind);
                                let mut resp = crate::proto::rtsp::Response::new(403);
                                if let Some(c) = req.header("CSeq") {
                                    resp = resp.header("CSeq", c);
                                }
                                resp = resp.header("Server", "gbgate");
                                if let Err(e) = write_timed(&mut wr, &resp.to_bytes()).await {
                                    break 'conn Err(e);
                                }
                                continue;
                            }
                            crate::notify::Decision::Fallback(_) => {}
                        }
                    }
                    let prefetched = match session.stream_needed(&req) {
                        Some(name) => {
                            // Boxed like the hook above (D189): an on-demand start's state.
                            let tracks = Box::pin(stream_tracks(&hub, &name)).await;
                            Some((name, tracks))
                        }
                        None => None,
                    };
                    let mut created = None;
                    let mut env = DriverEnv {
                        prefetched,
                        ip,
                        udp: &mut udp,
                        activity: &activity,
                        t0,
                        hub: &hub,
                        peer,
                        ingest: &ingest,
                        recording: session.publishing().is_some(),
                        created: &mut created,
                        cc_allowed,
                    };
                    let (resp, actions) = session.handle(&req, &mut env);
                    if let Some(s) = created {
                        announced = Some((s, Instant::now()));
                    }
                    debug!(%peer, method = %req.method, uri = %req.uri, status = resp.status, "RTSP request");
                    if let Err(e) = write_timed(&mut wr, &resp.to_bytes()).await {
                        break 'conn Err(e);
                    }
                    for a in actions {
                        match a {
                            Action::Play { stream, tracks } => {
                                if let Some(p) = player.as_mut() {
                                    let mut st = p.pack.lock();
                                    st.packer.paused = false;
                                    st.packer.need_keyframe = p.has_video;
                                    continue;
                                }
                                let Some(s) = hub.get(&stream) else { break 'conn Ok(()) };
                                // A player only sends keep-alives and receiver reports: small
                                // reads do (the parser reassembles), and 300 players save 2 MB.
                                buf.truncate(PLAYER_READ);
                                buf.shrink_to_fit();
                                // Audio with the next video frame only for per-frame writes
                                // (D178): a merging player does not wake per frame anyway.
                                let pack = new_pack(tracks, &udp, peer.ip(), cfg.max_payload);
                                let merge = if pack.tracks.iter().all(|t| t.udp.is_none()) {
                                    cfg.merge_write.0
                                } else {
                                    Duration::ZERO
                                };
                                // The publisher writes to a per-frame player whose tracks are
                                // all interleaved, while it keeps up (D183).
                                let place = (merge.is_zero()
                                    && cfg.direct_write
                                    && pack.tracks.iter().all(|t| t.udp.is_none()))
                                .then(DirectPlace::take)
                                .flatten();
                                let direct = place.is_some();
                                let has_video = pack.tracks.iter().any(|t| t.kind == MediaKind::Video);
                                let pack = Direct::new(wr.0.clone(), pack);
                                direct_pack = direct.then(|| pack.clone());
                                let sub = if direct {
                                    s.subscribe_direct("rtsp", pack.clone())
                                } else if cfg.merge_write.0.is_zero() {
                                    s.subscribe_player("rtsp")
                                } else {
                                    s.subscribe_as("rtsp")
                                };
                                player = Some(Player {
                                    sub,
                                    pack,
                                    direct,
                                    _place: place,
                                    has_video,
                                    direct_on: false,
                                    wrote_media: false,
                                    merge,
                                });
                            }
                            Action::Pause => {
                                if let Some(p) = player.as_mut() {
                                    p.pack.lock().packer.paused = true;
                                }
                            }
                            Action::Record { stream, tracks } => {
                                let Some((s, _)) = announced.take().filter(|(s, _)| s.name == stream) else {
                                    break 'conn Ok(());
                                };
                                buf.resize(READ_BUFFER, 0);
                                let socks: HashMap<usize, Arc<UdpSocket>> =
                                    udp.iter().map(|(i, u)| (*i, u.rtp.clone())).collect();
                                let (act, t0) = (activity.clone(), t0);
                                let touch = move || act.store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                                publishing = Some(Box::new(Publishing::start(
                                    s,
                                    ingest.clone(),
                                    peer,
                                    &tracks,
                                    |i| socks.get(&i).cloned(),
                                    touch,
                                )));
                            }
                            Action::Teardown => {
                                if let Some(p) = publishing.take() {
                                    p.finish(&hub, "TEARDOWN");
                                }
                                if let Some((s, _)) = announced.take() {
                                    hub.remove(&s);
                                }
                                reorder_at = None;
                                if let Some(p) = player.take() {
                                    p.pack.close();
                                }
                                for (_, u) in udp.drain() {
                                    u.reader.abort();
                                }
                            }
                            Action::Close => break 'conn Ok(()),
                        }
                    }
                }
            }
            Event::Frame(Err(e)) => {
                debug!(%peer, "subscription ended: {e}");
                // Tell the player the stream ended (RTCP BYE), then let it tear down cleanly.
                if let Some(p) = player.take() {
                    p.pack.close();
                    if send_reports(&p, &mut wr, true).await.is_err() {
                        break Ok(());
                    }
                }
                closing_at = Some(Instant::now() + BYE_GRACE);
            }
            Event::FlushHeld | Event::FellBack => {}
            Event::Udp(None) => {}
            Event::Udp(Some((k, data))) => {
                if let Some(p) = publishing.as_mut() {
                    p.packet(k, data);
                    reorder_at = p.next_timeout().map(|d| tokio::time::Instant::now() + d);
                }
            }
            Event::Reorder => {
                reorder_at = None;
                if let Some(p) = publishing.as_mut() {
                    p.handle_timeout();
                    reorder_at = p.next_timeout().map(|d| tokio::time::Instant::now() + d);
                }
            }
            Event::Frame(Ok(frame)) => {
                let Some(p) = player.as_mut() else { continue };
                // Drain what is already queued into one write (a GOP burst at PLAY, or frames
                // that arrived while the last write was in flight).
                let mut video_sent = p.append(&frame, &mut out);
                while out.len() < batch::BATCH_BYTES {
                    match p.sub.try_recv() {
                        Some(Ok(f)) => video_sent |= p.append(&f, &mut out),
                        // The end is seen again by the next `recv`.
                        Some(Err(_)) | None => break,
                    }
                }
                let has_video = p.has_video;
                if out.is_empty() {
                    continue;
                }
                let due = match batch::hold(p.merge, video_sent, has_video, p.wrote_media, out.len()) {
                    None => true,
                    // Per frame, held audio arms no timer (D177).
                    Some(_) if p.merge.is_zero() => batch::held_too_long(&mut held_at),
                    Some(wait) => {
                        hold_until.get_or_insert_with(|| tokio::time::Instant::now() + wait);
                        false
                    }
                };
                if due {
                    p.wrote_media = true;
                    hold_until = None;
                    held_at = None;
                    if let Err(e) = write_batch(&mut wr, &mut out).await {
                        break Err(e);
                    }
                }
            }
            Event::Tick => {
                // A UDP reader may store a time later than this task's `now`: saturate, never wrap.
                let idle = (t0.elapsed().as_millis() as u64).saturating_sub(activity.load(Ordering::Relaxed));
                if idle > timeout.as_millis() as u64 {
                    debug!(%peer, "RTSP session timed out");
                    break Ok(());
                }
                if closing_at.is_some_and(|t| Instant::now() >= t) {
                    break Ok(());
                }
                // A publisher that stopped sending media gives its name back (D78).
                if let Some(p) = publishing.as_ref().filter(|p| p.silent_for() > publish_timeout) {
                    p.count_silent();
                    info!(stream = %p.name(), %peer, "RTSP publisher silent for {publish_timeout:?}: closed");
                    break Ok(());
                }
                if announced.as_ref().is_some_and(|(_, at)| at.elapsed() > publish_timeout) {
                    info!(%peer, "RTSP publisher announced but did not RECORD within {publish_timeout:?}: closed");
                    break Ok(());
                }
                if let Some(p) = player.as_ref() {
                    if let Err(e) = send_reports(p, &mut wr, false).await {
                        break Err(e);
                    }
                }
            }
        }
    };
    if let Some(p) = publishing.take() {
        let why = match &result {
            Ok(()) => "connection closed".to_string(),
            Err(e) => format!("connection error: {e}"),
        };
        p.finish(&hub, &why);
    }
    if let Some((s, _)) = announced.take() {
        hub.remove(&s);
    }
    for (_, u) in udp.drain() {
        u.reader.abort();
    }
    if let Some(p) = player.take() {
        p.pack.close();
    }
    let _ = wr.shutdown().await;
    result
}

fn new_pack(setups: Vec<TrackSetup>, udp: &HashMap<usize, UdpPair>, peer: IpAddr, max_payload: usize) -> Pack {
    let tracks: Vec<TrackOut> = setups
        .into_iter()
        .map(|s| {
            let udp = match s.transport {
                TrackTransport::Udp { client_rtp, client_rtcp, .. } => udp.get(&s.index).map(|u| {
                    (
                        u.rtp.clone(),
                        u.rtcp.clone(),
                        SocketAddr::new(peer, client_rtp),
                        SocketAddr::new(peer, client_rtcp),
                    )
                }),
                TrackTransport::Tcp { .. } => None,
            };
            let channels = match &*s.desc.config {
                CodecConfig::Audio(a) => a.channels,
                _ => 1,
            };
            TrackOut {
                kind: s.desc.codec.kind(),
                clock: s.desc.clock_rate(),
                channels,
                seq: s.seq,
                packets: 0,
                octets: 0,
                last_pts: None,
                udp,
                setup: s,
            }
        })
        .collect();
    let need_keyframe = tracks.iter().any(|t| t.kind == MediaKind::Video);
    Pack {
        tracks,
        max_payload,
        pts_base: None,
        wall_base_us: 0,
        need_keyframe,
        paused: false,
        play_at: Instant::now(),
        first_key_logged: false,
    }
}

/// Packetises one frame for a player: UDP tracks are sent at once, interleaved (TCP) packets are
/// appended to `out`. Returns whether interleaved video was appended.
fn append_frame(p: &mut Pack, frame: &Frame, out: &mut batch::Batch, max_payload: usize) -> bool {
    if p.paused {
        return false;
    }
    if p.need_keyframe {
        if !(frame.kind() == MediaKind::Video && frame.keyframe) {
            return false;
        }
        p.need_keyframe = false;
    }
    let Some(t) = p.tracks.iter_mut().find(|t| t.kind == frame.kind() && t.setup.desc.codec == frame.codec) else {
        return false;
    };
    // Every source passes the media stage, whose repair already makes each track's time
    // continuous and monotonic (D12); RTP time is relative to the first frame sent and wraps.
    let pts = frame.pts;
    let base = *p.pts_base.get_or_insert_with(|| {
        p.wall_base_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
        pts
    });
    if !p.first_key_logged && frame.kind() == MediaKind::Video {
        p.first_key_logged = true;
        debug!(ms = p.play_at.elapsed().as_millis() as u64, "first keyframe sent after PLAY");
    }
    let payloads = rtp_pack::frame_payloads(frame, max_payload);
    let ts = t.rtp_ts(pts, base);
    let pt = t.setup.desc.payload_type();
    let n = payloads.len();
    let before = out.len();
    let mut offset = 0usize;
    for (i, payload) in payloads.iter().enumerate() {
        let marker = rtp_pack::marker(frame.codec, i, n);
        let pts = ts.wrapping_add(rtp_pack::timestamp_offset(frame.codec, offset, t.channels));
        offset += payload.len();
        let header = rtp_pack::rtp_header(pt, marker, t.seq, pts, t.setup.ssrc);
        t.seq = t.seq.wrapping_add(1);
        t.packets = t.packets.wrapping_add(1);
        t.octets = t.octets.wrapping_add(payload.len() as u32);
        match (&t.udp, t.setup.transport) {
            (Some((sock, _, dst, _)), _) => {
                let mut pkt = Vec::with_capacity(12 + payload.len());
                pkt.extend_from_slice(&header);
                pkt.extend_from_slice(payload.head());
                pkt.extend_from_slice(&payload.body);
                // A full socket buffer drops the datagram, as the network would.
                let _ = sock.try_send_to(&pkt, *dst);
            }
            (None, TrackTransport::Tcp { rtp_channel, .. }) => {
                // `$`, channel, length, then the RTP header: this player's 16 bytes; the payload's
                // head (FU/AU header) is copied next to them, its body (a slice of the frame) is
                // referenced (D181).
                let mut own = [0u8; 16];
                own[0] = b'$';
                own[1] = rtp_channel;
                own[2..4].copy_from_slice(&((12 + payload.len()) as u16).to_be_bytes());
                own[4..].copy_from_slice(&header);
                out.own(&own);
                out.rtp_payload(&frame.cache, i);
            }
            (None, TrackTransport::Udp { .. }) => {}
        }
    }
    t.last_pts = Some(pts);
    out.len() > before && t.kind == MediaKind::Video
}

/// Sends a sender report on every track that has sent media; with `bye`, each report is followed
/// by an RTCP BYE in the same compound packet.
async fn send_reports(p: &Player, wr: &mut SharedWrite, bye: bool) -> io::Result<()> {
    let out = reports(&p.pack.lock().packer, bye);
    if !out.is_empty() {
        write_timed(wr, &out).await?;
    }
    Ok(())
}

/// The sender reports (interleaved ones returned, UDP ones sent).
fn reports(p: &Pack, bye: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if p.paused && !bye {
        return out;
    }
    let Some(base) = p.pts_base else { return out };
    for t in &p.tracks {
        let Some(last) = t.last_pts else { continue };
        let us = p.wall_base_us as i64 + (last - base) * 1_000_000 / CLOCK_RATE;
        let mut sr = rtp_pack::rtcp_sender_report(
            t.setup.ssrc,
            rtp_pack::ntp_from_unix_micros(us.max(0) as u64),
            t.rtp_ts(last, base),
            t.packets,
            t.octets,
        )
        .to_vec();
        if bye {
            sr.extend_from_slice(&rtp_pack::rtcp_bye(t.setup.ssrc));
        }
        match (&t.udp, t.setup.transport) {
            (Some((_, rtcp, _, dst)), _) => {
                let _ = rtcp.try_send_to(&sr, *dst);
            }
            (None, TrackTransport::Tcp { rtcp_channel, .. }) => {
                out.extend_from_slice(&[b'$', rtcp_channel]);
                out.extend_from_slice(&(sr.len() as u16).to_be_bytes());
                out.extend_from_slice(&sr);
            }
            (None, TrackTransport::Udp { .. }) => {}
        }
    }
    out
}

#[cfg(test)]
mod describe_tests {
    use super::*;
    use crate::config::{HubConfig, HumanDuration};
    use crate::hub::{Source, Takeover, Transport};
    use crate::media::{AudioConfig, VideoConfig};
    use bytes::Bytes;

    fn hub(gop_cache_bytes: usize) -> Arc<Hub> {
        let cfg = HubConfig {
            gop_cache_bytes,
            gop_cache_duration: HumanDuration(Duration::from_secs(10)),
            gop_cache_total_bytes: 1 << 30,
            subscriber_queue: 64,
            max_skips_per_minute: 3,
            ..HubConfig::default()
        };
        Hub::new(cfg, 4)
    }

    fn source() -> Source {
        Source { transport: Transport::Udp, peer: "127.0.0.1:1".parse().unwrap(), ssrc: Some(1) }
    }

    fn video(pts: i64, key: bool) -> Frame {
        let config = CodecConfig::Video(VideoConfig {
            sps: Bytes::from_static(&[0x67, 0x42, 0xC0, 0x1E]),
            pps: Bytes::from_static(&[0x68, 0xCE]),
            width: 352,
            height: 288,
            ..Default::default()
        });
        Frame {
            codec: Codec::H264,
            pts,
            dts: pts,
            keyframe: key,
            data: Bytes::from(vec![0u8; 64]),
            config: Arc::new(config),
            cache: Default::default(),
        }
    }

    fn g711(pts: i64) -> Frame {
        Frame {
            codec: Codec::G711A,
            pts,
            dts: pts,
            keyframe: true,
            data: Bytes::from_static(&[0xd5; 320]),
            config: Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: 8000, channels: 1, asc: None })),
            cache: Default::default(),
        }
    }

    fn aac_config() -> Arc<CodecConfig> {
        Arc::new(CodecConfig::Audio(AudioConfig {
            sample_rate: 11025,
            channels: 1,
            asc: Some(Bytes::from_static(&[0x13, 0x88])),
        }))
    }

    /// D167: the tracks come from what the stream published and announced, not from frames still
    /// to come, so a stream whose GOP cache holds nothing (here every frame overflows the cache)
    /// is described with its video and its announced AAC track although no further frame and no
    /// AAC frame is ever published.
    #[tokio::test]
    async fn describe_uses_what_the_stream_published_even_with_nothing_cached() {
        let hub = hub(16);
        let s = hub.create("rtp/1", source(), Takeover::Refuse).unwrap();
        s.announce_audio(Codec::Aac, aac_config());
        s.publish(video(0, true));
        assert_eq!(s.gop_cache_usage().0, 0, "the test wants an empty GOP cache");
        let tracks = stream_tracks(&hub, "rtp/1").await.unwrap();
        let codecs: Vec<Codec> = tracks.iter().map(|t| t.codec).collect();
        assert_eq!(codecs, [Codec::H264, Codec::Aac]);
        assert!(matches!(&*tracks[0].config, CodecConfig::Video(v) if v.width == 352));
        assert!(known_tracks(&s, false).is_some(), "known at once");
    }

    /// A young passthrough stream whose video is known but whose audio has not come yet is not
    /// described yet; DESCRIBE waits and lists the G.711 track once its frames arrive.
    #[tokio::test]
    async fn a_young_stream_is_described_once_its_audio_arrives() {
        let hub = hub(1 << 20);
        let s = hub.create("rtp/2", source(), Takeover::Refuse).unwrap();
        s.publish(video(0, true));
        assert!(known_tracks(&s, false).is_none(), "audio may still come");
        assert_eq!(known_tracks(&s, true).map(|t| t.len()), Some(1), "giving up: video only");
        let feeder = s.clone();
        tokio::spawn(async move {
            for i in 1..=8i64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                feeder.publish(g711(i * 3600));
            }
        });
        let tracks = stream_tracks(&hub, "rtp/2").await.unwrap();
        let codecs: Vec<Codec> = tracks.iter().map(|t| t.codec).collect();
        assert_eq!(codecs, [Codec::H264, Codec::G711A]);
    }
}
