//! RTP over TCP framing (sans-IO): RFC 4571 `[len16][RTP]` as GB28181 uses it, and RTSP-style
//! interleaved `$ ch len16 [RTP]` (ZLMediaKit accepts both). The framing is detected from the first
//! plausible frame of the connection.
//!
//! A frame is accepted only if it looks like RTP v2 (length >= 12, not RTCP) carrying the
//! connection's SSRC (learnt from the first accepted frame), or like a well-formed RTCP packet,
//! which is counted and skipped. When the next frame's header is already buffered it must look
//! valid too (lookahead); frames longer than [`SUSPICIOUS_LEN`], and frames while the SSRC is still
//! unknown, wait for that lookahead, so a corrupted length such as 0xFFFF cannot swallow the good
//! packets behind it. On any failure the framer resynchronises by scanning forward for the first
//! offset holding a plausible length followed by an RTP v2 header with the connection's SSRC.
//!
//! Memory: after [`TcpFramer::next_packet`] returns `None` at most [`MAX_BUFFERED`] bytes remain,
//! so the caller's buffer is bounded by that plus one read chunk.
use bytes::{Buf, Bytes, BytesMut};

/// Largest frame the 16-bit length can describe.
pub const MAX_FRAME: usize = 65535;
/// Longer frames are accepted only once the header after them is buffered and valid. Typical GB
/// cameras send <= 1400 B; waiting for the next header on big frames costs little latency.
pub const SUSPICIOUS_LEN: usize = 8192;
const RTP_HEADER: usize = 12;
/// Upper bound of [`TcpFramer::buffered`] once `next_packet` returned `None`: the largest frame
/// with its header plus the next header needed for lookahead.
pub const MAX_BUFFERED: usize = 4 + MAX_FRAME + 4 + RTP_HEADER;
/// If a resync skipped this much without finding the known SSRC, forget it so a stream whose
/// SSRC really changed on the same connection can be picked up again.
const RELOCK_AFTER: u64 = 2 * MAX_FRAME as u64;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FramerStats {
    /// RTP frames returned.
    pub frames: u64,
    /// Times the framing was lost and a forward search started.
    pub resyncs: u64,
    /// Bytes discarded while searching.
    pub skipped_bytes: u64,
    /// RTCP frames counted and skipped.
    pub rtcp: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `[len16][packet]`
    Rfc4571,
    /// `$ channel len16 [packet]`
    Interleaved,
}

impl Framing {
    fn header_len(self) -> usize {
        match self {
            Framing::Rfc4571 => 2,
            Framing::Interleaved => 4,
        }
    }
}

/// Verdict on a candidate frame start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Not decidable yet: more bytes needed.
    Need,
    Bad,
    Rtp {
        framing: Framing,
        len: usize,
        ssrc: u32,
    },
    Rtcp {
        framing: Framing,
        len: usize,
    },
}

pub struct TcpFramer {
    buf: BytesMut,
    framing: Option<Framing>,
    ssrc: Option<u32>,
    resyncing: bool,
    /// Bytes skipped in the current resync (for [`RELOCK_AFTER`]).
    resync_skipped: u64,
    /// How much of the buffer the last undecided check at offset 0 had searched for an embedded
    /// next packet (see `next_packet_inside`); reset whenever the buffer advances.
    inside_scanned: usize,
    eof: bool,
    stats: FramerStats,
    /// RTCP frames kept for the caller (see [`TcpFramer::keep_rtcp`]), at most `keep_rtcp`.
    rtcp_frames: std::collections::VecDeque<Bytes>,
    keep_rtcp: usize,
}

impl Default for TcpFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl TcpFramer {
    pub fn new() -> Self {
        TcpFramer {
            // Allocated at the first read (`read_space`) and given back whenever it empties.
            buf: BytesMut::new(),
            framing: None,
            ssrc: None,
            resyncing: false,
            resync_skipped: 0,
            inside_scanned: 0,
            eof: false,
            stats: FramerStats::default(),
            rtcp_frames: std::collections::VecDeque::new(),
            keep_rtcp: 0,
        }
    }

    /// Keeps up to `max` RTCP frames for [`TcpFramer::take_rtcp`] instead of only counting them
    /// (RFC 4571 carries RTCP in the same stream); beyond `max` unread ones they are dropped.
    pub fn keep_rtcp(mut self, max: usize) -> Self {
        self.keep_rtcp = max;
        self
    }

    /// The oldest RTCP frame kept (without framing header).
    pub fn take_rtcp(&mut self) -> Option<Bytes> {
        self.rtcp_frames.pop_front()
    }

    /// Appends received bytes. Drain with [`next_packet`](Self::next_packet) after every push.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Room for a read of at least `min` bytes at the end of the buffer, for a socket to read
    /// into in place (`try_read_buf`): what it appends is taken as [`push`](Self::push) would
    /// take it, without a copy out of a separate read buffer. Nothing else may be changed.
    pub fn read_space(&mut self, min: usize) -> &mut BytesMut {
        self.buf.reserve(min);
        &mut self.buf
    }

    /// Gives the buffer's allocation back when it holds no bytes: an idle connection between
    /// frames then keeps no read memory (D179). [`next_packet`](Self::next_packet) does this when
    /// it drains the buffer; a caller whose read found nothing calls it before waiting again.
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// End of input: from now on incomplete frames and missing lookahead no longer wait, so the
    /// packets behind a corrupted length are recovered and a truncated tail is discarded.
    pub fn finish(&mut self) {
        self.eof = true;
    }

    /// Whether [`Self::finish`] was called.
    pub fn is_finished(&self) -> bool {
        self.eof
    }

    /// The next complete RTP packet, without its framing header (zero-copy from the buffer).
    pub fn next_packet(&mut self) -> Option<Bytes> {
        loop {
            if self.buf.is_empty() {
                self.release_if_empty();
                return None;
            }
            let check = self.check_any(0);
            if check != Check::Need {
                // The buffer advances below: offsets of the last search are void.
                self.inside_scanned = 0;
            }
            match check {
                Check::Rtp { framing, len, ssrc } => {
                    self.framing = Some(framing);
                    self.ssrc.get_or_insert(ssrc);
                    self.resyncing = false;
                    self.buf.advance(framing.header_len());
                    self.stats.frames += 1;
                    return Some(self.buf.split_to(len).freeze());
                }
                Check::Rtcp { framing, len } => {
                    self.framing = Some(framing);
                    self.resyncing = false;
                    self.buf.advance(framing.header_len());
                    let frame = self.buf.split_to(len);
                    if self.rtcp_frames.len() < self.keep_rtcp {
                        self.rtcp_frames.push_back(frame.freeze());
                    }
                    self.stats.rtcp += 1;
                }
                Check::Need => {
                    if self.inside_search_due() {
                        self.inside_scanned = self.buf.len();
                    }
                    return None;
                }
                Check::Bad => self.resync(),
            }
        }
    }

    pub fn stats(&self) -> &FramerStats {
        &self.stats
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The detected framing, once a frame was accepted.
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// The connection's SSRC, once a frame was accepted.
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    /// Offset 0 is bad: skip to the first offset that is a candidate (or undecidable yet).
    fn resync(&mut self) {
        if !self.resyncing {
            self.resyncing = true;
            self.resync_skipped = 0;
            self.stats.resyncs += 1;
        }
        let mut p = 1;
        while p < self.buf.len() && self.check_any(p) == Check::Bad {
            p += 1;
        }
        let p = p.min(self.buf.len());
        self.buf.advance(p);
        self.stats.skipped_bytes += p as u64;
        self.resync_skipped += p as u64;
        if self.resync_skipped > RELOCK_AFTER {
            self.ssrc = None;
        }
    }

    fn check_any(&self, p: usize) -> Check {
        if let Some(f) = self.framing {
            return self.check(p, f);
        }
        // Unknown framing: a leading '$' favours interleaved (a 4571 length of 0x24xx is rare).
        let order = if self.buf[p] == b'$' {
            [Framing::Interleaved, Framing::Rfc4571]
        } else {
            [Framing::Rfc4571, Framing::Interleaved]
        };
        let a = self.check(p, order[0]);
        if matches!(a, Check::Rtp { .. } | Check::Rtcp { .. }) {
            return a;
        }
        let b = self.check(p, order[1]);
        if matches!(b, Check::Rtp { .. } | Check::Rtcp { .. }) {
            return b;
        }
        if a == Check::Need || b == Check::Need {
            Check::Need
        } else {
            Check::Bad
        }
    }

    fn need(&self) -> Check {
        if self.eof {
            Check::Bad
        } else {
            Check::Need
        }
    }

    /// Frame length at `p` for framing `f`, if the header is buffered and well-formed.
    fn frame_len(&self, p: usize, f: Framing) -> Option<usize> {
        let b = &self.buf[..];
        match f {
            Framing::Rfc4571 => Some(u16::from_be_bytes([*b.get(p)?, *b.get(p + 1)?]) as usize),
            Framing::Interleaved => {
                if *b.get(p)? != b'$' {
                    return None;
                }
                Some(u16::from_be_bytes([*b.get(p + 2)?, *b.get(p + 3)?]) as usize)
            }
        }
    }

    fn check(&self, p: usize, f: Framing) -> Check {
        let b = &self.buf[..];
        let h = f.header_len();
        if b.len() < p + h {
            return self.need();
        }
        let Some(len) = self.frame_len(p, f) else {
            return Check::Bad;
        };
        // Zero (or < minimal RTCP) length means the stream is broken.
        if len < 8 {
            return Check::Bad;
        }
        let s = p + h;
        if b.len() < s + len.min(RTP_HEADER) {
            return self.need();
        }
        if b[s] >> 6 != 2 {
            return Check::Bad;
        }
        let rtcp = (200..=204).contains(&b[s + 1]);
        let frame_ssrc = if rtcp {
            let words = u16::from_be_bytes([b[s + 2], b[s + 3]]) as usize;
            // While resyncing only our RTP re-anchors the stream: RTCP is easy to fake by junk.
            if self.resyncing || len % 4 != 0 || (words + 1) * 4 > len {
                return Check::Bad;
            }
            None
        } else {
            if len < RTP_HEADER {
                return Check::Bad;
            }
            let ssrc = u32::from_be_bytes([b[s + 8], b[s + 9], b[s + 10], b[s + 11]]);
            if self.ssrc.is_some_and(|known| known != ssrc) {
                return Check::Bad;
            }
            // A search without a known SSRC must not stall up to 64 KiB on an unverifiable guess.
            if self.resyncing && self.ssrc.is_none() && len > SUSPICIOUS_LEN {
                return Check::Bad;
            }
            Some(ssrc)
        };
        let end = s + len;
        if b.len() < end {
            if len > SUSPICIOUS_LEN && frame_ssrc.is_some() && self.next_packet_inside(p, f) {
                return Check::Bad;
            }
            return self.need();
        }
        let chain_ssrc = self.ssrc.or(frame_ssrc);
        match self.lookahead(end, f, chain_ssrc) {
            Some(true) => {}
            Some(false) => return Check::Bad,
            // Part of the next header is here: wait for the rest (it is in flight anyway). At
            // EOF the leftover cannot be a frame, so this one's length is likely wrong.
            None if b.len() > end => return self.need(),
            // Buffer ends exactly at the frame end: trust only ordinary lengths on an
            // established connection, so the tail of a burst is not delayed.
            None if !self.eof && (len > SUSPICIOUS_LEN || self.ssrc.is_none()) => return Check::Need,
            None => {}
        }
        match frame_ssrc {
            Some(ssrc) => Check::Rtp { framing: f, len, ssrc },
            None => Check::Rtcp { framing: f, len },
        }
    }

    /// While a long frame at `p` is incomplete: is the next packet of the stream (our SSRC, seq + 1,
    /// itself confirmed by the header after it) already inside the claimed body? Then the length
    /// at `p` is corrupt, and the search need not wait for up to 64 KiB to prove it.
    fn next_packet_inside(&self, p: usize, f: Framing) -> bool {
        let Some(ssrc) = self.ssrc else {
            return false;
        };
        let b = &self.buf[..];
        let h = f.header_len();
        let s = p + h;
        let next_seq = u16::from_be_bytes([b[s + 2], b[s + 3]]).wrapping_add(1);
        // SSRC sits at offset h + 8 of a frame; the next frame starts after this one's header.
        let mut from = s + RTP_HEADER + h + 8;
        if p == 0 {
            // Tiny reads must not make this quadratic: search again only after 1 KiB more, and
            // skip what was searched, except candidates that could not be verified yet.
            if !self.inside_search_due() {
                return false;
            }
            from = from.max(self.inside_scanned.saturating_sub(SUSPICIOUS_LEN + 64));
        }
        if b.len() <= from {
            return false;
        }
        memchr::memmem::find_iter(&b[from..], &ssrc.to_be_bytes()).any(|o| {
            let q = from + o - 8 - h;
            let r = q + h;
            let Some(len) = self.frame_len(q, f) else {
                return false;
            };
            b[r] >> 6 == 2
                && u16::from_be_bytes([b[r + 2], b[r + 3]]) == next_seq
                && len >= RTP_HEADER
                && self.lookahead(r + len, f, Some(ssrc)) == Some(true)
        })
    }

    fn inside_search_due(&self) -> bool {
        self.inside_scanned == 0 || self.buf.len() >= self.inside_scanned + 1024
    }

    /// Lookahead: does a plausible frame header start at `q`? `None` while too few bytes are
    /// buffered to tell (a short RTCP frame needs only its 8 bytes, RTP needs 12 for the SSRC).
    fn lookahead(&self, q: usize, f: Framing, ssrc: Option<u32>) -> Option<bool> {
        let b = &self.buf[..];
        let h = f.header_len();
        if b.len() < q + h {
            return None;
        }
        let Some(len) = self.frame_len(q, f) else {
            return Some(false);
        };
        let s = q + h;
        if len < 8 {
            return Some(false);
        }
        if b.len() < s + len.min(RTP_HEADER) {
            // Reject early on what is already there.
            return if b.len() > s && b[s] >> 6 != 2 { Some(false) } else { None };
        }
        if b[s] >> 6 != 2 {
            return Some(false);
        }
        if (200..=204).contains(&b[s + 1]) {
            return Some(len % 4 == 0);
        }
        Some(
            len >= RTP_HEADER
                && ssrc.is_none_or(|k| k == u32::from_be_bytes([b[s + 8], b[s + 9], b[s + 10], b[s + 11]])),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rtp::{write_packet, RtpPacket};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    const SSRC: u32 = 0x05F5_E101;

    fn rtp(seq: u16, ssrc: u32, payload_len: usize) -> Vec<u8> {
        let payload: Vec<u8> = (0..payload_len).map(|i| (i as u8).wrapping_mul(31) ^ seq as u8).collect();
        let mut out = Vec::new();
        write_packet(&mut out, 96, false, seq, seq as u32 * 3600, ssrc, &payload);
        out
    }

    fn frame4571(out: &mut Vec<u8>, pkt: &[u8]) {
        out.extend_from_slice(&(pkt.len() as u16).to_be_bytes());
        out.extend_from_slice(pkt);
    }

    fn frame_dollar(out: &mut Vec<u8>, ch: u8, pkt: &[u8]) {
        out.extend_from_slice(&[b'$', ch]);
        out.extend_from_slice(&(pkt.len() as u16).to_be_bytes());
        out.extend_from_slice(pkt);
    }

    /// An RTCP receiver report with no report blocks (8 bytes).
    fn rtcp_rr(ssrc: u32) -> Vec<u8> {
        let mut v = vec![0x80, 201, 0, 1];
        v.extend_from_slice(&ssrc.to_be_bytes());
        v
    }

    fn drain(f: &mut TcpFramer, out: &mut Vec<Bytes>) {
        while let Some(p) = f.next_packet() {
            out.push(p);
        }
    }

    fn run(data: &[u8], finish: bool) -> (Vec<Bytes>, TcpFramer) {
        let mut f = TcpFramer::new();
        let mut out = Vec::new();
        f.push(data);
        drain(&mut f, &mut out);
        if finish {
            f.finish();
            drain(&mut f, &mut out);
        }
        (out, f)
    }

    fn seqs(pkts: &[Bytes]) -> Vec<u16> {
        pkts.iter().map(|p| RtpPacket::parse(p.clone()).unwrap().seq).collect()
    }

    /// D179: reads land in the framer's own buffer, split anywhere, and a drained framer holds
    /// no allocation (an idle connection keeps no read memory) while its packets stay valid.
    #[test]
    fn reads_in_place_and_gives_the_buffer_back_when_drained() {
        let mut data = Vec::new();
        for seq in 1..=3 {
            frame4571(&mut data, &rtp(seq, 0x1234, 1000));
        }
        let mut f = TcpFramer::new();
        assert_eq!(f.buf.capacity(), 0, "nothing allocated before the first read");
        let mut out = Vec::new();
        for part in [&data[..700], &data[700..2100], &data[2100..]] {
            let space = f.read_space(16 * 1024);
            assert!(space.capacity() - space.len() >= 16 * 1024);
            space.extend_from_slice(part);
            drain(&mut f, &mut out);
        }
        assert_eq!(seqs(&out), [1, 2, 3]);
        assert_eq!(f.buffered(), 0);
        assert_eq!(f.buf.capacity(), 0, "the drained buffer was given back");
        f.read_space(16 * 1024);
        f.release_if_empty();
        assert_eq!(f.buf.capacity(), 0, "a read that found nothing gives it back too");
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let pkts = [rtp(1, SSRC, 100), rtp(2, SSRC, 0), rtp(3, SSRC, 1400)];
        let mut data = Vec::new();
        for p in &pkts {
            frame4571(&mut data, p);
        }
        for cut in 0..=data.len() {
            let mut f = TcpFramer::new();
            let mut out = Vec::new();
            f.push(&data[..cut]);
            drain(&mut f, &mut out);
            f.push(&data[cut..]);
            drain(&mut f, &mut out);
            assert_eq!(out.len(), 3, "cut at {cut}");
            for (a, b) in out.iter().zip(&pkts) {
                assert_eq!(&a[..], &b[..], "cut at {cut}");
            }
            assert_eq!(f.buffered(), 0);
            assert_eq!((f.stats().resyncs, f.stats().skipped_bytes), (0, 0));
        }
        // One byte at a time.
        let mut f = TcpFramer::new();
        let mut out = Vec::new();
        for b in &data {
            f.push(std::slice::from_ref(b));
            drain(&mut f, &mut out);
        }
        assert_eq!(seqs(&out), vec![1, 2, 3]);
        assert_eq!(f.framing(), Some(Framing::Rfc4571));
        assert_eq!(f.ssrc(), Some(SSRC));
    }

    #[test]
    fn interleaved_dollar_framing_with_rtcp_channel() {
        let mut data = Vec::new();
        frame_dollar(&mut data, 0, &rtp(10, SSRC, 50));
        frame_dollar(&mut data, 1, &rtcp_rr(SSRC));
        frame_dollar(&mut data, 0, &rtp(11, SSRC, 60));
        frame_dollar(&mut data, 0, &rtp(12, SSRC, 70));
        let (out, f) = run(&data, false);
        assert_eq!(seqs(&out), vec![10, 11, 12]);
        assert_eq!(f.framing(), Some(Framing::Interleaved));
        assert_eq!((f.stats().frames, f.stats().rtcp, f.stats().resyncs), (3, 1, 0));
    }

    #[test]
    fn rtcp_in_4571_stream_is_counted_and_skipped() {
        let mut data = Vec::new();
        frame4571(&mut data, &rtp(1, SSRC, 50));
        frame4571(&mut data, &rtcp_rr(SSRC));
        frame4571(&mut data, &rtp(2, SSRC, 50));
        // A connection may even start with RTCP.
        let mut lead = Vec::new();
        frame4571(&mut lead, &rtcp_rr(SSRC));
        lead.extend_from_slice(&data);
        for d in [data, lead.clone()] {
            let (out, f) = run(&d, false);
            assert_eq!(seqs(&out), vec![1, 2]);
            assert!(f.stats().rtcp >= 1);
            assert_eq!(f.stats().resyncs, 0);
        }
        assert_eq!(run(&lead, false).1.stats().rtcp, 2);
        // Kept for the caller when asked, bounded.
        let mut f = TcpFramer::new().keep_rtcp(1);
        f.push(&lead);
        while f.next_packet().is_some() {}
        assert_eq!(f.take_rtcp().as_deref(), Some(&rtcp_rr(SSRC)[..]));
        assert_eq!(f.take_rtcp(), None, "the second one was over the bound");
    }

    #[test]
    fn zero_length_is_corruption() {
        let mut data = Vec::new();
        frame4571(&mut data, &rtp(0, SSRC, 50));
        frame4571(&mut data, &rtp(1, SSRC, 50));
        data.extend_from_slice(&[0, 0]);
        frame4571(&mut data, &rtp(2, SSRC, 50));
        frame4571(&mut data, &rtp(3, SSRC, 50));
        let (out, f) = run(&data, false);
        // The frame right before the corruption fails its lookahead and is sacrificed: from the
        // bytes alone it cannot be told apart from a frame with junk inside.
        assert_eq!(seqs(&out), vec![0, 2, 3]);
        assert_eq!((f.stats().resyncs, f.stats().skipped_bytes), (1, 2 + 64));
    }

    #[test]
    fn length_65535_followed_by_junk_does_not_swallow_packets() {
        let mut data = Vec::new();
        frame4571(&mut data, &rtp(0, SSRC, 50));
        frame4571(&mut data, &rtp(1, SSRC, 50));
        data.extend_from_slice(&[0xff, 0xff, 0x13, 0x37, 0x42]);
        for seq in 2..6 {
            frame4571(&mut data, &rtp(seq, SSRC, 50));
        }
        let (out, f) = run(&data, false);
        assert_eq!(seqs(&out), vec![0, 2, 3, 4, 5]);
        assert_eq!((f.stats().resyncs, f.stats().skipped_bytes), (1, 64 + 5));
    }

    #[test]
    fn length_overwritten_with_ffff_loses_only_that_packet() {
        let mut data = Vec::new();
        let mut at = 0;
        for seq in 0..100u16 {
            if seq == 10 {
                at = data.len();
            }
            frame4571(&mut data, &rtp(seq, SSRC, 1000));
        }
        data[at] = 0xff;
        data[at + 1] = 0xff;
        let expect: Vec<u16> = (0..100).filter(|&s| s != 10).collect();
        // Enough data behind it: decided by lookahead at the claimed end.
        let (out, f) = run(&data, false);
        assert_eq!(seqs(&out), expect);
        assert_eq!(f.stats().resyncs, 1);
        assert_eq!(f.buffered(), 0);
        // The next packets already sit inside the claimed body: no need to wait for 64 KiB.
        let (out, f) = run(&data[..at + 5 * 1014], false);
        assert_eq!(seqs(&out), (0..15).filter(|&s| s != 10).collect::<Vec<_>>());
        assert_eq!(f.stats().resyncs, 1);
        // Also with tiny reads (the search is rate-limited, not skipped).
        for chunk in [1, 100] {
            let mut f = TcpFramer::new();
            let mut out = Vec::new();
            for c in data[..at + 5 * 1014].chunks(chunk) {
                f.push(c);
                drain(&mut f, &mut out);
            }
            assert_eq!(seqs(&out), (0..15).filter(|&s| s != 10).collect::<Vec<_>>());
        }
        let mut tail = data[at - 1014..].to_vec();
        tail.truncate(20 * 1014);
        let (out, _) = run(&tail, false);
        assert_eq!(seqs(&out), (9..29).filter(|&s| s != 10).collect::<Vec<_>>());
        // At the very end nothing confirms the packet inside the body: finish() settles it.
        tail.truncate(3 * 1014);
        let (out, _) = run(&tail, false);
        assert_eq!(seqs(&out), vec![9]);
        let (out, f) = run(&tail, true);
        assert_eq!(seqs(&out), vec![9, 11]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn junk_between_frames_recovers_with_the_right_ssrc() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut data = Vec::new();
        let mut sent = Vec::new();
        for seq in 0..200u16 {
            let p = rtp(seq, SSRC, rng.gen_range(0..1400));
            frame4571(&mut data, &p);
            sent.push(p);
            if seq % 20 == 5 {
                // Random junk, sometimes including a fake RTP header of another SSRC.
                let n = rng.gen_range(1..40);
                data.extend((0..n).map(|_| rng.gen::<u8>()));
                if seq % 40 == 5 {
                    frame4571(&mut data, &rtp(999, 0xdead_beef, 30));
                }
            }
        }
        let mut f = TcpFramer::new();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let n = rng.gen_range(1..3000).min(data.len() - pos);
            f.push(&data[pos..pos + n]);
            pos += n;
            drain(&mut f, &mut out);
        }
        // Every delivered packet is an intact original (no corrupted frame leaks through).
        for p in &out {
            assert!(sent.iter().any(|s| s[..] == p[..]));
        }
        // Junk goes between frames, so at most the frame before each junk run may be sacrificed.
        assert!(out.len() >= 200 - 10, "got {}", out.len());
        assert!(out.iter().all(|p| RtpPacket::peek_ssrc(p) == Some(SSRC)));
        assert_eq!(f.buffered(), 0);
        assert!(f.stats().resyncs >= 1 && f.stats().resyncs <= 10);
    }

    #[test]
    fn junk_before_first_frame_and_ssrc_learning() {
        let mut data = vec![0x80, 0x60, 0x12, 0x00, 0x00, 0x24, 0x99];
        for seq in 0..5 {
            frame4571(&mut data, &rtp(seq, SSRC, 200));
        }
        let (out, f) = run(&data, false);
        assert_eq!(seqs(&out), vec![0, 1, 2, 3, 4]);
        assert_eq!(f.ssrc(), Some(SSRC));
        assert_eq!(f.stats().skipped_bytes, 7);
    }

    #[test]
    fn memory_is_bounded_and_garbage_never_panics() {
        let mut rng = StdRng::seed_from_u64(1);
        for round in 0..16 {
            let mut f = TcpFramer::new();
            if round % 2 == 0 {
                // Establish an SSRC first.
                let mut d = Vec::new();
                for seq in 0..3 {
                    frame4571(&mut d, &rtp(seq, SSRC, 100));
                }
                f.push(&d);
                while f.next_packet().is_some() {}
            }
            for _ in 0..60 {
                let n = rng.gen_range(0..5000);
                let chunk: Vec<u8> = (0..n)
                    .map(|_| match rng.gen_range(0..4) {
                        0 => 0x80,
                        1 => 0xff,
                        2 => b'$',
                        _ => rng.gen(),
                    })
                    .collect();
                f.push(&chunk);
                while let Some(p) = f.next_packet() {
                    assert!(p.len() >= 12);
                }
                assert!(f.buffered() <= MAX_BUFFERED, "{}", f.buffered());
            }
            f.finish();
            while f.next_packet().is_some() {}
            assert_eq!(f.buffered(), 0);
        }
    }
}
