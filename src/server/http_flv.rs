//! HTTP-FLV and WebSocket-FLV players: `GET /<stream>.flv` on the HTTP listener.
use std::sync::atomic::AtomicU64;

use axum::Router;

use crate::server::http::HttpState;

/// Counters of the FLV players (`GET /api/v1/listeners` shows the connections).
#[derive(Debug, Default)]
pub struct FlvShared {
    /// Play requests refused by `[auth]` or the `on_play` hook.
    pub auth_refused: AtomicU64,
}

pub fn routes() -> Router<HttpState> {
    Router::new()
}
