//! HTTP-FLV and WebSocket-FLV players: `GET /<stream>.flv` on the HTTP listener (D124).
//!
//! The FLV byte stream (file header, `onMetaData`, sequence headers, the cached GOP, then live
//! tags) is built from the same [`FlvFlow`] as RTMP players, and its tag bodies are the ones
//! cached once per frame in `frame.cache` (shared with RTMP). Over HTTP the response body *pulls*
//! from the hub subscription: hyper asks for the next chunk only once the previous one is
//! written, so a slow player's frames pile up in its hub queue, where the hub skips it to the next
//! keyframe or disconnects it (it never slows ingest). The player also skips on its own when what
//! it finds queued exceeds `[http] max_queue_bytes`, and the listener drops a connection whose
//! socket accepts nothing for `[http] write_timeout`. Writes are merged as for RTMP
//! (`[http] merge_write`). Over WebSocket, the same chunks go out as binary messages.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::{self, Action};
use crate::frame::{Codec, Frame, MediaKind};
use crate::hub::{NotLive, Stream, Subscription};
use crate::proto::flv::HevcFlv;
use crate::proto::flv_file;
use crate::proto::flv_flow::{FlvFlow, Out};
use crate::server::batch;
use crate::server::http::{ConnHold, HttpState, Peer};
use crate::util::RateLimit;

/// Counters of the FLV players (`/metrics`).
#[derive(Debug, Default)]
pub struct FlvShared {
    /// Play requests refused by `[auth]` or the `on_play` hook.
    pub auth_refused: AtomicU64,
    /// Play requests for a stream that is not live and that nothing started on demand.
    pub not_found: AtomicU64,
    /// Frames players dropped themselves, finding more than `[http] max_queue_bytes` queued.
    pub skipped_frames: AtomicU64,
    /// Players that ended because they were too slow (the hub cut them off).
    pub too_slow: AtomicU64,
    /// WebSocket sends that stalled beyond `[http] write_timeout`.
    pub ws_write_timeouts: AtomicU64,
}

/// A snapshot of [`FlvShared`].
#[derive(Debug, Clone, Serialize)]
pub struct FlvCounters {
    pub auth_refused: u64,
    pub not_found: u64,
    pub skipped_frames: u64,
    pub too_slow: u64,
    pub ws_write_timeouts: u64,
}

impl FlvShared {
    pub fn snapshot(&self) -> FlvCounters {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FlvCounters {
            auth_refused: l(&self.auth_refused),
            not_found: l(&self.not_found),
            skipped_frames: l(&self.skipped_frames),
            too_slow: l(&self.too_slow),
            ws_write_timeouts: l(&self.ws_write_timeouts),
        }
    }
}

/// Rate limit of the warnings about refused players.
static REFUSED_LOG: std::sync::Mutex<RateLimit> = std::sync::Mutex::new(RateLimit::new(Duration::from_secs(1)));

pub fn routes() -> Router<HttpState> {
    Router::new().route("/flv/{*stream}", get(play).options(preflight))
}

/// Media carries no cookie-based authority: a credential, if any, is in the URL (`[auth]`, the
/// `on_play` hook), and `*` forbids credentialed requests, so any page may play what its user can
/// already fetch with a plain GET (flv.js and mpegts.js fetch cross-origin).
fn cors(headers: &mut HeaderMap) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
}

async fn preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    cors(r.headers_mut());
    r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, OPTIONS"));
    r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("*"));
    r.headers_mut().insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    r
}

fn plain(status: StatusCode, text: String) -> Response {
    let mut r = (status, text).into_response();
    cors(r.headers_mut());
    r
}

/// The `hevc` query parameter: `enhanced` or `legacy` (anything else is refused).
fn hevc_of(query: &str, default: HevcFlv) -> Result<HevcFlv, String> {
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k == "hevc" {
            return match &*v {
                "enhanced" => Ok(HevcFlv::Enhanced),
                "legacy" => Ok(HevcFlv::Legacy),
                other => Err(format!("hevc={other:?}: use enhanced or legacy")),
            };
        }
    }
    Ok(default)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn play(
    State(st): State<HttpState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    req: axum::extract::Request,
) -> Response {
    let query = query.unwrap_or_default();
    let peer = req.extensions().get::<Peer>().map(|p| p.0).unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
    let hold = req.extensions().get::<ConnHold>().cloned();
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let protocol = if websocket { "ws-flv" } else { "http-flv" };
    let hevc = match hevc_of(&query, st.cfg.http.hevc.unwrap_or(st.cfg.rtmp.hevc)) {
        Ok(h) => h,
        Err(why) => return plain(StatusCode::BAD_REQUEST, why),
    };
    // The play rules, before anything starts on demand: the cc's on_play hook decides when it
    // answers (D97), `[auth]` otherwise.
    let notifier = st.hub.notifier();
    let decision = if notifier.is_enabled() {
        let req = crate::notify::AccessRequest {
            kind: crate::notify::AccessKind::Play,
            stream: name.clone(),
            protocol,
            peer,
            params: (!query.is_empty()).then(|| query.clone()),
        };
        notifier.authorize(req).await
    } else {
        crate::notify::Decision::Fallback(String::new())
    };
    let verdict = match decision {
        crate::notify::Decision::Allow => Ok(()),
        crate::notify::Decision::Deny(why) => Err(format!("denied by the control center: {why}")),
        crate::notify::Decision::Fallback(_) => {
            auth::check(&st.cfg.auth, Action::Play, &name, &query, peer.ip(), unix_now())
                .map(|_| ())
                .map_err(|e| format!("authentication failed: {e}"))
        }
    };
    if let Err(why) = verdict {
        st.flv.auth_refused.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = REFUSED_LOG.lock().unwrap_or_else(|p| p.into_inner()).check(std::time::Instant::now())
        {
            warn!(stream = %name, %peer, protocol, suppressed, "FLV play refused: {why}");
        }
        return plain(StatusCode::FORBIDDEN, why);
    }
    let stream = match st.hub.get_or_demand(&name).await {
        Ok(s) => s,
        Err(e) => {
            st.flv.not_found.fetch_add(1, Ordering::Relaxed);
            debug!(stream = %name, %peer, protocol, "FLV play: {e}");
            let status = match e {
                NotLive::Unknown => StatusCode::NOT_FOUND,
                // A start on demand failed (camera offline, pull refused): the cause is told.
                NotLive::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            return plain(status, e.to_string());
        }
    };
    let opts = PlayerOptions {
        hevc,
        merge: st.cfg.http.merge_write.0,
        max_queue_bytes: st.cfg.http.max_queue_bytes,
        shutdown: st.shutdown.clone(),
    };
    if websocket {
        let (mut parts, _body) = req.into_parts();
        let ws = match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => ws,
            Err(rejection) => return rejection.into_response(),
        };
        info!(stream = %stream.name, %peer, "WebSocket-FLV play");
        let player = FlvPlayer::new(&stream, stream.subscribe_as("ws-flv"), opts, st.flv.clone());
        let write_timeout = st.cfg.http.write_timeout.0;
        let shared = st.flv.clone();
        let mut r =
            ws.write_buffer_size(0).on_upgrade(move |socket| ws_player(socket, player, write_timeout, shared, hold));
        cors(r.headers_mut());
        return r;
    }
    info!(stream = %stream.name, %peer, "HTTP-FLV play");
    let player = FlvPlayer::new(&stream, stream.subscribe_as("http-flv"), opts, st.flv.clone());
    let body = futures_util::stream::unfold(player, |mut p| async move {
        let chunk = p.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), p))
    });
    let mut r = Response::new(axum::body::Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/x-flv"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
    cors(h);
    r
}

/// Sends the player's chunks as binary messages; pings are answered by the library, anything
/// else the browser sends is read and ignored; a close or a stalled send ends the player.
async fn ws_player(
    mut socket: axum::extract::ws::WebSocket,
    mut player: FlvPlayer,
    write_timeout: Duration,
    shared: Arc<FlvShared>,
    _hold: Option<ConnHold>,
) {
    use axum::extract::ws::Message;
    loop {
        tokio::select! {
            chunk = player.next_chunk() => {
                let Some(chunk) = chunk else { break };
                match tokio::time::timeout(write_timeout, socket.send(Message::Binary(chunk))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        debug!(stream = %player.stream, "WebSocket-FLV send failed: {e}");
                        return;
                    }
                    Err(_) => {
                        shared.ws_write_timeouts.fetch_add(1, Ordering::Relaxed);
                        debug!(stream = %player.stream, "WebSocket-FLV send stalled {write_timeout:?}: closed");
                        return;
                    }
                }
            }
            m = socket.recv() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = tokio::time::timeout(write_timeout, socket.send(Message::Close(None))).await;
}

/// How one FLV player is served.
#[derive(Clone)]
pub struct PlayerOptions {
    pub hevc: HevcFlv,
    /// Merged write interval (0: one chunk per video frame).
    pub merge: Duration,
    /// Media a player may find queued when it is next able to write; beyond it, it skips.
    pub max_queue_bytes: usize,
    pub shutdown: CancellationToken,
}

/// One FLV player: hub frames in, chunks of the FLV byte stream out.
pub struct FlvPlayer {
    stream: String,
    sub: Subscription,
    flow: FlvFlow,
    opts: PlayerOptions,
    shared: Arc<FlvShared>,
    /// The file header, until the first chunk carries it.
    header: Option<[u8; 13]>,
    buf: Vec<u8>,
    out: Vec<Out>,
    frames: Vec<Frame>,
    seen_video: bool,
    wrote_media: bool,
    /// Dropping frames until the next video keyframe (after its own skip).
    skipping: bool,
    /// The cached GOP's bytes at join: the first drains may be that much larger than the cap.
    gop_allowance: usize,
    ended: bool,
}

impl FlvPlayer {
    pub fn new(stream: &Arc<Stream>, sub: Subscription, opts: PlayerOptions, shared: Arc<FlvShared>) -> FlvPlayer {
        // G.711 is not carried in FLV (as on RTMP): such a stream is video only.
        let audio = stream.announced_audio().is_some_and(|(c, _)| c == Codec::Aac);
        FlvPlayer {
            stream: stream.name.clone(),
            sub,
            flow: FlvFlow::new(&stream.name, opts.hevc),
            opts,
            shared,
            header: Some(flv_file::header(audio, true)),
            buf: Vec::new(),
            out: Vec::new(),
            frames: Vec::new(),
            seen_video: false,
            wrote_media: false,
            skipping: false,
            gop_allowance: stream.gop_cache_usage().1,
            ended: false,
        }
    }

    /// The next chunk of the byte stream; `None` once the stream ended, the hub cut this player
    /// off, or the gateway stops.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        let merging = !self.opts.merge.is_zero();
        let mut hold_until: Option<tokio::time::Instant> = None;
        loop {
            let take_frames = !(merging && hold_until.is_some());
            tokio::select! {
                biased;
                _ = self.opts.shutdown.cancelled() => {
                    self.ended = true;
                    return None;
                }
                _ = batch::sleep_until_opt(hold_until) => {
                    if merging {
                        self.append(None);
                    }
                    return Some(self.take());
                }
                f = self.sub.recv(), if take_frames => match f {
                    Ok(frame) => {
                        let video_sent = self.append(Some(frame));
                        self.seen_video |= video_sent;
                        if self.buf.is_empty() {
                            continue;
                        }
                        match batch::hold(self.opts.merge, video_sent, self.seen_video, self.wrote_media, self.buf.len()) {
                            None => {
                                self.wrote_media = true;
                                return Some(self.take());
                            }
                            Some(wait) => {
                                hold_until.get_or_insert_with(|| tokio::time::Instant::now() + wait);
                            }
                        }
                    }
                    Err(e) => {
                        if matches!(e, crate::hub::SubscriptionEnded::TooSlow) {
                            self.shared.too_slow.fetch_add(1, Ordering::Relaxed);
                            info!(stream = %self.stream, "FLV player too slow: disconnected");
                        }
                        self.ended = true;
                        return (!self.buf.is_empty()).then(|| self.take());
                    }
                },
            }
        }
    }

    fn take(&mut self) -> Bytes {
        if let Some(h) = self.header.take() {
            let mut chunk = Vec::with_capacity(h.len() + self.buf.len());
            chunk.extend_from_slice(&h);
            chunk.extend_from_slice(&self.buf);
            self.buf.clear();
            batch::trim(&mut self.buf);
            return Bytes::from(chunk);
        }
        // The chunk is handed over (hyper holds it until written); the next one starts anew.
        let next = Vec::with_capacity(self.buf.len().min(batch::BATCH_BYTES));
        Bytes::from(std::mem::replace(&mut self.buf, next))
    }

    /// Takes `first` (if any) and everything already queued, drops what a skip requires, and
    /// appends the tags; returns whether video was among them. Draining the whole queue is what
    /// lets the byte cap see a backlog; the frames are shared already, and what is serialised is
    /// at most the cap (or the cached GOP at join).
    fn append(&mut self, first: Option<Frame>) -> bool {
        let mut frames = std::mem::take(&mut self.frames);
        let mut bytes = 0usize;
        let mut next = first.or_else(|| self.sub.try_recv().and_then(Result::ok));
        while let Some(f) = next.take() {
            bytes += f.data.len();
            frames.push(f);
            // The end of the stream is seen again by the next `recv`.
            next = self.sub.try_recv().and_then(Result::ok);
        }
        // More queued than the cap: this player fell behind; it resumes at the newest keyframe
        // it holds, or at the next one to come.
        let cap = self.opts.max_queue_bytes.saturating_add(std::mem::take(&mut self.gop_allowance));
        let mut start = 0;
        if bytes > cap {
            let key = frames.iter().rposition(|f| f.keyframe && f.kind() == MediaKind::Video);
            start = key.unwrap_or(frames.len());
            self.skipping = key.is_none();
            self.shared.skipped_frames.fetch_add(start as u64, Ordering::Relaxed);
            debug!(stream = %self.stream, bytes, dropped = start, "FLV player behind: skipping to a keyframe");
        }
        let mut video_sent = false;
        for f in frames.drain(..).skip(start) {
            let video = f.kind() == MediaKind::Video;
            if self.skipping {
                if !(video && f.keyframe) {
                    self.shared.skipped_frames.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                self.skipping = false;
            }
            self.flow.push(&f, &mut self.out);
            for o in self.out.drain(..) {
                video_sent |= matches!(o, Out::Video(..));
                flv_file::put_out(&mut self.buf, &o);
            }
        }
        self.frames = frames;
        video_sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HubConfig;
    use crate::frame::{CodecConfig, VideoConfig};
    use crate::hub::{Hub, Source, Takeover, Transport};

    fn video(i: i64, key: bool) -> Frame {
        Frame {
            codec: Codec::H264,
            pts: i * 3600,
            dts: i * 3600,
            keyframe: key,
            data: Bytes::from(vec![0x55; 10_000]),
            config: Arc::new(CodecConfig::Video(VideoConfig::default())),
            cache: Default::default(),
        }
    }

    /// Video frame tags of an FLV chunk (no file header): (keyframe, timestamp ms).
    fn frames(chunk: &[u8]) -> Vec<(bool, u32)> {
        let (mut i, mut out) = (0, Vec::new());
        while i + 11 <= chunk.len() {
            let size = u32::from_be_bytes([0, chunk[i + 1], chunk[i + 2], chunk[i + 3]]) as usize;
            let ts = u32::from_be_bytes([chunk[i + 7], chunk[i + 4], chunk[i + 5], chunk[i + 6]]);
            if chunk[i] == flv_file::TAG_VIDEO && chunk[i + 12] == 1 {
                out.push((chunk[i + 11] >> 4 == 1, ts));
            }
            i += 11 + size + 4;
        }
        out
    }

    /// A player that finds more than `max_queue_bytes` queued when its merge interval ends skips
    /// to the newest keyframe it holds (counted), instead of sending the whole backlog late.
    #[tokio::test]
    async fn a_player_behind_by_more_than_its_byte_cap_resumes_at_the_newest_keyframe() {
        let hub = Hub::new(HubConfig { subscriber_queue: 512, ..HubConfig::default() }, 4);
        let source = Source { transport: Transport::Udp, peer: "127.0.0.1:1".parse().unwrap(), ssrc: Some(1) };
        let stream = hub.create("s", source, Takeover::Refuse).unwrap();
        let shared = Arc::new(FlvShared::default());
        let opts = PlayerOptions {
            hevc: HevcFlv::Enhanced,
            merge: Duration::from_millis(50),
            max_queue_bytes: 64 << 10,
            shutdown: CancellationToken::new(),
        };
        let mut p = FlvPlayer::new(&stream, stream.subscribe_as("http-flv"), opts, shared.clone());
        stream.publish(video(0, true));
        let first = p.next_chunk().await.unwrap();
        assert_eq!(&first[..3], b"FLV");
        assert_eq!(frames(&first[13..]), [(true, 0)], "the first write goes at once");
        // 29 frames (290 kB, keyframes at 10 and 20) queue up while the player does not read.
        for i in 1..30 {
            stream.publish(video(i, i % 10 == 0));
        }
        let next = p.next_chunk().await.unwrap();
        let got = frames(&next);
        assert_eq!(got[0], (true, 800), "resumes at the newest keyframe (frame 20): {got:?}");
        assert_eq!(got.len(), 10);
        assert_eq!(shared.skipped_frames.load(Ordering::Relaxed), 19);
        // Within the cap, nothing is skipped.
        for i in 30..35 {
            stream.publish(video(i, false));
        }
        assert_eq!(frames(&p.next_chunk().await.unwrap()).len(), 5);
        assert_eq!(shared.skipped_frames.load(Ordering::Relaxed), 19);
    }

    #[test]
    fn hevc_parameter() {
        assert_eq!(hevc_of("", HevcFlv::Enhanced), Ok(HevcFlv::Enhanced));
        assert_eq!(hevc_of("token=x&hevc=legacy", HevcFlv::Enhanced), Ok(HevcFlv::Legacy));
        assert_eq!(hevc_of("hevc=enhanced", HevcFlv::Legacy), Ok(HevcFlv::Enhanced));
        assert!(hevc_of("hevc=12", HevcFlv::Enhanced).is_err());
    }
}
