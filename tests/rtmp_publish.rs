//! Who may publish what over RTMP, with real ffmpeg publishers and a camera over RTP/TCP: a live
//! name belongs to its source, and `gb/` / `rtp/` belong to GB28181 and RTP sources.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::server::Gateway;
use gbgate::sim::send::{send_file, SendOptions};
use tokio::process::{Child, Command};

/// An ffmpeg publishing a live test pattern (H.264 + AAC) to `url` for `secs` seconds.
fn ffmpeg_publisher(url: &str, secs: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-t", &secs.to_string(), "-f", "flv", url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ffmpeg")
}

/// Waits for `child` to exit; (exited in time and succeeded, stderr).
async fn outcome(child: Child, limit: Duration) -> (bool, String) {
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()),
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (true, "still running".into()),
    }
}

async fn wait_live(gw: &Gateway, name: &str) -> Arc<gbgate::hub::Stream> {
    let start = Instant::now();
    loop {
        if let Some(s) = gw.hub.get(name) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{name} never went live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn video_frames(s: &gbgate::hub::Stream) -> u64 {
    s.stats().video.map_or(0, |v| v.frames)
}

async fn frames_grow(s: &gbgate::hub::Stream) -> bool {
    let before = video_frames(s);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if video_frames(s) > before + 10 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn camera(to: SocketAddr, ssrc: u32) -> tokio::task::JoinHandle<()> {
    let opts = SendOptions {
        to,
        tcp: true,
        count: 1,
        ssrc_base: Some(ssrc),
        loops: 20,
        duration: None,
        flood: false,
        linger: Duration::from_millis(200),
    };
    let path = own_fixture("h264_g711a_8k.rtp");
    tokio::spawn(async move {
        let _ = send_file(&path, &opts).await;
    })
}

/// Hole 2 (RTMP): a second ffmpeg publishing a live name gets `NetStream.Publish.BadName` and the
/// first keeps flowing; no RTMP publisher may publish under `rtp/` (here over a live camera) or
/// `gb/`; each refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_name_and_the_gb_and_rtp_prefixes_are_refused_to_rtmp_publishers() {
    let gw = start(test_config()).await;
    let rtmp = gw.rtmp_addr.unwrap();
    let first = ffmpeg_publisher(&format!("rtmp://{rtmp}/live/cam"), 30);
    let stream = wait_live(&gw, "live/cam").await;
    assert!(frames_grow(&stream).await, "the first publisher is not flowing");

    let (ok, err) = outcome(ffmpeg_publisher(&format!("rtmp://{rtmp}/live/cam"), 30), Duration::from_secs(15)).await;
    assert!(!ok, "a second publisher of live/cam was accepted: {err}");
    let now = gw.hub.get("live/cam").expect("live/cam still live");
    assert!(Arc::ptr_eq(&now, &stream), "the stream was replaced");
    assert!(frames_grow(&stream).await, "the first publisher stopped flowing");

    // A live camera's name, and a GB channel's.
    let _camera = camera(gw.rtp_addr, 0x0BEBC2B0);
    let cam = wait_live(&gw, "rtp/0BEBC2B0").await;
    for url in [format!("rtmp://{rtmp}/rtp/0BEBC2B0"), format!("rtmp://{rtmp}/gb/34020000001320000001")] {
        let (ok, err) = outcome(ffmpeg_publisher(&url, 30), Duration::from_secs(15)).await;
        assert!(!ok, "{url} was accepted: {err}");
    }
    let now = gw.hub.get("rtp/0BEBC2B0").expect("the camera is still live");
    assert!(Arc::ptr_eq(&now, &cam), "the camera's stream was replaced");
    assert_eq!(now.source.transport, gbgate::hub::Transport::Tcp);
    assert!(gw.hub.get("gb/34020000001320000001").is_none());
    assert_eq!(gw.rtmp.snapshot().publish_refused, 3);
    assert!(frames_grow(&stream).await, "the first publisher stopped flowing");
    drop(first);
    gw.stop().await;
}

/// A raw RTMP publisher from `bind` (127.0.0.2 stands for another host): handshake, connect,
/// publish `key` on `app`. Ok when the publish is accepted, else the status code or error.
async fn raw_publish(bind: &str, to: SocketAddr, app: &str, key: &str) -> Result<(), String> {
    use gbgate::client::rtmp::{handle_input, split_results};
    use gbgate::proto::rtmp_guard::RtmpCommandGuard;
    use rml_rtmp::sessions::{ClientSession, ClientSessionConfig, ClientSessionEvent, PublishRequestType};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{bind}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(to).await.map_err(|e| e.to_string())?;
    let leftover = gbgate::client::rtmp::handshake(&mut s, Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    let (mut session, first) = ClientSession::new(ClientSessionConfig::new()).unwrap();
    let mut guard = RtmpCommandGuard::default();
    let mut results = first;
    results.extend(handle_input(&mut session, &mut guard, &leftover).map_err(|e| e.to_string())?);
    results.push(session.request_connection(app.to_string()).unwrap());
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (bytes, events) = split_results(std::mem::take(&mut results));
        s.write_all(&bytes).await.map_err(|e| e.to_string())?;
        for e in events {
            match e {
                ClientSessionEvent::ConnectionRequestAccepted => {
                    results.push(session.request_publishing(key.to_string(), PublishRequestType::Live).unwrap())
                }
                ClientSessionEvent::PublishRequestAccepted => return Ok(()),
                ClientSessionEvent::UnhandleableOnStatusCode { code } => return Err(code),
                // rml_rtmp's server answers a refused request with `_error` (transaction 0).
                ClientSessionEvent::UnknownTransactionResultReceived { additional_values, .. } => {
                    let code = additional_values.into_iter().find_map(|v| match v {
                        rml_rtmp::rml_amf0::Amf0Value::Object(mut o) => match o.remove("code") {
                            Some(rml_rtmp::rml_amf0::Amf0Value::Utf8String(c)) => Some(c),
                            _ => None,
                        },
                        _ => None,
                    });
                    return Err(code.unwrap_or_else(|| "_error".into()));
                }
                ClientSessionEvent::ConnectionRequestRejected { description } => return Err(description),
                _ => {}
            }
        }
        if !results.is_empty() {
            continue;
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        results = handle_input(&mut session, &mut guard, &buf[..n]).map_err(|e| e.to_string())?;
    }
}

/// Hole 3: publishing from another host needs a credential by default (127.0.0.2, raw client);
/// with the host's exemption turned off, real ffmpeg publishers are refused without a
/// credential, with an expired or a wrong signature, and accepted with a valid signed URL or a
/// static key; play authentication (off by default) works the same for ffprobe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_and_playing_need_a_valid_credential() {
    // Defaults: 127.0.0.2 is another host; no credential, or one with nothing configured: refused.
    let gw = start(test_config()).await;
    let rtmp = gw.rtmp_addr.unwrap();
    let r = raw_publish("127.0.0.2", rtmp, "live", "x").await;
    assert_eq!(r, Err("NetStream.Publish.Rejected".to_string()));
    assert_eq!(raw_publish("127.0.0.1", rtmp, "live", "y").await, Ok(()), "the host itself is exempt");
    assert_eq!(gw.rtmp.snapshot().auth_refused, 1);
    gw.stop().await;

    let mut cfg = test_config();
    cfg.auth.loopback_exempt = false;
    cfg.auth.secret = "s3cret".into();
    cfg.auth.keys = vec!["k1".into()];
    cfg.auth.play = true;
    let gw = start(cfg).await;
    let rtmp = gw.rtmp_addr.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let valid = gbgate::auth::signed_query("s3cret", "live/signed", now + 300);
    let expired = gbgate::auth::signed_query("s3cret", "live/expired", now - 10);
    let wrong = gbgate::auth::signed_query("other", "live/wrong", now + 300);
    for (key, why) in [
        ("none".to_string(), "no credential"),
        (format!("expired?{expired}"), "expired"),
        (format!("wrong?{wrong}"), "wrong signature"),
        // Signed for live/signed, used for another name.
        (format!("other?{valid}"), "signature of another stream"),
        ("badkey?key=k2".to_string(), "unknown key"),
    ] {
        let (ok, err) =
            outcome(ffmpeg_publisher(&format!("rtmp://{rtmp}/live/{key}"), 20), Duration::from_secs(15)).await;
        assert!(!ok, "{why}: accepted: {err}");
    }
    assert!(gw.hub.list().is_empty(), "a refused publisher created a stream");
    assert_eq!(gw.rtmp.snapshot().auth_refused, 5);

    let signed = ffmpeg_publisher(&format!("rtmp://{rtmp}/live/signed?{valid}"), 30);
    let stream = wait_live(&gw, "live/signed").await;
    assert!(frames_grow(&stream).await);
    let keyed = ffmpeg_publisher(&format!("rtmp://{rtmp}/live/keyed?key=k1"), 30);
    wait_live(&gw, "live/keyed").await;

    // Play: refused without a credential, played with one.
    let probe = |url: String| async move {
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-read_intervals", "%+1", "-show_entries", "stream=codec_name", "-of", "csv=p=0"])
            .arg(url)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(20), out).await.expect("ffprobe timed out").unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, _) = probe(format!("rtmp://{rtmp}/live/signed")).await;
    assert!(!ok, "played without a credential");
    let (ok, out) = probe(format!("rtmp://{rtmp}/live/signed?key=k1")).await;
    assert!(ok && out.contains("h264"), "{out}");
    let play_sig = gbgate::auth::signed_query("s3cret", "live/keyed", now + 300);
    let (ok, out) = probe(format!("rtmp://{rtmp}/live/keyed?{play_sig}")).await;
    assert!(ok && out.contains("h264"), "{out}");
    assert_eq!(gw.rtmp.snapshot().auth_refused, 6);
    drop((signed, keyed));
    gw.stop().await;
}

/// RTMP publishing passes through the media stage like every source: G.711 A-law in FLV (dropped
/// before) leaves as AAC 11025 Hz mono, and the stream reports its frame rate (read 0 before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g711_published_over_rtmp_plays_back_as_aac_11025_mono() {
    let gw = start(test_config()).await;
    let rtmp = gw.rtmp_addr.unwrap();
    let url = format!("rtmp://{rtmp}/live/g711");
    let _publisher = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1", "-t", "20", "-f", "flv", &url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stream = wait_live(&gw, "live/g711").await;
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-read_intervals",
            "%+3",
            "-show_entries",
            "stream=codec_type,codec_name,sample_rate,channels",
        ])
        .args(["-of", "json", &url])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out).await.expect("ffprobe timed out").unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let audio = v["streams"].as_array().unwrap().iter().find(|s| s["codec_type"] == "audio").cloned();
    let audio = audio.unwrap_or_else(|| panic!("no audio track: {text}"));
    assert_eq!(
        (audio["codec_name"].as_str(), audio["sample_rate"].as_str(), audio["channels"].as_i64()),
        (Some("aac"), Some("11025"), Some(1)),
        "{text}"
    );
    let stats = stream.stats();
    assert_eq!(stats.audio.as_ref().map(|a| a.codec), Some("g711a"), "{stats:?}");
    let fps = stats.video.as_ref().map_or(0.0, |v| v.fps);
    assert!((20.0..=30.0).contains(&fps), "fps {fps}");
    gw.stop().await;
}

/// A publisher is judged by its last read (`PUBLISH_IDLE`, 10 s, in src/server/rtmp.rs), not by
/// when it started: one that has published for longer than that stays live, and one that falls
/// silent with its connection open (ffmpeg stopped by SIGSTOP: nothing is sent, nothing closed)
/// is closed, its stream ended and its name free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_is_closed_when_silent_not_when_it_has_published_long() {
    let gw = start(test_config()).await;
    let rtmp = gw.rtmp_addr.unwrap();
    let publisher = ffmpeg_publisher(&format!("rtmp://{rtmp}/live/quiet"), 60);
    let pid = publisher.id().expect("ffmpeg runs").to_string();
    let stream = wait_live(&gw, "live/quiet").await;
    // Longer than PUBLISH_IDLE since the publish, with data flowing all along.
    let live_since = Instant::now();
    while live_since.elapsed() < Duration::from_secs(12) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let now = gw.hub.get("live/quiet").expect("a publisher sending for 12 s was closed");
    assert!(Arc::ptr_eq(&now, &stream), "the stream was replaced");
    assert!(frames_grow(&stream).await, "the publisher stopped flowing");

    let stopped = std::process::Command::new("kill").args(["-STOP", &pid]).status().expect("kill");
    assert!(stopped.success(), "could not stop ffmpeg");
    let deadline = Instant::now() + Duration::from_secs(25);
    while gw.hub.get("live/quiet").is_some_and(|s| Arc::ptr_eq(&s, &stream)) {
        assert!(Instant::now() < deadline, "a silent publisher kept live/quiet for 25 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::process::Command::new("kill").args(["-CONT", &pid]).status();
    drop(publisher);
    // The name is free: another publisher takes it.
    let _next = ffmpeg_publisher(&format!("rtmp://{rtmp}/live/quiet"), 30);
    let next = wait_live(&gw, "live/quiet").await;
    assert!(!Arc::ptr_eq(&next, &stream));
    assert!(frames_grow(&next).await, "the next publisher is not flowing");
    gw.stop().await;
}
