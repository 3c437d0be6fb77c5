//! The RTSP pull client on arbitrary server answers: must never panic, and the reader must stay
//! bounded.
//!
//! Input layout: byte 0 = chunk size (the bytes are pushed into the reader in chunks of that
//! size, exercising every split point), byte 1 = options (bit 0: start with UDP, bit 1: allow
//! the fallback); the rest is the server -> client byte stream. Every answer goes to the client
//! whatever request is in flight; a DESCRIBE answer's body goes through the SDP parser and its
//! controls into SETUP, as the driver does.
#![no_main]

use gbgate::proto::rtsp::{MAX_BODY, MAX_HEAD};
use gbgate::proto::rtsp_client::{parse_url, Client, Incoming, Lower, Reader, Step};
use gbgate::proto::sdp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    let Some((&flags, rest)) = rest.split_first() else { return };
    let chunk = (chunk as usize).max(1);
    let first = if flags & 1 == 1 { Lower::Udp } else { Lower::Tcp };
    let url = parse_url("rtsp://user:pw@127.0.0.1:554/live/ch1").unwrap();
    let mut client = Client::new(url, first, flags & 2 == 2, 7);
    let mut reader = Reader::new();
    let mut now = 0u64;
    let _ = client.start(now);
    'feed: for piece in rest.chunks(chunk) {
        reader.push(piece);
        loop {
            now += 500;
            let answer = match reader.next_message() {
                Ok(None) => break,
                Ok(Some(Incoming::Response(a))) => a,
                Ok(Some(Incoming::Interleaved { data, .. })) => {
                    assert!(data.len() <= u16::MAX as usize);
                    continue;
                }
                Ok(Some(Incoming::Request { .. })) => continue,
                Err(_) => break 'feed,
            };
            let mut step = match client.on_response(answer, now) {
                Ok(s) => s,
                Err(_) => break 'feed,
            };
            loop {
                step = match step {
                    Step::Send(req) => {
                        assert!(req.ends_with(b"\r\n\r\n"));
                        break;
                    }
                    Step::Idle | Step::Playing => break,
                    Step::Described { sdp: body, base } => {
                        let Ok(desc) = sdp::parse(&body) else { break 'feed };
                        let urls: Vec<String> = desc.media.iter().map(|m| m.control_url(&base)).collect();
                        let aggregate = desc.control.as_deref().map(|c| sdp::resolve_control(&base, Some(c)));
                        match client.setup(urls, aggregate, now) {
                            Ok(s) => s,
                            Err(_) => break 'feed,
                        }
                    }
                    Step::NeedUdpPorts { index } => {
                        let port = 50000 + 2 * index as u16;
                        match client.udp_ports(index, port, port + 1, now) {
                            Ok(req) => Step::Send(req),
                            Err(_) => break 'feed,
                        }
                    }
                };
            }
            if let Some(at) = client.next_keepalive_ms() {
                let _ = client.poll_keepalive(at.max(now));
            }
        }
        assert!(reader.buffered() <= MAX_HEAD + MAX_BODY + piece.len() + 4 + u16::MAX as usize);
    }
    let _ = client.teardown(now);
});
