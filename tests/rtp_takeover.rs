//! No stream take-over over RTP (issue 8, hole 2): an RTP-over-TCP connection from another address
//! that sends a live UDP camera's SSRC is refused and the camera keeps its stream; media for a GB
//! session (announced SSRC) is accepted only from the address its device signalled from.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::sim::send::{send_file, SendOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn camera(to: SocketAddr, tcp: bool, ssrc: u32, loops: u32) -> SendOptions {
    SendOptions {
        to,
        tcp,
        count: 1,
        ssrc_base: Some(ssrc),
        loops,
        duration: None,
        flood: false,
        linger: Duration::from_secs(3),
    }
}

/// A TCP connection to the RTP port from `from` (another host: 127.0.0.2).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

/// Sends the fixture's packets with `ssrc` as RFC 4571 frames, then waits for the server to close
/// the connection; true when it did (within 5 s).
async fn intrude(mut s: TcpStream, ssrc: u32) -> bool {
    let mut out = Vec::new();
    for mut p in read_rtp_dump(&own_fixture("h264_g711a_8k.rtp")) {
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(&p);
    }
    // The server may close while we write: that is the refusal too.
    let _ = s.write_all(&out).await;
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

async fn rtp_counters(api: SocketAddr) -> Value {
    http_get(api, "/api/v1/rtp").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_over_tcp_from_another_address_cannot_take_a_live_udp_cameras_stream() {
    let gw = start(test_config()).await;
    let (rtp, api) = (gw.rtp_addr, gw.api_addr);
    let ssrc = 0x0BEB_C601;
    let name = format!("rtp/{ssrc:08X}");
    let cam = tokio::spawn(async move {
        send_file(&own_fixture("h264_g711a_8k.rtp"), &camera(rtp, false, ssrc, 3)).await.unwrap()
    });
    let t = Instant::now();
    while gw.hub.get(&name).is_none() {
        assert!(t.elapsed() < Duration::from_secs(5), "stream {name} did not appear");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(intrude(connect_from("127.0.0.2", rtp).await, ssrc).await, "the intruder's connection is closed");
    let sent = cam.await.unwrap().packets;
    let list = wait_streams(api, Duration::from_secs(5), |l| {
        l.iter()
            .any(|s| s["name"] == name.as_str() && s["packets"].as_u64() == Some(sent) && s["video"]["frames"] == 150)
    })
    .await;
    let s = list.iter().find(|s| s["name"] == name.as_str()).expect("the camera's stream is still there");
    assert_eq!(s["source"]["transport"], "udp", "{s}");
    assert_eq!(s["source"]["peer"].as_str().unwrap().split(':').next(), Some("127.0.0.1"), "{s}");
    assert_eq!(s["packets"].as_u64(), Some(sent), "{s}");
    assert_eq!(s["video"]["frames"], 150, "the camera lost no frame: {s}");
    assert_eq!(s["lost"], 0, "{s}");
    let c = rtp_counters(api).await;
    assert_eq!(c["takeovers_refused"], 1, "{c}");
    assert_eq!(gw.hub.takeovers_refused(), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gb_sessions_ssrc_is_bound_to_the_address_its_device_signalled_from() {
    let gw = start(test_config()).await;
    let (rtp, api) = (gw.rtp_addr, gw.api_addr);
    let ssrc = 200_000_701;
    let name = "gb/34020000001310000701".to_string();
    // What the GB core does before an INVITE to a device registered from 127.0.0.1 (TCP passive).
    gw.rtp.announce(ssrc, name.clone());
    gw.rtp.expect_source("127.0.0.1".parse().unwrap(), true, name.clone());
    // Someone else sends the session's SSRC first, over TCP and over UDP, from 127.0.0.2.
    assert!(intrude(connect_from("127.0.0.2", rtp).await, ssrc).await, "the intruder's connection is closed");
    let udp = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    for p in read_rtp_dump(&own_fixture("h264_g711a_8k.rtp")).iter_mut().take(20) {
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        udp.send_to(p, rtp).await.unwrap();
    }
    // The datagrams are counted as the ingest task gets to them: wait for them (bounded).
    let c = wait_json(api, "/api/v1/rtp", Duration::from_secs(5), |c| {
        c["foreign_source_refused"].as_u64().unwrap_or(0) >= 15
    })
    .await;
    assert!(gw.hub.get(&name).is_none(), "no stream from the intruder");
    // The device's own media then gets the stream.
    let dev = tokio::spawn(async move {
        send_file(&own_fixture("h264_g711a_8k.rtp"), &camera(rtp, true, ssrc, 1)).await.unwrap()
    });
    let list = wait_streams(api, Duration::from_secs(8), |l| {
        l.iter().any(|s| s["name"] == name.as_str() && s["video"]["frames"] == 50)
    })
    .await;
    let s = list.iter().find(|s| s["name"] == name.as_str()).expect("the device's stream");
    assert_eq!(s["source"]["transport"], "tcp", "{s}");
    assert_eq!(s["video"]["frames"], 50, "{s}");
    assert_eq!(s["packets"].as_u64(), Some(dev.await.unwrap().packets), "{s}");
    // One TCP connection plus (at least most of) 20 datagrams refused.
    let refused = c["foreign_source_refused"].as_u64().unwrap();
    assert!((15..=21).contains(&refused), "{c}");
    gw.stop().await;
}
