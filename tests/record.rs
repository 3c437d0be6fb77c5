//! Raw RTP recording (D89) of live GB streams from the simulated camera (real SIP, RTP over UDP
//! and TCP): the recording probes to what the API counted, rotation and byte bounds hold on
//! disk, and an unwritable directory stops the recording, not the stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{http_get, own_fixture, start, test_config, wait_devices_with_catalogs, wait_for};
use gbgate::config::{HumanDuration, RecordConfig};
use gbgate::proto::sip::sdp::MediaTransport;
use gbgate::sim::camera::{self, SimOptions, SimStats};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "12345678";

fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn config(record: RecordConfig) -> gbgate::config::Config {
    init_log();
    let mut cfg = test_config();
    cfg.sip.password = Some(PASSWORD.into());
    cfg.record = record;
    cfg
}

fn record_config(dir: &Path) -> RecordConfig {
    RecordConfig { dir: Some(dir.to_path_buf()), streams: vec!["gb/*".into()], ..RecordConfig::default() }
}

/// Starts one simulated camera per case and plays channel 0 of each; returns their stats and
/// stream names.
async fn play(
    gw: &gbgate::server::Gateway,
    cases: &[(&str, MediaTransport)],
    stop: &CancellationToken,
) -> (Vec<Arc<SimStats>>, Vec<String>) {
    let mut sims = Vec::new();
    for (id, _) in cases {
        let mut o = SimOptions::new(gw.sip_addr.unwrap(), own_fixture("h264_g711a_8k.rtp"));
        o.password = PASSWORD.into();
        o.first_id = id.to_string();
        o.unregister_on_stop = false;
        sims.push(camera::spawn(o, stop.clone()).await.unwrap());
    }
    wait_devices_with_catalogs(gw, cases.len(), "cameras registered").await;
    let gb = gw.gb.clone().unwrap();
    let mut names = Vec::new();
    for (id, t) in cases {
        let channel = camera::channel_id(id, 0);
        gb.play(None, &channel, Some(*t)).await.unwrap_or_else(|e| panic!("play {id}: {e}"));
        names.push(format!("gb/{channel}"));
    }
    (sims, names)
}

/// The stream as `/api/v1/streams/<name>` shows it, once it is live.
async fn stream(api: std::net::SocketAddr, name: &str) -> Value {
    for _ in 0..100 {
        let (status, body) = http_get(api, &format!("/api/v1/streams/{name}")).await;
        if status == 200 {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = http_get(api, &format!("/api/v1/streams/{name}")).await;
    assert_eq!(status, 200, "{name}: {body}");
    body
}

/// The `.rtp` files of one stream's directory, oldest first, with their sizes.
fn files_of(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| (e.path(), e.metadata().unwrap().len())).collect())
        .unwrap_or_default();
    v.retain(|(p, _)| p.extension().is_some_and(|e| e == "rtp"));
    v.sort();
    v
}

fn recorder(gw: &gbgate::server::Gateway) -> Arc<gbgate::diag::record::Recorder> {
    gw.hub.diag().recorder.expect("recording is configured")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_probes_to_the_frames_and_keyframes_the_api_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = start(config(record_config(tmp.path()))).await;
    let stop = CancellationToken::new();
    let cases = [("34020000001320000101", MediaTransport::Udp), ("34020000001320000201", MediaTransport::TcpPassive)];
    let (sims, names) = play(&gw, &cases, &stop).await;
    assert!(
        wait_for(Duration::from_secs(10), || sims.iter().all(|s| SimStats::get(&s.media_packets) > 300)).await,
        "media flows"
    );
    let mut live = Vec::new();
    for n in &names {
        assert!(stream(gw.api_addr, n).await["record"]["active"] == true, "the API shows the recording");
        live.push(gw.hub.get(n).unwrap());
    }
    // The cameras stop sending: the UDP stream stays live, the TCP one ends with its connection.
    // Either way its figures settle; they are read as the API shows them (`StreamView`), which
    // for the ended stream is no longer reachable over HTTP.
    stop.cancel();
    let view = |s: &gbgate::hub::Stream| serde_json::to_value(gbgate::server::api::StreamView::of(s)).unwrap();
    let mut last = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let packets: Vec<_> = live.iter().map(|s| view(s)["packets"].clone()).collect();
        if packets == last {
            break;
        }
        last = packets;
    }
    recorder(&gw).flush();
    for ((name, (_, t)), live) in names.iter().zip(&cases).zip(&live) {
        let s = view(live);
        let rec = &s["record"];
        // Still recording the live UDP stream; the ended TCP one closed its recording cleanly.
        assert_eq!(rec["active"], *t == MediaTransport::Udp, "{t:?}: {rec}");
        assert!(rec["error"].is_null(), "{t:?}: {rec}");
        assert_eq!(rec["dropped"], 0, "{t:?}: {rec}");
        assert_eq!(rec["packets"], s["packets"], "{t:?}: every packet the stream took was recorded");
        let dir = tmp.path().join(name.replace('/', "_"));
        let files = files_of(&dir);
        assert_eq!(files.len(), 1, "{t:?}: one file (no rotation at default limits): {files:?}");
        assert_eq!(files[0].1, rec["bytes"].as_u64().unwrap(), "{t:?}: bytes on disk");
        assert!(files[0].0.file_name().unwrap().to_string_lossy().ends_with("Z.rtp"));
        // What `gbgate probe` makes of the file is what the gateway saw live.
        let report = gbgate::probe::report::probe_file(&files[0].0).unwrap();
        assert_eq!(report.streams.len(), 1, "{t:?}");
        let v = report.streams[0].video.as_ref().expect("video");
        let (frames, keyframes) = (s["video"]["frames"].as_u64().unwrap(), s["video"]["keyframes"].as_u64().unwrap());
        println!(
            "{t:?}: API {frames} frames / {keyframes} keyframes; probe of {} {} / {}",
            files[0].0.display(),
            v.frames,
            v.keyframes
        );
        assert!(frames > 50 && keyframes >= 2, "{t:?}: {s}");
        assert_eq!((v.frames, v.keyframes), (frames, keyframes), "{t:?}");
        assert_eq!(report.streams[0].packets, s["packets"].as_u64().unwrap(), "{t:?}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_size_and_the_byte_bounds_hold_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rc = record_config(tmp.path());
    rc.segment_bytes = 16 << 10;
    rc.max_bytes_per_stream = 64 << 10;
    rc.max_bytes_total = 100 << 10;
    // An earlier run's recording counts against the total and goes first.
    let old = tmp.path().join("gb_old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("2000-01-01T00-00-00.000Z.rtp"), vec![0u8; 30 << 10]).unwrap();
    let gw = start(config(rc)).await;
    let stop = CancellationToken::new();
    let cases = [("34020000001320000301", MediaTransport::Udp), ("34020000001320000401", MediaTransport::TcpPassive)];
    let (_sims, names) = play(&gw, &cases, &stop).await;
    // Each stream writes well beyond its bound.
    let api = gw.api_addr;
    let mut written = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut min = u64::MAX;
        for n in &names {
            min = min.min(stream(api, n).await["record"]["bytes"].as_u64().unwrap_or(0));
        }
        written = min;
        if min > 200 << 10 {
            break;
        }
    }
    assert!(written > 200 << 10, "each stream wrote {written} bytes");
    recorder(&gw).flush();
    assert!(!old.join("2000-01-01T00-00-00.000Z.rtp").exists(), "the oldest file of all went first");
    let mut total = 0;
    for n in &names {
        let files = files_of(&tmp.path().join(n.replace('/', "_")));
        let bytes: u64 = files.iter().map(|f| f.1).sum();
        println!("{n}: {} files, {bytes} bytes on disk", files.len());
        assert!(files.len() >= 3, "{n}: rotated by size: {files:?}");
        assert!(files.iter().all(|f| f.1 <= 16 << 10), "{n}: no file over segment_bytes: {files:?}");
        assert!(bytes <= 64 << 10, "{n}: {bytes} bytes over max_bytes_per_stream");
        total += bytes;
        // Every file is a sequence of whole records the probe reads.
        for (path, _) in &files {
            let report = gbgate::probe::report::probe_file(path).unwrap();
            assert!(report.streams[0].packets > 0, "{}", path.display());
        }
    }
    assert!(total <= 100 << 10, "{total} bytes over max_bytes_total");
    let (status, totals) = http_get(api, "/api/v1/record").await;
    assert_eq!(status, 200);
    assert!(totals["bytes_on_disk"].as_u64().unwrap() <= 100 << 10, "{totals}");
    assert!(totals["deleted_files"].as_u64().unwrap() > 10, "{totals}");
    assert_eq!(totals["recordings"], 2, "{totals}");
    let s = stream(api, &names[0]).await;
    assert!(s["record"]["files"].as_u64().unwrap() > 10, "{}", s["record"]);
    stop.cancel();
    gw.stop().await;
}

#[test]
fn rotation_by_time_and_the_queue_bound_never_block() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = RecordConfig {
        dir: Some(tmp.path().to_path_buf()),
        streams: vec!["rtp/*".into()],
        segment_duration: HumanDuration(Duration::from_millis(300)),
        queue_bytes: 64 << 10,
        ..RecordConfig::default()
    };
    let rec = gbgate::diag::record::Recorder::start(&cfg).unwrap();
    assert!(rec.handle("gb/1").is_none(), "not matched: no handle, nothing per packet");
    let h = rec.handle("rtp/0000ABCD").unwrap();
    let mut pkt = gbgate::codec::rtp_pack::rtp_header(96, true, 0, 0, 0xabcd).to_vec();
    pkt.extend_from_slice(&[0u8; 500]);
    let started = std::time::Instant::now();
    let mut seq = 0u16;
    while started.elapsed() < Duration::from_millis(1100) {
        pkt[2..4].copy_from_slice(&seq.to_be_bytes());
        seq += 1;
        h.packet(&pkt);
        std::thread::sleep(Duration::from_millis(5));
    }
    rec.flush();
    let files = files_of(&tmp.path().join("rtp_0000ABCD"));
    assert!((3..=6).contains(&files.len()), "about one file per 300 ms: {files:?}");
    assert_eq!(h.stats().dropped, 0);
    // A burst far beyond the queue bound: dropped and counted, and packet() returns at once.
    let t = std::time::Instant::now();
    for _ in 0..20_000 {
        h.packet(&pkt);
    }
    let spent = t.elapsed();
    let dropped = h.stats().dropped;
    println!("20000 packets offered in {spent:?}, {dropped} dropped by the 64 KiB queue bound");
    assert!(dropped > 0, "the queue bound dropped some");
    rec.flush();
    let s = h.stats();
    assert_eq!(s.packets + s.dropped, seq as u64 + 20_000, "every packet written or counted: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_directory_stops_the_recording_not_the_stream() {
    let tmp = tempfile::tempdir().unwrap();
    // A path below a regular file: creating it fails even for root (ENOTDIR).
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let gw = start(config(record_config(&file.join("x")))).await;
    let stop = CancellationToken::new();
    let (_sims, names) = play(&gw, &[("34020000001320000501", MediaTransport::Udp)], &stop).await;
    let api = gw.api_addr;
    let mut s = Value::Null;
    for _ in 0..50 {
        s = stream(api, &names[0]).await;
        if !s["record"]["error"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rec = &s["record"];
    println!("record: {rec}");
    assert_eq!(rec["active"], false, "{rec}");
    assert!(rec["error"].as_str().unwrap().contains("Not a directory"), "{rec}");
    assert_eq!(rec["files"], 0);
    // The stream goes on: frames keep coming, to the API and to a subscriber.
    let frames = s["video"]["frames"].as_u64().unwrap_or(0);
    let mut sub = gw.hub.get(&names[0]).unwrap().subscribe();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        let mut n = 0;
        while n < 25 {
            sub.recv().await.unwrap();
            n += 1;
        }
        n
    })
    .await
    .expect("a subscriber receives frames");
    assert_eq!(got, 25);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = stream(api, &names[0]).await;
    assert!(later["video"]["frames"].as_u64().unwrap() > frames, "{later}");
    assert_eq!(later["record"]["error"], s["record"]["error"], "the error stays as it was");
    stop.cancel();
    gw.stop().await;
}
