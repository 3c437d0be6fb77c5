//! RTCP (RFC 3550 section 6), sans-IO: receiver statistics per source, receiver reports, and
//! parsing of what a sender sends back (SR, RR, SDES, BYE). Time comes in as `now_us`
//! (microseconds on any monotonic clock the caller keeps).
//!
//! ```text
//!  receiver report (PT=201), one report block          SDES (PT=202), one CNAME chunk
//! |V=2|P|  RC=1  |  PT=201  |    length = 7    |      |V=2|P| SC=1 | PT=202 |   length   |
//! |          SSRC of packet sender             |      |          SSRC of sender           |
//! |          SSRC of the reported source       |      | CNAME=1 | len | text ...| 0 | pad |
//! | fraction lost | cumulative lost (24, signed)|
//! |  extended highest sequence number received |
//! |  interarrival jitter (RTP timestamp units) |
//! |  last SR (LSR: middle 32 bits of NTP time) |
//! |  delay since last SR (DLSR, 1/65536 s)     |
//! ```
//!
//! The sender report builder lives with the other egress packetisers in
//! [`crate::codec::rtp_pack`] (the codec layer sits below this one); it is re-exported here.
pub use crate::codec::rtp_pack::{ntp_from_unix_micros, rtcp_bye, rtcp_sender_report};

pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
pub const PT_APP: u8 = 204;

/// RFC 3550 A.1: a jump forward by less than this is loss, not a restart.
pub const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1: a step back by less than this is a late or duplicate packet.
pub const MAX_MISORDER: u16 = 100;
/// RFC 3550 A.1: packets in sequence needed before a source is valid.
pub const MIN_SEQUENTIAL: u32 = 2;
const SEQ_MOD: u64 = 1 << 16;
/// Clock rates accepted for jitter (8 kHz audio .. 90 kHz video, with room either side).
const CLOCK_RATE_RANGE: (u32, u32) = (1000, 1_000_000);
/// Report blocks and SDES chunks kept from one peer packet (RC/SC is 5 bits anyway).
const MAX_ITEMS: usize = 31;
/// RFC 3550 6.1: compound packets we parse from a peer are at most one datagram.
pub const MAX_COMPOUND: usize = 65_535;

/// Whether a datagram looks like RTCP (version 2, PT 200..=204; RFC 5761 4).
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 4 && buf[0] >> 6 == 2 && (PT_SR..=PT_APP).contains(&buf[1])
}

/// Middle 32 bits of a 64-bit NTP timestamp: the LSR field of a report block (RFC 3550 6.4.1).
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// One report block (RFC 3550 6.4.1), 24 bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    /// Clamped to the signed 24-bit field: -8388608..=8388607.
    pub cumulative_lost: i32,
    pub highest_seq: u32,
    pub jitter: u32,
    pub lsr: u32,
    pub dlsr: u32,
}

const LOST_MIN: i64 = -0x80_0000;
const LOST_MAX: i64 = 0x7f_ffff;

impl ReportBlock {
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        let lost = (self.cumulative_lost as i64).clamp(LOST_MIN, LOST_MAX) as i32 as u32;
        out.push(self.fraction_lost);
        out.extend_from_slice(&lost.to_be_bytes()[1..]);
        out.extend_from_slice(&self.highest_seq.to_be_bytes());
        out.extend_from_slice(&self.jitter.to_be_bytes());
        out.extend_from_slice(&self.lsr.to_be_bytes());
        out.extend_from_slice(&self.dlsr.to_be_bytes());
    }

    fn parse(b: &[u8]) -> ReportBlock {
        let lost = u32::from_be_bytes([0, b[5], b[6], b[7]]);
        // Sign-extend the 24-bit field.
        let lost = ((lost << 8) as i32) >> 8;
        ReportBlock {
            ssrc: be32(&b[0..4]),
            fraction_lost: b[4],
            cumulative_lost: lost,
            highest_seq: be32(&b[8..12]),
            jitter: be32(&b[12..16]),
            lsr: be32(&b[16..20]),
            dlsr: be32(&b[20..24]),
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Appends a receiver report (RFC 3550 6.4.2) from `sender_ssrc` with the given blocks (at most
/// 31 are written: RC is 5 bits).
pub fn write_receiver_report(sender_ssrc: u32, blocks: &[ReportBlock], out: &mut Vec<u8>) {
    let blocks = &blocks[..blocks.len().min(MAX_ITEMS)];
    let words = 1 + 6 * blocks.len();
    out.push(0x80 | blocks.len() as u8);
    out.push(PT_RR);
    out.extend_from_slice(&(words as u16).to_be_bytes());
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    for b in blocks {
        b.write(out);
    }
}

/// Appends an SDES packet with one chunk carrying a CNAME item (RFC 3550 6.5.1); the text is cut
/// to 255 bytes. The chunk ends with a null item and is padded to a 32-bit boundary.
pub fn write_sdes_cname(ssrc: u32, cname: &str, out: &mut Vec<u8>) {
    let text = &cname.as_bytes()[..cname.len().min(255)];
    // ssrc + type + len + text + at least one null octet, rounded up to 4.
    let chunk = (4 + 2 + text.len() + 1).div_ceil(4) * 4;
    out.push(0x81);
    out.push(PT_SDES);
    out.extend_from_slice(&((chunk / 4) as u16).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.push(1);
    out.push(text.len() as u8);
    out.extend_from_slice(text);
    out.resize(start + chunk, 0);
}

/// A compound packet as RFC 3550 6.1 requires it: an RR (with `block` if any source was heard)
/// followed by an SDES CNAME when `cname` is given.
pub fn receiver_report(sender_ssrc: u32, block: Option<&ReportBlock>, cname: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + 12 + cname.map_or(0, str::len));
    write_receiver_report(sender_ssrc, block.map(std::slice::from_ref).unwrap_or(&[]), &mut out);
    if let Some(c) = cname {
        write_sdes_cname(sender_ssrc, c, &mut out);
    }
    out
}

/// A parsed sender report (RFC 3550 6.4.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SenderReport {
    pub ssrc: u32,
    pub ntp: u64,
    pub rtp_ts: u32,
    pub packets: u32,
    pub octets: u32,
    pub blocks: Vec<ReportBlock>,
}

/// One packet of a compound RTCP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    SenderReport(SenderReport),
    ReceiverReport {
        ssrc: u32,
        blocks: Vec<ReportBlock>,
    },
    /// `(ssrc, CNAME)` of each chunk that carries one (lossy UTF-8).
    Sdes(Vec<(u32, String)>),
    Bye {
        ssrcs: Vec<u32>,
    },
    Other {
        pt: u8,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("RTCP packet header truncated ({0} bytes left)")]
    Truncated(usize),
    #[error("RTCP version {0}, expected 2")]
    BadVersion(u8),
    #[error("RTCP packet type {pt} claims {claimed} bytes, {left} left")]
    BadLength { pt: u8, claimed: usize, left: usize },
    #[error("RTCP packet type {pt} of {len} bytes is too short for its {count} items")]
    TooShort { pt: u8, len: usize, count: usize },
}

/// Iterates over the packets of a compound RTCP packet; stops after the first error.
pub fn packets(buf: &[u8]) -> Packets<'_> {
    Packets { buf: &buf[..buf.len().min(MAX_COMPOUND)], failed: false }
}

pub struct Packets<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl Iterator for Packets<'_> {
    type Item = Result<RtcpPacket, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        let r = self.parse_one();
        self.failed = r.is_err();
        Some(r)
    }
}

impl Packets<'_> {
    fn parse_one(&mut self) -> Result<RtcpPacket, RtcpError> {
        let buf = self.buf;
        if buf.len() < 4 {
            return Err(RtcpError::Truncated(buf.len()));
        }
        if buf[0] >> 6 != 2 {
            return Err(RtcpError::BadVersion(buf[0] >> 6));
        }
        let count = (buf[0] & 0x1f) as usize;
        let pt = buf[1];
        let len = (u16::from_be_bytes([buf[2], buf[3]]) as usize + 1) * 4;
        if len > buf.len() {
            return Err(RtcpError::BadLength { pt, claimed: len, left: buf.len() });
        }
        let mut body = &buf[4..len];
        self.buf = &buf[len..];
        // RFC 3550 6.4.1: padding (P bit) counts in the length; its size is the last octet.
        if buf[0] & 0x20 != 0 {
            let pad = *body.last().unwrap_or(&0) as usize;
            body = &body[..body.len().saturating_sub(pad)];
        }
        let short = || RtcpError::TooShort { pt, len, count };
        Ok(match pt {
            PT_SR => {
                if body.len() < 24 + 24 * count {
                    return Err(short());
                }
                let blocks = body[24..].chunks_exact(24).take(count).map(ReportBlock::parse).collect();
                RtcpPacket::SenderReport(SenderReport {
                    ssrc: be32(&body[0..4]),
                    ntp: (be32(&body[4..8]) as u64) << 32 | be32(&body[8..12]) as u64,
                    rtp_ts: be32(&body[12..16]),
                    packets: be32(&body[16..20]),
                    octets: be32(&body[20..24]),
                    blocks,
                })
            }
            PT_RR => {
                if body.len() < 4 + 24 * count {
                    return Err(short());
                }
                let blocks = body[4..].chunks_exact(24).take(count).map(ReportBlock::parse).collect();
                RtcpPacket::ReceiverReport { ssrc: be32(&body[0..4]), blocks }
            }
            PT_SDES => RtcpPacket::Sdes(parse_sdes(body, count)),
            PT_BYE => {
                if body.len() < 4 * count {
                    return Err(short());
                }
                RtcpPacket::Bye { ssrcs: body.chunks_exact(4).take(count).map(be32).collect() }
            }
            _ => RtcpPacket::Other { pt },
        })
    }
}

/// CNAMEs of the SDES chunks; a malformed chunk ends the walk (the rest is unreadable).
fn parse_sdes(mut body: &[u8], count: usize) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for _ in 0..count.min(MAX_ITEMS) {
        if body.len() < 4 {
            break;
        }
        let ssrc = be32(body);
        let mut i = 4;
        loop {
            match body.get(i) {
                None => return out,
                Some(0) => break,
                Some(&kind) => {
                    let Some(&n) = body.get(i + 1) else { return out };
                    let Some(text) = body.get(i + 2..i + 2 + n as usize) else { return out };
                    if kind == 1 {
                        out.push((ssrc, String::from_utf8_lossy(text).into_owned()));
                    }
                    i += 2 + n as usize;
                }
            }
        }
        // Skip the null item and the padding up to the next 32-bit boundary.
        let next = (i + 1).div_ceil(4) * 4;
        body = body.get(next..).unwrap_or(&[]);
    }
    out
}

/// Receiver statistics for one source: RFC 3550 A.1 (sequence validation, extended sequence
/// number), A.3 (expected, lost, fraction lost) and A.8 (interarrival jitter), plus the LSR/DLSR
/// of the source's last sender report. Every counter is clamped or wraps as the RFC's fields do;
/// no peer value can panic it.
#[derive(Debug, Clone)]
pub struct ReceiverStats {
    ssrc: u32,
    clock_rate: u32,
    max_seq: u16,
    /// Wraps of the sequence number, shifted (A.1 `cycles`), widened so it never overflows.
    cycles: u64,
    base_seq: u64,
    bad_seq: u64,
    probation: u32,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Relative transit time of the previous packet (A.8), in RTP units.
    transit: Option<u32>,
    /// Jitter scaled by 16 (A.8 keeps it that way to avoid rounding).
    jitter: u64,
    lsr: u32,
    lsr_at_us: Option<u64>,
}

impl ReceiverStats {
    /// Statistics for `ssrc`, whose first packet is `seq`; `clock_rate` (Hz) converts arrival
    /// times to RTP units for the jitter and is clamped to 1 kHz..1 MHz.
    pub fn new(ssrc: u32, seq: u16, clock_rate: u32) -> Self {
        let mut s = ReceiverStats {
            ssrc,
            clock_rate: clock_rate.clamp(CLOCK_RATE_RANGE.0, CLOCK_RATE_RANGE.1),
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: 0,
            probation: MIN_SEQUENTIAL,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            transit: None,
            jitter: 0,
            lsr: 0,
            lsr_at_us: None,
        };
        s.init_seq(seq);
        // A.1: the source is on probation until MIN_SEQUENTIAL packets came in sequence.
        s.max_seq = seq.wrapping_sub(1);
        s.probation = MIN_SEQUENTIAL;
        s
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = seq as u64;
        self.max_seq = seq;
        self.bad_seq = SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
        self.transit = None;
    }

    /// RFC 3550 A.1 `update_seq`: returns whether the packet counts (the source is valid and
    /// the sequence number is plausible).
    pub fn update_seq(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        } else if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += SEQ_MOD;
            }
            self.max_seq = seq;
        } else if udelta as u64 <= SEQ_MOD - MAX_MISORDER as u64 {
            // A very large jump: restart only when the next packet continues it (the peer
            // restarted), otherwise drop this one.
            if seq as u64 == self.bad_seq {
                self.init_seq(seq);
            } else {
                self.bad_seq = (seq as u64 + 1) & (SEQ_MOD - 1);
                return false;
            }
        }
        // else: duplicate or reordered packet, counted as received (A.3 lets `lost` go negative).
        self.received += 1;
        true
    }

    /// One RTP packet of this source arrived at `arrival_us`. Returns whether it counted.
    pub fn on_rtp(&mut self, seq: u16, rtp_ts: u32, arrival_us: u64) -> bool {
        if !self.update_seq(seq) {
            return false;
        }
        // A.8: arrival in RTP units (wrapping like the timestamp), transit, its variation.
        // Split in seconds and the rest: no overflow, no 128-bit division per packet.
        let rate = self.clock_rate as u64;
        let ticks = (arrival_us / 1_000_000).wrapping_mul(rate) + (arrival_us % 1_000_000) * rate / 1_000_000;
        let arrival = ticks as u32;
        let transit = arrival.wrapping_sub(rtp_ts);
        if let Some(prev) = self.transit {
            let d = (transit.wrapping_sub(prev) as i32).unsigned_abs() as u64;
            // J += (|D| - J) / 16, with J kept scaled by 16; bounded so it cannot overflow.
            self.jitter = (self.jitter + d).saturating_sub((self.jitter + 8) >> 4).min(u32::MAX as u64 * 16);
        }
        self.transit = Some(transit);
        true
    }

    /// A sender report of this source arrived at `arrival_us` (for LSR/DLSR, RFC 3550 6.4.1).
    pub fn on_sender_report(&mut self, sr: &SenderReport, arrival_us: u64) {
        self.lsr = ntp_middle(sr.ntp);
        self.lsr_at_us = Some(arrival_us);
    }

    /// Extended highest sequence number received (A.1), as the 32-bit field carries it.
    pub fn extended_max(&self) -> u32 {
        (self.cycles + self.max_seq as u64) as u32
    }

    /// Packets expected (A.3): extended max - base + 1, never negative.
    pub fn expected(&self) -> u64 {
        if self.received == 0 && self.probation > 0 {
            return 0;
        }
        (self.cycles + self.max_seq as u64 + 1).saturating_sub(self.base_seq)
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Cumulative packets lost (A.3), clamped to the 24-bit signed field.
    pub fn cumulative_lost(&self) -> i32 {
        (self.expected() as i64 - self.received as i64).clamp(LOST_MIN, LOST_MAX) as i32
    }

    /// Interarrival jitter in RTP timestamp units (A.8).
    pub fn jitter(&self) -> u32 {
        (self.jitter >> 4) as u32
    }

    /// Builds the report block for this source at `now_us` and starts a new reporting interval
    /// (the fraction lost covers the packets since the previous call, A.3).
    pub fn report_block(&mut self, now_us: u64) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval == 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval).min(255) as u8
        };
        // DLSR in units of 1/65536 s; 0 when no SR was received (6.4.1).
        let dlsr = match self.lsr_at_us {
            Some(at) => (now_us.saturating_sub(at) as u128 * 65536 / 1_000_000).min(u32::MAX as u128) as u32,
            None => 0,
        };
        ReportBlock {
            ssrc: self.ssrc,
            fraction_lost,
            cumulative_lost: self.cumulative_lost(),
            highest_seq: self.extended_max(),
            jitter: self.jitter(),
            lsr: self.lsr,
            dlsr,
        }
    }
}

/// Default receiver report interval: RFC 3550 6.2 gives 5 s as the minimum for small sessions.
pub const REPORT_INTERVAL_US: u64 = 5_000_000;

/// Counters of a [`Receiver`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RtcpCounters {
    pub rr_sent: u64,
    pub sr_received: u64,
    pub rtcp_received: u64,
    pub rtcp_errors: u64,
}

/// The receiving side of one RTP session: statistics of the (single) media source, SRs from it,
/// and when to send the next receiver report. The driver feeds RTP and RTCP in, and sends what
/// [`Receiver::poll_report`] returns.
#[derive(Debug, Clone)]
pub struct Receiver {
    own_ssrc: u32,
    cname: String,
    clock_rate: u32,
    interval_us: u64,
    next_at: Option<u64>,
    source: Option<ReceiverStats>,
    counters: RtcpCounters,
}

impl Receiver {
    /// `own_ssrc` identifies us in the reports, `cname` goes in the SDES item, `interval_us`
    /// is clamped to 1..=60 s.
    pub fn new(own_ssrc: u32, cname: &str, clock_rate: u32, interval_us: u64) -> Self {
        Receiver {
            own_ssrc,
            cname: cname.chars().take(255).collect(),
            clock_rate,
            interval_us: interval_us.clamp(1_000_000, 60_000_000),
            next_at: None,
            source: None,
            counters: RtcpCounters::default(),
        }
    }

    /// An RTP packet arrived. A new SSRC replaces the tracked source (a camera restart).
    pub fn on_rtp(&mut self, ssrc: u32, seq: u16, rtp_ts: u32, now_us: u64) {
        match &mut self.source {
            Some(s) if s.ssrc == ssrc => {
                s.on_rtp(seq, rtp_ts, now_us);
            }
            _ => {
                let mut s = ReceiverStats::new(ssrc, seq, self.clock_rate);
                s.on_rtp(seq, rtp_ts, now_us);
                self.source = Some(s);
            }
        }
        if self.next_at.is_none() {
            // First report after half an interval (6.2 suggests a shorter first interval).
            self.next_at = Some(now_us + self.interval_us / 2);
        }
    }

    /// An RTCP datagram (or RFC 4571 frame) arrived from the sender. Returns the number of
    /// sender reports it held.
    pub fn on_rtcp(&mut self, buf: &[u8], now_us: u64) -> usize {
        self.counters.rtcp_received += 1;
        let mut srs = 0;
        for p in packets(buf) {
            match p {
                Ok(RtcpPacket::SenderReport(sr)) => {
                    srs += 1;
                    self.counters.sr_received += 1;
                    if let Some(s) = self.source.as_mut().filter(|s| s.ssrc == sr.ssrc) {
                        s.on_sender_report(&sr, now_us);
                    }
                }
                Ok(_) => {}
                Err(_) => self.counters.rtcp_errors += 1,
            }
        }
        srs
    }

    /// When the next report is due, if a source was heard.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.next_at
    }

    /// The compound RR + SDES packet to send now, if one is due.
    pub fn poll_report(&mut self, now_us: u64) -> Option<Vec<u8>> {
        let due = self.next_at?;
        if now_us < due {
            return None;
        }
        self.next_at = Some(now_us + self.interval_us);
        let block = self.source.as_mut().map(|s| s.report_block(now_us));
        self.counters.rr_sent += 1;
        Some(receiver_report(self.own_ssrc, block.as_ref(), Some(&self.cname)))
    }

    /// Skips the report due now (nowhere to send it yet): the timer moves on, nothing is counted.
    pub fn skip_report(&mut self, now_us: u64) {
        if self.next_at.is_some_and(|due| now_us >= due) {
            self.next_at = Some(now_us + self.interval_us);
        }
    }

    pub fn source(&self) -> Option<&ReceiverStats> {
        self.source.as_ref()
    }

    pub fn counters(&self) -> RtcpCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rr_with_block_and_cname_bytes() {
        let block = ReportBlock {
            ssrc: 0x0a0b0c0d,
            fraction_lost: 64,
            cumulative_lost: -2,
            highest_seq: 0x0001_0005,
            jitter: 0x123,
            lsr: 0x8899aabb,
            dlsr: 0x0001_8000,
        };
        let p = receiver_report(0x11223344, Some(&block), Some("gb"));
        #[rustfmt::skip]
        let want = [
            0x81, 201, 0, 7, 0x11, 0x22, 0x33, 0x44,
            0x0a, 0x0b, 0x0c, 0x0d, 64, 0xff, 0xff, 0xfe,
            0, 1, 0, 5, 0, 0, 1, 0x23,
            0x88, 0x99, 0xaa, 0xbb, 0, 1, 0x80, 0,
            // SDES: ssrc + CNAME(1) len 2 "gb" + null + pad = 12 bytes, length 3
            0x81, 202, 0, 3, 0x11, 0x22, 0x33, 0x44,
            1, 2, b'g', b'b', 0, 0, 0, 0,
        ];
        assert_eq!(p, want);
        let parsed: Vec<_> = packets(&p).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            parsed,
            vec![
                RtcpPacket::ReceiverReport { ssrc: 0x11223344, blocks: vec![block] },
                RtcpPacket::Sdes(vec![(0x11223344, "gb".into())]),
            ]
        );
    }

    #[test]
    fn empty_rr_and_cname_padding() {
        assert_eq!(receiver_report(1, None, None), [0x80, 201, 0, 1, 0, 0, 0, 1]);
        // "abc": 4 + 2 + 3 = 9, + null = 10 -> 12; "ab" + null fits 12 exactly too.
        let mut out = Vec::new();
        write_sdes_cname(1, "abcde", &mut out);
        // 4 + 2 + 5 = 11, + null = 12: one null octet, no more.
        assert_eq!(out, [0x81, 202, 0, 3, 0, 0, 0, 1, 1, 5, b'a', b'b', b'c', b'd', b'e', 0]);
        out.clear();
        write_sdes_cname(1, "abcdef", &mut out);
        // 4 + 2 + 6 = 12 needs a null: a whole extra word.
        assert_eq!(out.len(), 20);
        assert_eq!(&out[2..4], &[0, 4]);
        assert_eq!(&out[16..], &[0, 0, 0, 0]);
        let long = "x".repeat(400);
        out.clear();
        write_sdes_cname(1, &long, &mut out);
        assert_eq!(out[9], 255);
        assert_eq!(packets(&out).next().unwrap().unwrap(), RtcpPacket::Sdes(vec![(1, "x".repeat(255))]));
    }

    #[test]
    fn sender_report_parse_gives_lsr() {
        // The egress builder's bytes parse back; LSR is the middle 32 bits of the NTP time.
        let ntp = ntp_from_unix_micros(1_500_000);
        let mut sr = rtcp_sender_report(0x01020304, ntp, 90000, 10, 1000).to_vec();
        sr.extend_from_slice(&rtcp_bye(0x01020304));
        let parsed: Vec<_> = packets(&sr).collect::<Result<_, _>>().unwrap();
        let RtcpPacket::SenderReport(s) = &parsed[0] else { panic!("{parsed:?}") };
        assert_eq!((s.ssrc, s.ntp, s.rtp_ts, s.packets, s.octets), (0x01020304, ntp, 90000, 10, 1000));
        assert_eq!(parsed[1], RtcpPacket::Bye { ssrcs: vec![0x01020304] });
        // 2_208_988_801 s = 0x83AA7E81, fraction 0x80000000: middle = 0x7E81_8000.
        assert_eq!(ntp_middle(s.ntp), 0x7e81_8000);
        let mut st = ReceiverStats::new(0x01020304, 0, 90000);
        st.on_sender_report(s, 10_000_000);
        // 1.5 s later: DLSR = 1.5 * 65536 = 98304.
        let b = st.report_block(11_500_000);
        assert_eq!((b.lsr, b.dlsr), (0x7e81_8000, 98304));
    }

    #[test]
    fn hostile_packets_are_errors_not_panics() {
        assert_eq!(packets(&[0x80, 200]).next(), Some(Err(RtcpError::Truncated(2))));
        assert_eq!(packets(&[0x40, 200, 0, 0]).next(), Some(Err(RtcpError::BadVersion(1))));
        let e = packets(&[0x80, 201, 0, 9, 0, 0, 0, 0]).next().unwrap();
        assert!(matches!(e, Err(RtcpError::BadLength { pt: 201, claimed: 40, left: 8 })));
        // RC=3 blocks claimed in an 8-byte RR.
        let e = packets(&[0x83, 201, 0, 1, 0, 0, 0, 0]).next().unwrap();
        assert!(matches!(e, Err(RtcpError::TooShort { pt: 201, .. })));
        // Padding octet larger than the body; SDES with a runaway item length.
        assert!(packets(&[0xa0, 201, 0, 1, 0, 0, 0, 0xff]).next().unwrap().is_err());
        assert_eq!(packets(&[0x81, 202, 0, 2, 0, 0, 0, 1, 1, 200, b'a', 0]).next(), Some(Ok(RtcpPacket::Sdes(vec![]))));
        // Iteration stops after the first error.
        assert_eq!(packets(&[0x80, 201, 0, 9, 0x80, 201, 0, 1, 0, 0, 0, 0]).count(), 1);
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 0x81) as u8).collect();
            let _ = packets(&junk).count();
        }
        assert!(is_rtcp(&[0x80, 200, 0, 6]) && !is_rtcp(&[0x80, 96, 0, 6]) && !is_rtcp(&[0x80]));
    }

    #[test]
    fn a1_probation_wrap_and_a3_loss() {
        let mut s = ReceiverStats::new(7, 65530, 90000);
        // First packet: on probation, not counted; the second validates the source.
        assert!(!s.on_rtp(65530, 0, 0));
        assert!(s.on_rtp(65531, 0, 0));
        assert_eq!((s.expected(), s.received()), (1, 1));
        // Through the wrap, skipping 65534 and 1 (two lost).
        for seq in [65532u16, 65533, 65535, 0, 2, 3] {
            assert!(s.on_rtp(seq, 0, 0));
        }
        // base 65531, extended max 65536 + 3 = 65539: expected 9, received 7.
        assert_eq!(s.extended_max(), 0x0001_0003);
        assert_eq!(s.expected(), 9);
        assert_eq!(s.cumulative_lost(), 2);
        let b = s.report_block(0);
        // fraction = (2 << 8) / 9 = 56.
        assert_eq!((b.fraction_lost, b.cumulative_lost, b.highest_seq), (56, 2, 0x0001_0003));
        // No new loss in the next interval; a duplicate makes lost negative, fraction stays 0.
        assert!(s.on_rtp(4, 0, 0));
        assert!(s.on_rtp(4, 0, 0));
        let b = s.report_block(0);
        assert_eq!((b.fraction_lost, b.cumulative_lost), (0, 1));
    }

    #[test]
    fn a1_big_jump_needs_two_packets() {
        let mut s = ReceiverStats::new(7, 100, 90000);
        assert!(!s.on_rtp(100, 0, 0));
        assert!(s.on_rtp(101, 0, 0));
        // A jump of 30000: dropped once, accepted when the next one continues it.
        assert!(!s.on_rtp(30101, 0, 0));
        assert!(s.on_rtp(30102, 0, 0));
        assert_eq!((s.expected(), s.received(), s.cumulative_lost()), (1, 1, 0));
        // A late packet inside MAX_MISORDER counts as received.
        assert!(s.on_rtp(30050, 0, 0));
    }

    #[test]
    fn a8_jitter() {
        // 90 kHz; packets 1 frame (3600 ticks at 25 fps = 40 ms) apart.
        let mut s = ReceiverStats::new(1, 0, 90000);
        s.on_rtp(0, 0, 0);
        s.on_rtp(1, 3600, 40_000);
        assert_eq!(s.jitter(), 0);
        // 10 ms late (900 ticks): J = 900/16 = 56.25 -> scaled 900, reported 56.
        s.on_rtp(2, 7200, 90_000);
        assert_eq!(s.jitter(), 56);
        // Back on time: D = 900 again; J = 900 + 900 - (900 + 8) >> 4 (=56) = 1744 -> 109.
        s.on_rtp(3, 10800, 120_000);
        assert_eq!(s.jitter(), 109);
        // A hostile timestamp jump is bounded (|D| <= 2^31), never overflows.
        for i in 4..1000u16 {
            s.on_rtp(i, if i % 2 == 0 { 0 } else { 0x8000_0000 }, 120_000);
        }
        assert!(s.jitter() <= 1 << 31);
    }

    #[test]
    fn receiver_schedules_reports_and_counts_srs() {
        let mut r = Receiver::new(0xabcd, "gbgate", 90000, 5_000_000);
        assert_eq!(r.poll_report(0), None, "nothing heard, nothing to report");
        r.on_rtp(9, 10, 0, 1_000_000);
        r.on_rtp(9, 11, 3600, 1_040_000);
        assert_eq!(r.poll_timeout(), Some(3_500_000));
        assert_eq!(r.poll_report(3_000_000), None);
        let sr = rtcp_sender_report(9, 0x1111_2222_3333_4444, 0, 1, 1);
        assert_eq!(r.on_rtcp(&sr, 3_000_000), 1);
        let rr = r.poll_report(3_500_000).unwrap();
        assert_eq!(&rr[..8], &[0x81, 201, 0, 7, 0, 0, 0xab, 0xcd]);
        let RtcpPacket::ReceiverReport { blocks, .. } = packets(&rr).next().unwrap().unwrap() else { panic!() };
        // LSR 0x2222_3333, DLSR 0.5 s = 32768.
        assert_eq!((blocks[0].ssrc, blocks[0].lsr, blocks[0].dlsr), (9, 0x2222_3333, 32768));
        assert_eq!(r.poll_timeout(), Some(8_500_000));
        r.skip_report(8_000_000);
        assert_eq!(r.poll_timeout(), Some(8_500_000), "not due yet");
        r.skip_report(8_500_000);
        assert_eq!(r.poll_timeout(), Some(13_500_000));
        assert_eq!(r.on_rtcp(&[1, 2, 3], 0), 0);
        let c = r.counters();
        assert_eq!((c.rr_sent, c.sr_received, c.rtcp_received, c.rtcp_errors), (1, 1, 2, 1));
    }
}
