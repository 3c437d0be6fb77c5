//! HLS on the HTTP listener: `GET /<stream>/index.m3u8` (one LL-HLS media playlist with
//! `EXT-X-MAP`), `init.mp4`, `seg<N>.m4s`, `part<N>.<i>.m4s`, and `hls.json` (codecs and URIs for a
//! browser's MSE player).
//!
//! One segmenter per watched stream ([`crate::proto::hls::Segmenter`] under a thin task): it is
//! a single hub subscriber (`hls`), started by the first playlist request (through
//! `hub.get_or_demand`, so GB INVITEs and on-demand pulls fire), fed the GOP cache at once, and
//! stopped, its memory freed, when no request came for `[hls] idle_timeout`.
//!
//! Viewers are sessions (D132): the first playlist (or `hls.json`) request of a viewer passes the
//! play rules (`on_play` hook, then `[auth]`) once and gets a session token, which every URI in
//! the playlist carries (`?session=...`). A playlist request without a token from the same
//! address with the same credentials joins that address's session (players reload the URL they
//! were given, not the token's). Media requests need the token. Each live session is one `hls`
//! player in `/api/v1/streams` and `/metrics`.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Action};
use crate::config::HlsConfig;
use crate::hub::{NotLive, Stream, Subscription, ViewerGuard};
use crate::proto::fmp4::AudioTrack;
use crate::proto::hls::{self as seg, Lookup, Readiness, Resource, Segmenter, SegmenterConfig};
use crate::server::http::{HttpState, Peer};

/// What the HLS output shares: the running segmenters, the viewer sessions and the counters.
pub struct HlsShared {
    cfg: HlsConfig,
    streams: Mutex<HashMap<String, Arc<StreamHls>>>,
    sessions: Mutex<Sessions>,
    /// Where a stream's next segmenter carries on (its previous one ended while watched).
    continuations: Mutex<HashMap<String, seg::Continuation>>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    sessions_created: AtomicU64,
    auth_refused: AtomicU64,
    segmenters_started: AtomicU64,
    segmenters_stopped_idle: AtomicU64,
    refused_full: AtomicU64,
    blocked_timeouts: AtomicU64,
}

/// `GET /metrics` and tests read this.
#[derive(Debug, Clone, Serialize)]
pub struct HlsSnapshot {
    /// Segmenters running now (streams watched over HLS).
    pub segmenters: usize,
    /// Bytes all segmenters hold (segments, parts, init segments, pending samples).
    pub bytes: usize,
    pub sessions: usize,
    pub sessions_created: u64,
    pub auth_refused: u64,
    pub segmenters_started: u64,
    /// Segmenters stopped because nobody asked for anything for `idle_timeout`.
    pub segmenters_stopped_idle: u64,
    /// Sessions or segmenters refused because `max_sessions` / `max_streams` was reached.
    pub refused_full: u64,
    /// Blocking requests (`_HLS_msn`, preload hints) that timed out.
    pub blocked_timeouts: u64,
    pub streams: Vec<HlsStreamSnapshot>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HlsStreamSnapshot {
    pub stream: String,
    pub codecs: Option<String>,
    #[serde(flatten)]
    pub stats: seg::SegmenterStats,
}

/// One watched stream.
struct StreamHls {
    name: String,
    stream: Arc<Stream>,
    seg: Mutex<Segmenter>,
    /// Bumped on every new part; waiters (blocking reloads, preload hints) watch it.
    changes: watch::Sender<u64>,
    /// ms since `born` of the last request.
    last_request: AtomicU64,
    born: Instant,
    ended: AtomicBool,
    bytes: AtomicUsize,
    stop: CancellationToken,
}

impl StreamHls {
    fn touch(&self) {
        self.last_request.store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.born.elapsed().saturating_sub(Duration::from_millis(self.last_request.load(Ordering::Relaxed)))
    }
}

struct Session {
    stream: String,
    /// (address, credentials): a tokenless reload from here joins this session.
    key: (IpAddr, String),
    last_seen: Instant,
    viewer: Option<ViewerGuard>,
}

#[derive(Default)]
struct Sessions {
    by_token: HashMap<String, Session>,
    by_key: HashMap<(IpAddr, String, String), String>,
    /// Live sessions by address (`max_sessions_per_source`).
    per_source: HashMap<IpAddr, usize>,
    last_sweep: Option<Instant>,
}

impl Sessions {
    fn remove(&mut self, token: &str) {
        if let Some(s) = self.by_token.remove(token) {
            if let Some(n) = self.per_source.get_mut(&s.key.0) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&s.key.0);
                }
            }
            let key = (s.key.0, s.stream, s.key.1);
            if self.by_key.get(&key).is_some_and(|t| t == token) {
                self.by_key.remove(&key);
            }
        }
    }

    /// Ends the sessions idle for `idle`, at most once a second (every driver ticks).
    fn sweep(&mut self, now: Instant, idle: Duration) {
        if self.last_sweep.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        self.expire(now, idle);
    }

    fn expire(&mut self, now: Instant, idle: Duration) {
        self.last_sweep = Some(now);
        let old: Vec<String> = self
            .by_token
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_seen) >= idle)
            .map(|(t, _)| t.clone())
            .collect();
        for t in old {
            self.remove(&t);
        }
    }
}

/// The longest stream name and query string an HLS request may have.
const MAX_NAME: usize = 256;
const MAX_QUERY: usize = 2048;

/// Rate limit of the warnings about refused players.
static REFUSE_LOG: Mutex<crate::util::RateLimit> = Mutex::new(crate::util::RateLimit::new(Duration::from_secs(10)));

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HlsShared {
    pub fn new(cfg: &HlsConfig) -> Arc<HlsShared> {
        Arc::new(HlsShared {
            cfg: cfg.clone(),
            streams: Mutex::new(HashMap::new()),
            sessions: Mutex::new(Sessions::default()),
            continuations: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        })
    }

    fn segmenter_config(&self) -> SegmenterConfig {
        let ticks = |d: Duration| (d.as_micros() as u64 * 9 / 100).max(1);
        SegmenterConfig {
            part_target: ticks(self.cfg.part_duration.0),
            segment_min: ticks(self.cfg.segment_duration.0),
            segment_max: ticks(self.cfg.max_segment_duration.0),
            max_segments: self.cfg.segments,
            max_bytes: self.cfg.max_bytes_per_stream,
        }
    }

    pub fn snapshot(&self) -> HlsSnapshot {
        let streams: Vec<_> = lock(&self.streams).values().cloned().collect();
        let mut views: Vec<HlsStreamSnapshot> = streams
            .iter()
            .map(|s| {
                let g = lock(&s.seg);
                HlsStreamSnapshot { stream: s.name.clone(), codecs: g.codecs().map(str::to_string), stats: g.stats() }
            })
            .collect();
        views.sort_by(|a, b| a.stream.cmp(&b.stream));
        let c = &self.counters;
        HlsSnapshot {
            segmenters: views.len(),
            bytes: views.iter().map(|v| v.stats.bytes).sum(),
            sessions: lock(&self.sessions).by_token.len(),
            sessions_created: c.sessions_created.load(Ordering::Relaxed),
            auth_refused: c.auth_refused.load(Ordering::Relaxed),
            segmenters_started: c.segmenters_started.load(Ordering::Relaxed),
            segmenters_stopped_idle: c.segmenters_stopped_idle.load(Ordering::Relaxed),
            refused_full: c.refused_full.load(Ordering::Relaxed),
            blocked_timeouts: c.blocked_timeouts.load(Ordering::Relaxed),
            streams: views,
        }
    }

    /// Bytes all segmenters hold (cheap: no segmenter lock).
    pub fn bytes(&self) -> usize {
        lock(&self.streams).values().map(|s| s.bytes.load(Ordering::Relaxed)).sum()
    }
}

pub fn routes() -> Router<HttpState> {
    Router::new().route("/hls/{*path}", get(handle))
}

/// A request's query: the session token, the LL-HLS directives, and the rest (credentials).
#[derive(Debug, Default)]
struct Query {
    session: Option<String>,
    msn: Option<Result<u64, ()>>,
    part: Option<Result<u64, ()>>,
    creds: String,
}

fn parse_query(q: &str) -> Query {
    let mut out = Query::default();
    let mut rest = Vec::new();
    for kv in q.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "session" => out.session = Some(v.to_string()),
            "_HLS_msn" => out.msn = Some(v.parse().map_err(|_| ())),
            "_HLS_part" => out.part = Some(v.parse().map_err(|_| ())),
            // Directives this server does not implement (delta updates) are ignored.
            "_HLS_skip" => {}
            _ => rest.push(kv),
        }
    }
    out.creds = rest.join("&");
    out
}

fn status(code: StatusCode, why: impl Into<String>) -> Response {
    let mut r = (code, format!("{}\n", why.into())).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r
}

fn media(content_type: &'static str, cache: &'static str, body: Bytes) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    // Media only, and a session token stands for the viewer's credentials: players on other
    // origins (hls.js pages) may read it.
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

async fn handle(
    State(st): State<HttpState>,
    Extension(Peer(peer)): Extension<Peer>,
    Path(path): Path<String>,
    uri: Uri,
) -> Response {
    let hls = st.hls.clone();
    if !hls.cfg.enabled {
        return status(StatusCode::NOT_FOUND, "HLS is disabled ([hls] enabled = false)");
    }
    let Some((name, file)) = path.rsplit_once('/').filter(|(n, _)| !n.is_empty()) else {
        return status(StatusCode::NOT_FOUND, "no such file");
    };
    let Some(resource) = seg::parse_resource(file) else {
        return status(StatusCode::NOT_FOUND, "no such file");
    };
    // Names and queries are kept per session: bounded, as every peer input.
    if name.len() > MAX_NAME || uri.query().is_some_and(|q| q.len() > MAX_QUERY) {
        return status(StatusCode::URI_TOO_LONG, "stream name or query too long");
    }
    let q = parse_query(uri.query().unwrap_or(""));
    match resource {
        Resource::Playlist | Resource::Info => entry(&st, &hls, name, peer, q, resource).await,
        _ => media_request(&hls, name, q, resource).await,
    }
}

/// A playlist or `hls.json` request: the viewer's session (the play rules on its first
/// request), the segmenter (started on demand), then the answer.
async fn entry(
    st: &HttpState,
    hls: &Arc<HlsShared>,
    name: &str,
    peer: std::net::SocketAddr,
    q: Query,
    resource: Resource,
) -> Response {
    let (msn, part) = match (q.msn, q.part) {
        (Some(Err(())), _) | (_, Some(Err(()))) => {
            return status(StatusCode::BAD_REQUEST, "_HLS_msn and _HLS_part are numbers")
        }
        (None, Some(_)) => return status(StatusCode::BAD_REQUEST, "_HLS_part needs _HLS_msn"),
        (m, p) => (m.and_then(Result::ok), p.and_then(Result::ok)),
    };
    let now = Instant::now();
    let existing = find_session(hls, name, peer.ip(), &q, now);
    if existing.is_none() {
        // The play rules come before anything is started on demand (an INVITE, a pull).
        if let Err(why) = authorize(st, name, peer, &q.creds).await {
            hls.counters.auth_refused.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = lock(&REFUSE_LOG).check(now) {
                tracing::warn!(stream = %name, %peer, suppressed, "HLS play refused: {why}");
            }
            return status(StatusCode::FORBIDDEN, why);
        }
    }
    let sh = match segmenter(st, hls, name).await {
        Ok(sh) => sh,
        Err(r) => return r,
    };
    // A session only for a stream that exists: unknown names leave nothing behind.
    let session = match existing {
        Some(t) => t,
        None => match new_session(hls, name, peer.ip(), &q.creds, now) {
            Ok(t) => t,
            Err(why) => return status(StatusCode::SERVICE_UNAVAILABLE, why),
        },
    };
    sh.touch();
    {
        let mut sessions = lock(&hls.sessions);
        if let Some(s) = sessions.by_token.get_mut(&session) {
            s.last_seen = now;
            if s.viewer.as_ref().is_none_or(|v| !Arc::ptr_eq(v.stream(), &sh.stream)) {
                s.viewer = Some(sh.stream.add_viewer("hls"));
            }
        }
    }
    // A player that needs a complete segment (ffmpeg) gets one: the driver completes the first
    // segment as soon as the GOP cache has been fed.
    let first_deadline = tokio::time::Instant::now() + hls.cfg.max_segment_duration.0 + Duration::from_secs(2);
    if let Err(r) = wait_for(hls, &sh, first_deadline, |s| if s.has_segment() { Some(()) } else { None }).await {
        return r;
    }
    if let Some(msn) = msn {
        // Blocking playlist reload (RFC 8216bis 6.2.5.2): held until the segment or part exists,
        // for at most three target durations.
        let td = lock(&sh.seg).target_duration();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3 * td);
        let r = wait_for(hls, &sh, deadline, |s| match s.playlist_ready(msn, part) {
            Readiness::Ready => Some(Ok(())),
            Readiness::Bad => Some(Err(())),
            Readiness::Wait => None,
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(())) => return status(StatusCode::BAD_REQUEST, "_HLS_msn is too far ahead of the live edge"),
            Err(r) => return r,
        }
    }
    let query = format!("session={session}");
    let g = lock(&sh.seg);
    match resource {
        Resource::Info => {
            let (width, height) = g.resolution().unzip();
            let codecs = g.codecs().unwrap_or("").to_string();
            let body = serde_json::json!({
                "stream": name,
                "session": session,
                "codecs": codecs,
                "mime": format!("video/mp4; codecs=\"{codecs}\""),
                "width": width,
                "height": height,
                "playlist": format!("index.m3u8?{query}"),
                "init": format!("init.mp4?{query}"),
                "target_duration": g.target_duration(),
                "part_target": g.part_target(),
            });
            drop(g);
            let mut r = axum::Json(body).into_response();
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            r
        }
        _ => {
            let text = g.playlist(&query);
            drop(g);
            media("application/vnd.apple.mpegurl", "no-cache", Bytes::from(text))
        }
    }
}

/// The session of a request: its token (for this stream), else the session of the same
/// address and credentials.
fn find_session(hls: &HlsShared, name: &str, ip: IpAddr, q: &Query, now: Instant) -> Option<String> {
    let mut sessions = lock(&hls.sessions);
    let idle = hls.cfg.idle_timeout.0;
    let token = match q.session.as_deref() {
        Some(t) if sessions.by_token.get(t).is_some_and(|s| s.stream == name) => t.to_string(),
        _ => sessions.by_key.get(&(ip, name.to_string(), q.creds.clone()))?.clone(),
    };
    let alive = sessions.by_token.get(&token).is_some_and(|s| now.duration_since(s.last_seen) < idle);
    if !alive {
        sessions.remove(&token);
        return None;
    }
    Some(token)
}

fn new_session(hls: &HlsShared, name: &str, ip: IpAddr, creds: &str, now: Instant) -> Result<String, &'static str> {
    let mut sessions = lock(&hls.sessions);
    let idle = hls.cfg.idle_timeout.0;
    let per_source = sessions.per_source.get(&ip).copied().unwrap_or(0);
    if sessions.by_token.len() >= hls.cfg.max_sessions || per_source >= hls.cfg.max_sessions_per_source {
        sessions.expire(now, idle);
        let per_source = sessions.per_source.get(&ip).copied().unwrap_or(0);
        if sessions.by_token.len() >= hls.cfg.max_sessions {
            hls.counters.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err("too many HLS sessions ([hls] max_sessions)");
        }
        if per_source >= hls.cfg.max_sessions_per_source {
            hls.counters.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err("too many HLS sessions from this address ([hls] max_sessions_per_source)");
        }
    }
    let t = token();
    sessions.by_key.insert((ip, name.to_string(), creds.to_string()), t.clone());
    sessions.by_token.insert(
        t.clone(),
        Session { stream: name.to_string(), key: (ip, creds.to_string()), last_seen: now, viewer: None },
    );
    *sessions.per_source.entry(ip).or_insert(0) += 1;
    hls.counters.sessions_created.fetch_add(1, Ordering::Relaxed);
    Ok(t)
}

/// The play rules, as RTSP and RTMP apply them: the cc's `on_play` hook decides when it answers,
/// else `[auth]`.
async fn authorize(st: &HttpState, name: &str, peer: std::net::SocketAddr, creds: &str) -> Result<(), String> {
    let notifier = st.hub.notifier();
    if notifier.is_enabled() {
        let req = crate::notify::AccessRequest {
            kind: crate::notify::AccessKind::Play,
            stream: name.to_string(),
            protocol: "hls",
            peer,
            params: (!creds.is_empty()).then(|| creds.to_string()),
        };
        match notifier.authorize(req).await {
            crate::notify::Decision::Allow => return Ok(()),
            crate::notify::Decision::Deny(why) => return Err(format!("denied by the control center: {why}")),
            crate::notify::Decision::Fallback(_) => {}
        }
    }
    auth::check(&st.cfg.auth, Action::Play, name, creds, peer.ip(), unix_now())
        .map(|_| ())
        .map_err(|e| format!("authentication failed: {e}"))
}

/// The stream's running segmenter, or a new one (the stream started on demand if needed).
async fn segmenter(st: &HttpState, hls: &Arc<HlsShared>, name: &str) -> Result<Arc<StreamHls>, Response> {
    if let Some(sh) = lock(&hls.streams).get(name).filter(|s| !s.ended.load(Ordering::Relaxed)) {
        return Ok(sh.clone());
    }
    let stream = match st.hub.get_or_demand(name).await {
        Ok(s) => s,
        Err(NotLive::Unknown) => return Err(status(StatusCode::NOT_FOUND, format!("no stream named {name:?}"))),
        Err(NotLive::Failed(why)) => return Err(status(StatusCode::SERVICE_UNAVAILABLE, why)),
    };
    let mut streams = lock(&hls.streams);
    // Another request may have started it meanwhile.
    if let Some(sh) = streams.get(name).filter(|s| !s.ended.load(Ordering::Relaxed)) {
        return Ok(sh.clone());
    }
    if streams.len() >= hls.cfg.max_streams {
        hls.counters.refused_full.fetch_add(1, Ordering::Relaxed);
        return Err(status(StatusCode::SERVICE_UNAVAILABLE, "too many HLS streams ([hls] max_streams)"));
    }
    let audio = stream.announced_audio().and_then(|(codec, cfg)| match &*cfg {
        crate::frame::CodecConfig::Audio(a) => AudioTrack::aac(codec, a),
        _ => None,
    });
    let mut segmenter = Segmenter::new(hls.segmenter_config(), audio);
    if let Some(c) = lock(&hls.continuations).remove(name) {
        segmenter.resume(c);
    }
    let sub = stream.subscribe_as("hls");
    let sh = Arc::new(StreamHls {
        name: name.to_string(),
        stream,
        seg: Mutex::new(segmenter),
        changes: watch::channel(0).0,
        last_request: AtomicU64::new(0),
        born: Instant::now(),
        ended: AtomicBool::new(false),
        bytes: AtomicUsize::new(0),
        stop: CancellationToken::new(),
    });
    streams.insert(name.to_string(), sh.clone());
    drop(streams);
    hls.counters.segmenters_started.fetch_add(1, Ordering::Relaxed);
    tracing::info!(stream = %name, "HLS segmenter started");
    tokio::spawn(drive(hls.clone(), sh.clone(), sub));
    Ok(sh)
}

/// Waits until `ready` says something about the segmenter, its stream ends, or `deadline`.
async fn wait_for<T>(
    hls: &HlsShared,
    sh: &StreamHls,
    deadline: tokio::time::Instant,
    ready: impl Fn(&Segmenter) -> Option<T>,
) -> Result<T, Response> {
    let mut rx = sh.changes.subscribe();
    loop {
        if let Some(v) = ready(&lock(&sh.seg)) {
            return Ok(v);
        }
        if sh.ended.load(Ordering::Relaxed) {
            return Err(status(StatusCode::NOT_FOUND, "the stream ended"));
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(status(StatusCode::NOT_FOUND, "the stream ended")),
            Err(_) => {
                hls.counters.blocked_timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(status(StatusCode::SERVICE_UNAVAILABLE, "not ready in time"));
            }
        }
    }
}

/// An init segment, segment or part: needs the session the playlist gave.
async fn media_request(hls: &Arc<HlsShared>, name: &str, q: Query, resource: Resource) -> Response {
    let now = Instant::now();
    {
        let mut sessions = lock(&hls.sessions);
        let ok = q.session.as_deref().and_then(|t| sessions.by_token.get_mut(t)).filter(|s| s.stream == name);
        match ok {
            Some(s) if now.duration_since(s.last_seen) < hls.cfg.idle_timeout.0 => s.last_seen = now,
            _ => return status(StatusCode::FORBIDDEN, "no HLS session: load index.m3u8 first"),
        }
    }
    let Some(sh) = lock(&hls.streams).get(name).cloned() else {
        return status(StatusCode::NOT_FOUND, "this stream is not segmented now: reload index.m3u8");
    };
    sh.touch();
    let lookup = |s: &Segmenter| match resource {
        Resource::Init(id) => s.init(id).map_or(Lookup::Gone, |b| Lookup::Ready(vec![b])),
        Resource::Segment(msn) => s.segment(msn),
        Resource::Part(msn, i) => s.part(msn, i),
        Resource::Playlist | Resource::Info => Lookup::Gone,
    };
    // A preload hint (the next part) or the segment being filled is held until it exists.
    let td = lock(&sh.seg).target_duration();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3 * td);
    let found = wait_for(hls, &sh, deadline, |s| match lookup(s) {
        Lookup::Pending => None,
        other => Some(other),
    })
    .await;
    match found {
        Ok(Lookup::Ready(chunks)) => {
            let body = match chunks.len() {
                1 => chunks.into_iter().next().unwrap_or_default(),
                _ => Bytes::from(chunks.concat()),
            };
            let cache = if matches!(resource, Resource::Init(None)) { "no-cache" } else { "max-age=60" };
            media("video/mp4", cache, body)
        }
        Ok(_) => status(StatusCode::NOT_FOUND, "no longer (or not yet) in the window"),
        Err(r) => r,
    }
}

/// The segmenter's task: hub frames into the segmenter until the stream ends or nobody asked
/// for anything for `idle_timeout`.
async fn drive(hls: Arc<HlsShared>, sh: Arc<StreamHls>, mut sub: Subscription) {
    let idle = hls.cfg.idle_timeout.0;
    let mut tick = tokio::time::interval(Duration::from_millis(500).min(idle / 2));
    let mut caught_up = false;
    let why = loop {
        tokio::select! {
            _ = sh.stop.cancelled() => break "stopped".to_string(),
            r = sub.recv() => {
                let frame = match r {
                    Ok(f) => f,
                    Err(e) => break e.to_string(),
                };
                let mut ended = None;
                let (changed, bytes) = {
                    let mut g = lock(&sh.seg);
                    let mut changed = g.push(frame);
                    // Everything already queued (the GOP cache, at first) in one go.
                    loop {
                        match sub.try_recv() {
                            Some(Ok(f)) => changed |= g.push(f),
                            Some(Err(e)) => {
                                ended = Some(e.to_string());
                                break;
                            }
                            None => break,
                        }
                    }
                    // The GOP cache is in: the first segment ends at the live edge (D131).
                    if !caught_up && g.cut() {
                        caught_up = true;
                        changed = true;
                    }
                    (changed, g.stats().bytes)
                };
                sh.bytes.store(bytes, Ordering::Relaxed);
                if changed {
                    sh.changes.send_modify(|v| *v += 1);
                }
                if let Some(e) = ended {
                    break e;
                }
            }
            _ = tick.tick() => {
                if sh.idle_for() >= idle {
                    hls.counters.segmenters_stopped_idle.fetch_add(1, Ordering::Relaxed);
                    break format!("no request for {idle:?}");
                }
                lock(&hls.sessions).sweep(Instant::now(), idle);
            }
        }
    };
    sh.ended.store(true, Ordering::Relaxed);
    sh.changes.send_modify(|v| *v += 1);
    drop(sub);
    {
        let mut streams = lock(&hls.streams);
        if streams.get(&sh.name).is_some_and(|s| Arc::ptr_eq(s, &sh)) {
            streams.remove(&sh.name);
        }
    }
    // Viewers still there (the stream ended under them) continue on a successor's numbering.
    if sh.idle_for() < idle {
        let c = lock(&sh.seg).continuation();
        let mut conts = lock(&hls.continuations);
        if conts.len() < hls.cfg.max_streams * 4 {
            conts.insert(sh.name.clone(), c);
        }
    }
    // The memory goes now, not when the last waiter lets go of the entry.
    *lock(&sh.seg) = Segmenter::new(SegmenterConfig::default(), None);
    sh.bytes.store(0, Ordering::Relaxed);
    lock(&hls.sessions).expire(Instant::now(), idle);
    tracing::info!(stream = %sh.name, "HLS segmenter stopped: {why}");
}
