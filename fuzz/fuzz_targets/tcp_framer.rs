//! TcpFramer fed the input in chunks split at input-derived points; every packet is drained after
//! each push, and the buffer must stay bounded.
//!
//! Input layout: byte 0 = number of cut bytes `k`; the next `k` bytes are chunk sizes; the rest
//! is the TCP byte stream.
#![no_main]

use gbgate::proto::rtp::tcp::{TcpFramer, MAX_BUFFERED};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = (k as usize % 16).min(rest.len());
    let (cuts, stream) = rest.split_at(k);
    let mut f = TcpFramer::new();
    let mut pos = 0;
    let mut i = 0;
    let mut total = 0usize;
    while pos < stream.len() {
        // Chunk sizes cycle through the cut bytes; 0 means "the rest of the input".
        let c = cuts.get(i % cuts.len().max(1)).copied().unwrap_or(0) as usize;
        let n = if c == 0 {
            stream.len() - pos
        } else {
            c.min(stream.len() - pos)
        };
        i += 1;
        f.push(&stream[pos..pos + n]);
        pos += n;
        while let Some(p) = f.next_packet() {
            assert!(p.len() >= 12);
            assert_eq!(p[0] >> 6, 2);
            total += p.len();
        }
        assert!(f.buffered() <= MAX_BUFFERED, "buffered {}", f.buffered());
    }
    f.finish();
    while let Some(p) = f.next_packet() {
        total += p.len();
    }
    assert_eq!(f.buffered(), 0);
    let st = f.stats();
    assert!(total as u64 + st.skipped_bytes <= stream.len() as u64);
});
