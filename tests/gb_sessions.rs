//! GB sessions against the crate's camera simulator over loopback: a session ends with its media
//! or when its device restarts, channels follow their device offline, and every graceful stop
//! sends BYE (issue 8, bugs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{http_get, own_fixture, start, test_config};
use gbgate::sim::camera::{self, SimOptions, SimStats};
use tokio_util::sync::CancellationToken;

const DEV: &str = "34020000001320000001";
const PASSWORD: &str = "pw-sessions";

fn sim_options(sip: std::net::SocketAddr) -> SimOptions {
    let mut o = SimOptions::new(sip, own_fixture("h264_g711a_8k.rtp"));
    o.password = PASSWORD.into();
    // Stopping the simulator is a crash: no BYE, no unregister.
    o.unregister_on_stop = false;
    o
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn spawn_camera(o: SimOptions, gb: &gbgate::gb::Gb) -> (CancellationToken, Arc<SimStats>) {
    let stop = CancellationToken::new();
    let stats = camera::spawn(o, stop.clone()).await.unwrap();
    let channel = camera::channel_id(DEV, 0);
    wait_for("registered with its catalog", Duration::from_secs(5), || {
        SimStats::get(&stats.registered) > 0
            && gb.device(DEV).is_some_and(|d| d.online && d.channels.iter().any(|c| c.device_id == channel))
    })
    .await;
    (stop, stats)
}

async fn ended_reasons(api: std::net::SocketAddr) -> Vec<String> {
    let (_, body) = http_get(api, "/api/v1/gb/sessions").await;
    body["ended"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap_or("").to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_that_reboots_mid_play_plays_again_at_once() {
    let mut cfg = test_config();
    cfg.sip.password = Some(PASSWORD.into());
    let gw = start(cfg).await;
    let gb = gw.gb.clone().unwrap();
    let channel = camera::channel_id(DEV, 0);
    let (stop, _) = spawn_camera(sim_options(gw.sip_addr.unwrap()), &gb).await;
    let first = gb.play(None, &channel, None).await.unwrap();
    gb.wait_keyframe(&first.stream).await.unwrap();
    // Power cut mid-play; it boots and registers again (new Call-ID, new port).
    stop.cancel();
    let rebooted = Instant::now();
    let (stop, stats) = spawn_camera(sim_options(gw.sip_addr.unwrap()), &gb).await;
    let again = gb.play(None, &channel, None).await.expect("play after the reboot");
    assert!(!again.existing, "a fresh INVITE, not the dead session");
    gb.wait_keyframe(&again.stream).await.expect("media from the rebooted camera");
    assert_eq!(SimStats::get(&stats.invites), 1);
    println!("playing again {:?} after the reboot", rebooted.elapsed());
    assert!(rebooted.elapsed() < Duration::from_secs(4));
    let reasons = ended_reasons(gw.api_addr).await;
    assert!(reasons.iter().any(|r| r.contains("registered again")), "{reasons:?}");
    stop.cancel();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_with_its_stream_and_says_why() {
    let mut cfg = test_config();
    cfg.sip.password = Some(PASSWORD.into());
    cfg.rtp.timeout = gbgate::config::HumanDuration(Duration::from_secs(1));
    let gw = start(cfg).await;
    let gb = gw.gb.clone().unwrap();
    let channel = camera::channel_id(DEV, 0);
    let (stop, _) = spawn_camera(sim_options(gw.sip_addr.unwrap()), &gb).await;
    let info = gb.play(None, &channel, None).await.unwrap();
    gb.wait_keyframe(&info.stream).await.unwrap();
    stop.cancel();
    // The RTP timeout (1 s) ends the stream; the session follows (not after idle_stop, 60 s).
    let t0 = Instant::now();
    loop {
        if gb.sessions().await.is_empty() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(4), "the session outlived its stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reasons = ended_reasons(gw.api_addr).await;
    assert!(reasons.iter().any(|r| r.contains("media stopped")), "{reasons:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_channels_go_offline_with_their_device() {
    let mut cfg = test_config();
    cfg.sip.password = Some(PASSWORD.into());
    cfg.gb.keepalive_interval = gbgate::config::HumanDuration(Duration::from_millis(300));
    cfg.gb.keepalive_misses = 2;
    let gw = start(cfg).await;
    let gb = gw.gb.clone().unwrap();
    let mut o = sim_options(gw.sip_addr.unwrap());
    o.keepalive = Duration::from_millis(100);
    o.channels = 2;
    let (stop, _) = spawn_camera(o, &gb).await;
    let (_, body) = http_get(gw.api_addr, &format!("/api/v1/devices/{DEV}")).await;
    assert!(body["channels"].as_array().unwrap().iter().all(|c| c["online"] == true), "{body}");
    stop.cancel();
    wait_for("offline", Duration::from_secs(3), || gb.device(DEV).is_some_and(|d| !d.online)).await;
    let (_, body) = http_get(gw.api_addr, &format!("/api/v1/devices/{DEV}")).await;
    let channels = body["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 2);
    assert!(channels.iter().all(|c| c["online"] == false), "{body}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_graceful_stop_sends_bye_to_every_session() {
    // The lost BYE was a race between the shutdown signal and the sockets closing: repeat.
    for round in 0..8 {
        let mut cfg = test_config();
        cfg.sip.password = Some(PASSWORD.into());
        let gw = start(cfg).await;
        let gb = gw.gb.clone().unwrap();
        let mut o = sim_options(gw.sip_addr.unwrap());
        o.channels = 2;
        let (stop, stats) = spawn_camera(o, &gb).await;
        for i in 0..2 {
            let info = gb.play(None, &camera::channel_id(DEV, i), None).await.unwrap();
            gb.wait_keyframe(&info.stream).await.unwrap();
        }
        gw.stop().await;
        wait_for(&format!("round {round}: two BYEs"), Duration::from_secs(2), || {
            SimStats::get(&stats.byes_received) == 2
        })
        .await;
        stop.cancel();
    }
}

/// Reads one SIP message from a TCP stream (Content-Length framing), keeping what follows.
fn read_sip(t: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> Option<gbgate::proto::sip::rsip::SipMessage> {
    use std::io::Read;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let msg: Vec<u8> = buf.drain(..end + 4 + len).collect();
                return gbgate::proto::sip::parse(&msg).ok();
            }
        }
        let mut chunk = [0u8; 4096];
        match t.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_writes_the_bye_to_a_device_on_sip_over_tcp() {
    // The connection used to close on the same signal that made the core send its BYE: repeat.
    for round in 0..8 {
        stop_with_a_tcp_session(round).await;
    }
}

async fn stop_with_a_tcp_session(round: usize) {
    use gbgate::proto::sip::{self, rsip::SipMessage, sdp};
    use std::io::Write;
    let mut cfg = test_config();
    cfg.gb.query_on_register = false;
    let gw = start(cfg).await;
    let gb = gw.gb.clone().unwrap();
    let sip_addr = gw.sip_addr.unwrap();
    let mut t = std::net::TcpStream::connect(sip_addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let local = t.local_addr().unwrap();
    let mut buf = Vec::new();
    let register = format!(
        "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\nVia: SIP/2.0/TCP {local};rport;branch=z9hG4bKt1\r\n\
From: <sip:{DEV}@3402000000>;tag=7\r\nTo: <sip:{DEV}@3402000000>\r\nCall-ID: tcp-boot\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:{DEV}@{local};transport=tcp>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
    );
    let registered = tokio::task::block_in_place(|| {
        t.write_all(register.as_bytes()).unwrap();
        read_sip(&mut t, &mut buf)
    });
    assert!(matches!(registered, Some(SipMessage::Response(r)) if r.status_code.code() == 200));
    let channel = camera::channel_id(DEV, 0);
    let play = {
        let (gb, channel) = (gb.clone(), channel.clone());
        tokio::spawn(async move { gb.play(Some(DEV.into()), &channel, None).await })
    };
    // Answer the INVITE over the same connection.
    tokio::task::block_in_place(|| {
        let Some(SipMessage::Request(invite)) = read_sip(&mut t, &mut buf) else { panic!("an INVITE over TCP") };
        let offer = sdp::parse(&invite.body).unwrap();
        let answer = sdp::answer(&sdp::Answer {
            device_id: &channel,
            ip: "127.0.0.1".parse().unwrap(),
            port: 15_060,
            kind: sdp::SessionKind::Play,
            tcp: false,
            setup: None,
            ssrc: offer.ssrc.unwrap(),
            time: (0, 0),
        });
        let ok = sip::response(&invite, 200, "dev", local, vec![], answer.into_bytes());
        t.write_all(&ok.to_bytes()).unwrap();
    });
    play.await.unwrap().expect("established");
    gw.stop().await;
    // The ACK, then the BYE: written before the connection closed.
    let methods = tokio::task::block_in_place(|| {
        let mut methods = Vec::new();
        while let Some(m) = read_sip(&mut t, &mut buf) {
            if let SipMessage::Request(r) = m {
                methods.push(r.method.to_string());
            }
        }
        methods
    });
    assert!(methods.iter().any(|m| m == "BYE"), "round {round}: {methods:?}");
}
