//! What probation holds is bounded in bytes (issue 8, hole 7): 1,024 unknown SSRCs, one small
//! packet each, every one sent between large junk datagrams. When held packets were slices of the
//! shared 256 KiB receive buffers, each pinned its own buffer (1,024 x 256 KiB); now each datagram
//! owns its bytes and probation holds about 100 KiB.
mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_packets_on_probation_do_not_pin_receive_buffers() {
    let gw = start(test_config()).await;
    let (rtp, api) = (gw.rtp_addr, gw.api_addr);
    let sock = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let junk = vec![0u8; 60_000]; // version 0: not RTP, dropped and counted
    let before = rss_kib(std::process::id());
    let groups = 1024u32;
    let mut pkt = Vec::new();
    for i in 0..groups {
        pkt.clear();
        gbgate::proto::rtp::write_packet(&mut pkt, 96, false, 1, 0, 0x7000_0000 + i, &[0u8; 100]);
        sock.send_to(&pkt, rtp).await.unwrap();
        for _ in 0..3 {
            sock.send_to(&junk, rtp).await.unwrap();
        }
        if i % 8 == 7 {
            // Let the gateway keep up: a datagram the kernel drops proves nothing.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // Wait until the gateway has read what arrived.
    let mut last = 0;
    let c = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, c) = http_get(api, "/api/v1/rtp").await;
        let n = c["datagrams"].as_u64().unwrap_or(0);
        if n == last {
            break c;
        }
        last = n;
    };
    let after = rss_kib(std::process::id());
    let grew = after.saturating_sub(before);
    println!(
        "{} datagrams read, {} junk; RSS {} -> {} MiB",
        c["datagrams"],
        c["bad_packets"],
        before / 1024,
        after / 1024
    );
    // Most of the attack arrived (else the test proves nothing) ...
    assert!(c["datagrams"].as_u64() >= Some(u64::from(groups) * 4 * 8 / 10), "{c}");
    // ... and it created nothing and pinned almost nothing (before: ~180 MiB resident).
    assert!(streams(api).await.is_empty());
    assert!(grew < 48 << 10, "RSS grew by {grew} KiB");

    // Then 1,024 more SSRCs whose 100-byte payload sits behind a 60 KB header extension: the
    // budgets count payloads, so what is held must be the payload, not the datagram (60 MB).
    let before = rss_kib(std::process::id());
    for i in 0..groups {
        let mut pkt = vec![0x90, 96, 0, 1, 0, 0, 0, 0];
        pkt.extend_from_slice(&(0x7100_0000 + i).to_be_bytes());
        let words: u16 = 15_000;
        pkt.extend_from_slice(&[0xBE, 0xDE]);
        pkt.extend_from_slice(&words.to_be_bytes());
        pkt.resize(pkt.len() + usize::from(words) * 4, 0);
        pkt.extend_from_slice(&[0u8; 100]);
        sock.send_to(&pkt, rtp).await.unwrap();
        if i % 16 == 15 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut last = 0;
    let c = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, c) = http_get(api, "/api/v1/rtp").await;
        let n = c["datagrams"].as_u64().unwrap_or(0);
        if n == last {
            break c;
        }
        last = n;
    };
    let grew = rss_kib(std::process::id()).saturating_sub(before);
    println!("{} datagrams read; RSS grew by {} KiB", c["datagrams"], grew);
    assert!(c["datagrams"].as_u64() >= Some(u64::from(groups) * 4 + u64::from(groups) * 8 / 10), "{c}");
    assert!(grew < 24 << 10, "RSS grew by {grew} KiB");
    gw.stop().await;
}
