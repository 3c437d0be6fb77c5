//! The UDP RTP port takes datagrams in batches (`recvmmsg`, D173): many cameras' datagrams
//! arriving at once are all ingested, each under its own source address; a datagram as large as
//! UDP allows is taken whole; datagrams sent with UDP GSO (which a GRO-enabled socket would get
//! as one buffer) are each counted and ingested. Real loopback sockets; the counters are read
//! from the API.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

fn name_of(ssrc: u32) -> String {
    format!("rtp/{ssrc:08X}")
}

fn by_name(list: &[Value]) -> HashMap<String, Value> {
    list.iter().map(|s| (s["name"].as_str().unwrap_or_default().to_string(), s.clone())).collect()
}

/// An RTP packet of exactly `len` bytes (PS-looking payload, then filler).
fn rtp_packet(ssrc: u32, seq: u16, len: usize) -> Vec<u8> {
    let mut pkt = Vec::with_capacity(len);
    gbgate::proto::rtp::write_packet(&mut pkt, 96, false, seq, u32::from(seq) * 3600, ssrc, &[0, 0, 1, 0xBA]);
    pkt.resize(len, 0x5a);
    pkt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_many_cameras_is_ingested_whole_a_batch_per_receive_call() {
    const CAMERAS: u32 = 48;
    let mut cfg = test_config();
    cfg.rtp.max_streams = 100;
    // All the cameras on one host: lift the per-source budget of unannounced streams.
    cfg.rtp.max_unknown_per_source = 100;
    let gw = start(cfg).await;
    let (to, api) = (gw.rtp_addr, gw.api_addr);
    let fixture = read_rtp_dump(&own_fixture("h264_g711a_8k.rtp"));
    let exp = expected("h264_g711a_8k");
    let base = 0x0C00_0001u32;
    let (sent, bytes) = tokio::task::spawn_blocking(move || {
        let cams: Vec<UdpSocket> = (0..CAMERAS).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let (mut sent, mut bytes) = (0u64, 0u64);
        // Round robin, one datagram per camera per round, a round every 2 ms: each round lands
        // in the socket's queue at once, from 48 source addresses.
        for p in &fixture {
            for (i, cam) in cams.iter().enumerate() {
                let mut d = p.clone();
                d[8..12].copy_from_slice(&(base + i as u32).to_be_bytes());
                cam.send_to(&d, to).unwrap();
                sent += 1;
                bytes += d.len() as u64;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // A datagram as large as IPv4 UDP allows (an unknown SSRC, not published: one packet):
        // the receive slots hold it whole, as the single 64 KiB buffer did before.
        let big = rtp_packet(0x0DDD_0001, 1, 65_507);
        cams[0].send_to(&big, to).unwrap();
        (sent + 1, bytes + big.len() as u64)
    })
    .await
    .unwrap();
    let c = wait_json(api, "/api/v1/rtp", Duration::from_secs(10), |c| c["datagrams"].as_u64() == Some(sent)).await;
    assert_eq!(c["datagrams"].as_u64(), Some(sent), "every datagram counted once: {c}");
    assert_eq!(c["datagram_bytes"].as_u64(), Some(bytes), "no datagram truncated: {c}");
    assert_eq!(c["foreign_ssrc_packets"], 0, "each datagram under its own source address: {c}");
    assert_eq!(c["bad_packets"], 0, "{c}");
    let calls = c["udp_receive_calls"].as_u64().unwrap();
    // One datagram per call is the unbatched receive; a round of 48 is taken in a few calls.
    assert!(calls * 2 <= sent, "{calls} receive calls for {sent} datagrams: not batched: {c}");
    let done = |l: &[Value]| {
        let m = by_name(l);
        // Packets too: the last datagrams (audio) may be counted just after the last video frame.
        (0..CAMERAS).all(|i| {
            m.get(&name_of(base + i))
                .is_some_and(|s| s["video"]["frames"] == exp["video_frames"] && s["packets"] == exp["rtp_packets"])
        })
    };
    let list = wait_streams(api, Duration::from_secs(10), done).await;
    let streams = by_name(&list);
    for i in 0..CAMERAS {
        let name = name_of(base + i);
        let s = streams.get(&name).unwrap_or_else(|| panic!("{name} not published: {list:?}"));
        assert_eq!(s["packets"], exp["rtp_packets"], "{name}: {s}");
        assert_eq!(s["lost"], 0, "{name}: {s}");
        assert_eq!(s["duplicates"], 0, "{name}: {s}");
        assert_eq!(s["foreign_packets"], 0, "{name}: {s}");
        assert_eq!(s["video"]["frames"], exp["video_frames"], "{name}: {s}");
        assert_eq!(s["source"]["transport"], "udp", "{name}");
    }
    gw.stop().await;
}

/// Eight datagrams sent with UDP GSO (one `sendmsg`, `segment_size`): on loopback a socket with
/// UDP GRO on gets them as one buffer with a stride (quinn-udp turns GRO on for the socket its
/// state is made on); either way the gateway must count and ingest eight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_sent_with_gso_are_each_counted_and_ingested() {
    let gw = start(test_config()).await;
    let (to, api) = (gw.rtp_addr, gw.api_addr);
    let ssrc = 0x0C10_0001u32;
    const SEGMENT: usize = 1200;
    const COUNT: u16 = 8;
    let sent = tokio::task::spawn_blocking(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let state = quinn_udp::UdpSocketState::new((&sock).into()).unwrap();
        if state.max_gso_segments() < usize::from(COUNT) {
            return None;
        }
        let contents: Vec<u8> = (1..=COUNT).flat_map(|seq| rtp_packet(ssrc, seq, SEGMENT)).collect();
        let transmit = quinn_udp::Transmit {
            destination: to,
            ecn: None,
            contents: &contents,
            segment_size: Some(SEGMENT),
            src_ip: None,
        };
        for _ in 0..100 {
            match state.try_send((&sock).into(), &transmit) {
                Ok(()) => return Some(sock.local_addr().unwrap()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("GSO send: {e}"),
            }
        }
        panic!("GSO send: socket never writable");
    })
    .await
    .unwrap();
    let Some(from): Option<SocketAddr> = sent else {
        missing("datagrams_sent_with_gso_are_each_counted_and_ingested", "UDP GSO on loopback");
        return;
    };
    let n = u64::from(COUNT);
    let c = wait_json(api, "/api/v1/rtp", Duration::from_secs(5), |c| c["datagrams"].as_u64() >= Some(n)).await;
    assert_eq!(c["datagrams"].as_u64(), Some(n), "{c}");
    assert_eq!(c["datagram_bytes"].as_u64(), Some(n * SEGMENT as u64), "{c}");
    assert_eq!(c["bad_packets"], 0, "{c}");
    let name = name_of(ssrc);
    let list = wait_streams(api, Duration::from_secs(5), |l| {
        l.iter().any(|s| s["name"] == name.as_str() && s["packets"].as_u64() == Some(n))
    })
    .await;
    let s = by_name(&list).remove(&name).unwrap_or_else(|| panic!("{name} not published: {list:?}"));
    assert_eq!(s["packets"].as_u64(), Some(n), "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["source"]["peer"], from.to_string(), "{s}");
    gw.stop().await;
}
