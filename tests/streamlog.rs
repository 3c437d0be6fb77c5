//! Per-stream event logs (D90): files split at local midnight and expired after `keep_days`
//! (an injected clock crosses midnight), the per-stream rate limit, and the events a live stream
//! writes through the hub (start, codec, players, stop) over real sockets.
use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{start, test_config, wait_for};
use gbgate::config::LogConfig;
use gbgate::diag::streamlog::{Clock, StreamLogs};

/// A clock the test moves; +08:00 (China Standard Time, as GB deployments mostly are).
struct TestClock(AtomicI64);

impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
    fn utc_offset(&self, _unix_secs: i64) -> i64 {
        8 * 3600
    }
}

/// 2025-12-05T15:59:58Z = 23:59:58 on the 5th in +08:00.
const BEFORE_MIDNIGHT: i64 = 1_764_950_398_000;

fn log_config(dir: &Path) -> LogConfig {
    LogConfig { dir: Some(dir.to_path_buf()), keep_days: 3, lines_per_minute: 60, burst: 5, ..LogConfig::default() }
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

#[test]
fn a_new_file_at_local_midnight_and_old_files_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gb_34020000001310000001");
    std::fs::create_dir_all(&dir).unwrap();
    // Files of earlier days: with keep_days = 3 on the 6th, the 4th stays and the 3rd goes.
    for d in ["2025-12-01", "2025-12-03", "2025-12-04"] {
        std::fs::write(dir.join(format!("{d}.log")), "old\n").unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "not a log\n").unwrap();
    // A stream that never comes back: its old log expires all the same, its directory goes.
    let gone = tmp.path().join("rtp_0000DEAD");
    std::fs::create_dir_all(&gone).unwrap();
    std::fs::write(gone.join("2025-12-02.log"), "old\n").unwrap();
    let clock = Arc::new(TestClock(AtomicI64::new(BEFORE_MIDNIGHT)));
    let logs = StreamLogs::start(tmp.path().to_path_buf(), &log_config(tmp.path()), clock.clone()).unwrap();
    let log = logs.open("gb/34020000001310000001");
    log.event("start", "Udp from 10.0.0.7:15060 ssrc 0100000001");
    clock.0.store(BEFORE_MIDNIGHT + 3000, Ordering::Relaxed);
    log.event("loss", "3 RTP packets lost (3 in all)\nsecond line");
    logs.flush();
    let day5 = read(dir.join("2025-12-05.log"));
    let day6 = read(dir.join("2025-12-06.log"));
    println!("{day5}{day6}");
    assert_eq!(day5, "2025-12-05T23:59:58.000+08:00 start Udp from 10.0.0.7:15060 ssrc 0100000001\n");
    assert_eq!(day6, "2025-12-06T00:00:01.000+08:00 loss 3 RTP packets lost (3 in all) second line\n");
    let mut left: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, ["2025-12-04.log", "2025-12-05.log", "2025-12-06.log", "notes.txt"]);
    assert!(!gone.exists(), "the silent stream's expired log and empty directory are gone");
    // Two days later the 4th and the 5th are gone too.
    clock.0.store(BEFORE_MIDNIGHT + 2 * 86_400_000 + 3000, Ordering::Relaxed);
    log.event("player", "rtsp joined (1 watching)");
    logs.flush();
    assert!(!dir.join("2025-12-04.log").exists() && !dir.join("2025-12-05.log").exists());
    assert!(dir.join("2025-12-08.log").exists());
}

#[test]
fn the_rate_limit_holds_and_reports_what_it_held_back() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock(AtomicI64::new(BEFORE_MIDNIGHT - 3_600_000)));
    let logs = StreamLogs::start(tmp.path().to_path_buf(), &log_config(tmp.path()), clock.clone()).unwrap();
    let log = logs.open("rtp/0000ABCD");
    // A camera flooding events: the burst (5) goes through, the rest is counted.
    for i in 0..1000 {
        log.event("loss", &format!("burst {i}"));
    }
    assert_eq!((log.stats().lines, log.stats().suppressed), (5, 995));
    // 2 s later (1 line/s): two lines, the first preceded by the count of what was held back.
    clock.0.fetch_add(2000, Ordering::Relaxed);
    log.event("loss", "recovered");
    log.event("loss", "again");
    log.event("loss", "held");
    logs.flush();
    let text = read(tmp.path().join("rtp_0000ABCD/2025-12-05.log"));
    println!("{text}");
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 5 + 1 + 2, "{text}");
    assert!(lines[4].ends_with("loss burst 4"));
    assert!(lines[5].ends_with("log 995 lines suppressed by the rate limit"), "{text}");
    assert!(lines[6].ends_with("loss recovered") && lines[7].ends_with("loss again"));
    // The one held at the end is reported when the stream's log closes.
    drop(log);
    logs.flush();
    let text = read(tmp.path().join("rtp_0000ABCD/2025-12-05.log"));
    assert!(text.ends_with("log 1 lines suppressed by the rate limit\n"), "{text}");
}

/// One UDP stream of the fixture (unannounced SSRC: published as `rtp/<SSRC>`), watched by a
/// subscriber, then left to time out: its own log tells the story.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_logs_its_start_codec_players_and_end() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = test_config();
    cfg.log = LogConfig { dir: Some(tmp.path().to_path_buf()), ..LogConfig::default() };
    cfg.rtp.timeout = gbgate::config::HumanDuration(Duration::from_secs(1));
    let gw = start(cfg).await;
    let packets = common::read_rtp_dump(&common::own_fixture("h264_g711a_8k.rtp"));
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ssrc = u32::from_be_bytes(packets[0][8..12].try_into().unwrap());
    let name = format!("rtp/{ssrc:08X}");
    let (hub, n2) = (gw.hub.clone(), name.clone());
    let mut sub = None;
    for (i, p) in packets.iter().enumerate() {
        sock.send_to(p, gw.rtp_addr).await.unwrap();
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if sub.is_none() {
            sub = hub.get(&n2).map(|s| s.subscribe_as("rtsp"));
        }
    }
    assert!(sub.is_some(), "the stream went live");
    assert!(wait_for(Duration::from_secs(3), || hub.get(&name).is_some_and(|s| s.stats().video.is_some())).await);
    drop(sub);
    // No more packets: the stream ends after the 1 s timeout.
    assert!(wait_for(Duration::from_secs(5), || hub.get(&name).is_none()).await, "the stream ended");
    gw.hub.diag().logs.unwrap().flush();
    let dir = tmp.path().join(gbgate::diag::file_component(&name));
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = read(&files[0]);
    println!("{text}");
    let kinds: Vec<&str> = text.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    assert_eq!(kinds.first(), Some(&"start"), "{text}");
    assert!(text.contains(" start Udp from 127.0.0.1:"), "{text}");
    assert!(text.contains(" codec video h264 352x288"), "{text}");
    assert!(text.contains(" codec audio "), "{text}");
    assert!(text.contains(" player rtsp joined (1 watching)"), "{text}");
    assert!(text.contains(" player rtsp left"), "{text}");
    assert_eq!(kinds.last(), Some(&"stop"), "{text}");
    assert!(text.contains(" stop no data for 1s"), "{text}");
    assert_eq!(kinds.iter().filter(|k| **k == "stop").count(), 1, "one stop line: {text}");
    gw.stop().await;
}
