//! Our RTMP chunk reader (sans-IO): the peer's chunk stream in, whole messages out, with explicit
//! limits on what a peer can make us hold (RTMP spec 1.0 §5.3).
//!
//! - A message longer than [`ChunkLimits::max_message`] is refused at its chunk header, before
//!   any of its bytes are stored.
//! - The bytes of partially received messages are held once, here, counted per connection and
//!   against a [`ByteBudget`] shared by every connection; the session behind it only ever sees
//!   whole messages (see `rtmp_guard`).
//! - A chunk's payload is copied straight into its message: the unread input buffer never holds
//!   more than one chunk header.
//! - SetChunkSize (1) and Abort (2) are protocol control for this reader and are applied here.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// Protocol control message types this reader applies itself (§5.4.1, §5.4.2).
pub const SET_CHUNK_SIZE: u8 = 1;
pub const ABORT: u8 = 2;

/// The chunk size before any SetChunkSize (§5.4.1).
const INITIAL_CHUNK_SIZE: usize = 128;
/// A 24-bit timestamp field of all ones announces a 32-bit extended timestamp (§5.3.1.3).
const EXTENDED: u32 = 0xFF_FFFF;
/// Chunk streams one connection may use. Real clients use fewer than ten.
const MAX_CHUNK_STREAMS: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    /// Longest message accepted (a 4K keyframe is a few MB).
    pub max_message: usize,
    /// Bytes of unfinished messages one connection may hold, over all its chunk streams.
    pub max_partial: usize,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        ChunkLimits { max_message: 8 << 20, max_partial: (8 << 20) + (256 << 10) }
    }
}

/// Bytes of unfinished messages held by every connection together, with counters of what was
/// refused. Shared (`Arc`) by the RTMP listener's connections.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
    /// Connections closed because the budget was exhausted.
    pub exhausted: AtomicU64,
    /// Messages refused at their header for exceeding `max_message` (or a connection's share).
    pub oversized: AtomicU64,
}

impl ByteBudget {
    pub fn new(limit: usize) -> ByteBudget {
        ByteBudget { limit, used: AtomicUsize::new(0), exhausted: AtomicU64::new(0), oversized: AtomicU64::new(0) }
    }

    /// A budget nobody else shares (clients, tests).
    pub fn unshared(limit: usize) -> Arc<ByteBudget> {
        Arc::new(ByteBudget::new(limit))
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| u.checked_add(n).filter(|&t| t <= self.limit))
            .is_ok()
    }

    fn give(&self, n: usize) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(n)));
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("RTMP message of {len} bytes announced (limit {limit}, config key rtmp.max_message_bytes)")]
    MessageTooLarge { len: usize, limit: usize },
    #[error("unfinished RTMP messages would hold {held} bytes on this connection (limit {limit})")]
    ConnectionBudget { held: usize, limit: usize },
    #[error("the gateway's budget for unfinished RTMP messages ({limit} bytes, rtmp.max_partial_bytes) is exhausted")]
    GlobalBudget { limit: usize },
    #[error("chunk on stream {0} continues a header never sent")]
    NoPreviousHeader(u32),
    #[error("chunk header changes the length of an unfinished message on stream {0}")]
    LengthChanged(u32),
    #[error("more than {MAX_CHUNK_STREAMS} chunk streams")]
    TooManyChunkStreams,
    #[error("invalid chunk size {0}")]
    BadChunkSize(u32),
    #[error("malformed control message (type {0})")]
    BadControl(u8),
}

/// One whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub csid: u32,
    /// Milliseconds, wrapping at 2^32 (§5.3.1.3).
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub data: Bytes,
}

#[derive(Debug, Default)]
struct ChunkStream {
    timestamp: u32,
    /// The last delta, applied again by a type 3 header that starts a message.
    delta: u32,
    /// The last 24-bit timestamp field was the extended marker: type 3 chunks carry 4 more bytes.
    extended: bool,
    length: usize,
    type_id: u8,
    stream_id: u32,
    seen: bool,
    /// The unfinished message (empty between messages).
    partial: Vec<u8>,
    /// Bytes charged to the budgets for `partial` (its reserved capacity).
    charged: usize,
}

/// The chunk header parsed; the payload follows.
struct Header {
    csid: u32,
    /// Bytes of the header, consumed once the payload starts.
    len: usize,
}

pub struct ChunkReader {
    limits: ChunkLimits,
    budget: Arc<ByteBudget>,
    chunk_size: usize,
    /// Unread input: at most one chunk header's worth stays here between calls.
    input: BytesMut,
    streams: HashMap<u32, ChunkStream>,
    /// The chunk whose payload is being copied: (csid, payload bytes left in this chunk).
    in_payload: Option<(u32, usize)>,
    /// Capacity of every `partial`, as charged to `budget`.
    held: usize,
    failed: bool,
}

impl ChunkReader {
    pub fn new(limits: ChunkLimits, budget: Arc<ByteBudget>) -> ChunkReader {
        ChunkReader {
            limits,
            budget,
            chunk_size: INITIAL_CHUNK_SIZE,
            input: BytesMut::new(),
            streams: HashMap::new(),
            in_payload: None,
            held: 0,
            failed: false,
        }
    }

    /// Bytes of unfinished messages held now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Feeds `bytes` and appends every message they complete to `out`. After an error the reader
    /// is spent (the connection must close) and releases what it held.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Message>) -> Result<(), ChunkError> {
        if self.failed {
            return Ok(());
        }
        let r = self.push_inner(bytes, out);
        if r.is_err() {
            self.failed = true;
            self.release();
        }
        r
    }

    fn push_inner(&mut self, bytes: &[u8], out: &mut Vec<Message>) -> Result<(), ChunkError> {
        // `input` holds only the start of a header split across reads (under 18 bytes).
        let joined;
        let mut data = if self.input.is_empty() {
            bytes
        } else {
            self.input.extend_from_slice(bytes);
            joined = self.input.split().freeze();
            &joined[..]
        };
        loop {
            if let Some((csid, left)) = self.in_payload {
                let n = left.min(data.len());
                self.append(csid, &data[..n])?;
                data = &data[n..];
                if n < left {
                    self.in_payload = Some((csid, left - n));
                    return Ok(());
                }
                self.in_payload = None;
                self.chunk_done(csid, out)?;
                continue;
            }
            if data.is_empty() {
                return Ok(());
            }
            match self.header(data)? {
                None => {
                    self.input.extend_from_slice(data);
                    return Ok(());
                }
                Some(h) => {
                    data = &data[h.len..];
                    let s = &self.streams[&h.csid];
                    let left = (s.length - s.partial.len()).min(self.chunk_size);
                    self.in_payload = Some((h.csid, left));
                }
            }
        }
    }

    /// Parses the chunk header at the start of `input`, applying it to its chunk stream.
    fn header(&mut self, b: &[u8]) -> Result<Option<Header>, ChunkError> {
        let Some(&first) = b.first() else { return Ok(None) };
        let fmt = first >> 6;
        let (csid, mut at) = match first & 0x3f {
            0 if b.len() >= 2 => (64 + b[1] as u32, 2),
            1 if b.len() >= 3 => (64 + b[1] as u32 + 256 * b[2] as u32, 3),
            0 | 1 => return Ok(None),
            id => (id as u32, 1),
        };
        let fixed = [11, 7, 3, 0][fmt as usize];
        if b.len() < at + fixed {
            return Ok(None);
        }
        let u24 = |i: usize| u32::from_be_bytes([0, b[i], b[i + 1], b[i + 2]]);
        let field = if fmt < 3 { u24(at) } else { 0 };
        let length = if fmt < 2 { Some(u24(at + 3) as usize) } else { None };
        let type_id = if fmt < 2 { Some(b[at + 6]) } else { None };
        let stream_id =
            if fmt == 0 { Some(u32::from_le_bytes([b[at + 7], b[at + 8], b[at + 9], b[at + 10]])) } else { None };
        at += fixed;
        let known = self.streams.get(&csid);
        if fmt > 0 && !known.is_some_and(|s| s.seen) {
            return Err(ChunkError::NoPreviousHeader(csid));
        }
        let extended = if fmt < 3 { field == EXTENDED } else { known.is_some_and(|s| s.extended) };
        let mut ext_value = None;
        if extended {
            if b.len() < at + 4 {
                return Ok(None);
            }
            ext_value = Some(u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]));
            at += 4;
        }
        // The whole header is here: apply it.
        if !self.streams.contains_key(&csid) && self.streams.len() >= MAX_CHUNK_STREAMS {
            return Err(ChunkError::TooManyChunkStreams);
        }
        let limits = self.limits;
        let s = self.streams.entry(csid).or_default();
        let continuing = !s.partial.is_empty();
        if let Some(len) = length {
            if continuing && len != s.length {
                return Err(ChunkError::LengthChanged(csid));
            }
            if len > limits.max_message {
                self.budget.oversized.fetch_add(1, Ordering::Relaxed);
                return Err(ChunkError::MessageTooLarge { len, limit: limits.max_message });
            }
            s.length = len;
        }
        if let Some(t) = type_id {
            s.type_id = t;
        }
        if let Some(id) = stream_id {
            s.stream_id = id;
        }
        let value = ext_value.unwrap_or(field);
        match fmt {
            // A type 3 after a type 0 repeats its timestamp as the delta (§5.3.1.2.4).
            0 => (s.timestamp, s.delta, s.extended) = (value, value, extended),
            1 | 2 => {
                (s.delta, s.extended) = (value, extended);
                s.timestamp = s.timestamp.wrapping_add(value);
            }
            // A type 3 header that starts a message repeats the previous delta; one that
            // continues a message carries no time (§5.3.1.2.4).
            _ if !continuing => s.timestamp = s.timestamp.wrapping_add(s.delta),
            _ => {}
        }
        s.seen = true;
        Ok(Some(Header { csid, len: at }))
    }

    /// Copies payload bytes into the unfinished message of `csid`, charging the budgets.
    fn append(&mut self, csid: u32, bytes: &[u8]) -> Result<(), ChunkError> {
        let limits = self.limits;
        let s = self.streams.get_mut(&csid).expect("header applied");
        let need = s.partial.len() + bytes.len();
        if need > s.charged {
            // Grow by doubling up to the announced length: what is charged is what is reserved.
            let cap = (s.charged * 2).clamp(need, s.length.max(need));
            let grow = cap - s.charged;
            let held = self.held + grow;
            if held > limits.max_partial {
                self.budget.oversized.fetch_add(1, Ordering::Relaxed);
                return Err(ChunkError::ConnectionBudget { held, limit: limits.max_partial });
            }
            if !self.budget.take(grow) {
                self.budget.exhausted.fetch_add(1, Ordering::Relaxed);
                return Err(ChunkError::GlobalBudget { limit: self.budget.limit });
            }
            self.held = held;
            s.charged = cap;
            s.partial.reserve_exact(cap - s.partial.len());
        }
        s.partial.extend_from_slice(bytes);
        Ok(())
    }

    fn chunk_done(&mut self, csid: u32, out: &mut Vec<Message>) -> Result<(), ChunkError> {
        let s = self.streams.get_mut(&csid).expect("header applied");
        if s.partial.len() < s.length {
            return Ok(());
        }
        let data = std::mem::take(&mut s.partial);
        let charged = std::mem::take(&mut s.charged);
        let m = Message { csid, timestamp: s.timestamp, type_id: s.type_id, stream_id: s.stream_id, data: data.into() };
        self.free(charged);
        match m.type_id {
            SET_CHUNK_SIZE => {
                let size = read_u32(&m.data).ok_or(ChunkError::BadControl(SET_CHUNK_SIZE))? & 0x7fff_ffff;
                // Bit 31 must be 0 (§5.4.1); a chunk never needs to exceed a message.
                if size == 0 {
                    return Err(ChunkError::BadChunkSize(size));
                }
                self.chunk_size = (size as usize).min(0xFF_FFFF);
            }
            ABORT => {
                let id = read_u32(&m.data).ok_or(ChunkError::BadControl(ABORT))?;
                if self.in_payload.is_some_and(|(c, _)| c == id) {
                    // Cannot happen (the abort's own chunk just ended), kept for clarity.
                    self.in_payload = None;
                }
                if let Some(s) = self.streams.get_mut(&id) {
                    s.partial = Vec::new();
                    let charged = std::mem::take(&mut s.charged);
                    self.free(charged);
                }
            }
            _ => out.push(m),
        }
        Ok(())
    }

    fn free(&mut self, n: usize) {
        let n = n.min(self.held);
        self.held -= n;
        self.budget.give(n);
    }

    fn release(&mut self) {
        for s in self.streams.values_mut() {
            s.partial = Vec::new();
            s.charged = 0;
        }
        self.budget.give(self.held);
        self.held = 0;
    }
}

impl Drop for ChunkReader {
    fn drop(&mut self) {
        self.release();
    }
}

fn read_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::chunk_io::ChunkSerializer;
    use rml_rtmp::messages::MessagePayload;
    use rml_rtmp::time::RtmpTimestamp;

    fn payload(ts: u32, type_id: u8, sid: u32, len: usize) -> MessagePayload {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        MessagePayload { timestamp: RtmpTimestamp::new(ts), type_id, message_stream_id: sid, data: Bytes::from(data) }
    }

    fn read_all(r: &mut ChunkReader, wire: &[u8], piece: usize) -> Result<Vec<Message>, ChunkError> {
        let mut out = Vec::new();
        for p in wire.chunks(piece) {
            r.push(p, &mut out)?;
        }
        Ok(out)
    }

    /// What rml_rtmp's serializer writes (header compression, extended timestamps, a chunk size
    /// change) reads back identically here at every read size.
    #[test]
    fn reads_what_rml_rtmp_writes() {
        let mut ser = ChunkSerializer::new();
        let inputs = vec![
            payload(0, 20, 0, 200),
            payload(40, 9, 1, 1000),
            payload(80, 9, 1, 1000),
            payload(0x0100_0000, 8, 1, 300),
            payload(0x0100_0040, 8, 1, 300),
            payload(0x0100_0080, 9, 1, 5000),
        ];
        let mut wire = Vec::new();
        for (i, p) in inputs.iter().enumerate() {
            if i == 2 {
                wire.extend(ser.set_max_chunk_size(700, RtmpTimestamp::new(0)).unwrap().bytes);
            }
            wire.extend(ser.serialize(p, false, false).unwrap().bytes);
        }
        for piece in [1, 7, 128, 4096, wire.len()] {
            let budget = ByteBudget::unshared(1 << 20);
            let mut r = ChunkReader::new(ChunkLimits::default(), budget.clone());
            let got = read_all(&mut r, &wire, piece).unwrap();
            let got: Vec<_> = got
                .iter()
                .zip(&inputs)
                .map(|(m, p)| (m.timestamp, m.type_id, m.stream_id, m.data.len(), m.data == p.data))
                .collect();
            let want: Vec<_> = inputs
                .iter()
                .map(|p| (p.timestamp.value, p.type_id, p.message_stream_id, p.data.len(), true))
                .collect();
            assert_eq!(got, want, "piece {piece}");
            assert_eq!((r.held(), budget.used()), (0, 0));
        }
    }

    #[test]
    fn an_oversized_message_is_refused_at_its_header() {
        let mut ser = ChunkSerializer::new();
        let wire = ser.serialize(&payload(0, 9, 1, 2000), false, false).unwrap().bytes;
        let budget = ByteBudget::unshared(1 << 20);
        let mut r = ChunkReader::new(ChunkLimits { max_message: 1000, max_partial: 1000 }, budget.clone());
        // Only the 12-byte header is needed to refuse it.
        assert_eq!(read_all(&mut r, &wire[..12], 12), Err(ChunkError::MessageTooLarge { len: 2000, limit: 1000 }));
        assert_eq!(budget.oversized.load(Ordering::Relaxed), 1);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_global_budget_is_shared_and_returned() {
        let mut ser = ChunkSerializer::new();
        let wire = ser.serialize(&payload(0, 9, 1, 1000), false, false).unwrap().bytes;
        let budget = ByteBudget::unshared(1500);
        let limits = ChunkLimits { max_message: 1000, max_partial: 1000 };
        let mut a = ChunkReader::new(limits, budget.clone());
        let mut b = ChunkReader::new(limits, budget.clone());
        // a holds most of an unfinished message; b cannot hold its own too.
        read_all(&mut a, &wire[..900], 900).unwrap();
        assert!(budget.used() >= 800, "{}", budget.used());
        assert_eq!(read_all(&mut b, &wire[..900], 900), Err(ChunkError::GlobalBudget { limit: 1500 }));
        assert_eq!(budget.exhausted.load(Ordering::Relaxed), 1);
        drop(a);
        assert_eq!(budget.used(), 0);
        let mut c = ChunkReader::new(limits, budget.clone());
        assert_eq!(read_all(&mut c, &wire, 50).unwrap().len(), 1);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn hostile_headers_are_errors() {
        let budget = ByteBudget::unshared(1 << 20);
        let mut r = ChunkReader::new(ChunkLimits::default(), budget.clone());
        assert_eq!(read_all(&mut r, &[0xc5], 1), Err(ChunkError::NoPreviousHeader(5)));
        // A type 1 header that shrinks an unfinished message (rml_rtmp's reader underflowed on it).
        let mut ser = ChunkSerializer::new();
        let mut wire = ser.serialize(&payload(0, 9, 1, 300), true, false).unwrap().bytes;
        wire.truncate(12 + 128);
        wire.extend_from_slice(&[0x43 + 3, 0, 0, 0, 0, 0, 10, 9]);
        let first = wire[0] & 0x3f;
        wire[12 + 128] = 0x40 | first;
        let mut r = ChunkReader::new(ChunkLimits::default(), budget.clone());
        assert_eq!(read_all(&mut r, &wire, 5), Err(ChunkError::LengthChanged(first as u32)));
        // SetChunkSize 0.
        let mut r = ChunkReader::new(ChunkLimits::default(), budget.clone());
        let zero = [2, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(read_all(&mut r, &zero, 16), Err(ChunkError::BadChunkSize(0)));
        assert_eq!(budget.used(), 0);
    }
}
