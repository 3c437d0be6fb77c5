//! The channel REST API (the "Channel REST" contract), mounted into the API server
//! ([`crate::server::Gateway::mount`], behind its token, Host and Origin policy).
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::spec::{ChannelSpec, SourceSpec};
use super::{ChannelError, Channels};
use crate::hub::Transport;
use crate::server::api_error::{ApiError, ApiJson};

impl IntoResponse for ChannelError {
    fn into_response(self) -> Response {
        match self {
            ChannelError::Invalid(e) => ApiError::invalid_field(e.to_string()),
            ChannelError::Exists(_) => ApiError::conflict(self.to_string()),
            ChannelError::NotFound(_) => ApiError::not_found(self.to_string()),
            ChannelError::Unavailable(m) => ApiError::unavailable(m),
            ChannelError::Store(e) => ApiError::internal(e.to_string()),
        }
        .into_response()
    }
}

pub fn router(channels: Channels) -> Router {
    Router::new()
        .route("/api/v1/channels", post(create).get(list))
        .route("/api/v1/channels/{id}", get(one).delete(delete))
        .route("/api/v1/channels/{id}/start", post(start))
        .route("/api/v1/channels/{id}/stop", post(stop))
        .route("/api/v1/push-channels", get(push_channels))
        .fallback(|req: axum::extract::Request| async move {
            ApiError::not_found(format!("no such endpoint: {} {}", req.method(), req.uri().path()))
        })
        .method_not_allowed_fallback(|req: axum::extract::Request| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "not_found",
                format!("{} is not allowed on {}", req.method(), req.uri().path()),
            )
        })
        .with_state(channels)
}

async fn create(State(c): State<Channels>, ApiJson(spec): ApiJson<ChannelSpec>) -> Response {
    match c.create(spec).await {
        Ok(view) => (StatusCode::CREATED, Json(view)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list(State(c): State<Channels>) -> Response {
    Json(serde_json::json!({ "channels": c.list(), "persistent": c.persistent() })).into_response()
}

async fn one(State(c): State<Channels>, Path(id): Path<String>) -> Response {
    match c.get(&id) {
        Some(v) => Json(v).into_response(),
        None => ChannelError::NotFound(id).into_response(),
    }
}

async fn start(State(c): State<Channels>, Path(id): Path<String>) -> Response {
    match c.start(&id).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn stop(State(c): State<Channels>, Path(id): Path<String>) -> Response {
    match c.stop(&id).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn delete(State(c): State<Channels>, Path(id): Path<String>) -> Response {
    match c.delete(&id).await {
        Ok(()) => Json(serde_json::json!({ "deleted": id })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// One stream a camera pushes to our RTP port (what the cc calls a push channel).
#[derive(Debug, Serialize)]
struct PushChannel {
    ssrc: String,
    stream: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    first_source: Option<String>,
    transport: Option<&'static str>,
    bytes: u64,
    packets: u64,
    lost: u64,
    state: String,
}

/// Every RTP stream in the hub (GB sessions, announced and unannounced SSRCs), and the `rtp`
/// channels whose camera has not sent yet.
async fn push_channels(State(c): State<Channels>) -> Response {
    let chans: Vec<_> = c.inner.chans.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
    let channel_of = |stream: &str| {
        chans.iter().find_map(|ch| match &ch.spec.source {
            SourceSpec::Gb28181(g) if g.playback.is_none() && stream.strip_prefix("gb/") == Some(&g.channel_id) => {
                Some(ch.spec.id.clone())
            }
            _ if ch.spec.id == stream => Some(ch.spec.id.clone()),
            _ => None,
        })
    };
    let mut out = Vec::new();
    for s in c.inner.hub.list() {
        let (Some(ssrc), true) = (s.source.ssrc, matches!(s.source.transport, Transport::Udp | Transport::Tcp)) else {
            continue;
        };
        // A GB channel's own stream is a copy of its `gb/<channel>` session: listed once.
        if s.copy_of().is_some() {
            continue;
        }
        let stats = s.stats();
        out.push(PushChannel {
            ssrc: crate::server::rtp::ssrc_text(ssrc),
            stream: s.name.clone(),
            channel: channel_of(&s.name),
            first_source: Some(s.source.peer.to_string()),
            transport: Some(if s.source.transport == Transport::Udp { "udp" } else { "tcp" }),
            bytes: stats.bytes_in,
            packets: stats.packets,
            lost: stats.lost,
            state: "live".into(),
        });
    }
    for ch in &chans {
        if let (SourceSpec::Rtp(r), Some(_)) = (&ch.spec.source, ch.checked.ssrc) {
            if out.iter().any(|p| p.stream == ch.spec.id) {
                continue;
            }
            let state = ch.st.lock().unwrap_or_else(|e| e.into_inner()).m.state();
            out.push(PushChannel {
                ssrc: r.ssrc.clone(),
                stream: ch.spec.id.clone(),
                channel: Some(ch.spec.id.clone()),
                first_source: None,
                transport: None,
                bytes: 0,
                packets: 0,
                lost: 0,
                state: state.as_str().into(),
            });
        }
    }
    Json(serde_json::json!({ "push_channels": out })).into_response()
}
