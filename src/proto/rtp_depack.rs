//! RTP payload formats -> [`Frame`]s, one depacketizer per track, sans-IO.
//!
//! - H.264, RFC 6184: single NAL unit (5.6), STAP-A (5.7.1), FU-A (5.8).
//! - H.265, RFC 7798: single NAL unit (4.4.1), AP (4.4.2), FU (4.4.3), DONL when
//!   `sprop-max-don-diff` > 0.
//! - AAC, RFC 3640 `mpeg4-generic` (AAC-hbr / AAC-lbr: AU headers sized by the fmtp, fragmented
//!   AUs, 3.2/3.3) and RFC 6416 `MP4A-LATM` with `cpresent=0` (the StreamMuxConfig in the fmtp).
//! - G.711, RFC 3551 `PCMA`/`PCMU` at the clock rate and channel count the SDP declares (the
//!   media stage's rate detector may still correct a lying rate, D55).
//!
//! Video access units are cut at the marker bit or at a timestamp change (the marker may be lost),
//! bounded by [`DEFAULT_MAX_AU`] bytes. A sequence gap marks the pending AU broken: it is dropped,
//! and so is everything up to the next AU boundary ("waiting for the next start"). Parameter sets
//! come from the SDP (`sprop-parameter-sets`, `sprop-vps/sps/pps`) and in band; a keyframe without
//! them in band gets them prepended (frames carry their parameter sets, see `crate::frame`).
//! RTP timestamps are unwrapped (32-bit wrap) and rescaled from the track clock to 90 kHz. RTP
//! carries no decode time: [`DtsEstimator`] derives one that is monotonic and never after the
//! presentation time, so B-frames survive the timestamp repair (see D77).
//! (This lives in `proto`, not `codec`: it reads `proto::rtp` packets and `proto::sdp` media, and
//! `proto` already imports `codec`; tests/layering.rs forbids the cycle.)
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;

use crate::codec::nal::{write_avcc_nal, BitReader};
use crate::codec::{aac, h264, h265};
use crate::frame::{AudioConfig, Codec, CodecConfig, Frame, VideoConfig, CLOCK_RATE};
use crate::proto::flv::parse_asc;
use crate::proto::rtp::RtpPacket;
use crate::proto::sdp::{decode_hex, SdpMedia};

/// Largest access unit assembled (bytes); a bigger one is dropped and counted.
pub const DEFAULT_MAX_AU: usize = 4 << 20;
/// Smallest cap [`Depacketizer::with_max_access_unit`] accepts.
pub const MIN_MAX_AU: usize = 16 << 10;
/// A forward sequence jump larger than this is a restart of the sender, not loss (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;
/// A backward step up to this is a late or duplicate packet; further back is a restart.
const MAX_MISORDER: u16 = 100;
/// AAC frames per RTP packet accepted (RFC 3640 AU headers, LATM subframes).
const MAX_AUS_PER_PACKET: usize = 64;
/// AAC samples per frame (AAC-LC, ISO 14496-3 4.5.1.1; the 960-sample variant is not used by RTSP
/// senders we know of).
const AAC_FRAME_SAMPLES: i64 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepackError {
    #[error("unsupported RTP encoding {0:?}")]
    Unsupported(String),
    #[error("{encoding}: missing or invalid clock rate")]
    ClockRate { encoding: String },
    #[error("{encoding}: unusable fmtp {param}")]
    Fmtp { encoding: String, param: &'static str },
}

/// Counters of one track.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DepackStats {
    /// RTP packets handed in.
    pub packets: u64,
    pub bytes: u64,
    /// Sequence numbers missing (forward gaps up to [`MAX_DROPOUT`]).
    pub lost: u64,
    /// Packets older than the last one (late or duplicate), dropped.
    pub late: u64,
    /// Sequence restarts (large jumps), not counted as loss.
    pub restarts: u64,
    /// Packets whose payload type is not the track's (e.g. comfort noise), dropped.
    pub wrong_payload_type: u64,
    /// Payloads that do not parse (truncated aggregation, bad AU headers, FU without start).
    pub bad_packets: u64,
    /// NAL types or payload kinds this depacketizer does not handle (STAP-B, MTAP, PACI...).
    pub unsupported: u64,
    /// Access units dropped: a packet of them was lost or malformed, or they were too big.
    pub dropped_aus: u64,
    /// Access units dropped for exceeding the byte bound (also in `dropped_aus`).
    pub oversize: u64,
    /// Video AUs held back: before the parameter sets or the first keyframe.
    pub held: u64,
    pub frames: u64,
    pub keyframes: u64,
}

/// Unwraps 32-bit RTP timestamps and rescales them to 90 kHz.
#[derive(Debug, Clone)]
struct Clock {
    rate: i64,
    last: Option<u32>,
    ext: i64,
}

impl Clock {
    fn new(rate: u32) -> Clock {
        Clock { rate: rate.max(1) as i64, last: None, ext: 0 }
    }

    /// The widened track-clock time of `ts`: the nearest candidate to the previous one.
    fn extend(&mut self, ts: u32) -> i64 {
        match self.last {
            Some(last) => self.ext = self.ext.saturating_add(ts.wrapping_sub(last) as i32 as i64),
            None => self.ext = ts as i64,
        }
        self.last = Some(ts);
        self.ext
    }

    fn to_90k(&self, ext: i64) -> i64 {
        if self.rate == CLOCK_RATE {
            return ext;
        }
        let v = (ext as i128) * (CLOCK_RATE as i128) / (self.rate as i128);
        v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }
}

/// One track's depacketizer.
pub struct Depacketizer {
    codec: Codec,
    payload_type: u8,
    clock: Clock,
    max_au: usize,
    last_seq: Option<u16>,
    inner: Inner,
    stats: DepackStats,
}

enum Inner {
    Video(Box<VideoDepack>),
    Aac(AacDepack),
    Latm(LatmDepack),
    G711(Arc<CodecConfig>),
}

impl Depacketizer {
    /// A depacketizer for one SDP media section.
    pub fn new(media: &SdpMedia) -> Result<Depacketizer, DepackError> {
        let enc = media.encoding.to_ascii_uppercase();
        let rate = media.clock_rate;
        let err_rate = || DepackError::ClockRate { encoding: enc.clone() };
        let (codec, inner) = match enc.as_str() {
            "H264" | "H265" | "HEVC" => {
                if rate == 0 {
                    return Err(err_rate());
                }
                let h265 = enc != "H264";
                let v = VideoDepack::new(h265, media);
                (if h265 { Codec::H265 } else { Codec::H264 }, Inner::Video(Box::new(v)))
            }
            "MPEG4-GENERIC" => {
                if rate == 0 {
                    return Err(err_rate());
                }
                (Codec::Aac, Inner::Aac(AacDepack::new(media, &enc)?))
            }
            "MP4A-LATM" => {
                if rate == 0 {
                    return Err(err_rate());
                }
                (Codec::Aac, Inner::Latm(LatmDepack::new(media, &enc)?))
            }
            "PCMA" | "PCMU" => {
                let rate = if rate == 0 { 8000 } else { rate };
                let cfg = AudioConfig { sample_rate: rate, channels: media.channels.max(1), asc: None };
                let codec = if enc == "PCMA" { Codec::G711A } else { Codec::G711U };
                (codec, Inner::G711(Arc::new(CodecConfig::Audio(cfg))))
            }
            _ => return Err(DepackError::Unsupported(media.encoding.clone())),
        };
        let rate = if rate == 0 { 8000 } else { rate };
        Ok(Depacketizer {
            codec,
            payload_type: media.payload_type,
            clock: Clock::new(rate),
            max_au: DEFAULT_MAX_AU,
            last_seq: None,
            inner,
            stats: DepackStats::default(),
        })
    }

    /// Sets the access-unit byte bound (at least [`MIN_MAX_AU`]).
    pub fn with_max_access_unit(mut self, max: usize) -> Self {
        self.max_au = max.max(MIN_MAX_AU);
        self
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The RTP clock rate of the track.
    pub fn clock_rate(&self) -> u32 {
        self.clock.rate as u32
    }

    /// The track's configuration: known up front for audio; for video once SPS/PPS (and VPS) are
    /// known, from the SDP or in band.
    pub fn config(&self) -> Option<Arc<CodecConfig>> {
        match &self.inner {
            Inner::Video(v) => v.config.clone(),
            Inner::Aac(a) => Some(a.config.clone()),
            Inner::Latm(l) => Some(l.config.clone()),
            Inner::G711(c) => Some(c.clone()),
        }
    }

    pub fn stats(&self) -> &DepackStats {
        &self.stats
    }

    /// Forgets partial state (a transport discontinuity the caller knows of, e.g. a reorder
    /// buffer reset): the pending unit is dropped, the next packet is not compared to the last.
    pub fn reset(&mut self) {
        self.last_seq = None;
        match &mut self.inner {
            Inner::Video(v) => v.broken |= v.au_ts.is_some(),
            Inner::Aac(a) => a.drop_frag(&mut self.stats),
            Inner::Latm(l) => l.broken |= l.buf_ext.is_some(),
            Inner::G711(_) => {}
        }
    }

    /// Feeds one RTP packet (in sequence order; UDP goes through `proto::rtp::reorder` first).
    pub fn push(&mut self, pkt: &RtpPacket, out: &mut Vec<Frame>) {
        self.stats.packets += 1;
        self.stats.bytes += pkt.payload.len() as u64;
        if pkt.payload_type != self.payload_type {
            self.stats.wrong_payload_type += 1;
            return;
        }
        let mut gap = false;
        if let Some(last) = self.last_seq {
            let d = pkt.seq.wrapping_sub(last);
            if d == 0 || (d > 0x8000 && d.wrapping_neg() <= MAX_MISORDER) {
                self.stats.late += 1;
                return;
            }
            if d != 1 {
                if d <= MAX_DROPOUT {
                    self.stats.lost += (d - 1) as u64;
                } else {
                    self.stats.restarts += 1;
                }
                gap = true;
            }
        }
        self.last_seq = Some(pkt.seq);
        let ext = self.clock.extend(pkt.timestamp);
        let before = out.len();
        let max_au = self.max_au;
        match &mut self.inner {
            Inner::Video(v) => v.push(pkt, gap, ext, &self.clock, max_au, out, &mut self.stats),
            Inner::Aac(a) => a.push(pkt, gap, ext, &self.clock, max_au, out, &mut self.stats),
            Inner::Latm(l) => l.push(pkt, gap, ext, &self.clock, max_au, out, &mut self.stats),
            Inner::G711(cfg) => {
                if !pkt.payload.is_empty() {
                    let t = self.clock.to_90k(ext);
                    out.push(audio_frame(self.codec, t, pkt.payload.clone(), cfg));
                }
            }
        }
        for f in &out[before..] {
            self.stats.frames += 1;
            self.stats.keyframes += f.keyframe as u64;
        }
    }
}

fn audio_frame(codec: Codec, t: i64, data: Bytes, cfg: &Arc<CodecConfig>) -> Frame {
    Frame { codec, pts: t, dts: t, keyframe: true, data, config: cfg.clone(), cache: Default::default() }
}

// ---------------------------------------------------------------------------------------------
// H.264 / H.265

struct VideoDepack {
    h265: bool,
    /// RFC 7798 4.4: DONL/DOND fields are present when sprop-max-don-diff > 0.
    donl: bool,
    /// The pending AU, AVCC (4-byte lengths).
    au: Vec<u8>,
    au_ts: Option<u32>,
    au_ext: i64,
    au_vcl: bool,
    au_key: bool,
    au_params: bool,
    /// A packet of the pending AU was lost or malformed: drop it at its end.
    broken: bool,
    /// The NAL being reassembled from fragments.
    fu: Vec<u8>,
    fu_active: bool,
    vps: Option<Bytes>,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    config: Option<Arc<CodecConfig>>,
    need_key: bool,
    dts: DtsEstimator,
}

/// Frames whose presentation times the estimator remembers (more than any reorder depth).
const DTS_WINDOW: usize = 32;
/// Largest reorder depth (frames) believed; H.264/H.265 allow at most 16.
const MAX_REORDER: usize = 16;

/// A decode timestamp for video received in decode order with presentation times only.
///
/// With a reorder depth of `n` frames (B-frames), the frame decoded `i`th may be shown `n` frames
/// later; the `(n+1)`th largest presentation time seen so far is then a valid decode time: it is
/// never after the current frame's PTS and it grows by one frame per frame (an IBBP GOP gives
/// 0, 1, 2, ... one frame behind the display order). `n` comes from the SPS when it says (H.264
/// VUI `max_num_reorder_frames`) and is learnt from how many earlier frames show after a frame.
#[derive(Debug, Clone, Default)]
pub struct DtsEstimator {
    window: std::collections::VecDeque<i64>,
    reorder: usize,
    last: Option<i64>,
}

impl DtsEstimator {
    pub fn new() -> DtsEstimator {
        DtsEstimator::default()
    }

    /// The reorder depth in use (frames).
    pub fn reorder(&self) -> usize {
        self.reorder
    }

    /// A reorder depth signalled by the stream (never lowers what was learnt).
    pub fn signal_reorder(&mut self, n: usize) {
        self.reorder = self.reorder.max(n.min(MAX_REORDER));
    }

    /// The decode time of the next frame in decode order, presented at `pts`.
    pub fn next(&mut self, pts: i64) -> i64 {
        if self.last.is_some_and(|l| pts < l.saturating_sub(10 * crate::frame::CLOCK_RATE)) {
            // The sender's clock restarted far back: what was seen says nothing any more.
            self.window.clear();
            self.last = None;
        }
        let later = self.window.iter().filter(|&&p| p > pts).count();
        self.signal_reorder(later);
        if self.window.len() == DTS_WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(pts);
        let mut sorted: Vec<i64> = self.window.iter().copied().collect();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        // Before `reorder + 1` frames were seen, extrapolate below the smallest one by a frame
        // (25 fps) per missing frame.
        let mut dts = match sorted.get(self.reorder) {
            Some(&d) => d,
            None => {
                let missing = (self.reorder + 1 - sorted.len()) as i64;
                sorted.last().copied().unwrap_or(pts).saturating_sub(missing * 3600)
            }
        };
        dts = dts.min(pts);
        if let Some(last) = self.last {
            // Decode times strictly increase; when the depth was just learnt this may pass the
            // PTS of a few frames, which the timestamp repair then fixes (`video_pts_fixed`).
            if dts <= last {
                dts = last + 1;
            }
        }
        self.last = Some(dts);
        dts
    }
}

/// `max_num_reorder_frames` of an H.264 SPS's VUI bitstream restrictions, if present.
fn h264_reorder_frames(sps: &[u8]) -> Option<usize> {
    use h264_reader::nal::sps::SeqParameterSet;
    use h264_reader::rbsp::{decode_nal, BitReader as RbspReader};
    let rbsp = decode_nal(sps).ok()?;
    let sps = SeqParameterSet::from_bits(RbspReader::new(&rbsp[..])).ok()?;
    let n = sps.vui_parameters?.bitstream_restrictions?.max_num_reorder_frames;
    Some(n as usize)
}

fn b64(s: &str) -> Option<Bytes> {
    let v = base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()?;
    (!v.is_empty()).then(|| Bytes::from(v))
}

impl VideoDepack {
    fn new(h265: bool, media: &SdpMedia) -> VideoDepack {
        let mut v = VideoDepack {
            h265,
            donl: media.fmtp("sprop-max-don-diff").and_then(|d| d.parse::<u32>().ok()).is_some_and(|d| d > 0),
            au: Vec::new(),
            au_ts: None,
            au_ext: 0,
            au_vcl: false,
            au_key: false,
            au_params: false,
            broken: false,
            fu: Vec::new(),
            fu_active: false,
            vps: None,
            sps: None,
            pps: None,
            config: None,
            need_key: true,
            dts: DtsEstimator::new(),
        };
        // Parameter sets from the SDP (RFC 6184 8.1 sprop-parameter-sets; RFC 7798 7.1 sprop-*).
        let mut sets: Vec<Bytes> = Vec::new();
        if h265 {
            for k in ["sprop-vps", "sprop-sps", "sprop-pps"] {
                for s in media.fmtp(k).unwrap_or("").split(',') {
                    sets.extend(b64(s));
                }
            }
        } else {
            for s in media.fmtp("sprop-parameter-sets").unwrap_or("").split(',') {
                sets.extend(b64(s));
            }
        }
        for s in sets {
            v.note_param(&s);
        }
        v.rebuild_config();
        v
    }

    /// (vcl, key, param, aud) of a NAL header byte.
    fn classify(&self, h: u8) -> (bool, bool, bool, bool) {
        if self.h265 {
            let t = h265::nal_type(h);
            (h265::is_vcl(t), h265::is_irap(t), (32..=34).contains(&t), t == h265::NAL_AUD)
        } else {
            let t = h264::nal_type(h);
            (h264::is_vcl(t), t == h264::NAL_IDR, t == h264::NAL_SPS || t == h264::NAL_PPS, t == h264::NAL_AUD)
        }
    }

    /// Stores a parameter set; true when it changed.
    fn note_param(&mut self, nal: &[u8]) -> bool {
        let Some(&h) = nal.first() else { return false };
        let slot = if self.h265 {
            match h265::nal_type(h) {
                h265::NAL_VPS => &mut self.vps,
                h265::NAL_SPS => &mut self.sps,
                h265::NAL_PPS => &mut self.pps,
                _ => return false,
            }
        } else {
            match h264::nal_type(h) {
                h264::NAL_SPS => &mut self.sps,
                h264::NAL_PPS => &mut self.pps,
                _ => return false,
            }
        };
        if slot.as_deref() == Some(nal) {
            return false;
        }
        *slot = Some(Bytes::copy_from_slice(nal));
        true
    }

    fn rebuild_config(&mut self) {
        let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else { return };
        let info = if self.h265 {
            if self.vps.is_none() {
                return;
            }
            h265::parse_sps(sps).map(|i| (i.width, i.height, i.profile, i.level))
        } else {
            h264::parse_sps(sps).map(|i| (i.width, i.height, i.profile, i.level))
        };
        let (width, height, profile, level) = info.unwrap_or_default();
        if !self.h265 {
            if let Some(n) = h264_reorder_frames(sps) {
                self.dts.signal_reorder(n);
            }
        }
        let cfg = CodecConfig::Video(VideoConfig {
            vps: if self.h265 { self.vps.clone() } else { None },
            sps: sps.clone(),
            pps: pps.clone(),
            width,
            height,
            profile,
            level,
        });
        if self.config.as_deref() != Some(&cfg) {
            self.config = Some(Arc::new(cfg));
        }
    }

    fn start_au(&mut self, ts: u32, ext: i64) {
        self.au.clear();
        self.au_ts = Some(ts);
        self.au_ext = ext;
        self.au_vcl = false;
        self.au_key = false;
        self.au_params = false;
        self.fu.clear();
        self.fu_active = false;
    }

    /// `gap`: packets were lost right before this one. The pending AU (if this packet belongs
    /// to it) or the AU this packet starts may lack parts: either is dropped at its end.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        pkt: &RtpPacket,
        gap: bool,
        ext: i64,
        clock: &Clock,
        max_au: usize,
        out: &mut Vec<Frame>,
        st: &mut DepackStats,
    ) {
        match self.au_ts {
            Some(ts) if ts != pkt.timestamp => {
                // The marker of the previous AU was lost (or the sender sets none): cut here.
                self.finish(clock, out, st);
                self.start_au(pkt.timestamp, ext);
                self.broken = gap;
            }
            Some(_) => self.broken |= gap,
            None => {
                self.start_au(pkt.timestamp, ext);
                self.broken = gap;
            }
        }
        if !self.broken {
            let ok = if self.h265 {
                self.payload_h265(&pkt.payload, max_au, st)
            } else {
                self.payload_h264(&pkt.payload, max_au, st)
            };
            if !ok {
                self.broken = true;
            }
        }
        if pkt.marker {
            self.finish(clock, out, st);
            self.au_ts = None;
        }
    }

    /// Emits the pending AU if it is whole and decodable.
    fn finish(&mut self, clock: &Clock, out: &mut Vec<Frame>, st: &mut DepackStats) {
        // Ending inside a fragmented NAL means its last fragment was lost.
        if std::mem::take(&mut self.broken) || self.fu_active {
            st.dropped_aus += self.au_ts.is_some() as u64;
            self.au.clear();
            self.fu.clear();
            self.fu_active = false;
            return;
        }
        if self.au_ts.is_none() {
            self.au.clear();
            return;
        }
        if !self.au_vcl {
            self.au.clear();
            return;
        }
        let Some(cfg) = self.config.clone() else {
            st.held += 1;
            self.au.clear();
            return;
        };
        if self.need_key && !self.au_key {
            st.held += 1;
            self.au.clear();
            return;
        }
        self.need_key = false;
        let data = if self.au_key && !self.au_params {
            let CodecConfig::Video(v) = &*cfg else { return };
            let mut d = Vec::with_capacity(self.au.len() + 256);
            for ps in v.vps.iter().chain([&v.sps, &v.pps]) {
                write_avcc_nal(&mut d, ps);
            }
            d.extend_from_slice(&self.au);
            self.au.clear();
            d
        } else {
            std::mem::take(&mut self.au)
        };
        let t = clock.to_90k(self.au_ext);
        let dts = self.dts.next(t);
        out.push(Frame {
            codec: if self.h265 { Codec::H265 } else { Codec::H264 },
            pts: t,
            dts,
            keyframe: self.au_key,
            data: Bytes::from(data),
            config: cfg,
            cache: Default::default(),
        });
    }

    /// Adds one complete NAL unit to the pending AU. False when the AU grew past the bound.
    fn add_nal(&mut self, nal: &[u8], max_au: usize, st: &mut DepackStats) -> bool {
        let Some(&h) = nal.first() else { return true };
        if h & 0x80 != 0 {
            // forbidden_zero_bit set: the sender marks a damaged NAL (RFC 6184 5.3).
            return false;
        }
        let (vcl, key, param, aud) = self.classify(h);
        if aud {
            return true;
        }
        if self.au.len() + 4 + nal.len() > max_au {
            st.oversize += 1;
            return false;
        }
        if param {
            self.au_params = true;
            if self.note_param(nal) {
                self.rebuild_config();
            }
        }
        self.au_vcl |= vcl;
        self.au_key |= key;
        write_avcc_nal(&mut self.au, nal);
        true
    }

    /// Appends a fragment; `start`/`end` from the FU header. False on a broken sequence.
    fn fragment(
        &mut self,
        header: &[u8],
        data: &[u8],
        start: bool,
        end: bool,
        max_au: usize,
        st: &mut DepackStats,
    ) -> bool {
        if start {
            if self.fu_active {
                return false; // the previous NAL's end was lost
            }
            self.fu.clear();
            self.fu.extend_from_slice(header);
            self.fu_active = true;
        } else if !self.fu_active {
            return false; // a middle/end fragment without its start
        }
        if self.au.len() + self.fu.len() + data.len() + 4 > max_au {
            st.oversize += 1;
            return false;
        }
        self.fu.extend_from_slice(data);
        if end {
            self.fu_active = false;
            let nal = std::mem::take(&mut self.fu);
            let ok = self.add_nal(&nal, max_au, st);
            self.fu = nal;
            self.fu.clear();
            return ok;
        }
        true
    }

    /// Walks `[16-bit size][NAL]...` aggregation units.
    fn aggregation(&mut self, mut b: &[u8], skip_don: bool, max_au: usize, st: &mut DepackStats) -> bool {
        let mut first = true;
        if b.is_empty() {
            return false;
        }
        while !b.is_empty() {
            if skip_don {
                // DONL (2 bytes) before the first unit, DOND (1 byte) before the others.
                let n = if first { 2 } else { 1 };
                if b.len() < n {
                    return false;
                }
                b = &b[n..];
            }
            first = false;
            if b.len() < 2 {
                return false;
            }
            let n = u16::from_be_bytes([b[0], b[1]]) as usize;
            if n == 0 || b.len() < 2 + n {
                return false;
            }
            if !self.add_nal(&b[2..2 + n], max_au, st) {
                return false;
            }
            b = &b[2 + n..];
        }
        true
    }

    fn payload_h264(&mut self, p: &[u8], max_au: usize, st: &mut DepackStats) -> bool {
        let Some(&h) = p.first() else {
            st.bad_packets += 1;
            return false;
        };
        let ok = match h & 0x1F {
            1..=23 => self.add_nal(p, max_au, st),
            24 => self.aggregation(&p[1..], false, max_au, st),
            28 => {
                if p.len() < 3 {
                    false
                } else {
                    let fu = p[1];
                    let header = [(h & 0xE0) | (fu & 0x1F)];
                    self.fragment(&header, &p[2..], fu & 0x80 != 0, fu & 0x40 != 0, max_au, st)
                }
            }
            _ => {
                // STAP-B, MTAP16/24, FU-B (interleaved mode only) and reserved types.
                st.unsupported += 1;
                return false;
            }
        };
        if !ok {
            st.bad_packets += 1;
        }
        ok
    }

    fn payload_h265(&mut self, p: &[u8], max_au: usize, st: &mut DepackStats) -> bool {
        if p.len() < 3 {
            st.bad_packets += 1;
            return false;
        }
        let ok = match h265::nal_type(p[0]) {
            0..=47 => self.add_nal(p, max_au, st),
            48 => self.aggregation(&p[2..], self.donl, max_au, st),
            49 => {
                let fu = p[2];
                let mut data = &p[3..];
                if self.donl && fu & 0x80 != 0 {
                    if data.len() < 2 {
                        st.bad_packets += 1;
                        return false;
                    }
                    data = &data[2..];
                }
                let header = [(p[0] & 0x81) | ((fu & 0x3F) << 1), p[1]];
                self.fragment(&header, data, fu & 0x80 != 0, fu & 0x40 != 0, max_au, st)
            }
            _ => {
                // PACI (50) and reserved types.
                st.unsupported += 1;
                return false;
            }
        };
        if !ok {
            st.bad_packets += 1;
        }
        ok
    }
}

// ---------------------------------------------------------------------------------------------
// AAC, RFC 3640

/// An AudioSpecificConfig from the fmtp `config=`, or one built from the rtpmap (AAC-LC).
fn aac_config(asc: Option<Vec<u8>>, rate: u32, channels: u8) -> Arc<CodecConfig> {
    if let Some(asc) = asc {
        if let Some((sample_rate, ch)) = parse_asc(&asc) {
            if (1000..=192_000).contains(&sample_rate) {
                let channels = ch.clamp(1, 8);
                return Arc::new(CodecConfig::Audio(AudioConfig {
                    sample_rate,
                    channels,
                    asc: Some(Bytes::from(asc)),
                }));
            }
        }
    }
    let idx = aac::SAMPLE_RATES.iter().position(|&r| r == rate).unwrap_or(4) as u16;
    let channels = channels.clamp(1, 7);
    let v: u16 = (2 << 11) | (idx << 7) | ((channels as u16) << 3);
    let sample_rate = aac::SAMPLE_RATES[idx as usize];
    Arc::new(CodecConfig::Audio(AudioConfig {
        sample_rate,
        channels,
        asc: Some(Bytes::copy_from_slice(&v.to_be_bytes())),
    }))
}

struct AacDepack {
    config: Arc<CodecConfig>,
    size_len: u32,
    index_len: u32,
    index_delta_len: u32,
    cts_len: u32,
    dts_len: u32,
    rap: bool,
    state_len: u32,
    /// Samples per AU in the RTP clock (`constantDuration`, default one AAC frame).
    duration: i64,
    /// A fragmented AU (RFC 3640 3.2.3): its size, timestamp and the bytes so far.
    frag: Option<(usize, u32, i64, Vec<u8>)>,
    /// Fragments of the AU with this timestamp are dropped (its start was lost).
    skip_ts: Option<u32>,
}

impl AacDepack {
    fn new(media: &SdpMedia, enc: &str) -> Result<AacDepack, DepackError> {
        let num = |k: &str, max: u32| -> Result<u32, DepackError> {
            match media.fmtp(k) {
                None => Ok(0),
                Some(v) => v.parse::<u32>().ok().filter(|n| *n <= max).ok_or(DepackError::Fmtp {
                    encoding: enc.to_string(),
                    param: match k {
                        "sizelength" => "sizelength",
                        "indexlength" => "indexlength",
                        "indexdeltalength" => "indexdeltalength",
                        "ctsdeltalength" => "ctsdeltalength",
                        "dtsdeltalength" => "dtsdeltalength",
                        _ => "streamstateindication",
                    },
                }),
            }
        };
        let size_len = num("sizelength", 32)?;
        if size_len == 0 {
            // Without AU sizes the payload cannot be split (only generic/CELP modes do that).
            return Err(DepackError::Fmtp { encoding: enc.to_string(), param: "sizelength" });
        }
        let config = match media.fmtp("config") {
            Some(c) => {
                let asc = decode_hex(c).ok_or(DepackError::Fmtp { encoding: enc.to_string(), param: "config" })?;
                aac_config(Some(asc), media.clock_rate, media.channels)
            }
            None => aac_config(None, media.clock_rate, media.channels),
        };
        let duration = media
            .fmtp("constantduration")
            .and_then(|d| d.parse::<i64>().ok())
            .filter(|d| (1..=8192).contains(d))
            .unwrap_or(AAC_FRAME_SAMPLES);
        Ok(AacDepack {
            config,
            size_len,
            index_len: num("indexlength", 32)?,
            index_delta_len: num("indexdeltalength", 32)?,
            cts_len: num("ctsdeltalength", 32)?,
            dts_len: num("dtsdeltalength", 32)?,
            rap: media.fmtp("randomaccessindication").is_some_and(|v| v.trim() == "1"),
            state_len: num("streamstateindication", 32)?,
            duration,
            frag: None,
            skip_ts: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        pkt: &RtpPacket,
        gap: bool,
        ext: i64,
        clock: &Clock,
        max_au: usize,
        out: &mut Vec<Frame>,
        st: &mut DepackStats,
    ) {
        if gap {
            self.drop_frag(st);
        }
        let p = &pkt.payload;
        if p.len() < 2 {
            st.bad_packets += 1;
            return;
        }
        let header_bits = u16::from_be_bytes([p[0], p[1]]) as usize;
        let header_bytes = header_bits.div_ceil(8);
        if p.len() < 2 + header_bytes {
            st.bad_packets += 1;
            self.drop_frag(st);
            return;
        }
        let mut r = BitReader::new(&p[2..2 + header_bytes]);
        let mut sizes: Vec<usize> = Vec::new();
        let mut used = 0usize;
        while used < header_bits && sizes.len() < MAX_AUS_PER_PACKET {
            let index_len = if sizes.is_empty() { self.index_len } else { self.index_delta_len };
            let mut bits = self.size_len + index_len;
            let Some(size) = read_bits(&mut r, self.size_len) else { break };
            if read_bits(&mut r, index_len).is_none() {
                break;
            }
            for len in [self.cts_len, self.dts_len] {
                if len > 0 {
                    bits += 1;
                    let Some(flag) = r.bit() else { break };
                    if flag == 1 {
                        bits += len;
                        if read_bits(&mut r, len).is_none() {
                            break;
                        }
                    }
                }
            }
            if self.rap {
                bits += 1;
                r.bit();
            }
            bits += self.state_len;
            read_bits(&mut r, self.state_len);
            used += bits as usize;
            if used > header_bits {
                break;
            }
            sizes.push(size as usize);
        }
        if sizes.is_empty() {
            st.bad_packets += 1;
            self.drop_frag(st);
            return;
        }
        let data = &p[2 + header_bytes..];
        // A fragment of a big AU: one AU header with the whole AU's size (RFC 3640 3.2.3).
        if sizes.len() == 1 && (sizes[0] > data.len() || self.frag.is_some()) {
            let size = sizes[0];
            if gap || self.skip_ts == Some(pkt.timestamp) {
                // A fragment right after a loss may not be the AU's first: skip that AU.
                self.skip_ts = Some(pkt.timestamp);
                return;
            }
            if size > max_au {
                st.oversize += 1;
                st.dropped_aus += 1;
                self.frag = None;
                self.skip_ts = Some(pkt.timestamp);
                return;
            }
            match &mut self.frag {
                Some((s, ts, _, buf)) if *s == size && *ts == pkt.timestamp => buf.extend_from_slice(data),
                Some(_) => {
                    st.dropped_aus += 1;
                    self.frag = Some((size, pkt.timestamp, ext, data.to_vec()));
                }
                None => self.frag = Some((size, pkt.timestamp, ext, data.to_vec())),
            }
            let Some((size, _, fext, buf)) = &self.frag else { return };
            if buf.len() >= *size {
                let d = Bytes::copy_from_slice(&buf[..*size]);
                out.push(audio_frame(Codec::Aac, clock.to_90k(*fext), d, &self.config));
                self.frag = None;
            } else if pkt.marker {
                // The last fragment arrived short.
                st.bad_packets += 1;
                self.drop_frag(st);
            }
            return;
        }
        let mut off = 0usize;
        for (i, size) in sizes.into_iter().enumerate() {
            if size == 0 || off + size > data.len() {
                st.bad_packets += 1;
                return;
            }
            let t = clock.to_90k(ext.saturating_add(i as i64 * self.duration));
            out.push(audio_frame(
                Codec::Aac,
                t,
                p.slice(2 + header_bytes + off..2 + header_bytes + off + size),
                &self.config,
            ));
            off += size;
        }
    }

    fn drop_frag(&mut self, st: &mut DepackStats) {
        if self.frag.take().is_some() {
            st.dropped_aus += 1;
        }
    }
}

fn read_bits(r: &mut BitReader, n: u32) -> Option<u32> {
    if n == 0 {
        return Some(0);
    }
    if n > 32 {
        return None;
    }
    r.bits(n)
}

// ---------------------------------------------------------------------------------------------
// AAC, RFC 6416 MP4A-LATM (cpresent=0)

struct LatmDepack {
    config: Arc<CodecConfig>,
    /// audioMuxElements per packet payload (numSubFrames + 1).
    subframes: usize,
    /// An audioMuxElement split over packets (marker on its last), with its timestamp.
    buf: Vec<u8>,
    buf_ext: Option<i64>,
    broken: bool,
}

/// The fields of a StreamMuxConfig (ISO 14496-3 1.7.3, audioMuxVersion 0) that matter here:
/// numSubFrames and the AudioSpecificConfig's object type, rate index (or rate) and channels.
fn parse_stream_mux_config(b: &[u8]) -> Option<(usize, Vec<u8>)> {
    let mut r = BitReader::new(b);
    if r.bit()? != 0 {
        return None; // audioMuxVersion 1: not sent by RTP packetizers we know of
    }
    let _all_same_framing = r.bit()?;
    let sub = r.bits(6)? as usize;
    let programs = r.bits(4)?;
    let layers = r.bits(3)?;
    if programs != 0 || layers != 0 {
        return None;
    }
    let mut aot = r.bits(5)?;
    if aot == 31 {
        aot = 32 + r.bits(6)?;
    }
    let sfi = r.bits(4)?;
    let rate = if sfi == 15 { Some(r.bits(24)?) } else { None };
    let channels = r.bits(4)?;
    if aot == 5 || aot == 29 {
        // SBR/PS: the core is AAC-LC at the base rate (what our decoder needs).
        aot = 2;
    }
    let mut asc = Vec::with_capacity(5);
    let mut bits: u64 = 0;
    let mut n = 0u32;
    let mut put = |v: u64, w: u32| {
        bits = (bits << w) | (v & ((1 << w) - 1));
        n += w;
    };
    put(aot.min(30) as u64, 5);
    put(sfi as u64, 4);
    if let Some(rate) = rate {
        put(rate as u64, 24);
    }
    put(channels as u64, 4);
    put(0, 3); // GASpecificConfig: frameLengthFlag, dependsOnCoreCoder, extensionFlag
    let pad = (8 - n % 8) % 8;
    bits <<= pad;
    n += pad;
    for i in (0..n / 8).rev() {
        asc.push((bits >> (8 * i)) as u8);
    }
    Some((sub + 1, asc))
}

impl LatmDepack {
    fn new(media: &SdpMedia, enc: &str) -> Result<LatmDepack, DepackError> {
        let err = |param| DepackError::Fmtp { encoding: enc.to_string(), param };
        if media.fmtp("cpresent").map(str::trim) != Some("0") {
            // In-band StreamMuxConfig (cpresent=1, the default) is not handled.
            return Err(err("cpresent"));
        }
        let config = media.fmtp("config").and_then(decode_hex).ok_or(err("config"))?;
        let (subframes, asc) = parse_stream_mux_config(&config).ok_or(err("config"))?;
        Ok(LatmDepack {
            config: aac_config(Some(asc), media.clock_rate, media.channels),
            subframes: subframes.min(MAX_AUS_PER_PACKET),
            buf: Vec::new(),
            buf_ext: None,
            broken: false,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        pkt: &RtpPacket,
        gap: bool,
        ext: i64,
        clock: &Clock,
        max_au: usize,
        out: &mut Vec<Frame>,
        st: &mut DepackStats,
    ) {
        if self.buf_ext.is_none() {
            self.buf_ext = Some(ext);
        }
        // After a loss, the element in progress (or the one this packet starts) may be partial.
        self.broken |= gap;
        if !self.broken {
            if self.buf.len() + pkt.payload.len() > max_au {
                st.oversize += 1;
                self.broken = true;
                self.buf.clear();
            } else {
                self.buf.extend_from_slice(&pkt.payload);
            }
        }
        if !pkt.marker {
            return;
        }
        let start = self.buf_ext.take().unwrap_or(ext);
        if std::mem::take(&mut self.broken) {
            st.dropped_aus += 1;
            self.buf.clear();
            return;
        }
        // PayloadLengthInfo (frameLengthType 0): bytes of 255 summed up to one below 255.
        let b = std::mem::take(&mut self.buf);
        let mut pos = 0usize;
        for i in 0..self.subframes {
            let mut len = 0usize;
            loop {
                let Some(&x) = b.get(pos) else {
                    st.bad_packets += 1;
                    return;
                };
                pos += 1;
                len += x as usize;
                if x != 255 {
                    break;
                }
            }
            if len == 0 || pos + len > b.len() {
                st.bad_packets += 1;
                return;
            }
            let t = clock.to_90k(start.saturating_add(i as i64 * AAC_FRAME_SAMPLES));
            out.push(audio_frame(Codec::Aac, t, Bytes::copy_from_slice(&b[pos..pos + len]), &self.config));
            pos += len;
        }
        self.buf = b;
        self.buf.clear();
    }
}

#[cfg(test)]
#[path = "rtp_depack_tests.rs"]
mod tests;
