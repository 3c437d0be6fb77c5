//! HTTP control API (axum). Handlers only read shared state; no protocol logic lives here.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, Source, Stream, StreamStats};
use crate::server::rtp::{RtpCountersSnapshot, RtpShared};

#[derive(Clone)]
pub struct ApiState {
    pub hub: Arc<Hub>,
    pub rtp: Arc<RtpShared>,
}

/// One stream as `GET /api/v1/streams` shows it: identity, the ingest figures, and fan-out.
#[derive(Debug, Serialize)]
pub struct StreamView {
    pub name: String,
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
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { not_found("no such endpoint".into()) })
        .layer(axum::Extension(RtpListen(rtp_listen)))
        .with_state(state)
}

pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

/// Formats a time as RFC 3339 in UTC with millisecond precision, without a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
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
