//! Helpers shared by every rml_rtmp client session (the push and the load tool's players).
use crate::proto::rtmp_guard::{RtmpCommandGuard, RtmpGuardError};
use rml_rtmp::sessions::{ClientSession, ClientSessionEvent, ClientSessionResult};

#[derive(Debug, thiserror::Error)]
pub enum RtmpClientError {
    /// A message rml_rtmp 0.8 would panic on, refused by the guard.
    #[error("malformed RTMP message from the peer: {0}")]
    Refused(#[from] RtmpGuardError),
    /// Any other panic inside rml_rtmp, caught so a bad peer costs only its own connection.
    #[error("malformed RTMP message from the peer")]
    Malformed,
    #[error("RTMP client: {0}")]
    Session(String),
}

/// `ClientSession::handle_input` behind `guard` (which reads every byte from the peer and hands the
/// session only whole, checked messages), with
/// any panic left in rml_rtmp on malformed input turned into an error.
pub fn handle_input(
    session: &mut ClientSession,
    guard: &mut RtmpCommandGuard,
    bytes: &[u8],
) -> Result<Vec<ClientSessionResult>, RtmpClientError> {
    let bytes = guard.filter(bytes)?;
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session.handle_input(&bytes)))
        .map_err(|_| RtmpClientError::Malformed)?
        .map_err(|e| RtmpClientError::Session(format!("{e:?}")))
}

/// Splits session results into the bytes to send (in order) and the events raised.
pub fn split_results(results: Vec<ClientSessionResult>) -> (Vec<u8>, Vec<ClientSessionEvent>) {
    let mut bytes = Vec::new();
    let mut events = Vec::new();
    for r in results {
        match r {
            ClientSessionResult::OutboundResponse(p) => bytes.extend_from_slice(&p.bytes),
            ClientSessionResult::RaisedEvent(e) => events.push(e),
            ClientSessionResult::UnhandleableMessageReceived(_) => {}
        }
    }
    (bytes, events)
}
