//! Ingest hot-path benchmarks: RTP parse, reorder, PS demux, and the whole per-stream pipeline.
//!
//! Run with `cargo bench --bench ingest` (about a minute). Inputs are the project fixtures
//! (`fixtures/*.ps`, `fixtures/*.rtp`, see `fixtures/README.md`). Targets (issue): PS demux
//! >= 1 GB/s per core, RTP -> frames >= 300,000 packets/s per core.
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gbgate::media::ingest::StreamIngest;
use gbgate::proto::ps::demux::PsDemuxer;
use gbgate::proto::rtp::reorder::{ReorderBuffer, Reordered};
use gbgate::proto::rtp::RtpPacket;

/// RTP payload size the fixtures (and GB28181 cameras) use.
const CHUNK: usize = 1400;
/// The server's defaults (`conf/gbgate.toml`: reorder_packets, reorder_delay).
const REORDER_PACKETS: usize = 64;
const REORDER_DELAY_US: u64 = 100_000;

const PS_FIXTURES: &[(&str, &[u8])] = &[
    ("h264_g711a_8k", include_bytes!("../fixtures/h264_g711a_8k.ps")),
    ("h265_aac_16k", include_bytes!("../fixtures/h265_aac_16k.ps")),
    ("h264_g711u_16k_720p", include_bytes!("../fixtures/h264_g711u_16k.ps")),
];

const RTP_DUMP: &[u8] = include_bytes!("../fixtures/h264_g711a_8k.rtp");

/// Splits a `[u16 BE len][RTP packet]` dump into the raw datagrams.
fn rtp_datagrams(dump: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut rest = dump;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        assert!(rest.len() >= 2 + len, "truncated RTP dump");
        out.push(Bytes::copy_from_slice(&rest[2..2 + len]));
        rest = &rest[2 + len..];
    }
    assert!(rest.is_empty(), "trailing bytes in RTP dump");
    out
}

fn fast_config() -> Criterion {
    Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20)
}

/// A fresh demuxer per iteration, the whole file fed in 1400-byte chunks, then flushed.
fn ps_demux(c: &mut Criterion) {
    let mut group = c.benchmark_group("ps_demux");
    for &(name, data) in PS_FIXTURES {
        // Sanity: the fixture demuxes to frames.
        let mut frames = Vec::new();
        let mut d = PsDemuxer::new();
        for chunk in data.chunks(CHUNK) {
            d.push(chunk, &mut frames);
        }
        d.flush(&mut frames);
        assert!(frames.len() >= 80, "{name}: only {} frames", frames.len());

        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), data, |b, data| {
            let mut out = Vec::with_capacity(256);
            b.iter(|| {
                let mut demux = PsDemuxer::new();
                for chunk in black_box(data).chunks(CHUNK) {
                    demux.push(chunk, &mut out);
                }
                demux.flush(&mut out);
                black_box(&out);
                out.clear();
            });
        });
    }
    group.finish();
}

/// StreamIngest::push_rtp (reorder + demux) over pre-parsed packets; one long-lived ingest, the
/// sequence numbers rewritten so they stay continuous across iterations (PTS jump back at each
/// pass; the demuxer does not care). `rtp_parse_reorder_demux` also parses each datagram.
fn rtp_to_frames(c: &mut Criterion) {
    let raw = rtp_datagrams(RTP_DUMP);
    let parsed: Vec<RtpPacket> = raw.iter().map(|d| RtpPacket::parse(d.clone()).expect("valid RTP")).collect();
    let n = parsed.len() as u64;

    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(n));
    group.bench_function("rtp_to_frames", |b| {
        let mut ingest = StreamIngest::new(REORDER_PACKETS, REORDER_DELAY_US);
        let mut out = Vec::with_capacity(256);
        let mut seq = 0u16;
        let mut now_us = 0u64;
        b.iter(|| {
            for p in &parsed {
                let mut p = p.clone();
                p.seq = seq;
                seq = seq.wrapping_add(1);
                now_us += 400;
                ingest.push_rtp(p, now_us, &mut out);
            }
            black_box(&out);
            out.clear();
        });
        let s = ingest.rtp_stats();
        assert_eq!((s.lost, s.resets, s.duplicates), (0, 0, 0), "sequence not continuous");
        assert!(ingest.stream_stats().video.is_some_and(|v| v.frames > 0));
    });
    group.bench_function("rtp_parse_reorder_demux", |b| {
        let mut ingest = StreamIngest::new(REORDER_PACKETS, REORDER_DELAY_US);
        let mut out = Vec::with_capacity(256);
        let mut seq = 0u16;
        let mut now_us = 0u64;
        b.iter(|| {
            for d in &raw {
                let Ok(mut p) = RtpPacket::parse(black_box(d.clone())) else { continue };
                p.seq = seq;
                seq = seq.wrapping_add(1);
                now_us += 400;
                ingest.push_rtp(p, now_us, &mut out);
            }
            black_box(&out);
            out.clear();
        });
        let s = ingest.rtp_stats();
        assert_eq!((s.lost, s.resets, s.duplicates), (0, 0, 0), "sequence not continuous");
    });
    group.finish();
}

/// RtpPacket::parse alone (zero-copy: a refcount bump and header reads).
fn rtp_parse(c: &mut Criterion) {
    let raw = rtp_datagrams(RTP_DUMP);
    let mut group = c.benchmark_group("rtp");
    group.throughput(Throughput::Elements(raw.len() as u64));
    group.bench_function("parse", |b| {
        b.iter(|| {
            for d in &raw {
                let _ = black_box(RtpPacket::parse(black_box(d.clone())));
            }
        });
    });
    group.finish();
}

/// ReorderBuffer::push alone, in-order packets (the hot path), output drained each pass.
fn reorder(c: &mut Criterion) {
    let raw = rtp_datagrams(RTP_DUMP);
    let parsed: Vec<RtpPacket> = raw.iter().map(|d| RtpPacket::parse(d.clone()).expect("valid RTP")).collect();
    let mut group = c.benchmark_group("rtp");
    group.throughput(Throughput::Elements(parsed.len() as u64));
    group.bench_function("reorder_in_order", |b| {
        let mut rb = ReorderBuffer::new(REORDER_PACKETS, REORDER_DELAY_US);
        let mut out: Vec<Reordered> = Vec::with_capacity(parsed.len());
        let mut seq = 0u16;
        let mut now_us = 0u64;
        b.iter(|| {
            for p in &parsed {
                let mut p = p.clone();
                p.seq = seq;
                seq = seq.wrapping_add(1);
                now_us += 400;
                rb.push(p, now_us, &mut out);
            }
            black_box(&out);
            out.clear();
        });
        let s = rb.stats();
        assert_eq!((s.lost, s.resets, s.duplicates), (0, 0, 0), "sequence not continuous");
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = fast_config();
    targets = ps_demux, rtp_to_frames, rtp_parse, reorder
}
criterion_main!(benches);
