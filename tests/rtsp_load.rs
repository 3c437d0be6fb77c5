//! 200 concurrent RTSP (TCP) players on one 720p stream, plus one that stops reading.

use std::time::Duration;

use crate::common::*;
use gbgate::sim::players::{run_players, PlayersOptions};
use gbgate::sim::send::{send_file, SendOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_players_get_every_frame_and_a_stalled_one_is_dropped() {
    two_hundred_players(test_config(), 900_000_001).await;
}

/// The same per frame (`merge_write = "0s"`), where the publisher writes to the players that keep
/// up itself (D183) and the stalled one falls back to its task and is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_direct_players_get_every_frame_and_a_stalled_one_is_dropped() {
    let mut cfg = test_config();
    cfg.rtsp.merge_write = gbgate::config::HumanDuration(Duration::ZERO);
    two_hundred_players(cfg, 900_000_002).await;
}

async fn two_hundred_players(mut cfg: gbgate::config::Config, ssrc: u32) {
    // A small per-subscriber queue and skip allowance, so the stalled player is found out within
    // the test (the server's 256 KiB socket send buffer absorbs the first seconds).
    cfg.hub.subscriber_queue = 64;
    cfg.hub.max_skips_per_minute = 2;
    // All 200 players come from 127.0.0.1, as through a proxy: lift the per-source cap (64).
    cfg.rtsp.max_connections_per_source = 1000;
    let gw = start(cfg).await;
    let rtsp = gw.rtsp_addr.unwrap();
    let to = gw.rtp_addr;
    let sender = tokio::spawn(async move {
        let opts = SendOptions {
            to,
            tcp: true,
            count: 1,
            ssrc_base: Some(ssrc),
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
        url: format!("rtsp://{rtsp}/rtp/{ssrc:08X}"),
        count: 200,
        duration: Duration::from_secs(14),
        stall: 1,
    };
    let report = run_players(&opts).await.unwrap();
    sender.await.unwrap();
    let errors: Vec<_> = report.players.iter().filter_map(|p| p.error.clone()).collect();
    assert!(errors.is_empty(), "{} players failed, first: {:?}", errors.len(), errors.first());
    let frames: Vec<u64> = report.players.iter().map(|p| p.video_frames).collect();
    let (min, max) = (*frames.iter().min().unwrap(), *frames.iter().max().unwrap());
    println!("200 players: video frames per player {min}..{max}");
    for p in &report.players {
        assert_eq!(p.video_seq_gaps, 0, "a reading player missed packets: {p:?}");
        assert!(p.first_is_key, "every player starts at a keyframe: {p:?}");
        assert!(!p.closed_early, "{p:?}");
    }
    // 14 s of 25 fps, started from the cached GOP: every player got at least 13 s worth.
    assert!(min >= 325, "frames per player {min}..{max}");
    assert!(max - min <= 50, "players started within one GOP of each other: {min}..{max}");
    assert_eq!(report.stalled_disconnected, 1, "the player that stopped reading was disconnected");
    gw.stop().await;
}
