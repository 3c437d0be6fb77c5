//! Demuxes the shared PS fixtures and checks them against their READMEs (and ffprobe).
//! Run in a worktree with `GBGATE_SHARED=/work/shared`.
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
                println!("skipped: ../shared/fixtures not present");
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

#[test]
fn explore() {
    let Some(s) = shared() else { return };
    for f in [
        "synthetic/h264_g711a_8k.ps",
        "synthetic/h264_g711u_16k.ps",
        "synthetic/h265_aac_16k.ps",
        "synthetic/h265_g711a_8k.ps",
        "synthetic/h264_video_only.ps",
        "synthetic/g711a_8k_audio_only.ps",
        "synthetic/h264_g711a_8k_wrap.ps",
        "synthetic/h264_g711a_8k_faults.ps",
        "synthetic/ffmpeg_vob_h264.ps",
        "synthetic/ffmpeg_mpeg1_h264.ps",
        "real/avstackdocs/hik_d1_h264_01e168e1.ps",
        "real/avstackdocs/hik_1080p15_h264_02c27467.ps",
        "real/spvmn-tool/Audio_G711_PS2.mpg",
    ] {
        let d = std::fs::read(s.join("fixtures").join(f)).unwrap();
        print!("{f}: ");
        let o = demux(&d);
        summary(&o);
        println!("   dims {:?} rate {} stats {:?}", dims(&o), audio_rate(&o), o.stats);
    }
}
