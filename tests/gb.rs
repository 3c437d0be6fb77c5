//! GB28181 signalling end to end on loopback, with peers we did not write (sipp, ffprobe) and the
//! project's camera simulator (`gbgate sim`, run in-process through its library entry).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{http_get, own_fixture, run_program, start, test_config, wait_devices_with_catalogs, wait_for};
use gbgate::gb::GbEvent;
use gbgate::proto::sip::sdp::MediaTransport;
use gbgate::sim::camera::{self, Quirk, SimOptions, SimStats};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "12345678";

/// Logs to the test output when RUST_LOG is set (e.g. RUST_LOG=gbgate=debug).
fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn gb_config() -> gbgate::config::Config {
    init_log();
    let mut cfg = test_config();
    cfg.sip.password = Some(PASSWORD.into());
    cfg
}

fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sipp").join(name)
}

/// Runs one sipp call of `scenario` against `sip`; returns (success, stderr+error log).
async fn sipp(scenario_file: &str, sip: SocketAddr, transport: &str, dev: &str, password: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let err_file = dir.path().join("err.log");
    let out = tokio::process::Command::new("sipp")
        .arg(sip.to_string())
        .arg("-sf")
        .arg(scenario(scenario_file))
        .args(["-m", "1", "-i", "127.0.0.1", "-t", transport, "-au", dev, "-ap", password])
        .args(["-key", "gw_id", "34020000002000000001", "-key", "domain", "3402000000", "-key", "dev", dev])
        .args(["-timeout", "15s", "-timeout_error", "-recv_timeout", "5000", "-nostdin", "-trace_err"])
        .arg("-error_file")
        .arg(&err_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .expect("sipp is installed (apt-get install sip-tester)");
    let log = std::fs::read_to_string(&err_file).unwrap_or_default();
    (out.status.success(), format!("{}\n{log}", String::from_utf8_lossy(&out.stderr)))
}

async fn device(api: SocketAddr, id: &str) -> Value {
    let (status, body) = http_get(api, &format!("/api/v1/devices/{id}")).await;
    assert_eq!(status, 200, "device {id}: {body}");
    body
}

async fn next_event(rx: &mut tokio::sync::broadcast::Receiver<GbEvent>, limit: Duration) -> GbEvent {
    tokio::time::timeout(limit, rx.recv()).await.expect("an event in time").expect("event bus open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_registers_with_digest_keepalive_gets_200_then_goes_offline_after_three_intervals() {
    let mut cfg = gb_config();
    cfg.gb.keepalive_interval = gbgate::config::HumanDuration(Duration::from_millis(300));
    cfg.gb.keepalive_misses = 3;
    let gw = start(cfg).await;
    let gb = gw.gb.clone().unwrap();
    let mut events = gb.events();
    let sip = gw.sip_addr.unwrap();
    let dev = "34020000001320000001";
    let (ok, log) = sipp("register_keepalive.xml", sip, "u1", dev, PASSWORD).await;
    assert!(ok, "sipp register + keepalive over UDP failed: {log}");
    let registered_at = Instant::now();
    assert!(
        matches!(next_event(&mut events, Duration::from_secs(2)).await, GbEvent::Registered { ref device } if device == dev)
    );
    assert!(matches!(next_event(&mut events, Duration::from_secs(2)).await, GbEvent::Online { .. }));
    let d = device(gw.api_addr, dev).await;
    assert_eq!(d["online"], true);
    assert_eq!(d["expires"], 3600);
    // sipp sends nothing more: 3 intervals of 300 ms later the device is offline.
    let offline = loop {
        match next_event(&mut events, Duration::from_secs(5)).await {
            GbEvent::Offline { device, reason } => break (device, reason),
            _ => continue,
        }
    };
    let after = registered_at.elapsed();
    assert_eq!(offline.0, dev);
    assert!(offline.1.contains("keepalives missed"), "{}", offline.1);
    assert!(after >= Duration::from_millis(800) && after < Duration::from_secs(3), "offline after {after:?}");
    assert_eq!(device(gw.api_addr, dev).await["online"], false);
    println!("offline {after:?} after the last keepalive (3 x 300 ms)");
    // The same over TCP (framing by Content-Length).
    let (ok, log) = sipp("register_keepalive.xml", sip, "t1", "34020000001320000002", PASSWORD).await;
    assert!(ok, "sipp register + keepalive over TCP failed: {log}");
    assert_eq!(device(gw.api_addr, "34020000001320000002").await["transport"], "tcp");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_with_a_wrong_password_gets_403() {
    let gw = start(gb_config()).await;
    let (ok, log) =
        sipp("register_wrong_password.xml", gw.sip_addr.unwrap(), "u1", "34020000001320000009", "wrong").await;
    assert!(ok, "expected 403: {log}");
    let (status, _) = http_get(gw.api_addr, "/api/v1/devices/34020000001320000009").await;
    assert_eq!(status, 404, "a device that failed authentication is not registered");
    gw.stop().await;
}

fn sim_options(gw: &gbgate::server::Gateway) -> SimOptions {
    let mut o = SimOptions::new(gw.sip_addr.unwrap(), own_fixture("h264_g711a_8k.rtp"));
    o.password = PASSWORD.into();
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_simulated_cameras_register_at_once_and_show_their_catalogs() {
    let gw = start(gb_config()).await;
    let stop = CancellationToken::new();
    let mut o = sim_options(&gw);
    o.count = 100;
    o.channels = 3; // answered in two MESSAGEs: the gateway aggregates by SumNum
    o.gb2312_names = true;
    let started = Instant::now();
    let stats = camera::spawn(o, stop.clone()).await.unwrap();
    let api = gw.api_addr;
    let mut last;
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let (_, body) = http_get(api, "/api/v1/devices").await;
        let list = body["devices"].as_array().cloned().unwrap_or_default();
        let ok = list.len() == 100
            && list.iter().all(|d| d["online"] == true && d["channels"].as_array().map_or(0, |c| c.len()) == 3);
        last = body;
        if ok || Instant::now() > deadline {
            break ok;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(done, "not all 100 online with 3 channels: {}", last.to_string().chars().take(2000).collect::<String>());
    println!("100 cameras registered and catalogued in {:?}", started.elapsed());
    assert_eq!(SimStats::get(&stats.registered), 100);
    let d = device(api, "34020000001320000050").await;
    assert_eq!(d["channels"][0]["name"], "大门口摄像机1", "GB2312 names decoded");
    assert_eq!(d["info"]["manufacturer"], "gbgate-sim");
    // Unregister (Expires 0) takes them offline.
    stop.cancel();
    let gb = gw.gb.clone().unwrap();
    assert!(wait_for(Duration::from_secs(5), || gb.devices().iter().all(|d| !d.online)).await, "unregister");
    gw.stop().await;
}

async fn run(cmd: &str, args: &[&str], limit: Duration) -> (bool, String, String) {
    run_program(cmd, args, limit).await
}

/// Decoded video frames of the first 2 seconds of `url` (key_frame flags).
async fn decoded_frames(url: &str) -> Result<Vec<bool>, String> {
    let mut args = vec!["-v", "error"];
    if url.starts_with("rtsp") {
        args.extend(["-rtsp_transport", "tcp"]);
    }
    args.extend([
        "-select_streams",
        "v:0",
        "-read_intervals",
        "%+2",
        "-show_entries",
        "frame=key_frame",
        "-of",
        "json",
        url,
    ]);
    let (ok, out, err) = run("ffprobe", &args, Duration::from_secs(40)).await;
    if !ok {
        return Err(err);
    }
    let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    Ok(v["frames"].as_array().cloned().unwrap_or_default().iter().map(|f| f["key_frame"] == 1).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_trigger_invites_over_udp_tcp_passive_tcp_active_with_vendor_quirks_and_idle_stop_sends_bye() {
    let mut cfg = gb_config();
    cfg.gb.idle_stop = gbgate::config::HumanDuration(Duration::from_secs(2));
    // One simulated camera per case; the transport is chosen per device.
    // The TCP-active camera streams the synthetic pattern (H.264 I_PCM through gbgate's PS muxer).
    let cases: [(&str, MediaTransport, Quirk, &str); 7] = [
        ("34020000001320000101", MediaTransport::Udp, Quirk::None, "rtsp"),
        ("34020000001320000201", MediaTransport::TcpPassive, Quirk::None, "rtsp"),
        ("34020000001320000301", MediaTransport::TcpActive, Quirk::None, "rtsp"),
        ("34020000001320000401", MediaTransport::Udp, Quirk::Hikvision, "rtsp"),
        ("34020000001320000501", MediaTransport::Udp, Quirk::Dahua, "rtmp"),
        ("34020000001320000601", MediaTransport::TcpPassive, Quirk::Dahua, "rtsp"),
        ("34020000001320000701", MediaTransport::TcpActive, Quirk::Hikvision, "rtsp"),
    ];
    for (id, t, _, _) in &cases {
        cfg.gb.transports.insert(id.to_string(), *t);
    }
    let gw = start(cfg).await;
    let stop = CancellationToken::new();
    let mut sims: Vec<Arc<SimStats>> = Vec::new();
    for (id, t, quirk, _) in &cases {
        let mut o = sim_options(&gw);
        o.first_id = id.to_string();
        o.quirk = *quirk;
        if *t == MediaTransport::TcpActive && *quirk == Quirk::None {
            o.media = camera::SYNTHETIC.into();
        }
        sims.push(camera::spawn(o, stop.clone()).await.unwrap());
    }
    wait_devices_with_catalogs(&gw, cases.len(), "cameras registered with catalogs").await;
    let gb = gw.gb.clone().unwrap();
    let mut players = Vec::new();
    for (i, (id, t, quirk, proto)) in cases.iter().enumerate() {
        let channel = camera::channel_id(id, 0);
        let url = match *proto {
            "rtsp" => format!("rtsp://{}/gb/{channel}", gw.rtsp_addr.unwrap()),
            _ => format!("rtmp://{}/gb/{channel}", gw.rtmp_addr.unwrap()),
        };
        let label = format!("{proto} {t:?} {quirk:?}");
        players.push(tokio::spawn(async move { (i, label, url.clone(), decoded_frames(&url).await) }));
    }
    for p in players {
        let (i, label, url, frames) = p.await.unwrap();
        let frames = frames.unwrap_or_else(|e| panic!("{label}: ffprobe {url}: {e}"));
        let keys = frames.iter().filter(|k| **k).count();
        println!("{label}: {} video frames decoded ({keys} keyframes) from {url}", frames.len());
        assert!(frames.len() >= 10 && keys >= 1, "{label}: {frames:?}");
        assert_eq!(SimStats::get(&sims[i].invites), 1, "{label}: one INVITE");
    }
    // Nobody watches any more: after idle_stop (2 s) every camera receives BYE.
    assert!(
        wait_for(Duration::from_secs(8), || sims.iter().all(|s| SimStats::get(&s.byes_received) == 1)).await,
        "BYE after idle_stop: {:?}",
        sims.iter().map(|s| SimStats::get(&s.byes_received)).collect::<Vec<_>>()
    );
    assert!(gb.sessions().await.is_empty());
    stop.cancel();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_failures_name_the_step_and_answer_404() {
    let gw = start(gb_config()).await;
    // No device owns this channel: RTSP DESCRIBE answers 404 (the log says "no device").
    let url = format!("rtsp://{}/gb/34020000001310999999", gw.rtsp_addr.unwrap());
    let (ok, _, err) = run("ffprobe", &["-v", "error", "-rtsp_transport", "tcp", &url], Duration::from_secs(20)).await;
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
    let gb = gw.gb.clone().unwrap();
    let e = gb.play(None, "34020000001310999999", None).await.unwrap_err();
    assert!(e.to_string().starts_with("no device"), "{e}");
    gw.stop().await;
}

async fn http(api: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (method, path, body) = (method.to_string(), path.to_string(), body.to_string());
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_ptz_record_search_playback_with_control_and_end_of_file() {
    let gw = start(gb_config()).await;
    let stop = CancellationToken::new();
    let mut o = sim_options(&gw);
    o.playback_length = Duration::from_secs(3);
    let stats = camera::spawn(o, stop.clone()).await.unwrap();
    let gb = gw.gb.clone().unwrap();
    let dev = "34020000001320000001";
    let ch = camera::channel_id(dev, 0);
    assert!(wait_for(Duration::from_secs(5), || gb.device(dev).is_some_and(|d| !d.channels.is_empty())).await);
    let api = gw.api_addr;
    let base = format!("/api/v1/devices/{dev}/channels/{ch}");
    // PTZ: right at speed 0x1F is the SPVMN vector A50F01011F0000D5.
    let (status, body) = http(api, "POST", &format!("{base}/ptz"), r#"{"action":"right","speed":31}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ptz_cmd"], "A50F01011F0000D5");
    assert!(wait_for(Duration::from_secs(2), || SimStats::get(&stats.ptz) == 1).await);
    assert_eq!(*stats.last_ptz.lock().unwrap(), "A50F01011F0000D5");
    // DeviceStatus and DeviceInfo asked now.
    let (status, body) = http(api, "GET", &format!("/api/v1/devices/{dev}/status"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Online"], "ONLINE");
    let (status, body) = http(api, "GET", &format!("/api/v1/devices/{dev}/info"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Manufacturer"], "gbgate-sim");
    // RecordInfo over a day: the simulator reports two recordings.
    let (status, body) =
        http(api, "GET", &format!("{base}/records?start=2024-05-01T00:00:00&end=2024-05-02T00:00:00"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["records"].as_array().map(|r| r.len()), Some(2), "{body}");
    assert_eq!(body["records"][0]["start_time"], "2024-05-01T00:00:00");
    // Playback (s=Playback, t= range): media flows, INFO pause/scale reach the device, and the
    // device's MediaStatus 121 ends the session with BYE.
    let (status, info) =
        http(api, "POST", &format!("{base}/playback"), r#"{"start":1714521600,"end":1714525200}"#).await;
    assert_eq!(status, 200, "{info}");
    let stream = info["stream"].as_str().unwrap().to_string();
    assert!(info["ssrc"].as_str().unwrap().starts_with('1'), "history SSRC starts with 1: {info}");
    gb.wait_keyframe(&stream).await.unwrap();
    for c in [r#"{"action":"pause"}"#, r#"{"action":"scale","scale":2.0}"#, r#"{"action":"play"}"#] {
        let (status, body) = http(api, "POST", &format!("/api/v1/gb/sessions/{stream}"), c).await;
        assert_eq!(status, 200, "{c}: {body}");
    }
    assert_eq!(SimStats::get(&stats.infos), 3);
    assert!(
        wait_for(Duration::from_secs(8), || SimStats::get(&stats.media_status_sent) == 1
            && SimStats::get(&stats.byes_received) == 1)
        .await,
        "MediaStatus 121 then BYE"
    );
    assert!(gw.hub.get(&stream).is_none(), "stream ended with the session");
    // Download at 4x: s=Download with a=downloadspeed, streamed as gb/download/<ssrc>; stop = BYE.
    let (status, info) =
        http(api, "POST", &format!("{base}/playback"), r#"{"start":1714521600,"end":1714525200,"download_speed":4}"#)
            .await;
    assert_eq!(status, 200, "{info}");
    let stream = info["stream"].as_str().unwrap().to_string();
    assert!(stream.starts_with("gb/download/"), "{stream}");
    gb.wait_keyframe(&stream).await.unwrap();
    let (status, _) = http(api, "POST", &format!("/api/v1/gb/sessions/{stream}"), r#"{"action":"stop"}"#).await;
    assert_eq!(status, 200);
    assert!(wait_for(Duration::from_secs(3), || SimStats::get(&stats.byes_received) == 2).await);
    // Live play and stop through the API.
    let (status, body) = http(api, "POST", &format!("{base}/play"), r#"{"transport":"tcp-passive"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stream"], format!("gb/{ch}"));
    let (status, _) = http(api, "POST", &format!("{base}/stop"), "").await;
    assert_eq!(status, 200);
    assert!(wait_for(Duration::from_secs(3), || SimStats::get(&stats.byes_received) == 3).await);
    let (status, body) = http(api, "POST", "/api/v1/devices/nope/channels/x/play", "").await;
    assert_eq!(status, 404, "{body}");
    stop.cancel();
    gw.stop().await;
}
