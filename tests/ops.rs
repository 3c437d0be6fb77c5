//! Operations (issue 10): the `gbgate` binary under signals, as systemd drives it. SIGTERM BYEs
//! every GB session, every time (also a session whose camera answers the INVITE after the
//! signal), and ends an RTMP push cleanly (the `ffmpeg -listen 1` receiver exits 0 with a
//! playable file); SIGHUP reloads the token, reports a changed listen port as needing a restart,
//! and keeps the running configuration when the new file is broken.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::config::{Config, PushConfig};
use gbgate::sim::camera::{self, SimOptions, SimStats};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "pw-ops";

/// gbgate run as a child process: its ports (from `--ports-file`) and its log file.
struct Gbgate {
    child: Child,
    ports: Value,
    log: PathBuf,
}

impl Gbgate {
    fn start(dir: &Path, cfg: &Config) -> Gbgate {
        Gbgate::start_bin(Path::new(env!("CARGO_BIN_EXE_gbgate")), dir, cfg)
    }

    fn start_bin(bin: &Path, dir: &Path, cfg: &Config) -> Gbgate {
        let conf = dir.join("gbgate.toml");
        std::fs::write(&conf, toml::to_string(cfg).unwrap()).unwrap();
        let ports = dir.join("ports.json");
        let _ = std::fs::remove_file(&ports);
        let log = dir.join("gbgate.log");
        let child = Command::new(bin)
            .args(["run", "-c"])
            .arg(&conf)
            .arg("--ports-file")
            .arg(&ports)
            // `[log] level` decides (RUST_LOG would override it, also on reload).
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut g = Gbgate { child, ports: Value::Null, log };
        let start = Instant::now();
        g.ports = loop {
            if let Ok(text) = std::fs::read_to_string(&ports) {
                break serde_json::from_str(&text).unwrap();
            }
            if let Some(status) = g.child.try_wait().unwrap() {
                panic!("gbgate exited ({status}) before listening: {}", g.log());
            }
            assert!(start.elapsed() < Duration::from_secs(15), "gbgate did not start: {}", g.log());
            std::thread::sleep(Duration::from_millis(20));
        };
        g
    }

    fn addr(&self, k: &str) -> SocketAddr {
        self.ports[k].as_str().unwrap().parse().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success());
    }

    /// SIGTERM, then the exit status (within `limit`).
    async fn terminate(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        self.signal("-TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.log());
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("gbgate did not exit within {limit:?} of SIGTERM: {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gbgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A camera sending the own fixture to `rtp` (SSRC 0100000001) for long enough: killed by the test.
fn camera_sender(rtp: SocketAddr) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gbgate"))
        .args(["send", "--to", &rtp.to_string(), "--ssrc", "0100000001", "--loop", "1000"])
        .arg(own_fixture("h264_g711a_8k.rtp"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn base_config() -> Config {
    let mut cfg = test_config();
    cfg.sip.password = Some(PASSWORD.into());
    cfg.log.streams = false;
    cfg
}

async fn cameras(sip: SocketAddr, first_id: &str, count: usize, delay: Duration) -> (CancellationToken, Arc<SimStats>) {
    let mut o = SimOptions::new(sip, own_fixture("h264_g711a_8k.rtp"));
    o.password = PASSWORD.into();
    o.first_id = first_id.into();
    o.count = count;
    o.channels = 2;
    o.answer_delay = delay;
    // The cameras must not BYE themselves when the test ends them.
    o.unregister_on_stop = false;
    let stop = CancellationToken::new();
    let stats = camera::spawn(o, stop.clone()).await.unwrap();
    (stop, stats)
}

fn device_id(first: &str, i: usize) -> String {
    let n: u64 = first[12..].parse().unwrap();
    format!("{}{:08}", &first[..12], n + i as u64)
}

async fn post(api: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let (status, _, body) = http_raw(api, http_request("POST", path, "127.0.0.1", headers, "")).await;
    (status, body)
}

async fn get_with(api: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let (status, _, body) = http_raw(api, http_request("GET", path, "127.0.0.1", headers, "")).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sigterm_byes_every_gb_session() {
    const FAST: &str = "34020000001320000001";
    const SLOW: &str = "34020000001320000101";
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let gw = Gbgate::start(dir.path(), &base_config());
        let (api, sip) = (gw.addr("api"), gw.addr("sip"));
        // Two cameras of two channels answering at once, and one slow to answer its INVITE
        // (within T1: no INVITE retransmission).
        let (stop_fast, fast) = cameras(sip, FAST, 2, Duration::ZERO).await;
        let (stop_slow, slow) = cameras(sip, SLOW, 1, Duration::from_millis(300)).await;
        let body = wait_json(api, "/api/v1/devices", Duration::from_secs(10), |b| {
            b["devices"].as_array().is_some_and(|d| {
                d.len() == 3
                    && d.iter().all(|d| d["online"] == true && d["channels"].as_array().is_some_and(|c| c.len() == 2))
            })
        })
        .await;
        assert_eq!(body["devices"].as_array().map(Vec::len), Some(3), "round {round}: {body}");
        // Four sessions playing.
        for i in 0..2 {
            let dev = device_id(FAST, i);
            for ch in 0..2 {
                let path = format!("/api/v1/devices/{dev}/channels/{}/play", camera::channel_id(&dev, ch));
                let (status, body) = post(api, &path, "").await;
                assert_eq!(status, 200, "round {round}: {path}: {body}");
            }
        }
        // A fifth being set up: the SIGTERM arrives once the slow camera has the INVITE and
        // before it answers; its 200 OK comes to a gateway that is stopping.
        let slow_dev = device_id(SLOW, 0);
        let path = format!("/api/v1/devices/{slow_dev}/channels/{}/play", camera::channel_id(&slow_dev, 0));
        let request = http_request("POST", &path, "127.0.0.1", "", "");
        std::thread::spawn(move || {
            if let Ok(mut s) = std::net::TcpStream::connect(api) {
                let _ = std::io::Write::write_all(&mut s, request.as_bytes());
                let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
            }
        });
        assert!(
            wait_for(Duration::from_secs(5), || SimStats::get(&slow.invites) == 1).await,
            "round {round}: the slow camera never got its INVITE"
        );
        let (status, log) = gw.terminate(Duration::from_secs(15)).await;
        assert!(status.success(), "round {round}: gbgate exits 0 on SIGTERM: {status:?}\n{log}");
        // Every session the cameras accepted got its BYE, the late one included.
        assert_eq!(SimStats::get(&fast.invites), 4, "round {round}");
        assert_eq!(SimStats::get(&fast.byes_received), 4, "round {round}: a playing session lost its BYE\n{log}");
        assert_eq!(SimStats::get(&slow.byes_received), 1, "round {round}: the late-answered INVITE got no BYE\n{log}");
        assert!(log.contains("SIGTERM: shutting down"), "{log}");
        assert!(log.contains("every session ended and BYEd"), "round {round}: {log}");
        stop_fast.cancel();
        stop_slow.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_running_rtmp_push_cleanly() {
    if !require_tool("sigterm_ends_a_running_rtmp_push_cleanly", "ffmpeg")
        || !require_tool("sigterm_ends_a_running_rtmp_push_cleanly", "ffprobe")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pushed.flv");
    let (port, mut ffmpeg) = rtmp_receiver(&out).await;
    let mut cfg = base_config();
    cfg.rtmp.push = vec![PushConfig { stream: "rtp/*".into(), url: format!("rtmp://127.0.0.1:{port}/live/cam") }];
    let gw = Gbgate::start(dir.path(), &cfg);
    let (api, rtp) = (gw.addr("api"), gw.addr("rtp"));
    // A camera pushing RTP for long enough (stopped by the test).
    let mut sender = camera_sender(rtp);
    let body = wait_json(api, "/api/v1/pushes", Duration::from_secs(15), |b| {
        b["pushes"][0]["state"] == "pushing" && b["pushes"][0]["bytes"].as_u64().unwrap_or(0) > 100_000
    })
    .await;
    let push = &body["pushes"][0];
    assert_eq!(push["state"], "pushing", "{body}");
    assert_eq!(push["stream"], "rtp/05F5E101", "{body}");
    assert_eq!(push["url"], format!("rtmp://127.0.0.1:{port}/live/cam"), "{body}");
    assert_eq!(push["reconnects"], 0, "{body}");
    assert!(push["since"].as_str().is_some_and(|s| s.ends_with('Z')), "{body}");
    // SIGTERM while the camera still sends: gbgate unpublishes and closes; the receiver sees a
    // clean end of stream, not a reset.
    let (status, log) = gw.terminate(Duration::from_secs(15)).await;
    let _ = sender.kill();
    let _ = sender.wait();
    assert!(status.success(), "{status:?}\n{log}");
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = ffmpeg.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = ffmpeg.kill();
            panic!("the receiver did not end after gbgate's SIGTERM: {log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(ffmpeg.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(exit.success(), "the receiver ends with status 0: {exit:?} {err}\n{log}");
    let (ok, text, perr) = run_program(
        "ffprobe",
        &[
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v",
            "-show_entries",
            "stream=codec_name,nb_read_frames",
            "-of",
            "json",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    )
    .await;
    assert!(ok, "{perr}");
    let probe: Value = serde_json::from_str(&text).unwrap();
    let v = &probe["streams"][0];
    assert_eq!(v["codec_name"], "h264", "{probe}");
    let frames: u64 = v["nb_read_frames"].as_str().unwrap_or("0").parse().unwrap();
    assert!(frames >= 50, "the pushed file plays: {probe}");
    assert!(log.contains("RTMP push to") && log.contains(": stopped"), "{log}");
    assert!(!log.contains("cut short"), "the push ended within the shutdown deadline: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_token_reports_restart_keys_and_keeps_a_broken_file_out() {
    const OLD: &str = "old-token-0123456789";
    const NEW: &str = "new-token-9876543210";
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config();
    cfg.api.token = Some(OLD.into());
    let gw = Gbgate::start(dir.path(), &cfg);
    let api = gw.addr("api");
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    assert_eq!(get_with(api, "/api/v1/streams", &bearer(OLD)).await.0, 200);
    assert_eq!(get_with(api, "/api/v1/streams", &bearer(NEW)).await.0, 401);

    // New token and another RTP port in the file (the running ports are 0: the kernel's).
    let mut next = cfg.clone();
    next.api.token = Some(NEW.into());
    next.rtp.listen = "127.0.0.1:1".parse().unwrap();
    next.auth.keys = vec!["publish-key-1".into()];
    next.sip.password = Some("pw-reloaded".into());
    next.log.level = "info,gbgate::server::api=debug".into();
    std::fs::write(dir.path().join("gbgate.toml"), toml::to_string(&next).unwrap()).unwrap();
    gw.signal("-HUP");
    let start = Instant::now();
    let status = loop {
        // The new token works as soon as it is applied; the outcome is recorded just after.
        let (code, body) = get_with(api, "/api/v1/config/reload", &bearer(NEW)).await;
        if code == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            if v["reloads"] == 1 {
                break v;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the new token never worked: {}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["reloads"], 1, "{status}");
    assert_eq!(status["last"]["ok"], true, "{status}");
    assert_eq!(
        status["last"]["applied"],
        serde_json::json!(["api.token", "auth.keys", "log.level", "sip.password"]),
        "{status}"
    );
    assert_eq!(status["last"]["needs_restart"], serde_json::json!(["rtp.listen"]), "{status}");
    assert_eq!(get_with(api, "/api/v1/streams", &bearer(OLD)).await.0, 401);
    assert_eq!(get_with(api, "/api/v1/streams", &bearer(NEW)).await.0, 200);
    assert!(gw.log().contains("needs a restart: rtp.listen"), "{}", gw.log());
    // The new log level: the API's refusals are logged at debug now.
    assert!(
        wait_for(Duration::from_secs(5), || gw.log().contains("API request refused")).await,
        "the reloaded log level is not applied: {}",
        gw.log()
    );
    // The token's value is never logged.
    assert!(!gw.log().contains(NEW), "{}", gw.log());
    // A camera with the new SIP password registers.
    let mut o = SimOptions::new(gw.addr("sip"), own_fixture("h264_g711a_8k.rtp"));
    o.password = "pw-reloaded".into();
    o.unregister_on_stop = false;
    let stop = CancellationToken::new();
    let cam = camera::spawn(o, stop.clone()).await.unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || SimStats::get(&cam.registered) > 0).await,
        "the reloaded SIP password is not used: {}",
        gw.log()
    );
    stop.cancel();

    // A broken file: the running configuration (and token) stays, the error is shown.
    std::fs::write(dir.path().join("gbgate.toml"), "[api]\ntoken = \"short\"\n[rtp\n").unwrap();
    gw.signal("-HUP");
    let start = Instant::now();
    let status = loop {
        let (_, body) = get_with(api, "/api/v1/config/reload", &bearer(NEW)).await;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if v["reloads"] == 2 {
            break v;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the second reload never happened: {}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["failed"], 1, "{status}");
    assert_eq!(status["last"]["ok"], false, "{status}");
    assert!(status["last"]["error"].as_str().is_some_and(|e| e.contains("gbgate.toml")), "{status}");
    assert_eq!(get_with(api, "/api/v1/streams", &bearer(NEW)).await.0, 200);
    assert!(gw.log().contains("configuration reload refused, the running configuration stays"), "{}", gw.log());
    let (exit, log) = gw.terminate(Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit:?} {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_during_start_up_is_a_graceful_stop() {
    // The handlers are installed before the config is read: a SIGTERM as soon as the process
    // logs its configuration (while the listeners and the SIP database are being set up) waits
    // and stops the gateway cleanly, instead of killing it.
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = base_config();
        cfg.sip.db = Some(dir.path().join("gb.redb"));
        let conf = dir.path().join("gbgate.toml");
        std::fs::write(&conf, toml::to_string(&cfg).unwrap()).unwrap();
        let log = dir.path().join("gbgate.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_gbgate"))
            .args(["run", "-c"])
            .arg(&conf)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("configuration:") {
            assert!(start.elapsed() < Duration::from_secs(10), "gbgate never logged its configuration");
            std::thread::sleep(Duration::from_micros(200));
        }
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "gbgate did not stop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(status.success(), "round {round}: killed instead of stopped: {status:?}\n{text}");
        assert!(text.contains("SIGTERM: shutting down") && text.contains("stopped in"), "round {round}: {text}");
    }
}

/// Resident kB of the read-only (code and read-only data) mappings of `exe` in process `pid`.
fn resident_code_kib(pid: u32, exe: &Path) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let exe = exe.to_str().unwrap();
    let (mut ours, mut kib) = (false, 0);
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first().is_some_and(|a| a.contains('-') && !a.ends_with(':')) && f.len() >= 5 {
            ours = f.len() >= 6 && f[5..].join(" ") == exe && f[1].as_bytes()[1] == b'-';
        } else if ours && f.first() == Some(&"Rss:") {
            kib += f[1].parse::<u64>().unwrap();
        }
    }
    kib
}

/// D194: once start-up is over, gbgate pages out its own code and read-only data
/// (`[process] release_startup_code`): the binary's resident pages drop, and what the media path
/// needs faults back in (an RTSP player still gets the stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg(target_os = "linux")]
async fn start_up_code_is_paged_out_and_the_gateway_still_serves() {
    if !require_tool("start_up_code_is_paged_out_and_the_gateway_still_serves", "ffprobe") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A copy of the binary: its pages are this process's alone (the kernel does not page out
    // pages another running gbgate of this test run also maps).
    let bin = dir.path().join("gbgate-copy");
    std::fs::copy(env!("CARGO_BIN_EXE_gbgate"), &bin).unwrap();
    let mut cfg = base_config();
    cfg.process.release_startup_code_after = gbgate::config::HumanDuration(Duration::from_secs(3));
    let gw = Gbgate::start_bin(&bin, dir.path(), &cfg);
    let pid = gw.child.id();
    let before = resident_code_kib(pid, &bin);
    assert!(before > 1024, "the binary's code is resident after start-up: {before} kB");
    let start = Instant::now();
    while !gw.log().contains("start-up code paged out") {
        assert!(start.elapsed() < Duration::from_secs(20), "no release logged: {}", gw.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = resident_code_kib(pid, &bin);
    assert!(after * 2 < before, "resident code {before} kB before the release, {after} kB after: {}", gw.log());

    // The media path still runs: a camera's stream plays over RTSP, from code faulted back in.
    let (rtp, rtsp) = (gw.addr("rtp"), gw.addr("rtsp"));
    let mut sender = camera_sender(rtp);
    let api = gw.addr("api");
    let live = wait_streams(api, Duration::from_secs(15), |s| s.iter().any(|v| v["name"] == "rtp/05F5E101")).await;
    assert!(live.iter().any(|v| v["name"] == "rtp/05F5E101"), "{live:?}");
    let streams = ffprobe_streams(&format!("rtsp://{rtsp}/rtp/05F5E101"), "tcp").await;
    let _ = sender.kill();
    let _ = sender.wait();
    let codecs: Vec<&str> = streams.iter().filter_map(|s| s["codec_name"].as_str()).collect();
    assert_eq!(codecs, ["h264", "aac"], "{streams:?}");
    assert!(!gw.log().contains("cannot page out"), "{}", gw.log());
}
