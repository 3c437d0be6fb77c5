//! Sans-IO fragmented MP4 (CMAF) muxing for HLS: the init segment (`ftyp` + `moov` with `avcC`,
//! `hvcC` or `esds`) and media fragments (`moof` + `mdat`).
//!
//! The boxes are encoded by the `mp4-atom` crate (D129); this module only decides what goes in
//! them. Video is track 1 in a 90 kHz timescale (the hub's clock, so no rounding), audio track 2
//! in its sample rate. Video and audio travel in the same fragments: one playlist, and one
//! `SourceBuffer` with `codecs="avc1.xxxxxx,mp4a.40.2"`, which ffmpeg, hls.js and Chromium's MSE
//! all take.
use bytes::{BufMut, Bytes, BytesMut};
use mp4_atom::{
    Atom, Audio, Avc1, Avcc, Dinf, Dref, Encode, Esds, FourCC, Ftyp, Hdlr, Hvc1, Hvcc, Mdhd, Mdia, Mfhd, Minf, Moof,
    Moov, Mp4a, Mvex, Mvhd, Smhd, Stbl, Stco, Stsc, Stsd, Stsz, Stts, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex, Trun,
    TrunEntry, Url, Visual, Vmhd,
};

use crate::codec::{aac, h264, h265};
use crate::frame::{AudioConfig, Codec, VideoConfig, CLOCK_RATE};
use crate::proto::flv;

/// Track id of the video track.
pub const VIDEO_TRACK: u32 = 1;
/// Track id of the audio track.
pub const AUDIO_TRACK: u32 = 2;
/// Timescale of the video track: the hub's 90 kHz clock.
pub const VIDEO_TIMESCALE: u32 = CLOCK_RATE as u32;

/// `sample_depends_on = 2` (an I picture, or any audio frame).
const FLAGS_SYNC: u32 = 0x0200_0000;
/// `sample_depends_on = 1` and `sample_is_non_sync_sample`.
const FLAGS_NON_SYNC: u32 = 0x0101_0000;

#[derive(Debug, thiserror::Error)]
pub enum Fmp4Error {
    #[error("the {0} track has no usable decoder configuration")]
    NoConfig(&'static str),
    #[error("{0} cannot be carried in fMP4 here")]
    Unsupported(Codec),
    #[error("encoding the {what} box: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: mp4_atom::Error,
    },
    #[error("a fragment of {0} bytes is too large")]
    TooLarge(usize),
}

fn enc(what: &'static str) -> impl FnOnce(mp4_atom::Error) -> Fmp4Error {
    move |source| Fmp4Error::Encode { what, source }
}

/// The video track of an init segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoTrack {
    pub codec: Codec,
    pub config: VideoConfig,
}

/// The audio track of an init segment (AAC only: G.711 has no MSE-playable MP4 form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioTrack {
    pub config: AudioConfig,
}

impl AudioTrack {
    /// The AAC track for `codec`/`config`, `None` for anything else (G.711 passthrough).
    pub fn aac(codec: Codec, config: &AudioConfig) -> Option<AudioTrack> {
        (codec == Codec::Aac && config.asc.as_ref().is_some_and(|a| a.len() >= 2) && config.sample_rate > 0)
            .then(|| AudioTrack { config: config.clone() })
    }

    pub fn timescale(&self) -> u32 {
        self.config.sample_rate
    }
}

/// The tracks an init segment declares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tracks {
    pub video: Option<VideoTrack>,
    pub audio: Option<AudioTrack>,
}

impl Tracks {
    /// The RFC 6381 `codecs` value of these tracks, e.g. `avc1.4d401e,mp4a.40.2`: what an MSE
    /// `SourceBuffer` needs (`video/mp4; codecs="..."`) and what a multivariant playlist would say.
    pub fn codecs(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = &self.video {
            parts.push(video_codecs(v));
        }
        if let Some(a) = &self.audio {
            let aot = a.config.asc.as_ref().and_then(|asc| asc.first()).map_or(2, |b| b >> 3);
            parts.push(format!("mp4a.40.{aot}"));
        }
        parts.join(",")
    }
}

fn video_codecs(v: &VideoTrack) -> String {
    match v.codec {
        Codec::H265 => {
            let rec = flv::hevc_decoder_config(v.config.vps.as_deref().unwrap_or(&[]), &v.config.sps, &v.config.pps);
            hevc_codecs(&rec)
        }
        _ => {
            let s = &v.config.sps;
            let (p, c, l) = if s.len() >= 4 { (s[1], s[2], s[3]) } else { (66, 0, 30) };
            format!("avc1.{p:02x}{c:02x}{l:02x}")
        }
    }
}

/// ISO/IEC 14496-15 annex E: `hvc1.<space><profile>.<compat, bit-reversed hex>.<tier><level>.<constraints>`.
fn hevc_codecs(rec: &[u8]) -> String {
    if rec.len() < 13 {
        return "hvc1.1.6.L93.B0".into();
    }
    let space = ["", "A", "B", "C"][(rec[1] >> 6) as usize];
    let tier = if rec[1] & 0x20 != 0 { 'H' } else { 'L' };
    let idc = rec[1] & 0x1F;
    let compat = u32::from_be_bytes([rec[2], rec[3], rec[4], rec[5]]).reverse_bits();
    let mut s = format!("hvc1.{space}{idc}.{compat:X}.{tier}{}", rec[12]);
    let constraints = &rec[6..12];
    let used = constraints.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    for b in &constraints[..used] {
        s.push_str(&format!(".{b:X}"));
    }
    s
}

/// The `ftyp` + `moov` of a stream with these tracks.
pub fn init_segment(tracks: &Tracks) -> Result<Bytes, Fmp4Error> {
    let mut traks = Vec::new();
    let mut trex = Vec::new();
    if let Some(v) = &tracks.video {
        traks.push(video_trak(v)?);
        trex.push(trex_of(VIDEO_TRACK));
    }
    if let Some(a) = &tracks.audio {
        traks.push(audio_trak(a)?);
        trex.push(trex_of(AUDIO_TRACK));
    }
    if traks.is_empty() {
        return Err(Fmp4Error::NoConfig("any"));
    }
    let ftyp = Ftyp {
        major_brand: FourCC::new(b"iso6"),
        minor_version: 512,
        compatible_brands: vec![FourCC::new(b"iso6"), FourCC::new(b"cmfc"), FourCC::new(b"mp41")],
    };
    let moov = Moov {
        mvhd: Mvhd { timescale: 1000, rate: 1.into(), volume: 1.into(), next_track_id: 3, ..Default::default() },
        mvex: Some(Mvex { mehd: None, trex }),
        trak: traks,
        ..Default::default()
    };
    let mut out = Vec::new();
    ftyp.encode(&mut out).map_err(enc("ftyp"))?;
    moov.encode(&mut out).map_err(enc("moov"))?;
    Ok(Bytes::from(out))
}

fn trex_of(track_id: u32) -> Trex {
    Trex {
        track_id,
        default_sample_description_index: 1,
        default_sample_duration: 0,
        default_sample_size: 0,
        default_sample_flags: 0,
    }
}

fn empty_stbl(codec: mp4_atom::Codec) -> Stbl {
    Stbl {
        stsd: Stsd { codecs: vec![codec] },
        stts: Stts::default(),
        stsc: Stsc::default(),
        stsz: Stsz::default(),
        stco: Some(Stco::default()),
        ..Default::default()
    }
}

fn dinf() -> Dinf {
    Dinf { dref: Dref { entries: vec![Url::default().into()] } }
}

fn visual(width: u32, height: u32) -> Visual {
    Visual {
        data_reference_index: 1,
        width: width.min(u16::MAX as u32) as u16,
        height: height.min(u16::MAX as u32) as u16,
        horizresolution: 72.into(),
        vertresolution: 72.into(),
        frame_count: 1,
        compressor: "".into(),
        depth: 24,
    }
}

fn video_trak(v: &VideoTrack) -> Result<Trak, Fmp4Error> {
    let c = &v.config;
    if c.sps.len() < 4 || c.pps.is_empty() {
        return Err(Fmp4Error::NoConfig("video"));
    }
    let entry: mp4_atom::Codec = match v.codec {
        Codec::H264 => {
            let avcc = Avcc::new(&c.sps, &c.pps).map_err(enc("avcC"))?;
            Avc1 { visual: visual(c.width, c.height), avcc, ..Default::default() }.into()
        }
        Codec::H265 => {
            let vps = c.vps.as_deref().filter(|v| !v.is_empty()).ok_or(Fmp4Error::NoConfig("video"))?;
            // The record gbgate already builds for FLV, read back as mp4-atom's structure.
            let rec = flv::hevc_decoder_config(vps, &c.sps, &c.pps);
            let hvcc = Hvcc::decode_body(&mut &rec[..]).map_err(enc("hvcC"))?;
            Hvc1 { visual: visual(c.width, c.height), hvcc, ..Default::default() }.into()
        }
        other => return Err(Fmp4Error::Unsupported(other)),
    };
    Ok(Trak {
        tkhd: Tkhd {
            track_id: VIDEO_TRACK,
            enabled: true,
            in_movie: true,
            width: (c.width.min(u16::MAX as u32) as u16).into(),
            height: (c.height.min(u16::MAX as u32) as u16).into(),
            ..Default::default()
        },
        mdia: Mdia {
            mdhd: Mdhd { timescale: VIDEO_TIMESCALE, language: "und".into(), ..Default::default() },
            hdlr: Hdlr { handler: FourCC::new(b"vide"), name: "gbgate video".into() },
            minf: Minf { vmhd: Some(Vmhd::default()), dinf: dinf(), stbl: empty_stbl(entry), ..Default::default() },
        },
        ..Default::default()
    })
}

fn audio_trak(a: &AudioTrack) -> Result<Trak, Fmp4Error> {
    let asc = a.config.asc.as_ref().ok_or(Fmp4Error::NoConfig("audio"))?;
    let rate = a.config.sample_rate;
    if rate == 0 || rate > u16::MAX as u32 {
        return Err(Fmp4Error::NoConfig("audio"));
    }
    let channels = a.config.channels.max(1) as u16;
    let (aot, freq_index, chan) = aac_fields(asc);
    let esds = Esds {
        es_desc: mp4_atom::esds::EsDescriptor {
            es_id: AUDIO_TRACK as u16,
            dec_config: mp4_atom::esds::DecoderConfig {
                object_type_indication: 0x40, // MPEG-4 audio
                stream_type: 5,               // audio stream
                dec_specific: Some(mp4_atom::esds::DecoderSpecific {
                    profile: aot,
                    freq_index,
                    chan_conf: chan,
                    raw: asc.to_vec(),
                }),
                ..Default::default()
            },
            ..Default::default()
        },
    };
    let entry: mp4_atom::Codec = Mp4a {
        audio: Audio {
            data_reference_index: 1,
            channel_count: channels,
            sample_size: 16,
            sample_rate: (rate as u16).into(),
        },
        esds,
        btrt: None,
        taic: None,
    }
    .into();
    Ok(Trak {
        tkhd: Tkhd {
            track_id: AUDIO_TRACK,
            alternate_group: 1,
            enabled: true,
            in_movie: true,
            volume: 1.into(),
            ..Default::default()
        },
        mdia: Mdia {
            mdhd: Mdhd { timescale: rate, language: "und".into(), ..Default::default() },
            hdlr: Hdlr { handler: FourCC::new(b"soun"), name: "gbgate audio".into() },
            minf: Minf { smhd: Some(Smhd::default()), dinf: dinf(), stbl: empty_stbl(entry), ..Default::default() },
        },
        ..Default::default()
    })
}

/// (audio object type, sampling frequency index, channel configuration) of a 2-byte ASC.
fn aac_fields(asc: &[u8]) -> (u8, u8, u8) {
    match asc {
        [a, b, ..] => (a >> 3, ((a & 7) << 1) | (b >> 7), (b >> 3) & 0xF),
        _ => (2, 4, 1),
    }
}

/// One sample of a fragment.
#[derive(Debug, Clone)]
pub struct Sample {
    /// In the track's timescale.
    pub duration: u32,
    /// Composition offset (pts - dts) in the track's timescale.
    pub cts: i32,
    pub keyframe: bool,
    pub data: Bytes,
}

/// The samples of one track in a fragment.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    pub track_id: u32,
    /// `tfdt`: the decode time of the first sample, in the track's timescale.
    pub base_decode_time: u64,
    pub samples: &'a [Sample],
}

/// The largest fragment built: an `mdat` past this is refused (its 32-bit size would wrap long
/// before, and the hub bounds access units far below it).
const MAX_FRAGMENT: usize = 256 << 20;

/// One `moof` + `mdat` with the given runs (empty runs are left out).
pub fn fragment(sequence: u32, runs: &[Run<'_>]) -> Result<Bytes, Fmp4Error> {
    let runs: Vec<&Run> = runs.iter().filter(|r| !r.samples.is_empty()).collect();
    let payload: usize = runs.iter().flat_map(|r| r.samples.iter()).map(|s| s.data.len()).sum();
    if payload > MAX_FRAGMENT {
        return Err(Fmp4Error::TooLarge(payload));
    }
    let mut moof = Moof {
        mfhd: Mfhd { sequence_number: sequence },
        traf: runs
            .iter()
            .map(|r| Traf {
                tfhd: Tfhd { track_id: r.track_id, default_base_is_moof: true, ..Default::default() },
                tfdt: Some(Tfdt { base_media_decode_time: r.base_decode_time }),
                trun: vec![Trun {
                    data_offset: Some(0),
                    samples: r
                        .samples
                        .iter()
                        .map(|s| TrunEntry {
                            duration: Some(s.duration),
                            size: Some(s.data.len() as u32),
                            flags: Some(if s.keyframe { FLAGS_SYNC } else { FLAGS_NON_SYNC }),
                            cts: Some(s.cts as i64),
                        })
                        .collect::<Vec<_>>()
                        .into(),
                }],
                ..Default::default()
            })
            .collect(),
    };
    // The data offsets are relative to the moof's start (default-base-is-moof): its size is known
    // once encoded, and does not change when the offsets are filled in.
    let mut probe = Vec::new();
    moof.encode(&mut probe).map_err(enc("moof"))?;
    let mut offset = probe.len() + 8;
    for (traf, run) in moof.traf.iter_mut().zip(&runs) {
        traf.trun[0].data_offset = Some(offset as i32);
        offset += run.samples.iter().map(|s| s.data.len()).sum::<usize>();
    }
    let mut out = BytesMut::with_capacity(probe.len() + 8 + payload);
    let mut head = Vec::with_capacity(probe.len());
    moof.encode(&mut head).map_err(enc("moof"))?;
    out.put_slice(&head);
    out.put_u32((8 + payload) as u32);
    out.put_slice(b"mdat");
    for s in runs.iter().flat_map(|r| r.samples.iter()) {
        out.put_slice(&s.data);
    }
    Ok(out.freeze())
}

/// A video frame's sample data: its NAL units without the parameter sets and access unit
/// delimiters the hub keeps in band (`avc1`/`hvc1` carry them in the sample entry). Returns the
/// frame's own bytes when there is nothing to remove.
pub fn video_sample(codec: Codec, data: &Bytes) -> Bytes {
    let is_param = |n: &[u8]| match codec {
        Codec::H264 => {
            n.first().is_some_and(|h| matches!(h264::nal_type(*h), h264::NAL_SPS | h264::NAL_PPS | h264::NAL_AUD))
        }
        Codec::H265 => n.first().is_some_and(|h| {
            matches!(h265::nal_type(*h), h265::NAL_VPS | h265::NAL_SPS | h265::NAL_PPS | h265::NAL_AUD)
        }),
        _ => false,
    };
    if !avcc_nals(data).any(is_param) {
        return data.clone();
    }
    let mut out = BytesMut::with_capacity(data.len());
    for n in avcc_nals(data).filter(|n| !is_param(n)) {
        out.put_u32(n.len() as u32);
        out.put_slice(n);
    }
    out.freeze()
}

/// The NAL units of 4-byte-length-prefixed data, stopping at a truncated one.
fn avcc_nals(mut rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let nal = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        Some(nal)
    })
}

/// Samples of an AAC frame are the raw frame (the hub strips ADTS); this only checks the codec.
pub fn audio_sample(codec: Codec, data: &Bytes) -> Option<Bytes> {
    (codec == Codec::Aac && !aac::looks_like_adts(data)).then(|| data.clone())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mp4_atom::{Any, Decode, Mdat, TrunSamples};

    /// The first VPS/SPS/PPS of one of the project's PS fixtures, as a video track.
    fn fixture_track(name: &str, codec: Codec) -> VideoTrack {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
        let data = std::fs::read(path).unwrap();
        let h265 = codec == Codec::H265;
        let (mut vps, mut sps, mut pps) = (None, None, None);
        for n in crate::codec::nal::annexb_nals(&data) {
            let Some(&h) = n.first() else { continue };
            let slot = match (h265, if h265 { h265::nal_type(h) } else { h264::nal_type(h) }) {
                (true, 32) => &mut vps,
                (true, 33) | (false, 7) => &mut sps,
                (true, 34) | (false, 8) => &mut pps,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(Bytes::copy_from_slice(n));
            }
        }
        let sps: Bytes = sps.unwrap();
        let (width, height, profile, level) = if h265 {
            let s = h265::parse_sps(&sps).unwrap();
            (s.width, s.height, s.profile, s.level)
        } else {
            let s = h264::parse_sps(&sps).unwrap();
            (s.width, s.height, s.profile, s.level)
        };
        VideoTrack { codec, config: VideoConfig { vps, sps, pps: pps.unwrap(), width, height, profile, level } }
    }

    pub(crate) fn h264_track() -> VideoTrack {
        fixture_track("h264_g711a_8k.ps", Codec::H264)
    }

    pub(crate) fn h265_track() -> VideoTrack {
        fixture_track("h265_aac_16k.ps", Codec::H265)
    }

    pub(crate) fn aac_track() -> AudioTrack {
        // AAC-LC, 11025 Hz (index 10), mono.
        AudioTrack::aac(
            Codec::Aac,
            &AudioConfig { sample_rate: 11025, channels: 1, asc: Some(Bytes::from_static(&[0x15, 0x08])) },
        )
        .unwrap()
    }

    #[test]
    fn codecs_strings() {
        let t = Tracks { video: Some(h264_track()), audio: Some(aac_track()) };
        assert_eq!(t.codecs(), "avc1.64000d,mp4a.40.2");
        let t = Tracks { video: Some(h265_track()), audio: None };
        // Main profile, compat flags 1 and 2, level 60 (2.0), progressive source flag only.
        assert_eq!(t.codecs(), "hvc1.1.6.L60.90");
        assert!(AudioTrack::aac(Codec::G711A, &AudioConfig { sample_rate: 8000, channels: 1, asc: None }).is_none());
    }

    #[test]
    fn init_segment_decodes_back() {
        for video in [h264_track(), h265_track()] {
            let codec = video.codec;
            let init = init_segment(&Tracks { video: Some(video.clone()), audio: Some(aac_track()) }).unwrap();
            let mut buf = &init[..];
            let ftyp = Ftyp::decode(&mut buf).unwrap();
            assert_eq!(ftyp.major_brand, FourCC::new(b"iso6"));
            let moov = Moov::decode(&mut buf).unwrap();
            assert!(buf.is_empty());
            assert_eq!(moov.trak.len(), 2);
            assert_eq!(moov.mvex.as_ref().unwrap().trex.len(), 2);
            let v = &moov.trak[0];
            assert_eq!(v.tkhd.track_id, VIDEO_TRACK);
            assert_eq!(v.mdia.mdhd.timescale, 90_000);
            match (&v.mdia.minf.stbl.stsd.codecs[0], codec) {
                (mp4_atom::Codec::Avc1(a), Codec::H264) => {
                    assert_eq!(a.avcc.sequence_parameter_sets, vec![video.config.sps.to_vec()]);
                    assert_eq!((a.visual.width, a.visual.height), (352, 288));
                }
                (mp4_atom::Codec::Hvc1(h), Codec::H265) => {
                    assert_eq!(h.hvcc.general_profile_idc, 1);
                    assert_eq!(h.hvcc.arrays.len(), 3);
                    assert_eq!(h.hvcc.arrays[1].nalus, vec![video.config.sps.to_vec()]);
                }
                (other, _) => panic!("unexpected sample entry {other:?}"),
            }
            let a = &moov.trak[1];
            assert_eq!(a.mdia.mdhd.timescale, 11025);
            let mp4_atom::Codec::Mp4a(mp4a) = &a.mdia.minf.stbl.stsd.codecs[0] else { panic!("mp4a") };
            let ds = mp4a.esds.es_desc.dec_config.dec_specific.as_ref().unwrap();
            assert_eq!(ds.raw, vec![0x15, 0x08]);
            assert_eq!((ds.profile, ds.freq_index, ds.chan_conf), (2, 10, 1));
        }
        assert!(init_segment(&Tracks::default()).is_err());
    }

    #[test]
    fn fragment_offsets_point_at_each_track_data() {
        let v = [
            Sample { duration: 3600, cts: 0, keyframe: true, data: Bytes::from_static(b"\0\0\0\x02\x65\x01") },
            Sample { duration: 3600, cts: 7200, keyframe: false, data: Bytes::from_static(b"\0\0\0\x01\x41") },
        ];
        let a = [Sample { duration: 1024, cts: 0, keyframe: true, data: Bytes::from_static(b"AAC!") }];
        let runs = [
            Run { track_id: VIDEO_TRACK, base_decode_time: 90_000, samples: &v },
            Run { track_id: AUDIO_TRACK, base_decode_time: 11025, samples: &a },
            Run { track_id: 9, base_decode_time: 0, samples: &[] },
        ];
        let frag = fragment(7, &runs).unwrap();
        let mut buf = &frag[..];
        let moof = Moof::decode(&mut buf).unwrap();
        let moof_len = frag.len() - buf.len();
        let Any::Mdat(Mdat { data }) = Any::decode(&mut buf).unwrap() else { panic!("mdat") };
        assert!(buf.is_empty());
        assert_eq!(moof.mfhd.sequence_number, 7);
        assert_eq!(moof.traf.len(), 2);
        for (traf, run) in moof.traf.iter().zip(&runs) {
            assert_eq!(traf.tfhd.track_id, run.track_id);
            assert_eq!(traf.tfdt.as_ref().unwrap().base_media_decode_time, run.base_decode_time);
            let trun = &traf.trun[0];
            let off = trun.data_offset.unwrap() as usize;
            let TrunSamples::Explicit(entries) = &trun.samples else { panic!("explicit") };
            let mut at = off - moof_len - 8;
            for (e, s) in entries.iter().zip(run.samples) {
                let n = e.size.unwrap() as usize;
                assert_eq!(&data[at..at + n], &s.data[..]);
                assert_eq!(e.duration, Some(s.duration));
                assert_eq!(e.cts, Some(s.cts as i64));
                at += n;
            }
        }
        let TrunSamples::Explicit(e) = &moof.traf[0].trun[0].samples else { panic!() };
        assert_eq!(e[0].flags, Some(FLAGS_SYNC));
        assert_eq!(e[1].flags, Some(FLAGS_NON_SYNC));
    }

    #[test]
    fn parameter_sets_leave_the_samples() {
        let mut key = Vec::new();
        for n in [&[0x09u8, 0xf0][..], &[0x67, 1, 2, 3], &[0x68, 4], &[0x65, 9, 9]] {
            crate::codec::nal::write_avcc_nal(&mut key, n);
        }
        let s = video_sample(Codec::H264, &Bytes::from(key));
        assert_eq!(&s[..], &[0, 0, 0, 3, 0x65, 9, 9]);
        let p = Bytes::from_static(&[0, 0, 0, 2, 0x41, 7]);
        assert_eq!(video_sample(Codec::H264, &p).as_ptr(), p.as_ptr(), "nothing to strip: no copy");
        let mut h = Vec::new();
        for n in [&[0x40u8, 1, 0][..], &[0x42, 1, 0], &[0x44, 1], &[0x26, 1, 0xaf]] {
            crate::codec::nal::write_avcc_nal(&mut h, n);
        }
        assert_eq!(&video_sample(Codec::H265, &Bytes::from(h))[..], &[0, 0, 0, 3, 0x26, 1, 0xaf]);
    }
}
