//! The relay with real peers on 127.0.0.1: an `ffmpeg -listen 1` RTMP origin (absent, late,
//! present), players that are ffprobe over RTSP and over RTMP, and gbgate's own API.
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gbgate::config::{Config, HumanDuration, PullConfig};
use gbgate::server::Gateway;
use serde_json::Value;

/// The tests run one at a time: the idle-stop test counts the process's file descriptors and
/// memory, and the others' would blur them.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An `ffmpeg -listen 1` RTMP origin of a synthetic 25 fps H.264 + AAC stream (a keyframe every
/// second, the first frame one); killed when dropped.
struct Origin(Child);

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_origin(port: u16) -> Origin {
    spawn_origin_with(port, &["-c:a", "aac"])
}

/// As [`spawn_origin`], with the audio encoded by `audio` (ffmpeg arguments).
fn spawn_origin_with(port: u16, audio: &[&str]) -> Origin {
    let child = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0", "-pix_fmt", "yuv420p"])
        .args(audio)
        .args(["-f", "flv", "-listen", "1"])
        .arg(format!("rtmp://127.0.0.1:{port}/live/x"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ffmpeg origin");
    Origin(child)
}

/// Whether a socket listens on 127.0.0.1:`port` (read from /proc: the origin accepts once).
/// An origin on a port the kernel just had free (ffmpeg cannot bind port 0: retried elsewhere
/// when another process took it first).
async fn origin_on_free_port() -> (u16, Origin) {
    for _ in 0..5 {
        let port = free_port();
        let mut origin = spawn_origin(port);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) && origin.0.try_wait().unwrap().is_none() {
            if listening(port) {
                return (port, origin);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("the ffmpeg origin could not listen on any of 5 ports");
}

fn pull(pattern: Option<&str>, name: Option<&str>, url: String) -> PullConfig {
    let text = match (pattern, name) {
        (Some(p), _) => format!("match = {p:?}\nurl = {url:?}\n"),
        (_, Some(n)) => format!("name = {n:?}\nurl = {url:?}\n"),
        _ => unreachable!(),
    };
    toml::from_str(&text).unwrap()
}

fn config_with(pulls: Vec<PullConfig>) -> Config {
    let mut cfg = test_config();
    cfg.sip.enabled = false;
    cfg.pull = pulls;
    cfg.validate().expect("valid config");
    cfg
}

/// A gateway with its relay (which the daemon starts above it, as here).
async fn start_with_pulls(cfg: Config) -> Gateway {
    let pulls = cfg.pull.clone();
    let gw = start(cfg).await;
    gbgate::relay::Relay::start(pulls, gw.hub.clone(), gw.rtp.clone(), gw.shutdown.clone());
    gw
}

async fn pulls(gw: &Gateway) -> Value {
    let (status, body) = http_get(gw.api_addr, "/api/v1/pulls").await;
    assert_eq!(status, 200);
    body
}

fn slot<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["pulls"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{name}: {body}"))
}

/// ffprobe reading the first `packets` video packets of `url`; returns (ok, stdout, stderr).
async fn probe_first_packets(url: &str, packets: u32) -> (bool, String, String) {
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
            "packet=flags,pts:stream=codec_name,width,height",
            "-of",
            "json",
            url,
        ]
        .map(String::from),
    );
    run_program("ffprobe", &args, Duration::from_secs(30)).await
}

fn flags_of(out: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(out).unwrap_or(Value::Null);
    v["packets"]
        .as_array()
        .map_or(vec![], |p| p.iter().map(|p| p["flags"].as_str().unwrap_or("").to_string()).collect())
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn tools(test: &str) -> bool {
    require_tool(test, "ffmpeg") && require_tool(test, "ffprobe")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_origin_five_attempts_a_second_apart_then_not_found_with_the_cause() {
    let _serial = SERIAL.lock().await;
    if !tools("absent_origin") {
        return;
    }
    // Refuses every connection, and no other process can take the port during the test.
    let (_refusing, dead) = refusing_port();
    let gw =
        start_with_pulls(config_with(vec![pull(Some("live/*"), None, format!("rtmp://127.0.0.1:{dead}/{{path}}"))]))
            .await;
    let rtsp = gw.rtsp_addr.unwrap();

    // RTSP: DESCRIBE waits for the whole series, then 404 with the cause in the reason phrase.
    let t0 = Instant::now();
    let (ok, _, err) = probe_first_packets(&format!("rtsp://{rtsp}/live/x"), 1).await;
    let waited = t0.elapsed();
    assert!(!ok, "no origin, yet ffprobe played");
    assert!(err.contains("404") && err.contains("refused"), "RTSP player told: {err}");
    assert!(waited >= Duration::from_millis(3800), "answered after {waited:?}: not after 5 attempts");
    let body = pulls(&gw).await;
    let s = slot(&body, "live/x");
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(s["attempts"], 5, "{s}");
    assert!(s["last_error"].as_str().unwrap().contains("refused"), "{s}");
    let log = s["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 5);
    let starts: Vec<u64> = log.iter().map(|a| a["started_ms"].as_u64().unwrap()).collect();
    for (i, w) in starts.windows(2).enumerate() {
        let gap = w[1] - w[0];
        assert!((900..=1400).contains(&gap), "attempt {} started {gap} ms after the one before: {starts:?}", i + 2);
    }
    for (i, a) in log.iter().enumerate() {
        assert_eq!(a["attempt"], i as u64 + 1);
        assert!(a["error"].as_str().unwrap().starts_with("refused"), "{a}");
    }

    // RTMP: a new series (the last one is over), NetStream.Play.StreamNotFound naming the cause.
    let (ok, _, err) = probe_first_packets(&format!("rtmp://{}/live/x", gw.rtmp_addr.unwrap()), 1).await;
    assert!(!ok, "no origin, yet ffprobe played over RTMP");
    assert!(err.contains("refused") && err.contains("attempt"), "RTMP player told: {err}");
    let body = pulls(&gw).await;
    assert_eq!(slot(&body, "live/x")["attempts"], 10, "{body}");
    assert_eq!(body["counters"]["series"], 2, "{body}");
    assert!(gw.hub.get("live/x").is_none());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_appears_after_two_seconds_serves_the_waiting_players_from_a_keyframe() {
    let _serial = SERIAL.lock().await;
    if !tools("late_origin") {
        return;
    }
    // The port refuses (held, so nothing else takes it) until the origin starts on it.
    let (reserved, port) = refusing_port();
    let gw =
        start_with_pulls(config_with(vec![pull(Some("live/*"), None, format!("rtmp://127.0.0.1:{port}/{{path}}"))]))
            .await;
    let rtsp = format!("rtsp://{}/live/x", gw.rtsp_addr.unwrap());
    let rtmp = format!("rtmp://{}/live/x", gw.rtmp_addr.unwrap());
    let t0 = Instant::now();
    let p1 = tokio::spawn(async move { probe_first_packets(&rtsp, 3).await });
    let p2 = tokio::spawn(async move { probe_first_packets(&rtmp, 3).await });
    // Both players are parked while the attempts fail.
    let start = Instant::now();
    loop {
        let body = pulls(&gw).await;
        if body["parked"].as_u64() == Some(2) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "players not parked: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep_until((t0 + Duration::from_secs(2)).into()).await;
    drop(reserved);
    let _origin = spawn_origin(port);
    for (what, p) in [("RTSP", p1), ("RTMP", p2)] {
        let (ok, out, err) = p.await.unwrap();
        assert!(ok, "{what} player: {err}");
        let flags = flags_of(&out);
        assert!(!flags.is_empty(), "{what}: no packet: {out}");
        assert!(flags[0].starts_with('K'), "{what}: the first packet is not a keyframe: {flags:?}");
    }
    let body = pulls(&gw).await;
    let s = slot(&body, "live/x");
    assert_eq!(s["state"], "live", "{s}");
    let attempts = s["attempts"].as_u64().unwrap();
    assert!((2..=5).contains(&attempts), "went live at attempt {attempts}: {s}");
    assert_eq!(body["counters"]["series"], 1, "{body}");
    let stream = gw.hub.get("live/x").expect("pulled stream in the hub");
    assert_eq!(stream.source.transport, gbgate::hub::Transport::Rtmp);
    assert_eq!(stream.source.peer.port(), port);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_players_asking_at_once_cause_one_pull() {
    let _serial = SERIAL.lock().await;
    if !tools("twenty_players") {
        return;
    }
    // The port refuses (held, so nothing else takes it) until the origin starts on it.
    let (reserved, port) = refusing_port();
    let mut entry = pull(Some("live/*"), None, format!("rtmp://127.0.0.1:{port}/{{path}}"));
    // Room for 20 ffprobes to start on a busy machine before the origin comes.
    entry.retries = 15;
    let gw = start_with_pulls(config_with(vec![entry])).await;
    let (rtsp, rtmp) = (gw.rtsp_addr.unwrap(), gw.rtmp_addr.unwrap());
    let players: Vec<_> = (0..20)
        .map(|i| {
            let url = match i % 2 {
                0 => format!("rtsp://{rtsp}/live/x"),
                _ => format!("rtmp://{rtmp}/live/x"),
            };
            tokio::spawn(async move { (url.clone(), probe_first_packets(&url, 1).await) })
        })
        .collect();
    // All 20 are parked on the one pull before its origin exists.
    let start = Instant::now();
    loop {
        let body = pulls(&gw).await;
        if body["parked"].as_u64() == Some(20) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(12), "players not parked: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(reserved);
    let _origin = spawn_origin(port);
    let mut played = 0;
    for p in players {
        let (url, (ok, out, err)) = p.await.unwrap();
        assert!(ok, "{url}: {err}");
        let flags = flags_of(&out);
        assert!(flags.first().is_some_and(|f| f.starts_with('K')), "{url}: first packet {flags:?}");
        played += 1;
    }
    assert_eq!(played, 20);
    let body = pulls(&gw).await;
    let s = slot(&body, "live/x");
    // One attempt series, and one connection that went live (the attempts before the origin
    // listened were refused: no connection). An `ffmpeg -listen 1` origin would refuse a second.
    let log = s["attempt_log"].as_array().unwrap();
    assert_eq!(log.iter().filter(|a| a["error"].is_null()).count(), 1, "{s}");
    assert!(
        log.iter()
            .filter(|a| !a["error"].is_null())
            .all(|a| a["error"].as_str().unwrap().contains("connection refused")),
        "{s}"
    );
    let c = &body["counters"];
    assert_eq!(c["series"].as_u64(), Some(1), "{body}");
    assert_eq!((c["demands"].as_u64(), c["joined"].as_u64()), (Some(20), Some(19)), "{body}");
    assert_eq!(body["parked"], 0, "{body}");
    println!("20 players parked, one pull: {} attempt(s), went live at attempt {}", s["attempts"], s["attempt"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stop_releases_the_pulled_stream_its_socket_and_memory() {
    let _serial = SERIAL.lock().await;
    if !tools("idle_stop") {
        return;
    }
    let mut entry = pull(Some("live/*"), None, String::new());
    entry.idle_stop = Some(HumanDuration(Duration::from_secs(2)));
    let (port, _origin) = origin_on_free_port().await;
    entry.url = format!("rtmp://127.0.0.1:{port}/{{path}}");
    let gw = start_with_pulls(config_with(vec![entry])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds0, rss0) = (fd_count(), rss_kib());

    let (ok, out, err) = probe_first_packets(&format!("rtsp://{}/live/x", gw.rtsp_addr.unwrap()), 50).await;
    assert!(ok, "{err}");
    assert!(flags_of(&out).len() >= 40, "{out}");
    let player_left = Instant::now();
    let during = (fd_count(), rss_kib());
    assert!(gw.hub.get("live/x").is_some(), "the pull is live after its player left");
    let body = pulls(&gw).await;
    assert_eq!(slot(&body, "live/x")["state"], "live");

    // Nobody watches: the pull stops after idle_stop (2 s), not before.
    let start = Instant::now();
    while gw.hub.get("live/x").is_some() {
        assert!(start.elapsed() < Duration::from_secs(6), "still pulled 6 s after its last player left (idle_stop 2s)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped_after = player_left.elapsed();
    assert!(stopped_after >= Duration::from_millis(1800), "stopped {stopped_after:?} after the player left");
    let body = pulls(&gw).await;
    let s = slot(&body, "live/x");
    assert_eq!((s["state"].as_str(), s["idle_stops"].as_u64()), (Some("idle"), Some(1)), "{s}");
    assert_eq!(body["counters"]["idle_stops"], 1);
    assert!(streams(gw.api_addr).await.iter().all(|s| s["name"] != "live/x"), "the API still lists it");
    assert_eq!(gw.hub.gop_budget().usage().0, 0, "GOP bytes still held");

    // The socket to the origin and the media stage's resources are released.
    let start = Instant::now();
    let (mut fds, mut rss) = (fd_count(), rss_kib());
    while (fds > fds0 || rss > rss0 + 8 * 1024) && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        (fds, rss) = (fd_count(), rss_kib());
    }
    println!(
        "idle stop after {stopped_after:?}; fds {fds0} -> {} (pulling) -> {fds}; rss {rss0} -> {} -> {rss} KiB",
        during.0, during.1
    );
    assert!(fds <= fds0, "fds {fds0} before the pull, {fds} after its idle stop");
    assert!(rss <= rss0 + 8 * 1024, "rss {rss0} KiB before the pull, {rss} KiB after its idle stop");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_pull_is_live_after_boot_and_is_played() {
    let _serial = SERIAL.lock().await;
    if !tools("fixed_pull") {
        return;
    }
    let (port, _origin) = origin_on_free_port().await;
    let gw =
        start_with_pulls(config_with(vec![pull(None, Some("cam1"), format!("rtmp://127.0.0.1:{port}/live/x"))])).await;
    let start = Instant::now();
    while gw.hub.get("cam1").is_none() {
        assert!(start.elapsed() < Duration::from_secs(15), "cam1 not live: {}", pulls(&gw).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = pulls(&gw).await;
    let s = slot(&body, "cam1");
    assert_eq!((s["state"].as_str(), s["on_demand"].as_bool()), (Some("live"), Some(false)), "{s}");
    assert_eq!(body["counters"]["demands"], 0, "nobody asked: it started at boot");
    let (ok, out, err) = probe_first_packets(&format!("rtsp://{}/cam1", gw.rtsp_addr.unwrap()), 25).await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["streams"][0]["codec_name"], "h264", "{out}");
    assert_eq!(v["streams"][0]["width"], 320, "{out}");
    assert!(flags_of(&out).len() >= 20, "{out}");
    let stats = gw.hub.get("cam1").unwrap().stats();
    assert!(stats.media.transcode.is_some(), "the audio went through the media stage: {:?}", stats.media);
    // 44.1 kHz AAC from the origin leaves as every source's audio does: AAC-LC 11025 Hz mono.
    let args = ["-v", "error", "-rtsp_transport", "tcp", "-select_streams", "a:0", "-show_entries"];
    let url = format!("rtsp://{}/cam1", gw.rtsp_addr.unwrap());
    let args: Vec<&str> =
        args.into_iter().chain(["stream=codec_name,sample_rate,channels", "-of", "json", &url]).collect();
    let (ok, out, err) = run_program("ffprobe", &args, Duration::from_secs(30)).await;
    assert!(ok, "{err}");
    let a: Value = serde_json::from_str(&out).unwrap();
    let a = &a["streams"][0];
    assert_eq!(
        (a["codec_name"].as_str(), a["sample_rate"].as_str(), a["channels"].as_i64()),
        (Some("aac"), Some("11025"), Some(1)),
        "{out}"
    );
    gw.stop().await;
}

/// ffmpeg publishing a synthetic H.264 + AAC stream to `url` (another gbgate: an origin that
/// takes any number of plays); killed when dropped.
fn spawn_publisher(url: &str) -> Origin {
    let child = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-f", "flv", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ffmpeg publisher");
    Origin(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_pull_stopped_when_idle_comes_back_when_a_player_asks() {
    let _serial = SERIAL.lock().await;
    if !tools("fixed_idle") {
        return;
    }
    // The origin is another gbgate, fed by ffmpeg.
    let origin = start_with_pulls(config_with(vec![])).await;
    let _publisher = spawn_publisher(&format!("rtmp://{}/live/x", origin.rtmp_addr.unwrap()));
    let start_wait = Instant::now();
    while origin.hub.get("live/x").is_none_or(|s| !s.has_keyframe()) {
        assert!(start_wait.elapsed() < Duration::from_secs(15), "the origin has no live/x");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut entry = pull(None, Some("cam2"), format!("rtmp://{}/live/x", origin.rtmp_addr.unwrap()));
    entry.idle_stop = Some(HumanDuration(Duration::from_secs(2)));
    let gw = start_with_pulls(config_with(vec![entry])).await;
    // Live at boot, then stopped: nobody watches.
    let t0 = Instant::now();
    while gw.hub.get("cam2").is_none() {
        assert!(t0.elapsed() < Duration::from_secs(10), "cam2 not live after boot: {}", pulls(&gw).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while gw.hub.get("cam2").is_some() {
        assert!(t0.elapsed() < Duration::from_secs(15), "cam2 not stopped when idle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = pulls(&gw).await;
    assert_eq!(slot(&body, "cam2")["state"], "idle", "{body}");
    // Its connection to the origin is gone too.
    let t1 = Instant::now();
    while origin.hub.get("live/x").unwrap().subscriber_counts().contains_key("rtmp") {
        assert!(t1.elapsed() < Duration::from_secs(5), "the stopped pull still plays the origin");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A player asks: the fixed pull comes back, and the player starts at a keyframe.
    let (ok, out, err) = probe_first_packets(&format!("rtmp://{}/cam2", gw.rtmp_addr.unwrap()), 10).await;
    assert!(ok, "{err}");
    let flags = flags_of(&out);
    assert!(flags.first().is_some_and(|f| f.starts_with('K')), "first packet {flags:?}");
    let body = pulls(&gw).await;
    let s = slot(&body, "cam2");
    assert_eq!((s["state"].as_str(), s["idle_stops"].as_u64()), (Some("live"), Some(1)), "{s}");
    assert_eq!(body["counters"]["demands"], 1, "{body}");
    gw.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_origin_is_no_answer_and_an_audio_only_origin_is_no_keyframe() {
    let _serial = SERIAL.lock().await;
    if !tools("causes") {
        return;
    }
    // An origin that accepts the connection and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    // An origin (another gbgate) whose stream has audio and no video.
    let origin = start_with_pulls(config_with(vec![])).await;
    let audio_url = format!("rtmp://{}/audio/x", origin.rtmp_addr.unwrap());
    let _publisher = Origin(
        Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=44100",
            ])
            .args(["-c:a", "aac", "-f", "flv", &audio_url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while origin.hub.get("audio/x").is_none() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the audio-only origin stream did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut entries = vec![
        pull(Some("silent/*"), None, format!("rtmp://{silent_addr}/{{path}}")),
        pull(Some("audio/*"), None, format!("rtmp://{}/{{path}}", origin.rtmp_addr.unwrap())),
    ];
    for e in &mut entries {
        e.retries = 2;
        e.timeout = HumanDuration(Duration::from_secs(1));
    }
    let gw = start_with_pulls(config_with(entries)).await;
    let rtsp = gw.rtsp_addr.unwrap();
    let (ok, _, err) = probe_first_packets(&format!("rtsp://{rtsp}/silent/x"), 1).await;
    assert!(!ok && err.contains("404") && err.contains("no answer"), "silent origin: {err}");
    let (ok, _, err) = probe_first_packets(&format!("rtmp://{}/audio/x", gw.rtmp_addr.unwrap()), 1).await;
    assert!(!ok && err.contains("no keyframe"), "audio-only origin: {err}");
    let body = pulls(&gw).await;
    for (name, cause) in [("silent/x", "no answer"), ("audio/x", "no keyframe")] {
        let s = slot(&body, name);
        assert_eq!((s["state"].as_str(), s["attempts"].as_u64()), (Some("failed"), Some(2)), "{s}");
        assert!(s["last_error"].as_str().unwrap().starts_with(cause), "{s}");
    }
    assert!(gw.hub.get("audio/x").is_none(), "a source without a keyframe never reaches the hub");
    held.abort();
    gw.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_is_pulled_from_gbgate_origins_over_enhanced_and_legacy_flv() {
    use gbgate::config::HevcFlv;
    use gbgate::sim::send::{send_file, SendOptions};
    let _serial = SERIAL.lock().await;
    if !tools("hevc_pull") {
        return;
    }
    let mut senders = Vec::new();
    let mut entries = Vec::new();
    let mut origins = Vec::new();
    for (i, hevc) in [HevcFlv::Enhanced, HevcFlv::Legacy].into_iter().enumerate() {
        let mut cfg = config_with(vec![]);
        cfg.rtmp.hevc = hevc;
        let origin = start(cfg).await;
        let ssrc = 0x0BEB_C201 + i as u32;
        let opts = SendOptions {
            to: origin.rtp_addr,
            tcp: true,
            count: 1,
            ssrc_base: Some(ssrc),
            loops: 10,
            duration: None,
            flood: false,
            linger: Duration::from_millis(200),
        };
        let path = own_fixture("h265_aac_16k.rtp");
        senders.push(tokio::spawn(async move {
            let _ = send_file(&path, &opts).await;
        }));
        entries.push(pull(
            None,
            Some(&format!("hevc{i}")),
            format!("rtmp://{}/rtp/{ssrc:08X}", origin.rtmp_addr.unwrap()),
        ));
        origins.push(origin);
    }
    let gw = start_with_pulls(config_with(entries)).await;
    for i in 0..2 {
        let name = format!("hevc{i}");
        let t0 = Instant::now();
        let stream = loop {
            if let Some(s) = gw.hub.get(&name).filter(|s| s.stats().video.is_some_and(|v| v.frames >= 25)) {
                break s;
            }
            assert!(t0.elapsed() < Duration::from_secs(15), "{name} not pulled: {}", pulls(&gw).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let v = stream.stats().video.unwrap();
        assert_eq!((v.codec, v.width, v.height), ("h265", 352, 288), "{name}");
        let (ok, out, err) = probe_first_packets(&format!("rtsp://{}/{name}", gw.rtsp_addr.unwrap()), 10).await;
        assert!(ok, "{name}: {err}");
        let p: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(p["streams"][0]["codec_name"], "hevc", "{name}: {out}");
        assert!(flags_of(&out).first().is_some_and(|f| f.starts_with('K')), "{name}: {out}");
    }
    for s in senders {
        s.abort();
    }
    gw.stop().await;
    for o in origins {
        o.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_pull_reconnects_when_its_origin_comes_back() {
    let _serial = SERIAL.lock().await;
    if !tools("fixed_reconnect") {
        return;
    }
    let (port, origin) = origin_on_free_port().await;
    let gw =
        start_with_pulls(config_with(vec![pull(None, Some("cam3"), format!("rtmp://127.0.0.1:{port}/live/x"))])).await;
    let t0 = Instant::now();
    let first = loop {
        if let Some(s) = gw.hub.get("cam3") {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "cam3 not live: {}", pulls(&gw).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The origin goes away: the stream ends, and the pull retries (refused while it is away).
    drop(origin);
    let t1 = Instant::now();
    loop {
        let body = pulls(&gw).await;
        let s = slot(&body, "cam3");
        if gw.hub.get("cam3").is_none() && s["failures"].as_u64() >= Some(1) {
            assert_eq!(s["ended"], 1, "{s}");
            assert!(s["last_error"].as_str().unwrap().contains("refused"), "{s}");
            break;
        }
        assert!(t1.elapsed() < Duration::from_secs(10), "no retry after the origin left: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(first.is_closed(), "the old stream is closed");
    let _origin = spawn_origin(port);
    let t2 = Instant::now();
    while gw.hub.get("cam3").is_none() {
        assert!(t2.elapsed() < Duration::from_secs(15), "cam3 not back: {}", pulls(&gw).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = pulls(&gw).await;
    let s = slot(&body, "cam3");
    assert_eq!(s["state"], "live", "{s}");
    println!("fixed pull back {:?} after its origin; {} failed attempts meanwhile", t2.elapsed(), s["failures"]);
    let (ok, out, err) = probe_first_packets(&format!("rtsp://{}/cam3", gw.rtsp_addr.unwrap()), 5).await;
    assert!(ok && flags_of(&out).first().is_some_and(|f| f.starts_with('K')), "{err} {out}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g711_in_flv_from_an_origin_leaves_as_aac_11025_mono() {
    let _serial = SERIAL.lock().await;
    if !tools("g711_pull") {
        return;
    }
    let (reserved, port) = refusing_port();
    let gw =
        start_with_pulls(config_with(vec![pull(Some("live/*"), None, format!("rtmp://127.0.0.1:{port}/{{path}}"))]))
            .await;
    drop(reserved);
    let _origin = spawn_origin_with(port, &["-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1"]);
    let url = format!("rtsp://{}/live/x", gw.rtsp_addr.unwrap());
    let args =
        ["-v", "error", "-rtsp_transport", "tcp", "-show_entries", "stream=codec_type,codec_name,sample_rate,channels"];
    let args: Vec<&str> = args.into_iter().chain(["-of", "json", &url]).collect();
    let (ok, out, err) = run_program("ffprobe", &args, Duration::from_secs(30)).await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let a = v["streams"].as_array().unwrap().iter().find(|s| s["codec_type"] == "audio").cloned().expect("audio");
    assert_eq!(
        (a["codec_name"].as_str(), a["sample_rate"].as_str(), a["channels"].as_i64()),
        (Some("aac"), Some("11025"), Some(1)),
        "{out}"
    );
    let st = gw.hub.get("live/x").unwrap().stats();
    assert_eq!(
        st.audio.as_ref().map(|a| (a.codec, a.sample_rate)),
        Some(("g711a", 8000)),
        "the source's audio: {:?}",
        st.audio
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_push_of_a_pulled_stream_keeps_it_from_idle_stop() {
    let _serial = SERIAL.lock().await;
    if !tools("push_keeps") {
        return;
    }
    let (port, _origin) = origin_on_free_port().await;
    // Where gbgate pushes the pulled stream to: another `ffmpeg -listen 1`, writing a file.
    let dir = tempfile::tempdir().unwrap();
    let mut target = None;
    for _ in 0..5 {
        let p = free_port();
        let child = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y", "-listen", "1", "-i"])
            .arg(format!("rtmp://127.0.0.1:{p}/live/y"))
            .args(["-c", "copy"])
            .arg(dir.path().join("pushed.flv"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = Origin(child);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) && child.0.try_wait().unwrap().is_none() && !listening(p) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if listening(p) {
            target = Some((p, child));
            break;
        }
    }
    let (push_port, _target) = target.expect("push target listens");
    let mut entry = pull(None, Some("cam5"), format!("rtmp://127.0.0.1:{port}/live/x"));
    entry.idle_stop = Some(HumanDuration(Duration::from_secs(2)));
    let mut cfg = config_with(vec![entry]);
    cfg.rtmp.push =
        vec![gbgate::config::PushConfig { stream: "cam5".into(), url: format!("rtmp://127.0.0.1:{push_port}/live/y") }];
    let gw = start_with_pulls(cfg).await;
    let t0 = Instant::now();
    let stream = loop {
        if let Some(s) = gw.hub.get("cam5").filter(|s| s.subscriber_counts().contains_key("push")) {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "cam5 not live and pushed: {}", pulls(&gw).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // No player, but the push subscribes: well past idle_stop the pull is still live.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!stream.is_closed() && gw.hub.get("cam5").is_some(), "a pushed pull was stopped as idle");
    let body = pulls(&gw).await;
    assert_eq!(
        (slot(&body, "cam5")["state"].as_str(), slot(&body, "cam5")["idle_stops"].as_u64()),
        (Some("live"), Some(0)),
        "{body}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_sources_are_pulled_on_demand_over_tcp_and_udp_and_torn_down_when_idle() {
    use gbgate::client::pull::PullTransport;
    use gbgate::sim::send::{send_file, SendOptions};
    let _serial = SERIAL.lock().await;
    if !tools("rtsp_relay") {
        return;
    }
    // The origin: another gbgate, fed a GB fixture over RTP/TCP, played over RTSP.
    let origin = start_with_pulls(config_with(vec![])).await;
    let ssrc = 0x0BEB_C211u32;
    let opts = SendOptions {
        to: origin.rtp_addr,
        tcp: true,
        count: 1,
        ssrc_base: Some(ssrc),
        loops: 15,
        duration: None,
        flood: false,
        linger: Duration::from_millis(200),
    };
    let path = own_fixture("h264_g711a_8k.rtp");
    let sender = tokio::spawn(async move {
        let _ = send_file(&path, &opts).await;
    });
    let src_name = format!("rtp/{ssrc:08X}");
    let t0 = Instant::now();
    while origin.hub.get(&src_name).is_none_or(|s| !s.has_keyframe()) {
        assert!(t0.elapsed() < Duration::from_secs(10), "the origin has no {src_name}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("rtsp://{}/{src_name}", origin.rtsp_addr.unwrap());
    let mut entries = Vec::new();
    for (name, transport) in [("rcam_tcp", PullTransport::Tcp), ("rcam_udp", PullTransport::Udp)] {
        let mut e = pull(None, Some(name), url.clone());
        e.on_demand = true;
        e.transport = transport;
        e.idle_stop = Some(HumanDuration(Duration::from_secs(2)));
        entries.push(e);
    }
    let gw = start_with_pulls(config_with(entries)).await;
    assert!(gw.hub.get("rcam_tcp").is_none(), "on demand: nothing pulled before a player asks");
    for (name, player) in [("rcam_tcp", "rtmp"), ("rcam_udp", "rtsp")] {
        let player_url = match player {
            "rtmp" => format!("rtmp://{}/{name}", gw.rtmp_addr.unwrap()),
            _ => format!("rtsp://{}/{name}", gw.rtsp_addr.unwrap()),
        };
        let (ok, out, err) = probe_first_packets(&player_url, 10).await;
        assert!(ok, "{name} over {player}: {err}");
        let p: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(p["streams"][0]["codec_name"], "h264", "{name}: {out}");
        assert!(flags_of(&out).first().is_some_and(|f| f.starts_with('K')), "{name}: {out}");
        let stream = gw.hub.get(name).expect("pulled");
        assert_eq!(stream.source.transport, gbgate::hub::Transport::Rtsp);
        assert_eq!(stream.source.peer, origin.rtsp_addr.unwrap());
    }
    // Nobody watches: both pulls stop and their RTSP sessions at the origin end (TEARDOWN).
    let t1 = Instant::now();
    loop {
        let origin_players =
            origin.hub.get(&src_name).map_or(0, |s| s.subscriber_counts().get("rtsp").copied().unwrap_or(0));
        if gw.hub.get("rcam_tcp").is_none() && gw.hub.get("rcam_udp").is_none() && origin_players == 0 {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "still pulled: {origin_players} RTSP players at the origin; {}",
            pulls(&gw).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = pulls(&gw).await;
    for name in ["rcam_tcp", "rcam_udp"] {
        let s = slot(&body, name);
        assert_eq!(
            (s["state"].as_str(), s["idle_stops"].as_u64(), s["attempts"].as_u64()),
            (Some("idle"), Some(1), Some(1)),
            "{s}"
        );
    }
    sender.abort();
    gw.stop().await;
    origin.stop().await;
}
