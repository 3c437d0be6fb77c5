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

/// Cameras the receive-path bench sends, each from its own socket with its own SSRC.
const RX_CAMERAS: usize = 16;
/// Datagrams one camera sends in a row before the next camera's turn (a frame's packets leave a
/// camera back to back).
const RX_BURST: usize = 8;

/// CPU time (ns) of every thread of this process but the calling one: the gateway's runtime
/// threads, not the bench thread that sends the datagrams (`/proc/self/task/*/schedstat`).
fn other_threads_cpu_ns() -> std::collections::HashMap<String, u64> {
    let me = std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Default::default() };
    tasks
        .flatten()
        .filter(|t| t.file_name().to_string_lossy() != me)
        .filter_map(|t| {
            let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            Some((t.file_name().to_string_lossy().into_owned(), s.split_whitespace().next()?.parse::<u64>().ok()?))
        })
        .collect()
}

/// CPU time the threads alive at the end took since `before`, per thread: a thread that exited
/// in between (an earlier server's) is not subtracted from the others.
fn cpu_since(before: &std::collections::HashMap<String, u64>) -> u64 {
    other_threads_cpu_ns().iter().map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0))).sum()
}

/// The whole UDP receive path of the server: RTP datagrams sent over a real loopback socket by
/// RX_CAMERAS cameras (bursts of RX_BURST datagrams per camera, round robin), received by
/// `server::rtp::serve` on a 2-worker runtime (this machine's size), routed, reordered,
/// demuxed and published to the hub, where one subscriber per stream takes the frames. One
/// iteration is one pass of the fixture for every camera; it ends when the server has counted
/// every datagram. Also prints the runtime threads' CPU time per datagram.
fn receive_path(c: &mut Criterion) {
    // The default batching wait (D153), and none: one wake-up per datagram or burst.
    for wait_ms in [1u64, 0] {
        receive_path_with(c, Duration::from_millis(wait_ms));
    }
}

fn receive_path_with(c: &mut Criterion, batch_wait: Duration) {
    use gbgate::config::{AudioConfig, AudioOutput, HubConfig, HumanDuration, RtpConfig};
    use gbgate::hub::Hub;
    use gbgate::server::rtp::{self, RtpShared};
    use std::sync::atomic::Ordering;

    let raw = rtp_datagrams(RTP_DUMP);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let cfg = RtpConfig {
        listen: "127.0.0.1:0".parse().expect("literal"),
        recv_buffer: 4 << 20,
        unknown_ssrc: gbgate::config::UnknownSsrc::Drop,
        udp_batch_wait: HumanDuration(batch_wait),
        ..RtpConfig::default()
    };
    let hub = Hub::new(HubConfig::default(), 1000);
    let shared = RtpShared::with_audio(AudioConfig { output: AudioOutput::Passthrough, ..AudioConfig::default() });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let addr = rt.block_on(async {
        let (udp, tcp, addr) = rtp::bind(&cfg).await.expect("bind");
        tokio::spawn(rtp::serve(udp, tcp, cfg.clone(), hub.clone(), shared.clone(), shutdown.clone()));
        addr
    });
    let ssrcs: Vec<u32> = (0..RX_CAMERAS as u32).map(|i| 0x1000 + i).collect();
    for &ssrc in &ssrcs {
        shared.announce(ssrc, format!("bench/{ssrc}"));
    }
    let sockets: Vec<std::net::UdpSocket> =
        ssrcs.iter().map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind client")).collect();
    let mut subs = Vec::new();
    let mut frames = 0u64;
    let mut sent = 0u64;
    let mut pass = 0u16;
    let mut dgram = Vec::with_capacity(2048);
    let counted = |shared: &RtpShared| shared.counters.datagrams.load(Ordering::Relaxed);
    let mut one_pass = |subs: &mut Vec<gbgate::hub::Subscription>, frames: &mut u64, sent: &mut u64| {
        for chunk in (0..raw.len()).step_by(RX_BURST) {
            for (cam, sock) in sockets.iter().enumerate() {
                for (i, d) in raw.iter().enumerate().skip(chunk).take(RX_BURST) {
                    dgram.clear();
                    dgram.extend_from_slice(d);
                    let seq = (pass as usize * raw.len() + i) as u16;
                    dgram[2..4].copy_from_slice(&seq.to_be_bytes());
                    dgram[8..12].copy_from_slice(&ssrcs[cam].to_be_bytes());
                    sock.send_to(&dgram, addr).expect("send");
                    *sent += 1;
                }
            }
        }
        pass = pass.wrapping_add(1);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while counted(&shared) < *sent {
            assert!(
                std::time::Instant::now() < deadline,
                "the server counted {} of {} datagrams: lost (receive buffer too small?)",
                counted(&shared),
                *sent
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        if subs.len() < RX_CAMERAS {
            subs.clear();
            subs.extend(ssrcs.iter().filter_map(|s| hub.get(&format!("bench/{s}"))).map(|s| s.subscribe()));
        }
        for sub in subs.iter_mut() {
            while let Some(Ok(_)) = sub.try_recv() {
                *frames += 1;
            }
        }
    };
    // Streams created (and subscribed) before measuring.
    one_pass(&mut subs, &mut frames, &mut sent);
    one_pass(&mut subs, &mut frames, &mut sent);
    assert_eq!(subs.len(), RX_CAMERAS, "every camera is a stream");

    let mut group = c.benchmark_group("receive_path");
    group.throughput(Throughput::Elements((raw.len() * RX_CAMERAS) as u64));
    let (cpu0, sent0, frames0) = (other_threads_cpu_ns(), sent, frames);
    let id = format!("{RX_CAMERAS}cams_burst{RX_BURST}_wait{}ms", batch_wait.as_millis());
    group.bench_function(BenchmarkId::new("udp_loopback_to_frames", &id), |b| {
        b.iter(|| one_pass(&mut subs, &mut frames, &mut sent));
    });
    group.finish();
    let (cpu, n) = (cpu_since(&cpu0), sent - sent0);
    eprintln!(
        "receive_path {id}: server threads' CPU {:.2} us per datagram over {n} datagrams, {} frames to subscribers",
        cpu as f64 / n.max(1) as f64 / 1000.0,
        frames - frames0
    );
    assert!(frames > frames0, "frames reached the subscribers");
    let drops: u64 = shared.counters.queue_drops.load(Ordering::Relaxed);
    assert_eq!(drops, 0, "no queue drops");
    shutdown.cancel();
}

criterion_group! {
    name = benches;
    config = fast_config();
    targets = ps_demux, rtp_to_frames, rtp_parse, reorder, receive_path
}
criterion_main!(benches);
