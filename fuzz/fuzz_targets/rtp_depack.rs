//! The RTSP SDP parser, then an RTP depacketizer fed packets cut from the input.
//!
//! Input layout: byte 0 = which SDP (the input's own text up to a NUL, or one of the fixed
//! descriptions below); then records `[flags seq_step ts_step len][len bytes of payload]`.
#![no_main]

use bytes::Bytes;
use gbgate::proto::rtp::RtpPacket;
use gbgate::proto::rtp_depack::{Depacketizer, MIN_MAX_AU};
use gbgate::proto::sdp;
use libfuzzer_sys::fuzz_target;

const SDPS: [&str; 5] = [
    "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;sprop-parameter-sets=Z01AHtoCgL/lwEQAAAMABAAAAwDIPFi6gA==,aO48gA==\r\n",
    "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H265/90000\r\na=fmtp:96 sprop-max-don-diff=1\r\n",
    "v=0\r\nm=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/44100/2\r\na=fmtp:97 mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;ctsdeltalength=5;randomaccessindication=1;config=1210\r\n",
    "v=0\r\nm=audio 0 RTP/AVP 96\r\na=rtpmap:96 MP4A-LATM/44100/2\r\na=fmtp:96 cpresent=0;config=400024203fc0\r\n",
    "v=0\r\nm=audio 0 RTP/AVP 8\r\n",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let (text, mut rest): (Vec<u8>, &[u8]) = if (sel as usize) < SDPS.len() {
        (SDPS[sel as usize].as_bytes().to_vec(), rest)
    } else {
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        (rest[..end].to_vec(), &rest[(end + 1).min(rest.len())..])
    };
    let Ok(desc) = sdp::parse(&text) else { return };
    assert!(desc.media.len() <= sdp::MAX_MEDIA);
    for m in &desc.media {
        let _ = m.control_url("rtsp://127.0.0.1/a");
        let Ok(d) = Depacketizer::new(m) else { continue };
        let mut d = d.with_max_access_unit(MIN_MAX_AU);
        let mut seq = 0u16;
        let mut ts = 0u32;
        let mut out = Vec::new();
        let mut fed = 0;
        while rest.len() >= 4 {
            let (flags, step, tstep, len) = (rest[0], rest[1], rest[2], rest[3] as usize * 8);
            rest = &rest[4..];
            let payload = &rest[..len.min(rest.len())];
            rest = &rest[payload.len()..];
            seq = seq.wrapping_add(step as u16);
            ts = ts.wrapping_add(tstep as u32 * 100);
            let pkt = RtpPacket {
                ssrc: 1,
                seq,
                timestamp: ts,
                marker: flags & 1 != 0,
                payload_type: if flags & 2 != 0 { flags >> 2 } else { m.payload_type },
                payload: Bytes::copy_from_slice(payload),
            };
            d.push(&pkt, &mut out);
            fed += 1;
            if flags & 0x80 != 0 {
                d.reset();
            }
            for f in out.drain(..) {
                assert!(f.data.len() <= MIN_MAX_AU + 1024);
                assert!(f.keyframe || f.codec.kind() == gbgate::frame::MediaKind::Video);
            }
        }
        assert_eq!(d.stats().packets, fed);
    }
});
