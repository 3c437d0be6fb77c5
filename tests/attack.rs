//! Issue #8's holes replayed against the gbgate binary (its own process, default limits) while a
//! legitimate camera streams, a player plays and a simulated GB device is registered: the gateway
//! must survive every attack, keep every stream with its source, lose the player no frame, and
//! give back memory and file descriptors afterwards.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gbgate::sim::attack::{self, Attack, AttackOutcome, AttackTarget, CampaignOptions};

use crate::common;

/// The gateway process; killed when dropped. Its log is kept for the failure message.
struct Gateway {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    addrs: BTreeMap<String, SocketAddr>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(60)..].join("\n")
    }
}

/// Starts `gbgate run` on kernel-chosen loopback ports and reads them back from its start line.
fn start_gateway(dir: &std::path::Path) -> Gateway {
    let config = dir.join("gbgate.toml");
    std::fs::write(
        &config,
        format!(
            "[rtp]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n[rtsp]\nlisten = \"127.0.0.1:0\"\n\
             [rtmp]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[webrtc]\nlisten = \"127.0.0.1:0\"\n[sip]\nlisten = \"127.0.0.1:0\"\npassword = \"{PASSWORD}\"\n\
             db = \"{}\"\n",
            dir.join("gbgate.redb").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gbgate"))
        .arg("run")
        .arg("-c")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gbgate runs");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    // Keeps reading the log for the whole run, so the gateway never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("gbgate started") {
                let _ = tx.send(line.clone());
            }
            let mut log = sink.lock().unwrap();
            if log.len() > 20_000 {
                log.drain(..10_000);
            }
            log.push(line);
        }
    });
    let started = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("gbgate did not report its start within 30 s:\n{}", log.lock().unwrap().join("\n")));
    let addrs = started_addresses(&started);
    Gateway { child, log, addrs }
}

/// `rtp=127.0.0.1:1 api=127.0.0.1:2 rtsp=Some(127.0.0.1:3) ...` from the start line.
fn started_addresses(line: &str) -> BTreeMap<String, SocketAddr> {
    let mut addrs = BTreeMap::new();
    for word in line.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else { continue };
        let value = value.trim_start_matches("Some(").trim_end_matches(')');
        if let Ok(addr) = value.parse::<SocketAddr>() {
            addrs.insert(key.to_string(), addr);
        }
    }
    addrs
}

const PASSWORD: &str = "attack-test-secret";
const VICTIM_SSRC: u32 = 100_000_001;
const DEVICE: &str = "34020000001320000001";

fn outcome(report: &attack::CampaignReport, a: Attack) -> &AttackOutcome {
    report.outcomes.iter().find(|o| o.attack == a).unwrap_or_else(|| panic!("{a:?} did not run"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hole_of_issue_8_is_closed_while_a_camera_and_a_player_run() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(dir.path());
    let api = gw.addrs["api"];
    let sip = gw.addrs["sip"];

    // A real GB device (the simulator) registers and is the victim of the forged SIP requests.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut sim = gbgate::sim::camera::SimOptions::new(sip, common::own_fixture("h264_g711a_8k.rtp"));
    sim.password = PASSWORD.into();
    sim.first_id = DEVICE.into();
    let sim_stats = gbgate::sim::camera::spawn(sim, stop.clone()).await.expect("simulator starts");
    let deadline = Instant::now() + Duration::from_secs(15);
    // Online and its catalog answered (the snapshot below is compared with the one after the attacks).
    let ready = |d: &serde_json::Value| d["online"] == true && d["channels"].as_array().is_some_and(|c| !c.is_empty());
    while !ready(&common::http_get(api, &format!("/api/v1/devices/{DEVICE}")).await.1) {
        assert!(
            Instant::now() < deadline,
            "the simulated device never came online with its catalog:\n{}",
            gw.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let device_before = common::http_get(api, &format!("/api/v1/devices/{DEVICE}")).await.1;

    let target = AttackTarget {
        rtp: gw.addrs["rtp"],
        rtsp: gw.addrs.get("rtsp").copied(),
        rtmp: gw.addrs.get("rtmp").copied(),
        sip: Some(sip),
        api: Some(api),
        attacker_ip: "127.0.0.2".parse().unwrap(),
        victim_ssrc: VICTIM_SSRC,
        victim_device: Some(DEVICE.into()),
        sip_password: Some(PASSWORD.into()),
        server_id: "34020000002000000001".into(),
        // A quarter of the issue's figures keeps the run near a minute; the limits it meets are
        // the defaults, which are far lower than these counts.
        scale: 0.25,
        hold: Duration::from_secs(12),
    };
    let opts = CampaignOptions {
        attacks: Attack::ALL.to_vec(),
        camera_ip: "127.0.0.1".parse().unwrap(),
        // Under the RTSP session timeout (60 s): the counting player sends no keepalives.
        play_for: Duration::from_secs(50),
        pid: Some(gw.child.id()),
        settle: Duration::from_secs(5),
    };
    let report = attack::campaign(&target, &opts).await;
    let json = serde_json::to_string_pretty(&report).unwrap();
    println!("{json}");
    let ctx = || format!("{json}\n--- gateway log (tail) ---\n{}", gw.log_tail());

    // Nothing crashes the gateway (hole 1: one RTMP packet used to abort the process).
    assert!(report.alive && report.died_after.is_none(), "the gateway died: {}", ctx());

    // The legitimate player lost nothing.
    let legit = &report.legit;
    assert!(legit.player_error.is_none() && !legit.closed_early, "player failed: {}", ctx());
    assert_eq!(legit.video_seq_gaps, 0, "{}", ctx());
    // The count misses about a second against the wall clock whatever the run's length: the
    // player's DESCRIBE of a video-only stream younger than 2 s waits for a second of media to
    // see whether audio comes (server::rtsp::stream_tracks). Lost frames show as hub drops for
    // the stream's subscribers (below) and as sequence gaps.
    assert!(legit.video_frames + 50 >= legit.frames_expected, "frames lost: {}", ctx());

    // Hole 2: nobody publishes the camera's name or a reserved prefix over RTMP.
    let takeover = outcome(&report, Attack::RtmpTakeover);
    assert_eq!(takeover.count("NetStream.Publish.Start"), 0, "{}", ctx());
    let streams = common::streams(api).await;
    let victim = streams
        .iter()
        .find(|s| s["name"] == attack::rtp_stream_name(VICTIM_SSRC))
        .unwrap_or_else(|| panic!("the camera's stream is gone: {}", ctx()));
    assert_eq!(victim["source"]["transport"], "udp", "{}", ctx());
    assert_eq!(victim["drops"], 0, "the player was skipped ahead (frames not delivered): {}", ctx());
    assert_eq!(victim["source"]["peer"].as_str().unwrap().split(':').next(), Some("127.0.0.1"), "{}", ctx());

    // Hole 12: idle and slow connections are closed on every listener.
    let idle = outcome(&report, Attack::IdleConnections);
    for listener in ["rtp", "rtsp", "rtmp", "sip", "api"] {
        let held = idle.count(&format!("{listener}: held open"));
        assert_eq!(held, 0, "{listener} kept idle connections for {:?}: {}", target.hold, ctx());
    }

    // Hole 16: unfinished RTMP messages are not held.
    assert_eq!(outcome(&report, Attack::RtmpMemory).count("held open"), 0, "{}", ctx());

    // Hole 17: cross-site writes and a rebinding Host are refused.
    let api_attack = outcome(&report, Attack::ApiCrossSite);
    for (what, n) in &api_attack.observed {
        let code: u16 = what.rsplit(": ").next().unwrap().parse().unwrap_or(0);
        assert!(*n > 0 && (400..500).contains(&code) && code != 404, "{what}: {}", ctx());
    }

    // Holes 11 and 14: the device stays where it registered, with its own channels.
    let device_after = common::http_get(api, &format!("/api/v1/devices/{DEVICE}")).await.1;
    let channel_ids = |d: &serde_json::Value| -> Vec<String> {
        d["channels"].as_array().into_iter().flatten().map(|c| c["device_id"].to_string()).collect()
    };
    assert_eq!(device_after["addr"], device_before["addr"], "{}", ctx());
    assert!(!channel_ids(&device_before).is_empty(), "{device_before}");
    assert_eq!(channel_ids(&device_after), channel_ids(&device_before), "{}", ctx());
    assert!(sim_stats.registered.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    // Hole 13: after the REGISTER flood a new device still registers.
    let stop2 = tokio_util::sync::CancellationToken::new();
    let mut late = gbgate::sim::camera::SimOptions::new(sip, common::own_fixture("h264_g711a_8k.rtp"));
    late.password = PASSWORD.into();
    late.first_id = "34020000001320000077".into();
    let late_stats = gbgate::sim::camera::spawn(late, stop2.clone()).await.expect("simulator starts");
    let deadline = Instant::now() + Duration::from_secs(15);
    while late_stats.registered.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "a new device cannot register after the flood: {}", ctx());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop2.cancel();

    // Memory and file descriptors come back near their level before the attacks.
    let (rss_before, fds_before) = report.usage_before.unwrap();
    let (rss_after, fds_after) = report.usage_settled.unwrap();
    assert!(rss_after < rss_before + 96 * 1024, "RSS {rss_before} kB -> {rss_after} kB: {}", ctx());
    assert!(fds_after <= fds_before + 16, "fds {fds_before} -> {fds_after}: {}", ctx());
    stop.cancel();
}
