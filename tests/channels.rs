//! Channels end to end, with the gbgate binary and real peers on 127.0.0.1: an `ffmpeg -listen 1`
//! RTMP origin, gbgate itself as an RTSP origin, `gbgate send --ssrc` as a camera pushing RTP,
//! the in-repo sim camera for GB28181, ffprobe as the player, `ffmpeg -listen 1` as the push
//! receiver, and a test HTTP receiver standing for the control center.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The gbgate binary on kernel-chosen ports, with its db in `dir`.
struct Gbgate {
    proc: Proc,
    api: SocketAddr,
    rtsp: SocketAddr,
    rtmp: SocketAddr,
    rtp: SocketAddr,
    sip: SocketAddr,
    log: PathBuf,
    /// Bearer token sent with every call.
    auth: Option<String>,
}

impl Gbgate {
    async fn start(dir: &Path, extra: &str) -> Gbgate {
        Gbgate::start_with(dir, "", extra).await
    }

    /// `api`: more `[api]` keys.
    async fn start_with(dir: &Path, api: &str, extra: &str) -> Gbgate {
        let conf = dir.join("gbgate.toml");
        let db = dir.join("gbgate.redb");
        std::fs::write(
            &conf,
            format!(
                "[rtp]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n{api}\n[rtsp]\nlisten = \"127.0.0.1:0\"\n\
                 [rtmp]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[webrtc]\nlisten = \"127.0.0.1:0\"\n[sip]\nlisten = \"127.0.0.1:0\"\npassword = \"\"\ndb = {db:?}\n{extra}"
            ),
        )
        .unwrap();
        let ports = dir.join("ports.json");
        let _ = std::fs::remove_file(&ports);
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let log = dir.join(format!("gbgate-{}.log", RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        let child = Command::new(env!("CARGO_BIN_EXE_gbgate"))
            .args(["run", "--config"])
            .arg(&conf)
            .arg("--ports-file")
            .arg(&ports)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap())
            .spawn()
            .expect("spawn gbgate");
        let mut proc = Proc(child);
        let t0 = Instant::now();
        let p: Value = loop {
            if let Some(v) = std::fs::read_to_string(&ports).ok().and_then(|t| serde_json::from_str(&t).ok()) {
                break v;
            }
            assert!(proc.0.try_wait().unwrap().is_none(), "gbgate exited: {}", std::fs::read_to_string(&log).unwrap());
            assert!(t0.elapsed() < Duration::from_secs(20), "no ports file");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let addr = |k: &str| p[k].as_str().unwrap().parse().unwrap();
        Gbgate {
            api: addr("api"),
            rtsp: addr("rtsp"),
            rtmp: addr("rtmp"),
            rtp: addr("rtp"),
            sip: addr("sip"),
            proc,
            log,
            auth: None,
        }
    }

    /// SIGTERM, and waits for a clean exit.
    async fn stop(mut self) {
        Command::new("kill").args(["-TERM", &self.proc.0.id().to_string()]).status().unwrap();
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.proc.0.try_wait().unwrap() {
                assert!(status.success(), "gbgate exits cleanly on SIGTERM: {status:?}\n{}", self.log_text());
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "gbgate did not exit on SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (mut headers, body) = match body {
            Some(b) => ("Content-Type: application/json\r\n".to_string(), b.to_string()),
            None => (String::new(), String::new()),
        };
        if let Some(t) = &self.auth {
            headers += &format!("Authorization: Bearer {t}\r\n");
        }
        let req = http_request(method, path, &self.api.to_string(), &headers, &body);
        let (status, _, text) = http_raw(self.api, req).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn create(&self, body: Value) -> Value {
        let (status, v) = self.call("POST", "/api/v1/channels", Some(body)).await;
        assert_eq!(status, 201, "{v}");
        v
    }

    /// Waits until channel `id` is in `state`; returns its view.
    async fn wait_state(&self, id: &str, state: &str, limit: Duration) -> Value {
        let path = format!("/api/v1/channels/{id}");
        let v = wait_json(self.api, &path, limit, |v| v["state"] == state).await;
        assert_eq!(v["state"], state, "channel {id}: {v}\n{}", self.log_text());
        v
    }
}

/// An `ffmpeg -listen 1` RTMP origin of a synthetic 25 fps H.264 + AAC stream.
async fn rtmp_origin() -> (String, Proc) {
    for _ in 0..5 {
        if let Some(o) = rtmp_origin_on(free_port()).await {
            return o;
        }
    }
    panic!("the ffmpeg origin could not listen");
}

/// As [`rtmp_origin`] on `port` (`None` when it could not listen there).
async fn rtmp_origin_on(port: u16) -> Option<(String, Proc)> {
    {
        let url = format!("rtmp://127.0.0.1:{port}/live/x");
        let child = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
            .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0", "-pix_fmt", "yuv420p"])
            .args(["-c:a", "aac", "-f", "flv", "-listen", "1", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ffmpeg origin");
        let mut p = Proc(child);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) && p.0.try_wait().unwrap().is_none() {
            if listening(port) {
                return Some((url, p));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    None
}

/// An `ffmpeg -listen 1` RTMP receiver writing what it gets to `file`.
async fn rtmp_receiver(file: &Path) -> (String, Proc) {
    for _ in 0..5 {
        let port = free_port();
        let url = format!("rtmp://127.0.0.1:{port}/app/x");
        let child = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y", "-listen", "1", "-i", &url, "-c", "copy", "-f", "flv"])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut p = Proc(child);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) && p.0.try_wait().unwrap().is_none() {
            if listening(port) {
                return (url, p);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("the ffmpeg receiver could not listen");
}

/// ffprobe reads `packets` video packets of `url`; returns the video codec name.
async fn plays(url: &str, packets: u32) -> String {
    let mut args: Vec<String> = vec!["-v".into(), "error".into()];
    if url.starts_with("rtsp") {
        args.extend(["-rtsp_transport".into(), "tcp".into()]);
    }
    args.extend(
        [
            "-select_streams",
            "v:0",
            "-read_intervals",
            &format!("%+#{packets}"),
            "-show_entries",
            "packet=flags:stream=codec_name",
            "-of",
            "json",
            url,
        ]
        .map(String::from),
    );
    let (ok, out, err) = run_program("ffprobe", &args, Duration::from_secs(30)).await;
    assert!(ok, "ffprobe {url}: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["packets"].as_array().map_or(0, Vec::len) >= packets as usize, "{url}: {out}");
    v["streams"][0]["codec_name"].as_str().unwrap_or("").to_string()
}

/// Waits until the receiver's file holds more than `bytes`, and the push says `pushing`.
async fn push_reaches(gw: &Gbgate, id: &str, file: &Path, bytes: u64) {
    let v = wait_json(gw.api, &format!("/api/v1/channels/{id}"), Duration::from_secs(20), |v| {
        v["push"][0]["state"] == "pushing"
    })
    .await;
    assert_eq!(v["push"][0]["state"], "pushing", "{v}");
    let ok = wait_for(Duration::from_secs(20), || std::fs::metadata(file).is_ok_and(|m| m.len() > bytes)).await;
    assert!(ok, "the RTMP receiver got {:?} bytes", std::fs::metadata(file).map(|m| m.len()));
}

fn tools(test: &str) -> bool {
    require_tool(test, "ffmpeg") && require_tool(test, "ffprobe")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_and_rtsp_pull_channels_play_push_stop_and_delete() {
    if !tools("channels_pull") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = Gbgate::start(dir.path(), "").await;
    let (origin, _origin) = rtmp_origin().await;
    let pushed = dir.path().join("pushed.flv");
    let (receiver, _receiver) = rtmp_receiver(&pushed).await;
    let v = gw.create(json!({"id": "cam_rtmp", "source": {"rtmp": {"url": origin}}, "push": [receiver]})).await;
    assert_eq!((v["id"].as_str(), v["stream"].as_str()), (Some("cam_rtmp"), Some("cam_rtmp")), "{v}");
    assert!(v["persistent"] == true, "{v}");
    let v = gw.wait_state("cam_rtmp", "live", Duration::from_secs(20)).await;
    assert!(v["reason"].as_str().unwrap().starts_with("pulling from 127.0.0.1:"), "{v}");
    assert_eq!(plays(&format!("rtsp://{}/cam_rtmp", gw.rtsp), 25).await, "h264");
    assert_eq!(plays(&format!("rtmp://{}/cam_rtmp", gw.rtmp), 25).await, "h264");
    push_reaches(&gw, "cam_rtmp", &pushed, 50_000).await;

    // An RTSP pull of gbgate's own RTSP server (fed by the RTMP channel).
    let url = format!("rtsp://{}/cam_rtmp", gw.rtsp);
    gw.create(json!({"id": "cam_rtsp", "source": {"rtsp": {"url": url, "transport": "tcp"}}, "timeout": "5s"})).await;
    gw.wait_state("cam_rtsp", "live", Duration::from_secs(20)).await;
    assert_eq!(plays(&format!("rtsp://{}/cam_rtsp", gw.rtsp), 25).await, "h264");
    let (status, list) = gw.call("GET", "/api/v1/channels", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["channels"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["cam_rtmp", "cam_rtsp"]);

    // Stop: the stream goes; the view says why.
    let (status, v) = gw.call("POST", "/api/v1/channels/cam_rtsp/stop", None).await;
    assert_eq!((status, v["state"].as_str(), v["reason"].as_str()), (200, Some("stopped"), Some("stopped by the API")));
    assert_eq!(http_get(gw.api, "/api/v1/streams/cam_rtsp").await.0, 404, "a stopped channel's stream is gone");
    // Start again: live again.
    let (status, _) = gw.call("POST", "/api/v1/channels/cam_rtsp/start", None).await;
    assert_eq!(status, 200);
    gw.wait_state("cam_rtsp", "live", Duration::from_secs(20)).await;

    for id in ["cam_rtsp", "cam_rtmp"] {
        let (status, v) = gw.call("DELETE", &format!("/api/v1/channels/{id}"), None).await;
        assert_eq!((status, v), (200, json!({"deleted": id})));
        assert_eq!(gw.call("GET", &format!("/api/v1/channels/{id}"), None).await.0, 404);
        assert_eq!(http_get(gw.api, &format!("/api/v1/streams/{id}")).await.0, 404);
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtp_channel_names_the_stream_a_camera_pushes_with_its_ssrc() {
    if !tools("channels_rtp") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec");
    let gw = Gbgate::start(dir.path(), &format!("[record]\ndir = {rec:?}\n")).await;
    let pushed = dir.path().join("pushed.flv");
    let (receiver, _receiver) = rtmp_receiver(&pushed).await;
    // The camera: `gbgate send` with that SSRC, looping the PS-over-RTP fixture in real time.
    let sender = Command::new(env!("CARGO_BIN_EXE_gbgate"))
        .args(["send", "--to", &gw.rtp.to_string(), "--ssrc", "600000001", "--loop", "100"])
        .arg(own_fixture("h264_g711a_8k.rtp"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sender = Proc(sender);
    // Before the channel exists, the camera's stream is an unknown SSRC's (what the cc hears of
    // as `unknown_ssrc`); creating the channel claims it.
    let unknown =
        wait_json(gw.api, "/api/v1/streams/rtp/23C34601", Duration::from_secs(10), |v| v["name"].is_string()).await;
    assert_eq!(unknown["name"], "rtp/23C34601", "{unknown}");
    let v = gw
        .create(json!({"id": "pushcam", "source": {"rtp": {"ssrc": "0600000001"}}, "push": [receiver], "record": true}))
        .await;
    assert_eq!(v["state"], "starting", "{v}");
    gw.wait_state("pushcam", "live", Duration::from_secs(20)).await;
    assert_eq!(plays(&format!("rtsp://{}/pushcam", gw.rtsp), 10).await, "h264");
    push_reaches(&gw, "pushcam", &pushed, 20_000).await;
    let (status, v) = gw.call("GET", "/api/v1/push-channels", None).await;
    assert_eq!(status, 200);
    let p = &v["push_channels"][0];
    assert_eq!(
        (p["ssrc"].as_str(), p["stream"].as_str(), p["channel"].as_str()),
        (Some("0600000001"), Some("pushcam"), Some("pushcam")),
        "{v}"
    );
    assert_eq!(p["transport"], "udp", "{v}");
    assert!(p["first_source"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
    assert!(p["packets"].as_u64().unwrap() > 0 && p["bytes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(p["state"], "live", "{v}");
    // `record: true`: the camera's raw RTP is recorded under the channel's stream name.
    let (_, st) = http_get(gw.api, "/api/v1/streams/pushcam").await;
    assert!(st["record"]["packets"].as_u64().unwrap_or(0) > 0, "{st}");
    let files: Vec<_> = std::fs::read_dir(rec.join("pushcam")).unwrap().flatten().collect();
    assert!(!files.is_empty(), "no recording file");
    assert_eq!(http_get(gw.api, "/api/v1/streams/rtp/23C34601").await.0, 404, "the unknown stream was claimed");

    // The camera stops: no data -> stalled with the reason.
    drop(sender);
    let v = gw.wait_state("pushcam", "stalled", Duration::from_secs(30)).await;
    assert!(
        v["reason"].as_str().unwrap().contains("no data for 10s") || v["reason"].as_str().unwrap().contains("ended"),
        "{v}"
    );
    let (_, v) = gw.call("GET", "/api/v1/push-channels", None).await;
    let p = v["push_channels"].as_array().unwrap().iter().find(|p| p["stream"] == "pushcam").cloned();
    assert_eq!(p.as_ref().map(|p| p["state"].clone()), Some(json!("stalled")), "a silent camera's push channel: {v}");
    let (status, v) = gw.call("POST", "/api/v1/channels/pushcam/stop", None).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("stopped")), "{v}");
    let (status, _) = gw.call("DELETE", "/api/v1/channels/pushcam", None).await;
    assert_eq!(status, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gb28181_channel_invites_the_camera_plays_pushes_and_byes_on_stop() {
    if !tools("channels_gb") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cc_addr, got) = cc().await;
    let gw = Gbgate::start(dir.path(), &format!("[callbacks]\nurl = \"http://{cc_addr}/cc\"\n")).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut opts = gbgate::sim::camera::SimOptions::new(gw.sip, own_fixture("h264_g711a_8k.rtp"));
    opts.keepalive = Duration::from_secs(5);
    opts.channels = 2;
    let stats = gbgate::sim::camera::spawn(opts, stop.clone()).await.unwrap();
    let dev = "34020000001320000001";
    let ch = gbgate::sim::camera::channel_id(dev, 0);
    let online = wait_json(gw.api, &format!("/api/v1/devices/{dev}"), Duration::from_secs(10), |v| {
        v["online"] == true && v["channels"].as_array().is_some_and(|c| !c.is_empty())
    })
    .await;
    assert_eq!(online["online"], true, "{online}");
    let pushed = dir.path().join("pushed.flv");
    let (receiver, _receiver) = rtmp_receiver(&pushed).await;
    gw.create(json!({"id": "gbcam", "source": {"gb28181": {"device_id": dev, "channel_id": ch, "transport": "udp"}},
        "push": [receiver], "timeout": "5s"}))
        .await;
    let v = gw.wait_state("gbcam", "live", Duration::from_secs(20)).await;
    assert!(v["reason"].as_str().unwrap().starts_with(&format!("live from {dev}")), "{v}");
    assert_eq!(plays(&format!("rtsp://{}/gbcam", gw.rtsp), 10).await, "h264");
    assert_eq!(plays(&format!("rtmp://{}/gbcam", gw.rtmp), 10).await, "h264");
    push_reaches(&gw, "gbcam", &pushed, 20_000).await;
    // The push's state reached the cc as a stream_state of the channel.
    let ok = wait_for(Duration::from_secs(5), || {
        got.lock().unwrap().iter().any(|e| {
            e["event"] == "stream_state"
                && e["channel"] == "gbcam"
                && e["state"] == "live"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("push rtmp://127.0.0.1:") && r.ends_with("pushing"))
        })
    })
    .await;
    assert!(ok, "push stream_state: {:?}", got.lock().unwrap());
    // A second channel of the camera over TCP (the camera connects to our RTP port).
    let ch2 = gbgate::sim::camera::channel_id(dev, 1);
    gw.create(json!({"id": "gbcam2", "source": {"gb28181": {"device_id": dev, "channel_id": ch2, "transport": "tcp-passive"}}}))
        .await;
    gw.wait_state("gbcam2", "live", Duration::from_secs(20)).await;
    assert_eq!(plays(&format!("rtsp://{}/gbcam2", gw.rtsp), 10).await, "h264");
    // Each GB session's stream is listed once among the push channels, with its channel.
    let (_, v) = gw.call("GET", "/api/v1/push-channels", None).await;
    let mut list: Vec<(String, String, String)> = v["push_channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["stream"].as_str().unwrap().into(),
                p["channel"].as_str().unwrap().into(),
                p["transport"].as_str().unwrap().into(),
            )
        })
        .collect();
    list.sort();
    assert_eq!(
        list,
        [(format!("gb/{ch}"), "gbcam".into(), "udp".into()), (format!("gb/{ch2}"), "gbcam2".into(), "tcp".into())],
        "{v}"
    );

    let byes = gbgate::sim::camera::SimStats::get(&stats.byes_received);
    let (status, v) = gw.call("POST", "/api/v1/channels/gbcam/stop", None).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("stopped")), "{v}");
    let ok = wait_for(Duration::from_secs(5), || gbgate::sim::camera::SimStats::get(&stats.byes_received) > byes).await;
    assert!(ok, "stopping the channel sent the camera a BYE");
    assert_eq!(http_get(gw.api, "/api/v1/streams/gbcam").await.0, 404);
    let (status, _) = gw.call("DELETE", "/api/v1/channels/gbcam", None).await;
    assert_eq!(status, 200);
    gw.stop().await;
    stop.cancel();
}

/// The control center: an HTTP server on port 0 keeping every JSON body POSTed to it.
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
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_come_back_after_a_restart_and_gateway_started_lists_them() {
    if !tools("channels_restart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cc_addr, got) = cc().await;
    let callbacks = format!("[callbacks]\nurl = \"http://{cc_addr}/cc\"\n");
    let (origin, _origin) = rtmp_origin().await;
    let gw = Gbgate::start(dir.path(), &callbacks).await;
    gw.create(json!({"id": "a", "source": {"rtmp": {"url": origin}}})).await;
    gw.create(json!({"id": "b", "source": {"rtsp": {"url": "rtsp://127.0.0.1:9/none"}}, "autostart": false})).await;
    gw.wait_state("a", "live", Duration::from_secs(20)).await;
    assert_eq!(gw.call("GET", "/api/v1/channels/b", None).await.1["state"], "idle");
    gw.stop().await;
    // An `ffmpeg -listen 1` origin serves one connection: a new one on the same port for the
    // restarted gateway.
    drop(_origin);
    let port: u16 = origin.rsplit(':').next().unwrap().split('/').next().unwrap().parse().unwrap();
    let _origin = rtmp_origin_on(port).await.expect("the origin listens again on its port");
    let gw = Gbgate::start(dir.path(), &callbacks).await;
    let (status, list) = gw.call("GET", "/api/v1/channels", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["channels"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b"], "{list}");
    let b = &list["channels"][1];
    assert_eq!((b["running"].as_bool(), b["state"].as_str()), (Some(false), Some("idle")), "b was never started: {b}");
    gw.wait_state("a", "live", Duration::from_secs(20)).await;
    assert_eq!(plays(&format!("rtsp://{}/a", gw.rtsp), 10).await, "h264");
    let started = |got: &Arc<Mutex<Vec<Value>>>| {
        got.lock().unwrap().iter().filter(|e| e["event"] == "gateway_started").cloned().collect::<Vec<_>>()
    };
    let ok = wait_for(Duration::from_secs(10), || started(&got).len() == 2).await;
    assert!(ok, "two gateway_started: {:?}", got.lock().unwrap());
    let second = &started(&got)[1];
    let listed: Vec<&str> = second["channels"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(listed, ["a", "b"], "{second}");
    assert_eq!(started(&got)[0]["channels"], json!([]), "the first start restored nothing");
    // Channel transitions without a hub stream are told too (a starting, before it was live).
    let ok = wait_for(Duration::from_secs(5), || {
        got.lock()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "stream_state" && e["channel"] == "a" && e["state"] == "starting")
    })
    .await;
    assert!(ok, "stream_state starting for channel a: {:?}", got.lock().unwrap());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_name_the_field_duplicates_conflict_unknown_ids_are_404() {
    let dir = tempfile::tempdir().unwrap();
    let token = "0123456789abcdef0123";
    let gw = Gbgate::start_with(dir.path(), &format!("token = {token:?}"), "").await;
    // The channel routes are behind the API's token like every other endpoint.
    let (status, v) = gw.call("GET", "/api/v1/channels", None).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("unauthorized")), "{v}");
    let gw = Gbgate { auth: Some(token.to_string()), ..gw };
    let cases = [
        (json!({"id": "x", "source": {"rtsp": {}}}), "bad_json", "source.rtsp"),
        (json!({"id": "x", "source": {"rtsp": {"url": "http://h/x"}}}), "invalid_field", "source.rtsp.url: "),
        (json!({"id": "x", "source": {"rtp": {"ssrc": "12"}}}), "invalid_field", "source.rtp.ssrc: "),
        (
            json!({"id": "x", "source": {"gb28181": {"device_id": "1", "channel_id": "2"}}}),
            "invalid_field",
            "source.gb28181.device_id: ",
        ),
        (
            json!({"id": "x", "source": {"rtmp": {"url": "rtmp://h/a"}}, "timeout": "soon"}),
            "invalid_field",
            "timeout: ",
        ),
        (
            json!({"id": "x", "source": {"rtmp": {"url": "rtmp://h/a"}}, "push": ["udp://h"]}),
            "invalid_field",
            "push[0]: ",
        ),
        (json!({"id": "a/b", "source": {"rtmp": {"url": "rtmp://h/a"}}}), "invalid_field", "id: "),
        (json!({"id": "x", "source": {"ftp": {"url": "x"}}}), "bad_json", "source"),
    ];
    for (body, code, field) in cases {
        let (status, v) = gw.call("POST", "/api/v1/channels", Some(body.clone())).await;
        assert_eq!((status, v["code"].as_str()), (400, Some(code)), "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    let ok = json!({"id": "x", "source": {"rtmp": {"url": "rtmp://127.0.0.1:9/a/b"}}, "autostart": false});
    gw.create(ok.clone()).await;
    let (status, v) = gw.call("POST", "/api/v1/channels", Some(ok)).await;
    assert_eq!((status, v["code"].as_str()), (409, Some("conflict")), "{v}");
    for (m, p) in [
        ("GET", "/api/v1/channels/nope"),
        ("POST", "/api/v1/channels/nope/start"),
        ("POST", "/api/v1/channels/nope/stop"),
        ("DELETE", "/api/v1/channels/nope"),
    ] {
        let (status, v) = gw.call(m, p, None).await;
        assert_eq!((status, v["code"].as_str()), (404, Some("not_found")), "{m} {p}: {v}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gb_channel_whose_camera_goes_silent_is_stalled_with_the_reason_and_byed() {
    let dir = tempfile::tempdir().unwrap();
    let (cc_addr, got) = cc().await;
    let gw = Gbgate::start(dir.path(), &format!("[callbacks]\nurl = \"http://{cc_addr}/cc\"\n")).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut opts = gbgate::sim::camera::SimOptions::new(gw.sip, own_fixture("h264_g711a_8k.rtp"));
    // Stopping the camera is a crash: its media stops, no BYE, no unregister.
    opts.unregister_on_stop = false;
    gbgate::sim::camera::spawn(opts, stop.clone()).await.unwrap();
    let dev = "34020000001320000001";
    let ch = gbgate::sim::camera::channel_id(dev, 0);
    wait_json(gw.api, &format!("/api/v1/devices/{dev}"), Duration::from_secs(10), |v| {
        v["channels"].as_array().is_some_and(|c| !c.is_empty())
    })
    .await;
    gw.create(json!({"id": "silent", "source": {"gb28181": {"device_id": dev, "channel_id": ch}}, "timeout": "2s"}))
        .await;
    gw.wait_state("silent", "live", Duration::from_secs(20)).await;
    stop.cancel();
    let t0 = Instant::now();
    let v = gw.wait_state("silent", "stalled", Duration::from_secs(10)).await;
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.starts_with("no data for 2s, retrying in"), "{v}");
    assert!(t0.elapsed() < Duration::from_secs(5), "stalled {:?} after the camera stopped", t0.elapsed());
    // The session was ended with a BYE (the device never sent one).
    let (_, s) = gw.call("GET", "/api/v1/gb/sessions", None).await;
    let ended = s["ended"].as_array().unwrap();
    let stream = format!("gb/{ch}");
    assert!(ended.iter().any(|e| e["stream"] == stream.as_str() && e["reason"] == "stopped by request"), "{s}");
    // The control center heard it, with the channel and the reason.
    let ok = wait_for(Duration::from_secs(5), || {
        got.lock().unwrap().iter().any(|e| {
            e["event"] == "stream_state"
                && e["channel"] == "silent"
                && e["state"] == "stalled"
                && e["reason"].as_str().is_some_and(|r| r.starts_with("no data for 2s"))
        })
    })
    .await;
    assert!(ok, "stream_state stalled: {:?}", got.lock().unwrap());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_channel_starts_when_a_player_asks_and_idles_back() {
    if !tools("channels_on_demand") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = Gbgate::start(dir.path(), "").await;
    let (origin, _origin) = rtmp_origin().await;
    let v =
        gw.create(json!({"id": "od", "source": {"rtmp": {"url": origin}}, "on_demand": true, "idle_stop": "2s"})).await;
    assert_eq!(
        (v["state"].as_str(), v["reason"].as_str()),
        (Some("idle"), Some("on demand: starts when a player asks"))
    );
    assert_eq!(http_get(gw.api, "/api/v1/streams/od").await.0, 404, "nothing pulled before a player asks");
    assert_eq!(plays(&format!("rtsp://{}/od", gw.rtsp), 25).await, "h264");
    let v = gw.wait_state("od", "idle", Duration::from_secs(10)).await;
    assert_eq!(v["reason"], "idle stop: no player for 2s", "{v}");
    assert_eq!(http_get(gw.api, "/api/v1/streams/od").await.0, 404, "the pull stopped when idle");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_playback_channel_plays_the_recording_and_stops_at_its_end() {
    if !tools("channels_playback") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = Gbgate::start(dir.path(), "").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut opts = gbgate::sim::camera::SimOptions::new(gw.sip, own_fixture("h264_g711a_8k.rtp"));
    opts.playback_length = Duration::from_secs(4);
    gbgate::sim::camera::spawn(opts, stop.clone()).await.unwrap();
    let dev = "34020000001320000001";
    let ch = gbgate::sim::camera::channel_id(dev, 0);
    wait_json(gw.api, &format!("/api/v1/devices/{dev}"), Duration::from_secs(10), |v| {
        v["channels"].as_array().is_some_and(|c| !c.is_empty())
    })
    .await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    gw.create(json!({"id": "rec1", "source": {"gb28181": {"device_id": dev, "channel_id": ch,
        "playback": {"start": now - 3600, "end": now - 1800}}}}))
        .await;
    let v = gw.wait_state("rec1", "live", Duration::from_secs(20)).await;
    assert!(v["reason"].as_str().unwrap().starts_with(&format!("playback from {dev}")), "{v}");
    assert_eq!(plays(&format!("rtsp://{}/rec1", gw.rtsp), 10).await, "h264");
    // The device ends the recording (MediaStatus 121): stopped, not retried, not run after a restart.
    let v = gw.wait_state("rec1", "stopped", Duration::from_secs(15)).await;
    assert!(v["reason"].as_str().unwrap().starts_with("playback ended: "), "{v}");
    let v = wait_json(gw.api, "/api/v1/channels/rec1", Duration::from_secs(5), |v| v["running"] == false).await;
    assert_eq!(v["running"], false, "{v}");
    gw.stop().await;
    stop.cancel();
}
