//! Hostile SIP peers (issue 8): numbers out of range, forged requests from other addresses,
//! empty and oversized catalogs, registration floods. Every test talks to an in-process gateway
//! over real loopback sockets with raw datagrams; 127.0.0.2 and up stand for other hosts.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::common::{http_get, own_fixture, start, test_config};
use gbgate::proto::sip::{self, rsip::SipMessage};
use gbgate::sim::camera::{self, SimOptions, SimStats};
use tokio_util::sync::CancellationToken;

const GW: &str = "34020000002000000001";

fn udp(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    s
}

fn register(dev: &str, local: SocketAddr, branch: &str, expires: &str, auth: Option<&str>) -> String {
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    format!(
        "REGISTER sip:{GW}@3402000000 SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{branch}\r\n\
From: <sip:{dev}@3402000000>;tag=7\r\nTo: <sip:{dev}@3402000000>\r\nCall-ID: {dev}-{branch}\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:{dev}@{local}>\r\n{auth}Expires: {expires}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A MANSCDP MESSAGE from `dev` (From header) with `body`.
fn message(dev: &str, local: SocketAddr, branch: &str, body: &str) -> String {
    format!(
        "MESSAGE sip:{GW}@3402000000 SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{branch}\r\n\
From: <sip:{dev}@3402000000>;tag=1\r\nTo: <sip:{GW}@3402000000>\r\nCall-ID: m{branch}\r\n\
CSeq: 2 MESSAGE\r\nContent-Type: Application/MANSCDP+xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn keepalive(dev: &str, sn: u32) -> String {
    format!(
        "<?xml version=\"1.0\"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{dev}</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n"
    )
}

/// REGISTERs `dev` from `s`, answering the digest challenge with `password`; the final code.
fn register_digest(s: &UdpSocket, sip_addr: SocketAddr, dev: &str, password: &str, branch: &str) -> u16 {
    let local = s.local_addr().unwrap();
    s.send_to(register(dev, local, &format!("{branch}a"), "3600", None).as_bytes(), sip_addr).unwrap();
    let Some((code, resp)) = recv_status(s) else { return 0 };
    if code != 401 {
        return code;
    }
    let www = sip::header(&resp.headers, "WWW-Authenticate").unwrap();
    let uri = format!("sip:{GW}@3402000000");
    let auth = sip::digest::answer(www, "REGISTER", &uri, dev, password, "0a4f113b").unwrap();
    s.send_to(register(dev, local, &format!("{branch}b"), "3600", Some(&auth)).as_bytes(), sip_addr).unwrap();
    recv_status(s).map_or(0, |r| r.0)
}

/// REGISTERs every ID in `ids` from `s` with a valid digest (one challenge, its nonce reused as
/// a flood would), without waiting for answers; returns the codes read afterwards.
fn register_flood(s: &UdpSocket, sip_addr: SocketAddr, ids: &[String], password: &str, expires: &str) -> Vec<u16> {
    let local = s.local_addr().unwrap();
    s.send_to(register(&ids[0], local, "flood-challenge", expires, None).as_bytes(), sip_addr).unwrap();
    let (code, resp) = recv_status(s).expect("a challenge");
    assert_eq!(code, 401);
    let www = sip::header(&resp.headers, "WWW-Authenticate").unwrap().to_string();
    let uri = format!("sip:{GW}@3402000000");
    let mut codes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let auth = sip::digest::answer(&www, "REGISTER", &uri, id, password, "0a4f113b").unwrap();
        s.send_to(register(id, local, &format!("fl{i}"), expires, Some(&auth)).as_bytes(), sip_addr).unwrap();
        // Read what has arrived so far without waiting (the socket buffer is not endless).
        s.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            if let Ok(SipMessage::Response(r)) = sip::parse(&buf[..n]) {
                codes.push(r.status_code.code());
            }
        }
        s.set_nonblocking(false).unwrap();
    }
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    while let Some((code, _)) = recv_status(s) {
        codes.push(code);
    }
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    codes
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:04}")).collect()
}

fn catalog_notify(dev: &str, sn: u32, sum: &str, items: &[&str]) -> String {
    let list: String = items
        .iter()
        .map(|id| {
            format!("<Item>\r\n<DeviceID>{id}</DeviceID>\r\n<Name>cam</Name>\r\n<Status>ON</Status>\r\n</Item>\r\n")
        })
        .collect();
    format!(
        "<?xml version=\"1.0\"?>\r\n<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{dev}</DeviceID>\r\n\
<SumNum>{sum}</SumNum>\r\n<DeviceList Num=\"{}\">\r\n{list}</DeviceList>\r\n</Response>\r\n",
        items.len()
    )
}

/// Answers the gateway's requests on `s` with 200 until `until` says stop; returns the SN of
/// the first Catalog query seen.
fn answer_queries(s: &UdpSocket, deadline: Duration) -> Option<u32> {
    let mut buf = vec![0u8; 65_536];
    let t0 = Instant::now();
    while t0.elapsed() < deadline {
        let Ok((n, from)) = s.recv_from(&mut buf) else { continue };
        let Ok(SipMessage::Request(req)) = sip::parse(&buf[..n]) else { continue };
        let ok = sip::response(&req, 200, "t1", from, vec![], Vec::new());
        s.send_to(&ok.to_bytes(), from).unwrap();
        if let Ok(m) = sip::manscdp::parse(&req.body) {
            if m.cmd_type == "Catalog" {
                return Some(m.sn);
            }
        }
    }
    None
}

async fn counter(api: SocketAddr, name: &str) -> u64 {
    let (status, body) = http_get(api, "/api/v1/gb/counters").await;
    assert_eq!(status, 200, "{body}");
    body["core"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {body}"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_numbers_are_clamped_or_refused_and_the_sip_core_keeps_serving() {
    let mut cfg = test_config();
    cfg.gb.query_on_register = false;
    let gw = start(cfg).await;
    let sip_addr = gw.sip_addr.unwrap();
    let gb = gw.gb.clone().unwrap();
    let dev = "34020000001320000001";
    tokio::task::block_in_place(|| {
        let s = udp("127.0.0.1");
        let local = s.local_addr().unwrap();
        // Expires at u64::MAX is granted as MAX_EXPIRES (the answer says so) ...
        s.send_to(register(dev, local, "e1", "18446744073709551615", None).as_bytes(), sip_addr).unwrap();
        let (code, resp) = recv_status(&s).expect("an answer");
        assert_eq!(code, 200);
        assert_eq!(sip::header(&resp.headers, "Expires"), Some(sip::MAX_EXPIRES.to_string().as_str()));
        // ... and one beyond u64 too (not a 400: a registrar may shorten it).
        s.send_to(register(dev, local, "e2", "99999999999999999999999", None).as_bytes(), sip_addr).unwrap();
        let (code, resp) = recv_status(&s).expect("an answer");
        assert_eq!(code, 200);
        assert_eq!(sip::header(&resp.headers, "Expires"), Some(sip::MAX_EXPIRES.to_string().as_str()));
        // A stray 200 to an INVITE we never sent, CSeq at u32::MAX (we would ACK and BYE it with
        // CSeq + 1): refused as malformed; at the RFC 3261 maximum it is answered without harm.
        for (i, n) in ["4294967295", "2147483647"].iter().enumerate() {
            let resp = format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {sip_addr};branch=z9hG4bKstray{i}\r\nFrom: <sip:{GW}@3402000000>;tag=a\r\n\
To: <sip:{dev}@3402000000>;tag=b\r\nCall-ID: stray{i}\r\nCSeq: {n} INVITE\r\nContact: <sip:{dev}@{local}>\r\nContent-Length: 0\r\n\r\n"
            );
            s.send_to(resp.as_bytes(), sip_addr).unwrap();
        }
    });
    // The signalling task survives its ticks (the expiry sum used to overflow) and still answers.
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(600)).await; // three expiry ticks
    tokio::task::block_in_place(|| {
        let s = udp("127.0.0.1");
        let local = s.local_addr().unwrap();
        s.send_to(register("34020000001320000002", local, "e3", "3600", None).as_bytes(), sip_addr).unwrap();
        assert_eq!(recv_status(&s).map(|r| r.0), Some(200), "the SIP core still answers");
    });
    assert!(gb.device(dev).is_some_and(|d| d.online && d.expires == sip::MAX_EXPIRES), "still registered");
    let (status, body) = http_get(gw.api_addr, &format!("/api/v1/devices/{dev}")).await;
    assert_eq!(status, 200, "{body}");
    println!("clamped and alive after {:?}", t0.elapsed());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_message_from_another_address_neither_moves_the_device_nor_adds_channels() {
    let mut cfg = test_config();
    cfg.sip.password = Some("pw-hole-11".into());
    cfg.gb.query_on_register = false;
    let gw = start(cfg).await;
    let sip_addr = gw.sip_addr.unwrap();
    let gb = gw.gb.clone().unwrap();
    let dev = "34020000001320000011";
    let camera = udp("127.0.0.1");
    let forger = udp("127.0.0.2");
    let (cam_addr, forger_addr) = (camera.local_addr().unwrap(), forger.local_addr().unwrap());
    tokio::task::block_in_place(|| {
        assert_eq!(register_digest(&camera, sip_addr, dev, "pw-hole-11", "r1"), 200);
        // The forger knows the device ID: its keepalive and its Catalog are refused ...
        forger.send_to(message(dev, forger_addr, "k1", &keepalive(dev, 1)).as_bytes(), sip_addr).unwrap();
        assert_eq!(recv_status(&forger).map(|r| r.0), Some(403), "forged keepalive");
        let forged = catalog_notify(dev, 77, "1", &["34020000001310000666"]);
        forger.send_to(message(dev, forger_addr, "c1", &forged).as_bytes(), sip_addr).unwrap();
        assert_eq!(recv_status(&forger).map(|r| r.0), Some(403), "forged catalog");
        // ... the camera's own keepalive is not.
        camera.send_to(message(dev, cam_addr, "k2", &keepalive(dev, 2)).as_bytes(), sip_addr).unwrap();
        assert_eq!(recv_status(&camera).map(|r| r.0), Some(200), "the camera's keepalive");
    });
    let d = gb.device(dev).unwrap();
    assert_eq!(d.addr, cam_addr, "the device did not move");
    assert!(d.channels.is_empty(), "no forged channel: {:?}", d.channels);
    assert!(counter(gw.api_addr, "foreign_source_refused").await >= 2);
    // A new address must REGISTER again, with the password.
    tokio::task::block_in_place(|| {
        assert_eq!(register_digest(&forger, sip_addr, dev, "wrong", "r2"), 403);
        assert_eq!(gb.device(dev).unwrap().addr, cam_addr);
        assert_eq!(register_digest(&forger, sip_addr, dev, "pw-hole-11", "r3"), 200);
    });
    let t0 = Instant::now();
    while gb.device(dev).unwrap().addr != forger_addr {
        assert!(t0.elapsed() < Duration::from_secs(2), "moved by an authenticated REGISTER");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogs_count_only_as_answers_or_notifications_and_none_erases_a_known_list() {
    let mut cfg = test_config();
    cfg.sip.password = Some("pw-hole-14".into());
    let gw = start(cfg).await;
    let sip_addr = gw.sip_addr.unwrap();
    let gb = gw.gb.clone().unwrap();
    let dev = "34020000001320000014";
    let (ch1, ch2, ch3) = ("34020000001310000001", "34020000001310000002", "34020000001310000003");
    let camera = udp("127.0.0.1");
    let local = camera.local_addr().unwrap();
    let send = |branch: &str, body: &str| {
        camera.send_to(message(dev, local, branch, body).as_bytes(), sip_addr).unwrap();
        recv_status(&camera).map(|r| r.0)
    };
    tokio::task::block_in_place(|| {
        assert_eq!(register_digest(&camera, sip_addr, dev, "pw-hole-14", "r1"), 200);
        let sn = answer_queries(&camera, Duration::from_secs(5)).expect("a Catalog query after REGISTER");
        assert_eq!(send("a1", &catalog_notify(dev, sn, "2", &[ch1, ch2])), Some(200));
    });
    let t0 = Instant::now();
    while gb.device(dev).is_none_or(|d| d.channels.len() != 2) {
        assert!(t0.elapsed() < Duration::from_secs(3), "the answer to our query sets the list");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| {
        // Empty answers under SNs we never asked (SumNum 0, negative, absent) ...
        assert_eq!(send("e1", &catalog_notify(dev, 900, "0", &[])), Some(200));
        assert_eq!(send("e2", &catalog_notify(dev, 901, "-1", &[])), Some(200));
        assert_eq!(send("e3", &catalog_notify(dev, 902, "", &[])), Some(200));
        // ... an empty notification ...
        let empty_notify = catalog_notify(dev, 903, "0", &[]).replace("Response>", "Notify>");
        assert_eq!(send("e4", &empty_notify), Some(200));
        // ... and unsolicited answers with new SNs that once each opened a 10,000-item slot.
        for i in 0..50 {
            let body = catalog_notify(dev, 1000 + i, "10000", &["34020000001310000666"]);
            assert_eq!(send(&format!("u{i}"), &body), Some(200));
        }
        // A well-formed notification is merged: ADD then DEL.
        let add = catalog_notify(dev, 2000, "1", &[ch3])
            .replace("Response>", "Notify>")
            .replace("<Status>ON</Status>", "<Status>ON</Status>\r\n<Event>ADD</Event>");
        assert_eq!(send("n1", &add), Some(200));
    });
    let t0 = Instant::now();
    while gb.device(dev).is_none_or(|d| d.channels.len() != 3) {
        assert!(t0.elapsed() < Duration::from_secs(3), "ADD merged: {:?}", gb.device(dev).map(|d| d.channels));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: Vec<String> = gb.device(dev).unwrap().channels.iter().map(|c| c.device_id.clone()).collect();
    assert!(!ids.contains(&"34020000001310000666".to_string()), "{ids:?}");
    tokio::task::block_in_place(|| {
        let del = catalog_notify(dev, 2001, "1", &[ch3])
            .replace("Response>", "Notify>")
            .replace("<Status>ON</Status>", "<Status>OFF</Status>\r\n<Event>DEL</Event>");
        assert_eq!(send("n2", &del), Some(200));
    });
    let t0 = Instant::now();
    while gb.device(dev).is_none_or(|d| d.channels.len() != 2) {
        assert!(t0.elapsed() < Duration::from_secs(3), "DEL merged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(counter(gw.api_addr, "catalogs_refused").await >= 54);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_password_configured_one_is_generated_kept_and_required() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config();
    cfg.sip.password = None;
    cfg.sip.db = Some(dir.path().join("gb.redb"));
    cfg.gb.query_on_register = false;
    let dev = "34020000001320000004";
    let gw = start(cfg.clone()).await;
    let file = dir.path().join(gbgate::gb::PASSWORD_FILE);
    let password = std::fs::read_to_string(&file).expect("the generated password is stored").trim().to_string();
    assert!(password.len() >= 16, "{password:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o077, 0, "only the owner reads it");
    }
    let sip_addr = gw.sip_addr.unwrap();
    tokio::task::block_in_place(|| {
        let s = udp("127.0.0.1");
        assert_eq!(register_digest(&s, sip_addr, dev, "", "p1"), 403, "an empty password is not accepted");
        assert_eq!(register_digest(&s, sip_addr, dev, "12345678", "p2"), 403);
        assert_eq!(register_digest(&s, sip_addr, dev, &password, "p3"), 200);
    });
    gw.stop().await;
    // The next start reads the same password back (once the store's writer let go of the file).
    let t0 = Instant::now();
    let gw = loop {
        match gbgate::server::Gateway::start(cfg.clone()).await {
            Ok(g) => break g,
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(5), "restart: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), password);
    let sip_addr = gw.sip_addr.unwrap();
    tokio::task::block_in_place(|| {
        let s = udp("127.0.0.1");
        assert_eq!(register_digest(&s, sip_addr, dev, &password, "p4"), 200);
    });
    gw.stop().await;
    // No database to keep one in: still never open (a password for this run only).
    let mut cfg = test_config();
    cfg.sip.password = None;
    let gw = start(cfg).await;
    let sip_addr = gw.sip_addr.unwrap();
    tokio::task::block_in_place(|| {
        let s = udp("127.0.0.1");
        let local = s.local_addr().unwrap();
        s.send_to(register(dev, local, "q1", "3600", None).as_bytes(), sip_addr).unwrap();
        assert_eq!(recv_status(&s).map(|r| r.0), Some(401));
    });
    gw.stop().await;
    // `password = ""` written out is the only way to accept any device; absent is not empty.
    let open = gbgate::config::Config::from_toml("[sip]\npassword = \"\"\n", "t").unwrap();
    assert_eq!(open.sip.password.as_deref(), Some(""));
    let unset = gbgate::config::Config::from_toml("[sip]\nid = \"34020000002000000001\"\n", "t").unwrap();
    assert_eq!(unset.sip.password, None);
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/gbgate.toml")).unwrap();
    let shipped = gbgate::config::Config::from_toml(&shipped, "conf/gbgate.toml").unwrap();
    assert_eq!(shipped.sip.password, None, "the shipped config carries no well-known password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_flood_cannot_fill_the_device_table_the_longest_offline_give_way() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config();
    cfg.sip.password = Some("pw-hole-13".into());
    cfg.sip.max_devices = 50;
    cfg.sip.max_devices_per_source = 20;
    cfg.sip.db = Some(dir.path().join("gb.redb"));
    cfg.gb.query_on_register = false;
    let gw = start(cfg.clone()).await;
    let sip_addr = gw.sip_addr.unwrap();
    let gb = gw.gb.clone().unwrap();
    // One source, 60 IDs with Expires: 1: it never holds more than its 20.
    let flooder = udp("127.0.0.2");
    let codes = tokio::task::block_in_place(|| {
        register_flood(&flooder, sip_addr, &ids("340200000013200", 60), "pw-hole-13", "1")
    });
    assert!(codes.iter().filter(|c| **c == 200).count() >= 20, "{codes:?}");
    let ip2: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    assert!(gb.devices().iter().filter(|d| d.addr.ip() == ip2).count() <= 20);
    // Three more sources fill the table (50) with devices that expire after a second.
    for (n, ip) in ["127.0.0.3", "127.0.0.4", "127.0.0.5"].iter().enumerate() {
        let s = udp(ip);
        let codes = tokio::task::block_in_place(|| {
            register_flood(&s, sip_addr, &ids(&format!("3402000000132{}0", n + 1), 20), "pw-hole-13", "1")
        });
        assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{codes:?}");
    }
    let t0 = Instant::now();
    while gb.devices().iter().any(|d| d.online) {
        assert!(t0.elapsed() < Duration::from_secs(5), "Expires: 1 runs out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gb.devices().len(), 50, "full");
    // A new device still registers: the longest-offline one gives way (and leaves the store).
    let camera = udp("127.0.0.1");
    let dev = "34020000001320009999";
    tokio::task::block_in_place(|| assert_eq!(register_digest(&camera, sip_addr, dev, "pw-hole-13", "n1"), 200));
    let t0 = Instant::now();
    while gb.device(dev).is_none() {
        assert!(t0.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gb.devices().len(), 50);
    assert!(counter(gw.api_addr, "devices_evicted").await >= 1);
    gw.stop().await;
    let t0 = Instant::now();
    let gw = loop {
        match gbgate::server::Gateway::start(cfg.clone()).await {
            Ok(g) => break g,
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(5), "restart: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let stored = gw.gb.clone().unwrap().devices();
    assert!(stored.len() <= 50 && stored.iter().any(|d| d.id == dev), "{} stored", stored.len());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_flood_that_never_answers_queries_does_not_starve_play() {
    let mut cfg = test_config();
    cfg.sip.password = Some("pw-hole-15".into());
    cfg.sip.max_transactions = 200;
    cfg.sip.max_transactions_per_peer = 40;
    let gw = start(cfg).await;
    let sip_addr = gw.sip_addr.unwrap();
    let gb = gw.gb.clone().unwrap();
    // 300 registrants on one address that never answer DeviceInfo/Catalog queries.
    let flooder = udp("127.0.0.2");
    let codes = tokio::task::block_in_place(|| {
        register_flood(&flooder, sip_addr, &ids("340200000013200", 300), "pw-hole-15", "3600")
    });
    // (Some answers may be lost in the flooder's own socket buffer on a loaded machine.)
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    let flooding = gb.devices().iter().filter(|d| d.online && d.addr == flooder.local_addr().unwrap()).count();
    assert!(flooding >= 250, "{flooding} of 300 registered");
    // Then a real camera registers and plays.
    let stop = CancellationToken::new();
    let mut o = SimOptions::new(sip_addr, own_fixture("h264_g711a_8k.rtp"));
    o.password = "pw-hole-15".into();
    o.first_id = "34020000001320000777".into();
    let stats = camera::spawn(o, stop.clone()).await.unwrap();
    let t0 = Instant::now();
    while SimStats::get(&stats.registered) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the camera registers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let channel = camera::channel_id("34020000001320000777", 0);
    let t0 = Instant::now();
    while !gb.device("34020000001320000777").is_some_and(|d| d.channels.iter().any(|c| c.device_id == channel)) {
        assert!(t0.elapsed() < Duration::from_secs(5), "its catalog arrives despite the flood");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = gb.play(None, &channel, None).await.expect("play is not refused by a full transaction table");
    gb.wait_keyframe(&info.stream).await.expect("media");
    // The flooder got at most its share of queries in flight.
    let queries = tokio::task::block_in_place(|| {
        let mut buf = vec![0u8; 65_536];
        let mut seen = std::collections::HashSet::new();
        flooder.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        while let Ok((n, _)) = flooder.recv_from(&mut buf) {
            if let Ok(SipMessage::Request(r)) = sip::parse(&buf[..n]) {
                seen.insert(sip::header(&r.headers, "Call-ID").unwrap_or("").to_string());
            }
        }
        seen.len()
    });
    assert!(queries <= 40, "{queries} distinct queries in flight towards one address");
    assert!(queries > 0, "queries are sent, within the share");
    stop.cancel();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_budgeted_per_device_so_a_nat_neighbour_still_registers() {
    let mut cfg = test_config();
    cfg.sip.password = Some("pw-nat".into());
    cfg.sip.auth_failures_per_minute = 5;
    cfg.gb.query_on_register = false;
    let gw = start(cfg).await;
    let sip_addr = gw.sip_addr.unwrap();
    tokio::task::block_in_place(|| {
        // Two cameras behind one NAT address: one misconfigured, one right.
        let nat = udp("127.0.0.2");
        nat.set_read_timeout(Some(Duration::from_millis(150))).unwrap();
        let mut answered = 0;
        for i in 0..20 {
            if let 403 | 401 = register_digest(&nat, sip_addr, "34020000001320000501", "wrong", &format!("w{i}")) {
                answered += 1;
            }
        }
        assert!(answered <= 7, "the misconfigured camera is cut off ({answered} answers)");
        nat.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        assert_eq!(
            register_digest(&nat, sip_addr, "34020000001320000502", "pw-nat", "ok"),
            200,
            "its neighbour registers"
        );
    });
    gw.stop().await;
}
