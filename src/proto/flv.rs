//! Sans-IO FLV tag bodies, as RTMP carries them (the bytes after the 11-byte FLV tag header).
//!
//! Out (play/push): AVC sequence header (AVCDecoderConfigurationRecord) and NALU tags with a
//! composition time; H.265 either as Enhanced RTMP (`ExVideoTagHeader`, FourCC `hvc1`) or as the
//! legacy codec id 12; AAC sequence header (AudioSpecificConfig) and raw frames. G.711 is not
//! produced (see [`frame_tag`]).
//!
//! In (publish): [`FlvDemuxer`] turns AVC, HEVC (both forms) and AAC tag bodies into [`Frame`]s
//! shaped as the rest of gbgate expects: AVCC with 4-byte lengths, AUD removed, keyframes carrying
//! their parameter sets in band, timestamps in 90 kHz.
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{h264, h265, nal};
use crate::frame::FrameCache;
use crate::frame::{AudioConfig, Codec, CodecConfig, Frame, VideoConfig};

/// How H.265 is carried in FLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HevcFlv {
    /// Enhanced RTMP (FourCC `hvc1`): what ffmpeg 6+, OBS and modern players read.
    Enhanced,
    /// The legacy Chinese convention, codec id 12 (older players and CDNs).
    Legacy,
}

/// FLV video codec id of H.264.
pub const CODEC_ID_AVC: u8 = 7;
/// The legacy (non-standard) FLV codec id of H.265.
pub const CODEC_ID_HEVC_LEGACY: u8 = 12;
/// FLV sound format of AAC.
pub const SOUND_FORMAT_AAC: u8 = 10;
/// G.711 A-law and µ-law sound formats (FLV spec E.4.2.1).
pub const SOUND_FORMAT_G711A: u8 = 7;
pub const SOUND_FORMAT_G711U: u8 = 8;
/// Enhanced RTMP FourCC of H.265.
pub const FOURCC_HVC1: [u8; 4] = *b"hvc1";

const EX_SEQUENCE_START: u8 = 0;
const EX_CODED_FRAMES: u8 = 1;
const EX_SEQUENCE_END: u8 = 2;
const EX_CODED_FRAMES_X: u8 = 3;

/// The FLV/RTMP timestamp (milliseconds, wrapping) of a frame: its decoding time.
pub fn timestamp_ms(frame: &Frame) -> u32 {
    frame.dts.div_euclid(90) as u32
}

/// The composition time offset (pts - dts) in milliseconds, clamped to the signed 24-bit range.
fn composition_ms(frame: &Frame) -> i32 {
    ((frame.pts - frame.dts) / 90).clamp(-(1 << 23), (1 << 23) - 1) as i32
}

fn put_i24(out: &mut BytesMut, v: i32) {
    let b = v.to_be_bytes();
    out.put_slice(&b[1..4]);
}

fn read_i24(b: &[u8]) -> i32 {
    let v = ((b[0] as i32) << 16) | ((b[1] as i32) << 8) | b[2] as i32;
    (v << 8) >> 8
}

/// AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1) with one SPS and one PPS.
pub fn avc_decoder_config(sps: &[u8], pps: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(11 + sps.len() + pps.len());
    let (profile, compat, level) = if sps.len() >= 4 { (sps[1], sps[2], sps[3]) } else { (66, 0, 30) };
    out.put_slice(&[1, profile, compat, level, 0xFF, 0xE1]);
    out.put_u16(sps.len() as u16);
    out.put_slice(sps);
    out.put_u8(1);
    out.put_u16(pps.len() as u16);
    out.put_slice(pps);
    out.freeze()
}

/// Parameter sets found in a decoder configuration record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParameterSets {
    pub vps: Vec<Bytes>,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
    /// NAL length field size in bytes (1, 2 or 4).
    pub length_size: usize,
}

/// Parses an AVCDecoderConfigurationRecord.
pub fn parse_avc_decoder_config(b: &[u8]) -> Option<ParameterSets> {
    if b.len() < 7 || b[0] != 1 {
        return None;
    }
    let mut ps = ParameterSets { length_size: (b[4] & 3) as usize + 1, ..Default::default() };
    let mut i = 5;
    let nsps = (b[i] & 0x1F) as usize;
    i += 1;
    for _ in 0..nsps {
        let (nal, next) = read_u16_prefixed(b, i)?;
        ps.sps.push(nal);
        i = next;
    }
    let npps = *b.get(i)? as usize;
    i += 1;
    for _ in 0..npps {
        let (nal, next) = read_u16_prefixed(b, i)?;
        ps.pps.push(nal);
        i = next;
    }
    Some(ps)
}

fn read_u16_prefixed(b: &[u8], i: usize) -> Option<(Bytes, usize)> {
    let n = u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize;
    let nal = b.get(i + 2..i + 2 + n)?;
    Some((Bytes::copy_from_slice(nal), i + 2 + n))
}

/// HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3.1) with one VPS, SPS and PPS. The
/// profile/tier/level fields are copied from the SPS; 4:2:0 8-bit is assumed for the chroma and
/// bit depth fields (decoders take them from the in-band SPS).
pub fn hevc_decoder_config(vps: &[u8], sps: &[u8], pps: &[u8]) -> Bytes {
    // SPS: 2-byte NAL header, then vps_id(4) max_sub_layers_minus1(3) temporal_id_nesting(1),
    // then general_profile_tier_level: 12 bytes (escaped in the NAL).
    let mut rbsp = Vec::new();
    nal::unescape_rbsp(&sps[..sps.len().min(40)], &mut rbsp);
    let mut ptl = [0u8; 12];
    let (sub_layers, nesting) = if rbsp.len() >= 15 {
        ptl.copy_from_slice(&rbsp[3..15]);
        (((rbsp[2] >> 1) & 7) + 1, rbsp[2] & 1)
    } else {
        (1, 1)
    };
    let mut out = BytesMut::with_capacity(23 + 15 + vps.len() + sps.len() + pps.len());
    out.put_u8(1);
    out.put_slice(&ptl[..12]); // profile space/tier/idc, compat flags, constraint flags, level
    out.put_slice(&[0xF0, 0x00, 0xFC, 0xFD, 0xF8, 0xF8, 0x00, 0x00]);
    out.put_u8((sub_layers << 3) | (nesting << 2) | 3);
    out.put_u8(3);
    for (t, n) in [(32u8, vps), (33, sps), (34, pps)] {
        out.put_u8(0x80 | t);
        out.put_u16(1);
        out.put_u16(n.len() as u16);
        out.put_slice(n);
    }
    out.freeze()
}

/// Parses an HEVCDecoderConfigurationRecord.
pub fn parse_hevc_decoder_config(b: &[u8]) -> Option<ParameterSets> {
    if b.len() < 23 || b[0] != 1 {
        return None;
    }
    let mut ps = ParameterSets { length_size: (b[21] & 3) as usize + 1, ..Default::default() };
    let narrays = b[22] as usize;
    let mut i = 23;
    for _ in 0..narrays {
        let t = *b.get(i)? & 0x3F;
        let n = u16::from_be_bytes([*b.get(i + 1)?, *b.get(i + 2)?]) as usize;
        i += 3;
        for _ in 0..n {
            let (nal, next) = read_u16_prefixed(b, i)?;
            i = next;
            match t {
                32 => ps.vps.push(nal),
                33 => ps.sps.push(nal),
                34 => ps.pps.push(nal),
                _ => {}
            }
        }
    }
    Some(ps)
}

/// The video sequence header tag body for a track, `None` if the codec is not video or the
/// configuration lacks parameter sets.
pub fn video_sequence_header(codec: Codec, cfg: &VideoConfig, hevc: HevcFlv) -> Option<Bytes> {
    if cfg.sps.is_empty() || cfg.pps.is_empty() {
        return None;
    }
    let mut out = BytesMut::new();
    match codec {
        Codec::H264 => {
            out.put_slice(&[0x10 | CODEC_ID_AVC, 0, 0, 0, 0]);
            out.put_slice(&avc_decoder_config(&cfg.sps, &cfg.pps));
        }
        Codec::H265 => {
            let record = hevc_decoder_config(cfg.vps.as_deref().unwrap_or(&[]), &cfg.sps, &cfg.pps);
            match hevc {
                HevcFlv::Enhanced => {
                    out.put_u8(0x80 | 0x10 | EX_SEQUENCE_START);
                    out.put_slice(&FOURCC_HVC1);
                }
                HevcFlv::Legacy => out.put_slice(&[0x10 | CODEC_ID_HEVC_LEGACY, 0, 0, 0, 0]),
            }
            out.put_slice(&record);
        }
        _ => return None,
    }
    Some(out.freeze())
}

/// The AAC sequence header tag body, `None` for G.711 (not carried on RTMP outputs).
pub fn audio_sequence_header(codec: Codec, cfg: &AudioConfig) -> Option<Bytes> {
    if codec != Codec::Aac {
        return None;
    }
    let asc = cfg.asc.as_ref()?;
    let mut out = BytesMut::with_capacity(2 + asc.len());
    out.put_slice(&[aac_tag_byte(cfg), 0]);
    out.put_slice(asc);
    Some(out.freeze())
}

fn aac_tag_byte(_cfg: &AudioConfig) -> u8 {
    // AAC: the rate/size/type bits are fixed to 44 kHz, 16-bit, stereo by the FLV spec.
    (SOUND_FORMAT_AAC << 4) | 0x0F
}

/// The sequence header of a frame's track (from `frame.config`).
pub fn sequence_header(frame: &Frame, hevc: HevcFlv) -> Option<Bytes> {
    match &*frame.config {
        CodecConfig::Video(v) => video_sequence_header(frame.codec, v, hevc),
        CodecConfig::Audio(a) => audio_sequence_header(frame.codec, a),
    }
}

/// The FLV tag body of one frame; `None` for G.711 (FLV's G.711 ids are not read by most players,
/// the audio will be transcoded later).
pub fn frame_tag(frame: &Frame, hevc: HevcFlv) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(frame.data.len() + 8);
    let ft: u8 = if frame.keyframe { 1 } else { 2 };
    match frame.codec {
        Codec::H264 => {
            out.put_u8((ft << 4) | CODEC_ID_AVC);
            out.put_u8(1);
            put_i24(&mut out, composition_ms(frame));
        }
        Codec::H265 => match hevc {
            HevcFlv::Enhanced => {
                let cts = composition_ms(frame);
                if cts == 0 {
                    out.put_u8(0x80 | (ft << 4) | EX_CODED_FRAMES_X);
                    out.put_slice(&FOURCC_HVC1);
                } else {
                    out.put_u8(0x80 | (ft << 4) | EX_CODED_FRAMES);
                    out.put_slice(&FOURCC_HVC1);
                    put_i24(&mut out, cts);
                }
            }
            HevcFlv::Legacy => {
                out.put_u8((ft << 4) | CODEC_ID_HEVC_LEGACY);
                out.put_u8(1);
                put_i24(&mut out, composition_ms(frame));
            }
        },
        Codec::Aac => {
            let CodecConfig::Audio(a) = &*frame.config else { return None };
            out.put_u8(aac_tag_byte(a));
            out.put_u8(1);
        }
        Codec::G711A | Codec::G711U => return None,
    }
    out.put_slice(&frame.data);
    Some(out.freeze())
}

/// [`frame_tag`], computed once per frame and shared through `frame.cache` by every player and
/// push: `flv`, except the legacy form of H.265 in `flv_legacy` (RTMP and HTTP-FLV players may ask
/// for different forms).
pub fn cached_frame_tag(frame: &Frame, hevc: HevcFlv) -> Option<Bytes> {
    let cell = match (frame.codec, hevc) {
        (Codec::H265, HevcFlv::Legacy) => &frame.cache.flv_legacy,
        _ => &frame.cache.flv,
    };
    if let Some(b) = cell.get() {
        return Some(b.clone());
    }
    let tag = frame_tag(frame, hevc)?;
    Some(cell.get_or_init(|| tag).clone())
}

/// Errors of [`FlvDemuxer`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("tag body too short")]
    Short,
    #[error("unsupported video codec id {0}")]
    VideoCodec(u8),
    #[error("unsupported enhanced video FourCC {0:?}")]
    FourCc([u8; 4]),
    #[error("unsupported sound format {0}")]
    SoundFormat(u8),
    #[error("bad decoder configuration record")]
    BadConfig,
    #[error("coded frame before the sequence header")]
    NoConfig,
}

/// Turns published FLV tag bodies into [`Frame`]s (one per stream).
#[derive(Debug, Default)]
pub struct FlvDemuxer {
    video: Option<VideoTrack>,
    audio: Option<Arc<CodecConfig>>,
    g711: Option<Arc<CodecConfig>>,
    video_clock: Unwrap,
    audio_clock: Unwrap,
}

#[derive(Debug)]
struct VideoTrack {
    codec: Codec,
    config: Arc<CodecConfig>,
    length_size: usize,
}

/// Extends 32-bit millisecond timestamps to i64.
#[derive(Debug, Default)]
struct Unwrap {
    last: Option<u32>,
    base: i64,
}

impl Unwrap {
    /// The 90 kHz time of `ts`, saturating (never overflowing) however far a peer steps.
    fn extend_90k(&mut self, ts: u32) -> i64 {
        self.extend(ts).saturating_mul(90)
    }

    fn extend(&mut self, ts: u32) -> i64 {
        if let Some(last) = self.last {
            let diff = ts.wrapping_sub(last) as i32;
            // A peer can step +2^31 ms per message: saturate rather than overflow.
            self.base = self.base.saturating_add(diff as i64);
        } else {
            self.base = ts as i64;
        }
        self.last = Some(ts);
        self.base
    }
}

impl FlvDemuxer {
    pub fn new() -> FlvDemuxer {
        FlvDemuxer::default()
    }

    /// The current video configuration, once a sequence header was seen.
    pub fn video_config(&self) -> Option<(Codec, Arc<CodecConfig>)> {
        self.video.as_ref().map(|v| (v.codec, v.config.clone()))
    }

    pub fn audio_config(&self) -> Option<Arc<CodecConfig>> {
        self.audio.clone()
    }

    /// One video tag body with its RTMP timestamp (ms). `Ok(None)` for sequence headers and ends.
    pub fn video(&mut self, ts_ms: u32, body: &[u8]) -> Result<Option<Frame>, FlvError> {
        let b0 = *body.first().ok_or(FlvError::Short)?;
        let keyframe = (b0 >> 4) & 7 == 1;
        let (codec, packet_type, cts, payload) = if b0 & 0x80 != 0 {
            // Enhanced RTMP: [1 IsExHeader][3 FrameType][4 PacketType][FourCC]
            let fourcc: [u8; 4] = body.get(1..5).ok_or(FlvError::Short)?.try_into().map_err(|_| FlvError::Short)?;
            if &fourcc != b"hvc1" {
                return Err(FlvError::FourCc(fourcc));
            }
            match b0 & 0x0F {
                EX_SEQUENCE_START => (Codec::H265, 0, 0, &body[5..]),
                EX_CODED_FRAMES => {
                    let c = body.get(5..8).ok_or(FlvError::Short)?;
                    (Codec::H265, 1, read_i24(c), &body[8..])
                }
                EX_CODED_FRAMES_X => (Codec::H265, 1, 0, &body[5..]),
                EX_SEQUENCE_END => return Ok(None),
                _ => return Ok(None), // metadata / multitrack: ignored
            }
        } else {
            let codec = match b0 & 0x0F {
                CODEC_ID_AVC => Codec::H264,
                CODEC_ID_HEVC_LEGACY => Codec::H265,
                id => return Err(FlvError::VideoCodec(id)),
            };
            if body.len() < 5 {
                return Err(FlvError::Short);
            }
            (codec, body[1], read_i24(&body[2..5]), &body[5..])
        };
        match packet_type {
            0 => {
                self.set_video_config(codec, payload)?;
                Ok(None)
            }
            1 => {
                let track = self.video.as_ref().filter(|t| t.codec == codec).ok_or(FlvError::NoConfig)?;
                let dts = self.video_clock.extend_90k(ts_ms);
                let pts = dts + cts as i64 * 90;
                let data = to_avcc(codec, payload, track.length_size, keyframe, &track.config);
                if data.is_empty() {
                    return Ok(None);
                }
                Ok(Some(Frame {
                    codec,
                    pts,
                    dts,
                    keyframe,
                    data,
                    config: track.config.clone(),
                    cache: FrameCache::default(),
                }))
            }
            _ => Ok(None),
        }
    }

    fn set_video_config(&mut self, codec: Codec, record: &[u8]) -> Result<(), FlvError> {
        let ps = match codec {
            Codec::H264 => parse_avc_decoder_config(record),
            _ => parse_hevc_decoder_config(record),
        }
        .ok_or(FlvError::BadConfig)?;
        let sps = ps.sps.first().cloned().ok_or(FlvError::BadConfig)?;
        let pps = ps.pps.first().cloned().ok_or(FlvError::BadConfig)?;
        let (width, height, profile, level) = match codec {
            Codec::H264 => h264::parse_sps(&sps).map(|s| (s.width, s.height, s.profile, s.level)),
            _ => h265::parse_sps(&sps).map(|s| (s.width, s.height, s.profile, s.level)),
        }
        .unwrap_or_default();
        let cfg = VideoConfig { vps: ps.vps.first().cloned(), sps, pps, width, height, profile, level };
        if let Some(t) = &self.video {
            if t.codec == codec && *t.config == CodecConfig::Video(cfg.clone()) && t.length_size == ps.length_size {
                return Ok(());
            }
        }
        self.video = Some(VideoTrack { codec, config: Arc::new(CodecConfig::Video(cfg)), length_size: ps.length_size });
        Ok(())
    }

    /// One audio tag body: AAC, or G.711 A-law/µ-law (sound formats 7 and 8, always 8 kHz mono
    /// in FLV, E.4.2.1); `Ok(None)` for the AAC sequence header.
    pub fn audio(&mut self, ts_ms: u32, body: &[u8]) -> Result<Option<Frame>, FlvError> {
        let b0 = *body.first().ok_or(FlvError::Short)?;
        if let Some(codec) = match b0 >> 4 {
            SOUND_FORMAT_G711A => Some(Codec::G711A),
            SOUND_FORMAT_G711U => Some(Codec::G711U),
            _ => None,
        } {
            if body.len() < 2 {
                return Ok(None);
            }
            let config = self
                .g711
                .get_or_insert_with(|| {
                    Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: 8_000, channels: 1, asc: None }))
                })
                .clone();
            let t = self.audio_clock.extend_90k(ts_ms);
            return Ok(Some(Frame {
                codec,
                pts: t,
                dts: t,
                keyframe: true,
                data: Bytes::copy_from_slice(&body[1..]),
                config,
                cache: FrameCache::default(),
            }));
        }
        if b0 >> 4 != SOUND_FORMAT_AAC {
            return Err(FlvError::SoundFormat(b0 >> 4));
        }
        let kind = *body.get(1).ok_or(FlvError::Short)?;
        let payload = &body[2..];
        if kind == 0 {
            let (sample_rate, channels) = parse_asc(payload).ok_or(FlvError::BadConfig)?;
            let cfg =
                CodecConfig::Audio(AudioConfig { sample_rate, channels, asc: Some(Bytes::copy_from_slice(payload)) });
            if self.audio.as_deref() != Some(&cfg) {
                self.audio = Some(Arc::new(cfg));
            }
            return Ok(None);
        }
        let config = self.audio.clone().ok_or(FlvError::NoConfig)?;
        if payload.is_empty() {
            return Ok(None);
        }
        let t = self.audio_clock.extend_90k(ts_ms);
        Ok(Some(Frame {
            codec: Codec::Aac,
            pts: t,
            dts: t,
            keyframe: true,
            data: Bytes::copy_from_slice(payload),
            config,
            cache: FrameCache::default(),
        }))
    }
}

/// Sample rate and channel count of an AudioSpecificConfig.
pub fn parse_asc(asc: &[u8]) -> Option<(u32, u8)> {
    const RATES: [u32; 13] = [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];
    if asc.len() < 2 {
        return None;
    }
    let mut r = nal::BitReader::new(asc);
    let mut aot = r.bits(5)?;
    if aot == 31 {
        aot = 32 + r.bits(6)?;
    }
    let _ = aot;
    let idx = r.bits(4)? as usize;
    let rate = if idx == 15 { r.bits(24)? } else { *RATES.get(idx)? };
    let channels = r.bits(4)? as u8;
    Some((rate, channels))
}

/// Re-frames NAL units to 4-byte lengths, drops AUDs, and puts the parameter sets in band on a
/// keyframe that lacks them.
fn to_avcc(codec: Codec, payload: &[u8], length_size: usize, keyframe: bool, config: &CodecConfig) -> Bytes {
    let mut nals: Vec<&[u8]> = Vec::new();
    let mut i = 0;
    while i + length_size <= payload.len() {
        let mut n = 0usize;
        for k in 0..length_size {
            n = (n << 8) | payload[i + k] as usize;
        }
        i += length_size;
        if n == 0 || i + n > payload.len() {
            break;
        }
        nals.push(&payload[i..i + n]);
        i += n;
    }
    let is_aud = |n: &[u8]| match codec {
        Codec::H264 => h264::nal_type(n[0]) == 9,
        _ => h265::nal_type(n[0]) == 35,
    };
    let is_ps = |n: &[u8]| match codec {
        Codec::H264 => matches!(h264::nal_type(n[0]), 7 | 8),
        _ => matches!(h265::nal_type(n[0]), 32..=34),
    };
    let mut out = BytesMut::with_capacity(payload.len() + 64);
    let has_ps = nals.iter().any(|n| is_ps(n));
    if keyframe && !has_ps {
        if let CodecConfig::Video(v) = config {
            for ps in v.vps.iter().chain([&v.sps, &v.pps]) {
                if !ps.is_empty() {
                    out.put_u32(ps.len() as u32);
                    out.put_slice(ps);
                }
            }
        }
    }
    for n in nals.into_iter().filter(|n| !is_aud(n)) {
        out.put_u32(n.len() as u32);
        out.put_slice(n);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publisher stepping every timestamp by +2^31-1 ms cannot overflow the unwrapped clock.
    #[test]
    fn timestamps_that_leap_forward_for_ever_saturate() {
        let mut d = FlvDemuxer::new();
        let mut ts = 0u32;
        d.audio_clock.extend(ts);
        // As after about 4e9 such messages.
        d.audio_clock.base = i64::MAX - 10;
        for _ in 0..4 {
            ts = ts.wrapping_add(0x7fff_ffff);
            assert_eq!(d.audio_clock.extend_90k(ts), i64::MAX);
        }
        let f = d.audio(ts.wrapping_add(0x7fff_ffff), &[SOUND_FORMAT_G711A << 4, 0xd5]).unwrap().unwrap();
        assert_eq!(f.pts, i64::MAX);
    }

    #[test]
    fn g711_tags_become_8khz_mono_frames() {
        let mut d = FlvDemuxer::new();
        let f = d.audio(40, &[(SOUND_FORMAT_G711A << 4) | 0x02, 0xd5, 0xd5]).unwrap().unwrap();
        assert_eq!((f.codec, f.pts, f.data.len()), (Codec::G711A, 40 * 90, 2));
        assert!(matches!(&*f.config, CodecConfig::Audio(a) if a.sample_rate == 8_000 && a.channels == 1));
        let f = d.audio(60, &[SOUND_FORMAT_G711U << 4, 0xff]).unwrap().unwrap();
        assert_eq!(f.codec, Codec::G711U);
        assert!(matches!(d.audio(80, &[SOUND_FORMAT_G711U << 4]), Ok(None)));
        assert!(matches!(d.audio(80, &[0x20, 0]), Err(FlvError::SoundFormat(2))));
    }

    /// The first VPS/SPS/PPS in one of the project's PS fixtures.
    fn fixture_params(name: &str, h265: bool) -> (Option<Bytes>, Bytes, Bytes) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
        let data = std::fs::read(path).unwrap();
        let (mut vps, mut sps, mut pps) = (None, None, None);
        for n in nal::annexb_nals(&data) {
            let n = nal::trim_trailing_zeros(n);
            if n.is_empty() {
                continue;
            }
            let t = if h265 { h265::nal_type(n[0]) } else { h264::nal_type(n[0]) };
            let slot = match (h265, t) {
                (true, 32) => &mut vps,
                (true, 33) | (false, 7) => &mut sps,
                (true, 34) | (false, 8) => &mut pps,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(Bytes::copy_from_slice(n));
            }
        }
        (vps, sps.unwrap(), pps.unwrap())
    }

    fn video_cfg(vps: Option<Bytes>, sps: Bytes, pps: Bytes, h265: bool) -> VideoConfig {
        let (width, height, profile, level) = if h265 {
            let s = h265::parse_sps(&sps).unwrap();
            (s.width, s.height, s.profile, s.level)
        } else {
            let s = h264::parse_sps(&sps).unwrap();
            (s.width, s.height, s.profile, s.level)
        };
        VideoConfig { vps, sps, pps, width, height, profile, level }
    }

    fn frame(codec: Codec, cfg: CodecConfig, data: Bytes, pts: i64, dts: i64, keyframe: bool) -> Frame {
        Frame { codec, pts, dts, keyframe, data, config: Arc::new(cfg), cache: FrameCache::default() }
    }

    fn avcc(nals: &[&[u8]]) -> Bytes {
        let mut out = Vec::new();
        for n in nals {
            nal::write_avcc_nal(&mut out, n);
        }
        Bytes::from(out)
    }

    #[test]
    fn avc_record_from_fixture_round_trips() {
        let (_, sps, pps) = fixture_params("h264_g711a_8k.ps", false);
        let rec = avc_decoder_config(&sps, &pps);
        assert_eq!(&rec[..6], &[1, sps[1], sps[2], sps[3], 0xFF, 0xE1]);
        let ps = parse_avc_decoder_config(&rec).unwrap();
        assert_eq!((ps.sps, ps.pps, ps.length_size), (vec![sps], vec![pps], 4));
    }

    #[test]
    fn hevc_record_from_fixture_round_trips_and_carries_the_sps_ptl() {
        let (vps, sps, pps) = fixture_params("h265_aac_16k.ps", true);
        let vps = vps.unwrap();
        let rec = hevc_decoder_config(&vps, &sps, &pps);
        let info = h265::parse_sps(&sps).unwrap();
        assert_eq!(rec[0], 1);
        assert_eq!(rec[1] & 0x1F, info.profile);
        assert_eq!(rec[12], info.level);
        assert_eq!(rec[21] & 3, 3);
        let ps = parse_hevc_decoder_config(&rec).unwrap();
        assert_eq!((ps.vps, ps.sps, ps.pps, ps.length_size), (vec![vps], vec![sps], vec![pps], 4));
    }

    fn round_trip_video(codec: Codec, fixture: &str, hevc: HevcFlv) {
        let h265 = codec == Codec::H265;
        let (vps, sps, pps) = fixture_params(fixture, h265);
        let cfg = video_cfg(vps.clone(), sps.clone(), pps.clone(), h265);
        let (w, h) = (cfg.width, cfg.height);
        let idr: &[u8] = if h265 { &[0x26, 0x01, 0xAA, 0xBB] } else { &[0x65, 0x88, 0x84] };
        let p: &[u8] = if h265 { &[0x02, 0x01, 0xCC] } else { &[0x41, 0x9A, 0x02] };
        let mut key_nals: Vec<&[u8]> = vps.as_deref().into_iter().collect();
        key_nals.extend([&sps[..], &pps[..], idr]);
        let key = frame(codec, CodecConfig::Video(cfg.clone()), avcc(&key_nals), 9000, 9000, true);
        let inter = frame(codec, CodecConfig::Video(cfg.clone()), avcc(&[p]), 18000 + 3600, 12600, false);
        let seq = sequence_header(&key, hevc).unwrap();
        let kt = cached_frame_tag(&key, hevc).unwrap();
        let it = frame_tag(&inter, hevc).unwrap();
        let cell = if h265 && hevc == HevcFlv::Legacy { &key.cache.flv_legacy } else { &key.cache.flv };
        assert_eq!(cell.get(), Some(&kt));
        if h265 {
            // Both forms of one frame live side by side: an RTMP and an HTTP-FLV player may differ.
            let other = if hevc == HevcFlv::Legacy { HevcFlv::Enhanced } else { HevcFlv::Legacy };
            assert_eq!(cached_frame_tag(&key, other), frame_tag(&key, other));
            assert_eq!(cached_frame_tag(&key, hevc).unwrap(), kt);
        }
        match hevc {
            HevcFlv::Enhanced if h265 => {
                assert_eq!(&seq[..5], b"\x90hvc1");
                assert_eq!(&kt[..5], b"\x93hvc1"); // CodedFramesX: no composition time
                assert_eq!(&it[..8], b"\xA1hvc1\x00\x00\x64"); // CodedFrames, cts 100 ms
            }
            _ => {
                let id = if h265 { CODEC_ID_HEVC_LEGACY } else { CODEC_ID_AVC };
                assert_eq!(&seq[..5], &[0x10 | id, 0, 0, 0, 0]);
                assert_eq!(&kt[..5], &[0x10 | id, 1, 0, 0, 0]);
                assert_eq!(&it[..5], &[0x20 | id, 1, 0, 0, 100]);
            }
        }
        let mut d = FlvDemuxer::new();
        assert_eq!(d.video(0, &seq).unwrap().map(|f| f.pts), None);
        let (c, vc) = d.video_config().unwrap();
        assert_eq!(c, codec);
        let CodecConfig::Video(v) = &*vc else { panic!() };
        assert_eq!((v.width, v.height, &v.sps, &v.pps, &v.vps), (w, h, &sps, &pps, &vps));
        let f = d.video(timestamp_ms(&key), &kt).unwrap().unwrap();
        assert_eq!((f.codec, f.pts, f.dts, f.keyframe, &f.data), (codec, 9000, 9000, true, &key.data));
        let f = d.video(timestamp_ms(&inter), &it).unwrap().unwrap();
        assert_eq!((f.pts, f.dts, f.keyframe, &f.data), (21600, 12600, false, &inter.data));
    }

    #[test]
    fn avc_tags_round_trip() {
        round_trip_video(Codec::H264, "h264_g711a_8k.ps", HevcFlv::Enhanced);
    }

    #[test]
    fn hevc_enhanced_tags_round_trip() {
        round_trip_video(Codec::H265, "h265_aac_16k.ps", HevcFlv::Enhanced);
    }

    #[test]
    fn hevc_legacy_codec_id_12_tags_round_trip() {
        round_trip_video(Codec::H265, "h265_g711a_8k.ps", HevcFlv::Legacy);
    }

    #[test]
    fn publish_keyframe_without_parameter_sets_gets_them_in_band_and_loses_its_aud() {
        let (_, sps, pps) = fixture_params("h264_g711a_8k.ps", false);
        let mut d = FlvDemuxer::new();
        let mut seq = vec![0x17, 0, 0, 0, 0];
        seq.extend_from_slice(&avc_decoder_config(&sps, &pps));
        d.video(0, &seq).unwrap();
        let mut tag = vec![0x17, 1, 0, 0, 0];
        tag.extend_from_slice(&avcc(&[&[0x09, 0xF0], &[0x65, 1, 2]]));
        let f = d.video(40, &tag).unwrap().unwrap();
        assert_eq!(f.data, avcc(&[&sps, &pps, &[0x65, 1, 2]]));
        assert_eq!((f.pts, f.dts), (3600, 3600));
        // A frame before any sequence header is refused, not a panic.
        assert_eq!(FlvDemuxer::new().video(0, &tag).unwrap_err(), FlvError::NoConfig);
    }

    #[test]
    fn aac_tags_round_trip_and_g711_is_omitted() {
        let asc = Bytes::from_static(&[0x14, 0x08]); // AAC-LC, 16 kHz, mono
        let cfg = AudioConfig { sample_rate: 16000, channels: 1, asc: Some(asc.clone()) };
        let f = frame(Codec::Aac, CodecConfig::Audio(cfg.clone()), Bytes::from_static(&[1, 2, 3]), 5760, 5760, true);
        let seq = sequence_header(&f, HevcFlv::Enhanced).unwrap();
        assert_eq!(&seq[..], &[0xAF, 0, 0x14, 0x08]);
        let tag = frame_tag(&f, HevcFlv::Enhanced).unwrap();
        assert_eq!(&tag[..], &[0xAF, 1, 1, 2, 3]);
        let mut d = FlvDemuxer::new();
        assert!(d.audio(0, &seq).unwrap().is_none());
        assert_eq!(*d.audio_config().unwrap(), CodecConfig::Audio(cfg));
        let back = d.audio(64, &tag).unwrap().unwrap();
        assert_eq!((back.codec, back.pts, &back.data[..]), (Codec::Aac, 5760, &[1u8, 2, 3][..]));
        let g711 = AudioConfig { sample_rate: 8000, channels: 1, asc: None };
        let g = frame(Codec::G711A, CodecConfig::Audio(g711), Bytes::from_static(&[0xD5; 320]), 0, 0, true);
        assert!(frame_tag(&g, HevcFlv::Enhanced).is_none());
        assert!(sequence_header(&g, HevcFlv::Enhanced).is_none());
    }

    #[test]
    fn timestamps_unwrap_past_32_bits() {
        let mut u = Unwrap::default();
        assert_eq!(u.extend(u32::MAX - 10), u32::MAX as i64 - 10);
        assert_eq!(u.extend(29), u32::MAX as i64 + 30);
    }

    #[test]
    fn garbage_never_panics() {
        let mut d = FlvDemuxer::new();
        for body in [&[][..], &[0x17], &[0x90, b'h'], &[0x1C, 0, 0, 0, 0, 1], &[0xAF, 0, 0xFF], &[0xAF]] {
            let _ = d.video(0, body);
            let _ = d.audio(0, body);
        }
    }
}
