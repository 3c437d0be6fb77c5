//! Everything a peer sends over RTMP passes here before an rml_rtmp session sees it (D10, D30).
//!
//! rml_rtmp 0.8 (no release since 2023) falls over on peer bytes three ways: an AMF0 command with
//! fewer than three values panics (`arguments.drain(..3)`), its chunk reader does unchecked
//! arithmetic on a header that shrinks a message, and its recursive AMF0 decoder overflows the
//! stack on deep nesting (a process abort nothing can catch). So the session never reads the
//! peer's chunks at all:
//! - our own chunk reader ([`super::rtmp_chunk`]) reassembles the peer's messages, with size limits
//!   and a shared byte budget;
//! - every AMF0 message (data 15/18, command 17/20) is walked by the iterative
//!   [`super::amf0::scan`] (depth, count and size limits), and a command must hold three values;
//! - what passes is written again by rml_rtmp's own serializer, one whole message per chunk, and
//!   that is what the session decodes. Its chunk reader thus only ever sees well-formed chunks,
//!   and never holds an unfinished message (hole 16: the peer's bytes were held twice).
//!
//! SetChunkSize and Abort from the peer are applied by our reader and not passed on; the session
//! is told once, first, that our chunks are as large as any message.
use std::sync::Arc;

use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::messages::MessagePayload;
use rml_rtmp::time::RtmpTimestamp;

use super::amf0::{self, Amf0Error, Amf0Limits};
use super::rtmp_chunk::{ByteBudget, ChunkError, ChunkLimits, ChunkReader, Message};

/// AMF0 command message type.
const AMF0_COMMAND: u8 = 20;
/// AMF3 command message type (Flash clients send AMF0 in it, often after a 0 byte).
const AMF3_COMMAND: u8 = 17;
/// Audio and video message types (RTMP §7.1.4, §7.1.5).
const AUDIO: u8 = 8;
const VIDEO: u8 = 9;
/// AMF0 data message type (onMetaData).
const AMF0_DATA: u8 = 18;
/// AMF3 data message type (rml_rtmp decodes it as AMF0).
const AMF3_DATA: u8 = 15;
/// The AMF0 string `@setDataFrame` (marker 2, 16-bit length 13), as the first value of a data
/// message: rml_amf0 has no other encoding of a string that short.
const SET_DATA_FRAME: &[u8] = b"\x02\x00\x0d@setDataFrame";
/// The chunk size the session is told: every message fits in one chunk (lengths are 24 bits).
const SESSION_CHUNK_SIZE: u32 = 0xFF_FFFF;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RtmpGuardError {
    #[error("AMF0 command with {values} value(s); a command needs a name, a transaction id and an object")]
    ShortCommand { values: usize },
    #[error("@setDataFrame with {values} value(s); it needs onMetaData and the metadata")]
    ShortSetDataFrame { values: usize },
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("AMF0 message (type {type_id}) refused: {error}")]
    Amf0 { type_id: u8, error: Amf0Error },
    #[error("re-serialising a message for the session: {0}")]
    Serialize(String),
}

/// Follows one direction of an RTMP connection (after the handshake): the peer's bytes in, the
/// bytes an rml_rtmp session may safely read out.
pub struct RtmpCommandGuard {
    reader: ChunkReader,
    ser: ChunkSerializer,
    amf0: Amf0Limits,
    /// The SetChunkSize the session must read before anything else.
    preamble: Option<Vec<u8>>,
    messages: Vec<Message>,
}

impl Default for RtmpCommandGuard {
    fn default() -> Self {
        let limits = ChunkLimits::default();
        RtmpCommandGuard::new(limits, ByteBudget::unshared(limits.max_partial))
    }
}

impl RtmpCommandGuard {
    /// `budget` is shared by the connections of one listener (the server) or owned (a client).
    pub fn new(limits: ChunkLimits, budget: Arc<ByteBudget>) -> Self {
        let mut ser = ChunkSerializer::new();
        let preamble = ser.set_max_chunk_size(SESSION_CHUNK_SIZE, RtmpTimestamp::new(0)).map(|p| p.bytes).ok();
        RtmpCommandGuard {
            reader: ChunkReader::new(limits, budget),
            ser,
            amf0: Amf0Limits::default(),
            preamble,
            messages: Vec::new(),
        }
    }

    /// Bytes of unfinished messages held for this connection.
    pub fn held(&self) -> usize {
        self.reader.held()
    }

    /// Reads `bytes`, the next bytes from the peer, and returns what the session is to be fed
    /// (possibly nothing). `Err` means the connection must be closed.
    pub fn filter(&mut self, bytes: &[u8]) -> Result<Vec<u8>, RtmpGuardError> {
        self.filter_into(bytes, None)
    }

    /// As [`Self::filter`], and the audio and video messages (types 8 and 9) are also handed out
    /// in `media`, whatever their message stream id: a play client reads them there, because
    /// ffmpeg's `-listen` server sends them on stream 0 rather than on the stream it created,
    /// which rml_rtmp's client drops. The session still sees them (it counts bytes for its
    /// acknowledgements).
    pub fn filter_media(&mut self, bytes: &[u8], media: &mut Vec<Message>) -> Result<Vec<u8>, RtmpGuardError> {
        self.filter_into(bytes, Some(media))
    }

    fn filter_into(&mut self, bytes: &[u8], mut media: Option<&mut Vec<Message>>) -> Result<Vec<u8>, RtmpGuardError> {
        let mut out = self.preamble.take().unwrap_or_default();
        self.reader.push(bytes, &mut self.messages)?;
        for m in self.messages.drain(..) {
            check(&m, &self.amf0)?;
            if let Some(media) = media.as_deref_mut().filter(|_| matches!(m.type_id, AUDIO | VIDEO)) {
                media.push(m.clone());
            }
            let payload = MessagePayload {
                timestamp: RtmpTimestamp::new(m.timestamp),
                type_id: m.type_id,
                message_stream_id: m.stream_id,
                data: m.data,
            };
            let packet =
                self.ser.serialize(&payload, true, false).map_err(|e| RtmpGuardError::Serialize(format!("{e:?}")))?;
            out.extend_from_slice(&packet.bytes);
        }
        Ok(out)
    }
}

/// Refuses AMF0 messages rml_rtmp would overflow its stack on or panic over.
fn check(m: &Message, limits: &Amf0Limits) -> Result<(), RtmpGuardError> {
    let data = match m.type_id {
        AMF3_COMMAND if m.data.first() == Some(&0) => &m.data[1..],
        AMF0_COMMAND | AMF3_COMMAND | AMF0_DATA | AMF3_DATA => &m.data[..],
        _ => return Ok(()),
    };
    let values = amf0::scan(data, limits).map_err(|error| RtmpGuardError::Amf0 { type_id: m.type_id, error })?;
    if matches!(m.type_id, AMF0_COMMAND | AMF3_COMMAND) && values < 3 {
        return Err(RtmpGuardError::ShortCommand { values });
    }
    // rml_rtmp's server reads `data[0]` and `data.remove(1)` after an `@setDataFrame` without
    // checking the count (found by the randomized smoke test below): it needs three values.
    if matches!(m.type_id, AMF0_DATA | AMF3_DATA) && data.starts_with(SET_DATA_FRAME) && values < 3 {
        return Err(RtmpGuardError::ShortSetDataFrame { values });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rml_rtmp::rml_amf0::{self, Amf0Value};
    use rml_rtmp::sessions::{ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult};

    const SET_CHUNK_SIZE: u8 = 1;

    fn chunked(ser: &mut ChunkSerializer, type_id: u8, data: Vec<u8>) -> Vec<u8> {
        let payload =
            MessagePayload { timestamp: RtmpTimestamp::new(0), type_id, message_stream_id: 0, data: Bytes::from(data) };
        ser.serialize(&payload, false, false).unwrap().bytes
    }

    fn amf(values: &[Amf0Value]) -> Vec<u8> {
        rml_amf0::serialize(&values.to_vec()).unwrap()
    }

    fn requested_connection(results: Vec<ServerSessionResult>) -> bool {
        results.iter().any(|r| {
            matches!(r, ServerSessionResult::RaisedEvent(ServerSessionEvent::ConnectionRequested { app_name, .. }) if app_name == "live")
        })
    }

    #[test]
    fn a_short_command_is_refused_before_it_can_panic_the_session() {
        let mut ser = ChunkSerializer::new();
        let bad = chunked(&mut ser, AMF0_COMMAND, amf(&[Amf0Value::Utf8String("connect".into())]));
        let mut guard = RtmpCommandGuard::default();
        assert_eq!(guard.filter(&bad), Err(RtmpGuardError::ShortCommand { values: 1 }));
        // The same bytes are what rml_rtmp 0.8 panics on; if a release fixes it, this fails.
        let (mut session, _) = ServerSession::new(ServerSessionConfig::new()).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session.handle_input(&bad))).is_err();
        assert!(panicked, "rml_rtmp no longer panics on a short AMF0 command");
    }

    /// Hole 1: a command nesting strict arrays 10,000 deep (48 KiB) overflowed the stack in
    /// rml_amf0's recursive decoder. It is refused before any decoder sees it, in a command, a
    /// data message and an AMF3 command alike.
    #[test]
    fn deep_nesting_is_refused_before_any_recursive_decoder() {
        let deep = amf0::nested_strict_arrays(10_000);
        assert!(deep.len() >= 48 * 1024);
        for type_id in [AMF0_COMMAND, AMF3_COMMAND, AMF0_DATA, AMF3_DATA] {
            let mut ser = ChunkSerializer::new();
            let wire = chunked(&mut ser, type_id, deep.clone());
            let mut guard = RtmpCommandGuard::default();
            let r = wire.chunks(4096).map(|p| guard.filter(p)).find(|r| r.is_err());
            assert_eq!(r, Some(Err(RtmpGuardError::Amf0 { type_id, error: Amf0Error::TooDeep(32) })), "type {type_id}");
            assert_eq!(guard.held(), 0);
        }
    }

    /// The fuzz corpus's deep-nesting entries (mode 1: session input fed in 200-byte pieces) are
    /// refused by the guard the fuzz target runs first.
    #[test]
    fn the_fuzz_corpus_deep_nesting_seeds_are_refused() {
        let seeds: [&[u8]; 4] = [
            include_bytes!("../../fuzz/seeds/rtmp_chunk/deep_strict_array_command.seed"),
            include_bytes!("../../fuzz/seeds/rtmp_chunk/deep_object_command.seed"),
            include_bytes!("../../fuzz/seeds/rtmp_chunk/deep_strict_array_data.seed"),
            include_bytes!("../../fuzz/seeds/rtmp_chunk/deep_strict_array_amf3_command.seed"),
        ];
        for seed in seeds {
            let mut guard = RtmpCommandGuard::default();
            let r = seed[2..].chunks(seed[1] as usize).map(|p| guard.filter(p)).find(|r| r.is_err());
            assert!(matches!(r, Some(Err(RtmpGuardError::Amf0 { error: Amf0Error::TooDeep(32), .. }))), "{r:?}");
        }
    }

    /// rml_rtmp 0.8's server panics (index out of bounds) on `@setDataFrame` with fewer than three
    /// values while publishing; the guard refuses it.
    #[test]
    fn a_short_set_data_frame_is_refused_before_it_can_panic_the_session() {
        assert_eq!(&amf(&[Amf0Value::Utf8String("@setDataFrame".into())])[..], SET_DATA_FRAME);
        for values in [
            vec![Amf0Value::Utf8String("@setDataFrame".into())],
            vec![Amf0Value::Utf8String("@setDataFrame".into()), Amf0Value::Utf8String("onMetaData".into())],
        ] {
            let n = values.len();
            let mut ser = ChunkSerializer::new();
            let wire = chunked(&mut ser, AMF0_DATA, amf(&values));
            let mut guard = RtmpCommandGuard::default();
            assert_eq!(guard.filter(&wire), Err(RtmpGuardError::ShortSetDataFrame { values: n }));
        }
        // A whole one passes.
        let mut ser = ChunkSerializer::new();
        let ok = amf(&[
            Amf0Value::Utf8String("@setDataFrame".into()),
            Amf0Value::Utf8String("onMetaData".into()),
            Amf0Value::Object(Default::default()),
        ]);
        assert!(RtmpCommandGuard::default().filter(&chunked(&mut ser, AMF0_DATA, ok)).is_ok());
    }

    #[test]
    fn amf3_commands_are_checked_after_their_leading_zero() {
        let mut ser = ChunkSerializer::new();
        let mut data = vec![0];
        data.extend(amf(&[Amf0Value::Null]));
        let mut guard = RtmpCommandGuard::default();
        assert_eq!(
            guard.filter(&chunked(&mut ser, AMF3_COMMAND, data)),
            Err(RtmpGuardError::ShortCommand { values: 1 })
        );
    }

    /// The session decodes what the guard hands on, across a peer's chunk size change and input
    /// split at every 7 bytes.
    #[test]
    fn valid_commands_reach_the_session_across_a_chunk_size_change_and_split_input() {
        let mut ser = ChunkSerializer::new();
        let mut wire = chunked(&mut ser, SET_CHUNK_SIZE, 4096u32.to_be_bytes().to_vec());
        ser.set_max_chunk_size(4096, RtmpTimestamp::new(0)).unwrap();
        // A connect longer than the default 128-byte chunk: only a reader that followed the
        // SetChunkSize reads it as one chunk.
        let mut props = std::collections::HashMap::new();
        props.insert("app".to_string(), Amf0Value::Utf8String("live".into()));
        props.insert("tcUrl".to_string(), Amf0Value::Utf8String("x".repeat(300)));
        wire.extend(chunked(
            &mut ser,
            AMF0_COMMAND,
            amf(&[Amf0Value::Utf8String("connect".into()), Amf0Value::Number(1.0), Amf0Value::Object(props)]),
        ));
        let short_at = wire.len();
        wire.extend(chunked(&mut ser, AMF0_COMMAND, amf(&[Amf0Value::Utf8String("x".into())])));
        let mut guard = RtmpCommandGuard::default();
        let (mut session, _) = ServerSession::new(ServerSessionConfig::new()).unwrap();
        let mut connected = false;
        for piece in wire[..short_at].chunks(7) {
            let bytes = guard.filter(piece).unwrap();
            connected |= requested_connection(session.handle_input(&bytes).unwrap());
        }
        assert!(connected);
        assert_eq!(guard.filter(&wire[short_at..]), Err(RtmpGuardError::ShortCommand { values: 1 }));
    }

    /// fuzz/rtmp_chunk's input (mode 1, fed in 37-byte pieces) that overflowed rml_rtmp's chunk
    /// reader: ours reports an error and does not panic.
    #[test]
    fn a_chunk_header_that_overflowed_rml_rtmps_reader_is_an_error() {
        const INPUT: &[u8] = &[
            19, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37,
            37, 37, 0, 0, 255, 255, 255, 255, 40, 43, 252, 241, 0, 0, 179, 44, 146, 198, 186, 250, 121, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107, 107,
            107, 107, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 211, 200, 107, 104, 28,
        ];
        let mut guard = RtmpCommandGuard::default();
        let refused = INPUT[2..].chunks(37).map(|piece| guard.filter(piece)).find(|r| r.is_err());
        assert!(matches!(refused, Some(Err(RtmpGuardError::Chunk(_)))), "{refused:?}");
    }
}

/// A randomized stand-in for `fuzz/rtmp_chunk` where cargo-fuzz is not installed: mutations of a
/// real publisher's session and of the deep-nesting corpus, through the guard, then into rml_rtmp's
/// session with nothing caught (a panic fails the test, a stack overflow aborts it). Run with
/// `GBGATE_SMOKE_SECS=60 cargo test --lib rtmp_guard::smoke -- --ignored`.
#[cfg(test)]
mod smoke {
    use super::*;
    use bytes::Bytes;
    use rand::{Rng, SeedableRng};
    use rml_rtmp::rml_amf0::Amf0Value;
    use rml_rtmp::sessions::{ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult};

    fn publisher_session() -> Vec<u8> {
        let mut ser = ChunkSerializer::new();
        let mut wire = Vec::new();
        let mut msg = |ser: &mut ChunkSerializer, ts: u32, type_id: u8, sid: u32, data: Vec<u8>| {
            let p = MessagePayload {
                timestamp: RtmpTimestamp::new(ts),
                type_id,
                message_stream_id: sid,
                data: Bytes::from(data),
            };
            wire.extend(ser.serialize(&p, false, false).unwrap().bytes);
        };
        let amf = |v: Vec<Amf0Value>| rml_rtmp::rml_amf0::serialize(&v).unwrap();
        let mut props = std::collections::HashMap::new();
        props.insert("app".to_string(), Amf0Value::Utf8String("live".into()));
        msg(
            &mut ser,
            0,
            20,
            0,
            amf(vec![Amf0Value::Utf8String("connect".into()), Amf0Value::Number(1.0), Amf0Value::Object(props)]),
        );
        msg(
            &mut ser,
            0,
            20,
            0,
            amf(vec![Amf0Value::Utf8String("createStream".into()), Amf0Value::Number(2.0), Amf0Value::Null]),
        );
        msg(
            &mut ser,
            0,
            20,
            1,
            amf(vec![
                Amf0Value::Utf8String("publish".into()),
                Amf0Value::Number(3.0),
                Amf0Value::Null,
                Amf0Value::Utf8String("cam".into()),
                Amf0Value::Utf8String("live".into()),
            ]),
        );
        msg(&mut ser, 0, 18, 1, amf(vec![Amf0Value::Utf8String("@setDataFrame".into()), Amf0Value::Null]));
        for i in 0..6u32 {
            msg(&mut ser, i * 40, 9, 1, vec![0x17; 300]);
            msg(&mut ser, i * 40 + 5, 8, 1, vec![0xaf; 40]);
        }
        wire
    }

    /// A seed with 1 to 7 random byte edits (set, flip, insert, remove, splice from another seed).
    fn mutated(seeds: &[Vec<u8>], rng: &mut rand::rngs::StdRng) -> Vec<u8> {
        let mut input = seeds[rng.gen_range(0..seeds.len())].clone();
        for _ in 0..rng.gen_range(1..8) {
            if input.is_empty() {
                break;
            }
            let at = rng.gen_range(0..input.len());
            match rng.gen_range(0..5) {
                0 => input[at] = rng.gen(),
                1 => input[at] ^= 1 << rng.gen_range(0..8),
                2 => input.insert(at, rng.gen()),
                3 => {
                    input.remove(at);
                }
                _ => {
                    let other = &seeds[rng.gen_range(0..seeds.len())];
                    let from = rng.gen_range(0..other.len());
                    let n = rng.gen_range(0..64).min(other.len() - from);
                    input.splice(at..at, other[from..from + n].iter().copied());
                }
            }
        }
        input
    }

    #[test]
    #[ignore]
    fn smoke() {
        let secs: u64 = std::env::var("GBGATE_SMOKE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
        let seeds: Vec<Vec<u8>> = vec![
            publisher_session(),
            include_bytes!("../../fuzz/seeds/rtmp_chunk/deep_strict_array_command.seed")[2..].to_vec(),
            include_bytes!("../../fuzz/seeds/rtmp_chunk/deep_object_command.seed")[2..].to_vec(),
            include_bytes!("../../fuzz/seeds/rtmp_chunk/deep_strict_array_data.seed")[2..].to_vec(),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let start = std::time::Instant::now();
        let mut runs = 0u64;
        while start.elapsed().as_secs() < secs {
            runs += 1;
            let input = mutated(&seeds, &mut rng);
            let piece = rng.gen_range(1..4096);
            let (mut session, _) = ServerSession::new(ServerSessionConfig::new()).unwrap();
            let mut guard = RtmpCommandGuard::default();
            for p in input.chunks(piece) {
                let Ok(bytes) = guard.filter(p) else { break };
                let Ok(results) = session.handle_input(&bytes) else { break };
                let mut queue = results;
                let mut rounds = 0;
                while let Some(r) = queue.pop() {
                    rounds += 1;
                    if rounds > 100 {
                        break;
                    }
                    if let ServerSessionResult::RaisedEvent(
                        ServerSessionEvent::ConnectionRequested { request_id, .. }
                        | ServerSessionEvent::PublishStreamRequested { request_id, .. },
                    ) = r
                    {
                        if let Ok(more) = session.accept_request(request_id) {
                            queue.extend(more);
                        }
                    }
                }
            }
        }
        println!("rtmp guard smoke: {runs} runs in {secs} s");
    }

    /// What an origin sends a pushing client: connect and publish accepted (a real ServerSession
    /// answering a real ClientSession, in memory), then a ping and acknowledgements.
    fn origin_answers() -> Vec<u8> {
        use rml_rtmp::sessions::{ClientSession, ClientSessionConfig, ClientSessionResult, PublishRequestType};
        let (mut client, first) = ClientSession::new(ClientSessionConfig::new()).unwrap();
        let (mut server, sfirst) = ServerSession::new(ServerSessionConfig::new()).unwrap();
        let mut to_server = Vec::new();
        let mut to_client = Vec::new();
        let client_out = |rs: Vec<ClientSessionResult>, to_server: &mut Vec<u8>| {
            for r in rs {
                if let ClientSessionResult::OutboundResponse(p) = r {
                    to_server.extend(p.bytes);
                }
            }
        };
        client_out(first, &mut to_server);
        for r in sfirst {
            if let ServerSessionResult::OutboundResponse(p) = r {
                to_client.extend(p.bytes);
            }
        }
        client_out(vec![client.request_connection("live".into()).unwrap()], &mut to_server);
        let (mut fed, mut published) = (0, false);
        for step in 0..4 {
            let mut queue = server.handle_input(&std::mem::take(&mut to_server)).unwrap();
            while let Some(r) = queue.pop() {
                match r {
                    ServerSessionResult::OutboundResponse(p) => to_client.extend(p.bytes),
                    ServerSessionResult::RaisedEvent(
                        ServerSessionEvent::ConnectionRequested { request_id, .. }
                        | ServerSessionEvent::PublishStreamRequested { request_id, .. },
                    ) => queue.extend(server.accept_request(request_id).unwrap().into_iter().rev()),
                    _ => {}
                }
            }
            let new = &to_client[fed..];
            fed = to_client.len();
            let rs = client.handle_input(new).unwrap();
            published |= rs.iter().any(|r| {
                matches!(
                    r,
                    ClientSessionResult::RaisedEvent(rml_rtmp::sessions::ClientSessionEvent::PublishRequestAccepted)
                )
            });
            client_out(rs, &mut to_server);
            if step == 0 {
                client_out(
                    vec![client.request_publishing("cam".into(), PublishRequestType::Live).unwrap()],
                    &mut to_server,
                );
            }
        }
        assert!(published, "the seed must reach an accepted publish");
        let (ping, _) = server.send_ping_request().unwrap();
        to_client.extend(ping.bytes);
        to_client
    }

    /// The push side: mutated origin answers through the guard into a ClientSession that made
    /// the same requests, nothing caught.
    #[test]
    #[ignore]
    fn smoke_client() {
        use rml_rtmp::sessions::{ClientSession, ClientSessionConfig, PublishRequestType};
        let secs: u64 = std::env::var("GBGATE_SMOKE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
        let mut seeds = vec![origin_answers()];
        seeds.extend(
            [
                &include_bytes!("../../fuzz/seeds/rtmp_chunk/deep_strict_array_command.seed")[2..],
                &include_bytes!("../../fuzz/seeds/rtmp_chunk/deep_strict_array_data.seed")[2..],
            ]
            .map(|s| s.to_vec()),
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let start = std::time::Instant::now();
        let mut runs = 0u64;
        while start.elapsed().as_secs() < secs {
            runs += 1;
            let input = mutated(&seeds, &mut rng);
            let (mut client, _) = ClientSession::new(ClientSessionConfig::new()).unwrap();
            let _ = client.request_connection("live".into());
            let mut guard = RtmpCommandGuard::default();
            let mut publish_sent = false;
            for p in input.chunks(rng.gen_range(1..4096)) {
                let Ok(bytes) = guard.filter(p) else { break };
                let Ok(results) = client.handle_input(&bytes) else { break };
                let accepted = results.iter().any(|r| {
                    matches!(
                        r,
                        rml_rtmp::sessions::ClientSessionResult::RaisedEvent(
                            rml_rtmp::sessions::ClientSessionEvent::ConnectionRequestAccepted
                        )
                    )
                });
                if accepted && !publish_sent {
                    publish_sent = true;
                    let _ = client.request_publishing("cam".into(), PublishRequestType::Live);
                }
            }
        }
        println!("rtmp guard client smoke: {runs} runs in {secs} s");
    }
}
