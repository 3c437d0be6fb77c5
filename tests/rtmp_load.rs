//! 100 concurrent RTMP players on one stream: every one starts at a keyframe and gets frames.

use std::time::Duration;

use crate::common::*;
use gbgate::sim::players::{run_players, PlayersOptions};
use gbgate::sim::send::{send_file, SendOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_rtmp_players_start_at_a_keyframe_and_keep_up() {
    let mut cfg = test_config();
    // All 100 players come from 127.0.0.1 (as in tests/rtsp_load.rs).
    cfg.rtmp.max_connections_per_source = 1000;
    let gw = start(cfg).await;
    let rtmp = gw.rtmp_addr.expect("RTMP is enabled by default");
    let to = gw.rtp_addr;
    let sender = tokio::spawn(async move {
        let opts = SendOptions {
            to,
            tcp: true,
            count: 1,
            ssrc_base: Some(900_000_002),
            loops: 9,
            duration: None,
            flood: false,
            linger: Duration::from_secs(1),
        };
        send_file(&own_fixture("h264_g711u_16k.rtp"), &opts).await.unwrap()
    });
    wait_streams(gw.api_addr, Duration::from_secs(5), |l| l.iter().any(|s| s["video"]["frames"].as_u64() > Some(0)))
        .await;
    let opts = PlayersOptions {
        url: format!("rtmp://{rtmp}/rtp/{:08X}", 900_000_002u32),
        count: 100,
        duration: Duration::from_secs(10),
        stall: 0,
    };
    let report = run_players(&opts).await.unwrap();
    sender.await.unwrap();
    let errors: Vec<_> = report.players.iter().filter_map(|p| p.error.clone()).collect();
    assert!(errors.is_empty(), "{} players failed, first: {:?}", errors.len(), errors.first());
    let frames: Vec<u64> = report.players.iter().map(|p| p.video_frames).collect();
    let (min, max) = (*frames.iter().min().unwrap(), *frames.iter().max().unwrap());
    println!("100 RTMP players: video frames per player {min}..{max}");
    for p in &report.players {
        assert!(p.first_is_key, "every player starts at a keyframe: {p:?}");
        assert!(p.first_video.is_some(), "{p:?}");
        assert_eq!(p.video_ts_regressions, 0, "{p:?}");
        assert!(!p.closed_early, "{p:?}");
    }
    // 10 s of 25 fps, started from the cached GOP: every player got at least 9 s worth.
    assert!(min >= 225, "frames per player {min}..{max}");
    assert!(max - min <= 50, "players started within one GOP of each other: {min}..{max}");
    gw.stop().await;
}
