//! The GOP cache policy (D157-D158) with real peers: `gbgate send` pushes a fixture over RTP/TCP,
//! players are HTTP-FLV clients on real sockets (ffprobe, and a plain TCP reader that keeps a
//! player connected), and the operator's view is read from the API and `/metrics`.
//!
//! - `watched`: a stream nobody watched within `gop_cache_idle` holds no cache (its first player
//!   waits for a keyframe: a miss); while watched it keeps one, and a player joining mid-GOP starts
//!   at the cached keyframe (a hit; ffprobe's first video frame is a keyframe).
//! - `always`: every stream keeps its cache.
//! - the global budget: the caches together never exceed it, and the caches emptied for it are
//!   counted per stream, in total and as a metric.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::config::{Config, GopCacheMode, HumanDuration};
use gbgate::server::Gateway;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn name_of(ssrc: u32) -> String {
    format!("rtp/{ssrc:08X}")
}

fn config(mode: GopCacheMode) -> Config {
    let mut cfg = test_config();
    cfg.hub.gop_cache = mode;
    cfg.hub.gop_cache_idle = HumanDuration(Duration::from_secs(1));
    cfg
}

/// The stream as `GET /api/v1/streams/<name>` shows it.
async fn view(gw: &Gateway, name: &str) -> Value {
    let (status, body) = http_get(gw.api_addr, &format!("/api/v1/streams/{name}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls the stream's API view until `done` holds (or 15 s pass); returns the last view.
async fn wait_view(gw: &Gateway, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (status, v) = http_get(gw.api_addr, &format!("/api/v1/streams/{name}")).await;
        if (status == 200 && done(&v)) || start.elapsed() > Duration::from_secs(15) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metrics_text(api: SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {api}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// A player that stays connected: `GET /<name>.flv` on a real socket, reading until dropped.
async fn hold_player(http: SocketAddr, name: &str) -> tokio::task::JoinHandle<usize> {
    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    s.write_all(format!("GET /{name}.flv HTTP/1.1\r\nHost: {http}\r\n\r\n").as_bytes()).await.unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0;
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    })
}

/// ffprobe reads the first video frames of the HTTP-FLV stream; returns their `key_frame` flags.
async fn first_video_frames(http: SocketAddr, name: &str) -> Vec<bool> {
    let url = format!("http://{http}/{name}.flv");
    let out = tokio::task::spawn_blocking(move || {
        let mut c = Command::new("timeout");
        c.args(["20", "ffprobe", "-v", "error", "-select_streams", "v", "-read_intervals", "%+#5", "-show_entries"])
            .args(["frame=key_frame", "-of", "csv=p=0", &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.output().expect("run ffprobe")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.trim().is_empty(), "ffprobe read no video frame: {}", String::from_utf8_lossy(&out.stderr));
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| l.trim().starts_with('1')).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_streams_keep_their_cache_and_unwatched_ones_give_it_back() {
    if !require_tool("watched_streams_keep_their_cache_and_unwatched_ones_give_it_back", "ffprobe") {
        return;
    }
    let gw = start(config(GopCacheMode::Watched)).await;
    let http = gw.http_addr.unwrap();
    let ssrc = 0x0D000001;
    let name = name_of(ssrc);
    let sender = send_in_background(&gw, own_fixture("h264_g711a_8k.rtp"), ssrc, 12);

    // Nobody watches it: once gop_cache_idle (1 s) has passed since it started, it holds nothing.
    let v = wait_view(&gw, &name, |v| v["gop_cache"] == "unwatched" && v["video"]["codec"] == "h264").await;
    assert_eq!(v["gop_cache"], "unwatched", "{v}");
    assert_eq!(v["gop_cache_bytes"], 0, "{v}");
    assert_eq!(v["gop_cache_frames"], 0, "{v}");
    let (_, rtp) = http_get(gw.api_addr, "/api/v1/rtp").await;
    assert_eq!(rtp["gop_cache_streams"], 0, "{rtp}");
    assert_eq!(rtp["gop_cache_bytes"], 0, "{rtp}");

    // The first player finds no cache: it waits for the next keyframe (a miss), and from then on
    // the stream keeps a cache again.
    let first = hold_player(http, &name).await;
    let v = wait_view(&gw, &name, |v| v["gop_cache_misses"] == 1 && v["gop_cache_frames"].as_u64() >= Some(10)).await;
    assert_eq!((v["gop_cache_misses"].as_u64(), v["gop_cache_hits"].as_u64()), (Some(1), Some(0)), "{v}");
    assert_eq!(v["gop_cache"], "kept", "{v}");
    assert!(v["gop_cache_frames"].as_u64() >= Some(10), "the watched stream caches its GOP again: {v}");

    // A second player joins mid-GOP: it starts at the cached keyframe (a hit), as a real decoder sees.
    let frames = first_video_frames(http, &name).await;
    assert!(frames[0], "the first video frame is the cached keyframe: {frames:?}");
    let v = view(&gw, &name).await;
    assert_eq!(v["gop_cache_hits"], 1, "{v}");
    assert_eq!(v["gop_cache_misses"], 1, "{v}");
    let text = tokio::task::spawn_blocking(move || metrics_text(gw.api_addr)).await.unwrap();
    assert_eq!(metric(&text, "gbgate_gop_cache_hits_total"), Some(1.0), "{text}");
    assert_eq!(metric(&text, "gbgate_gop_cache_misses_total"), Some(1.0), "{text}");
    assert!(metric(&text, "gbgate_gop_cache_bytes").is_some_and(|b| b > 0.0), "{text}");
    assert_eq!(metric(&text, "gbgate_gop_cache_streams"), Some(1.0), "{text}");

    // The last player leaves: gop_cache_idle later the cache is given back.
    first.abort();
    let v = wait_view(&gw, &name, |v| v["gop_cache"] == "unwatched" && v["subscribers"] == 0).await;
    assert_eq!((v["gop_cache"].as_str(), v["gop_cache_bytes"].as_u64()), (Some("unwatched"), Some(0)), "{v}");
    sender.abort();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_keeps_every_stream_cached_and_its_first_player_starts_at_once() {
    if !require_tool("always_keeps_every_stream_cached_and_its_first_player_starts_at_once", "ffprobe") {
        return;
    }
    let gw = start(config(GopCacheMode::Always)).await;
    let http = gw.http_addr.unwrap();
    let ssrc = 0x0D000002;
    let name = name_of(ssrc);
    let sender = send_in_background(&gw, own_fixture("h264_g711a_8k.rtp"), ssrc, 12);
    // Well past gop_cache_idle and mid-GOP: still cached.
    let start = Instant::now();
    let v = wait_view(&gw, &name, |v| {
        v["gop_cache_frames"].as_u64() >= Some(10) && start.elapsed() > Duration::from_secs(3)
    })
    .await;
    assert_eq!(v["gop_cache"], "kept", "{v}");
    assert!(v["gop_cache_bytes"].as_u64() > Some(0), "{v}");
    let frames = first_video_frames(http, &name).await;
    assert!(frames[0], "the first video frame is the cached keyframe: {frames:?}");
    let v = view(&gw, &name).await;
    assert_eq!((v["gop_cache_hits"].as_u64(), v["gop_cache_misses"].as_u64()), (Some(1), Some(0)), "{v}");
    sender.abort();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_budget_holds_and_evictions_are_counted() {
    let mut cfg = config(GopCacheMode::Always);
    // About one GOP of this fixture (352x288, ~32 KB a second): three streams cannot all keep one.
    cfg.hub.gop_cache_total_bytes = 40_000;
    let gw = start(cfg).await;
    let ssrcs = [0x0D000011u32, 0x0D000012, 0x0D000013];
    let senders: Vec<_> =
        ssrcs.iter().map(|&s| send_in_background(&gw, own_fixture("h264_g711a_8k.rtp"), s, 6)).collect();
    let mut max_total = 0u64;
    let mut evictions = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        let (_, rtp) = http_get(gw.api_addr, "/api/v1/rtp").await;
        assert_eq!(rtp["gop_cache_total_bytes"], 40_000, "{rtp}");
        max_total = max_total.max(rtp["gop_cache_bytes"].as_u64().unwrap());
        evictions = rtp["gop_budget_clears"].as_u64().unwrap();
        if evictions >= 3 && start.elapsed() > Duration::from_secs(4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(max_total <= 40_000, "the caches together stayed within the budget: {max_total}");
    assert!(evictions >= 3, "caches were emptied for the budget, and counted: {evictions}");
    let list = streams(gw.api_addr).await;
    let per_stream: u64 = list.iter().map(|s| s["gop_cache_evictions"].as_u64().unwrap()).sum();
    let (_, rtp) = http_get(gw.api_addr, "/api/v1/rtp").await;
    let total = rtp["gop_budget_clears"].as_u64().unwrap();
    // Frames keep coming between the two reads: the per-stream sum was read first.
    assert!(per_stream >= evictions && per_stream <= total, "per stream {per_stream}, total {evictions}..{total}");
    let text = tokio::task::spawn_blocking(move || metrics_text(gw.api_addr)).await.unwrap();
    assert!(metric(&text, "gbgate_gop_cache_evictions_total").is_some_and(|n| n >= total as f64), "{text}");
    assert_eq!(metric(&text, "gbgate_gop_cache_budget_bytes"), Some(40_000.0), "{text}");
    for s in senders {
        s.abort();
    }
    gw.stop().await;
}
