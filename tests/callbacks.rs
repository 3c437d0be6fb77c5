//! Callbacks to a control center (issue 10, item 2): a cc written here (an HTTP server on port
//! 0, the receiving end only) records every POST; real peers drive the gateway (gbgate's sim
//! camera over GB28181, `gbgate send`, ffmpeg and ffprobe). Content, order (seq) and timing of
//! every event kind, retries, a dead cc that must not slow media or the API, the access hooks,
//! and the start reasons across restarts of the real binary.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use gbgate::config::HumanDuration;
use gbgate::sim::camera::{self, SimStats};
use gbgate::sim::send::{send_file, SendOptions};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// One POST the cc received, and what it answered.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    body: Value,
    at: Instant,
    status: u16,
}

#[derive(Default)]
struct CcState {
    got: Vec<Got>,
    /// Path -> how many of its next POSTs are answered 500.
    fail: HashMap<String, usize>,
}

/// The control center: answers 200 to events (500 while `fail` says so); the access hooks
/// (`/on_publish`, `/on_play`) deny a stream or query that says "deny", answer a stream that
/// says "slow" after 5 s, pad the answer for "huge" to 1 MB, and allow the rest.
#[derive(Clone)]
struct Cc {
    addr: SocketAddr,
    state: Arc<Mutex<CcState>>,
}

async fn cc_handler(State(st): State<Arc<Mutex<CcState>>>, uri: Uri, body: axum::body::Bytes) -> (StatusCode, String) {
    let path = uri.path().to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if body["stream"].as_str().is_some_and(|s| s.contains("slow")) {
        // A cc that takes longer than the hook's deadline (it answers "allow" too late).
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let mut s = st.lock().unwrap();
    let failing = s.fail.get_mut(&path).filter(|n| **n > 0).map(|n| *n -= 1).is_some();
    let (status, answer) = if failing {
        (500, String::new())
    } else if path.starts_with("/on_") {
        let text = format!("{} {}", body["stream"], body["params"]);
        if text.contains("deny") {
            (200, json!({"allow": false, "reason": "not on the test list"}).to_string())
        } else if text.contains("huge") {
            // A hostile answer: "allow" padded to 1 MB.
            (200, json!({"allow": true, "pad": "x".repeat(1 << 20)}).to_string())
        } else {
            (200, json!({"allow": true}).to_string())
        }
    } else {
        (200, String::new())
    };
    s.got.push(Got { path, body, at: Instant::now(), status });
    (StatusCode::from_u16(status).unwrap(), answer)
}

impl Cc {
    async fn start() -> Cc {
        let state = Arc::new(Mutex::new(CcState::default()));
        let app = axum::Router::new().fallback(cc_handler).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Cc { addr, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn all(&self) -> Vec<Got> {
        self.state.lock().unwrap().got.clone()
    }

    /// Delivered (answered 200) events of `event`.
    fn events(&self, event: &str) -> Vec<Got> {
        self.all().into_iter().filter(|g| g.status == 200 && g.body["event"] == event).collect()
    }

    async fn wait(&self, what: &str, limit: Duration, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let start = Instant::now();
        loop {
            let got = self.all();
            if done(&got) {
                return got;
            }
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}; the cc got {:#?}", bodies(&got));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn bodies(got: &[Got]) -> Vec<String> {
    got.iter().map(|g| format!("{} {} {}", g.path, g.status, g.body)).collect()
}

/// Every delivered POST to each path carries a larger seq than the one before, one instance id,
/// and an RFC 3339 time.
fn assert_ordered(got: &[Got]) {
    let mut last: HashMap<&str, u64> = HashMap::new();
    let ids: std::collections::BTreeSet<&str> =
        got.iter().filter(|g| g.status == 200).filter_map(|g| g.body["instance_id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "one instance id: {ids:?}");
    for g in got.iter().filter(|g| g.status == 200) {
        let seq = g.body["seq"].as_u64().unwrap_or_else(|| panic!("seq in {}", g.body));
        assert!(g.body["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{}", g.body);
        if let Some(prev) = last.insert(&g.path, seq) {
            assert!(seq > prev, "{}: seq {seq} after {prev}: {:#?}", g.path, bodies(got));
        }
    }
}

fn states_of<'a>(got: &'a [Got], stream: &str) -> Vec<&'a Value> {
    got.iter()
        .filter(|g| g.status == 200 && g.body["event"] == "stream_state" && g.body["stream"] == stream)
        .map(|g| &g.body)
        .collect()
}

fn dur(s: &str) -> HumanDuration {
    HumanDuration(humantime::parse_duration(s).unwrap())
}

/// One RTP packet (PT 96) of `ssrc`.
fn rtp_packet(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 3600).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0u8; 100]);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gb_camera_s_life_traffic_reports_and_unknown_ssrcs_reach_the_cc_in_order_and_on_time() {
    let cc = Cc::start().await;
    let mut cfg = test_config();
    cfg.sip.password = Some("12345678".into());
    cfg.rtp.timeout = dur("3s");
    cfg.rtp.unknown_ssrc = gbgate::config::UnknownSsrc::Report;
    cfg.callbacks.url = Some(cc.url("/cb"));
    // Events only: the access hooks (which `url` also defaults) are tested on their own.
    cfg.callbacks.on_publish = Some(String::new());
    cfg.callbacks.on_play = Some(String::new());
    // A per-event target overrides `url` (the cc's own endpoint names).
    cfg.callbacks.traffic_report = Some(cc.url("/api/v1/flowReport"));
    cfg.callbacks.report_interval = dur("1s");
    cfg.callbacks.stall_after = dur("1s");
    let gw = start(cfg).await;

    let stop = CancellationToken::new();
    let mut o = camera::SimOptions::new(gw.sip_addr.unwrap(), own_fixture("h264_g711a_8k.rtp"));
    o.password = "12345678".into();
    let sim = camera::spawn(o, stop.clone()).await.unwrap();
    wait_devices_with_catalogs(&gw, 1, "camera registered").await;
    let channel = camera::channel_id("34020000001320000001", 0);
    let stream = format!("gb/{channel}");
    gw.hub.notifier().bind_channel(&stream, "cam-1");
    gw.gb.clone().unwrap().play(None, &channel, None).await.expect("play");

    // Live, named with its channel.
    let got = cc.wait("stream_state live", Duration::from_secs(10), |g| !states_of(g, &stream).is_empty()).await;
    let live = states_of(&got, &stream)[0].clone();
    assert_eq!(live["state"], "live", "{live}");
    assert_eq!(live["channel"], "cam-1", "{live}");
    assert!(live["reason"].as_str().unwrap().contains("first frame"), "{live}");

    // Traffic reports: one batched POST per second at its own URL, the stream with its counters.
    let got = cc
        .wait("three traffic reports with the stream", Duration::from_secs(8), |g| {
            g.iter()
                .filter(|g| g.path == "/api/v1/flowReport")
                .filter(|g| g.body["streams"].as_array().is_some_and(|l| l.iter().any(|s| s["stream"] == stream)))
                .count()
                >= 3
        })
        .await;
    let reports: Vec<&Got> = got.iter().filter(|g| g.path == "/api/v1/flowReport").collect();
    assert!(reports.iter().all(|g| g.body["event"] == "traffic_report" && g.body["interval_ms"] == 1000));
    for w in reports.windows(2) {
        let gap = w[1].at.duration_since(w[0].at);
        assert!(gap > Duration::from_millis(600) && gap < Duration::from_millis(1800), "report every 1s: {gap:?}");
    }
    let last = &reports.last().unwrap().body;
    let s = last["streams"].as_array().unwrap().iter().find(|s| s["stream"] == stream).unwrap();
    assert_eq!(s["channel"], "cam-1", "{s}");
    assert_eq!(s["transport"], "udp", "{s}");
    assert_eq!(s["ssrc"].as_str().unwrap().len(), 10, "{s}");
    assert!(s["bytes"].as_u64().unwrap() > 10_000 && s["packets"].as_u64().unwrap() > 20, "{s}");
    assert!(s["bitrate"].as_u64().unwrap() > 50_000, "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert!(s["players"].is_u64() && s["timestamp_repairs"].is_u64(), "{s}");
    assert!(s["source"].as_str().unwrap().starts_with("127.0.0.1:"), "{s}");

    // Two SSRCs nobody announced, 20 packets a second for 2.5 s: each reported once per second.
    let intruder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp = gw.rtp_addr;
    let t0 = Instant::now();
    let mut seq = 0u16;
    while t0.elapsed() < Duration::from_millis(2500) {
        for ssrc in [0x0BAD_0001u32, 0x0BAD_0002] {
            intruder.send_to(&rtp_packet(ssrc, seq), rtp).unwrap();
        }
        seq += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for ssrc in [0x0BAD_0001u32, 0x0BAD_0002] {
        let text = format!("{ssrc:010}");
        let seen: Vec<Got> = cc.events("unknown_ssrc").into_iter().filter(|g| g.body["ssrc"] == text).collect();
        assert!((2..=4).contains(&seen.len()), "{text}: once per second over 2.5 s: {:#?}", bodies(&seen));
        for w in seen.windows(2) {
            assert!(w[1].at.duration_since(w[0].at) >= Duration::from_millis(900), "{:#?}", bodies(&seen));
        }
        let b = &seen[0].body;
        assert_eq!(b["source"], intruder.local_addr().unwrap().to_string());
        assert_eq!(b["transport"], "udp");
        assert!(b["first_seen"].as_str().unwrap().ends_with('Z'), "{b}");
    }

    // A pause shorter than the receive timeout: stalled after 1 s, resumed when media is back.
    let muted = &sim.media_muted;
    muted.store(true, std::sync::atomic::Ordering::Relaxed);
    cc.wait("stalled", Duration::from_secs(5), |g| states_of(g, &stream).len() == 2).await;
    muted.store(false, std::sync::atomic::Ordering::Relaxed);
    let got = cc.wait("resumed", Duration::from_secs(5), |g| states_of(g, &stream).len() == 3).await;
    let resumed = states_of(&got, &stream)[2].clone();
    assert_eq!(resumed["state"], "resumed", "{:#?}", bodies(&got));
    assert!(resumed["reason"].as_str().unwrap().starts_with("frames again after"), "{resumed}");

    // The camera stops sending media: stalled after 1 s, stopped after the 3 s receive
    // timeout with the reason, and the session ends with BYE.
    let muted_at = Instant::now();
    muted.store(true, std::sync::atomic::Ordering::Relaxed);
    let got = cc
        .wait("stalled then stopped", Duration::from_secs(10), |g| {
            states_of(g, &stream).iter().any(|b| b["state"] == "stopped")
        })
        .await;
    let states: Vec<&str> = states_of(&got, &stream).iter().map(|b| b["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["live", "stalled", "resumed", "stalled", "stopped"], "{:#?}", bodies(&got));
    let stalled = states_of(&got, &stream)[3].clone();
    let stopped = states_of(&got, &stream)[4].clone();
    assert!(stalled["reason"].as_str().unwrap().starts_with("no data for"), "{stalled}");
    assert_eq!(stopped["reason"], "no data for 3s", "{stopped}");
    assert!(stalled["channel"] == "cam-1" && stopped["channel"] == "cam-1");
    let at = |b: &Value| got.iter().find(|g| &g.body == b).unwrap().at.duration_since(muted_at);
    assert!(at(&stalled) >= Duration::from_millis(900) && at(&stalled) < Duration::from_secs(3), "{:?}", at(&stalled));
    assert!(at(&stopped) >= Duration::from_millis(2900), "{:?}", at(&stopped));
    assert!(
        wait_for(Duration::from_secs(10), || SimStats::get(&sim.byes_received) == 1).await,
        "BYE after the media timeout: {}",
        SimStats::get(&sim.byes_received)
    );

    assert_ordered(&cc.all());
    let snap = gw.hub.notifier().snapshot();
    assert_eq!(snap.outbox.dropped + snap.outbox.failed, 0, "{snap:?}");
    let (status, view) = http_get(gw.api_addr, "/api/v1/callbacks").await;
    assert_eq!(status, 200);
    assert_eq!(view["enabled"], true);
    assert!(view["outbox"]["by_event"]["traffic_report"]["sent"].as_u64().unwrap() >= 3, "{view}");
    assert_eq!(view["targets"]["traffic_report"], cc.url("/api/v1/flowReport"), "{view}");

    // Media again, played again; the gateway stops: the session's reason reaches the cc before
    // the process would exit (the outbox is flushed at shutdown).
    sim.media_muted.store(false, std::sync::atomic::Ordering::Relaxed);
    gw.gb.clone().unwrap().play(None, &channel, None).await.expect("play again");
    cc.wait("live again", Duration::from_secs(10), |g| states_of(g, &stream).len() >= 6).await;
    gw.stop().await;
    let got = cc.all();
    let last = *states_of(&got, &stream).last().unwrap();
    assert_eq!(
        (last["state"].as_str(), last["reason"].as_str()),
        (Some("stopped"), Some("gateway stopping")),
        "{last}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cc_answering_500_gets_the_event_again_with_its_seq_then_the_rest_in_order() {
    let cc = Cc::start().await;
    cc.state.lock().unwrap().fail.insert("/cb".into(), 2);
    let mut cfg = test_config();
    cfg.callbacks.url = Some(cc.url("/cb"));
    // Events only: the access hooks (which `url` also defaults) are tested on their own.
    cfg.callbacks.on_publish = Some(String::new());
    cfg.callbacks.on_play = Some(String::new());
    cfg.callbacks.retry_initial = dur("200ms");
    cfg.callbacks.retries = 5;
    let gw = start(cfg).await;
    // A camera pushing an SSRC nobody announced: unknown_ssrc, then its stream's live and stopped.
    let opts = SendOptions {
        to: gw.rtp_addr,
        tcp: true,
        count: 1,
        ssrc_base: Some(0x0C0F_FEE1),
        loops: 1,
        duration: None,
        flood: false,
        linger: Duration::from_millis(100),
    };
    send_file(&own_fixture("h264_g711a_8k.rtp"), &opts).await.expect("send");
    let got = cc
        .wait("stream stopped delivered", Duration::from_secs(15), |g| {
            g.iter().any(|g| g.status == 200 && g.body["state"] == "stopped")
        })
        .await;
    // The first event: twice 500, then 200, the same seq and body each time, backing off.
    let first = &got[..3];
    assert_eq!(first.iter().map(|g| g.status).collect::<Vec<_>>(), [500, 500, 200], "{:#?}", bodies(&got));
    assert!(first.iter().all(|g| g.body == first[0].body), "{:#?}", bodies(first));
    assert_eq!(first[0].body["event"], "unknown_ssrc");
    let (d1, d2) = (first[1].at.duration_since(first[0].at), first[2].at.duration_since(first[1].at));
    assert!(
        d1 >= Duration::from_millis(190) && d2 >= Duration::from_millis(390),
        "backoff 200ms, 400ms: {d1:?} {d2:?}"
    );
    // Each event delivered once, in seq order, nothing overtaking the retried one.
    let delivered: Vec<u64> = got.iter().filter(|g| g.status == 200).map(|g| g.body["seq"].as_u64().unwrap()).collect();
    assert!(delivered.windows(2).all(|w| w[1] > w[0]), "{delivered:?}");
    let states: Vec<&str> = states_of(&got, "rtp/0C0FFEE1").iter().map(|b| b["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["live", "stopped"], "{:#?}", bodies(&got));
    assert_ordered(&got);
    let snap = gw.hub.notifier().snapshot();
    assert_eq!(snap.outbox.retried, 2, "{snap:?}");
    assert_eq!(snap.outbox.by_event["unknown_ssrc"].sent, 1, "{snap:?}");
    gw.stop().await;
}

/// A cc that accepts connections and never answers: every POST times out. Events pile up to the
/// outbox budget and the oldest are dropped, while a camera streams at full rate to a player and
/// the API answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_cc_never_slows_media_or_the_api_and_the_outbox_stays_bounded() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    let accept = tokio::spawn(async move {
        while let Ok((sock, _)) = silent.accept().await {
            h.lock().unwrap().push(sock);
        }
    });
    let mut cfg = test_config();
    cfg.callbacks.url = Some(format!("http://{silent_addr}/cb"));
    // Events only: the access hooks (which `url` also defaults) are tested on their own.
    cfg.callbacks.on_publish = Some(String::new());
    cfg.callbacks.on_play = Some(String::new());
    cfg.callbacks.timeout = dur("2s");
    cfg.callbacks.retries = 100;
    cfg.callbacks.outbox_bytes = 65536;
    cfg.callbacks.report_interval = dur("1s");
    let gw = start(cfg).await;

    // A camera in real time (10 loops of 2 s, 25 fps) ...
    let opts = SendOptions {
        to: gw.rtp_addr,
        tcp: true,
        count: 1,
        ssrc_base: Some(0x0D0D_0001),
        loops: 10,
        duration: None,
        flood: false,
        linger: Duration::from_millis(200),
    };
    let camera = tokio::spawn(async move { send_file(&own_fixture("h264_g711a_8k.rtp"), &opts).await });
    let name = "rtp/0D0D0001";
    assert!(wait_for(Duration::from_secs(10), || gw.hub.get(name).is_some_and(|s| s.has_keyframe())).await);
    // ... a player for 6 s ...
    let url = format!("rtsp://{}/{name}", gw.rtsp_addr.unwrap());
    let player = tokio::spawn(async move {
        let opts = gbgate::sim::players::PlayersOptions { url, count: 1, duration: Duration::from_secs(6), stall: 0 };
        gbgate::sim::players::run_players(&opts).await
    });
    // ... and a flood of events: 4000 SSRCs nobody announced, each an unknown_ssrc event.
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut slowest_api = Duration::ZERO;
    for round in 0..20u32 {
        for i in 0..200u32 {
            flood.send_to(&rtp_packet(0x0E00_0000 + round * 200 + i, 0), gw.rtp_addr).unwrap();
        }
        let t = Instant::now();
        let (status, view) = http_get(gw.api_addr, "/api/v1/callbacks").await;
        slowest_api = slowest_api.max(t.elapsed());
        assert_eq!(status, 200);
        assert!(view["outbox"]["queued_bytes"].as_u64().unwrap() <= 65536, "{view}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = player.await.unwrap().expect("player runs");
    let p = &report.players[0];
    println!("player: {p:?}; slowest API answer {slowest_api:?}");
    assert!(p.error.is_none() && !p.closed_early, "{p:?}");
    // 6 s at 25 fps is 150 frames (plus the cached GOP it starts with).
    assert!(p.video_frames >= 140, "full frame rate: {p:?}");
    assert_eq!(p.video_seq_gaps, 0, "{p:?}");
    assert!(slowest_api < Duration::from_millis(500), "the API waited on the cc: {slowest_api:?}");
    let s = gw.hub.get(name).unwrap().stats();
    assert_eq!(s.lost, 0);
    let snap = gw.hub.notifier().snapshot();
    println!("outbox: {:?}", snap.outbox);
    assert!(snap.outbox.dropped > 1000, "oldest dropped, counted: {:?}", snap.outbox);
    assert!(snap.outbox.queued_bytes <= 65536);
    assert_eq!(snap.outbox.sent, 0);
    assert!(!held.lock().unwrap().is_empty(), "the gateway did try the cc");
    let _ = camera.await;
    // Shutdown waits for the outbox at most its deadline (3 s), not for the cc.
    let t = Instant::now();
    gw.stop().await;
    assert!(t.elapsed() < Duration::from_secs(5), "stop took {:?}", t.elapsed());
    accept.abort();
}

/// ffmpeg publisher over RTMP; (exited successfully in time, stderr). Still running at `limit`
/// counts as let in.
async fn publish(url: &str, format: &str, secs: u32) -> (bool, String, tokio::process::Child) {
    let mut child = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0", "-pix_fmt", "yuv420p"])
        .args(["-t", &secs.to_string(), "-f", format, url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ffmpeg");
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(status) => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = tokio::io::AsyncReadExt::read_to_string(&mut e, &mut err).await;
            }
            (status.is_ok_and(|s| s.success()), err, child)
        }
        Err(_) => (true, "still running".into(), child),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cc_decides_who_publishes_and_plays_and_a_dead_hook_falls_back_to_auth() {
    if !require_tool("callbacks", "ffmpeg") || !require_tool("callbacks", "ffprobe") {
        return;
    }
    let cc = Cc::start().await;
    let mut cfg = test_config();
    cfg.callbacks.on_publish = Some(cc.url("/on_publish"));
    cfg.callbacks.on_play = Some(cc.url("/on_play"));
    cfg.callbacks.authorize_timeout = dur("500ms");
    // `[auth]` alone would refuse every publisher here (no loopback exemption, no keys): what
    // gets in is the cc's allow.
    cfg.auth.loopback_exempt = false;
    let gw = start(cfg).await;
    let (rtmp, rtsp) = (gw.rtmp_addr.unwrap(), gw.rtsp_addr.unwrap());

    let (ok, err, _denied) = publish(&format!("rtmp://{rtmp}/live/deny-me"), "flv", 30).await;
    assert!(!ok, "the cc's deny blocks the RTMP publisher: {err}");
    assert!(gw.hub.get("live/deny-me").is_none());
    let (ok, err, _denied) = publish(&format!("rtsp://{rtsp}/live/deny-rtsp"), "rtsp", 30).await;
    assert!(!ok, "the cc's deny blocks an RTSP ANNOUNCE: {err}");
    assert!(err.contains("403"), "{err}");

    // A cc too slow for the deadline: `[auth]` decides (here: refused), without waiting for it.
    let t = Instant::now();
    let (ok, err, _slow) = publish(&format!("rtmp://{rtmp}/live/slow"), "flv", 30).await;
    assert!(!ok && t.elapsed() < Duration::from_secs(4), "{:?}: {err}", t.elapsed());
    assert!(gw.hub.get("live/slow").is_none());
    // An oversized answer is not read as "allow": `[auth]` decides (refused).
    let (ok, err, _huge) = publish(&format!("rtmp://{rtmp}/live/huge"), "flv", 30).await;
    assert!(!ok, "{err}");
    assert!(gw.hub.get("live/huge").is_none());

    let (ok, err, _allowed) = publish(&format!("rtmp://{rtmp}/live/ok"), "flv", 30).await;
    assert!(ok, "the cc's allow lets the publisher in: {err}");
    assert!(wait_for(Duration::from_secs(10), || gw.hub.get("live/ok").is_some_and(|s| s.has_keyframe())).await);

    let probe = |url: String| async move {
        run_program(
            "ffprobe",
            &["-v", "error", "-rtsp_transport", "tcp", "-show_streams", &url],
            Duration::from_secs(20),
        )
        .await
    };
    let (ok, out, err) = probe(format!("rtsp://{rtsp}/live/ok")).await;
    assert!(ok && out.contains("codec_name=h264"), "allowed player: {err}");
    let (ok, _, err) = probe(format!("rtsp://{rtsp}/live/ok?deny=1")).await;
    assert!(!ok && err.contains("403"), "the cc's deny blocks ffprobe over RTSP: {err}");
    let (ok, _, err) = probe(format!("rtmp://{rtmp}/live/ok?deny=1")).await;
    assert!(!ok, "the cc's deny blocks ffprobe over RTMP: {err}");

    // What the cc was asked.
    let asked = cc.all();
    // (The slow question's answer, if the cc finished it, came after the deadline.)
    let pubs: Vec<&Got> = asked
        .iter()
        .filter(|g| {
            g.path == "/on_publish" && !["live/slow", "live/huge"].contains(&g.body["stream"].as_str().unwrap())
        })
        .collect();
    assert_eq!(pubs.len(), 3, "{:#?}", bodies(&asked));
    let b = &pubs[0].body;
    assert_eq!(
        (b["event"].as_str(), b["stream"].as_str(), b["protocol"].as_str()),
        (Some("on_publish"), Some("live/deny-me"), Some("rtmp"))
    );
    assert!(b["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{b}");
    assert_eq!(pubs[1].body["protocol"], "rtsp");
    let plays: Vec<&Got> = asked.iter().filter(|g| g.path == "/on_play").collect();
    for protocol in ["rtsp", "rtmp"] {
        let asked_deny = |g: &&&Got| g.body["params"] == "deny=1" && g.body["protocol"] == protocol;
        assert!(plays.iter().any(|g| asked_deny(&g)), "{protocol}: {:#?}", bodies(&asked));
    }
    let snap = gw.hub.notifier().snapshot();
    assert_eq!((snap.authorize.denied, snap.authorize.fallback), (4, 2), "{:?}", snap.authorize);
    assert!(snap.authorize.allowed >= 2, "{:?}", snap.authorize);
    gw.stop().await;

    // A hook nobody answers: `[auth]` decides (loopback exempt by default: let in), quickly.
    let (_guard, dead) = refusing_port();
    let mut cfg = test_config();
    cfg.callbacks.on_publish = Some(format!("http://127.0.0.1:{dead}/on_publish"));
    let gw = start(cfg).await;
    let t = Instant::now();
    let url = format!("rtmp://{}/live/fallback", gw.rtmp_addr.unwrap());
    let publisher = tokio::spawn(async move { publish(&url, "flv", 30).await });
    assert!(
        wait_for(Duration::from_secs(10), || gw.hub.get("live/fallback").is_some()).await,
        "a dead hook falls back to [auth]"
    );
    println!("publish with a dead hook live after {:?}", t.elapsed());
    let (ok, err, _fallback) = publisher.await.unwrap();
    assert!(ok, "{err}");
    let snap = gw.hub.notifier().snapshot();
    assert_eq!(snap.authorize.fallback, 1, "{:?}", snap.authorize);
    gw.stop().await;
}

/// `url` is the default of the access hooks too (issue 10: "the default target of every event"),
/// an answer must say `allow` to let anyone in, and `on_publish = ""` turns the hook off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_defaults_the_access_hooks_and_an_empty_key_turns_one_off() {
    if !require_tool("callbacks", "ffmpeg") {
        return;
    }
    let cc = Cc::start().await;
    let mut cfg = test_config();
    // The cc treats paths starting with /on_ as hooks (deny "deny", allow the rest).
    cfg.callbacks.url = Some(cc.url("/on_everything"));
    cfg.auth.loopback_exempt = false;
    let gw = start(cfg.clone()).await;
    let rtmp = gw.rtmp_addr.unwrap();
    let (ok, err, _denied) = publish(&format!("rtmp://{rtmp}/live/deny-me"), "flv", 30).await;
    assert!(!ok, "the cc's deny at the default url blocks the publisher: {err}");
    let (ok, err, _allowed) = publish(&format!("rtmp://{rtmp}/live/ok"), "flv", 30).await;
    assert!(ok, "the cc's allow at the default url lets the publisher in: {err}");
    let asked = |got: &[Got]| got.iter().filter(|g| g.body["event"] == "on_publish").count();
    assert_eq!(asked(&cc.all()), 2, "{:#?}", bodies(&cc.all()));
    gw.stop().await;

    // Hook off: `[auth]` alone decides (here it refuses), and the cc is not asked.
    let before = asked(&cc.all());
    cfg.callbacks.on_publish = Some(String::new());
    let gw = start(cfg).await;
    let (ok, err, _refused) = publish(&format!("rtmp://{}/live/ok", gw.rtmp_addr.unwrap()), "flv", 30).await;
    assert!(!ok, "[auth] refuses without the hook: {err}");
    assert_eq!(asked(&cc.all()), before, "on_publish = \"\" is never asked");
    gw.stop().await;
}

fn gbgate() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_gbgate"))
}

/// Starts the binary with `cfg`; returns it once its ports file is written.
fn run_binary(dir: &std::path::Path, cfg: &std::path::Path) -> std::process::Child {
    let ports = dir.join("ports.json");
    let _ = std::fs::remove_file(&ports);
    let mut child = gbgate()
        .args(["run", "-c"])
        .arg(cfg)
        .arg("--ports-file")
        .arg(&ports)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ports.exists() {
        assert!(child.try_wait().unwrap().is_none(), "gbgate exited before listening");
        assert!(start.elapsed() < Duration::from_secs(10), "gbgate did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_started_tells_a_first_start_a_restart_and_a_crash_apart() {
    let cc = Cc::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gbgate.toml");
    let mut text = String::new();
    for section in ["rtp", "api", "rtsp", "rtmp", "http", "webrtc"] {
        text += &format!("[{section}]\nlisten = \"127.0.0.1:0\"\n");
    }
    text += "[sip]\nenabled = false\n";
    text += &format!(
        "[callbacks]\ngateway_started = \"{}\"\nstate_file = \"{}\"\n",
        cc.url("/gbGateWayStart"),
        dir.path().join("state.json").display()
    );
    std::fs::write(&cfg, text).unwrap();
    let started = |n: usize| {
        let cc = cc.clone();
        async move { cc.wait("gateway_started", Duration::from_secs(10), |g| g.len() >= n).await[n - 1].body.clone() }
    };
    // First start, then SIGTERM (graceful): the next start is a restart.
    let mut child = run_binary(dir.path(), &cfg);
    let first = started(1).await;
    assert_eq!(first["event"], "gateway_started");
    assert_eq!(first["start_reason"], "first_start", "{first}");
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(first["channels"], json!([]));
    assert_eq!(first["seq"], 1);
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
    let mut child = run_binary(dir.path(), &cfg);
    let second = started(2).await;
    assert_eq!(second["start_reason"], "restart", "{second}");
    assert_ne!(second["instance_id"], first["instance_id"], "a new instance id per start");
    // Killed: the next start is a crash.
    child.kill().unwrap();
    let _ = child.wait();
    let mut child = run_binary(dir.path(), &cfg);
    let third = started(3).await;
    assert_eq!(third["start_reason"], "crash", "{third}");
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
}
