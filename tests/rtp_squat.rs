//! SSRC squatting (issue 8, hole 9): many made-up SSRCs from one address must not take every
//! stream slot. Announced sessions always find a slot, unannounced SSRCs have their own smaller
//! budget and a per-source-address limit, and idle squatters are evicted first.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use gbgate::sim::send::{send_file, SendOptions};
use serde_json::Value;

fn camera(to: SocketAddr, ssrc: u32) -> SendOptions {
    SendOptions {
        to,
        tcp: false,
        count: 1,
        ssrc_base: Some(ssrc),
        loops: 1,
        duration: None,
        flood: false,
        linger: Duration::ZERO,
    }
}

/// 1,000 made-up SSRCs from `from`, each continuing its sequence (so each passes probation), in
/// rounds until `stop`.
async fn squat(from: &str, to: SocketAddr, stop: Arc<AtomicBool>) -> u64 {
    let sock = tokio::net::UdpSocket::bind(format!("{from}:0")).await.unwrap();
    let mut sent = 0u64;
    let mut round = 0u16;
    let mut pkt = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        for i in 0..1000u32 {
            for k in 0..3u16 {
                pkt.clear();
                let seq = round.wrapping_mul(3).wrapping_add(k);
                gbgate::proto::rtp::write_packet(&mut pkt, 96, false, seq, 0, 0x5000_0000 + i, &[0u8; 200]);
                let _ = sock.send_to(&pkt, to).await;
                sent += 1;
            }
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        round = round.wrapping_add(1);
    }
    sent
}

fn live_from(list: &[Value], ip: &str) -> usize {
    list.iter().filter(|s| s["source"]["peer"].as_str().is_some_and(|p| p.starts_with(&format!("{ip}:")))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squatters_from_one_address_leave_room_for_announced_and_other_cameras() {
    let mut cfg = test_config();
    cfg.rtp.max_streams = 20;
    cfg.rtp.max_unknown_per_source = 8;
    let gw = start(cfg).await;
    let (rtp, api) = (gw.rtp_addr, gw.api_addr);
    let stop = Arc::new(AtomicBool::new(false));
    let squatter = tokio::spawn(squat("127.0.0.2", rtp, stop.clone()));
    // The squatter takes what it is allowed, and no more.
    let list = wait_streams(api, Duration::from_secs(10), |l| live_from(l, "127.0.0.2") >= 8).await;
    assert_eq!(live_from(&list, "127.0.0.2"), 8, "squatter streams");
    let (_, c) = http_get(api, "/api/v1/rtp").await;
    assert!(c["unknown_refused"].as_u64() > Some(0), "{c}");

    // While it goes on: an announced GB session and an unannounced camera, both from 127.0.0.1.
    let announced = "gb/34020000001310000801";
    gw.rtp.announce(200_000_801, announced.into());
    let a = tokio::spawn(async move { send_file(&own_fixture("h264_g711a_8k.rtp"), &camera(rtp, 200_000_801)).await });
    let b = tokio::spawn(async move { send_file(&own_fixture("h265_aac_16k.rtp"), &camera(rtp, 0x0BEB_C801)).await });
    let (sa, sb) = (a.await.unwrap().unwrap().packets, b.await.unwrap().unwrap().packets);
    let unknown = "rtp/0BEBC801";
    let list = wait_streams(api, Duration::from_secs(5), |l| {
        l.iter().any(|s| s["name"] == announced && s["packets"].as_u64() == Some(sa))
            && l.iter().any(|s| s["name"] == unknown && s["packets"].as_u64() == Some(sb))
    })
    .await;
    for (name, packets) in [(announced, sa), (unknown, sb)] {
        let s = list.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("{name} got no stream: {list:?}"));
        assert_eq!(s["packets"].as_u64(), Some(packets), "{name}: {s}");
        assert_eq!(s["lost"], 0, "{name}: {s}");
    }
    assert_eq!(live_from(&list, "127.0.0.2"), 8, "squatter streams");

    // The squatter goes quiet: a new camera from the same address evicts an idle squatter stream.
    stop.store(true, Ordering::Relaxed);
    let squatted = squatter.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    for mut p in read_rtp_dump(&own_fixture("h264_g711a_8k.rtp")).into_iter().take(10) {
        p[8..12].copy_from_slice(&0x0BEB_C802u32.to_be_bytes());
        sock.send_to(&p, rtp).await.unwrap();
    }
    let list = wait_streams(api, Duration::from_secs(5), |l| l.iter().any(|s| s["name"] == "rtp/0BEBC802")).await;
    assert!(list.iter().any(|s| s["name"] == "rtp/0BEBC802"), "a new camera after the squatter went idle: {list:?}");
    let (_, c) = http_get(api, "/api/v1/rtp").await;
    assert!(c["unknown_evicted"].as_u64() >= Some(1), "{c}");
    println!("squatter sent {squatted} datagrams; {c}");
    gw.stop().await;
}
