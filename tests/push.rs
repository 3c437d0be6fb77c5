//! `client::push::PushSet` (issue 10), the one push implementation of channels and
//! `[[rtmp.push]]`: one stream to two origins, a real `ffmpeg -listen 1` receiver and a port that
//! refuses; each push has its own state, the failing one retries with its credentials redacted
//! and becomes a `stream_state` callback (received by a test HTTP receiver, the cc); `stop()`
//! ends the good push cleanly (the receiver exits 0 with a playable file).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::client::push::{PushSet, PushState};
use gbgate::config::CallbacksConfig;
use gbgate::sim::send::{send_file, SendOptions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The cc: records every JSON body POSTed to it.
async fn cc() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let g = g.clone();
        async move {
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                g.lock().unwrap().push(v);
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_set_pushes_one_stream_to_two_origins_each_with_its_own_state() {
    if !require_tool("push_set", "ffmpeg") || !require_tool("push_set", "ffprobe") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pushed.flv");
    let (port, mut ffmpeg) = rtmp_receiver(&out).await;
    let (refuser, dead) = refusing_port();
    let (cc_addr, events) = cc().await;
    let gw = start(test_config()).await;
    let notifier = gbgate::notify::Notifier::start(
        &CallbacksConfig { url: Some(format!("http://{cc_addr}/cc")), ..CallbacksConfig::default() },
        None,
    );
    let stream = "rtp/05F5E101";
    let good = format!("rtmp://127.0.0.1:{port}/live/cam");
    let bad = format!("rtmp://user:s3cret@127.0.0.1:{dead}/live/cam?txSecret=abc");
    let stop = CancellationToken::new();
    let set = PushSet::start(gw.hub.clone(), stream, vec![good.clone(), bad], notifier.clone(), stop.clone());
    // The stream is not live yet: both wait.
    let views = set.views();
    assert!(views.iter().all(|v| v.state == PushState::Waiting), "{views:?}");

    let opts = SendOptions {
        to: gw.rtp_addr,
        tcp: false,
        count: 1,
        ssrc_base: Some(100_000_001),
        loops: 1000,
        duration: Some(Duration::from_secs(30)),
        flood: false,
        linger: Duration::ZERO,
    };
    let fixture = own_fixture("h264_g711a_8k.rtp");
    let sender = tokio::spawn(async move { send_file(&fixture, &opts).await });
    let start_t = Instant::now();
    let views = loop {
        let v = set.views();
        if v[0].state == PushState::Pushing && v[0].bytes > 100_000 && v[1].reconnects >= 2 {
            break v;
        }
        assert!(start_t.elapsed() < Duration::from_secs(20), "{v:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(views[0].url, good);
    assert_eq!(views[0].reconnects, 0, "{views:?}");
    // The refused push retries on its own, its credentials never shown.
    assert!(matches!(views[1].state, PushState::Retrying | PushState::Connecting), "{views:?}");
    assert_eq!(views[1].url, format!("rtmp://user:***@127.0.0.1:{dead}/live/cam?***"));
    assert_eq!(views[1].bytes, 0);
    let view_json = serde_json::to_string(&views).unwrap();
    assert!(!view_json.contains("s3cret") && !view_json.contains("abc"), "{view_json}");
    // ... and it is a stream_state callback: stalled, with the reason.
    let ok = wait_for(Duration::from_secs(10), || {
        events.lock().unwrap().iter().any(|e| e["event"] == "stream_state" && e["state"] == "stalled")
    })
    .await;
    let got = events.lock().unwrap().clone();
    assert!(ok, "{got:?}");
    let e = got.iter().find(|e| e["state"] == "stalled").unwrap();
    assert_eq!(e["stream"], stream);
    let reason = e["reason"].as_str().unwrap();
    assert!(reason.starts_with(&format!("push to rtmp://user:***@127.0.0.1:{dead}/")), "{reason}");
    assert!(reason.contains("retrying in"), "{reason}");
    assert!(!serde_json::to_string(&got).unwrap().contains("s3cret"));

    // stop(): every push ends, the good one cleanly, within the deadline.
    let t = Instant::now();
    assert_eq!(set.stop().await, 0, "no push had to be cut");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(set.views().iter().all(|v| v.state == PushState::Stopped), "{:?}", set.views());
    let exit = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Some(s) = ffmpeg.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = ffmpeg.kill();
        None
    })
    .await
    .unwrap();
    assert!(exit.is_some_and(|s| s.success()), "the receiver ends cleanly: {exit:?}");
    let (ok, text, err) = run_program(
        "ffprobe",
        &[
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "json",
        ]
        .into_iter()
        .map(String::from)
        .chain([out.display().to_string()])
        .collect::<Vec<_>>(),
        Duration::from_secs(20),
    )
    .await;
    assert!(ok, "{err}");
    let probe: Value = serde_json::from_str(&text).unwrap();
    let frames: u64 = probe["streams"][0]["nb_read_frames"].as_str().unwrap_or("0").parse().unwrap();
    assert!(frames >= 50, "{probe}");
    sender.abort();
    drop(refuser);
    gw.stop().await;
}
