//! HTTP-FLV and WebSocket-FLV end to end on 127.0.0.1: GB/RTP streams fed with `gbgate send`, read
//! by ffprobe 5.1, a modern ffmpeg (Enhanced FLV H.265) and a WebSocket client (tokio-tungstenite),
//! plus the play rules, the counters and a stalled player beside a healthy one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::config::Config;
use gbgate::server::Gateway;
use gbgate::sim::send::{send_file, SendOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FRAMES_PER_PASS: usize = 50;

fn name_of(ssrc: u32) -> String {
    format!("rtp/{ssrc:08X}")
}

/// Waits until the stream is live (its first keyframe is in the GOP cache).
async fn wait_live(gw: &Gateway, name: &str) {
    let hub = gw.hub.clone();
    let name = name.to_string();
    assert!(
        wait_for(Duration::from_secs(10), move || hub.get(&name).is_some_and(|s| s.has_keyframe())).await,
        "the stream never went live"
    );
}

/// Runs a command to completion off the runtime, with a time limit; returns (ok, stdout, stderr).
async fn run(mut cmd: Command, limit: Duration) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() || start.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                return (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap()
}

fn ffprobe(input: &str) -> Command {
    let mut c = Command::new("ffprobe");
    c.args(["-v", "error", "-count_frames", "-show_entries"])
        .arg("stream=index,codec_name,codec_type,width,height,sample_rate,r_frame_rate,nb_read_frames:packet=stream_index,pts,flags")
        .args(["-of", "json", input]);
    c
}

struct Probe {
    streams: Vec<Value>,
    packets: Vec<Value>,
}

impl Probe {
    fn parse(stdout: &str) -> Probe {
        let v: Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("ffprobe JSON: {e}: {stdout}"));
        Probe {
            streams: v["streams"].as_array().cloned().unwrap_or_default(),
            packets: v["packets"].as_array().cloned().unwrap_or_default(),
        }
    }
    fn stream(&self, kind: &str) -> Option<&Value> {
        self.streams.iter().find(|s| s["codec_type"] == kind)
    }
    fn frames(&self, kind: &str) -> usize {
        self.stream(kind).map(|s| s["nb_read_frames"].as_str().unwrap().parse().unwrap()).unwrap_or(0)
    }
    fn video_packets(&self) -> Vec<&Value> {
        let idx = self.stream("video").unwrap()["index"].clone();
        self.packets.iter().filter(|p| p["stream_index"] == idx).collect()
    }
}

fn flv_url(http: SocketAddr, name: &str) -> String {
    format!("http://{http}/{name}.flv")
}

/// ffprobe reads HTTP-FLV of an RTP stream: H.264 352x288 at 25 fps, the G.711 as AAC, every
/// frame from the cached GOP on (it joins before the second keyframe), the first one a keyframe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffprobe_reads_h264_and_aac_at_25_fps_from_the_gop_cache() {
    if !require_tool("ffprobe_reads_h264_and_aac_at_25_fps_from_the_gop_cache", "ffprobe") {
        return;
    }
    let gw = start(test_config()).await;
    let http = gw.http_addr.expect("[http] is enabled by default");
    let ssrc = 0x0C000001;
    let loops = 3;
    let sender = send_in_background(&gw, own_fixture("h264_g711a_8k.rtp"), ssrc, loops);
    wait_live(&gw, &name_of(ssrc)).await;
    let (ok, out, err) = run(ffprobe(&flv_url(http, &name_of(ssrc))), Duration::from_secs(30)).await;
    sender.await.unwrap();
    gw.stop().await;
    assert!(ok, "ffprobe failed: {err}");
    let p = Probe::parse(&out);
    let v = p.stream("video").expect("video");
    assert_eq!(
        (v["codec_name"].as_str(), v["width"].as_i64(), v["height"].as_i64(), v["r_frame_rate"].as_str()),
        (Some("h264"), Some(352), Some(288), Some("25/1")),
        "{out}"
    );
    let a = p.stream("audio").expect("G.711 leaves as AAC");
    assert_eq!((a["codec_name"].as_str(), a["sample_rate"].as_str()), (Some("aac"), Some("11025")));
    assert_eq!(p.frames("video"), FRAMES_PER_PASS * loops as usize);
    let video = p.video_packets();
    assert!(video[0]["flags"].as_str().unwrap().starts_with('K'), "the first frame is a keyframe: {:?}", video[0]);
    let pts: Vec<i64> = video.iter().map(|p| p["pts"].as_i64().unwrap()).collect();
    assert!(pts.windows(2).all(|w| w[1] > w[0]), "PTS not increasing: {pts:?}");
}

/// The modern ffmpeg from the `imageio-ffmpeg` PyPI package (reads Enhanced FLV HEVC), if any.
fn modern_ffmpeg() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import imageio_ffmpeg;print(imageio_ffmpeg.get_ffmpeg_exe())"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.is_file().then_some(p)
}

/// A modern ffmpeg decodes H.265 (Enhanced FLV, FourCC hvc1) and AAC over HTTP-FLV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_ffmpeg_decodes_enhanced_flv_hevc_and_aac() {
    let Some(ffmpeg) = modern_ffmpeg() else {
        missing("modern_ffmpeg_decodes_enhanced_flv_hevc_and_aac", "imageio-ffmpeg (pip install imageio-ffmpeg)");
        return;
    };
    let gw = start(test_config()).await;
    let http = gw.http_addr.unwrap();
    let ssrc = 0x0C000002;
    let sender = send_in_background(&gw, own_fixture("h265_aac_16k.rtp"), ssrc, 2);
    wait_live(&gw, &name_of(ssrc)).await;
    let mut c = Command::new(ffmpeg);
    c.args(["-hide_banner", "-nostats", "-i", &flv_url(http, &name_of(ssrc)), "-f", "null", "-"]);
    c.args(["-stats", "-stats_period", "60"]);
    let (_, _, err) = run(c, Duration::from_secs(40)).await;
    sender.await.unwrap();
    gw.stop().await;
    let frames: usize =
        err.rsplit("frame=").next().and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(err.contains("Video: hevc") && err.contains("352x288") && err.contains("25 fps"), "{err}");
    assert!(err.contains("Audio: aac") && err.contains("11025 Hz"), "{err}");
    assert_eq!(frames, 2 * FRAMES_PER_PASS, "{err}");
}

/// One FLV tag: type, timestamp (ms), body.
#[derive(Debug)]
struct Tag {
    kind: u8,
    ts: u32,
    body: Vec<u8>,
}

/// Parses an FLV byte stream (header, tags); a trailing partial tag is ignored.
fn parse_flv(b: &[u8]) -> (u8, Vec<Tag>) {
    assert!(b.len() >= 13 && &b[..3] == b"FLV", "not FLV: {:?}", &b[..b.len().min(16)]);
    let flags = b[4];
    let mut tags = Vec::new();
    let mut i = 13;
    while i + 11 <= b.len() {
        let size = u32::from_be_bytes([0, b[i + 1], b[i + 2], b[i + 3]]) as usize;
        if i + 11 + size + 4 > b.len() {
            break;
        }
        let ts = u32::from_be_bytes([b[i + 7], b[i + 4], b[i + 5], b[i + 6]]);
        let body = b[i + 11..i + 11 + size].to_vec();
        let prev = u32::from_be_bytes(b[i + 11 + size..i + 15 + size].try_into().unwrap()) as usize;
        assert_eq!(prev, size + 11, "previous tag size");
        tags.push(Tag { kind: b[i], ts, body });
        i += 11 + size + 4;
    }
    (flags, tags)
}

/// Video tags that carry frames (not sequence headers), as (keyframe, timestamp).
fn video_frames(tags: &[Tag]) -> Vec<(bool, u32)> {
    tags.iter()
        .filter(|t| t.kind == 9)
        .filter(|t| {
            let b = &t.body;
            if b[0] & 0x80 != 0 {
                b[0] & 0x0F != 0 // Enhanced: packet type 0 is the sequence start
            } else {
                b[1] != 0 // AVC/legacy HEVC: packet type 0 is the sequence header
            }
        })
        .map(|t| ((t.body[0] >> 4) & 0x7 == 1, t.ts))
        .collect()
}

/// Reads `GET path` on a raw socket (HTTP/1.1, chunked) until `enough` holds for the body so far
/// or `limit` passes; returns the head, the de-chunked body and when the first video frame had
/// arrived, after the request.
async fn read_flv(
    http: SocketAddr,
    path: &str,
    limit: Duration,
    enough: impl Fn(&[u8]) -> bool,
) -> (String, Vec<u8>, Option<Duration>) {
    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    let asked = Instant::now();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {http}\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    let mut first_byte = None;
    let (mut head, mut body) = (None::<String>, Vec::new());
    let mut pos = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        raw.extend_from_slice(&buf[..n]);
        if head.is_none() {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                head = Some(String::from_utf8_lossy(&raw[..end]).into_owned());
                pos = end + 4;
            }
        }
        let Some(h) = &head else { continue };
        if !h.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            body.extend_from_slice(&raw[pos..]);
            pos = raw.len();
        } else {
            // De-chunk what is complete.
            while let Some(eol) = raw[pos..].windows(2).position(|w| w == b"\r\n") {
                let size =
                    usize::from_str_radix(std::str::from_utf8(&raw[pos..pos + eol]).unwrap().trim(), 16).unwrap();
                if raw.len() < pos + eol + 2 + size + 2 {
                    break;
                }
                body.extend_from_slice(&raw[pos + eol + 2..pos + eol + 2 + size]);
                pos += eol + 2 + size + 2;
                if size == 0 {
                    // The response ended (the stream did).
                    return (head.unwrap_or_default(), body, first_byte.or(Some(asked.elapsed())));
                }
            }
        }
        if first_byte.is_none() && body.len() > 13 && !video_frames(&parse_flv(&body).1).is_empty() {
            first_byte = Some(asked.elapsed());
        }
        if enough(&body) {
            break;
        }
    }
    (head.unwrap_or_default(), body, first_byte)
}

/// A player joining a live stream mid-GOP gets the FLV header, `onMetaData`, the sequence
/// headers and then the cached GOP, which starts with a keyframe; the time to that first frame
/// is printed (docs/performance.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_joining_mid_gop_starts_at_the_cached_keyframe() {
    let gw = start(test_config()).await;
    let http = gw.http_addr.unwrap();
    let ssrc = 0x0C000003;
    let name = name_of(ssrc);
    let sender = send_in_background(&gw, own_fixture("h264_g711a_8k.rtp"), ssrc, 4);
    wait_live(&gw, &name).await;
    // Well into the first GOP (25 fps, a keyframe every 50 frames).
    let hub = gw.hub.clone();
    let n = name.clone();
    assert!(wait_for(Duration::from_secs(10), move || hub.get(&n).is_some_and(|s| s.gop_cache_usage().0 > 30)).await);
    let has_frames = |b: &[u8]| b.len() > 13 && video_frames(&parse_flv(b).1).len() >= 10;
    let (head, body, first) = read_flv(http, &format!("/{name}.flv"), Duration::from_secs(10), has_frames).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-type: video/x-flv"), "{head}");
    assert!(lower.contains("access-control-allow-origin: *"), "{head}");
    let (flags, tags) = parse_flv(&body);
    assert_eq!(flags, 5, "audio and video");
    assert_eq!(tags[0].kind, 18, "onMetaData first");
    assert!(tags[0].body.windows(10).any(|w| w == b"onMetaData"));
    let first_video = tags.iter().find(|t| t.kind == 9).unwrap();
    assert_eq!(&first_video.body[..2], &[0x17, 0], "the AVC sequence header before any frame");
    let frames = video_frames(&tags);
    assert!(frames[0].0, "the first frame is a keyframe: {frames:?}");
    assert_eq!(frames[0].1, 0, "timestamps start at 0");
    assert!(frames.len() >= 10 && frames[1..].iter().all(|f| !f.0), "the GOP follows: {frames:?}");
    eprintln!("HTTP-FLV time to first frame (GOP cache): {:?}", first.unwrap());
    sender.abort();
    gw.stop().await;
}

/// WebSocket-FLV: a real WebSocket client (tokio-tungstenite) reads binary messages of the same
/// FLV byte stream; ffprobe reads the saved bytes as H.264 and AAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_flv_carries_the_same_stream_ffprobe_reads_it() {
    use futures_util::StreamExt;
    if !require_tool("websocket_flv_carries_the_same_stream_ffprobe_reads_it", "ffprobe") {
        return;
    }
    let gw = start(test_config()).await;
    let http = gw.http_addr.unwrap();
    let ssrc = 0x0C000004;
    let name = name_of(ssrc);
    let loops = 2;
    let sender = send_in_background(&gw, own_fixture("h264_g711a_8k.rtp"), ssrc, loops);
    wait_live(&gw, &name).await;
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://{http}/{name}.flv")).await.expect("WebSocket handshake");
    assert_eq!(resp.status().as_u16(), 101);
    let mut bytes = Vec::new();
    let mut messages = 0;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
        match m {
            Ok(tokio_tungstenite::tungstenite::Message::Binary(b)) => {
                messages += 1;
                bytes.extend_from_slice(&b);
            }
            Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    sender.await.unwrap();
    gw.stop().await;
    assert!(messages > 1, "binary messages");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ws.flv");
    std::fs::write(&file, &bytes).unwrap();
    let (ok, out, err) = run(ffprobe(file.to_str().unwrap()), Duration::from_secs(30)).await;
    assert!(ok, "ffprobe failed: {err}");
    let p = Probe::parse(&out);
    let v = p.stream("video").expect("video");
    assert_eq!((v["codec_name"].as_str(), v["r_frame_rate"].as_str()), (Some("h264"), Some("25/1")));
    assert_eq!(p.stream("audio").and_then(|a| a["codec_name"].as_str()), Some("aac"));
    assert_eq!(p.frames("video"), FRAMES_PER_PASS * loops as usize, "every frame, from the GOP cache on");
}

/// H.265 as the legacy codec id 12 when the player asks (`?hevc=legacy`), Enhanced FLV otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hevc_form_follows_the_query_parameter() {
    let gw = start(test_config()).await;
    let http = gw.http_addr.unwrap();
    let ssrc = 0x0C000005;
    let name = name_of(ssrc);
    let sender = send_in_background(&gw, own_fixture("h265_aac_16k.rtp"), ssrc, 4);
    wait_live(&gw, &name).await;
    let enough = |b: &[u8]| b.len() > 13 && video_frames(&parse_flv(b).1).len() >= 3;
    let (_, legacy, _) = read_flv(http, &format!("/{name}.flv?hevc=legacy"), Duration::from_secs(10), enough).await;
    let (_, enhanced, _) = read_flv(http, &format!("/{name}.flv"), Duration::from_secs(10), enough).await;
    let (status, _, _) = http_raw(http, format!("GET /{name}.flv?hevc=h265 HTTP/1.0\r\n\r\n")).await;
    sender.abort();
    gw.stop().await;
    let video = |b: &[u8]| parse_flv(b).1.into_iter().filter(|t| t.kind == 9).collect::<Vec<_>>();
    let l = video(&legacy);
    assert_eq!(&l[0].body[..2], &[0x1C, 0], "legacy sequence header (codec id 12)");
    assert_eq!(l[1].body[0], 0x1C, "legacy keyframe");
    let e = video(&enhanced);
    assert_eq!(&e[0].body[..5], b"\x90hvc1", "Enhanced sequence start");
    assert_eq!(&e[1].body[1..5], b"hvc1");
    assert_eq!(status, 400, "an unknown form is refused");
}

/// An unknown stream is 404; a play refused by `[auth]` is 403 (counted), and the same request
/// with the key plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_stream_404_and_auth_play_denial_403() {
    let mut cfg: Config = test_config();
    cfg.auth.play = true;
    cfg.auth.loopback_exempt = false;
    cfg.auth.keys = vec!["k3y-for-players".into()];
    let gw = start(cfg).await;
    let http = gw.http_addr.unwrap();
    let ssrc = 0x0C000006;
    let name = name_of(ssrc);
    let (status, _, _) = http_raw(http, "GET /nope/x.flv?key=k3y-for-players HTTP/1.0\r\n\r\n".to_string()).await;
    assert_eq!(status, 404);
    let sender = send_in_background(&gw, own_fixture("h264_g711a_8k.rtp"), ssrc, 4);
    wait_live(&gw, &name).await;
    let (status, head, _) = http_raw(http, format!("GET /{name}.flv HTTP/1.0\r\n\r\n")).await;
    assert_eq!(status, 403, "{head}");
    let (status, _, _) = http_raw(http, format!("GET /{name}.flv?key=wrong HTTP/1.0\r\n\r\n")).await;
    assert_eq!(status, 403);
    let has_frame = |b: &[u8]| b.len() > 13 && !video_frames(&parse_flv(b).1).is_empty();
    let (head, _, _) =
        read_flv(http, &format!("/{name}.flv?key=k3y-for-players"), Duration::from_secs(10), has_frame).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let metrics = metrics_text(gw.api_addr).await;
    assert!(metrics.contains("gbgate_auth_refused_total{protocol=\"http-flv\"} 2"), "{metrics}");
    sender.abort();
    gw.stop().await;
}

async fn metrics_text(api: SocketAddr) -> String {
    http_raw(api, format!("GET /metrics HTTP/1.0\r\nHost: {api}\r\n\r\n")).await.2
}

/// Players are counted in `/api/v1/streams` (`players`) and `/metrics` (`gbgate_players`), by
/// protocol, while they play and not after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_are_counted_in_the_api_and_metrics() {
    use futures_util::StreamExt;
    let gw = start(test_config()).await;
    let (http, api) = (gw.http_addr.unwrap(), gw.api_addr);
    let ssrc = 0x0C000007;
    let name = name_of(ssrc);
    let sender = send_in_background(&gw, own_fixture("h264_g711a_8k.rtp"), ssrc, 5);
    wait_live(&gw, &name).await;
    let mut player = tokio::net::TcpStream::connect(http).await.unwrap();
    player.write_all(format!("GET /{name}.flv HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/{name}.flv")).await.unwrap();
    let _ = ws.next().await;
    let counted = |s: &[Value]| {
        s.iter().any(|s| s["name"] == name && s["players"]["http-flv"] == 1 && s["players"]["ws-flv"] == 1)
    };
    let list = wait_streams(api, Duration::from_secs(10), counted).await;
    assert!(counted(&list), "{list:?}");
    let metrics = metrics_text(api).await;
    assert!(metrics.contains("gbgate_players{protocol=\"http-flv\"} 1"), "{metrics}");
    assert!(metrics.contains("gbgate_players{protocol=\"ws-flv\"} 1"), "{metrics}");
    drop(player);
    drop(ws);
    let gone =
        |s: &[Value]| s.iter().any(|s| s["name"] == name && s["players"].as_object().is_some_and(|p| p.is_empty()));
    let list = wait_streams(api, Duration::from_secs(10), gone).await;
    assert!(gone(&list), "players leave with their connections: {list:?}");
    sender.abort();
    gw.stop().await;
}

/// A player that stops reading does not slow another: the healthy one gets every frame at the
/// stream's pace, and the stalled one is dropped while the stream is still live, once its socket
/// has accepted nothing for `[http] write_timeout` (counted as timed out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_player_does_not_slow_another() {
    let mut cfg = test_config();
    cfg.http.write_timeout = gbgate::config::HumanDuration(Duration::from_secs(1));
    let gw = start(cfg).await;
    let (http, api) = (gw.http_addr.unwrap(), gw.api_addr);
    let ssrc = 0x0C000008;
    let name = name_of(ssrc);
    // 16 s of 1280x720 (about 110 kB/s): more than the stalled player's socket buffers hold.
    let loops = 8;
    let sender = send_in_background(&gw, own_fixture("h264_g711u_16k.rtp"), ssrc, loops);
    wait_live(&gw, &name).await;
    // The stalled player: a tiny receive buffer, and it never reads.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stalled = sock.connect(http).await.unwrap();
    stalled.write_all(format!("GET /{name}.flv HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let started = Instant::now();
    let path = format!("/{name}.flv");
    let healthy = tokio::spawn(async move { read_flv(http, &path, Duration::from_secs(40), |_| false).await });
    // Wait for the stalled connection to be closed by the server (EOF or reset once read).
    let hub = gw.hub.clone();
    let n = name.clone();
    let dropped_live = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let counts = hub.get(&n).map(|s| s.subscriber_counts());
            let players = counts.as_ref().and_then(|c| c.get("http-flv").copied()).unwrap_or(0);
            if players < 2 {
                return hub.get(&n).is_some();
            }
        }
    })
    .await
    .expect("the stalled player was dropped");
    assert!(dropped_live, "dropped while the stream was live, not when it ended");
    let dropped_after = started.elapsed();
    let (_, body, _) = healthy.await.unwrap();
    let took = started.elapsed();
    let frames = video_frames(&parse_flv(&body).1);
    let total = FRAMES_PER_PASS * loops as usize;
    // It joined in the first GOP: it gets everything from the first keyframe on, in real time.
    assert_eq!(frames.len(), total, "every frame reached the healthy player");
    assert!(took < Duration::from_secs(total as u64 / 25 + 3), "at the stream's pace: {took:?}");
    let v = wait_json(api, "/api/v1/listeners", Duration::from_secs(5), |v| v["http"]["timed_out"].as_u64() >= Some(1))
        .await;
    assert!(v["http"]["timed_out"].as_u64() >= Some(1), "{v}");
    eprintln!("stalled player dropped after {dropped_after:?}");
    let mut buf = vec![0u8; 1 << 20];
    let eof = async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), eof).await.expect("its connection is closed");
    sender.await.unwrap();
    gw.stop().await;
}

/// Starts a fixture sender when a player asks for `rtp/0C0000A1` (as the GB layer INVITEs a
/// camera, or the relay pulls), and refuses `rtp/0C0000A2` with a cause.
struct SendOnDemand {
    hub: std::sync::Arc<gbgate::hub::Hub>,
    rtp: SocketAddr,
    asked: std::sync::Mutex<Vec<String>>,
}

impl gbgate::hub::StreamDemand for SendOnDemand {
    fn handles(&self, name: &str) -> bool {
        name == "rtp/0C0000A1" || name == "rtp/0C0000A2"
    }
    fn demand(&self, name: &str) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        self.asked.lock().unwrap().push(name.to_string());
        let (hub, rtp, name) = (self.hub.clone(), self.rtp, name.to_string());
        Box::pin(async move {
            if name.ends_with("A2") {
                return Err("the camera did not answer".into());
            }
            let opts = SendOptions {
                to: rtp,
                tcp: true,
                count: 1,
                ssrc_base: Some(0x0C0000A1),
                loops: 3,
                duration: None,
                flood: false,
                linger: Duration::from_millis(200),
            };
            tokio::spawn(async move { send_file(&own_fixture("h264_g711a_8k.rtp"), &opts).await });
            let live = wait_for(Duration::from_secs(10), || hub.get(&name).is_some_and(|s| s.has_keyframe())).await;
            if live {
                Ok(())
            } else {
                Err("no keyframe".into())
            }
        })
    }
}

/// A player of a stream that is not live starts it on demand (the hub's handlers: GB INVITE,
/// pulls) and plays it from its first keyframe; a failed start is 503 with its cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_starts_its_stream_on_demand() {
    let gw = start(test_config()).await;
    let http = gw.http_addr.unwrap();
    let demand = std::sync::Arc::new(SendOnDemand { hub: gw.hub.clone(), rtp: gw.rtp_addr, asked: Default::default() });
    gw.hub.add_demand(demand.clone());
    let has_frames = |b: &[u8]| b.len() > 13 && video_frames(&parse_flv(b).1).len() >= 5;
    let (head, body, _) = read_flv(http, "/rtp/0C0000A1.flv", Duration::from_secs(15), has_frames).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let frames = video_frames(&parse_flv(&body).1);
    assert!(frames.len() >= 5 && frames[0].0, "{frames:?}");
    let (status, _, body) = http_raw(http, "GET /rtp/0C0000A2.flv HTTP/1.0\r\n\r\n".to_string()).await;
    assert_eq!(status, 503);
    assert!(body.contains("the camera did not answer"), "{body}");
    assert_eq!(*demand.asked.lock().unwrap(), ["rtp/0C0000A1", "rtp/0C0000A2"]);
    gw.stop().await;
}

/// The cc's `on_play` hook decides (it replaces `[auth]`, which alone would refuse here), and is
/// told the protocol: `http-flv` or `ws-flv`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_on_play_hook_decides_for_flv_players() {
    use axum::extract::State;
    type Asked = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;
    async fn on_play(State(asked): State<Asked>, body: axum::body::Bytes) -> String {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let deny = body["params"].as_str().is_some_and(|p| p.contains("deny"));
        asked.lock().unwrap().push(body);
        serde_json::json!({"allow": !deny, "reason": "not on the list"}).to_string()
    }
    let asked: Asked = Default::default();
    let cc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cc_addr = cc.local_addr().unwrap();
    let app = axum::Router::new().route("/on_play", axum::routing::post(on_play)).with_state(asked.clone());
    tokio::spawn(async move { axum::serve(cc, app).await });

    let mut cfg = test_config();
    cfg.auth.play = true;
    cfg.auth.loopback_exempt = false;
    cfg.callbacks.on_play = Some(format!("http://{cc_addr}/on_play"));
    let gw = start(cfg).await;
    let http = gw.http_addr.unwrap();
    let ssrc = 0x0C000009;
    let name = name_of(ssrc);
    let sender = send_in_background(&gw, own_fixture("h264_g711a_8k.rtp"), ssrc, 4);
    wait_live(&gw, &name).await;
    let (status, _, body) = http_raw(http, format!("GET /{name}.flv?deny=1 HTTP/1.0\r\n\r\n")).await;
    assert_eq!(status, 403);
    assert!(body.contains("not on the list"), "{body}");
    let has_frame = |b: &[u8]| b.len() > 13 && !video_frames(&parse_flv(b).1).is_empty();
    let (head, _, _) = read_flv(http, &format!("/{name}.flv"), Duration::from_secs(10), has_frame).await;
    assert!(head.starts_with("HTTP/1.1 200"), "the cc's allow: {head}");
    let ws = tokio_tungstenite::connect_async(format!("ws://{http}/{name}.flv?deny=ws")).await;
    assert!(ws.is_err(), "the cc's deny refuses the WebSocket upgrade");
    let asked = asked.lock().unwrap().clone();
    let protocols: Vec<_> =
        asked.iter().map(|b| (b["protocol"].as_str().unwrap(), b["stream"] == name.as_str())).collect();
    assert_eq!(protocols, [("http-flv", true), ("http-flv", true), ("ws-flv", true)], "{asked:?}");
    sender.abort();
    gw.stop().await;
}
