//! HTTP control API (axum). Handlers only read shared state; no protocol logic lives here.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::gb::{Gb, GbError, HistoryRequest, PlaybackControl, QueryKind};
use crate::hub::{Hub, Source, Stream, StreamStats};
use crate::proto::sip::manscdp;
use crate::proto::sip::sdp::MediaTransport;
use crate::server::api_error::{self, ApiError, ApiJson, ApiJsonOrDefault, ApiQuery};
use crate::server::rtp::{RtpCountersSnapshot, RtpShared};

#[derive(Clone)]
pub struct ApiState {
    pub hub: Arc<Hub>,
    pub rtp: Arc<RtpShared>,
    pub gb: Option<Gb>,
    pub rtmp: Arc<crate::server::rtmp::RtmpShared>,
    /// RTSP publishers (ANNOUNCE/RECORD) counters.
    pub rtsp_ingest: Arc<crate::server::rtsp_ingest::RtspIngest>,
    /// Connection admission of each TCP listener, by name (`rtsp`, `api`).
    pub listeners: Vec<(&'static str, Arc<crate::server::admit::Admission>)>,
    /// Streams with their own series in `/metrics` (`[api] metrics_streams`, D118).
    pub metrics_streams: usize,
    /// The `[[rtmp.push]]` pushes and their states.
    pub pushes: Arc<crate::client::rtmp_push::StaticPushes>,
    /// SIGHUP reloads: what the last one applied and what needs a restart.
    pub reload: Arc<crate::server::reload::Reloader>,
    /// Routes of the layers above the servers (channels), mounted after start (D101).
    pub upper: UpperRoutes,
    /// HTTP-FLV and WebSocket-FLV players' counters.
    pub http_flv: Arc<crate::server::http_flv::FlvShared>,
    /// HLS segmenters and sessions (for `/metrics`).
    pub hls: Arc<crate::server::hls::HlsShared>,
    /// The WebRTC output, for `/metrics`; `None` when off.
    pub webrtc: Option<Arc<crate::server::webrtc::WebRtc>>,
}

/// The routes an upper layer adds to the API ([`crate::server::Gateway::mount`]): requests no
/// route of this module takes go there, behind the same [`Policy`].
pub type UpperRoutes = Arc<std::sync::RwLock<Option<Router>>>;

/// The fallback: an upper layer's routes, else 404.
async fn upper_or_404(State(state): State<ApiState>, req: axum::extract::Request) -> Response {
    let upper = state.upper.read().unwrap_or_else(|e| e.into_inner()).clone();
    match upper {
        Some(r) => match tower::ServiceExt::oneshot(r, req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        },
        None => not_found(format!("no such endpoint: {} {}", req.method(), req.uri().path())),
    }
}

/// One stream as `GET /api/v1/streams` shows it: identity, the ingest figures, and fan-out.
#[derive(Debug, Serialize)]
pub struct StreamView {
    pub name: String,
    #[serde(serialize_with = "crate::server::rtp::serialize_source")]
    pub source: Source,
    #[serde(flatten)]
    pub stats: StreamStats,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub subscribers: usize,
    /// Subscribers by protocol, e.g. `{"rtsp": 10, "rtmp": 2}`.
    pub players: std::collections::BTreeMap<&'static str, usize>,
    /// Frames not delivered to slow subscribers (they resumed at the next keyframe).
    pub drops: u64,
    pub gop_cache_frames: usize,
    pub gop_cache_bytes: usize,
    /// Whether the GOP cache is kept (`kept`, `unwatched`, `over_budget`; D157) and how often it
    /// was emptied to stay within `[hub] gop_cache_total_bytes`.
    pub gop_cache: crate::hub::GopCacheState,
    pub gop_cache_evictions: u64,
    /// Players that started at a cached keyframe (at once) / waited for the next keyframe.
    pub gop_cache_hits: u64,
    pub gop_cache_misses: u64,
    /// Raw RTP recording (D89), when `[record] streams` matches the name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<crate::diag::record::RecordStats>,
    /// The stream's own log (D90), when per-stream logs are on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<crate::diag::streamlog::StreamLogStats>,
}

impl StreamView {
    pub fn of(stream: &Stream) -> StreamView {
        let (gop_cache_frames, gop_cache_bytes) = stream.gop_cache_usage();
        let (gop_cache, gop_cache_evictions, gop_cache_hits, gop_cache_misses) = stream.gop_cache_state();
        StreamView {
            name: stream.name.clone(),
            source: stream.source.clone(),
            stats: stream.stats(),
            started_at: rfc3339(stream.started_at),
            subscribers: stream.subscriber_count(),
            players: stream.subscriber_counts(),
            drops: stream.drops(),
            gop_cache_frames,
            gop_cache_bytes,
            gop_cache,
            gop_cache_evictions,
            gop_cache_hits,
            gop_cache_misses,
            record: stream.record_stats(),
            log: stream.log_stats(),
        }
    }
}

#[derive(Serialize)]
struct StreamList {
    streams: Vec<StreamView>,
}

fn not_found(what: String) -> Response {
    ApiError::not_found(what).into_response()
}

async fn list_streams(State(state): State<ApiState>) -> Json<StreamList> {
    Json(StreamList { streams: state.hub.list().iter().map(|s| StreamView::of(s)).collect() })
}

async fn get_stream(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match state.hub.get(&name) {
        Some(stream) => Json(StreamView::of(&stream)).into_response(),
        None => not_found(format!("no live stream named {name:?}")),
    }
}

#[derive(Serialize)]
struct RtpView {
    listen: String,
    streams: usize,
    max_streams: usize,
    /// Bytes every stream's GOP cache holds together, the budget, and caches emptied for it.
    gop_cache_bytes: usize,
    gop_cache_total_bytes: usize,
    gop_budget_clears: u64,
    /// Streams whose GOP cache holds something (D157).
    gop_cache_streams: usize,
    /// Players of video streams that started at a cached keyframe / waited for the next one.
    gop_cache_hits: u64,
    gop_cache_misses: u64,
    #[serde(flatten)]
    counters: RtpCountersSnapshot,
}

async fn rtp_counters(State(state): State<ApiState>, listen: axum::Extension<RtpListen>) -> Json<RtpView> {
    Json(RtpView {
        listen: listen.0 .0.to_string(),
        streams: state.hub.len(),
        max_streams: state.hub.max_streams(),
        gop_cache_bytes: state.hub.gop_budget().usage().0,
        gop_cache_total_bytes: state.hub.gop_budget().usage().1,
        gop_budget_clears: state.hub.gop_budget().usage().2,
        gop_cache_streams: state.hub.gop_budget().streams(),
        gop_cache_hits: state.hub.gop_budget().starts().0,
        gop_cache_misses: state.hub.gop_budget().starts().1,
        counters: state.rtp.snapshot(),
    })
}

/// The recorder's totals (D89), or 404 when `[record]` is off.
async fn record_totals(State(state): State<ApiState>) -> Response {
    match state.hub.diag().recorder {
        Some(r) => Json(r.stats()).into_response(),
        None => not_found("recording is off ([record] dir and streams)".into()),
    }
}

/// Connection admission figures per TCP listener (D60).
async fn listeners(State(state): State<ApiState>) -> Response {
    let map: std::collections::BTreeMap<&str, _> =
        state.listeners.iter().map(|(name, a)| (*name, a.snapshot())).collect();
    Json(map).into_response()
}

#[derive(Clone, Copy)]
struct RtpListen(SocketAddr);

pub fn router(state: ApiState, rtp_listen: SocketAddr) -> Router {
    Router::new()
        .route("/api/v1/streams", get(list_streams))
        .route("/api/v1/streams/{*name}", get(get_stream))
        .route("/api/v1/rtp", get(rtp_counters))
        .route("/api/v1/rtmp", get(|State(s): State<ApiState>| async move { Json(s.rtmp.snapshot()) }))
        .route("/api/v1/rtsp/publish", get(|State(s): State<ApiState>| async move { Json(s.rtsp_ingest.snapshot()) }))
        .route("/api/v1/listeners", get(listeners))
        .route("/api/v1/config/reload", get(|State(s): State<ApiState>| async move { Json(s.reload.status()) }))
        .route("/api/v1/callbacks", get(|State(s): State<ApiState>| async move { Json(s.hub.notifier().snapshot()) }))
        .route(
            "/api/v1/pushes",
            get(|State(s): State<ApiState>| async move { Json(serde_json::json!({ "pushes": s.pushes.views() })) }),
        )
        // `[[pull]]` sources, as the relay (registered with the hub, D84) reports them.
        .route(
            "/api/v1/pulls",
            get(|State(s): State<ApiState>| async move {
                Json(s.hub.demand_status("pulls").unwrap_or_else(|| serde_json::json!({ "entries": [], "pulls": [] })))
            }),
        )
        .route("/api/v1/record", get(record_totals))
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{id}", get(get_device))
        .route("/api/v1/devices/{id}/status", get(device_status))
        .route("/api/v1/devices/{id}/info", get(device_info))
        .route("/api/v1/devices/{id}/channels/{ch}/play", post(play))
        .route("/api/v1/devices/{id}/channels/{ch}/stop", post(stop))
        .route("/api/v1/devices/{id}/channels/{ch}/ptz", post(ptz))
        .route("/api/v1/devices/{id}/channels/{ch}/records", get(records))
        .route("/api/v1/devices/{id}/channels/{ch}/playback", post(playback))
        .route("/api/v1/gb/sessions", get(sessions))
        .route("/api/v1/gb/counters", get(gb_counters))
        .route("/api/v1/gb/sessions/{*stream}", post(control))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(crate::server::metrics::metrics))
        // The OpenAPI description of every route (tests/openapi.rs keeps it equal to the routers).
        .route(
            "/api/v1/openapi.json",
            get(|| async {
                ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("../../docs/openapi.json"))
            }),
        )
        .fallback(upper_or_404)
        .method_not_allowed_fallback(|req: axum::extract::Request| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "not_found",
                format!("{} is not allowed on {}", req.method(), req.uri().path()),
            )
        })
        .layer(axum::Extension(RtpListen(rtp_listen)))
        .with_state(state)
}

#[allow(clippy::result_large_err)] // the error is the HTTP answer itself
fn gb_of(state: &ApiState) -> Result<&Gb, Response> {
    state.gb.as_ref().ok_or_else(|| ApiError::unavailable("SIP is disabled ([sip] enabled = false)").into_response())
}

fn gb_error(e: GbError) -> Response {
    let m = e.to_string();
    match e {
        GbError::NoDevice(_) => ApiError::not_found(m),
        GbError::Offline(_) | GbError::Busy(_) => ApiError::unavailable(m),
        GbError::NoAnswer(_) | GbError::NoMedia(_) => ApiError::unavailable(m).with_status(StatusCode::GATEWAY_TIMEOUT),
        GbError::Refused(_) => ApiError::unavailable(m).with_status(StatusCode::BAD_GATEWAY),
        GbError::Bad(_) => ApiError::invalid_field(m),
    }
    .into_response()
}

async fn gb_counters(State(state): State<ApiState>) -> Response {
    match gb_of(&state) {
        Ok(gb) => Json(gb.counters()).into_response(),
        Err(r) => r,
    }
}

async fn list_devices(State(state): State<ApiState>) -> Response {
    match gb_of(&state) {
        Ok(gb) => Json(serde_json::json!({ "devices": gb.devices() })).into_response(),
        Err(r) => r,
    }
}

async fn get_device(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let gb = match gb_of(&state) {
        Ok(gb) => gb,
        Err(r) => return r,
    };
    match gb.device(&id) {
        Some(d) => {
            let sessions: Vec<_> = gb.sessions().await.into_iter().filter(|s| s.device == id).collect();
            let mut v = serde_json::to_value(d).unwrap_or_default();
            v["sessions"] = serde_json::to_value(sessions).unwrap_or_default();
            Json(v).into_response()
        }
        None => not_found(format!("no device {id:?}")),
    }
}

async fn device_query(state: ApiState, id: String, kind: QueryKind) -> Response {
    match gb_of(&state) {
        Ok(gb) => match gb.query(&id, kind).await {
            Ok(fields) => Json(fields).into_response(),
            Err(e) => gb_error(e),
        },
        Err(r) => r,
    }
}

/// Asks the device now (DeviceStatus query) and returns its answer's fields.
async fn device_status(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    device_query(state, id, QueryKind::DeviceStatus).await
}

/// Asks the device now (DeviceInfo query); the answer also refreshes the stored facts.
async fn device_info(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    device_query(state, id, QueryKind::DeviceInfo).await
}

#[derive(Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PlayBody {
    transport: Option<MediaTransport>,
}

async fn play(
    State(state): State<ApiState>,
    Path((id, ch)): Path<(String, String)>,
    ApiJsonOrDefault(body): ApiJsonOrDefault<PlayBody>,
) -> Response {
    let gb = match gb_of(&state) {
        Ok(gb) => gb,
        Err(r) => return r,
    };
    let info = match gb.play(Some(id), &ch, body.transport).await {
        Ok(i) => i,
        Err(e) => return gb_error(e),
    };
    if let Err(e) = gb.wait_keyframe(&info.stream).await {
        return gb_error(e);
    }
    Json(info).into_response()
}

async fn stop(State(state): State<ApiState>, Path((_id, ch)): Path<(String, String)>) -> Response {
    match gb_of(&state) {
        Ok(gb) => match gb.stop(&format!("gb/{ch}")).await {
            Ok(()) => Json(serde_json::json!({ "stopped": format!("gb/{ch}") })).into_response(),
            Err(e) => gb_error(e),
        },
        Err(r) => r,
    }
}

#[derive(Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PtzBody {
    /// up, down, left, right, upleft, upright, downleft, downright, zoomin, zoomout, stop.
    action: Option<String>,
    /// 0..=255 for pan/tilt, 0..=15 for zoom.
    speed: Option<u8>,
    /// A raw 16-hex-digit PTZCmd instead of `action`.
    cmd: Option<String>,
}

async fn ptz(
    State(state): State<ApiState>,
    Path((id, ch)): Path<(String, String)>,
    ApiJsonOrDefault(body): ApiJsonOrDefault<PtzBody>,
) -> Response {
    let gb = match gb_of(&state) {
        Ok(gb) => gb,
        Err(r) => return r,
    };
    let cmd = match (body.cmd, body.action) {
        (Some(c), _) if c.len() == 16 && c.chars().all(|x| x.is_ascii_hexdigit()) => c.to_ascii_uppercase(),
        (Some(c), _) => return ApiError::invalid_field(format!("cmd: {c:?} is not 16 hex digits")).into_response(),
        (None, Some(a)) => {
            let Some(byte) = manscdp::ptz_command_byte(&a.to_ascii_lowercase()) else {
                return ApiError::invalid_field(format!("action: unknown PTZ action {a:?}")).into_response();
            };
            let speed = body.speed.unwrap_or(0x80);
            let zoom = if byte & 0x30 != 0 { speed.min(15) } else { 0 };
            let (pan, tilt) = if byte & 0x03 != 0 || byte & 0x0C != 0 { (speed, speed) } else { (0, 0) };
            manscdp::ptz_cmd(
                1,
                byte,
                if byte & 0x03 != 0 { pan } else { 0 },
                if byte & 0x0C != 0 { tilt } else { 0 },
                zoom,
            )
        }
        (None, None) => return ApiError::invalid_field("action: give \"action\" or \"cmd\"").into_response(),
    };
    match gb.ptz(Some(id), &ch, cmd.clone()).await {
        Ok(()) => Json(serde_json::json!({ "ptz_cmd": cmd })).into_response(),
        Err(e) => gb_error(e),
    }
}

#[derive(serde::Deserialize)]
struct RecordQuery {
    /// `yyyy-MM-ddTHH:mm:ss` device local time.
    start: String,
    end: String,
}

async fn records(
    State(state): State<ApiState>,
    Path((id, ch)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<RecordQuery>,
) -> Response {
    let gb = match gb_of(&state) {
        Ok(gb) => gb,
        Err(r) => return r,
    };
    match gb.record_info(Some(id), &ch, q.start, q.end).await {
        Ok(items) => Json(serde_json::json!({ "records": items })).into_response(),
        Err(e) => gb_error(e),
    }
}

#[derive(Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PlaybackBody {
    /// Unix seconds.
    start: u64,
    end: u64,
    /// Set for a Download at this speed (1, 2, 4, 8).
    download_speed: Option<u32>,
    transport: Option<MediaTransport>,
}

async fn playback(
    State(state): State<ApiState>,
    Path((id, ch)): Path<(String, String)>,
    ApiJsonOrDefault(b): ApiJsonOrDefault<PlaybackBody>,
) -> Response {
    let gb = match gb_of(&state) {
        Ok(gb) => gb,
        Err(r) => return r,
    };
    let req = HistoryRequest {
        device: Some(id),
        channel: ch,
        start: b.start,
        end: b.end,
        download_speed: b.download_speed,
        transport: b.transport,
    };
    match gb.history(req).await {
        Ok(info) => Json(info).into_response(),
        Err(e) => gb_error(e),
    }
}

async fn sessions(State(state): State<ApiState>) -> Response {
    match gb_of(&state) {
        Ok(gb) => {
            Json(serde_json::json!({ "sessions": gb.sessions().await, "ended": gb.ended_sessions() })).into_response()
        }
        Err(r) => r,
    }
}

/// Playback control: `{"action":"pause"}`, `{"action":"play"}`, `{"action":"scale","scale":2.0}`,
/// `{"action":"seek","seconds":30}`; `{"action":"stop"}` ends the session with BYE.
async fn control(
    State(state): State<ApiState>,
    Path(stream): Path<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Response {
    let gb = match gb_of(&state) {
        Ok(gb) => gb,
        Err(r) => return r,
    };
    if body["action"] == "stop" {
        return match gb.stop(&stream).await {
            Ok(()) => Json(serde_json::json!({ "stopped": stream })).into_response(),
            Err(e) => gb_error(e),
        };
    }
    let c: PlaybackControl = match serde_path_to_error::deserialize(&body) {
        Ok(c) => c,
        Err(e) => return ApiError::bad_json(format!("bad control: {}", api_error::describe(&e))).into_response(),
    };
    match gb.control(&stream, c).await {
        Ok(()) => Json(serde_json::json!({ "ok": true })).into_response(),
        Err(e) => gb_error(e),
    }
}

/// Who may drive the API (D61): the token, the host names it answers to, the origins that may write.
#[derive(Clone, Debug)]
pub struct Policy {
    pub token: Option<String>,
    pub hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
}

impl Policy {
    pub fn of(cfg: &crate::config::ApiConfig) -> Policy {
        Policy {
            token: cfg.token.clone().filter(|t| !t.is_empty()),
            hosts: cfg.hosts.iter().map(|h| h.trim_end_matches('.').to_ascii_lowercase()).collect(),
            allowed_origins: cfg.allowed_origins.iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect(),
        }
    }

    /// Checks a request's head; `Err` is the answer. Order: Host (421), token (401), Origin (403),
    /// content type (415).
    #[allow(clippy::result_large_err)] // the error is the HTTP answer itself
    pub fn check(&self, req: &axum::http::request::Parts) -> Result<(), Response> {
        use axum::http::{header, Method};
        let text = |name: header::HeaderName| req.headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
        // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends
        // `Host: evil.example`. Browsers always send Host; a client without one is no browser.
        let host = text(header::HOST);
        if let Some(h) = host {
            if !self.host_allowed(h) {
                return Err(ApiError::unauthorized(format!("this API does not answer to host {h:?}"))
                    .with_status(StatusCode::MISDIRECTED_REQUEST)
                    .into_response());
            }
        }
        if let Some(token) = &self.token {
            let exempt = matches!(req.uri.path(), "/healthz" | "/metrics");
            let given = text(header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
            if !exempt && !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
                let mut r = ApiError::unauthorized("missing or wrong bearer token ([api] token)").into_response();
                r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
                return Err(r);
            }
        }
        if matches!(req.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Ok(());
        }
        // A browser sends Origin with every cross-origin write (fetch, form): only our own page
        // (same host and port as the request) or a configured console may write.
        if let Some(origin) = text(header::ORIGIN) {
            let o = origin.trim_end_matches('/').to_ascii_lowercase();
            let same = host.is_some_and(|h| {
                let h = h.to_ascii_lowercase();
                o == format!("http://{h}") || o == format!("https://{h}")
            });
            if !same && !self.allowed_origins.contains(&o) {
                return Err(ApiError::unauthorized(format!("writes from origin {origin:?} are not allowed"))
                    .with_status(StatusCode::FORBIDDEN)
                    .into_response());
            }
        }
        // A form or a `text/plain` fetch needs no CORS preflight; JSON does. An empty body without
        // a content type (curl -X POST) carries nothing to misread and is allowed.
        let has_body = req.headers.contains_key(header::TRANSFER_ENCODING)
            || text(header::CONTENT_LENGTH).is_some_and(|l| l.trim() != "0");
        match text(header::CONTENT_TYPE) {
            None if !has_body => Ok(()),
            Some(ct) if is_json(ct) => Ok(()),
            ct => Err(ApiError::bad_json(format!(
                "writes need Content-Type: application/json (got {})",
                ct.unwrap_or("none")
            ))
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .into_response()),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let h = host.trim().to_ascii_lowercase();
        // Strip the port: `[::1]:8080`, `127.0.0.1:8080`, `name:8080`.
        let name = if let Some(rest) = h.strip_prefix('[') {
            match rest.split_once(']') {
                Some((ip, _)) => return ip.parse::<std::net::Ipv6Addr>().is_ok(),
                None => return false,
            }
        } else {
            h.rsplit_once(':').map_or(h.as_str(), |(n, _)| n)
        };
        let name = name.trim_end_matches('.');
        name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || self.hosts.iter().any(|a| a == name)
    }
}

use crate::server::api_error::is_json;

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn guard(
    State(policy): State<SharedPolicy>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = req.into_parts();
    // Cloned out of the lock: a SIGHUP reload swaps it (D112).
    let policy = policy.read().unwrap_or_else(|e| e.into_inner()).clone();
    if let Err(r) = policy.check(&parts) {
        tracing::debug!(method = %parts.method, uri = %parts.uri, status = r.status().as_u16(), "API request refused");
        return r;
    }
    next.run(axum::extract::Request::from_parts(parts, body)).await
}

/// Adds the [`Policy`] checks in front of every route.
pub fn protect(router: Router, policy: Policy) -> Router {
    protect_shared(router, Arc::new(std::sync::RwLock::new(policy)))
}

/// The policy as the API reads it on each request; a reload replaces what is inside.
pub type SharedPolicy = Arc<std::sync::RwLock<Policy>>;

/// [`protect`] with a policy the caller can replace later (SIGHUP reload of `[api] token`).
pub fn protect_shared(router: Router, policy: SharedPolicy) -> Router {
    router.layer(axum::middleware::from_fn_with_state(policy, guard))
}

/// Longest life of one API connection: longer than the slowest answer (a play waits for the
/// INVITE and the first keyframe, 18 s by default).
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Limits of the API listener's connections (D62); the caps are in its `Admission`.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub header_timeout: std::time::Duration,
}

impl ConnLimits {
    pub fn of(cfg: &crate::config::ApiConfig) -> ConnLimits {
        ConnLimits { header_timeout: cfg.header_timeout.0.max(std::time::Duration::from_millis(100)) }
    }
}

/// Serves the API: each connection is admitted (per-source and global caps, the oldest idle
/// connection makes room), must send its first request head within `header_timeout`, and later
/// heads within the same time (hyper's header read timeout).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    admission: Arc<crate::server::admit::Admission>,
    limits: ConnLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut refused_log = crate::util::RateLimit::new(std::time::Duration::from_secs(10));
    loop {
        let (sock, peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("API accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ticket = match admission.admit(peer.ip()) {
            Ok(t) => t,
            Err(e) => {
                if let Some(suppressed) = refused_log.check(std::time::Instant::now()) {
                    tracing::warn!(%peer, suppressed, "API connection refused: {e}");
                }
                continue;
            }
        };
        let (router, shutdown) = (router.clone(), shutdown.clone());
        tokio::spawn(async move { connection(sock, router, limits, ticket, shutdown).await });
    }
}

async fn connection(
    sock: tokio::net::TcpStream,
    router: Router,
    limits: ConnLimits,
    ticket: crate::server::admit::Ticket,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let ticket = Arc::new(ticket);
    let seen = ticket.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        seen.established();
        let router = router.clone();
        async move { tower::ServiceExt::oneshot(router, req.map(axum::body::Body::new)).await }
    });
    // One request per connection: an idle keep-alive connection cannot hold a slot, and the
    // control API gains nothing from reuse.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(sock), service);
    tokio::pin!(conn);
    let first = tokio::time::sleep(limits.header_timeout);
    tokio::pin!(first);
    // A body trickled in after the head, or an answer that never ends, is cut here.
    let whole = tokio::time::sleep(CONNECTION_LIFETIME);
    tokio::pin!(whole);
    let mut first_done = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                // hyper's header read timeout (a later request head, or racing our first deadline).
                if r.is_err_and(|e| e.is_timeout()) {
                    ticket.timed_out();
                }
                return;
            }
            _ = ticket.evicted.cancelled() => return,
            _ = &mut whole => {
                ticket.timed_out();
                return;
            }
            _ = &mut first, if !first_done => {
                first_done = true;
                // Still pending: no request head arrived in time.
                if ticket.is_pending() {
                    ticket.timed_out();
                    return;
                }
            }
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn.as_mut()).await;
                return;
            }
        }
    }
}

/// Formats a time as RFC 3339 in UTC with millisecond precision, without a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    format!("{}Z", crate::util::format_time(i64::try_from(ms).unwrap_or(i64::MAX), true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parts(method: &str, path: &str, headers: &[(&str, &str)]) -> axum::http::request::Parts {
        let mut b = axum::http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn status(p: &Policy, method: &str, headers: &[(&str, &str)]) -> u16 {
        p.check(&parts(method, "/api/v1/streams", headers)).err().map_or(200, |r| r.status().as_u16())
    }

    #[test]
    fn hosts_that_may_be_answered() {
        let p = Policy { token: None, hosts: vec!["gw.example".into()], allowed_origins: vec![] };
        for ok in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "[::1]",
            "10.0.0.5",
            "localhost:8080",
            "LOCALHOST",
            "gw.example.",
            "GW.example:80",
        ] {
            assert_eq!(status(&p, "GET", &[("host", ok)]), 200, "{ok}");
        }
        for bad in
            ["evil.example", "evil.example:8080", "localhost.evil.example", "[evil]:80", "127.0.0.1.evil.example"]
        {
            assert_eq!(status(&p, "GET", &[("host", bad)]), 421, "{bad}");
        }
        assert_eq!(status(&p, "GET", &[]), 200, "no Host: not a browser");
    }

    #[test]
    fn writes_need_json_and_their_own_origin() {
        let p = Policy { token: None, hosts: vec![], allowed_origins: vec!["http://console:3000".into()] };
        let h = ("host", "127.0.0.1:8080");
        let json = ("content-type", "application/json; charset=utf-8");
        let len = ("content-length", "2");
        assert_eq!(status(&p, "POST", &[h, json, len]), 200);
        assert_eq!(status(&p, "POST", &[h, ("content-type", "application/merge-patch+json"), len]), 200);
        assert_eq!(status(&p, "POST", &[h, ("content-type", "text/plain"), len]), 415);
        assert_eq!(status(&p, "POST", &[h, len]), 415, "a body without a content type");
        assert_eq!(status(&p, "POST", &[h, ("content-length", "0")]), 200, "curl -X POST");
        assert_eq!(status(&p, "POST", &[h, json, len, ("origin", "http://127.0.0.1:8080")]), 200);
        assert_eq!(status(&p, "POST", &[h, json, len, ("origin", "http://console:3000/")]), 200);
        for o in ["http://evil", "null", "http://127.0.0.1:8081", "https://127.0.0.1:8080.evil"] {
            assert_eq!(status(&p, "POST", &[h, json, len, ("origin", o)]), 403, "{o}");
        }
        assert_eq!(status(&p, "GET", &[h, ("origin", "http://evil")]), 200, "reads are not writes");
    }

    #[test]
    fn the_token_guards_everything_but_health() {
        let p = Policy { token: Some("0123456789abcdef".into()), hosts: vec![], allowed_origins: vec![] };
        assert_eq!(status(&p, "GET", &[]), 401);
        assert_eq!(status(&p, "GET", &[("authorization", "Bearer 0123456789abcdeF")]), 401);
        assert_eq!(status(&p, "GET", &[("authorization", "Bearer 0123456789abcdef")]), 200);
        assert!(p.check(&parts("GET", "/healthz", &[])).is_ok());
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_226_400_123)), "2026-11-21T02:00:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
    }
}
