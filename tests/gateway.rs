//! The gateway end to end: real UDP/TCP senders on 127.0.0.1 -> gbgate -> `/api/v1/streams`.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use gbgate::config::UnknownSsrc;
use gbgate::sim::send::{send_file, SendOptions};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const OWN_FIXTURES: [&str; 4] = ["h264_g711a_8k", "h265_aac_16k", "h264_g711u_16k", "h265_g711a_8k"];

fn opts(to: SocketAddr, tcp: bool, count: usize, ssrc: u32) -> SendOptions {
    SendOptions {
        to,
        tcp,
        count,
        ssrc_base: Some(ssrc),
        loops: 1,
        duration: None,
        flood: false,
        linger: Duration::from_secs(6),
    }
}

fn by_name(list: &[Value]) -> HashMap<String, Value> {
    list.iter().map(|s| (s["name"].as_str().unwrap().to_string(), s.clone())).collect()
}

fn name_of(ssrc: u32) -> String {
    format!("rtp/{ssrc:08X}")
}

/// True once the stream shows every frame of its fixture.
fn complete(s: &Value, exp: &Value) -> bool {
    s["video"]["frames"] == exp["video_frames"] && s["audio"]["frames"] == exp["audio_frames"]
}

fn assert_matches_fixture(s: &Value, exp: &Value, transport: &str) {
    let name = &s["name"];
    assert_eq!(s["source"]["transport"], transport, "{name}");
    assert_eq!(s["video"]["codec"], exp["video_codec"], "{name}");
    assert_eq!(s["video"]["width"], exp["width"], "{name}");
    assert_eq!(s["video"]["height"], exp["height"], "{name}");
    assert_eq!(s["video"]["frames"], exp["video_frames"], "{name}");
    assert_eq!(s["video"]["keyframes"], exp["keyframes"], "{name}");
    assert_eq!(s["audio"]["codec"], exp["audio_codec"], "{name}");
    assert_eq!(s["audio"]["sample_rate"], exp["sample_rate"], "{name}");
    assert_eq!(s["audio"]["frames"], exp["audio_frames"], "{name}");
    assert_eq!(s["packets"], exp["rtp_packets"], "{name}");
    assert_eq!(s["lost"], 0, "{name}");
    assert_eq!(s["duplicates"], 0, "{name}");
    let fps = s["video"]["fps"].as_f64().unwrap();
    assert!((fps - 25.0).abs() < 0.01, "{name}: fps {fps}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_own_fixture_over_udp_and_tcp_shows_its_codecs_resolution_and_counts() {
    let gw = start(test_config()).await;
    let mut sends = Vec::new();
    for (i, name) in OWN_FIXTURES.iter().enumerate() {
        let path = own_fixture(&format!("{name}.rtp"));
        let to = gw.rtp_addr;
        sends.push(tokio::spawn(async move {
            let (udp_opts, tcp_opts) =
                (opts(to, false, 1, 300_000_001 + i as u32), opts(to, true, 1, 400_000_001 + i as u32));
            let (u, t) = tokio::join!(send_file(&path, &udp_opts), send_file(&path, &tcp_opts));
            (u.unwrap(), t.unwrap())
        }));
    }
    let list = wait_streams(gw.api_addr, Duration::from_secs(10), |list| {
        list.len() == 8
            && list.iter().all(|s| {
                let ssrc: usize = s["source"]["ssrc"].as_str().unwrap().parse().unwrap();
                complete(s, &expected(OWN_FIXTURES[(ssrc - 1) % 100_000_000 % 4]))
            })
    })
    .await;
    let streams = by_name(&list);
    for (i, name) in OWN_FIXTURES.iter().enumerate() {
        let exp = expected(name);
        for (ssrc, transport) in [(300_000_001 + i as u32, "udp"), (400_000_001 + i as u32, "tcp")] {
            let s = streams.get(&name_of(ssrc)).unwrap_or_else(|| panic!("{name} over {transport} missing: {list:?}"));
            assert_eq!(s["source"]["ssrc"], format!("{ssrc:010}"));
            assert_eq!(s["source"]["peer"].as_str().unwrap().split(':').next(), Some("127.0.0.1"));
            assert_matches_fixture(s, &exp, transport);
        }
    }
    for s in sends {
        s.await.unwrap();
    }
    gw.stop().await;
}

#[test]
fn unknown_ssrc_name_is_eight_upper_hex_digits() {
    assert_eq!(gbgate::server::rtp::unknown_stream_name(100_000_001), "rtp/05F5E101");
    assert_eq!(gbgate::server::rtp::unknown_stream_name(200_000_001), "rtp/0BEBC201");
}

/// Own fixture packets with faults injected: one packet lost, one duplicated, two swapped.
fn faulty_dump(dir: &std::path::Path) -> std::path::PathBuf {
    let mut packets = read_rtp_dump(&own_fixture("h264_g711a_8k.rtp"));
    packets.swap(30, 31);
    let dup = packets[20].clone();
    packets.insert(21, dup);
    packets.remove(10);
    let path = dir.join("faulty.rtp");
    let mut f = std::fs::File::create(&path).unwrap();
    for p in &packets {
        f.write_all(&(p.len() as u16).to_be_bytes()).unwrap();
        f.write_all(p).unwrap();
    }
    path
}

/// The TCP byte stream of a fixture with its framing corrupted twice: junk between two frames,
/// and a length of 65535 followed by junk.
fn corrupted_tcp_stream() -> Vec<u8> {
    let packets = read_rtp_dump(&own_fixture("h264_g711a_8k.rtp"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut out = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        let mut p = p.clone();
        p[8..12].copy_from_slice(&500_000_002u32.to_be_bytes());
        if i == 15 {
            out.extend((0..37).map(|_| rng.gen::<u8>()));
        }
        if i == 35 {
            out.extend_from_slice(&[0xff, 0xff]);
            out.extend((0..300).map(|_| rng.gen::<u8>()));
        }
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(&p);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_streams_at_once_with_faulty_ones_beside_them() {
    let mut cfg = test_config();
    cfg.rtp.max_streams = 100;
    // Sixty cameras from one host: lift the per-source budget of unannounced streams.
    cfg.rtp.max_unknown_per_source = 100;
    let gw = start(cfg).await;
    let tmp = tempfile::tempdir().unwrap();
    let to = gw.rtp_addr;
    let clean = own_fixture("h264_g711a_8k.rtp");
    let faulty = faulty_dump(tmp.path());
    let shared_faults = shared_or_skip("sixty_streams_at_once_with_faulty_ones_beside_them")
        .map(|d| d.join("synthetic/h264_g711a_8k_faults.rtp"));
    let udp = {
        let clean = clean.clone();
        tokio::spawn(async move { send_file(&clean, &opts(to, false, 50, 310_000_001)).await.unwrap() })
    };
    let tcp = {
        let clean = clean.clone();
        tokio::spawn(async move { send_file(&clean, &opts(to, true, 10, 410_000_001)).await.unwrap() })
    };
    let lossy = tokio::spawn(async move { send_file(&faulty, &opts(to, false, 1, 500_000_001)).await.unwrap() });
    let corrupt = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(to).await.unwrap();
        let bytes = corrupted_tcp_stream();
        // Real-time-ish: 104 packets in ~2 s, in chunks that cut frames at arbitrary points.
        for chunk in bytes.chunks(3000) {
            s.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        // Stay connected (a paused camera) while the test reads the API.
        tokio::time::sleep(Duration::from_secs(6)).await;
        s.shutdown().await.unwrap();
    });
    let mut field = shared_faults
        .filter(|p| p.exists())
        .map(|p| tokio::spawn(async move { send_file(&p, &opts(to, false, 1, 500_000_003)).await.unwrap() }));
    udp.await.unwrap();
    lossy.await.unwrap();
    if let Some(f) = &mut field {
        f.await.unwrap();
    }
    let exp = expected("h264_g711a_8k");
    // Settled: every clean stream complete, and the faulty ones have counted all their packets
    // (384 sent - 8 duplicates for the field capture; 104 - 1 duplicate for the injected one).
    let field_sent = field.is_some();
    let settled = |list: &[Value]| {
        let packets = |ssrc: u32| list.iter().find(|s| s["name"] == name_of(ssrc)).and_then(|s| s["packets"].as_u64());
        list.iter().filter(|s| complete(s, &exp)).count() >= 60
            && packets(500_000_001) == Some(103)
            && (!field_sent || packets(500_000_003) == Some(376))
    };
    let list = wait_streams(gw.api_addr, Duration::from_secs(10), settled).await;
    let streams = by_name(&list);
    for i in 0..50 {
        let s = &streams[&name_of(310_000_001 + i)];
        assert_matches_fixture(s, &exp, "udp");
    }
    for i in 0..10 {
        let s = &streams[&name_of(410_000_001 + i)];
        assert_matches_fixture(s, &exp, "tcp");
    }
    // Injected loss, duplicate and swap: counted, and the stream recovers at the second keyframe.
    let s = &streams[&name_of(500_000_001)];
    assert_eq!((s["lost"].as_u64(), s["duplicates"].as_u64(), s["reordered"].as_u64()), (Some(1), Some(1), Some(1)));
    assert_eq!(s["video"]["keyframes"], 2, "{s}");
    assert!(s["video"]["frames"].as_u64().unwrap() >= 25, "{s}");
    assert_eq!(s["audio"]["frames"], 50, "audio frames in untouched packets all arrive: {s}");
    // Corrupted TCP framing: resynchronised; the second GOP arrives whole.
    let s = &streams[&name_of(500_000_002)];
    assert_eq!(s["source"]["transport"], "tcp");
    assert_eq!(s["video"]["keyframes"], 2, "{s}");
    assert!(s["video"]["frames"].as_u64().unwrap() >= 25, "{s}");
    let (_, rtp) = http_get(gw.api_addr, "/api/v1/rtp").await;
    assert!(rtp["tcp_resyncs"].as_u64().unwrap() >= 2, "{rtp}");
    // The field capture (loss, duplicates, reordering, +10 s timestamp jump), when present.
    if let Some(s) = streams.get(&name_of(500_000_003)) {
        assert_eq!(
            (s["lost"].as_u64(), s["duplicates"].as_u64(), s["reordered"].as_u64()),
            (Some(12), Some(8), Some(21)),
            "{s}"
        );
        assert_eq!(s["video"]["keyframes"], 2, "{s}");
        assert_eq!(s["video"]["width"], 640);
    }
    tcp.await.unwrap();
    corrupt.await.unwrap();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_counted_never_fatal_and_the_stream_limit_holds() {
    let mut cfg = test_config();
    cfg.rtp.max_streams = 20;
    let gw = start(cfg).await;
    let to = gw.rtp_addr;
    // A real camera first; it must come through every abuse below untouched.
    let legit = tokio::spawn(async move {
        send_file(&own_fixture("h264_g711a_8k.rtp"), &opts(to, false, 1, 600_000_001)).await.unwrap()
    });
    wait_streams(gw.api_addr, Duration::from_secs(5), |l| l.iter().any(|s| s["name"] == name_of(600_000_001))).await;

    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    // Garbage datagrams and truncated RTP.
    for _ in 0..500 {
        let n = rng.gen_range(0..1500);
        let junk: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        sock.send_to(&junk, to).await.unwrap();
    }
    for bad in [&[0x80u8, 96, 0][..], &[0x8f, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0][..], &[0x40; 40][..]] {
        sock.send_to(bad, to).await.unwrap();
    }
    // RTCP receiver report on the RTP port.
    sock.send_to(&[0x80, 201, 0, 1, 0, 0, 0, 9], to).await.unwrap();
    // PS with lying lengths in a valid RTP stream: a PES claiming 65535 bytes, then junk, repeatedly.
    for seq in 0..50u16 {
        let mut payload = vec![0, 0, 1, 0xBA, 0x44, 0, 4, 0, 4, 1, 0, 0, 3, 0xF8];
        payload.extend_from_slice(&[0, 0, 1, 0xE0, 0xff, 0xff, 0x80, 0x80, 0x05, 0x21, 0, 1, 0, 1]);
        payload.extend((0..1000).map(|_| rng.gen::<u8>()));
        let mut pkt = Vec::new();
        gbgate::proto::rtp::write_packet(&mut pkt, 96, true, seq, u32::from(seq) * 3600, 700_000_001, &payload);
        sock.send_to(&pkt, to).await.unwrap();
    }
    // A TCP connection whose first length is 65535, followed by junk.
    let mut tcp = tokio::net::TcpStream::connect(to).await.unwrap();
    let mut junk = vec![0xff, 0xff];
    junk.extend((0..70_000).map(|_| rng.gen::<u8>()));
    tcp.write_all(&junk).await.unwrap();
    drop(tcp);
    // A flood of random SSRCs, one packet each (stays on probation, creates nothing) ...
    for i in 0..5000u32 {
        let mut pkt = Vec::new();
        gbgate::proto::rtp::write_packet(&mut pkt, 96, false, 1, 0, rng.gen::<u32>() | 1, &[0u8; 100]);
        sock.send_to(&pkt, to).await.unwrap();
        if i % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // ... and 100 SSRCs that do pass probation: the stream limit must hold.
    for i in 0..100u32 {
        for s in 0..3u16 {
            let mut pkt = Vec::new();
            gbgate::proto::rtp::write_packet(&mut pkt, 96, false, s, 0, 800_000_000 + i, &[0u8; 100]);
            sock.send_to(&pkt, to).await.unwrap();
        }
    }
    legit.await.unwrap();
    let exp = expected("h264_g711a_8k");
    let list = wait_streams(gw.api_addr, Duration::from_secs(5), |l| {
        l.iter().any(|s| s["name"] == name_of(600_000_001) && complete(s, &exp))
    })
    .await;
    assert!(list.len() <= 20, "stream limit exceeded: {}", list.len());
    let streams = by_name(&list);
    assert_matches_fixture(&streams[&name_of(600_000_001)], &exp, "udp");
    let (_, rtp) = http_get(gw.api_addr, "/api/v1/rtp").await;
    assert!(rtp["bad_packets"].as_u64().unwrap() >= 400, "{rtp}");
    assert!(rtp["rtcp"].as_u64().unwrap() >= 1, "{rtp}");
    assert!(rtp["probation_evicted"].as_u64().unwrap() >= 3000, "{rtp}");
    assert!(rtp["streams_refused"].as_u64().unwrap() >= 1, "{rtp}");
    assert_eq!(rtp["max_streams"], 20);
    // The lying-length stream exists, decoded nothing, and said why.
    let s = streams.get(&name_of(700_000_001)).unwrap_or_else(|| panic!("no lying-length stream: {list:?}"));
    assert!(s["video"].is_null() || s["video"]["frames"] == 0, "{s}");
    assert_eq!(s["packets"], 50, "every packet was received: {s}");
    let why = ["garbage_bytes", "resyncs", "dropped_frames"].map(|k| s[k].as_u64().unwrap_or(0));
    assert!(why.iter().sum::<u64>() > 0, "decoded nothing and did not say why: {s}");
    // Still serving.
    let (status, _) = http_get(gw.api_addr, "/api/v1/streams").await;
    assert_eq!(status, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_ends_after_the_timeout() {
    let mut cfg = test_config();
    cfg.rtp.timeout = gbgate::config::HumanDuration(Duration::from_millis(800));
    let gw = start(cfg).await;
    send_file(&own_fixture("h264_g711a_8k.rtp"), &opts(gw.rtp_addr, false, 1, 610_000_001)).await.unwrap();
    let list = streams(gw.api_addr).await;
    assert!(list.iter().any(|s| s["name"] == name_of(610_000_001)), "{list:?}");
    let list = wait_streams(gw.api_addr, Duration::from_secs(5), |l| l.is_empty()).await;
    assert!(list.is_empty(), "stream did not end: {list:?}");
    let (status, body) = http_get(gw.api_addr, &format!("/api/v1/streams/{}", name_of(610_000_001))).await;
    assert_eq!(status, 404, "{body}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ssrc_report_mode_records_and_drop_mode_ignores() {
    for mode in [UnknownSsrc::Report, UnknownSsrc::Drop] {
        let mut cfg = test_config();
        cfg.rtp.unknown_ssrc = mode;
        let gw = start(cfg).await;
        send_file(&own_fixture("h264_g711a_8k.rtp"), &opts(gw.rtp_addr, false, 1, 620_000_001)).await.unwrap();
        send_file(&own_fixture("h264_g711a_8k.rtp"), &opts(gw.rtp_addr, true, 1, 620_000_002)).await.ok();
        // Once the packets are counted (104 over UDP, the TCP connection's first) they have been
        // handled: then nothing may be published.
        let rtp = wait_json(gw.api_addr, "/api/v1/rtp", Duration::from_secs(5), |r| {
            r["unknown_ssrc_packets"].as_u64().is_some_and(|n| n >= 105)
                && (mode != UnknownSsrc::Report || r["unknown_ssrcs"].as_array().is_some_and(|l| l.len() == 2))
        })
        .await;
        assert!(streams(gw.api_addr).await.is_empty(), "{mode:?} must not publish");
        assert!(rtp["unknown_ssrc_packets"].as_u64().unwrap() >= 100, "{rtp}");
        let reported: Vec<u64> = rtp["unknown_ssrcs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["ssrc"].as_str().unwrap().parse().unwrap())
            .collect();
        match mode {
            UnknownSsrc::Report => assert_eq!(reported, vec![620_000_001, 620_000_002]),
            _ => assert!(reported.is_empty()),
        }
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_ssrc_publishes_under_its_name_without_probation() {
    let gw = start(test_config()).await;
    gw.rtp.announce(630_000_001, "gb/34020000001310000001".into());
    send_file(&own_fixture("h265_aac_16k.rtp"), &opts(gw.rtp_addr, false, 1, 630_000_001)).await.unwrap();
    let exp = expected("h265_aac_16k");
    let list = wait_streams(gw.api_addr, Duration::from_secs(5), |l| l.iter().any(|s| complete(s, &exp))).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "gb/34020000001310000001");
    // The SSRC in its 10-digit GB form, leading zero kept (as /api/v1/gb/sessions shows it).
    assert_eq!(list[0]["source"]["ssrc"], "0630000001");
    assert_matches_fixture(&list[0], &exp, "udp");
    let (status, one) = http_get(gw.api_addr, "/api/v1/streams/gb/34020000001310000001").await;
    assert_eq!(status, 200);
    assert_eq!(one["video"]["codec"], "h265");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_starts_at_the_cached_gop_and_is_counted() {
    let gw = start(test_config()).await;
    let to = gw.rtp_addr;
    let sender = tokio::spawn(async move {
        send_file(&own_fixture("h264_g711a_8k.rtp"), &opts(to, false, 1, 640_000_001)).await.unwrap()
    });
    // Join mid-GOP: once a few frames of the first GOP (25 frames, 1 s) have gone by.
    let t = std::time::Instant::now();
    let stream = loop {
        match gw.hub.get(&name_of(640_000_001)) {
            Some(s) if s.gop_cache_usage().0 >= 8 => break s,
            _ => {}
        }
        assert!(t.elapsed() < Duration::from_secs(5), "the stream did not go live");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut sub = stream.subscribe();
    let first_video = loop {
        let f = sub.recv().await.unwrap();
        if f.kind() == gbgate::media::MediaKind::Video {
            break f;
        }
    };
    assert!(first_video.keyframe, "the first video frame a subscriber gets is the cached keyframe");
    assert_eq!(first_video.pts, 0, "it is the GOP's keyframe, not a later one");
    let list = streams(gw.api_addr).await;
    assert_eq!(list[0]["subscribers"], 1);
    let mut last = first_video.pts;
    let mut video = 1;
    while let Ok(Ok(f)) = tokio::time::timeout(Duration::from_secs(2), sub.recv()).await {
        if f.kind() == gbgate::media::MediaKind::Video {
            assert_eq!(f.pts, last + 3600, "no gap and no duplicate between the GOP and live frames");
            last = f.pts;
            video += 1;
        }
        if video == 50 {
            break;
        }
    }
    assert_eq!(video, 50);
    sender.await.unwrap();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_ssrc_follows_the_unknown_ssrc_policy() {
    let mut cfg = test_config();
    cfg.rtp.unknown_ssrc = UnknownSsrc::Report;
    cfg.rtp.timeout = gbgate::config::HumanDuration(Duration::from_millis(800));
    let gw = start(cfg).await;
    gw.rtp.announce(650_000_001, "gb/34020000001310000002".into());
    send_file(&own_fixture("h264_g711a_8k.rtp"), &opts(gw.rtp_addr, false, 1, 650_000_001)).await.unwrap();
    assert_eq!(streams(gw.api_addr).await.len(), 1, "the announced SSRC is published");
    assert!(wait_streams(gw.api_addr, Duration::from_secs(5), |l| l.is_empty()).await.is_empty());
    // The session is over; the same SSRC comes back unannounced: report mode must not publish it.
    gw.rtp.withdraw(650_000_001);
    send_file(&own_fixture("h264_g711a_8k.rtp"), &opts(gw.rtp_addr, false, 1, 650_000_001)).await.unwrap();
    let rtp = wait_json(gw.api_addr, "/api/v1/rtp", Duration::from_secs(5), |r| {
        r["unknown_ssrcs"][0]["ssrc"] == "0650000001"
    })
    .await;
    assert_eq!(rtp["unknown_ssrcs"][0]["ssrc"], "0650000001", "{rtp}");
    assert!(streams(gw.api_addr).await.is_empty(), "report mode published a returning SSRC");
    gw.stop().await;
}
