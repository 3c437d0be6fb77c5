//! Memory bounded in bytes (issue 8, holes 7, 16 and 18): 20 streams send ~12 MB access units
//! over RTP/TCP. Each unit is dropped and counted (`oversize_drops`), the streams go on at their
//! next keyframe, and what the RTP side holds (`buffered_bytes`) and the process RSS stay bounded.
mod common;

use std::time::{Duration, Instant};

use common::*;
use gbgate::media::Codec;
use gbgate::proto::ps::mux::{PsMuxer, RtpPacketizer};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const STREAMS: u32 = 20;
const HUGE: usize = 12 << 20;

/// RFC 4571 frames of one camera: 5 frames, one ~12 MB access unit, then 10 frames (all IDR).
fn camera_bytes(ssrc: u32) -> Vec<u8> {
    let mut mux = PsMuxer::new(Some(Codec::H264), None);
    let mut rtp = RtpPacketizer { ssrc, seq: 0, payload_type: 96, max_payload: 1400 };
    let mut out = Vec::new();
    for i in 0..16u32 {
        let mut au = gbgate::sim::pattern::frame(i);
        if i == 5 {
            // Trailing slice bytes without a start code: one access unit of ~12 MB.
            au.extend(std::iter::repeat_n(0x55u8, HUGE));
        }
        let ts = i * 3600;
        let mut ps = Vec::new();
        mux.write_frame(Codec::H264, i64::from(ts), i64::from(ts), true, &au, &mut ps);
        let mut pkts = Vec::new();
        rtp.packetize(&ps, ts, &mut pkts);
        for p in pkts {
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(&p);
        }
    }
    out
}

struct Outcome {
    list: Vec<Value>,
    counters: Value,
    rss_before: u64,
    rss_peak: u64,
}

/// Runs the 20 cameras against a gateway with `cfg`; returns once every stream dropped its huge
/// unit (when `need_oversize`) and delivered `min_frames` video frames (or after 60 s).
async fn run(cfg: gbgate::config::Config, min_frames: u64, need_oversize: bool) -> Outcome {
    let gw = start(cfg).await;
    let (rtp, api) = (gw.rtp_addr, gw.api_addr);
    let payloads: Vec<Vec<u8>> = (0..STREAMS).map(|i| camera_bytes(0x0BEB_C900 + i)).collect();
    let rss_before = rss_kib(std::process::id());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut cams = Vec::new();
    for bytes in payloads {
        let stop = stop.clone();
        cams.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(rtp).await.unwrap();
            // In slices, so the streams overlap.
            for chunk in bytes.chunks(256 << 10) {
                s.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Keep the connection (and so the stream) open until the test has looked.
            stop.cancelled().await;
        }));
    }
    let done = |l: &[Value]| {
        l.len() == STREAMS as usize
            && l.iter().all(|s| {
                (!need_oversize || s["oversize_drops"].as_u64() >= Some(1))
                    && s["video"]["frames"].as_u64() >= Some(min_frames)
            })
    };
    let t = Instant::now();
    let mut rss_peak = rss_before;
    let list = loop {
        let list = streams(api).await;
        rss_peak = rss_peak.max(rss_kib(std::process::id()));
        if done(&list) || t.elapsed() > Duration::from_secs(60) {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, counters) = http_get(api, "/api/v1/rtp").await;
    println!(
        "RSS before {} MiB, peak {} MiB; RTP buffered {} bytes, budget drops {}",
        rss_before / 1024,
        rss_peak / 1024,
        counters["buffered_bytes"],
        counters["budget_drops"]
    );
    stop.cancel();
    for c in cams {
        c.await.unwrap();
    }
    gw.stop().await;
    Outcome { list, counters, rss_before, rss_peak }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_access_units_are_dropped_and_counted_and_memory_stays_bounded() {
    let mut cfg = test_config();
    cfg.rtp.max_unknown_per_source = 100;
    let o = run(cfg, 14, true).await;
    assert_eq!(o.list.len(), STREAMS as usize, "{:?}", o.list);
    for s in &o.list {
        // The unit was dropped as a whole; frames before and after it came through.
        assert!(s["oversize_drops"].as_u64() >= Some(1), "{}: {s}", s["name"]);
        assert!(s["video"]["frames"].as_u64() >= Some(14), "{}: {s}", s["name"]);
    }
    // Reassembly and queues hold a few hundred KiB per stream once the units are gone, not the
    // units (before the fix: 8 MiB of buffer capacity kept per stream, 168 MB in all).
    let buffered = o.counters["buffered_bytes"].as_u64().unwrap();
    assert!(buffered <= u64::from(STREAMS) << 20, "RTP side holds {buffered} bytes: {}", o.counters);
    // 20 x 12 MB went through: the peak stays near 20 x max_access_unit (4 MiB) plus slack.
    let grew = o.rss_peak - o.rss_before;
    assert!(grew < 140 << 10, "RSS grew by {grew} KiB");
    the_global_byte_budget_sheds_partial_units().await;
}

/// With a small global budget, streams shed their partial units instead of growing: the RTP
/// side never holds much more than the budget. (Run after the test above, in the same test: RSS is
/// per process.)
async fn the_global_byte_budget_sheds_partial_units() {
    let mut cfg = test_config();
    cfg.rtp.max_unknown_per_source = 100;
    cfg.rtp.max_buffered_bytes = 16 << 20;
    let o = run(cfg, 10, false).await;
    check_budget(o);
}

fn check_budget(o: Outcome) {
    assert_eq!(o.list.len(), STREAMS as usize, "{:?}", o.list);
    assert!(o.counters["budget_drops"].as_u64() >= Some(1), "{}", o.counters);
    for s in &o.list {
        assert!(s["video"]["frames"].as_u64() >= Some(10), "{}: {s}", s["name"]);
    }
    let grew = o.rss_peak - o.rss_before;
    assert!(grew < 140 << 10, "RSS grew by {grew} KiB");
}
