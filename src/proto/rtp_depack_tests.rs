use bytes::Bytes;
use rand::{Rng, SeedableRng};

use super::*;
use crate::codec::rtp_pack;
use crate::proto::sdp;

/// SPS of the synthetic fixtures (x264, Main, 640x360).
const SPS: &[u8] = &[
    0x67, 0x4d, 0x40, 0x1e, 0xda, 0x02, 0x80, 0xbf, 0xe5, 0xc0, 0x44, 0x00, 0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x03,
    0x00, 0xc8, 0x3c, 0x58, 0xba, 0x80,
];
const PPS: &[u8] = &[0x68, 0xee, 0x3c, 0x80];

fn media(text: &str) -> SdpMedia {
    sdp::parse(format!("v=0\r\n{text}").as_bytes()).unwrap().media.remove(0)
}

fn h264_media(with_sprop: bool) -> SdpMedia {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::STANDARD;
    let sprop =
        if with_sprop { format!(";sprop-parameter-sets={},{}", e.encode(SPS), e.encode(PPS)) } else { String::new() };
    media(&format!("m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1{sprop}\r\n"))
}

fn pkt(seq: u16, ts: u32, marker: bool, pt: u8, payload: Bytes) -> RtpPacket {
    RtpPacket { ssrc: 1, seq, timestamp: ts, marker, payload_type: pt, payload }
}

fn avcc(nals: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for n in nals {
        write_avcc_nal(&mut v, n);
    }
    v
}

/// Packets of one access unit made by our own egress packetiser.
fn packets(codec: Codec, au: &[u8], max: usize, seq: &mut u16, ts: u32, pt: u8) -> Vec<RtpPacket> {
    let payloads = rtp_pack::packetize(codec, au, max);
    let n = payloads.len();
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            *seq = seq.wrapping_add(1);
            pkt(*seq, ts, i + 1 == n, pt, p)
        })
        .collect()
}

fn idr(len: usize) -> Vec<u8> {
    let mut v = vec![0x65, 0x88];
    v.extend((0..len).map(|i| (i % 251) as u8 | 1));
    v
}

fn slice(len: usize) -> Vec<u8> {
    let mut v = vec![0x41, 0x9a];
    v.extend((0..len).map(|i| (i % 253) as u8 | 1));
    v
}

#[test]
fn h264_single_stap_fu_round_trip_with_sprop() {
    let mut d = Depacketizer::new(&h264_media(true)).unwrap();
    assert!(d.config().is_some(), "sprop-parameter-sets give the config before any packet");
    let mut out = Vec::new();
    let mut seq = 65530u16; // wraps during the test
    let aud: &[u8] = &[0x09, 0xf0];
    let key = idr(5000);
    let p1 = slice(300);
    let p2 = slice(20);
    // An AUD is dropped; the keyframe lacks SPS/PPS in band and gets them from the SDP.
    for p in packets(Codec::H264, &avcc(&[aud, &key]), 1400, &mut seq, 1000, 96) {
        d.push(&p, &mut out);
    }
    for p in packets(Codec::H264, &avcc(&[&p1, &p2]), 1400, &mut seq, 4600, 96) {
        d.push(&p, &mut out); // STAP-A
    }
    assert_eq!(out.len(), 2);
    assert!(out[0].keyframe && !out[1].keyframe);
    assert_eq!(&out[0].data[..], &avcc(&[SPS, PPS, &key])[..]);
    assert_eq!(&out[1].data[..], &avcc(&[&p1, &p2])[..]);
    assert_eq!((out[0].pts, out[1].pts, out[1].dts), (1000, 4600, 4600));
    match &*out[0].config {
        CodecConfig::Video(v) => assert_eq!((v.width, v.height), (640, 360)),
        _ => panic!("video config"),
    }
    let s = d.stats();
    assert_eq!((s.frames, s.keyframes, s.lost, s.dropped_aus), (2, 1, 0, 0));
}

#[test]
fn h264_in_band_parameter_sets_and_first_keyframe_wait() {
    let mut d = Depacketizer::new(&h264_media(false)).unwrap();
    assert!(d.config().is_none());
    let mut out = Vec::new();
    let mut seq = 0;
    for p in packets(Codec::H264, &avcc(&[&slice(100)]), 1400, &mut seq, 0, 96) {
        d.push(&p, &mut out);
    }
    assert!(out.is_empty(), "no config yet: held");
    for p in packets(Codec::H264, &avcc(&[SPS, PPS, &idr(3000)]), 1400, &mut seq, 3600, 96) {
        d.push(&p, &mut out);
    }
    assert_eq!(out.len(), 1);
    assert!(out[0].keyframe);
    assert_eq!(out[0].nal_units().count(), 3, "in-band parameter sets are not doubled");
    assert_eq!(d.stats().held, 1);
}

#[test]
fn loss_drops_the_broken_access_unit_and_resumes_at_the_next_start() {
    let mut d = Depacketizer::new(&h264_media(true)).unwrap();
    let mut out = Vec::new();
    let mut seq = 100;
    let pk = packets(Codec::H264, &avcc(&[&idr(6000)]), 1000, &mut seq, 0, 96);
    assert!(pk.len() >= 5);
    for (i, p) in pk.iter().enumerate() {
        if i != 2 {
            d.push(p, &mut out); // a middle FU-A fragment is lost
        }
    }
    assert!(out.is_empty());
    assert_eq!((d.stats().lost, d.stats().dropped_aus), (1, 1));
    // The marker of the next AU is lost too: the timestamp change cuts it.
    let mut pk = packets(Codec::H264, &avcc(&[&idr(500)]), 1400, &mut seq, 3600, 96);
    pk.last_mut().unwrap().marker = false;
    for p in &pk {
        d.push(p, &mut out);
    }
    for p in packets(Codec::H264, &avcc(&[&slice(500)]), 1400, &mut seq, 7200, 96) {
        d.push(&p, &mut out);
    }
    assert_eq!(out.iter().map(|f| f.pts).collect::<Vec<_>>(), vec![3600, 7200]);
    // A packet lost right after a marker: the next AU may lack its head and is dropped too.
    seq = seq.wrapping_add(1);
    for p in packets(Codec::H264, &avcc(&[&slice(50)]), 1400, &mut seq, 10800, 96) {
        d.push(&p, &mut out);
    }
    assert_eq!(out.len(), 2);
    assert_eq!((d.stats().lost, d.stats().dropped_aus), (2, 2));
    // Late and duplicate packets are dropped, not treated as a restart.
    let dup = pkt(seq, 10800, true, 96, Bytes::from(slice(5)));
    d.push(&dup, &mut out);
    assert_eq!(d.stats().late, 1);
}

#[test]
fn access_units_are_bounded_in_bytes() {
    let mut d = Depacketizer::new(&h264_media(true)).unwrap().with_max_access_unit(MIN_MAX_AU);
    let mut out = Vec::new();
    let mut seq = 0;
    for p in packets(Codec::H264, &avcc(&[&idr(100_000)]), 1400, &mut seq, 0, 96) {
        d.push(&p, &mut out);
    }
    assert!(out.is_empty());
    assert_eq!(d.stats().oversize, 1);
    if let Inner::Video(v) = &d.inner {
        assert!(v.au.capacity() <= 2 * MIN_MAX_AU && v.fu.capacity() <= 2 * MIN_MAX_AU);
    }
    for p in packets(Codec::H264, &avcc(&[&idr(1000)]), 1400, &mut seq, 3600, 96) {
        d.push(&p, &mut out);
    }
    assert_eq!(out.len(), 1, "the next AU passes");
}

#[test]
fn h265_ap_and_fu_round_trip() {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::STANDARD;
    let vps: &[u8] = &[0x40, 0x01, 0x0c, 0x01];
    let sps: &[u8] = &[0x42, 0x01, 0x01, 0x01];
    let pps: &[u8] = &[0x44, 0x01, 0xc1, 0x72];
    let m = media(&format!(
        "m=video 0 RTP/AVP 98\r\na=rtpmap:98 H265/90000\r\na=fmtp:98 sprop-vps={};sprop-sps={};sprop-pps={}\r\n",
        e.encode(vps),
        e.encode(sps),
        e.encode(pps)
    ));
    let mut d = Depacketizer::new(&m).unwrap();
    assert_eq!(d.codec(), Codec::H265);
    let mut irap = vec![0x26, 0x01, 0xaf];
    irap.extend((0..4000).map(|i| (i % 200) as u8 + 1));
    let trail: &[u8] = &[0x02, 0x01, 0xd0, 0x11, 0x22];
    let mut out = Vec::new();
    let mut seq = 0;
    for p in packets(Codec::H265, &avcc(&[vps, sps, pps, &irap]), 1200, &mut seq, 9000, 98) {
        d.push(&p, &mut out);
    }
    for p in packets(Codec::H265, &avcc(&[trail, trail]), 1200, &mut seq, 12600, 98) {
        d.push(&p, &mut out);
    }
    assert_eq!(out.len(), 2);
    assert!(out[0].keyframe);
    assert_eq!(&out[0].data[..], &avcc(&[vps, sps, pps, &irap])[..]);
    assert_eq!(&out[1].data[..], &avcc(&[trail, trail])[..]);
}

#[test]
fn aac_hbr_single_multi_and_fragmented() {
    let m = media(
        "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/44100/2\r\n\
a=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1210\r\n",
    );
    let mut d = Depacketizer::new(&m).unwrap();
    match &*d.config().unwrap() {
        CodecConfig::Audio(a) => {
            assert_eq!((a.sample_rate, a.channels, a.asc.as_deref()), (44100, 2, Some(&[0x12, 0x10][..])))
        }
        _ => panic!(),
    }
    let mut out = Vec::new();
    let mut seq = 0;
    let a1 = vec![0x21u8; 300];
    for p in packets(Codec::Aac, &a1, 1400, &mut seq, 44100, 97) {
        d.push(&p, &mut out);
    }
    // Two AUs in one packet (headers: 13-bit size + 3-bit index / index delta).
    let mut p = vec![0, 32];
    p.extend_from_slice(&((10u16 << 3).to_be_bytes()));
    p.extend_from_slice(&((20u16 << 3).to_be_bytes()));
    p.extend(std::iter::repeat_n(0xAA, 10));
    p.extend(std::iter::repeat_n(0xBB, 20));
    seq += 1;
    d.push(&pkt(seq, 45124, true, 97, Bytes::from(p)), &mut out);
    // One AU of 3000 bytes in three fragments.
    let big = vec![0x42u8; 3000];
    let frags = packets(Codec::Aac, &big, 1100, &mut seq, 47172, 97);
    assert_eq!(frags.len(), 3);
    for p in &frags {
        d.push(p, &mut out);
    }
    assert_eq!(out.iter().map(|f| f.data.len()).collect::<Vec<_>>(), vec![300, 10, 20, 3000]);
    // 44100 Hz clock -> 90 kHz: 44100 -> 90000, +1024 samples each.
    assert_eq!(out.iter().map(|f| f.pts).collect::<Vec<_>>(), vec![90000, 92089, 94179, 96269]);
    // Loss inside a fragmented AU drops it; the following AU still arrives.
    let frags = packets(Codec::Aac, &big, 1100, &mut seq, 48196, 97);
    d.push(&frags[0], &mut out);
    d.push(&frags[2], &mut out);
    for p in packets(Codec::Aac, &a1, 1400, &mut seq, 49220, 97) {
        d.push(&p, &mut out);
    }
    assert_eq!(out.len(), 5);
    assert_eq!(d.stats().dropped_aus, 1);
}

#[test]
fn latm_with_stream_mux_config() {
    let m = media("m=audio 0 RTP/AVP 96\r\na=rtpmap:96 MP4A-LATM/44100/2\r\na=fmtp:96 cpresent=0;config=40002420\r\n");
    let mut d = Depacketizer::new(&m).unwrap();
    match &*d.config().unwrap() {
        CodecConfig::Audio(a) => {
            assert_eq!((a.sample_rate, a.channels, a.asc.as_deref()), (44100, 2, Some(&[0x12, 0x10][..])))
        }
        _ => panic!(),
    }
    let mut out = Vec::new();
    // PayloadLengthInfo 255 + 45 = 300 bytes, split over two packets.
    let mut el = vec![255u8, 45];
    el.extend(std::iter::repeat_n(0x11, 300));
    d.push(&pkt(1, 0, false, 96, Bytes::copy_from_slice(&el[..100])), &mut out);
    d.push(&pkt(2, 0, true, 96, Bytes::copy_from_slice(&el[100..])), &mut out);
    d.push(&pkt(3, 1024, true, 96, Bytes::from_static(&[3, 1, 2, 3])), &mut out);
    assert_eq!(out.iter().map(|f| f.data.len()).collect::<Vec<_>>(), vec![300, 3]);
    let m = media("m=audio 0 RTP/AVP 96\r\na=rtpmap:96 MP4A-LATM/44100/2\r\na=fmtp:96 config=40002420\r\n");
    assert!(matches!(Depacketizer::new(&m), Err(DepackError::Fmtp { param: "cpresent", .. })));
}

#[test]
fn g711_at_the_declared_rate_and_timestamp_wrap() {
    let m = media("m=audio 0 RTP/AVP 97\r\na=rtpmap:97 PCMA/16000\r\n");
    let mut d = Depacketizer::new(&m).unwrap();
    assert_eq!(d.codec(), Codec::G711A);
    let mut out = Vec::new();
    let start = u32::MAX - 319;
    for i in 0..4u32 {
        let ts = start.wrapping_add(i * 320);
        d.push(&pkt(i as u16, ts, true, 97, Bytes::from(vec![0xD5; 320])), &mut out);
    }
    d.push(&pkt(4, 0, true, 13, Bytes::from_static(&[0x40])), &mut out); // comfort noise
    assert_eq!(out.len(), 4);
    match &*out[0].config {
        CodecConfig::Audio(a) => assert_eq!((a.sample_rate, a.channels), (16000, 1)),
        _ => panic!(),
    }
    let steps: Vec<i64> = out.windows(2).map(|w| w[1].pts - w[0].pts).collect();
    assert_eq!(steps, vec![1800, 1800, 1800], "320 samples at 16 kHz = 20 ms, across the 32-bit wrap");
    assert_eq!(d.stats().wrong_payload_type, 1);
    let m = media("m=audio 0 RTP/AVP 8\r\n");
    let d = Depacketizer::new(&m).unwrap();
    assert_eq!((d.codec(), d.clock_rate()), (Codec::G711A, 8000));
    assert!(matches!(
        Depacketizer::new(&media("m=video 0 RTP/AVP 26\r\na=rtpmap:26 JPEG/90000\r\n")),
        Err(DepackError::Unsupported(_))
    ));
    assert!(matches!(
        Depacketizer::new(&media("m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/44100\r\n")),
        Err(DepackError::Fmtp { param: "sizelength", .. })
    ));
}

/// Random payloads, sequence numbers, timestamps and markers never panic any depacketizer, and
/// what comes out stays within the bound.
#[test]
fn random_input_never_panics() {
    let medias = [
        h264_media(true),
        media("m=video 0 RTP/AVP 96\r\na=rtpmap:96 H265/90000\r\na=fmtp:96 sprop-max-don-diff=2\r\n"),
        media("m=audio 0 RTP/AVP 96\r\na=rtpmap:96 mpeg4-generic/48000/2\r\na=fmtp:96 sizelength=13;indexlength=3;indexdeltalength=3;ctsdeltalength=7;dtsdeltalength=5;randomaccessindication=1;streamstateindication=4;config=1190\r\n"),
        media("m=audio 0 RTP/AVP 96\r\na=rtpmap:96 MP4A-LATM/44100/2\r\na=fmtp:96 cpresent=0;config=400024203fc0\r\n"),
        media("m=audio 0 RTP/AVP 0\r\n"),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for m in &medias {
        let mut d = Depacketizer::new(m).unwrap().with_max_access_unit(MIN_MAX_AU);
        let mut out = Vec::new();
        let mut seq: u16 = rng.gen();
        let mut ts: u32 = rng.gen();
        for _ in 0..20_000 {
            let len = rng.gen_range(0..1500);
            let mut p: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if !p.is_empty() && rng.gen_bool(0.5) {
                // Steer towards the interesting packet types.
                p[0] = [24u8, 28, 0x60 | 28, 48 << 1, 49 << 1, 0, 5][rng.gen_range(0..7)];
            }
            seq = seq.wrapping_add(if rng.gen_bool(0.95) { 1 } else { rng.gen() });
            if rng.gen_bool(0.3) {
                ts = ts.wrapping_add(rng.gen_range(0..5000));
            }
            let pt = if rng.gen_bool(0.98) { m.payload_type } else { rng.gen_range(0..128) };
            d.push(&pkt(seq, ts, rng.gen_bool(0.3), pt, Bytes::from(p)), &mut out);
            out.retain(|f| {
                assert!(f.data.len() <= MIN_MAX_AU + 1024);
                false
            });
        }
        assert_eq!(d.stats().packets, 20_000);
    }
    // And random SDP text.
    for _ in 0..2000 {
        let mut s = String::from("v=0\r\n");
        for _ in 0..rng.gen_range(0..12) {
            let line = match rng.gen_range(0..6) {
                0 => format!("m=audio {} RTP/AVP {}", rng.gen::<u32>(), rng.gen_range(0..300)),
                1 => format!(
                    "a=rtpmap:{} {}/{}/{}",
                    rng.gen_range(0..130),
                    ["PCMA", "H264", "MP4A-LATM", "mpeg4-generic", "H265"][rng.gen_range(0..5)],
                    rng.gen::<i64>(),
                    rng.gen::<i32>()
                ),
                2 => format!(
                    "a=fmtp:{} sizelength={};config={:x};cpresent=0;sprop-parameter-sets=Z0,aM",
                    rng.gen_range(90..100),
                    rng.gen_range(0..40),
                    rng.gen::<u64>()
                ),
                3 => "a=control:trackID=1".to_string(),
                4 => format!("m=video 0 RTP/AVP {}", rng.gen_range(90..100)),
                _ => String::from_utf8_lossy(
                    &(0..rng.gen_range(0..40)).map(|_| rng.gen_range(32u8..127)).collect::<Vec<_>>(),
                )
                .into_owned(),
            };
            s.push_str(&line);
            s.push_str("\r\n");
        }
        if let Ok(sdp) = sdp::parse(s.as_bytes()) {
            for m in &sdp.media {
                if let Ok(mut d) = Depacketizer::new(m) {
                    let mut out = Vec::new();
                    d.push(&pkt(0, 0, true, m.payload_type, Bytes::from_static(&[0, 16, 0, 8, 1, 2])), &mut out);
                }
            }
        }
    }
}

/// Decode times for B-frames: x264's pyramid order (I0 P4 B2 B1 B3 P8 ...) gives one frame per
/// frame, never after the PTS, from the first frame when the SPS says the depth, after one GOP
/// when it is learnt (a few frames pass their PTS meanwhile).
#[test]
fn dts_for_b_frames() {
    let order = [0i64, 4, 2, 1, 3, 8, 6, 5, 7, 12, 10, 9, 11];
    for signalled in [true, false] {
        let mut e = DtsEstimator::new();
        if signalled {
            e.signal_reorder(2);
        }
        let dts: Vec<i64> = order.iter().map(|p| e.next(p * 3600)).collect();
        assert!(dts.windows(2).all(|w| w[1] > w[0]), "{dts:?}");
        let from = if signalled { 0 } else { 7 };
        for (i, (&p, &d)) in order.iter().zip(&dts).enumerate().skip(from) {
            assert!(d <= p * 3600, "frame {i}: dts {d} after pts {}", p * 3600);
        }
        if signalled {
            assert_eq!(dts, (-2..11).map(|i| i * 3600).collect::<Vec<_>>());
        }
        assert_eq!(e.reorder(), 2);
    }
    // Without B-frames the DTS is the PTS.
    let mut e = DtsEstimator::new();
    assert_eq!((0..5).map(|i| e.next(i * 3000)).collect::<Vec<_>>(), vec![0, 3000, 6000, 9000, 12000]);
    // A sender restarting its clock far back starts over.
    assert_eq!(e.next(-900_000_000), -900_000_000);
}
