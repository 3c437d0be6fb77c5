//! RTMP end to end with real peers on 127.0.0.1: ffprobe/ffmpeg play from gbgate, ffmpeg publishes
//! into gbgate, and gbgate pushes to an `ffmpeg -listen 1` origin (killed and restarted).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::config::{Config, PushConfig};
use gbgate::server::Gateway;
use gbgate::sim::send::{send_file, SendOptions};
use serde_json::Value;

const FRAMES_PER_PASS: usize = 50;

fn name_of(ssrc: u32) -> String {
    format!("rtp/{ssrc:08X}")
}

async fn start_with_rtmp(cfg: Config) -> (Gateway, SocketAddr) {
    let gw = start(cfg).await;
    let addr = gw.rtmp_addr.expect("RTMP is enabled by default");
    (gw, addr)
}

fn send_opts(to: SocketAddr, ssrc: u32, loops: u32) -> SendOptions {
    tcp_camera(to, ssrc, loops, Duration::from_millis(200))
}

/// Sends `fixture` over RTP/TCP in the background.
fn send_in_background(gw: &Gateway, fixture: &str, ssrc: u32, loops: u32) -> tokio::task::JoinHandle<()> {
    let path = own_fixture(&format!("{fixture}.rtp"));
    let opts = send_opts(gw.rtp_addr, ssrc, loops);
    tokio::spawn(async move {
        send_file(&path, &opts).await.expect("send fixture");
    })
}

/// Runs a command to completion off the runtime, with a time limit; returns (status ok, stdout, stderr).
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

/// ffprobe of a URL or file: streams (with nb_read_frames) and packets.
fn ffprobe_cmd(input: &str) -> Command {
    let mut c = Command::new("ffprobe");
    c.args(["-v", "error", "-count_frames", "-show_entries"])
        .arg("stream=index,codec_name,codec_type,width,height,sample_rate,channels,nb_read_frames:packet=stream_index,pts")
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

    /// PTS of one track's packets, in order.
    fn pts(&self, kind: &str) -> Vec<i64> {
        let idx = self.stream(kind).unwrap()["index"].clone();
        self.packets.iter().filter(|p| p["stream_index"] == idx).map(|p| p["pts"].as_i64().unwrap()).collect()
    }
}

fn assert_monotonic(pts: &[i64]) {
    assert!(pts.windows(2).all(|w| w[1] > w[0]), "PTS not increasing: {pts:?}");
}

/// Plays `fixture` over RTMP with ffprobe started before the stream is published, so the window
/// it sees is exactly what was sent.
async fn probe_fixture(fixture: &str, ssrc: u32, loops: u32) -> Probe {
    probe_fixture_with(test_config(), fixture, ssrc, loops).await
}

async fn probe_fixture_with(cfg: Config, fixture: &str, ssrc: u32, loops: u32) -> Probe {
    let (gw, rtmp) = start_with_rtmp(cfg).await;
    let asked = AskedFor::watch(&gw.hub);
    let url = format!("rtmp://{rtmp}/{}", name_of(ssrc));
    let probe = tokio::spawn(run(ffprobe_cmd(&url), Duration::from_secs(30)));
    // ffprobe connects and asks to play; the server waits for the stream to appear.
    asked.wait(&[name_of(ssrc)], Duration::from_secs(10)).await;
    send_in_background(&gw, fixture, ssrc, loops).await.unwrap();
    let (ok, out, err) = probe.await.unwrap();
    assert!(ok, "ffprobe failed: {err}");
    gw.stop().await;
    Probe::parse(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffprobe_plays_h264_g711a_352x288_with_aac_every_frame_in_order() {
    let loops = 3;
    let p = probe_fixture("h264_g711a_8k", 0x0BEBC201, loops).await;
    let v = p.stream("video").expect("video stream");
    assert_eq!(
        (v["codec_name"].as_str(), v["width"].as_i64(), v["height"].as_i64()),
        (Some("h264"), Some(352), Some(288))
    );
    let a = p.stream("audio").expect("G.711 leaves as AAC");
    assert_eq!((a["codec_name"].as_str(), a["sample_rate"].as_str()), (Some("aac"), Some("11025")));
    assert_monotonic(&p.pts("audio"));
    assert_eq!(p.frames("video"), FRAMES_PER_PASS * loops as usize);
    assert_monotonic(&p.pts("video"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffprobe_plays_h264_g711u_1280x720_every_frame_in_order() {
    let loops = 2;
    let p = probe_fixture("h264_g711u_16k", 0x0BEBC203, loops).await;
    let v = p.stream("video").expect("video stream");
    assert_eq!(
        (v["codec_name"].as_str(), v["width"].as_i64(), v["height"].as_i64()),
        (Some("h264"), Some(1280), Some(720))
    );
    let a = p.stream("audio").expect("G.711 leaves as AAC");
    assert_eq!((a["codec_name"].as_str(), a["sample_rate"].as_str()), (Some("aac"), Some("11025")));
    assert_eq!(p.frames("video"), FRAMES_PER_PASS * loops as usize);
    assert_monotonic(&p.pts("video"));
}

/// With per-frame writes (`merge_write = "0s"`) the player also gets every frame, in order; the
/// default merges 200 ms of media per write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_frame_writes_deliver_every_frame_in_order() {
    let mut cfg = test_config();
    cfg.rtmp.merge_write = gbgate::config::HumanDuration(Duration::ZERO);
    let loops = 2;
    let p = probe_fixture_with(cfg, "h264_g711a_8k", 0x0BEBC207, loops).await;
    assert_eq!(p.frames("video"), FRAMES_PER_PASS * loops as usize);
    assert_monotonic(&p.pts("video"));
}

/// The modern ffmpeg from the `imageio-ffmpeg` PyPI package (reads Enhanced RTMP HEVC), if any.
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

/// Decodes `input` with `ffmpeg -i input -f null -`; returns (stderr, frame count of the last progress line).
async fn ffmpeg_decode(ffmpeg: &Path, input: &str) -> (String, usize) {
    let mut c = Command::new(ffmpeg);
    c.args(["-hide_banner", "-nostats", "-i", input, "-f", "null", "-"]);
    c.arg("-stats").arg("-stats_period").arg("60");
    let (_, _, err) = run(c, Duration::from_secs(40)).await;
    let frames =
        err.rsplit("frame=").next().and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).unwrap_or(0);
    (err, frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_ffmpeg_decodes_hevc_and_aac_over_enhanced_rtmp() {
    let Some(ffmpeg) = modern_ffmpeg() else {
        missing("modern_ffmpeg_decodes_hevc_and_aac_over_enhanced_rtmp", "imageio-ffmpeg (pip install imageio-ffmpeg)");
        return;
    };
    let (gw, rtmp) = start_with_rtmp(test_config()).await;
    let asked = AskedFor::watch(&gw.hub);
    let ssrc = 0x0BEBC202;
    let url = format!("rtmp://{rtmp}/{}", name_of(ssrc));
    let ff = ffmpeg.clone();
    let dec = tokio::spawn(async move { ffmpeg_decode(&ff, &url).await });
    asked.wait(&[name_of(ssrc)], Duration::from_secs(10)).await;
    send_in_background(&gw, "h265_aac_16k", ssrc, 2).await.unwrap();
    let (err, frames) = dec.await.unwrap();
    gw.stop().await;
    assert!(err.contains("Video: hevc") && err.contains("352x288"), "{err}");
    assert!(err.contains("Audio: aac") && err.contains("11025 Hz") && err.contains("mono"), "{err}");
    assert_eq!(frames, 2 * FRAMES_PER_PASS, "{err}");
}

/// An origin on a port the kernel just had free; ffmpeg cannot bind port 0, so when another
/// process takes the port first (ffmpeg exits), it is tried again on another one.
async fn origin_on_free_port(out: &Path) -> (u16, std::process::Child) {
    for _ in 0..5 {
        let port = free_port();
        let mut origin = spawn_origin(port, out);
        if wait_listening(port, Duration::from_secs(10)).await && origin.try_wait().unwrap().is_none() {
            return (port, origin);
        }
        let _ = origin.kill();
        let _ = origin.wait();
    }
    panic!("the ffmpeg origin could not listen on any of 5 ports");
}

/// An `ffmpeg -listen 1` RTMP origin writing `out`.
fn spawn_origin(port: u16, out: &Path) -> std::process::Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-listen", "1", "-i"])
        .arg(format!("rtmp://127.0.0.1:{port}/live/x"))
        .args(["-c", "copy"])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg origin")
}

async fn wait_exit(mut child: std::process::Child, limit: Duration) -> bool {
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        while start.elapsed() < limit {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_ffmpeg_origin_is_exact_and_reconnects_after_the_origin_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (out1, out2) = (dir.path().join("out1.flv"), dir.path().join("out2.flv"));
    // Origin first; ffmpeg -listen only accepts once it listens.
    let (port, origin) = origin_on_free_port(&out1).await;

    let mut cfg = test_config();
    cfg.rtmp.push_timeout.0 = Duration::from_secs(3);
    cfg.rtmp.push = vec![PushConfig { stream: "rtp/*".into(), url: format!("rtmp://127.0.0.1:{port}/live/x") }];
    // Per-stream logs on (D90): the push's state goes to the stream's own log.
    cfg.log.dir = Some(dir.path().join("logs"));
    // The gateway runs the configured pushes itself.
    let gw = start(cfg).await;

    // First stream: pushed whole, origin writes out1.flv and exits when we unpublish.
    let loops = 2;
    send_in_background(&gw, "h264_g711a_8k", 0x0BEBC201, loops).await.unwrap();
    assert!(wait_exit(origin, Duration::from_secs(15)).await, "origin did not finish");
    let (ok, out, err) = run(ffprobe_cmd(out1.to_str().unwrap()), Duration::from_secs(20)).await;
    assert!(ok, "{err}");
    let p = Probe::parse(&out);
    assert_eq!(p.stream("video").unwrap()["codec_name"], "h264");
    assert_eq!(p.frames("video"), FRAMES_PER_PASS * loops as usize);
    assert_monotonic(&p.pts("video"));

    let first = p.frames("video");
    gw.hub.diag().logs.unwrap().flush();
    let log_dir = dir.path().join("logs").join(gbgate::diag::file_component(&name_of(0x0BEBC201)));
    let log: String =
        std::fs::read_dir(&log_dir).unwrap().map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap()).collect();
    assert!(log.contains(&format!(" push RTMP push to rtmp://127.0.0.1:{port}/live/x: pushing")), "{log}");
    assert!(log.contains(" player push joined"), "{log}");

    // Second stream: its origin is killed mid-stream and a new one starts on the same port;
    // the push notices, retries by itself (1 s backoff) and the new origin receives frames.
    let (out2, out3) = (out2, dir.path().join("out3.flv"));
    let mut killed = spawn_origin(port, &out2);
    assert!(wait_listening(port, Duration::from_secs(10)).await);
    let sender = send_in_background(&gw, "h264_g711a_8k", 0x0BEBC205, 5);
    // Mid-stream: the push is subscribed and connected to the origin (an established TCP
    // connection on the origin's port).
    let t = Instant::now();
    let pushing = |gw: &gbgate::server::Gateway| {
        gw.hub.get(&name_of(0x0BEBC205)).is_some_and(|s| s.subscriber_counts().get("push").is_some_and(|n| *n > 0))
    };
    let connected = || {
        let local = format!("0100007F:{port:04X}");
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        tcp.lines().any(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            c.len() > 3 && c[1] == local && c[3] == "01"
        })
    };
    while !(pushing(&gw) && connected()) {
        assert!(t.elapsed() < Duration::from_secs(10), "the push never reached the first origin");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    let origin = spawn_origin(port, &out3);
    let finished = wait_exit(origin, Duration::from_secs(30)).await;
    sender.await.unwrap();
    assert!(finished, "second origin did not finish");
    let (ok, out, err) = run(ffprobe_cmd(out3.to_str().unwrap()), Duration::from_secs(20)).await;
    assert!(ok, "{err}");
    let p = Probe::parse(&out);
    let frames = p.frames("video");
    assert!(frames >= 3 * FRAMES_PER_PASS, "the restarted origin got {frames} frames");
    assert_monotonic(&p.pts("video"));
    println!(
        "push: first origin {first} frames (sent {}), restarted origin {frames} frames (of 250 sent)",
        FRAMES_PER_PASS * loops as usize
    );
    gw.stop().await;
}

fn make_h264_aac_flv(path: &Path) {
    let st = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=4"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=4"])
        .args([
            "-c:v", "libx264", "-g", "25", "-bf", "0", "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2", "-f", "flv",
        ])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_into_the_hub_and_ffprobe_plays_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.flv");
    make_h264_aac_flv(&src);
    let (gw, rtmp) = start_with_rtmp(test_config()).await;
    let url = format!("rtmp://{rtmp}/live/test");
    let mut publish = Command::new("ffmpeg");
    publish.args(["-hide_banner", "-loglevel", "error", "-re", "-i"]).arg(&src).args(["-c", "copy", "-f", "flv", &url]);
    let publisher = tokio::spawn(run(publish, Duration::from_secs(30)));

    let start = Instant::now();
    while gw.hub.get("live/test").is_none() && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stream = gw.hub.get("live/test").expect("live/test in the hub");
    assert_eq!(stream.source.transport, gbgate::hub::Transport::Rtmp);
    // The same stream over RTSP, concurrently with the RTMP playback below.
    let rtsp_url = format!("rtsp://{}/live/test", gw.rtsp_addr.unwrap());
    let mut rtsp_probe = Command::new("ffprobe");
    rtsp_probe.args(["-v", "error", "-rtsp_transport", "tcp", "-read_intervals", "%+2", "-show_entries"]).args([
        "stream=codec_name,codec_type,width,height,sample_rate",
        "-of",
        "json",
        &rtsp_url,
    ]);
    let rtsp_probe = tokio::spawn(run(rtsp_probe, Duration::from_secs(30)));
    let (ok, out, err) = run(ffprobe_cmd(&url), Duration::from_secs(30)).await;
    assert!(ok, "{err}");
    let p = Probe::parse(&out);
    let v = p.stream("video").expect("video");
    assert_eq!(
        (v["codec_name"].as_str(), v["width"].as_i64(), v["height"].as_i64()),
        (Some("h264"), Some(320), Some(240))
    );
    // 44.1 kHz stereo AAC in, through the media stage like every source: AAC 11025 Hz mono out.
    let a = p.stream("audio").expect("audio");
    assert_eq!(
        (a["codec_name"].as_str(), a["sample_rate"].as_str(), a["channels"].as_i64()),
        (Some("aac"), Some("11025"), Some(1))
    );
    let frames = p.frames("video");
    assert!(frames >= 50, "played back {frames} frames");
    assert_monotonic(&p.pts("video"));
    let (ok, rtsp_out, err) = rtsp_probe.await.unwrap();
    assert!(ok, "RTSP playback of an RTMP-published stream: {err}");
    let rtsp_json: Value = serde_json::from_str(&rtsp_out).unwrap();
    let kinds: Vec<(String, String)> = rtsp_json["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["codec_type"].as_str().unwrap().to_string(), s["codec_name"].as_str().unwrap().to_string()))
        .collect();
    assert!(kinds.contains(&("video".into(), "h264".into())), "{rtsp_out}");
    assert!(kinds.contains(&("audio".into(), "aac".into())), "{rtsp_out}");
    let stats = stream.stats();
    let fps = stats.video.as_ref().map_or(0.0, |v| v.fps);
    assert!((20.0..=30.0).contains(&fps), "fps of an RTMP-published 25 fps stream: {fps}");
    assert!(stats.media.transcode.is_some(), "the audio went through the media stage: {:?}", stats.media);
    let (ok, _, err) = publisher.await.unwrap();
    assert!(ok, "publisher: {err}");
    println!("publish: hub saw {:?}; playback read {frames} video frames", stats.video.map(|v| v.frames));
    let start = Instant::now();
    while gw.hub.get("live/test").is_some() && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.hub.get("live/test").is_none(), "the stream ends with its publisher");
    gw.stop().await;
}

/// The client side of the RTMP handshake (the library's, as the push uses it); returns the bytes
/// the server sent after it.
async fn client_handshake(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    gbgate::client::rtmp::handshake(s, Duration::from_secs(10)).await.expect("RTMP handshake")
}

/// A player that connects, asks to play, then never reads again.
async fn stalled_player(addr: SocketAddr, app: &str, key: &str) -> tokio::net::TcpStream {
    use rml_rtmp::sessions::{ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let leftover = client_handshake(&mut s).await;
    let mut buf = vec![0u8; 65536];
    let (mut session, _) = ClientSession::new(ClientSessionConfig::new()).unwrap();
    let mut pending = vec![session.handle_input(&leftover).unwrap()];
    pending.push(vec![session.request_connection(app.to_string()).unwrap()]);
    let mut step = 0;
    loop {
        for results in pending.drain(..) {
            for r in results {
                match r {
                    ClientSessionResult::OutboundResponse(p) => s.write_all(&p.bytes).await.unwrap(),
                    ClientSessionResult::RaisedEvent(ClientSessionEvent::ConnectionRequestAccepted) => step = 1,
                    ClientSessionResult::RaisedEvent(ClientSessionEvent::PlaybackRequestAccepted) => return s,
                    _ => {}
                }
            }
        }
        if step == 1 {
            step = 2;
            pending.push(vec![session.request_playback(key.to_string()).unwrap()]);
            continue;
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed before accepting play");
        pending.push(session.handle_input(&buf[..n]).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_that_stops_reading_is_disconnected_without_slowing_ingest() {
    // 20 s of the 720p fixture in real time: frames keep coming while the player is stalled.
    const LOOPS: u32 = 10;
    let mut cfg = test_config();
    cfg.rtmp.push_timeout.0 = Duration::from_secs(1);
    // A small queue and skip allowance so the slow-subscriber rule trips within a few GOPs.
    cfg.hub.subscriber_queue = 64;
    cfg.hub.max_skips_per_minute = 2;
    let (gw, rtmp) = start_with_rtmp(cfg).await;
    let ssrc = 0x0BEBC203;
    let mut opts = send_opts(gw.rtp_addr, ssrc, LOOPS);
    opts.linger = Duration::from_secs(5);
    let path = own_fixture("h264_g711u_16k.rtp");
    let sender = tokio::spawn(async move { send_file(&path, &opts).await.unwrap() });
    let start = Instant::now();
    while gw.hub.get(&name_of(ssrc)).is_none() && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stream = gw.hub.get(&name_of(ssrc)).expect("stream");
    let _player = stalled_player(rtmp, "rtp", &format!("{ssrc:08X}")).await;
    let count = |s: &gbgate::hub::Stream| s.subscriber_counts().get("rtmp").copied().unwrap_or(0);
    let start = Instant::now();
    while count(&stream) > 0 && start.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone_after = start.elapsed();
    assert_eq!(count(&stream), 0, "the stalled player is still subscribed");
    assert!(gbgate_stream_live(&gw, &stream), "the player must go before the stream ends");
    // Every frame sent is counted by ingest (the sender lingers connected; no need to wait for it).
    let expected = (LOOPS as usize * FRAMES_PER_PASS) as u64;
    let start = Instant::now();
    while stream.stats().video.map_or(0, |v| v.frames) < expected && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sender.abort();
    let video = stream.stats().video.expect("video stats");
    println!(
        "stalled player dropped after {gone_after:?}; ingest counted {} frames of {}",
        video.frames,
        LOOPS as usize * FRAMES_PER_PASS
    );
    assert_eq!(video.frames as usize, LOOPS as usize * FRAMES_PER_PASS, "ingest lost frames");
    gw.stop().await;
}

fn gbgate_stream_live(gw: &Gateway, stream: &std::sync::Arc<gbgate::hub::Stream>) -> bool {
    gw.hub.get(&stream.name).is_some_and(|s| std::sync::Arc::ptr_eq(&s, stream))
}

type PanicHook = dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync + 'static;

/// Reinstates a panic hook when dropped (not while unwinding: `take_hook` would panic then).
struct RestoreHook(std::sync::Arc<PanicHook>);

impl Drop for RestoreHook {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let previous = self.0.clone();
            drop(std::panic::take_hook());
            std::panic::set_hook(Box::new(move |info| previous(info)));
        }
    }
}

/// Panics raised with rml_rtmp on the stack in this test process, wherever they were caught.
static RML_RTMP_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// rml_rtmp 0.8 panics on an AMF0 command with fewer than three values. gbgate refuses such a
/// command before rml_rtmp decodes it: the peer's connection is closed, nothing panics, and the
/// server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_amf0_command_closes_that_connection_without_a_panic() {
    use rml_rtmp::chunk_io::ChunkSerializer;
    use rml_rtmp::messages::MessagePayload;
    use rml_rtmp::rml_amf0::{self, Amf0Value};
    use rml_rtmp::time::RtmpTimestamp;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let previous: std::sync::Arc<PanicHook> = std::panic::take_hook().into();
    let chained = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        // The panic's location is in core (a slice index), so look for rml_rtmp on the stack.
        if std::backtrace::Backtrace::force_capture().to_string().contains("rml_rtmp") {
            RML_RTMP_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        chained(info);
    }));
    // The hook is process-wide: put the previous one back when the test ends.
    let _restore = RestoreHook(previous);
    let (gw, rtmp) = start_with_rtmp(test_config()).await;
    let ssrc = 0x0BEBC2A0;
    let _sender = send_in_background(&gw, "h264_g711a_8k", ssrc, 5);

    let mut bad = tokio::net::TcpStream::connect(rtmp).await.unwrap();
    client_handshake(&mut bad).await;
    let short = rml_amf0::serialize(&vec![Amf0Value::Utf8String("connect".into())]).unwrap();
    let payload = MessagePayload {
        timestamp: RtmpTimestamp::new(0),
        type_id: 20,
        message_stream_id: 0,
        data: bytes::Bytes::from(short),
    };
    let packet = ChunkSerializer::new().serialize(&payload, false, false).unwrap();
    bad.write_all(&packet.bytes).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), bad.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the server kept the connection of a peer that sent a short AMF0 command");
    assert_eq!(RML_RTMP_PANICS.load(std::sync::atomic::Ordering::SeqCst), 0, "rml_rtmp panicked");

    // The server still serves: ffprobe plays the live stream over RTMP.
    let url = format!("rtmp://{rtmp}/rtp/{ssrc:08X}");
    let (ok, out, err) = run(ffprobe_cmd(&url), Duration::from_secs(30)).await;
    assert!(ok, "ffprobe after the bad peer: {err}");
    let probe = Probe::parse(&out);
    assert!(probe.frames("video") > 0, "no video after the bad peer: {out}");
    gw.stop().await;
}
