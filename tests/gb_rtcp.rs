//! RTCP receiver reports to GB cameras (D91): the simulated camera (its own sockets, its own RTCP
//! parser) counts the reports it receives over UDP (at its answered `a=rtcp` port) and inside the
//! TCP stream (`a=rtcp-mux`), and answers each with a sender report the gateway counts.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{http_get, own_fixture, start, test_config, wait_devices_with_catalogs, wait_for};
use gbgate::config::{HumanDuration, RtcpMode};
use gbgate::proto::sip::sdp::MediaTransport;
use gbgate::sim::camera::{self, SimOptions, SimStats};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "12345678";

fn config(mode: RtcpMode) -> gbgate::config::Config {
    let mut cfg = test_config();
    cfg.sip.password = Some(PASSWORD.into());
    cfg.rtp.rtcp = mode;
    cfg.rtp.rtcp_interval = HumanDuration(Duration::from_secs(1));
    cfg
}

async fn cameras(
    gw: &gbgate::server::Gateway,
    cases: &[(&str, MediaTransport)],
    stop: &CancellationToken,
) -> Vec<Arc<SimStats>> {
    let mut sims = Vec::new();
    for (id, _) in cases {
        let mut o = SimOptions::new(gw.sip_addr.unwrap(), own_fixture("h264_g711a_8k.rtp"));
        o.password = PASSWORD.into();
        o.first_id = id.to_string();
        sims.push(camera::spawn(o, stop.clone()).await.unwrap());
    }
    wait_devices_with_catalogs(gw, cases.len(), "cameras registered").await;
    let gb = gw.gb.clone().unwrap();
    for (id, t) in cases {
        gb.play(None, &camera::channel_id(id, 0), Some(*t)).await.unwrap_or_else(|e| panic!("play {id}: {e}"));
    }
    sims
}

async fn stream(api: std::net::SocketAddr, id: &str) -> Value {
    let (status, body) = http_get(api, &format!("/api/v1/streams/gb/{}", camera::channel_id(id, 0))).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_reports_reach_udp_and_tcp_cameras_and_their_sender_reports_are_counted() {
    let cases = [
        ("34020000001320000101", MediaTransport::Udp),
        ("34020000001320000201", MediaTransport::TcpPassive),
        ("34020000001320000301", MediaTransport::TcpActive),
    ];
    let gw = start(config(RtcpMode::Auto)).await;
    let stop = CancellationToken::new();
    let sims = cameras(&gw, &cases, &stop).await;
    // Reports every second (the first after half an interval): 3 each within a few seconds.
    let ok = wait_for(Duration::from_secs(10), || sims.iter().all(|s| SimStats::get(&s.rtcp_rr_received) >= 3)).await;
    let got: Vec<_> = sims.iter().map(|s| SimStats::get(&s.rtcp_rr_received)).collect();
    assert!(ok, "receiver reports per camera (udp, tcp passive, tcp active): {got:?}");
    println!("receiver reports received by the cameras: {got:?}");
    for (id, t) in &cases {
        let mut last = Value::Null;
        let counted = wait_for(Duration::from_secs(5), || {
            let api = gw.api_addr;
            let id = id.to_string();
            last = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async move { stream(api, &id).await })
            });
            last["rtcp"]["rr_sent"].as_u64().unwrap_or(0) >= 3 && last["rtcp"]["sr_received"].as_u64().unwrap_or(0) >= 1
        })
        .await;
        assert!(counted, "{t:?}: the stream's RTCP counters: {}", last["rtcp"]);
        assert_eq!(last["rtcp"]["rtcp_errors"], 0, "{t:?}");
    }
    // Hostile RTCP on the RTP port: a compound packet whose length lies, with the UDP stream's
    // SSRC, is an error counted on that stream; an unknown SSRC is counted as unrouted.
    let udp = stream(gw.api_addr, cases[0].0).await;
    let ssrc: u32 = udp["source"]["ssrc"].as_str().unwrap().parse().unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut junk = vec![0x80, 200, 0, 60];
    junk.extend_from_slice(&ssrc.to_be_bytes());
    junk.extend_from_slice(&[0xff; 20]);
    sock.send_to(&junk, gw.rtp_addr).await.unwrap();
    junk[4..8].copy_from_slice(&ssrc.wrapping_add(1).to_be_bytes());
    sock.send_to(&junk, gw.rtp_addr).await.unwrap();
    let api = gw.api_addr;
    let id = cases[0].0.to_string();
    let errors = wait_for(Duration::from_secs(3), || {
        let id = id.clone();
        let s = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move { stream(api, &id).await })
        });
        s["rtcp"]["rtcp_errors"] == 1
    })
    .await;
    assert!(errors, "the lying RTCP packet counted as an error");
    let (_, rtp) = http_get(gw.api_addr, "/api/v1/rtp").await;
    assert!(rtp["rtcp_unrouted"].as_u64().unwrap() >= 1, "{rtp}");
    assert!(SimStats::get(&sims[0].rtcp_rr_received) >= 3, "reports still flow");
    assert!(rtp["rtcp_rr_sent"].as_u64().unwrap() >= 9, "{rtp}");
    assert!(rtp["rtcp_sr_received"].as_u64().unwrap() >= 3, "{rtp}");
    stop.cancel();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtcp_off_sends_nothing() {
    let cases = [("34020000001320000401", MediaTransport::Udp), ("34020000001320000501", MediaTransport::TcpPassive)];
    let gw = start(config(RtcpMode::Off)).await;
    let stop = CancellationToken::new();
    let sims = cameras(&gw, &cases, &stop).await;
    assert!(
        wait_for(Duration::from_secs(10), || sims.iter().all(|s| SimStats::get(&s.media_packets) > 200)).await,
        "media flows"
    );
    // Two report intervals of media: still nothing.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got: Vec<_> = sims.iter().map(|s| SimStats::get(&s.rtcp_rr_received)).collect();
    assert_eq!(got, [0, 0]);
    let (_, rtp) = http_get(gw.api_addr, "/api/v1/rtp").await;
    assert_eq!(rtp["rtcp_rr_sent"], 0, "{rtp}");
    stop.cancel();
    gw.stop().await;
}
