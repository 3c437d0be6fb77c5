//! PS demuxer: arbitrary bytes, split at input-derived points, with loss signals in between.
//! Invariants: no panic, frames well formed (AVCC lengths consistent), memory bounded.
#![no_main]
use gbgate::media::MediaKind;
use gbgate::proto::ps::demux::PsDemuxer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // The first byte picks the chunking; bit 7 asks for a loss signal between chunks.
    let step = 1 + (data[0] & 0x7f) as usize * 13;
    let with_loss = data[0] & 0x80 != 0;
    let mut demux = PsDemuxer::new();
    let mut out = Vec::new();
    for (i, chunk) in data[1..].chunks(step).enumerate() {
        if with_loss && i % 7 == 6 {
            demux.lost();
        }
        demux.push(chunk, &mut out);
        if i % 5 == 4 {
            demux.flush_idle(&mut out);
        }
    }
    demux.flush(&mut out);
    for frame in &out {
        if frame.kind() == MediaKind::Video {
            let total: usize = frame.nal_units().map(|n| n.len() + 4).sum();
            assert_eq!(total, frame.data.len(), "AVCC framing covers the whole frame");
        }
    }
});
