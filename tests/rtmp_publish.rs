//! Who may publish what over RTMP, with real ffmpeg publishers and a camera over RTP/TCP: a live
//! name belongs to its source, and `gb/` / `rtp/` belong to GB28181 and RTP sources.
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
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
