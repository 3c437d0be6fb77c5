//! Helpers shared by every rml_rtmp client session (the push and the load tool's players).
use rml_rtmp::sessions::{ClientSession, ClientSessionEvent, ClientSessionResult};

#[derive(Debug, thiserror::Error)]
pub enum RtmpClientError {
    /// rml_rtmp 0.8 panics on some malformed AMF0 commands (found by fuzzing); the panic is
    /// caught here so a bad peer costs only its own connection.
    #[error("malformed RTMP message from the peer")]
    Malformed,
    #[error("RTMP client: {0}")]
    Session(String),
}

/// `ClientSession::handle_input`, with rml_rtmp's panics on malformed input turned into an error.
pub fn handle_input(session: &mut ClientSession, bytes: &[u8]) -> Result<Vec<ClientSessionResult>, RtmpClientError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session.handle_input(bytes)))
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
