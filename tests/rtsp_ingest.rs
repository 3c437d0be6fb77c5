//! RTSP ANNOUNCE/RECORD publishers into gbgate, with real pushers (ffmpeg, GStreamer's
//! `rtspclientsink`) on 127.0.0.1 over TCP and UDP, read back by real players (ffprobe, ffmpeg,
//! GStreamer's `rtspsrc`): codecs, AAC 11025 Hz mono, the publish rules (no take-over of a live
//! name, reserved prefixes, credentials), a lying G.711 rate, and silent publishers.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gbgate::media::audio::analysis::tone_frequency;
use gbgate::server::Gateway;
use serde_json::Value;
use tokio::process::{Child, Command};

/// An ffmpeg pushing a live test pattern to `url` over RTSP (`transport`: tcp or udp).
/// `video`: encoder args; `audio`: encoder args (empty: no audio).
fn ffmpeg_push(url: &str, transport: &str, video: &[&str], audio: &[&str], secs: u32) -> Child {
    let mut c = Command::new("ffmpeg");
    c.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"]);
    c.args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"]);
    if !audio.is_empty() {
        c.args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=44100"]);
    }
    c.args(video);
    if audio.is_empty() {
        c.arg("-an");
    } else {
        c.args(audio);
    }
    c.args(["-t", &secs.to_string(), "-f", "rtsp", "-rtsp_transport", transport, url]);
    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    c.spawn().expect("ffmpeg")
}

const H264: &[&str] = &["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25", "-pix_fmt", "yuv420p"];
const H265: &[&str] = &[
    "-c:v",
    "libx265",
    "-preset",
    "ultrafast",
    "-x265-params",
    "keyint=25:bframes=0:log-level=error",
    "-pix_fmt",
    "yuv420p",
];
const AAC: &[&str] = &["-c:a", "aac", "-ar", "44100", "-ac", "2"];
const ALAW: &[&str] = &["-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1"];

async fn wait_live(gw: &Gateway, name: &str, limit: Duration) -> Arc<gbgate::hub::Stream> {
    let start = Instant::now();
    loop {
        if let Some(s) = gw.hub.get(name) {
            return s;
        }
        assert!(start.elapsed() < limit, "{name} never went live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn video_frames(s: &gbgate::hub::Stream) -> u64 {
    s.stats().video.map_or(0, |v| v.frames)
}

/// Whether the stream's video frame count grows by more than 10 within 5 s.
async fn frames_grow(s: &gbgate::hub::Stream) -> bool {
    let before = video_frames(s);
    wait_for(Duration::from_secs(5), || video_frames(s) > before + 10).await
}

/// Waits for `child` to exit; (exited in time and succeeded, stderr).
async fn outcome(child: Child, limit: Duration) -> (bool, String) {
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()),
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (true, "still running".into()),
    }
}

/// ffprobe's streams of an RTSP URL (read over TCP).
async fn probe(url: &str) -> Vec<Value> {
    let args = [
        "-v",
        "error",
        "-rtsp_transport",
        "tcp",
        "-show_entries",
        "stream=codec_name,sample_rate,channels,width,height",
        "-of",
        "json",
        url,
    ];
    let (ok, out, err) = run_program("ffprobe", &args, Duration::from_secs(20)).await;
    assert!(ok, "ffprobe {url}: {err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("ffprobe output {out:?}: {e}"));
    v["streams"].as_array().cloned().unwrap_or_default()
}

/// Asserts the read-back stream has `video` and AAC 11025 Hz mono.
fn assert_codecs(streams: &[Value], video: &str, what: &str) {
    let v = streams.iter().find(|s| s["width"].is_u64()).unwrap_or_else(|| panic!("{what}: no video: {streams:?}"));
    assert_eq!(v["codec_name"], video, "{what}: {streams:?}");
    let a = streams.iter().find(|s| s["sample_rate"].is_string()).unwrap_or_else(|| panic!("{what}: no audio: {streams:?}"));
    assert_eq!((a["codec_name"].as_str(), a["sample_rate"].as_str(), a["channels"].as_u64()), (Some("aac"), Some("11025"), Some(1)), "{what}: {streams:?}");
}

/// The API's entry for `name`.
async fn api_stream(gw: &Gateway, name: &str) -> Value {
    let list = wait_streams(gw.api_addr, Duration::from_secs(10), |l| l.iter().any(|s| s["name"] == name)).await;
    list.into_iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("{name} not in /api/v1/streams"))
}

fn tools(test: &str, tools: &[&str]) -> bool {
    tools.iter().all(|t| require_tool(test, t))
}

async fn push_and_read_back(transport: &str, video: &[&str], audio: &[&str], name: &str, expect_video: &str) {
    let gw = start(test_config()).await;
    let rtsp = gw.rtsp_addr.unwrap();
    let url = format!("rtsp://{rtsp}/{name}");
    let pusher = ffmpeg_push(&url, transport, video, audio, 30);
    let stream = wait_live(&gw, name, Duration::from_secs(15)).await;
    assert_eq!(stream.source.transport, gbgate::hub::Transport::Rtsp);
    assert!(frames_grow(&stream).await, "{name}: no video flows");
    let streams = probe(&url).await;
    assert_codecs(&streams, expect_video, &format!("{name} over {transport}"));
    let api = api_stream(&gw, name).await;
    assert_eq!(api["video"]["codec"], if expect_video == "hevc" { "h265" } else { "h264" }, "{api}");
    println!("{name} over {transport}: {streams:?}; api {api}");
    drop(pusher);
    // The publisher left: the stream ends.
    assert!(wait_for(Duration::from_secs(10), || gw.hub.get(name).is_none()).await, "{name} outlived its publisher");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_pushes_h264_and_aac_over_tcp() {
    if !tools("ffmpeg_pushes_h264_and_aac_over_tcp", &["ffmpeg", "ffprobe"]) {
        return;
    }
    push_and_read_back("tcp", H264, AAC, "live/tcp", "h264").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_pushes_h264_and_aac_over_udp() {
    if !tools("ffmpeg_pushes_h264_and_aac_over_udp", &["ffmpeg", "ffprobe"]) {
        return;
    }
    push_and_read_back("udp", H264, AAC, "live/udp", "h264").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_pushes_h265_and_g711a() {
    if !tools("ffmpeg_pushes_h265_and_g711a", &["ffmpeg", "ffprobe"]) {
        return;
    }
    push_and_read_back("tcp", H265, ALAW, "live/hevc", "hevc").await;
}
