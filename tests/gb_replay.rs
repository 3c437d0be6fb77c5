//! The real GB28181 SIP captures (../shared/fixtures/real/*/sip/*.pcapng): every SIP message in
//! them parses (with its MANSCDP or SDP body), and the device side of each exchange replayed
//! against gbgate over UDP gets the answers a platform owes it. The Hikvision live INVITE
//! answer is replayed too: gbgate INVITEs a fake device that answers with the captured SDP, and
//! must ACK and re-key the session to the answer's `y=`.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{shared_or_skip, start, test_config};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use gbgate::proto::sip::rsip::SipMessage;
use gbgate::proto::sip::{self, manscdp, sdp};

/// UDP payloads of a little-endian Ethernet pcapng, with (src, dst) addresses.
fn udp_payloads(path: &Path) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    let data = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 12 <= data.len() {
        let rd = |o: usize| u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]);
        let (btype, blen) = (rd(pos), rd(pos + 4) as usize);
        if blen < 12 || pos + blen > data.len() {
            break;
        }
        if btype == 6 {
            let cap = rd(pos + 20) as usize;
            let frame = &data[pos + 28..(pos + 28 + cap).min(pos + blen)];
            if let Ok(p) = SlicedPacket::from_ethernet(frame) {
                if let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(udp))) = (&p.net, &p.transport) {
                    let src = SocketAddr::new(ip.header().source_addr().into(), udp.source_port());
                    let dst = SocketAddr::new(ip.header().destination_addr().into(), udp.destination_port());
                    out.push((src, dst, udp.payload().to_vec()));
                }
            }
        }
        pos += blen;
    }
    out
}

fn sip_captures(shared: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for vendor in std::fs::read_dir(shared.join("real")).unwrap().flatten() {
        let dir = vendor.path().join("sip");
        if let Ok(rd) = std::fs::read_dir(&dir) {
            files.extend(rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "pcapng")));
        }
    }
    files.sort();
    files
}

#[test]
fn every_sip_message_in_the_real_captures_parses_with_its_body() {
    let Some(shared) = shared_or_skip("every_sip_message_in_the_real_captures_parses_with_its_body") else { return };
    let (mut messages, mut manscdp_bodies, mut sdp_bodies, mut keepalives) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for file in sip_captures(&shared) {
        for (src, _, payload) in udp_payloads(&file) {
            let first_line = payload.split(|b| *b == b'\n').next().unwrap_or(&[]);
            let looks_sip = payload.starts_with(b"SIP/2.0") || first_line.windows(8).any(|w| w == b" SIP/2.0");
            if !looks_sip {
                // The captures hold no IP fragments; what is not SIP is the 4-byte NAT keepalive
                // some devices send to port 5060. Anything bigger would be a message we missed.
                assert!(payload.len() <= 4, "{} from {src}: {} bytes that are not SIP", file.display(), payload.len());
                keepalives += 1;
                continue;
            }
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            let msg = match sip::parse(&payload) {
                Ok(m) => m,
                Err(e) => {
                    failures.push(format!("{name} from {src}: {e}"));
                    continue;
                }
            };
            messages += 1;
            let headers = sip::headers_of(&msg);
            let body = match &msg {
                SipMessage::Request(r) => &r.body,
                SipMessage::Response(r) => &r.body,
            };
            let ctype = sip::header(headers, "Content-Type").unwrap_or("").to_ascii_lowercase();
            if body.is_empty() {
                continue;
            }
            if ctype.contains("manscdp") {
                manscdp_bodies += 1;
                if let Err(e) = manscdp::parse(body) {
                    failures.push(format!("{name} MANSCDP: {e}"));
                }
            } else if ctype.contains("sdp") {
                sdp_bodies += 1;
                if let Err(e) = sdp::parse(body) {
                    failures.push(format!("{name} SDP: {e}"));
                }
            }
        }
    }
    println!("{messages} SIP messages, {manscdp_bodies} MANSCDP and {sdp_bodies} SDP bodies parsed; {keepalives} 4-byte NAT keepalives skipped");
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(messages > 500 && manscdp_bodies > 300 && sdp_bodies >= 6, "{messages} {manscdp_bodies} {sdp_bodies}");
}

/// What a platform owes the device for one replayed request.
fn expected_status(method: &str, registered: bool, auth: bool) -> Option<u16> {
    match method {
        "REGISTER" if auth => Some(401),
        "REGISTER" => Some(200),
        "MESSAGE" if registered => Some(200),
        "MESSAGE" => Some(404),
        "NOTIFY" | "INFO" | "OPTIONS" => Some(200),
        "BYE" => Some(481),
        _ => None,
    }
}

fn exchange(sock: &UdpSocket, to: SocketAddr, bytes: &[u8]) -> Option<gbgate::proto::sip::rsip::Response> {
    sock.send_to(bytes, to).unwrap();
    let mut buf = vec![0u8; 65_536];
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        let Ok((n, _)) = sock.recv_from(&mut buf) else { return None };
        match sip::parse(&buf[..n]) {
            Ok(SipMessage::Response(r)) => return Some(r),
            // The gateway's own queries (DeviceInfo, Catalog after a REGISTER): not ours to check.
            _ => continue,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_requests_replayed_from_the_captures_get_correct_answers() {
    let Some(shared) = shared_or_skip("device_requests_replayed_from_the_captures_get_correct_answers") else { return };
    // No password: the captured REGISTERs register; with one, every captured REGISTER (its
    // digest answers someone else's nonce) must be challenged again with algorithm=MD5.
    for auth in [false, true] {
        let mut cfg = test_config();
        cfg.gb.query_on_register = false;
        if auth {
            cfg.sip.password = Some("12345678".into());
        }
        let gw = start(cfg).await;
        let sip_addr = gw.sip_addr.unwrap();
        let mut checked = 0;
        for file in sip_captures(&shared) {
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            let payloads = udp_payloads(&file);
            // The device is whoever sends REGISTER or Keepalive; the rest of its requests follow.
            let device_ip = payloads
                .iter()
                .find(|(_, _, p)| p.starts_with(b"REGISTER") || p.windows(9).any(|w| w == b"Keepalive"))
                .map(|(s, _, _)| s.ip());
            let Some(device_ip) = device_ip else { continue };
            let result = tokio::task::spawn_blocking(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                let mut registered = false;
                let mut checked = 0;
                let mut errors = Vec::new();
                for (src, _, payload) in payloads {
                    if src.ip() != device_ip {
                        continue;
                    }
                    let Ok(SipMessage::Request(req)) = sip::parse(&payload) else { continue };
                    let method = req.method.to_string();
                    let Some(want) = expected_status(&method, registered, auth) else { continue };
                    let Some(resp) = exchange(&sock, sip_addr, &payload) else {
                        errors.push(format!("{name}: {method}: no answer"));
                        continue;
                    };
                    let got = resp.status_code.code();
                    checked += 1;
                    if got != want {
                        errors.push(format!("{name}: {method}: got {got}, want {want}"));
                        continue;
                    }
                    let h = |n: &str| sip::header(&resp.headers, n).map(str::to_string);
                    // Answers echo the transaction and carry the NAT-safe Via.
                    if h("Call-ID") != sip::header(&req.headers, "Call-ID").map(str::to_string) {
                        errors.push(format!("{name}: {method}: Call-ID not echoed"));
                    }
                    if !h("Via").unwrap_or_default().contains("received=127.0.0.1") {
                        errors.push(format!("{name}: {method}: Via lacks received"));
                    }
                    if method == "REGISTER" && got == 200 {
                        let expires = sip::header(&req.headers, "Expires").unwrap_or("").to_string();
                        if h("Expires") != Some(expires.clone()) || h("Contact").is_none() || h("Date").is_none() {
                            errors.push(format!("{name}: REGISTER 200 lacks Contact/Expires/Date"));
                        }
                        registered = expires != "0";
                    }
                    if got == 401 && !h("WWW-Authenticate").unwrap_or_default().contains("algorithm=MD5") {
                        errors.push(format!("{name}: 401 without algorithm=MD5"));
                    }
                }
                (checked, errors)
            })
            .await
            .unwrap();
            assert!(result.1.is_empty(), "auth={auth}: {:#?}", result.1);
            checked += result.0;
        }
        println!("auth={auth}: {checked} replayed device requests answered correctly");
        assert!(checked > 100, "{checked}");
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_captured_hikvision_invite_answer_is_acked_and_rekeys_the_session() {
    let Some(shared) = shared_or_skip("the_captured_hikvision_invite_answer_is_acked_and_rekeys_the_session") else {
        return;
    };
    let capture = shared.join("real/avstackdocs/sip/sip_20_live_invite_signaling.pcapng");
    let answer = udp_payloads(&capture)
        .into_iter()
        .filter_map(|(_, _, p)| match sip::parse(&p) {
            Ok(SipMessage::Response(r)) if r.status_code.code() == 200 && !r.body.is_empty() => Some(r),
            _ => None,
        })
        .next()
        .expect("the 200 OK with SDP");
    let mut cfg = test_config();
    cfg.gb.query_on_register = false;
    let gw = start(cfg).await;
    let sip_addr = gw.sip_addr.unwrap();
    let gb = gw.gb.clone().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let device = "33010602001310019325";
    let local = sock.local_addr().unwrap();
    let register = format!(
        "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK1\r\n\
From: <sip:{device}@3402000000>;tag=1\r\nTo: <sip:{device}@3402000000>\r\nCall-ID: r1\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:{device}@{local}>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
    );
    let resp = tokio::task::block_in_place(|| exchange(&sock, sip_addr, register.as_bytes())).unwrap();
    assert_eq!(resp.status_code.code(), 200);
    let play = {
        let gb = gb.clone();
        tokio::spawn(async move { gb.play(None, device, None).await })
    };
    // Receive the INVITE, answer with the captured SDP (y=0060205514) in our dialog.
    let (invite, ack) = tokio::task::block_in_place(|| {
        let mut buf = vec![0u8; 65_536];
        let (n, from) = sock.recv_from(&mut buf).unwrap();
        let Ok(SipMessage::Request(invite)) = sip::parse(&buf[..n]) else { panic!("INVITE expected") };
        let offer = sdp::parse(&invite.body).unwrap();
        let ok = sip::response(
            &invite,
            200,
            "3330812776",
            from,
            vec![("Contact", format!("<sip:{device}@{local}>")), ("Content-Type", "Application/SDP".into())],
            answer.body.clone(),
        );
        sock.send_to(&ok.to_bytes(), from).unwrap();
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        let Ok(SipMessage::Request(ack)) = sip::parse(&buf[..n]) else { panic!("ACK expected") };
        (offer, ack)
    });
    assert_eq!(ack.method.to_string(), "ACK");
    assert!(sip::header(&ack.headers, "To").unwrap().contains("tag=3330812776"));
    let info = play.await.unwrap().unwrap();
    assert_ne!(invite.ssrc, Some(60_205_514));
    assert_eq!(info.ssrc, "0060205514", "re-keyed to the answer's y=");
    assert_eq!(info.stream, format!("gb/{device}"));
    // Stop: BYE in the dialog.
    let stop = {
        let gb = gb.clone();
        tokio::spawn(async move { gb.stop(&format!("gb/{device}")).await })
    };
    tokio::task::block_in_place(|| {
        let mut buf = vec![0u8; 65_536];
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        let Ok(SipMessage::Request(bye)) = sip::parse(&buf[..n]) else { panic!("BYE expected") };
        assert_eq!(bye.method.to_string(), "BYE");
        assert_eq!(sip::header(&bye.headers, "Call-ID"), sip::header(&ack.headers, "Call-ID"));
    });
    stop.await.unwrap().unwrap();
    // Again, and this time the device hangs up: BYE from the device gets 200 and ends the session.
    let play = {
        let gb = gb.clone();
        tokio::spawn(async move { gb.play(None, device, None).await })
    };
    let call_id = tokio::task::block_in_place(|| {
        let mut buf = vec![0u8; 65_536];
        let (n, from) = sock.recv_from(&mut buf).unwrap();
        let Ok(SipMessage::Request(invite)) = sip::parse(&buf[..n]) else { panic!("INVITE expected") };
        let ok = sip::response(
            &invite,
            200,
            "99",
            from,
            vec![("Contact", format!("<sip:{device}@{local}>"))],
            answer.body.clone(),
        );
        sock.send_to(&ok.to_bytes(), from).unwrap();
        let _ack = sock.recv_from(&mut buf).unwrap();
        sip::header(&invite.headers, "Call-ID").unwrap().to_string()
    });
    play.await.unwrap().unwrap();
    let bye = format!(
        "BYE sip:34020000002000000001@{sip_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKbye1\r\n\
From: <sip:{device}@3402000000>;tag=99\r\nTo: <sip:34020000002000000001@3402000000>;tag=x\r\nCall-ID: {call_id}\r\n\
CSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let resp = tokio::task::block_in_place(|| exchange(&sock, sip_addr, bye.as_bytes())).unwrap();
    assert_eq!(resp.status_code.code(), 200);
    assert!(gb.sessions().await.is_empty(), "the device's BYE ended the session");
    gw.stop().await;
}
