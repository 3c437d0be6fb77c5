//! Rejects the RTMP messages that make rml_rtmp 0.8 panic, before its session sees them.
//!
//! rml_rtmp decodes an AMF0 command (message type 20, or 17 "AMF3" that is really AMF0) with
//! `arguments.drain(..3)`, which panics when the command has fewer than three values (fuzz
//! target `rtmp_chunk` found it; 0.8.0 is the newest release). Its session API offers no hook
//! between chunk reassembly and message decoding, so this guard runs rml_rtmp's own public
//! `ChunkDeserializer` over the same bytes, follows SetChunkSize as the session does, and checks
//! each command before the bytes are handed on. The cost is a second reassembly of the peer's
//! bytes; commands are the only messages it decodes.
use bytes::Bytes;
use rml_rtmp::chunk_io::ChunkDeserializer;
use rml_rtmp::messages::{MessagePayload, RtmpMessage};
use rml_rtmp::rml_amf0;

/// AMF0 command message type.
const AMF0_COMMAND: u8 = 20;
/// AMF3 command message type (Flash clients send AMF0 in it, often after a 0 byte).
const AMF3_COMMAND: u8 = 17;
/// SetChunkSize message type.
const SET_CHUNK_SIZE: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RtmpGuardError {
    #[error("AMF0 command with {values} value(s); a command needs a name, a transaction id and an object")]
    ShortCommand { values: usize },
    #[error("malformed RTMP chunk: {0}")]
    Chunk(String),
}

/// Follows one direction of an RTMP connection (after the handshake) in step with an rml_rtmp
/// session fed the same bytes.
pub struct RtmpCommandGuard {
    chunks: ChunkDeserializer,
}

impl Default for RtmpCommandGuard {
    fn default() -> Self {
        RtmpCommandGuard { chunks: ChunkDeserializer::new() }
    }
}

impl RtmpCommandGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks `bytes`, the next bytes from the peer. `Err` means they must not reach the session
    /// (close the connection).
    pub fn check(&mut self, bytes: &[u8]) -> Result<(), RtmpGuardError> {
        let mut input = bytes;
        while let Some(payload) = self.next(input)? {
            input = &[];
            match payload.type_id {
                SET_CHUNK_SIZE => {
                    // As the session: a valid size is applied, an invalid one is its error to raise.
                    if let Ok(RtmpMessage::SetChunkSize { size }) = payload.to_rtmp_message() {
                        let _ = self.chunks.set_max_chunk_size(size as usize);
                    }
                }
                AMF0_COMMAND => check_command(payload.data)?,
                AMF3_COMMAND => {
                    let data = payload.data;
                    check_command(if data.first() == Some(&0) { data.slice(1..) } else { data })?
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn next(&mut self, input: &[u8]) -> Result<Option<MessagePayload>, RtmpGuardError> {
        // rml_rtmp's chunk reader also does unchecked arithmetic on header fields (a length that
        // shrinks mid-message underflows, found by fuzz/rtmp_chunk); with overflow checks on that
        // panics. The guard reads every byte first, so fencing it here keeps such input from
        // ever reaching the session. The connection is closed after any error.
        let chunks = &mut self.chunks;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| chunks.get_next_message(input)))
            .map_err(|_| RtmpGuardError::Chunk("inconsistent chunk header (rml_rtmp's reader overflowed)".into()))?
            .map_err(|e| RtmpGuardError::Chunk(format!("{e:?}")))
    }
}

/// A command that does not decode is left to the session, which reports it as an error; only
/// the decodable-but-short case panics there.
fn check_command(data: Bytes) -> Result<(), RtmpGuardError> {
    let mut cursor = std::io::Cursor::new(data);
    match rml_amf0::deserialize(&mut cursor) {
        Ok(values) if values.len() < 3 => Err(RtmpGuardError::ShortCommand { values: values.len() }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_amf0::Amf0Value;
    use rml_rtmp::chunk_io::ChunkSerializer;
    use rml_rtmp::sessions::{ServerSession, ServerSessionConfig};
    use rml_rtmp::time::RtmpTimestamp;

    fn chunked(ser: &mut ChunkSerializer, type_id: u8, data: Vec<u8>) -> Vec<u8> {
        let payload =
            MessagePayload { timestamp: RtmpTimestamp::new(0), type_id, message_stream_id: 0, data: Bytes::from(data) };
        ser.serialize(&payload, false, false).unwrap().bytes
    }

    fn amf(values: &[Amf0Value]) -> Vec<u8> {
        rml_amf0::serialize(&values.to_vec()).unwrap()
    }

    fn connect() -> Vec<u8> {
        let mut props = std::collections::HashMap::new();
        props.insert("app".to_string(), Amf0Value::Utf8String("live".into()));
        amf(&[Amf0Value::Utf8String("connect".into()), Amf0Value::Number(1.0), Amf0Value::Object(props)])
    }

    #[test]
    fn a_short_command_is_refused_before_it_can_panic_the_session() {
        let mut ser = ChunkSerializer::new();
        let bad = chunked(&mut ser, AMF0_COMMAND, amf(&[Amf0Value::Utf8String("connect".into())]));
        let mut guard = RtmpCommandGuard::new();
        assert_eq!(guard.check(&bad), Err(RtmpGuardError::ShortCommand { values: 1 }));
        // The same bytes are what rml_rtmp 0.8 panics on; if a release fixes it, this fails and
        // the guard can go.
        let (mut session, _) = ServerSession::new(ServerSessionConfig::new()).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session.handle_input(&bad))).is_err();
        assert!(panicked, "rml_rtmp no longer panics on a short AMF0 command");
    }

    #[test]
    fn amf3_commands_are_checked_after_their_leading_zero() {
        let mut ser = ChunkSerializer::new();
        let mut data = vec![0];
        data.extend(amf(&[Amf0Value::Null]));
        let mut guard = RtmpCommandGuard::new();
        assert_eq!(
            guard.check(&chunked(&mut ser, AMF3_COMMAND, data)),
            Err(RtmpGuardError::ShortCommand { values: 1 })
        );
    }

    #[test]
    fn valid_commands_pass_across_a_chunk_size_change_and_split_input() {
        let mut ser = ChunkSerializer::new();
        let mut wire = chunked(&mut ser, AMF0_COMMAND, connect());
        wire.extend(chunked(&mut ser, SET_CHUNK_SIZE, 4096u32.to_be_bytes().to_vec()));
        ser.set_max_chunk_size(4096, RtmpTimestamp::new(0)).unwrap();
        // A command longer than the default 128-byte chunk: only a guard that followed the
        // SetChunkSize reads it as one chunk.
        let long = amf(&[
            Amf0Value::Utf8String("publish".into()),
            Amf0Value::Number(2.0),
            Amf0Value::Null,
            Amf0Value::Utf8String("x".repeat(300)),
        ]);
        wire.extend(chunked(&mut ser, AMF0_COMMAND, long));
        wire.extend(chunked(&mut ser, AMF0_COMMAND, amf(&[Amf0Value::Utf8String("x".into())])));
        let mut guard = RtmpCommandGuard::new();
        let short_at = wire.len() - 20;
        for piece in wire[..short_at].chunks(7) {
            assert_eq!(guard.check(piece), Ok(()));
        }
        assert_eq!(guard.check(&wire[short_at..]), Err(RtmpGuardError::ShortCommand { values: 1 }));
    }
    /// fuzz/rtmp_chunk's input (mode 1, fed in 37-byte pieces) that overflowed rml_rtmp's chunk
    /// reader: the guard reports an error and does not panic.
    #[test]
    fn a_chunk_header_that_overflows_rml_rtmps_reader_is_an_error() {
        const INPUT: &[u8] = &[
            19, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37,
            37, 37, 0, 0, 255, 255, 255, 255, 40, 43, 252, 241, 0, 0, 179, 44, 146, 198, 186, 250, 121, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107,
            107, 107, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 211, 200, 107, 104, 28,
        ];
        let mut guard = RtmpCommandGuard::new();
        let refused = INPUT[2..].chunks(37).map(|piece| guard.check(piece)).find(|r| r.is_err());
        assert!(matches!(refused, Some(Err(RtmpGuardError::Chunk(_)))), "{refused:?}");
    }
}
