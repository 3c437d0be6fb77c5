//! Direct writes from the publishing side (D183): at `merge_write = "0s"` the publisher writes
//! each frame to interleaved RTSP players that keep up, without waking their tasks; a player
//! whose socket does not take a frame falls back to its own task (and the slow-player policy).
//! Real players (ffprobe) and a raw socket that never reads, on 127.0.0.1.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::server::Gateway;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start_per_frame() -> Gateway {
    let mut cfg = test_config();
    cfg.rtsp.merge_write = gbgate::config::HumanDuration(Duration::ZERO);
    cfg.rtmp.merge_write = gbgate::config::HumanDuration(Duration::ZERO);
    start(cfg).await
}

/// A counter of `GET /metrics` (the `_total` sample).
async fn metric(api: SocketAddr, name: &str) -> u64 {
    let (status, _, body) = http_raw(api, http_request("GET", "/metrics", &api.to_string(), "", "")).await;
    assert_eq!(status, 200);
    let key = format!("{name}_total ");
    body.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// From a keyframe, pts strictly increasing at a constant step: nothing lost or reordered.
fn assert_every_frame_in_order(frames: &[(i64, bool)], at_least: usize) {
    assert!(frames[0].1, "first decoded frame is a keyframe");
    // ffmpeg may report the very first frame without a pts (before RTCP sync).
    let step: Vec<i64> = frames[1..].windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(step.iter().all(|d| *d == step[0] && *d > 0), "constant frame step: {step:?}");
    assert!(frames.len() >= at_least, "{} frames", frames.len());
}

/// A player that keeps up is written by the publisher (the counter moves), and gets the same
/// bytes it would from its own task: H.264 1280x720 + AAC, every frame in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_that_keeps_up_is_written_by_the_publisher() {
    if !require_tool("a_player_that_keeps_up_is_written_by_the_publisher", "ffprobe") {
        return;
    }
    let gw = start_per_frame().await;
    let api = gw.api_addr;
    let name = feed(&gw, "h264_g711u_16k", 0x0D1E_C701, 4).await;
    let url = format!("rtsp://{}/{name}", gw.rtsp_addr.unwrap());
    let before = metric(api, "gbgate_direct_writes").await;
    let (streams, frames) = tokio::join!(ffprobe_streams(&url, "tcp"), ffprobe_frames(&url, "tcp"));
    let after = metric(api, "gbgate_direct_writes").await;
    println!("{} frames decoded; {} frames written directly; {streams:?}", frames.len(), after - before);
    let video = streams.iter().find(|v| v["codec_name"] == "h264").expect("H.264");
    assert_eq!((video["width"].as_i64(), video["height"].as_i64()), (Some(1280), Some(720)));
    let audio = streams.iter().find(|v| v["codec_name"] == "aac").expect("AAC");
    assert_eq!(audio["sample_rate"], "11025");
    assert_every_frame_in_order(&frames, 150);
    // 4 loops of 50 frames, most of them live after the GOP burst at PLAY: the player that read
    // to the end was written by the publisher for most of them.
    assert!(after - before >= 100, "frames written directly: {}", after - before);
}

/// A player that stops reading falls back to its own task and is dropped by the write deadline,
/// while another player gets every frame in order and ingest goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_player_falls_back_and_disturbs_neither_others_nor_ingest() {
    if !require_tool("a_stalled_player_falls_back_and_disturbs_neither_others_nor_ingest", "ffprobe") {
        return;
    }
    let gw = start_per_frame().await;
    let api = gw.api_addr;
    let rtsp = gw.rtsp_addr.unwrap();
    // 10 loops = 20 s of stream, so a disconnect before then is the write deadline at work.
    let name = feed(&gw, "h264_g711u_16k", 0x0D1E_C801, 10).await;
    let url = format!("rtsp://{rtsp}/{name}");
    let fallbacks = metric(api, "gbgate_direct_fallbacks").await;
    // The stalled player: a small receive buffer, PLAY, then never read again.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&rtsp.into()).unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut stalled = TcpStream::from_std(sock.into()).unwrap();
    stalled
        .write_all(
            format!(
                "SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stalled.read(&mut b).await.unwrap(), 1, "SETUP answered");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("RTSP/1.0 200"), "{head}");
    let id = head.lines().find_map(|l| l.strip_prefix("Session: ")).unwrap().split(';').next().unwrap().to_string();
    stalled.write_all(format!("PLAY {url} RTSP/1.0\r\nCSeq: 2\r\nSession: {id}\r\n\r\n").as_bytes()).await.unwrap();
    let stalled_since = Instant::now();
    let stream = gw.hub.get(&name).expect("live");
    let rtsp_players = |st: &gbgate::hub::Stream| st.subscriber_counts().get("rtsp").copied().unwrap_or(0);
    while rtsp_players(&stream) == 0 {
        assert!(stalled_since.elapsed() < Duration::from_secs(10), "the stalled player never played");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let packets_at_stall = stream.stats().packets;

    // Another player reads the whole stream meanwhile: every frame, in order.
    let other = tokio::spawn({
        let url = url.clone();
        async move { ffprobe_frames(&url, "tcp").await }
    });

    // The stalled player leaves direct mode (its socket fills) and is dropped by its task's
    // write deadline, while the stream is still live.
    while rtsp_players(&stream) > 1 || metric(api, "gbgate_direct_fallbacks").await == fallbacks {
        assert!(stalled_since.elapsed() < Duration::from_secs(18), "the stalled player was never dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dropped_after = stalled_since.elapsed();
    assert!(gw.hub.get(&name).is_some(), "the stream is still live when the player is dropped");
    // Ingest went on while the player stalled: packets kept arriving (the sender paces in real time).
    let packets_at_drop = stream.stats().packets;
    println!(
        "stalled player dropped after {dropped_after:?}; ingest took {} packets meanwhile",
        packets_at_drop - packets_at_stall
    );
    assert!(packets_at_drop > packets_at_stall + 100, "ingest went on: {packets_at_stall} -> {packets_at_drop}");
    let (closed, total) = read_until_closed(&mut stalled, Duration::from_secs(30)).await;
    assert!(closed, "the stalled player's connection was closed");
    assert!(total < 2 << 20, "bounded: {total} bytes");

    let frames = other.await.unwrap();
    println!("the other player decoded {} frames", frames.len());
    assert_every_frame_in_order(&frames, 400);
}

/// The same over RTMP: ffprobe, playing before the stream is published, reads every video frame
/// (H.264 1280x720 + AAC 11025 Hz), and the publisher wrote most of them itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtmp_player_that_keeps_up_is_written_by_the_publisher() {
    if !require_tool("an_rtmp_player_that_keeps_up_is_written_by_the_publisher", "ffprobe") {
        return;
    }
    let gw = start_per_frame().await;
    let api = gw.api_addr;
    let ssrc = 0x0D1E_C901u32;
    let name = format!("rtp/{ssrc:08X}");
    let url = format!("rtmp://{}/{name}", gw.rtmp_addr.unwrap());
    let asked = AskedFor::watch(&gw.hub);
    let before = metric(api, "gbgate_direct_writes").await;
    let probe = tokio::spawn(async move {
        run_program(
            "ffprobe",
            &[
                "-v",
                "error",
                "-count_frames",
                "-show_entries",
                "stream=codec_name,width,height,sample_rate,nb_read_frames",
                "-of",
                "json",
                &url,
            ],
            Duration::from_secs(40),
        )
        .await
    });
    asked.wait(std::slice::from_ref(&name), Duration::from_secs(10)).await;
    let loops = 3;
    feed(&gw, "h264_g711u_16k", ssrc, loops).await;
    let (ok, out, err) = probe.await.unwrap();
    assert!(ok, "ffprobe failed: {err}");
    let after = metric(api, "gbgate_direct_writes").await;
    let v: Value = serde_json::from_str(&out).unwrap();
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    println!("{} frames written directly; {streams:?}", after - before);
    let video = streams.iter().find(|v| v["codec_name"] == "h264").expect("H.264");
    assert_eq!((video["width"].as_i64(), video["height"].as_i64()), (Some(1280), Some(720)));
    assert_eq!(video["nb_read_frames"], (50 * loops).to_string(), "every video frame");
    let audio = streams.iter().find(|v| v["codec_name"] == "aac").expect("AAC");
    assert_eq!(audio["sample_rate"], "11025");
    assert!(after - before >= 75, "frames written directly: {}", after - before);
}
