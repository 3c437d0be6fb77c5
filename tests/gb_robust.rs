//! Bad SIP input never hurts the gateway or other devices: malformed and oversized messages are
//! dropped or get 4xx, a flood of bad-auth REGISTERs is cut off per source, the transaction
//! table is bounded (503 beyond it), and registrations survive a restart (embedded database).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::common::{http_get, own_fixture, start, test_config};
use gbgate::proto::sip::{self, rsip::SipMessage};
use gbgate::server::Gateway;
use gbgate::sim::camera::{self, SimOptions, SimStats};
use tokio_util::sync::CancellationToken;

fn register(dev: &str, local: SocketAddr, branch: &str, auth: Option<&str>) -> String {
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    format!(
        "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{branch}\r\n\
From: <sip:{dev}@3402000000>;tag=7\r\nTo: <sip:{dev}@3402000000>\r\nCall-ID: {dev}-c\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:{dev}@{local}>\r\n{auth}Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    )
}

fn recv_status(sock: &UdpSocket) -> Option<(u16, sip::rsip::Response)> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        if let Ok(SipMessage::Response(r)) = sip::parse(&buf[..n]) {
            return Some((r.status_code.code(), r));
        }
    }
}

fn udp(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_sip_gets_4xx_or_is_dropped_and_the_gateway_keeps_serving() {
    let mut cfg = test_config();
    cfg.gb.query_on_register = false;
    let gw = start(cfg).await;
    let sip_addr = gw.sip_addr.unwrap();
    tokio::task::block_in_place(|| {
        let s = udp("127.0.0.1");
        let local = s.local_addr().unwrap();
        let junk: Vec<Vec<u8>> = vec![
            b"\x00\x01\x02garbage".to_vec(),
            b"INVITE".to_vec(),
            b"REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4\r\n\r\n".to_vec(), // no From/To/CSeq
            b"MESSAGE sip:a@b SIP/2.0\r\nVia: x\r\nFrom: <sip:a@b>\r\nTo: <sip:a@b>\r\nCall-ID: 1\r\nCSeq: banana\r\n\r\n".to_vec(),
            [b"REGISTER sip:a@b SIP/2.0\r\nFrom: \xff\xfe\xfd\r\n".as_slice(), &[0xC3; 100]].concat(),
            vec![b'A'; 65_000],
            format!("OPTIONS sip:a@b SIP/2.0\r\n{}\r\n\r\n", "X-Long: y\r\n".repeat(4000)).into_bytes(),
        ];
        for j in &junk {
            s.send_to(j, sip_addr).unwrap();
        }
        // Nothing answers junk that cannot be answered; a valid REGISTER still gets 200.
        s.send_to(register("34020000001320000001", local, "ok1", None).as_bytes(), sip_addr).unwrap();
        let (code, _) = recv_status(&s).expect("an answer");
        assert_eq!(code, 200);
        // A registered device's MESSAGE with a broken or oversized body: 400.
        for body in [b"<Notify><CmdType>Keep".to_vec(), [b"<Notify>".as_slice(), &vec![b'x'; 60_000]].concat()] {
            let msg = [
                format!(
                    "MESSAGE sip:34020000002000000001@3402000000 SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{}\r\n\
From: <sip:34020000001320000001@3402000000>;tag=1\r\nTo: <sip:34020000002000000001@3402000000>\r\nCall-ID: m{}\r\n\
CSeq: 2 MESSAGE\r\nContent-Type: Application/MANSCDP+xml\r\nContent-Length: {}\r\n\r\n",
                    body.len(),
                    body.len(),
                    body.len()
                )
                .into_bytes(),
                body.clone(),
            ]
            .concat();
            s.send_to(&msg, sip_addr).unwrap();
            assert_eq!(recv_status(&s).map(|r| r.0), Some(400), "body of {} bytes", body.len());
        }
        // TCP: a message over 64 KiB without an end closes the connection ...
        let mut t = TcpStream::connect(sip_addr).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = t.write_all(&vec![b'B'; 70_000]);
        let mut b = [0u8; 16];
        assert!(matches!(t.read(&mut b), Ok(0) | Err(_)), "closed");
        // ... and a new connection registers fine.
        let mut t = TcpStream::connect(sip_addr).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let tl = t.local_addr().unwrap();
        t.write_all(register("34020000001320000002", tl, "ok2", None).replace("UDP", "TCP").as_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = t.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"SIP/2.0 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    });
    let (status, body) = http_get(gw.api_addr, "/api/v1/devices").await;
    assert_eq!(status, 200);
    assert_eq!(body["devices"].as_array().map(|d| d.len()), Some(2));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_auth_registers_is_cut_off_per_source_and_other_devices_still_register() {
    let mut cfg = test_config();
    cfg.sip.password = Some("12345678".into());
    cfg.sip.auth_failures_per_minute = 5;
    cfg.sip.max_transactions = 200;
    let gw = start(cfg).await;
    let sip_addr = gw.sip_addr.unwrap();
    let (answers, forbidden) = tokio::task::block_in_place(|| {
        // The attacker lives on 127.0.0.2 (a different source IP on loopback).
        let s = udp("127.0.0.2");
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let local = s.local_addr().unwrap();
        s.send_to(register("34020000001320000066", local, "c0", None).as_bytes(), sip_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let (code, challenge) = recv_status(&s).unwrap();
        assert_eq!(code, 401);
        let www = sip::header(&challenge.headers, "WWW-Authenticate").unwrap().to_string();
        assert!(www.contains("algorithm=MD5"), "{www}");
        let nonce = gbgate::proto::sip::digest::parse_challenge(&www).unwrap().nonce;
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let (mut answers, mut forbidden) = (0, 0);
        for i in 0..100 {
            let auth = format!(
                "Digest username=\"34020000001320000066\",realm=\"3402000000\",nonce=\"{nonce}\",uri=\"sip:34020000002000000001@3402000000\",response=\"{:032x}\",algorithm=MD5",
                i
            );
            s.send_to(register("34020000001320000066", local, &format!("f{i}"), Some(&auth)).as_bytes(), sip_addr)
                .unwrap();
            while let Some((code, _)) = recv_status(&s) {
                answers += 1;
                assert!((400..500).contains(&code), "flood answered {code}");
                forbidden += usize::from(code == 403);
            }
        }
        (answers, forbidden)
    });
    println!("100 bad-auth REGISTERs: {answers} answers ({forbidden} x 403), the rest dropped");
    assert!((1..=6).contains(&forbidden), "{forbidden}");
    // A real camera on another address is not affected.
    let stop = CancellationToken::new();
    let mut o = SimOptions::new(sip_addr, own_fixture("h264_g711a_8k.rtp"));
    o.password = "12345678".into();
    let stats = camera::spawn(o, stop.clone()).await.unwrap();
    let start_t = Instant::now();
    while SimStats::get(&stats.registered) == 0 && start_t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(SimStats::get(&stats.registered), 1);
    // The server transaction table is bounded (200 here): answered entries give way, so 300
    // distinct OPTIONS are all answered, and the oldest answers are forgotten: a retransmission
    // of the first is answered afresh (a new To tag), one of the last from the cache (same tag).
    let (codes, first, last) = tokio::task::block_in_place(|| {
        let s = udp("127.0.0.1");
        let local = s.local_addr().unwrap();
        let options = |i: usize| {
            format!(
                "OPTIONS sip:34020000002000000001@3402000000 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKo{i}\r\n\
From: <sip:x@y>;tag=1\r\nTo: <sip:z@y>\r\nCall-ID: o{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let ask = |i: usize| {
            s.send_to(options(i).as_bytes(), sip_addr).unwrap();
            recv_status(&s).map(|(code, r)| (code, sip::header(&r.headers, "To").unwrap_or("").to_string()))
        };
        let answers: Vec<(u16, String)> = (0..300).map(|i| ask(i).unwrap_or_default()).collect();
        let (first, last) = (ask(0).unwrap_or_default(), ask(299).unwrap_or_default());
        let tags = (answers[0].1.clone(), answers[299].1.clone());
        (answers, (tags.0, first.1), (tags.1, last.1))
    });
    assert!(codes.iter().all(|c| c.0 == 200), "{codes:?}");
    assert_ne!(first.0, first.1, "the first answer was still cached after 300 more: the table is not bounded");
    assert_eq!(last.0, last.1, "a recent retransmission is answered from the cache");
    stop.cancel();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_survive_a_restart_and_a_keepalive_brings_the_device_back_online() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config();
    cfg.sip.password = Some("12345678".into());
    cfg.sip.db = Some(dir.path().join("gb.redb"));
    let gw = start(cfg.clone()).await;
    let sip_addr = gw.sip_addr.unwrap();
    let stop = CancellationToken::new();
    let mut o = SimOptions::new(sip_addr, own_fixture("h264_g711a_8k.rtp"));
    o.password = "12345678".into();
    o.keepalive = Duration::from_millis(300);
    o.channels = 2;
    let stats = camera::spawn(o, stop.clone()).await.unwrap();
    let dev = "34020000001320000001";
    let gb = gw.gb.clone().unwrap();
    let t0 = Instant::now();
    while !gb.device(dev).is_some_and(|d| d.online && d.channels.len() == 2) {
        assert!(t0.elapsed() < Duration::from_secs(5), "registered with its catalog");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Stopping drops the store's queue: its writer commits what was queued, then closes the file,
    // and the restart below retries until the file is free.
    gw.stop().await;
    // Same SIP address: the camera keeps sending keepalives there and never re-registers.
    cfg.sip.listen = sip_addr;
    let t1 = Instant::now();
    let gw: Gateway = loop {
        match Gateway::start(cfg.clone()).await {
            Ok(g) => break g,
            Err(e) => {
                assert!(t1.elapsed() < Duration::from_secs(5), "restart: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let gb = gw.gb.clone().unwrap();
    let back = gb.device(dev).expect("device loaded from the database");
    assert_eq!(back.channels.len(), 2, "catalog persisted");
    while !gb.device(dev).is_some_and(|d| d.online) {
        assert!(t1.elapsed() < Duration::from_secs(5), "a keepalive brings it back online");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(SimStats::get(&stats.registered), 1, "no new REGISTER was needed");
    println!("back online {:?} after the restart, without a REGISTER", t1.elapsed());
    stop.cancel();
    gw.stop().await;
}
