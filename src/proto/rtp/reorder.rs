//! RTP reorder buffer with loss accounting (sans-IO: time is passed in as `now_us`).
//!
//! Sequence numbers are widened to u64 relative to the next expected one, so the 16-bit wrap is
//! invisible. In-order packets pass straight through (no buffering, no allocation). Packets ahead
//! of the expected one wait in a fixed ring indexed by sequence number; a gap is declared lost
//! when a packet no longer fits in the ring window, when the earliest-arrived held packet waited
//! `max_delay_us`, or on [`ReorderBuffer::flush`].
//!
//! Sequence restarts (camera reboot, SSRC change, jumps beyond [`MAX_DROPOUT`] / [`MAX_MISORDER`])
//! go through RFC 3550 A.1-style probation: the stray packet is parked, and only a second packet
//! continuing it (within [`PROBATION_WINDOW`]) confirms the new sequence and yields
//! [`Reordered::Reset`]. After [`SILENCE_RESET_US`] without packets a jump resets at once.
use super::RtpPacket;

/// Largest forward jump still counted as loss rather than a restart (RFC 3550 A.1 uses 3000).
pub const MAX_DROPOUT: u64 = 3000;
/// Largest backward step still treated as a late/duplicate packet rather than a restart.
pub const MAX_MISORDER: u64 = 3000;
/// A parked stray packet is confirmed as a new sequence by a packet at most this far from it.
pub const PROBATION_WINDOW: i16 = 32;
/// After this much silence a sequence jump resets immediately (no probation needed).
pub const SILENCE_RESET_US: u64 = 2_000_000;
/// Ring capacity is clamped to this so the window stays far inside the i16 widening range.
pub const MAX_CAPACITY: usize = 16384;
/// Default bound on the payload bytes held (see [`ReorderBuffer::with_max_bytes`]).
pub const DEFAULT_MAX_BYTES: usize = 1 << 20;
/// Widened sequence numbers start here so backward steps never underflow.
const EXT_BASE: u64 = 1 << 32;
/// Lost ranges remembered to tell late packets from duplicates.
const LOST_HISTORY: usize = 16;

/// Output of the reorder buffer, in delivery order.
#[derive(Debug, Clone)]
pub enum Reordered {
    Packet(RtpPacket),
    /// seq numbers skipped before the next Packet
    Lost {
        count: u64,
    },
    /// sequence restarted (camera restart / huge jump): state reset
    Reset,
}

/// Counters. `packets`/`bytes` count delivered packets and their payload bytes; `lost` counts
/// sequence numbers declared lost (not decremented when a `late` packet shows up afterwards);
/// `stray` counts parked restart candidates that were not confirmed and got dropped.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RtpStats {
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub late: u64,
    pub resets: u64,
    pub stray: u64,
}

pub struct ReorderBuffer {
    /// Held packets with their arrival time, slot = ext seq % cap. Every held ext seq lies in
    /// `expected + 1 .. expected + cap`, so slots never collide.
    ring: Vec<Option<(RtpPacket, u64)>>,
    cap: u64,
    max_delay_us: u64,
    max_dropout: u64,
    started: bool,
    ssrc: u32,
    /// Widened seq of the next packet to deliver.
    expected: u64,
    /// Highest widened seq ever held (only maintained off the hot path, see `accept`).
    highest: u64,
    /// First widened seq of the current sequence: anything older is late, not a duplicate.
    first: u64,
    held: usize,
    /// Payload bytes of the held packets, bounded by `max_bytes` (issue 8, hole 7).
    held_bytes: usize,
    max_bytes: usize,
    /// Earliest arrival among held packets (valid when `held > 0`).
    oldest_arrival: u64,
    last_arrival: u64,
    /// Restart candidate waiting for a second packet of its sequence.
    probe: Option<RtpPacket>,
    /// Ring of recently declared-lost ranges `[start, end)`.
    lost_ranges: [(u64, u64); LOST_HISTORY],
    lost_next: usize,
    stats: RtpStats,
}

impl ReorderBuffer {
    /// `capacity` is the ring size (clamped to 1..=[`MAX_CAPACITY`]), i.e. how far ahead of a gap
    /// packets can be held; `max_delay_us` bounds how long a held packet waits for a gap to fill.
    pub fn new(capacity: usize, max_delay_us: u64) -> Self {
        let cap = capacity.clamp(1, MAX_CAPACITY);
        let mut ring = Vec::with_capacity(cap);
        ring.resize_with(cap, || None);
        ReorderBuffer {
            ring,
            cap: cap as u64,
            max_delay_us,
            max_dropout: MAX_DROPOUT.max(cap as u64),
            started: false,
            ssrc: 0,
            expected: EXT_BASE,
            highest: EXT_BASE,
            first: EXT_BASE,
            held: 0,
            held_bytes: 0,
            max_bytes: DEFAULT_MAX_BYTES,
            oldest_arrival: 0,
            last_arrival: 0,
            probe: None,
            lost_ranges: [(0, 0); LOST_HISTORY],
            lost_next: 0,
            stats: RtpStats::default(),
        }
    }

    /// Feeds one received packet; released packets/events are appended to `out`.
    #[inline]
    pub fn push(&mut self, pkt: RtpPacket, now_us: u64, out: &mut Vec<Reordered>) {
        // Hot path: the expected packet with nothing held and no restart pending.
        if self.held == 0
            && self.probe.is_none()
            && self.started
            && pkt.seq == self.expected as u16
            && pkt.ssrc == self.ssrc
        {
            self.last_arrival = now_us;
            self.expected += 1;
            self.deliver(pkt, out);
            return;
        }
        self.push_slow(pkt, now_us, out);
    }

    /// Absolute `now_us` at which [`handle_timeout`](Self::handle_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        (self.held > 0).then(|| self.oldest_arrival.saturating_add(self.max_delay_us))
    }

    /// Declares lost every gap in front of a held packet that waited `max_delay_us`.
    pub fn handle_timeout(&mut self, now_us: u64, out: &mut Vec<Reordered>) {
        while self.held > 0 && self.oldest_arrival.saturating_add(self.max_delay_us) <= now_us {
            self.release_first_gap(out);
        }
    }

    /// End of input: releases everything held (gaps become `Lost`); a parked stray is dropped.
    pub fn flush(&mut self, out: &mut Vec<Reordered>) {
        while self.held > 0 {
            self.release_first_gap(out);
        }
        if self.probe.take().is_some() {
            self.stats.stray += 1;
        }
    }

    pub fn stats(&self) -> &RtpStats {
        &self.stats
    }

    /// Bounds the payload bytes held waiting for a gap (at least one packet is always held):
    /// beyond it the oldest gaps are given up, as when the window is full.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Payload bytes currently held back (the parked restart candidate included).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes + self.probe.as_ref().map_or(0, |p| p.payload.len())
    }

    /// Number of packets currently held back.
    pub fn held(&self) -> usize {
        self.held
    }

    #[cold]
    fn push_slow(&mut self, pkt: RtpPacket, now_us: u64, out: &mut Vec<Reordered>) {
        if !self.started {
            self.last_arrival = now_us;
            self.start(pkt.seq, pkt.ssrc);
            self.accept(pkt, now_us, out);
            return;
        }
        // Release what timed out first so the new packet sees current state.
        self.handle_timeout(now_us, out);
        let silent = now_us.saturating_sub(self.last_arrival) >= SILENCE_RESET_US;
        self.last_arrival = now_us;

        let diff = pkt.seq.wrapping_sub(self.expected as u16) as i16 as i64;
        let wild = pkt.ssrc != self.ssrc || diff > self.max_dropout as i64 || diff < -(MAX_MISORDER as i64);
        if wild {
            if silent {
                // A long pause then a new sequence: the camera restarted, no need for probation.
                if self.probe.take().is_some() {
                    self.stats.stray += 1;
                }
                self.restart(pkt, None, now_us, out);
                return;
            }
            match self.probe.take() {
                Some(probe)
                    if probe.ssrc == pkt.ssrc && {
                        let d = pkt.seq.wrapping_sub(probe.seq) as i16;
                        d != 0 && (-PROBATION_WINDOW..=PROBATION_WINDOW).contains(&d)
                    } =>
                {
                    self.restart(probe, Some(pkt), now_us, out)
                }
                old => {
                    // Park it; a single stray packet must not reset the stream.
                    if old.is_some() {
                        self.stats.stray += 1;
                    }
                    self.probe = Some(pkt);
                }
            }
            return;
        }
        if self.probe.take().is_some() {
            // The old sequence continued: the parked packet was a stray.
            self.stats.stray += 1;
        }
        self.accept(pkt, now_us, out);
    }

    /// Resets onto a new sequence starting at the lower of the two packets.
    fn restart(&mut self, a: RtpPacket, b: Option<RtpPacket>, now_us: u64, out: &mut Vec<Reordered>) {
        self.flush(out);
        out.push(Reordered::Reset);
        self.stats.resets += 1;
        let start = match &b {
            Some(b) if (b.seq.wrapping_sub(a.seq) as i16) < 0 => b.seq,
            _ => a.seq,
        };
        self.start(start, a.ssrc);
        self.accept(a, now_us, out);
        if let Some(b) = b {
            self.accept(b, now_us, out);
        }
    }

    fn start(&mut self, seq: u16, ssrc: u32) {
        self.started = true;
        self.ssrc = ssrc;
        self.expected = EXT_BASE + seq as u64;
        self.highest = self.expected;
        self.first = self.expected;
        self.lost_ranges = [(0, 0); LOST_HISTORY];
    }

    /// Places a packet of the current sequence: deliver, hold, or drop as duplicate/late.
    fn accept(&mut self, pkt: RtpPacket, now_us: u64, out: &mut Vec<Reordered>) {
        let diff = pkt.seq.wrapping_sub(self.expected as u16) as i16 as i64;
        let ext = self.expected as i64 + diff;
        let ext = ext as u64;
        if ext < self.expected {
            if ext < self.first || self.was_lost(ext) {
                self.stats.late += 1;
            } else {
                self.stats.duplicates += 1;
            }
            return;
        }
        if ext - self.expected >= self.cap {
            // Window exceeded ("buffer full"): give up on the oldest gaps.
            self.release_below(ext + 1 - self.cap, out);
            self.drain(out);
        }
        if ext == self.expected {
            if ext < self.highest {
                self.stats.reordered += 1;
            }
            self.expected += 1;
            self.deliver(pkt, out);
            self.drain(out);
            return;
        }
        let slot = (ext % self.cap) as usize;
        if self.ring[slot].is_some() {
            self.stats.duplicates += 1;
            return;
        }
        let len = pkt.payload.len();
        if self.held > 0 && self.held_bytes.saturating_add(len) > self.max_bytes {
            // Byte budget exceeded: give up on the oldest gaps until it fits, then place the
            // packet afresh (it fits now, or nothing is held: one level of recursion).
            while self.held > 0 && self.held_bytes.saturating_add(len) > self.max_bytes {
                self.release_first_gap(out);
            }
            return self.accept(pkt, now_us, out);
        }
        self.held_bytes += len;
        if ext < self.highest {
            self.stats.reordered += 1;
        } else {
            self.highest = ext;
        }
        // A held payload may be a slice of a larger buffer (a TCP read): keep its own bytes only,
        // so `held_bytes` is what it costs.
        let mut pkt = pkt;
        pkt.payload = bytes::Bytes::copy_from_slice(&pkt.payload);
        self.ring[slot] = Some((pkt, now_us));
        self.oldest_arrival = if self.held == 0 { now_us } else { self.oldest_arrival.min(now_us) };
        self.held += 1;
    }

    /// Declares the gap in front of the first held packet lost and delivers the run after it.
    fn release_first_gap(&mut self, out: &mut Vec<Reordered>) {
        let mut ext = self.expected;
        while self.ring[(ext % self.cap) as usize].is_none() {
            ext += 1;
        }
        self.release_below(ext, out);
        self.drain(out);
    }

    /// Moves `expected` up to `target`, delivering held packets and declaring the rest lost.
    fn release_below(&mut self, target: u64, out: &mut Vec<Reordered>) {
        let mut lost = 0;
        while self.expected < target {
            if self.held == 0 {
                lost += target - self.expected;
                self.expected = target;
                break;
            }
            let slot = (self.expected % self.cap) as usize;
            match self.ring[slot].take() {
                Some((pkt, _)) => {
                    self.held -= 1;
                    self.held_bytes -= pkt.payload.len();
                    self.emit_lost(lost, out);
                    lost = 0;
                    self.expected += 1;
                    self.deliver(pkt, out);
                }
                None => {
                    lost += 1;
                    self.expected += 1;
                }
            }
        }
        self.emit_lost(lost, out);
        self.recompute_oldest();
    }

    /// Delivers the contiguous run of held packets starting at `expected`.
    fn drain(&mut self, out: &mut Vec<Reordered>) {
        let before = self.held;
        while self.held > 0 {
            let slot = (self.expected % self.cap) as usize;
            match self.ring[slot].take() {
                Some((pkt, _)) => {
                    self.held -= 1;
                    self.held_bytes -= pkt.payload.len();
                    self.expected += 1;
                    self.deliver(pkt, out);
                }
                None => break,
            }
        }
        if self.held != before {
            self.recompute_oldest();
        }
    }

    /// Off the hot path (only after a release); O(reorder depth).
    fn recompute_oldest(&mut self) {
        // Held packets lie in `expected + 1 ..= highest`: scan only that, stop once all are seen.
        let mut seen = 0;
        let mut oldest = u64::MAX;
        let mut ext = self.expected;
        while seen < self.held && ext <= self.highest {
            if let Some((_, t)) = &self.ring[(ext % self.cap) as usize] {
                seen += 1;
                oldest = oldest.min(*t);
            }
            ext += 1;
        }
        self.oldest_arrival = oldest;
    }

    /// Emits `Lost` for the `count` seqs just before `expected`, remembering the range.
    fn emit_lost(&mut self, count: u64, out: &mut Vec<Reordered>) {
        if count == 0 {
            return;
        }
        self.lost_ranges[self.lost_next] = (self.expected - count, self.expected);
        self.lost_next = (self.lost_next + 1) % LOST_HISTORY;
        self.stats.lost += count;
        out.push(Reordered::Lost { count });
    }

    fn was_lost(&self, ext: u64) -> bool {
        self.lost_ranges.iter().any(|&(s, e)| (s..e).contains(&ext))
    }

    #[inline]
    fn deliver(&mut self, pkt: RtpPacket, out: &mut Vec<Reordered>) {
        self.stats.packets += 1;
        self.stats.bytes += pkt.payload.len() as u64;
        out.push(Reordered::Packet(pkt));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const SSRC: u32 = 0x05F5_E108;

    fn pkt_ssrc(seq: u16, ssrc: u32) -> RtpPacket {
        RtpPacket {
            ssrc,
            seq,
            timestamp: seq as u32 * 90,
            marker: false,
            payload_type: 96,
            payload: Bytes::copy_from_slice(&seq.to_be_bytes()),
        }
    }

    fn pkt(seq: u16) -> RtpPacket {
        pkt_ssrc(seq, SSRC)
    }

    /// Compact rendering of the output: `P<seq>`, `L<count>`, `R`.
    fn show(out: &[Reordered]) -> Vec<String> {
        out.iter()
            .map(|r| match r {
                Reordered::Packet(p) => format!("P{}", p.seq),
                Reordered::Lost { count } => format!("L{count}"),
                Reordered::Reset => "R".to_string(),
            })
            .collect()
    }

    fn feed(rb: &mut ReorderBuffer, seqs: &[u16]) -> Vec<String> {
        let mut out = Vec::new();
        for &s in seqs {
            rb.push(pkt(s), 0, &mut out);
        }
        show(&out)
    }

    fn ps(seqs: &[u16]) -> Vec<String> {
        seqs.iter().map(|s| format!("P{s}")).collect()
    }

    #[test]
    fn held_payload_is_bounded_in_bytes_not_just_packets() {
        // Packets of 2 bytes, at most 6 bytes held: the fourth held packet gives up the gap.
        let mut rb = ReorderBuffer::new(64, 100_000).with_max_bytes(6);
        assert_eq!(feed(&mut rb, &[10]), ps(&[10]));
        assert_eq!(feed(&mut rb, &[12, 13, 14]), Vec::<String>::new());
        assert_eq!(rb.held_bytes(), 6);
        assert_eq!(feed(&mut rb, &[16]), ["L1", "P12", "P13", "P14"]);
        assert_eq!(rb.held_bytes(), 2);
        assert_eq!(feed(&mut rb, &[15]), ps(&[15, 16]));
        assert_eq!(rb.held_bytes(), 0);
        assert_eq!(rb.stats().lost, 1);
    }

    #[test]
    fn in_order_passes_straight_through() {
        let mut rb = ReorderBuffer::new(64, 100_000);
        let seqs: Vec<u16> = (100..200).collect();
        let mut out = Vec::new();
        for &s in &seqs {
            out.clear();
            rb.push(pkt(s), 0, &mut out);
            // Released immediately, nothing held.
            assert_eq!(show(&out), ps(&[s]));
            assert_eq!(rb.held(), 0);
            assert_eq!(rb.poll_timeout(), None);
        }
        let st = rb.stats();
        assert_eq!((st.packets, st.bytes), (100, 200));
        assert_eq!((st.lost, st.duplicates, st.reordered, st.late, st.resets), (0, 0, 0, 0, 0));
    }

    #[test]
    fn wraps_at_65535_without_loss() {
        let mut rb = ReorderBuffer::new(16, 100_000);
        let seqs: Vec<u16> = (0..40u16).map(|i| 65520u16.wrapping_add(i)).collect();
        assert_eq!(feed(&mut rb, &seqs), ps(&seqs));
        // Reordering across the wrap too.
        let mut rb = ReorderBuffer::new(16, 100_000);
        assert_eq!(feed(&mut rb, &[65534, 0, 65535, 1]), ps(&[65534, 65535, 0, 1]));
        assert_eq!(rb.stats().reordered, 1);
        assert_eq!(rb.stats().lost, 0);
    }

    #[test]
    fn reorders_and_counts() {
        let mut rb = ReorderBuffer::new(64, 100_000);
        assert_eq!(feed(&mut rb, &[0, 1, 3, 4, 2, 5]), ps(&[0, 1, 2, 3, 4, 5]));
        assert_eq!(rb.stats().reordered, 1);
        assert_eq!(rb.held(), 0);
    }

    #[test]
    fn duplicates_of_delivered_and_held_are_dropped() {
        let mut rb = ReorderBuffer::new(64, 100_000);
        assert_eq!(feed(&mut rb, &[0, 1, 1, 3, 3, 2, 0]), ps(&[0, 1, 2, 3]));
        assert_eq!(rb.stats().duplicates, 3);
        assert_eq!(rb.stats().reordered, 1);
    }

    #[test]
    fn window_overflow_declares_loss_then_late() {
        let mut rb = ReorderBuffer::new(4, u64::MAX);
        // 1 missing: 2,3,4 held, 5 no longer fits the 4-slot window.
        assert_eq!(feed(&mut rb, &[0, 2, 3, 4]), ps(&[0]));
        assert_eq!(rb.held(), 3);
        assert_eq!(feed(&mut rb, &[5]), vec!["L1", "P2", "P3", "P4", "P5"]);
        assert_eq!(feed(&mut rb, &[1]), Vec::<String>::new());
        let st = rb.stats();
        assert_eq!((st.lost, st.late, st.duplicates), (1, 1, 0));
        // A jump bigger than the window but below MAX_DROPOUT is plain loss, up to the window
        // (the last slots before 106 may still be filled).
        assert_eq!(feed(&mut rb, &[106]), vec!["L97"]);
        assert_eq!(feed(&mut rb, &[104]), Vec::<String>::new());
        let mut out = Vec::new();
        rb.flush(&mut out);
        assert_eq!(show(&out), vec!["L1", "P104", "L1", "P106"]);
        assert_eq!(rb.stats().lost, 100);
        assert_eq!(feed(&mut rb, &[50]), Vec::<String>::new());
        assert_eq!(rb.stats().late, 2);
    }

    #[test]
    fn timeout_releases_held_packets() {
        let mut rb = ReorderBuffer::new(64, 1000);
        let mut out = Vec::new();
        rb.push(pkt(0), 0, &mut out);
        rb.push(pkt(2), 100, &mut out);
        rb.push(pkt(4), 500, &mut out);
        assert_eq!(show(&out), ps(&[0]));
        assert_eq!(rb.poll_timeout(), Some(1100));
        out.clear();
        rb.handle_timeout(1099, &mut out);
        assert!(out.is_empty());
        rb.handle_timeout(1100, &mut out);
        assert_eq!(show(&out), vec!["L1", "P2"]);
        // Deadline now follows the remaining held packet.
        assert_eq!(rb.poll_timeout(), Some(1500));
        out.clear();
        // A push after the deadline releases first, then handles the new packet.
        rb.push(pkt(5), 2000, &mut out);
        assert_eq!(show(&out), vec!["L1", "P4", "P5"]);
        assert_eq!(rb.poll_timeout(), None);
        // Late arrival of a packet declared lost.
        out.clear();
        rb.push(pkt(3), 2100, &mut out);
        assert!(out.is_empty());
        assert_eq!((rb.stats().lost, rb.stats().late), (2, 1));
    }

    #[test]
    fn flush_releases_everything() {
        let mut rb = ReorderBuffer::new(64, u64::MAX);
        assert_eq!(feed(&mut rb, &[0, 2, 5, 6]), ps(&[0]));
        let mut out = Vec::new();
        rb.flush(&mut out);
        assert_eq!(show(&out), vec!["L1", "P2", "L2", "P5", "P6"]);
        assert_eq!(rb.stats().lost, 3);
        assert_eq!(rb.held(), 0);
    }

    #[test]
    fn restart_needs_two_packets() {
        let mut rb = ReorderBuffer::new(64, 100_000);
        feed(&mut rb, &(0..10).collect::<Vec<_>>());
        assert_eq!(feed(&mut rb, &[40000]), Vec::<String>::new());
        assert_eq!(feed(&mut rb, &[40001, 40002]), vec!["R", "P40000", "P40001", "P40002"]);
        let st = rb.stats();
        assert_eq!((st.resets, st.lost, st.stray, st.packets), (1, 0, 0, 13));
        // Backward restart, second packet reordered: starts at the lower seq.
        assert_eq!(feed(&mut rb, &[7, 6, 8]), vec!["R", "P6", "P7", "P8"]);
        assert_eq!(rb.stats().resets, 2);
        assert_eq!(rb.stats().reordered, 1);
    }

    #[test]
    fn stray_packet_does_not_reset() {
        let mut rb = ReorderBuffer::new(64, 100_000);
        feed(&mut rb, &(0..10).collect::<Vec<_>>());
        assert_eq!(feed(&mut rb, &[40000, 10, 11]), ps(&[10, 11]));
        // Two unrelated strays in a row do not confirm each other either.
        assert_eq!(feed(&mut rb, &[50000, 20000, 12]), ps(&[12]));
        let st = rb.stats();
        assert_eq!((st.resets, st.stray, st.lost), (0, 3, 0));
        // Strays from another SSRC with a continuing seq do not reset either.
        let mut out = Vec::new();
        rb.push(pkt_ssrc(13, 7), 0, &mut out);
        rb.push(pkt(13), 0, &mut out);
        assert_eq!(show(&out), ps(&[13]));
        assert_eq!(rb.stats().stray, 4);
    }

    #[test]
    fn held_packets_are_flushed_before_reset() {
        let mut rb = ReorderBuffer::new(64, 100_000);
        assert_eq!(feed(&mut rb, &[0, 2, 3]), ps(&[0]));
        assert_eq!(feed(&mut rb, &[30000, 30001]), vec!["L1", "P2", "P3", "R", "P30000", "P30001"]);
    }

    #[test]
    fn ssrc_change_resets_after_probation() {
        let mut rb = ReorderBuffer::new(64, 100_000);
        feed(&mut rb, &[0, 1, 2]);
        let mut out = Vec::new();
        rb.push(pkt_ssrc(3, 9), 0, &mut out);
        rb.push(pkt_ssrc(4, 9), 0, &mut out);
        rb.push(pkt_ssrc(5, 9), 0, &mut out);
        assert_eq!(show(&out), vec!["R", "P3", "P4", "P5"]);
    }

    #[test]
    fn long_silence_resets_immediately() {
        let mut rb = ReorderBuffer::new(64, 100_000);
        let mut out = Vec::new();
        rb.push(pkt(0), 0, &mut out);
        rb.push(pkt(1), 10, &mut out);
        rb.push(pkt(50000), 10 + SILENCE_RESET_US, &mut out);
        assert_eq!(show(&out), vec!["P0", "P1", "R", "P50000"]);
        // A short gap is still probation.
        rb.push(pkt(5), 20 + SILENCE_RESET_US, &mut out);
        assert_eq!(rb.stats().resets, 1);
    }

    #[test]
    fn capacity_one_never_holds() {
        let mut rb = ReorderBuffer::new(0, 100_000);
        assert_eq!(feed(&mut rb, &[0, 2, 1, 3]), vec!["P0", "L1", "P2", "P3"]);
        assert_eq!(rb.stats().late, 1);
    }
}
