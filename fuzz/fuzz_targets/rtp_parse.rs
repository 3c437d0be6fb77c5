//! RtpPacket::parse on the raw input, then a ReorderBuffer fed packets derived from it.
//!
//! Input layout: byte 0 = capacity, byte 1 = delay scale; then 5-byte records
//! `[seq_hi seq_lo ssrc_sel time_step flags]` describing a packet sequence, so the fuzzer can
//! explore wraps, jumps, duplicates, SSRC changes, timeouts and flushes.
#![no_main]

use bytes::Bytes;
use gbgate::proto::rtp::reorder::{ReorderBuffer, Reordered};
use gbgate::proto::rtp::RtpPacket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = RtpPacket::parse(Bytes::copy_from_slice(data)) {
        assert!(p.payload.len() + 12 <= data.len());
    }
    let _ = RtpPacket::peek_ssrc(data);

    if data.len() < 2 {
        return;
    }
    let capacity = data[0] as usize;
    let max_delay = data[1] as u64 * 1000;
    let mut rb = ReorderBuffer::new(capacity, max_delay);
    let mut out = Vec::new();
    let mut now = 0u64;
    let mut fed = 0u64;
    for rec in data[2..].chunks_exact(5) {
        let seq = u16::from_be_bytes([rec[0], rec[1]]);
        let ssrc = 0x05F5_E100 + (rec[2] % 3) as u32;
        now += rec[3] as u64 * 100;
        let pkt = RtpPacket {
            ssrc,
            seq,
            timestamp: seq as u32,
            marker: rec[4] & 1 != 0,
            payload_type: 96,
            payload: Bytes::copy_from_slice(&rec[..2]),
        };
        rb.push(pkt, now, &mut out);
        fed += 1;
        match rec[4] >> 6 {
            1 => {
                if let Some(t) = rb.poll_timeout() {
                    // push() already released what was due, so the deadline is not in the past.
                    assert!(t >= now);
                    rb.handle_timeout(t.max(now), &mut out);
                }
            }
            2 => rb.flush(&mut out),
            _ => {}
        }
        assert!(rb.held() <= capacity.max(1));
    }
    rb.flush(&mut out);
    assert_eq!(rb.held(), 0);
    assert_eq!(rb.poll_timeout(), None);

    // Accounting: every packet fed is delivered, held (none now), dropped or a stray.
    let st = rb.stats().clone();
    let delivered = out
        .iter()
        .filter(|r| matches!(r, Reordered::Packet(_)))
        .count() as u64;
    assert_eq!(delivered, st.packets);
    assert_eq!(fed, st.packets + st.duplicates + st.late + st.stray);
    let lost: u64 = out
        .iter()
        .map(|r| match r {
            Reordered::Lost { count } => *count,
            _ => 0,
        })
        .sum();
    assert_eq!(lost, st.lost);
    // Between resets, delivered seqs strictly increase (mod 2^16) with Lost covering the gaps.
    let mut next: Option<u16> = None;
    for r in &out {
        match r {
            Reordered::Packet(p) => {
                if let Some(n) = next {
                    assert_eq!(p.seq, n);
                }
                next = Some(p.seq.wrapping_add(1));
            }
            Reordered::Lost { count } => {
                if let Some(n) = next {
                    next = Some(n.wrapping_add(*count as u16));
                }
            }
            Reordered::Reset => next = None,
        }
    }
});
