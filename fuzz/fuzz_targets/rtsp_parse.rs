//! The RTSP request parser and server session on arbitrary bytes: must never panic.
//!
//! Input layout: byte 0 = chunk size (the bytes are pushed into the parser in chunks of that
//! size, exercising every split point); the rest is the client -> server byte stream. Each
//! parsed request goes through a `ServerSession` with a fake environment that knows one stream.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use gbgate::codec::rtp_pack;
use gbgate::media::frame::{AudioConfig, Codec, CodecConfig, VideoConfig};
use gbgate::proto::rtsp::{Env, Input, Parser, Refusal, ServerSession, TrackDesc};
use gbgate::proto::sdp::Sdp;
use libfuzzer_sys::fuzz_target;

struct FuzzEnv(u32);

impl Env for FuzzEnv {
    fn tracks(&mut self, stream: &str) -> Option<Vec<TrackDesc>> {
        (stream == "rtp/0BEBC201").then(|| {
            vec![
                TrackDesc {
                    codec: Codec::H265,
                    config: Arc::new(CodecConfig::Video(VideoConfig {
                        vps: Some(Bytes::from_static(&[0x40, 0x01, 0x0c])),
                        sps: Bytes::from_static(&[0x42, 0x01, 0x01]),
                        pps: Bytes::from_static(&[0x44, 0x01]),
                        ..Default::default()
                    })),
                },
                TrackDesc {
                    codec: Codec::Aac,
                    config: Arc::new(CodecConfig::Audio(AudioConfig {
                        sample_rate: 16000,
                        channels: 1,
                        asc: Some(Bytes::from_static(&[0x14, 0x08])),
                    })),
                },
            ]
        })
    }
    fn bind_udp(&mut self, index: usize) -> Option<(u16, u16)> {
        (index < 2).then_some((50000, 50001))
    }
    fn random(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(1_103_515_245).wrapping_add(12345);
        self.0
    }
    /// Publishers (ANNOUNCE/SETUP record/RECORD) are accepted for names of even length.
    fn announce(&mut self, stream: &str, _query: &str, _sdp: &Sdp) -> Result<(), Refusal> {
        match stream.len() % 2 {
            0 => Ok(()),
            _ => Err(Refusal { status: 403, reason: "taken".into() }),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    let chunk = (chunk as usize).max(1);
    let mut parser = Parser::new();
    let mut session = ServerSession::new("S1".into(), 60);
    let mut env = FuzzEnv(1);
    'feed: for piece in rest.chunks(chunk) {
        parser.push(piece);
        loop {
            match parser.next_input() {
                Ok(None) => break,
                Ok(Some(Input::Interleaved { data, .. })) => assert!(data.len() <= u16::MAX as usize),
                Ok(Some(Input::Request(req))) => {
                    let (resp, _actions) = session.handle(&req, &mut env);
                    let bytes = resp.to_bytes();
                    assert!(bytes.starts_with(b"RTSP/1.0 "));
                }
                Err(_) => break 'feed,
            }
        }
        assert!(parser.buffered() <= gbgate::proto::rtsp::MAX_HEAD + gbgate::proto::rtsp::MAX_BODY + piece.len() + 4);
    }
    // The packetisers on the same bytes: payloads never exceed the limit.
    let max = 16 + (chunk % 200);
    for codec in [Codec::H264, Codec::H265, Codec::Aac, Codec::G711A] {
        for p in rtp_pack::packetize(codec, rest, max) {
            assert!(p.len() <= max);
        }
    }
});
