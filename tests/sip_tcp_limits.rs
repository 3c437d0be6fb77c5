//! Hole 12 on SIP over TCP: idle and slow-drip connections give their slot back, one source
//! cannot take every connection, and a device on another address still gets answered.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// Reads until the server closes the connection; how long that took, or `None` within `limit`.
async fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

fn register(device: &str, local: SocketAddr) -> String {
    format!(
        "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKtcp1\r\n\
         From: <sip:{device}@3402000000>;tag=1\r\nTo: <sip:{device}@3402000000>\r\nCall-ID: tcp1@{local}\r\n\
         CSeq: 1 REGISTER\r\nContact: <sip:{device}@{local}>\r\nMax-Forwards: 70\r\nExpires: 3600\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

#[tokio::test]
async fn idle_and_dripping_sip_tcp_connections_are_closed_and_a_device_still_registers() {
    let mut cfg = test_config();
    cfg.sip.password = Some("secret".into());
    cfg.sip.tcp_request_timeout = gbgate::config::HumanDuration(Duration::from_secs(1));
    cfg.sip.max_tcp_connections = 64;
    cfg.sip.max_tcp_connections_per_source = 16;
    let gw = start(cfg).await;
    let sip = gw.sip_addr.unwrap();

    // 40 idle connections from one host: at most 16 are admitted at once, the rest wait in the
    // kernel's queue or are evicted; every one is closed within the request timeout (+ margin).
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(connect_from("127.0.0.2", sip).await);
    }
    // One drips a byte every 300 ms and never completes a message.
    let mut drip = connect_from("127.0.0.2", sip).await;
    let dripper = tokio::spawn(async move {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if drip.write_all(b"R").await.is_err() {
                return Some(start.elapsed());
            }
            let mut b = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(300), drip.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                _ => {}
            }
        }
        None
    });

    // Meanwhile a device on another address is answered over TCP (401: the digest challenge).
    let mut device = connect_from("127.0.0.1", sip).await;
    let local = device.local_addr().unwrap();
    device.write_all(register("34020000001320000042", local).as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), device.read(&mut answer)).await.unwrap().unwrap();
    assert!(answer[..n].starts_with(b"SIP/2.0 401"), "{}", String::from_utf8_lossy(&answer[..n]));

    for (i, s) in idle.iter_mut().enumerate() {
        assert!(closed_after(s, Duration::from_secs(5)).await.is_some(), "idle connection {i} was kept open");
    }
    let dripped = dripper.await.unwrap();
    assert!(dripped.is_some_and(|t| t < Duration::from_secs(4)), "the dripping connection was kept: {dripped:?}");

    // The device that completed a message is established: it is not closed by the request timeout.
    assert!(closed_after(&mut device, Duration::from_millis(1500)).await.is_none(), "a live device was closed");
    let listeners = wait_json(gw.api_addr, "/api/v1/listeners", Duration::from_secs(5), |l| {
        l["sip"]["timed_out"].as_u64().unwrap_or(0) + l["sip"]["evicted"].as_u64().unwrap_or(0) >= 41
    })
    .await;
    assert!(listeners["sip"]["open"].as_u64().unwrap() <= 2, "{listeners}");
    gw.stop().await;
}
