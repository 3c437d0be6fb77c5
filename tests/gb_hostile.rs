//! Hostile SIP peers (issue 8): numbers out of range, forged requests from other addresses,
//! empty and oversized catalogs, registration floods. Every test talks to an in-process gateway
//! over real loopback sockets with raw datagrams; 127.0.0.2 and up stand for other hosts.
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{http_get, start, test_config};
use gbgate::proto::sip::{self, rsip::SipMessage};

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
