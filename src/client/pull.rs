//! What every pull client (RTSP in `rtsp_pull`, RTMP in `rtmp_pull`) shares with the relay that
//! drives it: how to reach the source, and why an attempt failed, in words a waiting player and an
//! operator at 3 a.m. can act on.
use std::time::Duration;

/// How an RTSP pull asks for RTP (defined with the config, which must not import the clients).
pub use crate::config::PullTransport;

/// Limits of one pull attempt.
#[derive(Debug, Clone)]
pub struct PullOptions {
    pub transport: PullTransport,
    /// Connect, each request/answer, and the wait for media: each is bounded by this.
    pub timeout: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions { transport: PullTransport::Auto, timeout: Duration::from_secs(5) }
    }
}

/// Why a pull attempt failed or a pulled source ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    /// The source is not there: TCP connection refused, or the server answered with an error
    /// status (404, 454, 461 ...).
    #[error("refused: {0}")]
    Refused(String),
    /// Nothing came back within the deadline (connect, a request, or media).
    #[error("no answer: {0}")]
    NoAnswer(String),
    /// The source answered and sent media, but no video keyframe came within the deadline.
    #[error("no keyframe: {0}")]
    NoKeyframe(String),
    /// The server wants credentials that are missing or wrong.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server spoke something we cannot follow (bad answer, unsupported codec ...).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The source closed the connection or stopped sending while we were playing.
    #[error("source ended: {0}")]
    Ended(String),
}
