//! Demuxes the shared PS fixtures and checks them against their READMEs (and ffprobe).
//! Run in a worktree with `GBGATE_SHARED=/work/shared`.
use crate::common;
use std::path::PathBuf;

use gbgate::media::frame::{Codec, CodecConfig, Frame};
use gbgate::proto::ps::demux::{DemuxStats, PsDemuxer};

fn shared() -> Option<PathBuf> {
    let local = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"));
    if local.join("fixtures").is_dir() {
        return Some(local);
    }
    let p = PathBuf::from(std::env::var_os("GBGATE_SHARED")?);
    p.join("fixtures").is_dir().then_some(p)
}

macro_rules! fixture {
    ($rel:expr) => {
        match shared() {
            Some(s) => std::fs::read(s.join("fixtures").join($rel)).expect("read fixture"),
            None => {
                common::missing("ps_fixtures", "../shared/fixtures (set GBGATE_SHARED)");
                return;
            }
        }
    };
}

struct Out {
    frames: Vec<Frame>,
    stats: DemuxStats,
    vcfg: Option<CodecConfig>,
    acfg: Option<CodecConfig>,
}

fn demux_chunks(data: &[u8], mut next_len: impl FnMut() -> usize) -> Out {
    let mut d = PsDemuxer::new();
    let mut frames = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let n = next_len().clamp(1, data.len() - i);
        d.push(&data[i..i + n], &mut frames);
        i += n;
    }
    d.flush(&mut frames);
    Out {
        frames,
        stats: d.stats().clone(),
        vcfg: d.video_config().map(|c| (**c).clone()),
        acfg: d.audio_config().map(|c| (**c).clone()),
    }
}

/// Whole file, then random small chunks (xorshift, 1..=700 bytes): the frames must be identical.
fn demux(data: &[u8]) -> Out {
    let whole = demux_chunks(data, || usize::MAX);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let chunked = demux_chunks(data, || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        1 + (x % 700) as usize
    });
    assert_eq!(whole.frames.len(), chunked.frames.len(), "chunked demux differs");
    for (a, b) in whole.frames.iter().zip(&chunked.frames) {
        assert_eq!((a.codec, a.pts, a.dts, a.keyframe, &a.data), (b.codec, b.pts, b.dts, b.keyframe, &b.data));
    }
    whole
}

struct Summary {
    vcodec: Option<Codec>,
    video: usize,
    keys: usize,
    acodec: Option<Codec>,
    audio: usize,
}

fn summary(o: &Out) -> Summary {
    let v: Vec<&Frame> = o.frames.iter().filter(|f| matches!(f.codec, Codec::H264 | Codec::H265)).collect();
    let a: Vec<&Frame> = o.frames.iter().filter(|f| !matches!(f.codec, Codec::H264 | Codec::H265)).collect();
    let s = Summary {
        vcodec: v.first().map(|f| f.codec),
        video: v.len(),
        keys: v.iter().filter(|f| f.keyframe).count(),
        acodec: a.first().map(|f| f.codec),
        audio: a.len(),
    };
    println!(
        "video {:?} {} frames {} key, audio {:?} {} frames; {:?}",
        s.vcodec,
        s.video,
        s.keys,
        s.acodec,
        s.audio,
        o.stats.anomalies()
    );
    s
}

fn dims(o: &Out) -> (u32, u32) {
    match &o.vcfg {
        Some(CodecConfig::Video(v)) => (v.width, v.height),
        _ => (0, 0),
    }
}

fn audio_rate(o: &Out) -> u32 {
    match &o.acfg {
        Some(CodecConfig::Audio(a)) => a.sample_rate,
        _ => 0,
    }
}

fn video(o: &Out) -> Vec<&Frame> {
    o.frames.iter().filter(|f| matches!(f.codec, Codec::H264 | Codec::H265)).collect()
}

fn audio(o: &Out) -> Vec<&Frame> {
    o.frames.iter().filter(|f| !matches!(f.codec, Codec::H264 | Codec::H265)).collect()
}

fn nal_types(f: &Frame) -> Vec<u8> {
    f.nal_units().map(|n| if f.codec == Codec::H265 { (n[0] >> 1) & 0x3F } else { n[0] & 0x1F }).collect()
}

/// Checks shared by every synthetic file with video: 100 AUs, keyframes at PTS 0/180000-relative
/// positions 0 and 50, AVCC well formed, parameter sets in band on keyframes, no AUD.
fn check_synthetic_video(o: &Out, codec: Codec) {
    let v = video(o);
    assert_eq!(v.len(), 100);
    assert!(v.iter().all(|f| f.codec == codec));
    let keys: Vec<usize> = v.iter().enumerate().filter(|(_, f)| f.keyframe).map(|(i, _)| i).collect();
    assert_eq!(keys, vec![0, 50]);
    assert_eq!(dims(o), (640, 360));
    for f in &v {
        let total: usize = f.nal_units().map(|n| 4 + n.len()).sum();
        assert_eq!(total, f.data.len(), "AVCC framing covers the frame");
        let t = nal_types(f);
        assert!(!t.contains(&if codec == Codec::H265 { 35 } else { 9 }), "AUD removed");
        if f.keyframe {
            let ps: &[u8] = if codec == Codec::H265 { &[32, 33, 34] } else { &[7, 8] };
            assert!(ps.iter().all(|p| t.contains(p)), "parameter sets in band: {t:?}");
        }
    }
    // One config Arc for the whole stream (parameter sets never change here).
    assert!(v.windows(2).all(|w| std::sync::Arc::ptr_eq(&w[0].config, &w[1].config)));
}

#[test]
fn h264_g711a_8k() {
    let d = fixture!("synthetic/h264_g711a_8k.ps");
    let o = demux(&d);
    summary(&o);
    check_synthetic_video(&o, Codec::H264);
    let v = video(&o);
    assert_eq!(nal_types(v[0]), vec![6, 7, 8, 6, 5]);
    assert_eq!(nal_types(v[50]), vec![7, 8, 5]);
    for (k, f) in v.iter().enumerate() {
        assert_eq!((f.pts, f.dts), (k as i64 * 3600, k as i64 * 3600));
    }
    let a = audio(&o);
    assert_eq!(a.len(), 100);
    for (k, f) in a.iter().enumerate() {
        assert_eq!((f.codec, f.pts, f.data.len(), f.keyframe), (Codec::G711A, k as i64 * 3600, 320, true));
    }
    assert_eq!(audio_rate(&o), 8000);
    assert!(o.stats.anomalies().is_empty(), "{:?}", o.stats.anomalies());
    assert_eq!((o.stats.packs, o.stats.psm, o.stats.held_frames), (200, 2, 0));
}

#[test]
fn h264_g711u_16k() {
    let d = fixture!("synthetic/h264_g711u_16k.ps");
    let o = demux(&d);
    summary(&o);
    check_synthetic_video(&o, Codec::H264);
    let a = audio(&o);
    assert_eq!(a.len(), 100);
    assert!(a.iter().all(|f| f.codec == Codec::G711U && f.data.len() == 640));
    assert_eq!(audio_rate(&o), 16000);
    // Inferred from 640 B per 3600 ticks once three steps agree; every later frame says 16 kHz.
    match &*a[99].config {
        CodecConfig::Audio(c) => assert_eq!((c.sample_rate, c.channels), (16000, 1)),
        _ => panic!("audio config"),
    }
}

#[test]
fn h265_aac_16k() {
    let d = fixture!("synthetic/h265_aac_16k.ps");
    let o = demux(&d);
    summary(&o);
    check_synthetic_video(&o, Codec::H265);
    let v = video(&o);
    assert_eq!(nal_types(v[0]), vec![32, 33, 34, 39, 20]);
    assert_eq!(nal_types(v[50])[..3], [32, 33, 34]);
    assert_eq!(*nal_types(v[50]).last().unwrap(), 21, "second keyframe is a CRA");
    assert_eq!((v[0].pts, v[99].pts), (5760, 362160));
    let a = audio(&o);
    assert_eq!(a.len(), 64);
    assert!(a.iter().all(|f| f.codec == Codec::Aac));
    assert_eq!((a[0].pts, a[63].pts), (0, 362880));
    assert_eq!(a.iter().map(|f| f.data.len()).sum::<usize>(), 16990 - 64 * 7, "ES size minus ADTS headers");
    match o.acfg.as_ref().unwrap() {
        CodecConfig::Audio(c) => {
            assert_eq!((c.sample_rate, c.channels), (16000, 1));
            assert_eq!(c.asc.as_deref(), Some(&[0x14, 0x08][..]));
        }
        _ => panic!("audio config"),
    }
    match o.vcfg.as_ref().unwrap() {
        CodecConfig::Video(c) => assert!(c.vps.is_some() && c.profile == 1),
        _ => panic!("video config"),
    }
}

#[test]
fn h265_g711a_8k() {
    let d = fixture!("synthetic/h265_g711a_8k.ps");
    let o = demux(&d);
    summary(&o);
    check_synthetic_video(&o, Codec::H265);
    let a = audio(&o);
    assert_eq!(a.len(), 100);
    assert!(a.iter().all(|f| f.codec == Codec::G711A));
    assert_eq!(audio_rate(&o), 8000);
}

#[test]
fn h264_video_only() {
    let d = fixture!("synthetic/h264_video_only.ps");
    let o = demux(&d);
    summary(&o);
    check_synthetic_video(&o, Codec::H264);
    assert!(audio(&o).is_empty() && o.acfg.is_none());
}

#[test]
fn g711a_8k_audio_only() {
    let d = fixture!("synthetic/g711a_8k_audio_only.ps");
    let o = demux(&d);
    summary(&o);
    assert!(video(&o).is_empty() && o.vcfg.is_none());
    let a = audio(&o);
    assert_eq!(a.len(), 100);
    assert!(a.iter().enumerate().all(|(k, f)| f.codec == Codec::G711A && f.pts == k as i64 * 3600));
    assert_eq!(audio_rate(&o), 8000);
}

#[test]
fn h264_g711a_8k_wrap() {
    let d = fixture!("synthetic/h264_g711a_8k_wrap.ps");
    let o = demux(&d);
    summary(&o);
    check_synthetic_video(&o, Codec::H264);
    let v = video(&o);
    let first = (1i64 << 33) - 180000;
    for (k, f) in v.iter().enumerate() {
        assert_eq!(f.pts, first + k as i64 * 3600, "unwrapped across 2^33");
    }
    let a = audio(&o);
    assert_eq!(a.len(), 100);
    assert!(a.windows(2).all(|w| w[1].pts > w[0].pts));
    assert_eq!(a[99].pts, (1 << 33) + 176400);
    assert_eq!(o.stats.pts_wraps, 2, "one wrap per track");
    assert_eq!(o.stats.pack_stuffing, 200);
}

#[test]
fn h264_g711a_8k_faults_ps() {
    // The .ps is the clean PS with a +10 s jump from t=2 s; the demuxer reports it as is.
    let d = fixture!("synthetic/h264_g711a_8k_faults.ps");
    let o = demux(&d);
    summary(&o);
    check_synthetic_video(&o, Codec::H264);
    let v = video(&o);
    assert_eq!((v[49].pts, v[50].pts), (49 * 3600, 50 * 3600 + 900000));
    assert_eq!(audio(&o).len(), 100);
}

fn check_ffmpeg(o: &Out, first: i64, last: i64) {
    let v = video(o);
    assert_eq!(v.len(), 50);
    assert_eq!(dims(o), (320, 240));
    // ffprobe -v error -select_streams v:0 -show_entries frame=key_frame -of csv=p=0 -f mpeg:
    // 2 frames with key_frame=1 (ffprobe's count).
    assert_eq!(v.iter().filter(|f| f.keyframe).count(), 2);
    assert_eq!((v[0].pts, v[49].pts), (first, last));
    assert_eq!(o.stats.video_codec_sniffed, 1, "no PSM: codec sniffed");
    // No B-frames: PTS strictly increasing, the AUs without a PES PTS extrapolated by 3600.
    assert!(v.windows(2).all(|w| w[1].pts - w[0].pts == 3600), "{:?}", v.iter().map(|f| f.pts).collect::<Vec<_>>());
}

#[test]
fn ffmpeg_vob_h264() {
    let d = fixture!("synthetic/ffmpeg_vob_h264.ps");
    let o = demux(&d);
    summary(&o);
    check_ffmpeg(&o, 45000, 221400);
    assert_eq!(o.stats.skipped_pes, 1, "one 0xBE padding PES");
}

#[test]
fn ffmpeg_mpeg1_h264() {
    let d = fixture!("synthetic/ffmpeg_mpeg1_h264.ps");
    let o = demux(&d);
    summary(&o);
    // README's 45000..217800 is the range of PES PTS values; the 50th AU starts in a PES
    // without PTS and is extrapolated to 217800 + 3600 (ffprobe also shows N/A for it).
    check_ffmpeg(&o, 45000, 221400);
    assert_eq!(o.stats.mpeg1_packs, 23);
}

#[test]
fn hik_d1() {
    let d = fixture!("real/avstackdocs/hik_d1_h264_01e168e1.ps");
    let o = demux(&d);
    let s = summary(&o);
    assert_eq!((s.vcodec, s.video, s.audio), (Some(Codec::H264), 1347, 0));
    // ffprobe (-f mpeg, frame=key_frame) counts 54 keyframes; PROVENANCE says the same.
    assert_eq!(s.keys, 54);
    assert_eq!(dims(&o), (704, 576));
    let v = video(&o);
    assert_eq!(v[0].pts, 5476751910);
    assert!(v.windows(2).all(|w| w[1].pts - w[0].pts == 3600));
    assert_eq!((o.stats.psm_crc_wrong, o.stats.psm_crc_byteswapped, o.stats.skipped_pes), (54, 54, 54));
    assert_eq!(o.stats.pes, 1509);
    // The .264 is a superset of our video ES: every NAL we emit matches it, in order.
    let es = std::fs::read(shared().unwrap().join("fixtures/real/avstackdocs/hik_d1_h264_01e168e1.264")).unwrap();
    let ours: Vec<&[u8]> = v.iter().flat_map(|f| f.nal_units()).collect();
    let theirs: Vec<&[u8]> = gbgate::codec::nal::annexb_nals(&es).take(ours.len()).collect();
    assert_eq!(ours.len(), theirs.len());
    assert!(ours.iter().zip(&theirs).all(|(a, b)| a == b), "NALs byte-exact vs .264");
}

#[test]
fn hik_1080p() {
    let d = fixture!("real/avstackdocs/hik_1080p15_h264_02c27467.ps");
    let o = demux(&d);
    let s = summary(&o);
    assert_eq!((s.vcodec, s.video, s.audio), (Some(Codec::H264), 650, 0));
    // ffprobe (-f mpeg, frame=key_frame) counts 8 keyframes.
    assert_eq!(s.keys, 8);
    assert_eq!(dims(&o), (1920, 1080));
    assert_eq!(o.stats.garbage_bytes, 1651, "leading tail of a cut PES");
    assert_eq!(o.stats.psm_crc_zero, 8);
    let v = video(&o);
    assert_eq!((v[0].pts, v[649].pts), (672708000, 676602000));
}

#[test]
fn spvmn_audio_g711() {
    let d = fixture!("real/spvmn-tool/Audio_G711_PS2.mpg");
    let o = demux(&d);
    let s = summary(&o);
    assert_eq!((s.video, s.acodec), (0, Some(Codec::G711A)));
    // One frame per audio PES: 35 353 PES, including the 2 without a PES header.
    assert_eq!(s.audio, 35353);
    assert_eq!(o.stats.pes_without_header, 2);
    // es_map_length says 8 but the PSM holds 0x1B/E0 (10 bytes) and 0x90/C0: trusting the PSM
    // length finds the G.711A entry, so the codec comes from the PSM, not a default.
    assert_eq!((o.stats.psm_length_mismatch, o.stats.audio_codec_defaulted), (320, 0));
    assert_eq!(o.stats.psm_crc_wrong, 320);
    let a = audio(&o);
    assert!(a.iter().any(|f| f.dts == f.pts - 3600), "PES carry PTS and DTS = PTS - 3600");
    assert_eq!(audio_rate(&o), 8000);
}

#[test]
fn one_byte_at_a_time_matches_whole() {
    for f in ["synthetic/h265_aac_16k.ps", "synthetic/ffmpeg_mpeg1_h264.ps", "synthetic/h264_g711a_8k_wrap.ps"] {
        let d = fixture!(f);
        let whole = demux_chunks(&d, || usize::MAX);
        let bytes = demux_chunks(&d, || 1);
        assert_eq!(whole.frames.len(), bytes.frames.len(), "{f}");
        for (a, b) in whole.frames.iter().zip(&bytes.frames) {
            assert_eq!((a.codec, a.pts, a.dts, a.keyframe, &a.data), (b.codec, b.pts, b.dts, b.keyframe, &b.data));
        }
    }
}

/// Loss in the middle of the stream: the partial frame is dropped, video resumes at the next
/// keyframe (PTS 180000), audio resumes at the next pack.
#[test]
fn loss_holds_video_until_keyframe() {
    let d = fixture!("synthetic/h264_g711a_8k.ps");
    let mut dm = PsDemuxer::new();
    let mut out = Vec::new();
    let cut = d.len() / 4;
    dm.push(&d[..cut], &mut out);
    dm.lost();
    dm.push(&d[cut + 1000..], &mut out);
    dm.flush(&mut out);
    let v: Vec<&Frame> = out.iter().filter(|f| f.codec == Codec::H264).collect();
    let before = v.iter().filter(|f| f.pts < 180000).count();
    let after: Vec<i64> = v.iter().filter(|f| f.pts >= 180000).map(|f| f.pts).collect();
    assert!(before > 0 && before < 50);
    assert_eq!(after.len(), 50, "everything from the second keyframe on");
    assert!(v.iter().find(|f| f.pts >= 180000).unwrap().keyframe);
    let st = dm.stats();
    assert_eq!(st.resyncs, 1);
    assert!(st.held_frames > 0 && st.dropped_frames >= 1, "{st:?}");
    assert_eq!(st.video_frames as usize, v.len());
}

/// Release-mode throughput: `cargo test --release --test ps_fixtures throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let d = fixture!("synthetic/h264_g711a_8k.ps");
    let mut big = Vec::new();
    for _ in 0..30 {
        big.extend_from_slice(&d); // PTS restarts each copy; fine for a speed test
    }
    let t = std::time::Instant::now();
    let mut n = 0;
    for _ in 0..5 {
        let mut dm = PsDemuxer::new();
        let mut out = Vec::with_capacity(8192);
        for c in big.chunks(1400) {
            dm.push(c, &mut out);
            n += out.len();
            out.clear();
        }
        dm.flush(&mut out);
    }
    let secs = t.elapsed().as_secs_f64();
    println!("{:.2} GB/s ({} frames)", (big.len() * 5) as f64 / secs / 1e9, n);
}

/// Mutation fuzz over the real fixtures (bit flips, truncations, random losses): must never
/// panic. `cargo test --release --test ps_fixtures fuzz_fixtures -- --ignored`.
#[test]
#[ignore]
fn fuzz_fixtures() {
    let Some(s) = shared() else { return };
    let mut x: u64 = 0xDEAD_BEEF_1234_5678;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for f in [
        "synthetic/h265_aac_16k.ps",
        "synthetic/ffmpeg_mpeg1_h264.ps",
        "synthetic/h264_g711a_8k_wrap.ps",
        "real/avstackdocs/hik_d1_h264_01e168e1.ps",
        "real/spvmn-tool/Audio_G711_PS2.mpg",
        "real/avstackdocs/gb_live_media_udp_hik_nonps.rtp",
    ] {
        let base = std::fs::read(s.join("fixtures").join(f)).unwrap();
        let base = &base[..base.len().min(400_000)];
        for _ in 0..40 {
            let mut d = base.to_vec();
            for _ in 0..(rnd() % 200) {
                let i = rnd() as usize % d.len();
                d[i] = rnd() as u8;
            }
            let mut dm = PsDemuxer::new();
            let mut out = Vec::new();
            let mut i = 0;
            while i < d.len() {
                let n = (1 + rnd() as usize % 3000).min(d.len() - i);
                dm.push(&d[i..i + n], &mut out);
                if rnd() % 100 == 0 {
                    dm.lost();
                }
                i += n;
                out.clear();
            }
            dm.flush(&mut out);
            let _ = dm.stats().anomalies();
        }
    }
}

/// RTP labelled PS that is not PS (PROVENANCE 1d): no sync, no frames, everything counted as garbage.
#[test]
fn hik_nonps_finds_no_sync() {
    let d = fixture!("real/avstackdocs/gb_live_media_udp_hik_nonps.rtp");
    let o = demux(&d);
    assert!(o.frames.is_empty());
    assert_eq!(o.stats.packs, 0);
    assert!(o.stats.garbage_bytes + 3 >= d.len() as u64);
}
