//! Helpers shared by every rml_rtmp client session (the push and the load tool's players): the
//! client handshake (written once, here) and the guarded session input.
use std::time::Duration;

use crate::proto::rtmp_guard::{RtmpCommandGuard, RtmpGuardError};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{ClientSession, ClientSessionEvent, ClientSessionResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
    #[error("RTMP handshake: {0}")]
    Handshake(String),
    #[error("RTMP handshake: no answer for {0:?}")]
    Timeout(Duration),
    #[error("RTMP handshake: {0}")]
    Io(#[from] std::io::Error),
}

/// The client side of the RTMP handshake (C0/C1, then C2), each read and write bounded by
/// `limit`; returns the bytes the server sent after it (session input).
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    limit: Duration,
) -> Result<Vec<u8>, RtmpClientError> {
    let timed = |e: tokio::time::error::Elapsed| {
        let _ = e;
        RtmpClientError::Timeout(limit)
    };
    let mut hs = Handshake::new(PeerType::Client);
    let p0p1 = hs.generate_outbound_p0_and_p1().map_err(|e| RtmpClientError::Handshake(format!("{e:?}")))?;
    tokio::time::timeout(limit, s.write_all(&p0p1)).await.map_err(timed)??;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = tokio::time::timeout(limit, s.read(&mut buf)).await.map_err(timed)??;
        if n == 0 {
            return Err(RtmpClientError::Handshake("closed by the server".into()));
        }
        match hs.process_bytes(&buf[..n]).map_err(|e| RtmpClientError::Handshake(format!("{e:?}")))? {
            HandshakeProcessResult::InProgress { response_bytes } => {
                tokio::time::timeout(limit, s.write_all(&response_bytes)).await.map_err(timed)??;
            }
            HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                tokio::time::timeout(limit, s.write_all(&response_bytes)).await.map_err(timed)??;
                return Ok(remaining_bytes);
            }
        }
    }
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
    handle_filtered(session, bytes)
}

/// As [`handle_input`], with the peer's audio and video messages also put in `media` (a play
/// client reads them there: see [`RtmpCommandGuard::filter_media`]).
pub fn handle_input_media(
    session: &mut ClientSession,
    guard: &mut RtmpCommandGuard,
    bytes: &[u8],
    media: &mut Vec<crate::proto::rtmp_chunk::Message>,
) -> Result<Vec<ClientSessionResult>, RtmpClientError> {
    let bytes = guard.filter_media(bytes, media)?;
    handle_filtered(session, bytes)
}

fn handle_filtered(session: &mut ClientSession, bytes: Vec<u8>) -> Result<Vec<ClientSessionResult>, RtmpClientError> {
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
