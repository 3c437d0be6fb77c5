//! Every failed step of play on demand names the step, over the API and RTSP: no device (404),
//! offline (503), no answer to the INVITE (504), INVITE refused (502), no media (504). The device
//! is a raw UDP socket speaking SIP by hand, so each step can be made to fail on purpose.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use gbgate::proto::sip::digest;

const DEV: &str = "34020000001320000077";
const CHANNEL: &str = "34020000001310000077";
const PASSWORD: &str = "12345678";

/// What the device does with an INVITE.
const IGNORE: u8 = 0;
const REFUSE: u8 = 1;
const ACCEPT_NO_MEDIA: u8 = 2;

fn register(local: SocketAddr, cseq: u32, expires: u32, auth: Option<&str>) -> String {
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    format!(
        "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKr{cseq}\r\n\
From: <sip:{DEV}@3402000000>;tag=7\r\nTo: <sip:{DEV}@3402000000>\r\nCall-ID: {DEV}-reg\r\nCSeq: {cseq} REGISTER\r\n\
Contact: <sip:{DEV}@{local}>\r\n{auth}Expires: {expires}\r\nContent-Length: 0\r\n\r\n"
    )
}

fn status_of(text: &str) -> Option<u16> {
    text.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

fn header_value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

/// REGISTER (with `expires`) answering the digest challenge; returns the final status.
fn register_with_digest(s: &UdpSocket, sip: SocketAddr, cseq: u32, expires: u32) -> u16 {
    let local = s.local_addr().unwrap();
    s.send_to(register(local, cseq, expires, None).as_bytes(), sip).unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, _) = s.recv_from(&mut buf).expect("an answer to REGISTER");
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert_eq!(status_of(&text), Some(401), "{text}");
    let www = header_value(&text, "WWW-Authenticate").unwrap();
    let uri = "sip:34020000002000000001@3402000000";
    let auth = digest::answer(www, "REGISTER", uri, DEV, PASSWORD, "c0ffee").unwrap();
    s.send_to(register(local, cseq + 1, expires, Some(&auth)).as_bytes(), sip).unwrap();
    let (n, _) = s.recv_from(&mut buf).expect("an answer to the authenticated REGISTER");
    status_of(&String::from_utf8_lossy(&buf[..n])).unwrap_or(0)
}

/// A response to `request` copying its Via, From, To (tagged), Call-ID and CSeq.
fn respond(request: &str, code: u16, reason: &str, body: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for line in request.lines() {
        let name = line.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
        match name.as_str() {
            "via" | "from" | "call-id" | "cseq" => out += &format!("{line}\r\n"),
            "to" if line.contains("tag=") => out += &format!("{line}\r\n"),
            "to" => out += &format!("{line};tag=dev77\r\n"),
            _ => {}
        }
    }
    if !body.is_empty() {
        out += &format!("Contact: <sip:{DEV}@127.0.0.1>\r\nContent-Type: application/sdp\r\n");
    }
    out + &format!("Content-Length: {}\r\n\r\n{body}", body.len())
}

/// Answers the gateway's requests on `s` until `stop`: INVITEs as `mode` says, the rest 200.
fn device_loop(s: UdpSocket, mode: Arc<AtomicU8>, invites: Arc<AtomicUsize>, stop: Arc<AtomicU8>) {
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = vec![0u8; 65_536];
    while stop.load(Ordering::Relaxed) == 0 {
        let Ok((n, from)) = s.recv_from(&mut buf) else { continue };
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        let method = text.split_whitespace().next().unwrap_or("");
        let answer = match method {
            "INVITE" => {
                invites.fetch_add(1, Ordering::Relaxed);
                match mode.load(Ordering::Relaxed) {
                    IGNORE => None,
                    REFUSE => Some(respond(&text, 486, "Busy Here", "")),
                    _ => {
                        let ssrc = text.lines().find_map(|l| l.strip_prefix("y=")).unwrap_or("0100000001").trim();
                        let sdp = format!(
                            "v=0\r\no={DEV} 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=video 9 RTP/AVP 96\r\na=rtpmap:96 PS/90000\r\na=sendonly\r\ny={ssrc}\r\n"
                        );
                        Some(respond(&text, 200, "OK", &sdp))
                    }
                }
            }
            "ACK" | "" => None,
            m if m.starts_with("SIP/") => None,
            _ => Some(respond(&text, 200, "OK", "")),
        };
        if let Some(a) = answer {
            let _ = s.send_to(a.as_bytes(), from);
        }
    }
}

async fn play(api: SocketAddr, device: &str) -> (u16, String) {
    let path = format!("/api/v1/devices/{device}/channels/{CHANNEL}/play");
    let req = http_request("POST", &path, &api.to_string(), "Content-Type: application/json\r\n", "{}");
    let (status, _, body) = http_raw(api, req).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_step_of_play_on_demand_is_named_with_its_status() {
    let mut cfg = test_config();
    cfg.sip.password = Some(PASSWORD.into());
    cfg.gb.query_on_register = false;
    cfg.gb.invite_timeout = gbgate::config::HumanDuration(Duration::from_secs(2));
    cfg.gb.media_timeout = gbgate::config::HumanDuration(Duration::from_secs(2));
    let gw = start(cfg).await;
    let (sip, api) = (gw.sip_addr.unwrap(), gw.api_addr);

    // No device owns the channel: 404, over the API and RTSP alike.
    let (status, body) = play(api, "34020000001320000099").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no device"), "{body}");
    let url = format!("rtsp://{}/gb/34020000001310999999", gw.rtsp_addr.unwrap());
    let (ok, _, err) =
        run_program("ffprobe", &["-v", "error", "-rtsp_transport", "tcp", &url], Duration::from_secs(20)).await;
    assert!(!ok && err.contains("404"), "{err}");

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let s = sock.try_clone().unwrap();
    let code = tokio::task::spawn_blocking(move || register_with_digest(&s, sip, 1, 3600)).await.unwrap();
    assert_eq!(code, 200);
    let (mode, invites, stop) =
        (Arc::new(AtomicU8::new(IGNORE)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU8::new(0)));
    let device = {
        let (s, mode, invites, stop) = (sock.try_clone().unwrap(), mode.clone(), invites.clone(), stop.clone());
        std::thread::spawn(move || device_loop(s, mode, invites, stop))
    };

    // The device never answers the INVITE: 504, "no answer".
    let (status, body) = play(api, DEV).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("no answer"), "{body}");
    assert!(invites.load(Ordering::Relaxed) >= 1, "an INVITE was sent");

    // It refuses: 502, with the device's status.
    mode.store(REFUSE, Ordering::Relaxed);
    let before = invites.load(Ordering::Relaxed);
    let (status, body) = play(api, DEV).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("refused") && body.contains("486"), "{body}");
    assert!(invites.load(Ordering::Relaxed) > before, "the failed session was not reused: a new INVITE");

    // It accepts but sends nothing: 504, "no media".
    mode.store(ACCEPT_NO_MEDIA, Ordering::Relaxed);
    let before = invites.load(Ordering::Relaxed);
    let (status, body) = play(api, DEV).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("no media"), "{body}");
    assert!(invites.load(Ordering::Relaxed) > before, "a new INVITE");

    // It unregisters: 503, "offline".
    stop.store(1, Ordering::Relaxed);
    device.join().unwrap();
    let code = tokio::task::spawn_blocking(move || register_with_digest(&sock, sip, 10, 0)).await.unwrap();
    assert_eq!(code, 200);
    let (status, body) = play(api, DEV).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("offline"), "{body}");
    gw.stop().await;
}
