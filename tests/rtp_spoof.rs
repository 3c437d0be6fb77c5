//! A UDP stream belongs to its source address: datagrams carrying its SSRC from elsewhere are
//! dropped and counted (issue 8, hole 10), and two sessions that send the same SSRC are told apart
//! by source address (the Hikvision two-channel clash). Real sockets, a real RTSP player (ffprobe).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::config::HumanDuration;
use gbgate::sim::send::{send_file, SendOptions};
use serde_json::Value;

fn camera(to: SocketAddr, ssrc: u32, loops: u32) -> SendOptions {
    SendOptions {
        to,
        tcp: false,
        count: 1,
        ssrc_base: Some(ssrc),
        loops,
        duration: None,
        flood: false,
        linger: Duration::ZERO,
    }
}

/// Video frames ffprobe decodes from the whole play of `url` (RTSP over TCP).
async fn ffprobe_video_frames(url: &str) -> usize {
    let args = [
        "-v",
        "error",
        "-rtsp_transport",
        "tcp",
        "-select_streams",
        "v:0",
        "-show_entries",
        "frame=pts",
        "-of",
        "json",
        url,
    ];
    let (ok, out, err) = run_program("ffprobe", &args, Duration::from_secs(60)).await;
    assert!(ok, "ffprobe {url}: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["frames"].as_array().map_or(0, |f| f.len())
}

async fn rtp_counters(api: SocketAddr) -> Value {
    http_get(api, "/api/v1/rtp").await.1
}

async fn wait_stream(api: SocketAddr, name: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let list = wait_streams(api, limit, |l| l.iter().any(|s| s["name"] == name && done(s))).await;
    list.into_iter().find(|s| s["name"] == name).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_ssrc_from_another_port_is_dropped_and_the_binding_moves_only_after_quiet() {
    let mut cfg = test_config();
    cfg.rtp.timeout = HumanDuration(Duration::from_secs(4));
    let gw = start(cfg).await;
    let (rtp, api, rtsp) = (gw.rtp_addr, gw.api_addr, gw.rtsp_addr.unwrap());
    let ssrc = 0x0BEB_C501;
    let name = format!("rtp/{ssrc:08X}");
    let fixture = own_fixture("h264_g711a_8k.rtp");
    // The camera: 4 passes of 50 frames (8 s) from its own port.
    let loops = 4;
    let cam = tokio::spawn({
        let fixture = fixture.clone();
        async move { send_file(&fixture, &camera(rtp, ssrc, loops)).await.unwrap() }
    });
    let t = Instant::now();
    while gw.hub.get(&name).is_none() {
        assert!(t.elapsed() < Duration::from_secs(5), "stream {name} did not appear");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let url = format!("rtsp://{rtsp}/{name}");
    let player = tokio::spawn(async move { ffprobe_video_frames(&url).await });
    // The attacker: 6,000 datagrams with the camera's SSRC from another port, random sequence
    // numbers and junk payload, over about 4 s while the camera streams.
    let spoofed = 6000u32;
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut pkt = Vec::new();
    for i in 0..spoofed {
        pkt.clear();
        let seq = (i.wrapping_mul(7919) ^ 0x5a5a) as u16;
        gbgate::proto::rtp::write_packet(
            &mut pkt,
            96,
            i % 3 == 0,
            seq,
            i.wrapping_mul(3600),
            ssrc,
            &[0, 0, 1, 0xBA, 0x44],
        );
        pkt.extend(std::iter::repeat_n((i % 251) as u8, 900));
        attacker.send_to(&pkt, rtp).await.unwrap();
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    let report = cam.await.unwrap();
    let sent = report.packets;
    let s = wait_stream(api, &name, Duration::from_secs(5), |s| {
        s["packets"].as_u64() == Some(sent) && s["video"]["frames"] == 50 * loops
    })
    .await;
    assert_eq!(s["packets"].as_u64(), Some(sent), "every camera packet and nothing else: {s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["seq_resets"], 0, "{s}");
    assert_eq!(s["duplicates"], 0, "{s}");
    assert_eq!(s["video"]["frames"], 50 * loops, "{s}");
    let foreign = s["foreign_packets"].as_u64().unwrap();
    // Loopback may lose a few datagrams under load; none of those that arrived reached the stream.
    assert!(foreign >= u64::from(spoofed) * 9 / 10, "spoofed datagrams counted on the stream: {s}");
    let c = rtp_counters(api).await;
    assert_eq!(c["foreign_ssrc_packets"].as_u64(), Some(foreign), "{c}");
    assert_eq!(c["ssrc_rebinds"], 0, "never moved while the camera was sending: {c}");

    // The camera goes quiet for longer than `rebind_after` (2 s) and comes back from a new port (a
    // new address), its sequence numbers and timestamps running on: the stream follows it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let moved = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dump = read_rtp_dump(&fixture);
    for mut p in dump.clone() {
        let seq = u16::from_be_bytes([p[2], p[3]]).wrapping_add(sent as u16);
        let ts = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&(ts.wrapping_add(loops * 50 * 3600)).to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        moved.send_to(&p, rtp).await.unwrap();
        // Real time: one frame per 40 ms.
        if p[1] & 0x80 != 0 {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    let target = sent + dump.len() as u64;
    let s = wait_stream(api, &name, Duration::from_secs(3), |s| s["packets"].as_u64() == Some(target)).await;
    assert_eq!(s["packets"].as_u64(), Some(target), "the moved camera feeds the same stream: {s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(rtp_counters(api).await["ssrc_rebinds"], 1);

    // The player saw every frame of both runs (it joined at the first keyframe).
    let frames = tokio::time::timeout(Duration::from_secs(30), player).await.expect("player ends").unwrap();
    println!("player decoded {frames} video frames; {foreign} spoofed datagrams dropped");
    assert!(frames >= 50 * loops as usize + 25, "player decoded {frames} frames");
    gw.stop().await;
}

/// Two channels of one device answer with the same SSRC (`y=`, Hikvision) and send it over UDP
/// from two ports: each channel gets its own stream, and the clash is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_channels_answering_the_same_ssrc_get_their_own_streams() {
    use gbgate::sim::camera::{self, Quirk, SimOptions};
    let mut cfg = test_config();
    cfg.sip.password = Some("12345678".into());
    let gw = start(cfg).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let id = "34020000001320000901";
    let mut o = SimOptions::new(gw.sip_addr.unwrap(), own_fixture("h264_g711a_8k.rtp"));
    o.password = "12345678".into();
    o.first_id = id.into();
    o.channels = 2;
    o.quirk = Quirk::Hikvision;
    camera::spawn(o, stop.clone()).await.unwrap();
    let gb = gw.gb.clone().unwrap();
    let t = Instant::now();
    while !gb.devices().iter().any(|d| d.online && d.channels.len() == 2) {
        assert!(t.elapsed() < Duration::from_secs(10), "device registered with 2 channels");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let api = gw.api_addr;
    let mut names = Vec::new();
    for index in 0..2 {
        let channel = camera::channel_id(id, index);
        let info = gb.play(None, &channel, None).await.unwrap();
        let s = wait_stream(api, &info.stream, Duration::from_secs(10), |s| s["video"]["frames"].as_u64() >= Some(50))
            .await;
        assert!(s["video"]["frames"].as_u64() >= Some(50), "{} plays: {s}", info.stream);
        names.push(info.stream);
    }
    // Both keep flowing, each with its own clean sequence.
    for name in &names {
        let s = wait_stream(api, name, Duration::from_secs(10), |s| s["video"]["frames"].as_u64() >= Some(100)).await;
        println!("{name}: {s}");
        assert!(s["video"]["frames"].as_u64() >= Some(100), "{name}: {s}");
        for field in ["lost", "duplicates", "seq_resets", "stray"] {
            assert_eq!(s[field], 0, "{name} {field}: {s}");
        }
    }
    let a = gw.hub.get(&names[0]).unwrap().source.clone();
    let b = gw.hub.get(&names[1]).unwrap().source.clone();
    assert_eq!(a.ssrc, b.ssrc, "the device answered the same SSRC for both channels");
    assert_ne!(a.peer, b.peer, "told apart by source port");
    assert_eq!(rtp_counters(api).await["ssrc_clashes"], 1);
    stop.cancel();
    gw.stop().await;
}

/// A GB session's UDP media may move port after a quiet spell (a new media socket), never to
/// another host: its SSRC stays bound to the IP the device signalled from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_gb_stream_is_not_rebound_to_another_host() {
    let mut cfg = test_config();
    cfg.rtp.timeout = HumanDuration(Duration::from_secs(8));
    let gw = start(cfg).await;
    let (rtp, api) = (gw.rtp_addr, gw.api_addr);
    let ssrc = 200_000_901;
    let name = "gb/34020000001310000901";
    gw.rtp.announce(ssrc, name.into());
    gw.rtp.expect_source("127.0.0.1".parse().unwrap(), false, name.into());
    let dump = read_rtp_dump(&own_fixture("h264_g711a_8k.rtp"));
    // Sends the capture's packets `from`, sequence numbers shifted by `pass` captures.
    let send = |from: &'static str, pass: u16, count: usize| {
        let mut dump = dump.clone();
        dump.truncate(count);
        async move {
            let sock = tokio::net::UdpSocket::bind(format!("{from}:0")).await.unwrap();
            let n = dump.len() as u16;
            for mut p in dump {
                let seq = u16::from_be_bytes([p[2], p[3]]).wrapping_add(n.wrapping_mul(pass));
                p[2..4].copy_from_slice(&seq.to_be_bytes());
                p[8..12].copy_from_slice(&ssrc.to_be_bytes());
                sock.send_to(&p, rtp).await.unwrap();
                if p[1] & 0x80 != 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    };
    let all = dump.len();
    send("127.0.0.1", 0, all).await;
    let n = all as u64;
    let s = wait_stream(api, name, Duration::from_secs(5), |s| s["packets"].as_u64() == Some(n)).await;
    assert_eq!(s["packets"].as_u64(), Some(n), "{s}");
    // Quiet for longer than rebind_after; then another host sends the session's SSRC.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    send("127.0.0.2", 1, 20).await;
    // The device comes back from a new port of its own address: that one is followed.
    send("127.0.0.1", 2, all).await;
    let s = wait_stream(api, name, Duration::from_secs(5), |s| s["packets"].as_u64() == Some(2 * n)).await;
    assert_eq!(s["packets"].as_u64(), Some(2 * n), "only the device's packets: {s}");
    assert!((16..=20).contains(&s["foreign_packets"].as_u64().unwrap()), "the other host's 20 dropped: {s}");
    let c = rtp_counters(api).await;
    assert_eq!(c["ssrc_rebinds"], 1, "{c}");
    gw.stop().await;
}

/// The same SSRC answered for two sessions of one address (Hikvision channels), the second
/// session's media arriving first: the answered ports (SDP `m=`, `RtpShared::expect_port`) tell
/// them apart, so each stream gets its own device's packets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_ports_tell_apart_two_sessions_with_one_ssrc_whichever_sends_first() {
    let gw = start(test_config()).await;
    let (rtp, api) = (gw.rtp_addr, gw.api_addr);
    let ssrc = 600_901;
    let (a, b) = ("gb/34020000001310000911", "gb/34020000001310000912");
    let sock_a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sock_b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // What the GB core does: both INVITEs expect media from the device; the answers carry the
    // same y= (announced for the first session only) and each channel's m= port.
    gw.rtp.announce(ssrc, a.into());
    for (name, sock) in [(a, &sock_a), (b, &sock_b)] {
        gw.rtp.expect_source("127.0.0.1".parse().unwrap(), false, name.into());
        gw.rtp.expect_port(name, sock.local_addr().unwrap().port());
    }
    let dump = read_rtp_dump(&own_fixture("h264_g711a_8k.rtp"));
    for sock in [&sock_b, &sock_a] {
        for mut p in dump.clone() {
            p[8..12].copy_from_slice(&ssrc.to_be_bytes());
            sock.send_to(&p, rtp).await.unwrap();
            if p[1] & 0x80 != 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let n = dump.len() as u64;
    let list = wait_streams(api, Duration::from_secs(5), |l| {
        l.len() == 2 && l.iter().all(|s| s["packets"].as_u64() == Some(n))
    })
    .await;
    for (name, sock) in [(a, &sock_a), (b, &sock_b)] {
        let s = list.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("{name}: {list:?}"));
        assert_eq!(s["source"]["peer"], sock.local_addr().unwrap().to_string(), "{name}: {s}");
        assert_eq!(s["packets"].as_u64(), Some(n), "{name}: {s}");
        assert_eq!(s["duplicates"], 0, "{name}: {s}");
    }
    assert_eq!(rtp_counters(api).await["ssrc_clashes"], 1);
    gw.stop().await;
}
