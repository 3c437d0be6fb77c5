//! Builds the project's own GB28181 fixtures from elementary streams (see tools/make-fixtures.sh).
//!
//! `mux`: splits Annex B video at AUD NALs (one AU each), G.711 into 40 ms frames and ADTS into
//! frames, interleaves them by PTS as cameras do (video first at equal PTS), muxes each with
//! [`PsMuxer`] and writes `<name>.ps` and `<name>.rtp` (`[u16 BE len][RTP]`), plus a stats JSON.
//! `summarize`: merges stats files into `expected.json` and the table in `README.md`.
use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use gbgate::media::frame::Codec;
use gbgate::proto::ps::mux::{PsMuxer, RtpPacketizer};
use serde_json::{json, Value};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Mux(MuxArgs),
    Summarize {
        /// Directory that receives expected.json and README.md.
        #[arg(long)]
        out_dir: PathBuf,
        /// Stats files written by `mux`, in table order.
        stats: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct MuxArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    out_dir: PathBuf,
    /// Where to write this fixture's measured values (JSON).
    #[arg(long)]
    stats: PathBuf,
    /// h264 | h265
    #[arg(long)]
    video_codec: Option<String>,
    /// Annex B elementary stream with an AUD before every access unit.
    #[arg(long)]
    video: Option<PathBuf>,
    /// ffprobe's view of the video ES: "codec_name,width,height,nb_read_frames,keyframes".
    #[arg(long)]
    video_probe: Option<String>,
    /// g711a | g711u | aac
    #[arg(long)]
    audio_codec: Option<String>,
    /// Raw G.711 bytes, or ADTS for AAC.
    #[arg(long)]
    audio: Option<PathBuf>,
    /// G.711 sample rate (nothing in the stream says it); AAC takes it from the ADTS header.
    #[arg(long)]
    sample_rate: Option<u32>,
    /// RTP SSRC, GB style decimal (e.g. 0200000001).
    #[arg(long)]
    ssrc: u32,
    /// Video frame duration in 90 kHz ticks (25 fps = 3600).
    #[arg(long, default_value_t = 3600)]
    frame_ticks: i64,
}

fn codec(name: &str) -> Result<Codec> {
    Ok(match name {
        "h264" => Codec::H264,
        "h265" => Codec::H265,
        "g711a" => Codec::G711A,
        "g711u" => Codec::G711U,
        "aac" => Codec::Aac,
        _ => bail!("unknown codec {name}"),
    })
}

/// Start-code positions (index of the first 0 of `00 00 01`, or of `00 00 00 01`) and NAL header.
fn nal_starts(es: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut i = 0;
    while i + 3 <= es.len() {
        if es[i] == 0 && es[i + 1] == 0 && es[i + 2] == 1 {
            let sc = if i > 0 && es[i - 1] == 0 { i - 1 } else { i };
            v.push((sc, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    v
}

/// Access units split at AUDs, each with its keyframe flag (IDR for H.264, IRAP for H.265).
fn split_video(es: &[u8], codec: Codec) -> Result<Vec<(Bytes, bool)>> {
    let nal_type = |hdr: u8| {
        if codec == Codec::H264 {
            hdr & 0x1f
        } else {
            (hdr >> 1) & 0x3f
        }
    };
    let (aud, is_key): (u8, fn(u8) -> bool) = match codec {
        Codec::H264 => (9, |t| t == 5),
        _ => (35, |t| (16..=21).contains(&t)),
    };
    let nals: Vec<(usize, u8)> =
        nal_starts(es).into_iter().filter(|&(_, h)| h < es.len()).map(|(sc, h)| (sc, nal_type(es[h]))).collect();
    let cuts: Vec<usize> = nals.iter().filter(|&&(_, t)| t == aud).map(|&(sc, _)| sc).collect();
    ensure!(!cuts.is_empty(), "no AUD NAL units in the video; encode with the *_metadata=aud=insert bsf");
    let mut aus = Vec::new();
    for (k, &start) in cuts.iter().enumerate() {
        let start = if k == 0 { 0 } else { start };
        let end = cuts.get(k + 1).copied().unwrap_or(es.len());
        let key = nals.iter().any(|&(sc, t)| sc >= start && sc < end && is_key(t));
        aus.push((Bytes::copy_from_slice(&es[start..end]), key));
    }
    Ok(aus)
}

/// ADTS frames and the sample rate from the first header.
fn split_adts(data: &[u8]) -> Result<(Vec<Bytes>, u32)> {
    const RATES: [u32; 13] = [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];
    let mut frames = Vec::new();
    let mut rate = 0;
    let mut pos = 0;
    while pos < data.len() {
        let h = data.get(pos..pos + 7).context("truncated ADTS header")?;
        ensure!(h[0] == 0xFF && h[1] & 0xF0 == 0xF0, "lost ADTS sync at offset {pos}");
        let len = ((h[3] as usize & 3) << 11) | ((h[4] as usize) << 3) | (h[5] as usize >> 5);
        ensure!(len >= 7 && pos + len <= data.len(), "bad ADTS frame length {len} at offset {pos}");
        if rate == 0 {
            rate = *RATES.get(((h[2] >> 2) & 0xF) as usize).context("bad ADTS sampling index")?;
        }
        frames.push(Bytes::copy_from_slice(&data[pos..pos + len]));
        pos += len;
    }
    Ok((frames, rate))
}

struct Unit {
    codec: Codec,
    pts: i64,
    key: bool,
    data: Bytes,
}

fn mux(a: MuxArgs) -> Result<()> {
    let mut units: Vec<Unit> = Vec::new();
    let mut stats = json!({ "name": a.name, "ssrc": a.ssrc, "ssrc_hex": format!("0x{:08X}", a.ssrc) });
    let vcodec = a.video_codec.as_deref().map(codec).transpose()?;
    let acodec = a.audio_codec.as_deref().map(codec).transpose()?;
    if let (Some(vc), Some(path)) = (vcodec, &a.video) {
        let es = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        let aus = split_video(&es, vc)?;
        let keys = aus.iter().filter(|(_, k)| *k).count();
        // The expected values come from ffprobe; our AU split must agree with it.
        let probe = a.video_probe.as_deref().context("--video-probe is required with --video")?;
        let f: Vec<&str> = probe.trim().split(',').collect();
        ensure!(f.len() == 5, "--video-probe wants codec,width,height,frames,keyframes, got {probe:?}");
        let (frames, pkeys): (usize, usize) = (f[3].parse()?, f[4].parse()?);
        ensure!(frames == aus.len(), "ffprobe counts {frames} frames, the AUD split {}", aus.len());
        ensure!(pkeys == keys, "ffprobe counts {pkeys} keyframes, the NAL scan {keys}");
        stats["video_codec"] = json!(vc.name());
        stats["width"] = json!(f[1].parse::<u32>()?);
        stats["height"] = json!(f[2].parse::<u32>()?);
        stats["video_frames"] = json!(aus.len());
        stats["keyframes"] = json!(keys);
        stats["max_video_frame_bytes"] = json!(aus.iter().map(|(d, _)| d.len()).max().unwrap_or(0));
        for (i, (data, key)) in aus.into_iter().enumerate() {
            units.push(Unit { codec: vc, pts: i as i64 * a.frame_ticks, key, data });
        }
    }
    if let (Some(ac), Some(path)) = (acodec, &a.audio) {
        let raw = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        let (frames, rate, ticks) = if ac == Codec::Aac {
            let (frames, rate) = split_adts(&raw)?;
            (frames, rate, 1024 * 90_000 / rate as i64)
        } else {
            let rate = a.sample_rate.context("--sample-rate is required for G.711")?;
            // 40 ms per frame, as GB cameras send it.
            let bytes = rate as usize / 25;
            (raw.chunks(bytes).map(Bytes::copy_from_slice).collect(), rate, 3600)
        };
        stats["audio_codec"] = json!(ac.name());
        stats["sample_rate"] = json!(rate);
        stats["audio_frames"] = json!(frames.len());
        stats["audio_pts_step"] = json!(ticks);
        for (i, data) in frames.into_iter().enumerate() {
            units.push(Unit { codec: ac, pts: i as i64 * ticks, key: true, data });
        }
    }
    ensure!(!units.is_empty(), "nothing to mux");
    // Stable sort: at equal PTS video (pushed first) stays first.
    units.sort_by_key(|u| u.pts);

    let mut muxer = PsMuxer::new(vcodec, acodec);
    let mut rtp = RtpPacketizer { ssrc: a.ssrc, seq: 0, payload_type: 96, max_payload: 1400 };
    let (mut ps, mut dump, mut pkts) = (Vec::new(), Vec::new(), Vec::new());
    for u in &units {
        let mut pack = Vec::new();
        muxer.write_frame(u.codec, u.pts, u.pts, u.key, &u.data, &mut pack);
        rtp.packetize(&pack, u.pts as u32, &mut pkts);
        ps.extend_from_slice(&pack);
    }
    for p in &pkts {
        dump.extend_from_slice(&u16::try_from(p.len())?.to_be_bytes());
        dump.extend_from_slice(p);
    }
    stats["packs"] = json!(units.len());
    stats["ps_bytes"] = json!(ps.len());
    stats["rtp_packets"] = json!(pkts.len());
    stats["rtp_markers"] = json!(units.len());
    stats["first_pts"] = json!(units.first().map(|u| u.pts));
    stats["last_pts"] = json!(units.last().map(|u| u.pts));
    std::fs::create_dir_all(&a.out_dir)?;
    std::fs::write(a.out_dir.join(format!("{}.ps", a.name)), &ps)?;
    std::fs::write(a.out_dir.join(format!("{}.rtp", a.name)), &dump)?;
    std::fs::write(&a.stats, serde_json::to_string_pretty(&stats)? + "\n")?;
    Ok(())
}

fn summarize(out_dir: PathBuf, stats: Vec<PathBuf>) -> Result<()> {
    let mut all = Vec::new();
    for p in &stats {
        let v: Value = serde_json::from_slice(&std::fs::read(p)?).with_context(|| format!("{}", p.display()))?;
        all.push(v);
    }
    let doc = json!({ "generator": "tools/make-fixtures.sh", "fixtures": all });
    std::fs::write(out_dir.join("expected.json"), serde_json::to_string_pretty(&doc)? + "\n")?;

    let s = |v: &Value, k: &str| match &v[k] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut md = String::from(README_HEAD);
    md.push_str(
        "| file | video | width | height | frames | keyframes | audio | sample rate | audio frames | packs | RTP packets | SSRC |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for v in &all {
        md.push_str(&format!(
            "| `{}.ps` / `.rtp` | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) |\n",
            s(v, "name"),
            s(v, "video_codec"),
            s(v, "width"),
            s(v, "height"),
            s(v, "video_frames"),
            s(v, "keyframes"),
            s(v, "audio_codec"),
            s(v, "sample_rate"),
            s(v, "audio_frames"),
            s(v, "packs"),
            s(v, "rtp_packets"),
            format_args!("{:010}", v["ssrc"].as_u64().unwrap_or(0)),
            s(v, "ssrc_hex"),
        ));
    }
    md.push_str(README_TAIL);
    std::fs::write(out_dir.join("README.md"), md)?;
    Ok(())
}

const README_HEAD: &str = "# gbgate's own fixtures

Generated by `tools/make-fixtures.sh` (ffmpeg `testsrc2` / `sine`, x264 / x265 / ffmpeg AAC, then
`cargo run --example mkfixtures`, which uses gbgate's own `PsMuxer` and `RtpPacketizer`). Do not
edit by hand: re-run the script. Two runs give byte-identical files (`MD5SUMS`).

Layout, as GB28181 cameras send it: one MPEG-2 pack per video access unit and per audio frame,
in PTS order, video first at equal PTS. Pack header 14 bytes, SCR = DTS, mux_rate 0x3FFF, no
stuffing. System header + PSM (stream types 0x1B/0x24 on 0xE0, 0x90/0x91/0x0F on 0xC0, correct
CRC-32/MPEG-2) before every video keyframe and in the first pack. PES header `84 80 05` (PTS only,
no B-frames); frames over 65000 bytes are split over several PES, PTS on the first only. Video is
Annex B with an AUD at the start of every access unit; G.711 is 40 ms per PES (PTS step 3600);
AAC is one ADTS frame per PES (PTS step 1024 x 90000 / rate). PTS starts at 0 for both tracks.

`.rtp` is the `[u16 BE length][RTP packet]` dump (RFC 4571 framing, GB28181 TCP wire form): PT 96,
seq from 0, RTP timestamp = PTS mod 2^32, payload chunks of at most 1400 bytes, marker on the last
packet of every pack (so markers = packs). The `.ps` equals the concatenated RTP payloads.

The values below are measured, not typed: video codec/size/frames from
`ffprobe -count_frames` on the elementary stream, keyframes from ffprobe's `key_frame` (checked
against the NAL scan), everything else counted by `mkfixtures` while writing. The same values
are in `expected.json`.

";

const README_TAIL: &str = "
Notes:
- `h264_g711u_16k` has a 1280x720 first keyframe encoded at QP 1 so that it exceeds 65000 bytes
  and is split over two PES (`max_video_frame_bytes` in `expected.json`).
- G.711 sample rates are not signalled in PS: 16 kHz shows as 640 bytes per 3600 ticks.
- H.265 keyframes are IRAP pictures (NAL types 16..21); x265's second keyframe may be a CRA.
";

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Mux(a) => mux(a),
        Cmd::Summarize { out_dir, stats } => summarize(out_dir, stats),
    }
}
