//! RTSP ANNOUNCE/RECORD publishers into gbgate, with real pushers (ffmpeg, GStreamer's
//! `rtspclientsink`) on 127.0.0.1 over TCP and UDP, read back by real players (ffprobe, ffmpeg,
//! GStreamer's `rtspsrc`): codecs, AAC 11025 Hz mono, the publish rules (no take-over of a live
//! name, reserved prefixes, credentials), a lying G.711 rate, and silent publishers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
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

const H264: &[&str] =
    &["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25", "-pix_fmt", "yuv420p"];
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
    let a = streams
        .iter()
        .find(|s| s["sample_rate"].is_string())
        .unwrap_or_else(|| panic!("{what}: no audio: {streams:?}"));
    assert_eq!(
        (a["codec_name"].as_str(), a["sample_rate"].as_str(), a["channels"].as_u64()),
        (Some("aac"), Some("11025"), Some(1)),
        "{what}: {streams:?}"
    );
}

/// The API's entry for `name`.
async fn api_stream(gw: &Gateway, name: &str) -> Value {
    let list = wait_streams(gw.api_addr, Duration::from_secs(10), |l| l.iter().any(|s| s["name"] == name)).await;
    list.into_iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("{name} not in /api/v1/streams"))
}

fn tools(test: &str, tools: &[&str]) -> bool {
    tools.iter().all(|t| require_tool(test, t))
}

/// Whether GStreamer has these elements (`gst-inspect-1.0`); reports the first missing one.
fn gst_elements(test: &str, elements: &[&str]) -> bool {
    for e in elements {
        let found = std::process::Command::new("gst-inspect-1.0")
            .arg(e)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing(test, &format!("the GStreamer element {e}"));
            return false;
        }
    }
    true
}

async fn push_and_read_back(transport: &str, video: &[&str], audio: &[&str], name: &str, expect_video: &str) {
    let gw = start(test_config()).await;
    let rtsp = gw.rtsp_addr.unwrap();
    let url = format!("rtsp://{rtsp}/{name}");
    let pusher = ffmpeg_push(&url, transport, video, audio, 30);
    let stream = wait_live(&gw, name, Duration::from_secs(15)).await;
    assert_eq!(stream.source.transport, gbgate::hub::Transport::Rtsp);
    assert!(frames_grow(&stream).await, "{name}: no video flows");
    let udp = gw.rtsp_ingest.snapshot().udp_tracks;
    assert_eq!(udp, if transport == "udp" { 2 } else { 0 }, "{name}: UDP receive pairs");
    let streams = probe(&url).await;
    assert_codecs(&streams, expect_video, &format!("{name} over {transport}"));
    let api = api_stream(&gw, name).await;
    assert_eq!(api["video"]["codec"], if expect_video == "hevc" { "h265" } else { "h264" }, "{api}");
    println!("{name} over {transport}: {streams:?}; api {api}");
    drop(pusher);
    // The publisher left: the stream ends.
    assert!(wait_for(Duration::from_secs(10), || gw.hub.get(name).is_none()).await, "{name} outlived its publisher");
    // Its UDP receive pairs are closed (counted per gateway: the tests share one process's fds).
    // The connection task lets them go just after the stream leaves the hub: wait, bounded.
    let released = wait_for(Duration::from_secs(5), || {
        let c = gw.rtsp_ingest.snapshot();
        (c.udp_tracks, c.publishers) == (0, 0)
    })
    .await;
    assert!(released, "{:?}", gw.rtsp_ingest.snapshot());
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

/// GStreamer's `rtspclientsink` pushing H.264 (openh264) + AAC; GStreamer's `rtspsrc` and ffprobe
/// read it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_rtspclientsink_pushes_and_rtspsrc_reads_back() {
    let test = "gstreamer_rtspclientsink_pushes_and_rtspsrc_reads_back";
    if !tools(test, &["gst-launch-1.0", "gst-inspect-1.0", "ffprobe", "timeout"])
        || !gst_elements(test, &["rtspclientsink", "openh264enc", "voaacenc", "rtspsrc"])
    {
        return;
    }
    let gw = start(test_config()).await;
    let rtsp = gw.rtsp_addr.unwrap();
    for (name, protocols) in [("live/gst-tcp", "tcp"), ("live/gst-udp", "udp")] {
        let url = format!("rtsp://{rtsp}/{name}");
        let pipeline = format!(
            "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=25/1 ! openh264enc gop-size=25 \
             ! h264parse ! queue ! s. audiotestsrc is-live=true freq=1000 ! audio/x-raw,rate=44100,channels=2 \
             ! voaacenc ! aacparse ! queue ! s. rtspclientsink name=s protocols={protocols} location={url}"
        );
        let mut c = Command::new("gst-launch-1.0");
        c.arg("-q").args(pipeline.split_whitespace());
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
        let pusher = c.spawn().expect("gst-launch-1.0");
        let stream = wait_live(&gw, name, Duration::from_secs(15)).await;
        assert!(frames_grow(&stream).await, "{name}: no video flows");
        // rtspclientsink's audio starts later than its video: a player asking before the first
        // audio frame would be described a video-only stream.
        let audio = || stream.stats().audio.is_some_and(|a| a.frames > 0);
        assert!(wait_for(Duration::from_secs(10), audio).await, "{name}: no audio flows");
        if protocols == "udp" {
            assert_eq!(gw.rtsp_ingest.snapshot().udp_tracks, 2, "{name}: not received over UDP");
        }
        let streams = probe(&url).await;
        assert_codecs(&streams, "h264", name);
        let args = [
            "-s",
            "INT",
            "4",
            "gst-launch-1.0",
            "-v",
            "rtspsrc",
            &format!("location={url}"),
            "protocols=tcp",
            "name=r",
            "r.",
            "!",
            "application/x-rtp,media=video",
            "!",
            "fakesink",
            "r.",
            "!",
            "application/x-rtp,media=audio",
            "!",
            "fakesink",
        ];
        let (_, out, err) = run_program("timeout", &args, Duration::from_secs(20)).await;
        assert!(out.contains("encoding-name=(string)H264"), "{name}: rtspsrc saw no H.264: {out} {err}");
        assert!(
            out.contains("encoding-name=(string)MPEG4-GENERIC") && out.contains("clock-rate=(int)11025"),
            "{name}: rtspsrc saw no AAC 11025 Hz: {out} {err}"
        );
        let api = api_stream(&gw, name).await;
        println!("{name}: {streams:?}; api audio {}", api["audio"]);
        drop(pusher);
    }
    gw.stop().await;
}

/// Video frames an ffmpeg player read from `url` in `secs` seconds (`-c copy`, so every frame
/// that arrived counts), with its stderr.
async fn play_frames(url: String, secs: u32) -> (u64, String) {
    let args = ["-hide_banner", "-nostdin", "-rtsp_transport", "tcp", "-i", &url, "-t", &secs.to_string()];
    let args: Vec<&str> = args.into_iter().chain(["-map", "0:v", "-c", "copy", "-f", "null", "-"]).collect();
    let (ok, _, err) = run_program("ffmpeg", &args, Duration::from_secs(secs as u64 + 20)).await;
    assert!(ok, "player {url}: {err}");
    let frames =
        err.rsplit("frame=").next().and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    (frames, err)
}

/// Hole 2 for RTSP publishers: a second ANNOUNCE of a live name is refused (403, naming the
/// holder) while a player of the first keeps receiving frames; `rtp/` (over a live camera name)
/// and `gb/` may not be published; each refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_announce_of_a_live_name_is_refused_and_the_first_keeps_flowing() {
    if !tools("a_second_announce_of_a_live_name_is_refused_and_the_first_keeps_flowing", &["ffmpeg"]) {
        return;
    }
    let gw = start(test_config()).await;
    let rtsp = gw.rtsp_addr.unwrap();
    let url = format!("rtsp://{rtsp}/live/cam");
    let _first = ffmpeg_push(&url, "tcp", H264, AAC, 40);
    let stream = wait_live(&gw, "live/cam", Duration::from_secs(15)).await;
    assert!(frames_grow(&stream).await, "the first publisher is not flowing");

    // A player reads the stream for 6 s, across the second publisher's attempt.
    let player = tokio::spawn(play_frames(url.clone(), 6));
    let playing = wait_streams(gw.api_addr, Duration::from_secs(10), |l| {
        l.iter().any(|s| s["name"] == "live/cam" && s["players"]["rtsp"].as_u64() == Some(1))
    })
    .await;
    assert!(playing.iter().any(|s| s["players"]["rtsp"] == 1), "the player did not start: {playing:?}");
    for transport in ["tcp", "udp"] {
        let (ok, err) = outcome(ffmpeg_push(&url, transport, H264, AAC, 30), Duration::from_secs(15)).await;
        assert!(!ok && err.contains("403"), "a second publisher of live/cam over {transport} was not refused: {err}");
    }
    let now = gw.hub.get("live/cam").expect("live/cam still live");
    assert!(Arc::ptr_eq(&now, &stream), "the stream was replaced");
    assert!(frames_grow(&stream).await, "the first publisher stopped flowing");
    let (frames, err) = player.await.unwrap();
    assert!(frames >= 6 * 25 * 8 / 10, "the player got {frames} frames in 6 s: {err}");

    for name in ["rtp/0BEBC2B0", "gb/34020000001320000001"] {
        let (ok, err) =
            outcome(ffmpeg_push(&format!("rtsp://{rtsp}/{name}"), "tcp", H264, AAC, 30), Duration::from_secs(15)).await;
        assert!(!ok && err.contains("403"), "{name} was accepted: {err}");
        assert!(gw.hub.get(name).is_none());
    }
    let (status, c) = http_get(gw.api_addr, "/api/v1/rtsp/publish").await;
    assert_eq!(status, 200);
    assert_eq!((c["publish_refused"].as_u64(), c["publishers"].as_u64()), (Some(4), Some(1)), "{c}");
    gw.stop().await;
}

/// Publishing needs a credential when the host is not exempt: none gets 401, a static key in the
/// URL's query (`?key=`) is accepted, exactly as for RTMP publishers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_needs_a_credential_when_loopback_is_not_exempt() {
    if !tools("publishing_needs_a_credential_when_loopback_is_not_exempt", &["ffmpeg"]) {
        return;
    }
    let mut cfg = test_config();
    cfg.auth.loopback_exempt = false;
    cfg.auth.keys = vec!["k3y".into()];
    let gw = start(cfg).await;
    let rtsp = gw.rtsp_addr.unwrap();
    for url in [format!("rtsp://{rtsp}/live/auth"), format!("rtsp://{rtsp}/live/auth?key=wrong")] {
        let (ok, err) = outcome(ffmpeg_push(&url, "tcp", H264, AAC, 30), Duration::from_secs(15)).await;
        assert!(!ok && err.contains("401"), "{url} was accepted: {err}");
    }
    assert!(gw.hub.get("live/auth").is_none());
    let _pusher = ffmpeg_push(&format!("rtsp://{rtsp}/live/auth?key=k3y"), "tcp", H264, AAC, 30);
    let stream = wait_live(&gw, "live/auth", Duration::from_secs(15)).await;
    assert!(frames_grow(&stream).await);
    assert_eq!(gw.rtsp_ingest.snapshot().auth_refused, 2);
    gw.stop().await;
}

/// A publisher that stops sending (ffmpeg frozen with SIGSTOP: its TCP connection stays open) is
/// disconnected after `[rtsp] publish_timeout`, and its name is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_publisher_is_disconnected() {
    if !tools("a_silent_publisher_is_disconnected", &["ffmpeg", "sh"]) {
        return;
    }
    let mut cfg = test_config();
    cfg.rtsp.publish_timeout = gbgate::config::HumanDuration(Duration::from_secs(2));
    let gw = start(cfg).await;
    let url = format!("rtsp://{}/live/quiet", gw.rtsp_addr.unwrap());
    let pusher = ffmpeg_push(&url, "tcp", H264, AAC, 60);
    let stream = wait_live(&gw, "live/quiet", Duration::from_secs(15)).await;
    assert!(frames_grow(&stream).await);
    let pid = pusher.id().unwrap().to_string();
    // The shell's own `kill`: no procps needed.
    let (ok, _, err) = run_program("sh", &["-c", &format!("kill -STOP {pid}")], Duration::from_secs(5)).await;
    assert!(ok, "kill -STOP: {err}");
    let stopped = Instant::now();
    assert!(wait_for(Duration::from_secs(10), || gw.hub.get("live/quiet").is_none()).await, "still live");
    let took = stopped.elapsed();
    assert!(took >= Duration::from_millis(1500), "closed after {took:?}, before the timeout");
    assert_eq!(gw.rtsp_ingest.snapshot().silent_closed, 1);
    let _ = run_program("sh", &["-c", &format!("kill -CONT {pid}")], Duration::from_secs(5)).await;
    drop(pusher);
    gw.stop().await;
}

/// Sends one RTSP request on `sock` and returns the response head. Part of the hand-written
/// pusher below (no real client writes PCMA/8000 over 16 kHz samples).
async fn rtsp_request(sock: &mut tokio::net::TcpStream, req: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(sock.read(&mut b).await.unwrap(), 1, "connection closed: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A G.711 publisher whose SDP says PCMA/8000 while it sends 16 kHz samples (RTP timestamps
/// stepping at 8 kHz, twice the bytes per step): the media stage's rate detector corrects the
/// declared rate (D55), so a player hears the 1 kHz tone at 1 kHz, not 500 Hz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g711_declared_8k_but_sampled_at_16k_comes_out_at_the_right_pitch() {
    use tokio::io::AsyncWriteExt;
    if !tools("g711_declared_8k_but_sampled_at_16k_comes_out_at_the_right_pitch", &["ffmpeg"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let alaw = dir.path().join("tone16k.alaw");
    let tone = "sine=frequency=1000:sample_rate=16000:duration=12";
    let args = ["-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi", "-i", tone, "-ac", "1", "-f", "alaw"];
    let (ok, _, err) = run_program(
        "ffmpeg",
        &args.iter().copied().chain([alaw.to_str().unwrap()]).collect::<Vec<_>>(),
        Duration::from_secs(20),
    )
    .await;
    assert!(ok, "{err}");
    let samples = std::fs::read(&alaw).unwrap();

    let gw = start(test_config()).await;
    let rtsp = gw.rtsp_addr.unwrap();
    let url = format!("rtsp://{rtsp}/live/g711");
    let mut sock = tokio::net::TcpStream::connect(rtsp).await.unwrap();
    let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=tone\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 0 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=control:trackID=0\r\n";
    let r = rtsp_request(
        &mut sock,
        format!(
            "ANNOUNCE {url} RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ),
    )
    .await;
    assert!(r.starts_with("RTSP/1.0 200"), "{r}");
    let transport = "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record";
    let r =
        rtsp_request(&mut sock, format!("SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 2\r\nTransport: {transport}\r\n\r\n"))
            .await;
    assert!(r.starts_with("RTSP/1.0 200"), "{r}");
    let session = r.lines().find_map(|l| l.strip_prefix("Session: ")).unwrap().split(';').next().unwrap().to_string();
    let r = rtsp_request(&mut sock, format!("RECORD {url} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n")).await;
    assert!(r.starts_with("RTSP/1.0 200"), "{r}");
    // 20 ms of 16 kHz samples per packet (320 bytes), timestamps stepping 160 (the declared 8 kHz).
    let pusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for (i, chunk) in samples.chunks(320).enumerate() {
            tick.tick().await;
            let mut pkt = Vec::with_capacity(4 + 12 + chunk.len());
            pkt.extend_from_slice(&[b'$', 0]);
            pkt.extend_from_slice(&((12 + chunk.len()) as u16).to_be_bytes());
            gbgate::proto::rtp::write_packet(&mut pkt, 8, true, i as u16, 1000 + i as u32 * 160, 0x1234, chunk);
            if sock.write_all(&pkt).await.is_err() {
                return;
            }
        }
    });
    wait_live(&gw, "live/g711", Duration::from_secs(5)).await;
    let args: Vec<String> = ["-hide_banner", "-nostdin", "-rtsp_transport", "tcp", "-i", &url, "-vn", "-t", "6"]
        .into_iter()
        .chain(["-f", "s16le", "-ac", "1", "-"])
        .map(String::from)
        .collect();
    let (ok, out, err) = run_program_bytes("ffmpeg", &args, Duration::from_secs(30)).await;
    assert!(ok, "player: {err}");
    let line = err.lines().find(|l| l.contains("Audio:")).unwrap_or_default().to_string();
    assert!(line.contains("aac") && line.contains("11025 Hz") && line.contains("mono"), "{line}");
    let pcm: Vec<f32> = out.chunks_exact(2).map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0).collect();
    assert!(pcm.len() > 4 * 11_025, "{} samples", pcm.len());
    // The first second may still be at the declared rate (D55): measure after it.
    let f = tone_frequency(&pcm[2 * 11_025..pcm.len() - 11_025 / 2], 11_025);
    let api = api_stream(&gw, "live/g711").await;
    println!("tone at {f:.1} Hz; media {}", api["media"]);
    assert!((f - 1000.0).abs() < 10.0, "tone at {f:.1} Hz (500 Hz: the declared 8 kHz was believed)");
    assert_eq!(api["media"]["g711_rate"], 16000, "{api}");
    pusher.abort();
    gw.stop().await;
}

/// B-frames (x264 with pyramid B-frames, `-c copy`-style pushes of most files): RTP carries no
/// decode time, the depacketizer derives one (D77), so the timestamp repair sees no step back
/// and a player gets every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_pushes_h264_with_b_frames() {
    if !tools("ffmpeg_pushes_h264_with_b_frames", &["ffmpeg"]) {
        return;
    }
    let gw = start(test_config()).await;
    let url = format!("rtsp://{}/live/bframes", gw.rtsp_addr.unwrap());
    let video = ["-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-g", "50", "-pix_fmt", "yuv420p"];
    let _pusher = ffmpeg_push(&url, "tcp", &video, AAC, 30);
    let stream = wait_live(&gw, "live/bframes", Duration::from_secs(15)).await;
    assert!(frames_grow(&stream).await);
    let (frames, err) = play_frames(url, 4).await;
    assert!(frames >= 4 * 25 * 9 / 10, "the player got {frames} frames in 4 s: {err}");
    let api = api_stream(&gw, "live/bframes").await;
    let repair = &api["media"]["repair"];
    let counts = ["video_back_steps", "video_jumps", "video_pts_fixed"].map(|k| repair[k].as_u64());
    assert_eq!(counts, [Some(0); 3], "{api}");
    gw.stop().await;
}

/// GStreamer pushing H.265 (x265, with B-frames) and G.711 µ-law over TCP; ffprobe reads HEVC and
/// AAC 11025 Hz mono back, and the B-frames cost no frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_pushes_h265_with_b_frames_and_pcmu() {
    let test = "gstreamer_pushes_h265_with_b_frames_and_pcmu";
    if !tools(test, &["gst-launch-1.0", "gst-inspect-1.0", "ffprobe", "ffmpeg"])
        || !gst_elements(test, &["rtspclientsink", "x265enc", "mulawenc"])
    {
        return;
    }
    let gw = start(test_config()).await;
    let name = "live/gst-hevc";
    let url = format!("rtsp://{}/{name}", gw.rtsp_addr.unwrap());
    let pipeline = format!(
        "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=25/1 \
         ! x265enc speed-preset=ultrafast key-int-max=25 option-string=bframes=3 ! h265parse ! queue ! s. \
         audiotestsrc is-live=true freq=1000 ! audio/x-raw,rate=8000,channels=1 ! mulawenc ! queue ! s. \
         rtspclientsink name=s protocols=tcp location={url}"
    );
    let mut c = Command::new("gst-launch-1.0");
    c.arg("-q").args(pipeline.split_whitespace());
    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let _pusher = c.spawn().expect("gst-launch-1.0");
    let stream = wait_live(&gw, name, Duration::from_secs(15)).await;
    assert!(frames_grow(&stream).await, "{name}: no video flows");
    assert!(wait_for(Duration::from_secs(10), || stream.stats().audio.is_some_and(|a| a.frames > 0)).await);
    let streams = probe(&url).await;
    assert_codecs(&streams, "hevc", name);
    let (frames, err) = play_frames(url, 4).await;
    assert!(frames >= 4 * 25 * 9 / 10, "the player got {frames} frames in 4 s: {err}");
    let api = api_stream(&gw, name).await;
    assert_eq!(api["audio"]["codec"], "g711u", "{api}");
    // The SPS gives the reorder depth (D77): no frame shown before it is decoded.
    let repair = &api["media"]["repair"];
    assert_eq!((repair["video_back_steps"].as_u64(), repair["video_pts_fixed"].as_u64()), (Some(0), Some(0)), "{api}");
    println!("{name}: {streams:?}; repair {}", api["media"]["repair"]);
    gw.stop().await;
}

/// UDP receive port pairs are bounded for all publishers together: with room for one, a two-track
/// UDP publisher's second SETUP gets 461, the publisher gives up, and everything it held is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_receive_ports_are_bounded() {
    if !tools("udp_receive_ports_are_bounded", &["ffmpeg"]) {
        return;
    }
    let mut cfg = test_config();
    cfg.rtsp.max_record_udp_tracks = 1;
    let gw = start(cfg).await;
    let url = format!("rtsp://{}/live/ports", gw.rtsp_addr.unwrap());
    let (ok, err) = outcome(ffmpeg_push(&url, "udp", H264, AAC, 30), Duration::from_secs(15)).await;
    assert!(!ok && err.contains("461"), "the publisher was not refused: {err}");
    let freed = || {
        let c = gw.rtsp_ingest.snapshot();
        c.udp_tracks == 0 && c.udp_refused == 1 && c.publishers == 0
    };
    assert!(wait_for(Duration::from_secs(5), freed).await, "{:?}", gw.rtsp_ingest.snapshot());
    assert!(wait_for(Duration::from_secs(5), || gw.hub.get("live/ports").is_none()).await);
    // Over TCP the same publisher needs no port.
    let _pusher = ffmpeg_push(&url, "tcp", H264, AAC, 30);
    let stream = wait_live(&gw, "live/ports", Duration::from_secs(15)).await;
    assert!(frames_grow(&stream).await);
    gw.stop().await;
}

/// Raw RTP recording (D89) covers RTSP publishers too: every track's packets, as they arrived,
/// in the `[u16 length][RTP]` file, told apart by payload type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtsp_push_is_recorded_with_both_tracks() {
    if !tools("an_rtsp_push_is_recorded_with_both_tracks", &["ffmpeg"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = test_config();
    cfg.record.dir = Some(tmp.path().to_path_buf());
    cfg.record.streams = vec!["live/*".into()];
    let gw = start(cfg).await;
    let name = "live/recorded";
    let url = format!("rtsp://{}/{name}", gw.rtsp_addr.unwrap());
    let pusher = ffmpeg_push(&url, "tcp", H264, AAC, 30);
    let stream = wait_live(&gw, name, Duration::from_secs(15)).await;
    assert!(frames_grow(&stream).await, "no video flows");
    drop(pusher);
    assert!(
        wait_for(Duration::from_secs(10), || gw.hub.get(name).is_none()).await,
        "the stream outlived its publisher"
    );
    gw.hub.diag().recorder.expect("recording is configured").flush();
    let dir = tmp.path().join("live_recorded");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")).flatten().collect();
    assert!(!files.is_empty(), "no recording in {dir:?}");
    let mut by_pt = std::collections::BTreeMap::<u8, usize>::new();
    for f in &files {
        for p in read_rtp_dump(&f.path()) {
            assert!(p.len() >= 12 && p[0] >> 6 == 2, "not an RTP packet: {p:?}");
            *by_pt.entry(p[1] & 0x7f).or_default() += 1;
        }
    }
    // ffmpeg's RTSP muxer: H.264 as payload type 96, AAC as 97.
    assert!(by_pt.get(&96).copied().unwrap_or(0) > 25, "video packets recorded: {by_pt:?}");
    assert!(by_pt.get(&97).copied().unwrap_or(0) > 10, "audio packets recorded: {by_pt:?}");
    gw.stop().await;
}
