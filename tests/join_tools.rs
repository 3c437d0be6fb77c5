//! The measuring tools of issue 12 against a real gateway on loopback: `gbgate players --joins`
//! (sequential joins, connect -> first keyframe packet) and `gbgate latency` (frames recognised
//! by content, sent -> received). They print figures; these tests check what the figures are
//! made of, never a timing.

use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::sim::send::{send_file, SendOptions};

/// Sequential RTSP and RTMP joins each reach the cached keyframe, and each is timed from the
/// connect (the join includes DESCRIBE for RTSP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_measured_from_connect_to_the_first_keyframe() {
    let gw = start(test_config()).await;
    let opts = SendOptions {
        to: gw.rtp_addr,
        tcp: true,
        count: 1,
        ssrc_base: Some(0x0BEB_C801),
        loops: 4,
        duration: None,
        flood: false,
        linger: Duration::from_millis(500),
    };
    let path = own_fixture("h264_g711a_8k.rtp");
    tokio::spawn(async move { send_file(&path, &opts).await.unwrap() });
    let name = format!("rtp/{:08X}", 0x0BEB_C801u32);
    let t = Instant::now();
    while !gw.hub.get(&name).is_some_and(|s| s.has_keyframe()) {
        assert!(t.elapsed() < Duration::from_secs(5), "stream {name} did not get a keyframe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rtsp = format!("rtsp://{}/{name}", gw.rtsp_addr.unwrap());
    let rtmp = format!("rtmp://{}/{name}", gw.rtmp_addr.unwrap());
    for url in [rtsp, rtmp] {
        let report = gbgate::sim::players::run_joins(&url, 5, Duration::from_secs(5)).await.unwrap();
        assert_eq!(report.players.len(), 5);
        for p in &report.players {
            assert!(p.error.is_none(), "{url}: {:?}", p.error);
            let (join, first) = (p.join.expect("joined"), p.first_video.expect("video"));
            assert!(p.first_is_key, "{url}: the first video is the cached keyframe");
            assert!(join >= first, "{url}: the join includes the set-up before the play request");
            assert_eq!(p.describe.is_some(), url.starts_with("rtsp"), "DESCRIBE is timed for RTSP only");
        }
    }
}

/// The latency tool sends two cameras and plays both: every marked video packet the players
/// count is recognised as a frame of the clip that the sender sent earlier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_tool_matches_frames_by_content() {
    let mut cfg = test_config();
    cfg.rtsp.merge_write = gbgate::config::HumanDuration(Duration::ZERO);
    let gw = start(cfg).await;
    let opts = gbgate::sim::latency::LatencyOptions {
        rtp: gw.rtp_addr,
        rtsp: gw.rtsp_addr.unwrap(),
        tcp: false,
        cameras: 2,
        players: 2,
        ssrc_base: 0x0BEB_C811,
        duration: Duration::from_secs(4),
        warmup: Duration::from_secs(2),
    };
    let report = gbgate::sim::latency::run_latency(&own_fixture("h264_g711a_8k.rtp"), &opts).await.unwrap();
    println!(
        "latency: p50 {:?}, {} frames, {} unmatched, {} recognisable",
        report.percentile(0.5),
        report.samples.len(),
        report.unmatched,
        report.known_frames
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.players_ok, 2);
    assert!(report.known_frames >= 40, "the fixture's 50 frames are recognisable by their tails");
    // 3 s of counting at 25 fps for two players, less what scheduling may cost at the edges.
    assert!(report.samples.len() >= 100, "{} frames matched", report.samples.len());
    assert!(report.unmatched <= 4, "{} marked packets not recognised", report.unmatched);
}
