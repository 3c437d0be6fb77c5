//! Elementary-stream assembly for the PS demuxer: video access units (Annex B -> AVCC) and audio
//! frames (G.711 per PES, AAC split by ADTS). Timestamps are unwrapped per track here.
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::demux::DemuxStats;
use crate::codec::{aac, h264, h265, nal};
use crate::frame::{AudioConfig, Codec, CodecConfig, Frame, VideoConfig};

const WRAP: i64 = 1 << 33;
const MASK: u64 = (1 << 33) - 1;
/// Default pending access unit cap (`[rtp] max_access_unit`). Larger than any camera I-frame we
/// know of (hik 1080p: 59 KB; a 4K keyframe is a few MB), small enough that a lying length or a
/// stream without start codes cannot grow memory without bound. The buffer's capacity never
/// exceeds it either (issue 8, hole 18).
pub const DEFAULT_MAX_AU: usize = 4 << 20;
/// Capacity the pending-AU buffer starts with and shrinks back to after a unit that outgrew what
/// the stream's inter frames need (D180): the buffer is scratch between packets, but with
/// jemalloc every byte of its capacity ends up resident, so a 256 KiB buffer kept for the
/// keyframe every 2 s cost each camera ~256 KiB (77 MB at 300 cameras).
const AU_START_CAPACITY: usize = 32 << 10;
/// AU duration assumed before two timestamps have been seen (25 fps).
const DEFAULT_DUR: i64 = 3600;
/// Marks an AUD in `cur`: its bytes are not copied into the frame.
const SKIP: u8 = 0xFF;

/// Unwraps a 33-bit timestamp to the candidate nearest `last` (the first value is taken as is).
pub(crate) fn unwrap_ts(last: Option<i64>, raw: u64) -> i64 {
    let raw = (raw & MASK) as i64;
    let Some(last) = last else { return raw };
    let base = last.rem_euclid(WRAP);
    let mut d = raw - base;
    if d > WRAP / 2 {
        d -= WRAP;
    } else if d < -WRAP / 2 {
        d += WRAP;
    }
    last.saturating_add(d)
}

/// Counts a wrap when a track's stream timestamps move into another 2^33 epoch.
fn note_epoch(epoch: &mut Option<i64>, v: i64, st: &mut DemuxStats) {
    let e = v.div_euclid(WRAP);
    if epoch.is_some_and(|old| old != e) {
        st.pts_wraps += 1;
    }
    *epoch = Some(e);
}

#[derive(Clone, Copy)]
struct NalRange {
    start: usize,
    end: usize,
    ty: u8,
}

/// Video access-unit assembler. `buf` holds the pending AU from its first start code on, plus
/// the bytes not yet scanned; NALs of the pending AU are kept as ranges into it, so payload is
/// copied once into `buf` and once into the frame.
pub(crate) struct VideoEs {
    pub codec: Option<Codec>,
    /// Codec the PSM claims (used to count lies and as a fallback when an SPS will not parse).
    pub hint: Option<Codec>,
    buf: Vec<u8>,
    /// Absolute ES offset of `buf[0]`.
    base: u64,
    scan: usize,
    cur: Option<(usize, u8)>,
    nals: Vec<NalRange>,
    au_started: bool,
    au_vcl: bool,
    au_key: bool,
    au_pts: i64,
    au_dts: i64,
    /// (absolute ES offset of a PES payload, raw PTS, raw DTS)
    pts_q: VecDeque<(u64, u64, Option<u64>)>,
    /// A PES with a PTS started here: cut the AU if its payload begins with a start code.
    force_cut: Option<(u64, u64)>,
    last_pts: Option<i64>,
    last_dts: Option<i64>,
    epoch: Option<i64>,
    dur: i64,
    need_key: bool,
    vps: Option<Bytes>,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    pub config: Option<Arc<CodecConfig>>,
    max_au: usize,
    /// Size of the last non-key unit: the buffer keeps twice that after a keyframe (D180).
    inter_size: usize,
}

impl VideoEs {
    pub fn new() -> Self {
        VideoEs {
            codec: None,
            hint: None,
            buf: Vec::with_capacity(AU_START_CAPACITY),
            base: 0,
            scan: 0,
            cur: None,
            nals: Vec::with_capacity(64),
            au_started: false,
            au_vcl: false,
            au_key: false,
            au_pts: 0,
            au_dts: 0,
            pts_q: VecDeque::new(),
            force_cut: None,
            last_pts: None,
            last_dts: None,
            epoch: None,
            dur: DEFAULT_DUR,
            need_key: true,
            vps: None,
            sps: None,
            pps: None,
            config: None,
            max_au: DEFAULT_MAX_AU,
            inter_size: 0,
        }
    }

    /// Bytes held for the pending access unit.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes allocated for the pending access unit (at most the cap).
    pub fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    pub fn set_max_au(&mut self, max: usize) {
        self.max_au = max.max(64 << 10);
    }

    /// A video PES header was parsed; its payload follows.
    pub fn on_pes(&mut self, pts: Option<u64>, dts: Option<u64>) {
        if let Some(pts) = pts {
            let abs = self.base + self.buf.len() as u64;
            if self.pts_q.len() >= 64 {
                self.pts_q.pop_front();
            }
            self.pts_q.push_back((abs, pts & MASK, dts.map(|d| d & MASK)));
            self.force_cut = Some((abs, pts & MASK));
        }
    }

    pub fn push(&mut self, data: &[u8], out: &mut Vec<Frame>, st: &mut DemuxStats) {
        let need = self.buf.len().saturating_add(data.len());
        if need > self.max_au {
            // The unit would outgrow the cap: drop it (counted) before any byte of it is stored.
            st.oversize_drops += 1;
            if self.codec.is_none() {
                // Still sniffing: drop what cannot hold a parameter set, keep a tail for a split start code.
                let mut keep: Vec<u8> = self.buf.iter().chain(data).rev().take(3).copied().collect();
                keep.reverse();
                st.garbage_bytes += (need - keep.len()) as u64;
                let n = self.buf.len();
                self.consume(n);
                self.buf.extend_from_slice(&keep);
                self.cur = None;
            } else {
                self.drop_partial(st);
            }
            self.buf.shrink_to(AU_START_CAPACITY);
            return;
        }
        if need > self.buf.capacity() {
            // Grow by doubling, but never past the cap: the allocation is bounded, not just the length.
            let target = self.buf.capacity().saturating_mul(2).max(need).min(self.max_au);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(data);
        self.scan_nals(out, st, false);
    }

    /// End of stream: the pending AU is complete.
    pub fn flush(&mut self, out: &mut Vec<Frame>, st: &mut DemuxStats) {
        self.scan_nals(out, st, true);
        if self.codec.is_some() {
            let end = self.buf.len();
            self.close_nal(end);
            if self.au_started {
                self.emit(end, out, st);
            }
        }
        // Nothing survives a flush (a still-sniffing buffer included).
        let n = self.buf.len();
        self.consume(n);
        self.reset_au();
    }

    /// Data was lost or corrupt: drop the partial AU and hold video until the next keyframe.
    pub fn drop_partial(&mut self, st: &mut DemuxStats) {
        if self.au_started && (self.au_vcl || !self.nals.is_empty()) {
            st.dropped_frames += 1;
        }
        let n = self.buf.len();
        self.consume(n);
        if self.buf.capacity() > 4 * AU_START_CAPACITY {
            // A big unit was dropped: give its memory back.
            self.buf.shrink_to(AU_START_CAPACITY);
        }
        self.reset_au();
        self.pts_q.clear();
        self.force_cut = None;
        self.need_key = true;
    }

    fn reset_au(&mut self) {
        self.cur = None;
        self.nals.clear();
        self.au_started = false;
        self.au_vcl = false;
        self.au_key = false;
    }

    /// Removes `n` bytes from the front of `buf`, shifting the indexes into it.
    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        self.base += n as u64;
        self.scan = self.scan.saturating_sub(n);
        if let Some((s, t)) = self.cur {
            self.cur = Some((s.saturating_sub(n), t));
        }
        for r in &mut self.nals {
            r.start = r.start.saturating_sub(n);
            r.end = r.end.saturating_sub(n);
        }
    }

    fn scan_nals(&mut self, out: &mut Vec<Frame>, st: &mut DemuxStats, last: bool) {
        loop {
            let len = self.buf.len();
            if self.scan + 3 > len {
                return;
            }
            let Some(rel) = nal::find_start_code(&self.buf[self.scan..]) else {
                self.scan = len.saturating_sub(2).max(self.scan);
                return;
            };
            let p = self.scan + rel;
            // Bytes after the start code needed to classify the NAL (slice header's first byte).
            let need = if self.codec == Some(Codec::H265) { 3 } else { 2 };
            if p + 3 + need > len && !last {
                self.scan = p;
                return;
            }
            self.close_nal(p);
            if self.codec.is_none() {
                if self.sniff(p, st) {
                    // Codec known: parse the retained bytes again from their first start code.
                    self.reset_au();
                    self.scan = 0;
                    continue;
                }
                if self.cur.is_none() && !self.au_started {
                    st.garbage_bytes += Self::garbage_before(&self.buf[..p]);
                    self.consume(p);
                    self.au_started = true;
                    self.cur = Some((3, 0));
                    self.scan = 3;
                } else {
                    self.cur = Some((p + 3, 0));
                    self.scan = p + 3;
                }
                continue;
            }
            self.start_nal(p, out, st);
        }
    }

    /// ES bytes before the first start code, not counting the zero of a 4-byte start code.
    fn garbage_before(b: &[u8]) -> u64 {
        (b.len() - b.iter().rev().take_while(|&&x| x == 0).count()) as u64
    }

    /// Ends the current NAL at `p`, trimming trailing zeros (the first byte of a 4-byte start code).
    fn close_nal(&mut self, p: usize) {
        let Some((s, ty)) = self.cur.take() else {
            return;
        };
        let mut end = p.min(self.buf.len());
        while end > s && self.buf[end - 1] == 0 {
            end -= 1;
        }
        if ty != SKIP && end > s {
            self.nals.push(NalRange { start: s, end, ty });
        }
    }

    /// While the codec is unknown: try to recognise the NAL just closed (the last range) as an
    /// SPS. An SPS that parses decides; the PSM's claim is the fallback for an SPS we cannot parse.
    fn sniff(&mut self, _p: usize, st: &mut DemuxStats) -> bool {
        let Some(r) = self.nals.pop() else {
            return false;
        };
        self.nals.clear();
        let nal = &self.buf[r.start..r.end];
        let Some(&h) = nal.first() else { return false };
        let found = if h & 0x80 != 0 {
            None
        } else if h265::nal_type(h) == h265::NAL_SPS && nal.get(1) == Some(&1) && h265::parse_sps(nal).is_some() {
            Some(Codec::H265)
        } else if h264::nal_type(h) == h264::NAL_SPS && h264::parse_sps(nal).is_some() {
            Some(Codec::H264)
        } else if self.hint == Some(Codec::H265) && h265::nal_type(h) == h265::NAL_SPS {
            Some(Codec::H265)
        } else if self.hint == Some(Codec::H264) && h264::nal_type(h) == h264::NAL_SPS {
            Some(Codec::H264)
        } else {
            None
        };
        let Some(c) = found else { return false };
        match self.hint {
            None => st.video_codec_sniffed += 1,
            Some(h) if h != c => st.psm_codec_lies += 1,
            _ => {}
        }
        self.codec = Some(c);
        true
    }

    fn start_nal(&mut self, mut p: usize, out: &mut Vec<Frame>, st: &mut DemuxStats) {
        let h265 = self.codec == Some(Codec::H265);
        let abs = self.base + p as u64;
        let hdr_end = (p + 6).min(self.buf.len());
        let mut hdr_copy = [0u8; 3];
        let src = &self.buf[(p + 3).min(hdr_end)..hdr_end];
        hdr_copy[..src.len()].copy_from_slice(src);
        let hdr = &hdr_copy[..src.len()];
        let (ty, vcl, key, aud) = match hdr.first() {
            None => (0, false, false, true), // empty NAL at the very end: nothing to keep
            Some(&b) if h265 => {
                let t = h265::nal_type(b);
                (t, h265::is_vcl(t), h265::is_irap(t), t == h265::NAL_AUD)
            }
            Some(&b) => {
                let t = h264::nal_type(b);
                (t, h264::is_vcl(t), t == h264::NAL_IDR, t == h264::NAL_AUD)
            }
        };
        let mut cut = if h265 { h265::starts_au(hdr, self.au_vcl) } else { h264::starts_au(hdr, self.au_vcl) };
        if let Some((fa, fpts)) = self.force_cut {
            // 3- or 4-byte start code at the very start of a PES that has a new PTS.
            if abs == fa || abs == fa + 1 {
                if self.au_vcl && (self.au_pts as u64 & MASK) != fpts {
                    cut = true;
                }
                self.force_cut = None;
            } else if abs > fa + 1 {
                self.force_cut = None;
            }
        }
        if !self.au_started {
            st.garbage_bytes += Self::garbage_before(&self.buf[..p]);
            self.consume(p);
            p = 0;
            self.au_started = true;
            self.assign_ts(abs, st);
        } else if cut {
            self.emit(p, out, st);
            p = 0;
            self.au_started = true;
            self.assign_ts(abs, st);
        }
        if aud {
            if !hdr.is_empty() {
                st.auds_dropped += 1;
            }
            self.cur = Some((p + 3, SKIP));
        } else {
            self.cur = Some((p + 3, ty));
        }
        if vcl {
            self.au_vcl = true;
            self.au_key |= key;
        }
        self.scan = p + 3;
    }

    /// The PTS of a PES applies to the first AU that starts in it (ISO 13818-1 2.4.3.7); an AU
    /// starting where no unused PTS applies is extrapolated by the last frame duration.
    fn assign_ts(&mut self, abs: u64, st: &mut DemuxStats) {
        let mut hit = None;
        // +2: a start code split across two PES belongs to the AU that starts in the second.
        while let Some(&e) = self.pts_q.front() {
            if e.0 <= abs + 2 {
                hit = Some(e);
                self.pts_q.pop_front();
            } else {
                break;
            }
        }
        let (pts, dts) = match (hit, self.last_pts, self.last_dts) {
            (Some((_, p, d)), lp, ld) => {
                let pts = unwrap_ts(lp, p);
                note_epoch(&mut self.epoch, pts, st);
                let dts = d.map_or(pts, |d| unwrap_ts(Some(pts), d));
                if let Some(ld) = ld {
                    let step = dts.saturating_sub(ld);
                    if step > 0 && step <= 90_000 {
                        self.dur = step;
                    }
                }
                (pts, dts)
            }
            (None, Some(lp), Some(ld)) => (lp.saturating_add(self.dur), ld.saturating_add(self.dur)),
            _ => (0, 0),
        };
        self.au_pts = pts;
        self.au_dts = dts;
        self.last_pts = Some(pts);
        self.last_dts = Some(dts);
    }

    fn set_param(slot: &mut Option<Bytes>, nal: &[u8]) -> bool {
        if slot.as_deref() == Some(nal) {
            return false;
        }
        *slot = Some(Bytes::copy_from_slice(nal));
        true
    }

    /// Emits the pending AU (NALs before `p`) and drops its bytes from `buf`.
    fn emit(&mut self, p: usize, out: &mut Vec<Frame>, st: &mut DemuxStats) {
        let codec = self.codec.unwrap_or(Codec::H264);
        let mut changed = false;
        let mut size = 0;
        for r in &self.nals {
            size += 4 + (r.end - r.start);
            let nal = &self.buf[r.start..r.end];
            changed |= match (codec, r.ty) {
                (Codec::H264, h264::NAL_SPS) | (Codec::H265, h265::NAL_SPS) => Self::set_param(&mut self.sps, nal),
                (Codec::H264, h264::NAL_PPS) | (Codec::H265, h265::NAL_PPS) => Self::set_param(&mut self.pps, nal),
                (Codec::H265, h265::NAL_VPS) => Self::set_param(&mut self.vps, nal),
                _ => false,
            };
        }
        if changed {
            self.rebuild_config(codec);
        }
        if self.au_vcl {
            if self.config.is_none() || (self.need_key && !self.au_key) {
                st.held_frames += 1;
            } else if let Some(cfg) = &self.config {
                self.need_key = false;
                let mut data = Vec::with_capacity(size);
                for r in &self.nals {
                    nal::write_avcc_nal(&mut data, &self.buf[r.start..r.end]);
                }
                st.video_frames += 1;
                st.keyframes += self.au_key as u64;
                out.push(Frame {
                    codec,
                    pts: self.au_pts,
                    dts: self.au_dts,
                    keyframe: self.au_key,
                    data: Bytes::from(data),
                    config: cfg.clone(),
                    cache: Default::default(),
                });
            }
        }
        let key = self.au_key;
        self.nals.clear();
        self.au_vcl = false;
        self.au_key = false;
        self.au_started = false;
        let p = p.min(self.buf.len());
        self.consume(p);
        // Give back what a keyframe grew the buffer to (D180); inter frames keep room for twice
        // their size so a stream whose every frame is large does not reallocate per frame.
        if !key {
            self.inter_size = p;
        }
        let keep = AU_START_CAPACITY.max(2 * self.inter_size);
        if self.buf.capacity() > keep && self.buf.len() <= keep / 2 {
            self.buf.shrink_to(keep);
        }
    }

    fn rebuild_config(&mut self, codec: Codec) {
        let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else {
            return;
        };
        let (vps, w, h, profile, level) = match codec {
            Codec::H265 => {
                let Some(vps) = &self.vps else { return };
                let i = h265::parse_sps(sps);
                (
                    Some(vps.clone()),
                    i.map_or(0, |i| i.width),
                    i.map_or(0, |i| i.height),
                    i.map_or(0, |i| i.profile),
                    i.map_or(0, |i| i.level),
                )
            }
            _ => {
                let i = h264::parse_sps(sps);
                (
                    None,
                    i.map_or(0, |i| i.width),
                    i.map_or(0, |i| i.height),
                    i.map_or(0, |i| i.profile),
                    i.map_or(0, |i| i.level),
                )
            }
        };
        self.config = Some(Arc::new(CodecConfig::Video(VideoConfig {
            vps,
            sps: sps.clone(),
            pps: pps.clone(),
            width: w,
            height: h,
            profile,
            level,
        })));
    }
}

/// What the PSM says about the audio stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum AudioHint {
    /// No PSM entry for the stream id (or no PSM yet).
    None,
    Type(u8),
}

pub(crate) struct AudioEs {
    pub codec: Option<Codec>,
    decided_for: Option<AudioHint>,
    /// Payload of the current PES, preceded by a partial ADTS frame left from the previous one.
    buf: Vec<u8>,
    leftover: usize,
    pes_ts: Option<(u64, Option<u64>)>,
    in_pes: bool,
    /// Next frame's timestamps when a PES carries none: anchor + samples since the anchor.
    anchor: Option<(i64, i64)>,
    samples: u64,
    epoch: Option<i64>,
    sample_rate: u32,
    prev: Option<(i64, usize)>,
    streak16: u8,
    streak8: u8,
    asc: Option<[u8; 2]>,
    pub config: Option<Arc<CodecConfig>>,
}

impl AudioEs {
    pub fn new() -> Self {
        AudioEs {
            codec: None,
            decided_for: None,
            buf: Vec::with_capacity(4096),
            leftover: 0,
            pes_ts: None,
            in_pes: false,
            anchor: None,
            samples: 0,
            epoch: None,
            sample_rate: 8000,
            prev: None,
            streak16: 0,
            streak8: 0,
            asc: None,
            config: None,
        }
    }

    pub fn on_pes(&mut self, pts: Option<u64>, dts: Option<u64>) {
        self.pes_ts = pts.map(|p| (p & MASK, dts.map(|d| d & MASK)));
        self.in_pes = true;
        self.buf.truncate(self.leftover);
    }

    /// Bytes allocated for the pending audio PES.
    pub fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.buf.len() + data.len() <= 1 << 20 {
            self.buf.extend_from_slice(data);
        }
    }

    pub fn drop_partial(&mut self, st: &mut DemuxStats) {
        if self.in_pes || self.leftover > 0 {
            st.dropped_frames += 1;
        }
        self.buf.clear();
        self.leftover = 0;
        self.in_pes = false;
        self.prev = None;
    }

    fn decide(&mut self, hint: AudioHint, st: &mut DemuxStats) {
        if self.decided_for == Some(hint) && self.codec.is_some() {
            return;
        }
        let payload = &self.buf[self.leftover..];
        if payload.is_empty() {
            return;
        }
        let adts = aac::looks_like_adts(payload);
        let codec = match hint {
            AudioHint::Type(0x0F) => Some(Codec::Aac),
            // Dahua labels AAC as G.711 (MS MPEG_DAHUA_AAC_FROM_G711).
            AudioHint::Type(0x90) | AudioHint::Type(0x91) if adts => {
                st.psm_codec_lies += 1;
                Some(Codec::Aac)
            }
            AudioHint::Type(0x90) => Some(Codec::G711A),
            AudioHint::Type(0x91) => Some(Codec::G711U),
            AudioHint::None if adts => {
                st.audio_codec_sniffed += 1;
                Some(Codec::Aac)
            }
            AudioHint::None => {
                st.audio_codec_defaulted += 1;
                Some(Codec::G711A)
            }
            AudioHint::Type(_) if adts => {
                st.audio_codec_sniffed += 1;
                Some(Codec::Aac)
            }
            AudioHint::Type(_) => None,
        };
        if codec != self.codec {
            self.config = None;
            self.asc = None;
        }
        self.codec = codec;
        self.decided_for = Some(hint);
    }

    fn next_ts(&self) -> (i64, i64) {
        match self.anchor {
            Some((p, d)) => {
                let rate = self.sample_rate.max(1) as u64;
                let ticks = (self.samples.saturating_mul(90_000) / rate).min(i64::MAX as u64 / 4) as i64;
                (p.saturating_add(ticks), d.saturating_add(ticks))
            }
            None => (0, 0),
        }
    }

    fn anchor_to(&mut self, raw: (u64, Option<u64>), st: &mut DemuxStats) -> (i64, i64) {
        let last = self.anchor.map(|_| self.next_ts().0);
        let pts = unwrap_ts(last, raw.0);
        note_epoch(&mut self.epoch, pts, st);
        let dts = raw.1.map_or(pts, |d| unwrap_ts(Some(pts), d));
        self.anchor = Some((pts, dts));
        self.samples = 0;
        (pts, dts)
    }

    /// The PES ended: emit its frames.
    pub fn end_pes(&mut self, hint: AudioHint, out: &mut Vec<Frame>, st: &mut DemuxStats) {
        if !self.in_pes {
            return;
        }
        self.in_pes = false;
        self.decide(hint, st);
        match self.codec {
            Some(Codec::Aac) => self.end_aac(out, st),
            Some(c) => self.end_g711(c, out, st),
            None => {
                st.unsupported_audio_pes += 1;
                self.buf.clear();
                self.leftover = 0;
            }
        }
    }

    fn end_g711(&mut self, codec: Codec, out: &mut Vec<Frame>, st: &mut DemuxStats) {
        self.leftover = 0;
        if self.buf.is_empty() {
            return;
        }
        let (pts, dts) = match self.pes_ts.take() {
            Some(raw) => {
                let (pts, dts) = self.anchor_to(raw, st);
                self.infer_rate(pts);
                (pts, dts)
            }
            None => self.next_ts(),
        };
        let n = self.buf.len();
        self.prev = Some((pts, n));
        if self.config.is_none() {
            self.set_g711_config(self.sample_rate);
        }
        self.samples = self.samples.saturating_add(n as u64);
        st.audio_frames += 1;
        out.push(Frame {
            codec,
            pts,
            dts,
            keyframe: true,
            data: Bytes::copy_from_slice(&self.buf),
            config: self.config.clone().unwrap_or_else(|| {
                Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: 8000, channels: 1, asc: None }))
            }),
            cache: Default::default(),
        });
        self.buf.clear();
    }

    /// PS carries no G.711 rate: infer 16 kHz from bytes per PTS step (640 B per 3600 ticks),
    /// requiring three consistent steps before switching either way.
    fn infer_rate(&mut self, pts: i64) {
        let Some((ppts, bytes)) = self.prev else {
            return;
        };
        let step = pts.saturating_sub(ppts);
        if step <= 0 {
            return;
        }
        let rate = (bytes as i64).saturating_mul(90_000) / step;
        if (15_200..=16_800).contains(&rate) {
            self.streak16 = self.streak16.saturating_add(1);
            self.streak8 = 0;
        } else if (7_600..=8_400).contains(&rate) {
            self.streak8 = self.streak8.saturating_add(1);
            self.streak16 = 0;
        } else {
            self.streak8 = 0;
            self.streak16 = 0;
        }
        let want = if self.streak16 >= 3 {
            16_000
        } else if self.streak8 >= 3 {
            8_000
        } else {
            return;
        };
        if want != self.sample_rate || self.config.is_none() {
            // Re-anchor so extrapolation continues from this frame at the new rate.
            self.sample_rate = want;
            self.set_g711_config(want);
        }
    }

    fn set_g711_config(&mut self, rate: u32) {
        self.sample_rate = rate;
        self.config = Some(Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: rate, channels: 1, asc: None })));
    }

    fn end_aac(&mut self, out: &mut Vec<Frame>, st: &mut DemuxStats) {
        let leftover = self.leftover;
        let mut pes_ts = self.pes_ts.take();
        let buf = std::mem::take(&mut self.buf);
        let mut frames: Vec<(aac::AdtsHeader, usize, usize)> = Vec::new();
        let mut skipped = 0;
        let used = aac::split_adts(&buf, &mut skipped, |h, raw, off| {
            let start = off + h.header_len;
            frames.push((*h, start, start + raw.len()));
        });
        st.garbage_bytes += skipped;
        for (h, s, e) in frames {
            let (pts, dts) = match pes_ts {
                Some(raw) if s >= leftover => {
                    pes_ts = None;
                    self.anchor_to(raw, st)
                }
                _ => self.next_ts(),
            };
            let asc = aac::audio_specific_config(&h);
            if self.asc != Some(asc) || self.config.is_none() {
                self.asc = Some(asc);
                self.sample_rate = h.sample_rate;
                self.config = Some(Arc::new(CodecConfig::Audio(AudioConfig {
                    sample_rate: h.sample_rate,
                    channels: h.channel_config,
                    asc: Some(Bytes::copy_from_slice(&asc)),
                })));
            }
            self.samples = self.samples.saturating_add(1024 * h.blocks as u64);
            st.audio_frames += 1;
            if let Some(cfg) = &self.config {
                out.push(Frame {
                    codec: Codec::Aac,
                    pts,
                    dts,
                    keyframe: true,
                    data: Bytes::copy_from_slice(&buf[s..e]),
                    config: cfg.clone(),
                    cache: Default::default(),
                });
            }
        }
        // Keep a partial frame (split across PES) for the next PES.
        let mut buf = buf;
        buf.drain(..used.min(buf.len()));
        self.leftover = buf.len();
        self.buf = buf;
        if self.leftover > 8192 {
            self.buf.clear();
            self.leftover = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// D180: the room a keyframe needed is given back once it is out, not kept for the stream.
    #[test]
    fn a_keyframes_room_is_given_back_after_it() {
        let mut es = VideoEs::new();
        es.codec = Some(Codec::H264);
        let (mut out, mut st) = (Vec::new(), DemuxStats::default());
        // AUD, then one slice (first_mb_in_slice 0) of `n` bytes.
        let au = |ty: u8, n: usize| {
            let mut v = vec![0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, ty, 0x88];
            v.resize(v.len() + n, 0x55);
            v
        };
        assert!(es.allocated() <= 32 << 10);
        es.push(&au(0x65, 300 << 10), &mut out, &mut st);
        assert!(es.allocated() >= 300 << 10, "grew for the keyframe");
        for _ in 0..3 {
            es.push(&au(0x41, 5000), &mut out, &mut st);
            assert!(es.allocated() <= 64 << 10, "kept {} bytes after the keyframe", es.allocated());
        }
        assert_eq!(st.oversize_drops, 0);
    }

    #[test]
    fn unwrap_picks_nearest() {
        assert_eq!(unwrap_ts(None, 5), 5);
        let near = (1i64 << 33) - 100;
        assert_eq!(unwrap_ts(Some(near), 50), (1 << 33) + 50);
        assert_eq!(unwrap_ts(Some((1 << 33) + 50), (1 << 33) - 10), (1 << 33) - 10);
        assert_eq!(unwrap_ts(Some(1000), 900), 900);
    }
}
