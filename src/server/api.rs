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
use crate::server::rtp::{RtpCountersSnapshot, RtpShared};

#[derive(Clone)]
pub struct ApiState {
    pub hub: Arc<Hub>,
    pub rtp: Arc<RtpShared>,
    pub gb: Option<Gb>,
    pub rtmp: Arc<crate::server::rtmp::RtmpShared>,
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
}

impl StreamView {
    pub fn of(stream: &Stream) -> StreamView {
        let (gop_cache_frames, gop_cache_bytes) = stream.gop_cache_usage();
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
        }
    }
}

#[derive(Serialize)]
struct StreamList {
    streams: Vec<StreamView>,
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, Json(ErrorBody { error: what })).into_response()
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
    #[serde(flatten)]
    counters: RtpCountersSnapshot,
}

async fn rtp_counters(State(state): State<ApiState>, listen: axum::Extension<RtpListen>) -> Json<RtpView> {
    Json(RtpView {
        listen: listen.0 .0.to_string(),
        streams: state.hub.len(),
        max_streams: state.hub.max_streams(),
        counters: state.rtp.snapshot(),
    })
}

#[derive(Clone, Copy)]
struct RtpListen(SocketAddr);

pub fn router(state: ApiState, rtp_listen: SocketAddr) -> Router {
    Router::new()
        .route("/api/v1/streams", get(list_streams))
        .route("/api/v1/streams/{*name}", get(get_stream))
        .route("/api/v1/rtp", get(rtp_counters))
        .route("/api/v1/rtmp", get(|State(s): State<ApiState>| async move { Json(s.rtmp.snapshot()) }))
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
        .fallback(|| async { not_found("no such endpoint".into()) })
        .layer(axum::Extension(RtpListen(rtp_listen)))
        .with_state(state)
}

#[allow(clippy::result_large_err)] // the error is the HTTP answer itself
fn gb_of(state: &ApiState) -> Result<&Gb, Response> {
    state
        .gb
        .as_ref()
        .ok_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, "SIP is disabled ([sip] enabled = false)".into()))
}

fn error(code: StatusCode, what: String) -> Response {
    (code, Json(ErrorBody { error: what })).into_response()
}

fn gb_error(e: GbError) -> Response {
    let code = match e {
        GbError::NoDevice(_) => StatusCode::NOT_FOUND,
        GbError::Offline(_) | GbError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        GbError::NoAnswer(_) | GbError::NoMedia(_) => StatusCode::GATEWAY_TIMEOUT,
        GbError::Refused(_) => StatusCode::BAD_GATEWAY,
        GbError::Bad(_) => StatusCode::BAD_REQUEST,
    };
    error(code, e.to_string())
}

/// A JSON body that may be absent (curl -X POST without -d).
#[allow(clippy::result_large_err)]
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, Response> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
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
    body: axum::body::Bytes,
) -> Response {
    let gb = match gb_of(&state) {
        Ok(gb) => gb,
        Err(r) => return r,
    };
    let body: PlayBody = match optional_json(&body) {
        Ok(b) => b,
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
    body: axum::body::Bytes,
) -> Response {
    let gb = match gb_of(&state) {
        Ok(gb) => gb,
        Err(r) => return r,
    };
    let body: PtzBody = match optional_json(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let cmd = match (body.cmd, body.action) {
        (Some(c), _) if c.len() == 16 && c.chars().all(|x| x.is_ascii_hexdigit()) => c.to_ascii_uppercase(),
        (Some(c), _) => return error(StatusCode::BAD_REQUEST, format!("cmd {c:?} is not 16 hex digits")),
        (None, Some(a)) => {
            let Some(byte) = manscdp::ptz_command_byte(&a.to_ascii_lowercase()) else {
                return error(StatusCode::BAD_REQUEST, format!("unknown PTZ action {a:?}"));
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
        (None, None) => return error(StatusCode::BAD_REQUEST, "give \"action\" or \"cmd\"".into()),
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
    axum::extract::Query(q): axum::extract::Query<RecordQuery>,
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
    body: axum::body::Bytes,
) -> Response {
    let gb = match gb_of(&state) {
        Ok(gb) => gb,
        Err(r) => return r,
    };
    let b: PlaybackBody = match optional_json(&body) {
        Ok(b) => b,
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
async fn control(State(state): State<ApiState>, Path(stream): Path<String>, body: axum::body::Bytes) -> Response {
    let gb = match gb_of(&state) {
        Ok(gb) => gb,
        Err(r) => return r,
    };
    if serde_json::from_slice::<serde_json::Value>(&body).ok().is_some_and(|v| v["action"] == "stop") {
        return match gb.stop(&stream).await {
            Ok(()) => Json(serde_json::json!({ "stopped": stream })).into_response(),
            Err(e) => gb_error(e),
        };
    }
    let c: PlaybackControl = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad control: {e}")),
    };
    match gb.control(&stream, c).await {
        Ok(()) => Json(serde_json::json!({ "ok": true })).into_response(),
        Err(e) => gb_error(e),
    }
}

pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

/// Formats a time as RFC 3339 in UTC with millisecond precision, without a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = crate::util::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_226_400_123)), "2026-11-21T02:00:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
    }
}
