//! Slow RTP/TCP clients (issue 8, hole 12): the first RFC 4571 frame, and every later frame, must
//! complete within `tcp_frame_timeout` however the bytes trickle in (a deadline per frame, not per
//! read); one address holds at most `max_tcp_per_source` connections. Raw TCP clients.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::config::HumanDuration;
use gbgate::sim::send::{send_file, SendOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FRAME_TIMEOUT: Duration = Duration::from_secs(2);

fn config() -> gbgate::config::Config {
    let mut cfg = test_config();
    cfg.rtp.tcp_frame_timeout = HumanDuration(FRAME_TIMEOUT);
    cfg.rtp.max_tcp_per_source = 3;
    cfg
}

async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

/// Writes `bytes` one per 500 ms until the server closes the connection; returns how long that
/// took (None: still open after `limit`).
async fn drip(s: &mut TcpStream, bytes: &[u8], limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 16];
    for b in bytes.iter().cycle() {
        if t.elapsed() > limit {
            return None;
        }
        if s.write_all(&[*b]).await.is_err() {
            return Some(t.elapsed());
        }
        // A closed connection reads 0 (or an error) at once; an open one times out.
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            return Some(t.elapsed());
        }
    }
    None
}

fn frame(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut pkt = Vec::new();
    gbgate::proto::rtp::write_packet(&mut pkt, 96, false, seq, 0, ssrc, &[0u8; 1000]);
    let mut out = (pkt.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&pkt);
    out
}

async fn rtp_counters(api: SocketAddr) -> Value {
    http_get(api, "/api/v1/rtp").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_frame_dripped_a_byte_at_a_time_is_cut_at_the_frame_deadline() {
    let gw = start(config()).await;
    let mut s = TcpStream::connect(gw.rtp_addr).await.unwrap();
    let took = drip(&mut s, &frame(1, 0x0BEB_CA01), Duration::from_secs(12)).await;
    let took = took.expect("a client dripping one byte per 500 ms is still connected after 12 s");
    assert!(took < FRAME_TIMEOUT + Duration::from_secs(2), "closed after {took:?}");
    assert_eq!(rtp_counters(gw.api_addr).await["tcp_slow_closed"], 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_frame_dripped_a_byte_at_a_time_ends_the_stream() {
    let gw = start(config()).await;
    let ssrc = 0x0BEB_CA02;
    let mut s = TcpStream::connect(gw.rtp_addr).await.unwrap();
    // Real first frames (the stream starts), then the next one a byte at a time.
    s.write_all(&[frame(1, ssrc), frame(2, ssrc)].concat()).await.unwrap();
    let name = format!("rtp/{ssrc:08X}");
    let t = Instant::now();
    while gw.hub.get(&name).is_none() {
        assert!(t.elapsed() < Duration::from_secs(5), "stream {name} did not appear");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = drip(&mut s, &frame(3, ssrc), Duration::from_secs(12)).await;
    let took = took.expect("a stream whose next frame drips one byte per 500 ms still runs after 12 s");
    assert!(took < FRAME_TIMEOUT + Duration::from_secs(2), "closed after {took:?}");
    let t = Instant::now();
    while gw.hub.get(&name).is_some() {
        assert!(t.elapsed() < Duration::from_secs(2), "the stream ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rtp_counters(gw.api_addr).await["tcp_slow_closed"], 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_only_so_many_connections_and_others_still_get_in() {
    let gw = start(config()).await;
    let rtp = gw.rtp_addr;
    // Three idle connections from 127.0.0.2 are allowed (each waits for its first frame) ...
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.2", rtp).await);
    }
    // ... a fourth is closed at once.
    let mut fourth = connect_from("127.0.0.2", rtp).await;
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_millis(1500), fourth.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0) | Err(_))), "the fourth connection from one address is closed: {r:?}");
    assert!(rtp_counters(gw.api_addr).await["tcp_refused"].as_u64() >= Some(1));
    // A camera on another address streams meanwhile.
    let opts = SendOptions {
        to: rtp,
        tcp: true,
        count: 1,
        ssrc_base: Some(0x0BEB_CA03),
        loops: 1,
        duration: None,
        flood: false,
        linger: Duration::from_secs(1),
    };
    let cam = tokio::spawn(async move { send_file(&own_fixture("h264_g711a_8k.rtp"), &opts).await.unwrap() });
    let list = wait_streams(gw.api_addr, Duration::from_secs(5), |l| {
        l.iter().any(|s| s["name"] == "rtp/0BEBCA03" && s["video"]["frames"] == 50)
    })
    .await;
    assert!(list.iter().any(|s| s["name"] == "rtp/0BEBCA03" && s["video"]["frames"] == 50), "{list:?}");
    cam.await.unwrap();
    drop(held);
    gw.stop().await;
}
