//! Quirk tests on hand-built program streams. Every case is also fed one byte at a time and
//! must give the same frames.
use super::*;

const SPS: &[u8] = &[
    0x67, 0x4d, 0x40, 0x1e, 0xda, 0x02, 0x80, 0xbf, 0xe5, 0xc0, 0x44, 0x00, 0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x03,
    0x00, 0xc8, 0x3c, 0x58, 0xba, 0x80,
];
const PPS: &[u8] = &[0x68, 0xef, 0x3c, 0x80];
const IDR: &[u8] = &[0x65, 0x88, 0x84, 0x21, 0x43];
const P: &[u8] = &[0x41, 0x9a, 0x22, 0x11];
const AUD: &[u8] = &[0x09, 0xf0];
const H265_VPS: &str = "40010c01ffff01600000030090000003000003003fba0240";
const H265_SPS: &str = "42010101600000030090000003000003003fa005020171f2e5ba4a4c2f016808000003000800000300c840";
const H265_PPS: &str = "4401c073c189";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn annexb(nals: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, n) in nals.iter().enumerate() {
        // x264 style: 4-byte start code first, then 3-byte ones
        v.extend_from_slice(if i == 0 { &[0, 0, 0, 1][..] } else { &[0, 0, 1][..] });
        v.extend_from_slice(n);
    }
    v
}

fn key_au() -> Vec<u8> {
    annexb(&[SPS, PPS, IDR])
}

fn p_au() -> Vec<u8> {
    annexb(&[P])
}

fn pack(stuffing: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 1, 0xBA, 0x44, 0, 4, 0, 4, 1, 0x01, 0x89, 0xC3, 0xF8 | stuffing.len() as u8];
    v.extend_from_slice(stuffing);
    v
}

fn ts5(flag: u8, t: u64) -> [u8; 5] {
    [
        (flag << 4) | (((t >> 30) & 7) as u8) << 1 | 1,
        (t >> 22) as u8,
        (((t >> 15) & 0x7F) as u8) << 1 | 1,
        (t >> 7) as u8,
        ((t & 0x7F) as u8) << 1 | 1,
    ]
}

fn pes(id: u8, pts: Option<u64>, payload: &[u8]) -> Vec<u8> {
    let mut hdr = vec![0x80, 0, 0];
    if let Some(p) = pts {
        hdr = vec![0x84, 0x80, 5];
        hdr.extend_from_slice(&ts5(2, p));
    }
    let len = hdr.len() + payload.len();
    let mut v = vec![0, 0, 1, id, (len >> 8) as u8, len as u8];
    v.extend(hdr);
    v.extend_from_slice(payload);
    v
}

fn psm(entries: &[(u8, u8)], good_crc: bool) -> Vec<u8> {
    let mut map = Vec::new();
    for &(st, id) in entries {
        map.extend_from_slice(&[st, id, 0, 0]);
    }
    let mut body = vec![0xE0, 0xFF, 0, 0];
    body.extend_from_slice(&(map.len() as u16).to_be_bytes());
    body.extend(map);
    let len = body.len() + 4;
    let mut v = vec![0, 0, 1, 0xBC, (len >> 8) as u8, len as u8];
    v.extend(body);
    let crc = crc32_mpeg2(&v);
    v.extend_from_slice(&if good_crc { crc.to_be_bytes() } else { crc.to_le_bytes() });
    v
}

fn h264_psm() -> Vec<u8> {
    psm(&[(0x1B, 0xE0), (0x90, 0xC0)], true)
}

/// A clean H.264 + G.711A stream: `n` frames, keyframes every `gop`, PTS k*3600.
fn stream(n: u64, gop: u64) -> Vec<u8> {
    let mut v = Vec::new();
    for k in 0..n {
        v.extend(pack(&[]));
        if k % gop == 0 {
            v.extend(h264_psm());
            v.extend(pes(0xE0, Some(k * 3600), &key_au()));
        } else {
            v.extend(pes(0xE0, Some(k * 3600), &p_au()));
        }
        v.extend(pack(&[]));
        v.extend(pes(0xC0, Some(k * 3600), &[0xD5; 320]));
    }
    v
}

fn run_with(data: &[u8], chunk: usize) -> (Vec<Frame>, DemuxStats) {
    let mut d = PsDemuxer::new();
    let mut out = Vec::new();
    for c in data.chunks(chunk.max(1)) {
        d.push(c, &mut out);
    }
    d.flush(&mut out);
    (out, d.stats().clone())
}

fn run(data: &[u8]) -> (Vec<Frame>, DemuxStats) {
    let (a, st) = run_with(data, usize::MAX);
    for chunk in [1, 7] {
        let (b, _) = run_with(data, chunk);
        assert_eq!(a.len(), b.len(), "chunk {chunk}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.codec, x.pts, x.dts, x.keyframe, &x.data), (y.codec, y.pts, y.dts, y.keyframe, &y.data));
        }
    }
    (a, st)
}

fn vids(f: &[Frame]) -> Vec<&Frame> {
    f.iter().filter(|f| f.codec.kind() == crate::frame::MediaKind::Video).collect()
}

fn auds(f: &[Frame]) -> Vec<&Frame> {
    f.iter().filter(|f| f.codec.kind() == crate::frame::MediaKind::Audio).collect()
}

#[test]
fn clean_stream() {
    let (f, st) = run(&stream(6, 3));
    let v = vids(&f);
    assert_eq!(v.len(), 6);
    assert_eq!(v.iter().map(|f| f.pts).collect::<Vec<_>>(), vec![0, 3600, 7200, 10800, 14400, 18000]);
    assert!(v[0].keyframe && v[3].keyframe && !v[1].keyframe);
    let nals: Vec<&[u8]> = v[0].nal_units().collect();
    assert_eq!(nals, vec![SPS, PPS, IDR]);
    assert_eq!(&v[1].data[..], &[0, 0, 0, 4, 0x41, 0x9a, 0x22, 0x11]);
    assert_eq!(auds(&f).len(), 6);
    assert!(st.anomalies().is_empty(), "{:?}", st.anomalies());
    match &*v[0].config {
        CodecConfig::Video(c) => {
            assert_eq!((c.width, c.height, c.profile, c.level), (640, 360, 77, 30))
        }
        _ => panic!(),
    }
}

#[test]
fn pack_stuffing_with_start_code_is_skipped_by_length() {
    let mut s = Vec::new();
    s.extend(pack(&[0xFF, 0xFF, 0x00, 0x00, 0x01, 0xAF])); // ZLM #2325: counter holds 00 00 01
    s.extend(h264_psm());
    s.extend(pes(0xE0, Some(0), &key_au()));
    s.extend(pack(&[0xFF, 0xFF, 0x00, 0x00, 0x01, 0xBA]));
    s.extend(pes(0xE0, Some(3600), &p_au()));
    let (f, st) = run(&s);
    assert_eq!(vids(&f).len(), 2);
    assert_eq!((st.pack_stuffing, st.resyncs, st.garbage_bytes), (2, 0, 0));
}

#[test]
fn mpeg1_pack_and_pes() {
    let mut s = Vec::new();
    for (k, au) in [key_au(), p_au()].iter().enumerate() {
        s.extend([0, 0, 1, 0xBA, 0x21, 0, 1, 0, 1, 0x80, 0x1b, 0x91]); // 12-byte MPEG-1 pack
                                                                       // MPEG-1 PES header: stuffing FF, STD buffer 01xxxxxx xx, PTS '0010'
        let mut body = vec![0xFF, 0x60, 0xE6];
        body.extend(ts5(2, 45000 + k as u64 * 3600));
        body.extend_from_slice(au);
        s.extend([0, 0, 1, 0xE2, 0, body.len() as u8]);
        s.extend(body);
    }
    s.extend([0, 0, 1, 0xB9]);
    let (f, st) = run(&s);
    let v = vids(&f);
    assert_eq!(v.iter().map(|f| f.pts).collect::<Vec<_>>(), vec![45000, 48600]);
    assert_eq!((st.mpeg1_packs, st.mpeg1_pes, st.video_codec_sniffed), (2, 2, 1));
}

#[test]
fn hikvision_empty_pack() {
    let mut s = Vec::new();
    s.extend([0, 0, 1, 0xBA]); // pack header with no body
    s.extend(h264_psm());
    s.extend(pes(0xE0, Some(0), &key_au()));
    s.extend([0, 0, 1, 0xBA]);
    s.extend(pes(0xE0, Some(3600), &p_au()));
    let (f, st) = run(&s);
    assert_eq!(vids(&f).len(), 2);
    assert_eq!((st.empty_packs, st.packs, st.resyncs), (2, 2, 0));
}

#[test]
fn psm_bad_crc_and_broken_descriptor_are_tolerated() {
    let mut bad = psm(&[(0x1B, 0xE0), (0x91, 0xC0)], false);
    let mut s = pack(&[]);
    s.append(&mut bad);
    // A second PSM whose G.711U entry claims a 200-byte descriptor that is not there.
    let mut p2 = psm(&[(0x1B, 0xE0), (0x91, 0xC0)], true);
    let n = p2.len();
    p2[n - 4 - 2] = 200;
    s.extend(p2);
    s.extend(pes(0xE0, Some(0), &key_au()));
    s.extend(pes(0xC0, Some(0), &[0xFF; 160]));
    let (f, st) = run(&s);
    assert_eq!(vids(&f).len(), 1);
    assert_eq!(auds(&f)[0].codec, Codec::G711U);
    assert_eq!((st.psm, st.psm_crc_wrong, st.psm_crc_byteswapped, st.psm_broken_descriptors), (2, 2, 1, 1));
    assert!(st.anomalies().iter().any(|a| a.contains("PSM CRC wrong in 2 PSMs (not enforced")));
}

#[test]
fn lying_pes_length_resyncs_at_next_pack() {
    let mut s = stream(1, 1);
    s.extend(pack(&[]));
    let mut liar = pes(0xE0, Some(3600), &p_au());
    liar[5] -= 2; // length 2 short: the next bytes are not a start code
    s.extend(liar);
    s.extend(stream(4, 2)); // PTS restart at 0 is fine for this test
    let (f, st) = run(&s);
    assert_eq!((st.lying_lengths, st.resyncs), (1, 1));
    assert!(st.dropped_frames >= 1);
    let v = vids(&f);
    // frame 0 of the first stream, then the new stream from its keyframe on
    assert_eq!(v.len(), 1 + 4);
    assert!(v[1].keyframe);
}

#[test]
fn unbounded_video_pes() {
    let mut s = pack(&[]);
    s.extend(h264_psm());
    let mut u = pes(0xE0, Some(0), &key_au());
    u[4] = 0;
    u[5] = 0; // length 0: runs to the next start code >= B9
    s.extend(u);
    s.extend(pes(0xC0, Some(0), &[0xD5; 320]));
    let mut u = pes(0xE0, Some(3600), &p_au());
    u[4] = 0;
    u[5] = 0;
    s.extend(u);
    s.extend(pack(&[]));
    let (f, st) = run(&s);
    let v = vids(&f);
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].nal_units().collect::<Vec<_>>(), vec![SPS, PPS, IDR]);
    assert_eq!(&v[1].data[4..], P);
    assert_eq!((st.unbounded_pes, auds(&f).len()), (2, 1));
}

#[test]
fn pes_without_header_is_payload_without_pts() {
    let mut s = pack(&[]);
    s.extend(pes(0xC0, Some(9000), &[0xD5; 160]));
    s.extend([0, 0, 1, 0xC0, 0, 160]); // spvmn: payload right after the length field
    s.extend([0xD5; 160]);
    s.extend(pes(0xC0, Some(9000 + 3600), &[0xD5; 160]));
    let (f, st) = run(&s);
    let a = auds(&f);
    assert_eq!(
        a.iter().map(|f| (f.pts, f.data.len())).collect::<Vec<_>>(),
        vec![(9000, 160), (10800, 160), (12600, 160)]
    );
    assert_eq!((st.pes_without_header, st.audio_codec_defaulted), (1, 1));
    assert_eq!(a[0].codec, Codec::G711A);
}

#[test]
fn loss_mid_frame_drops_partial_and_holds_until_keyframe() {
    let s = stream(6, 3);
    // cut inside frame 1's slice: frame 0 is complete (frame 1's start code was seen), frame 1 is not
    let cut = s.windows(5).position(|w| w == [0, 0, 0, 1, 0x41]).unwrap() + 6;
    let mut d = PsDemuxer::new();
    let mut out = Vec::new();
    d.push(&s[..cut], &mut out);
    d.lost();
    // resume in the middle of frame 2's pack
    let resume = cut + 200;
    d.push(&s[resume..], &mut out);
    d.flush(&mut out);
    let v = vids(&out);
    assert_eq!(v.iter().map(|f| f.pts).collect::<Vec<_>>(), vec![0, 10800, 14400, 18000]);
    let st = d.stats();
    assert_eq!(st.resyncs, 1);
    assert!(st.dropped_frames >= 1);
    assert!(st.garbage_bytes > 0);
    assert!(v[1].keyframe);
}

#[test]
fn pts_33_bit_wrap_is_unwrapped() {
    let mut s = Vec::new();
    let start = (1u64 << 33) - 7200;
    for k in 0..4u64 {
        s.extend(pack(&[]));
        if k == 0 {
            s.extend(h264_psm());
        }
        let pts = (start + k * 3600) & ((1 << 33) - 1);
        s.extend(pes(0xE0, Some(pts), &if k == 0 { key_au() } else { p_au() }));
    }
    let (f, st) = run(&s);
    let pts: Vec<i64> = vids(&f).iter().map(|f| f.pts).collect();
    let st0 = start as i64;
    assert_eq!(pts, vec![st0, st0 + 3600, st0 + 7200, st0 + 10800]);
    assert_eq!(st.pts_wraps, 1);
}

#[test]
fn garbage_prefix_is_skipped() {
    let mut s = vec![0x12, 0x00, 0x00, 0x01, 0xE0, 0x55, 0x00, 0x00];
    s.extend(stream(2, 1));
    let (f, st) = run(&s);
    assert_eq!(vids(&f).len(), 2);
    assert_eq!((st.garbage_bytes, st.resyncs), (8, 0));
}

#[test]
fn au_splitting_across_and_within_pes() {
    let mut s = pack(&[]);
    s.extend(h264_psm());
    // AUD + key AU, with the IDR slice split over two PES (the second without PTS),
    // then two P AUs in one PES: the second has no PTS of its own and is extrapolated.
    let mut a = annexb(&[AUD, SPS, PPS]);
    a.extend_from_slice(&[0, 0, 1, 0x65, 0x88]);
    s.extend(pes(0xE0, Some(90000), &a));
    s.extend(pes(0xE0, None, &[0x84, 0x21, 0x43]));
    let mut two = annexb(&[AUD, P]);
    two.extend(annexb(&[AUD, P]));
    s.extend(pes(0xE0, Some(93600), &two));
    // A second slice of the same picture (first_mb != 0) stays in that AU.
    s.extend(pes(0xE0, Some(100800), &annexb(&[P, &[0x41, 0x1a, 0x01]])));
    let (f, st) = run(&s);
    let v = vids(&f);
    assert_eq!(v.iter().map(|f| f.pts).collect::<Vec<_>>(), vec![90000, 93600, 97200, 100800]);
    assert_eq!(v[0].nal_units().collect::<Vec<_>>(), vec![SPS, PPS, IDR]);
    assert_eq!(v[3].nal_units().count(), 2);
    assert_eq!(st.auds_dropped, 3);
}

#[test]
fn h265_labelled_h264_is_detected() {
    let (vps, sps, pps) = (hex(H265_VPS), hex(H265_SPS), hex(H265_PPS));
    let idr = [0x28, 0x01, 0xaf, 0x11];
    let trail = [0x02, 0x01, 0xd0, 0x22];
    let mut s = pack(&[]);
    s.extend(h264_psm()); // Keda: says 0x1B
    s.extend(pes(0xE0, Some(0), &annexb(&[&vps, &sps, &pps, &idr])));
    s.extend([0, 0, 1, 0xBA]); // Hikvision H.265 empty pack
    s.extend(pes(0xE0, Some(3600), &annexb(&[&trail])));
    let (f, st) = run(&s);
    let v = vids(&f);
    assert_eq!(v.len(), 2);
    assert!(v.iter().all(|f| f.codec == Codec::H265));
    assert!(v[0].keyframe && !v[1].keyframe);
    assert_eq!(st.psm_codec_lies, 1);
    match &*v[0].config {
        CodecConfig::Video(c) => assert_eq!((c.width, c.height, c.vps.is_some()), (640, 360, true)),
        _ => panic!(),
    }
}

fn adts(len: usize) -> Vec<u8> {
    let mut v = vec![0xFF, 0xF1, 0x60, 0x40, 0, 0, 0xFC];
    v[3] |= ((len >> 11) & 3) as u8;
    v[4] = ((len >> 3) & 0xFF) as u8;
    v[5] = (((len & 7) << 5) as u8) | 0x1F;
    v.resize(len, 0x21);
    v
}

#[test]
fn aac_labelled_g711_and_multi_frame_pes() {
    let mut s = pack(&[]);
    s.extend(psm(&[(0x90, 0xC0)], true)); // Dahua: AAC labelled G.711A
    let mut two = adts(40);
    two.extend(adts(50));
    s.extend(pes(0xC0, Some(1000), &two));
    s.extend(pes(0xC0, None, &adts(30)));
    let (f, st) = run(&s);
    let a = auds(&f);
    assert!(a.iter().all(|f| f.codec == Codec::Aac));
    assert_eq!(a.iter().map(|f| (f.pts, f.data.len())).collect::<Vec<_>>(), vec![(1000, 33), (6760, 43), (12520, 23)]);
    assert_eq!(st.psm_codec_lies, 1);
    match &*a[0].config {
        CodecConfig::Audio(c) => {
            assert_eq!((c.sample_rate, c.channels, c.asc.as_deref()), (16000, 1, Some(&[0x14, 0x08][..])))
        }
        _ => panic!(),
    }
}

#[test]
fn g711_16k_inferred_from_bytes_per_step() {
    let mut s = Vec::new();
    for k in 0..6u64 {
        s.extend(pack(&[]));
        if k == 0 {
            s.extend(psm(&[(0x91, 0xC0)], true));
        }
        s.extend(pes(0xC0, Some(k * 3600), &[0xFF; 640]));
    }
    let (f, _) = run(&s);
    let a = auds(&f);
    let rate = |f: &Frame| match &*f.config {
        CodecConfig::Audio(c) => c.sample_rate,
        _ => 0,
    };
    assert_eq!(rate(a[0]), 8000);
    assert_eq!(rate(a[5]), 16000);
    assert!(std::sync::Arc::ptr_eq(&a[4].config, &a[5].config));
}

#[test]
fn memory_stays_bounded() {
    let mut d = PsDemuxer::new();
    let mut out = Vec::new();
    let junk = vec![0x47u8; 1 << 20];
    for _ in 0..8 {
        d.push(&junk, &mut out);
    }
    assert!(d.tail.len() <= 3);
    // Video PES that never contain a start code: the pending AU is capped.
    let mut s = pack(&[]);
    s.extend(h264_psm());
    s.extend(pes(0xE0, Some(0), &key_au()));
    d.push(&s, &mut out);
    let body = vec![0x11u8; 60000];
    for _ in 0..100 {
        d.push(&pes(0xE0, None, &body), &mut out);
    }
    assert!(d.video.buffered() <= crate::proto::ps::es::DEFAULT_MAX_AU);
    assert!(d.stats().oversize_drops >= 1);
}

#[test]
fn never_panics_on_mutated_input() {
    let base = {
        let mut s = stream(8, 4);
        s.extend(pes(0xBD, None, &[1, 2, 3]));
        s.extend(psm(&[(0x0F, 0xC0), (0x24, 0xE0)], false));
        s.extend(pes(0xC0, Some(5), &adts(40)));
        s
    };
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..300 {
        let mut s = base.clone();
        for _ in 0..(rnd() % 16) {
            let i = (rnd() as usize) % s.len();
            s[i] = rnd() as u8;
        }
        let mut d = PsDemuxer::new();
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            let n = 1 + (rnd() as usize % 300).min(s.len() - i - 1);
            d.push(&s[i..i + n], &mut out);
            if rnd() % 50 == 0 {
                d.lost();
            }
            i += n;
        }
        d.flush(&mut out);
        let _ = d.stats().anomalies();
    }
}
