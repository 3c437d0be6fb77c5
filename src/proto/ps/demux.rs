//! Incremental MPEG-2 Program Stream demuxer for what GB/T 28181 cameras actually send.
//!
//! The parser reads lengths and never scans inside a PES; it scans for `00 00 01 BA` only to
//! (re)gain sync. Bytes are parsed straight from the caller's slice; only an incomplete header
//! tail is kept between calls, so any split of the input gives the same frames.
use std::sync::Arc;

use serde::Serialize;

use super::es::{AudioEs, AudioHint, VideoEs};
use super::mux::crc32_mpeg2;
use crate::frame::{Codec, CodecConfig, Frame};

/// Cap on the bytes kept between pushes (an incomplete header tail; at most a 64 KiB PSM or a
/// PES skipped by its 16-bit length).
const MAX_TAIL: usize = 512 << 10;

#[derive(Debug, Clone, Default, Serialize)]
pub struct DemuxStats {
    pub bytes: u64,
    pub packs: u64,
    pub pes: u64,
    pub psm: u64,
    pub video_frames: u64,
    pub keyframes: u64,
    pub audio_frames: u64,
    /// Bytes skipped while searching for sync (leading garbage, after errors).
    pub garbage_bytes: u64,
    /// Times the parser lost sync and searched for the next pack header.
    pub resyncs: u64,
    /// Partial frames discarded after loss or parse errors.
    pub dropped_frames: u64,
    /// Video frames withheld while waiting for parameter sets and a keyframe.
    pub held_frames: u64,
    /// BD/BE/BF/F0/... PES skipped by length.
    pub skipped_pes: u64,
    /// PES of a second video or audio stream id (only the first of each kind is demuxed).
    pub extra_stream_pes: u64,
    /// PSM CRC_32 mismatches (never enforced; ZLM #324: Dahua CRCs are wrong).
    pub psm_crc_wrong: u64,
    /// ... of which the CRC was written little-endian (Hikvision).
    pub psm_crc_byteswapped: u64,
    /// ... of which the CRC field was 0.
    pub psm_crc_zero: u64,
    /// PSMs whose es_map_length disagrees with program_stream_map_length (the latter is trusted).
    pub psm_length_mismatch: u64,
    /// PSM entries whose descriptor length runs past the map (ZLM #2325/#2805: Tiandy).
    pub psm_broken_descriptors: u64,
    /// Video codec found by sniffing NAL headers because no PSM entry named it.
    pub video_codec_sniffed: u64,
    /// Audio codec found by sniffing ADTS because no PSM entry named it (or an unknown type did).
    pub audio_codec_sniffed: u64,
    /// Audio with no PSM entry and no ADTS sync: assumed G.711A.
    pub audio_codec_defaulted: u64,
    /// PSM stream type contradicted by the data (Keda: H.265 as H.264; Dahua: AAC as G.711).
    pub psm_codec_lies: u64,
    /// Audio PES of a codec we do not carry (G.722.1, G.729, ...), dropped.
    pub unsupported_audio_pes: u64,
    pub mpeg1_packs: u64,
    pub mpeg1_pes: u64,
    /// Pack headers with stuffing bytes (skipped by length; Hikvision puts a counter there).
    pub pack_stuffing: u64,
    /// Pack headers directly followed by another start code (Hikvision H.265 `BA 00 00 01 E0`).
    pub empty_packs: u64,
    /// PES whose body has no valid header: taken as payload without PTS (spvmn sample).
    pub pes_without_header: u64,
    /// Video PES with length 0 (unbounded).
    pub unbounded_pes: u64,
    /// 33-bit timestamp wraps unwrapped.
    pub pts_wraps: u64,
    pub auds_dropped: u64,
    /// A length-delimited packet not followed by a start code: the length lied.
    pub lying_lengths: u64,
    /// Zero bytes before a start code (`00 00 00 01 BA`), skipped.
    pub zero_padding: u64,
    /// Buffers that hit their cap and were dropped.
    pub oversize_drops: u64,
    /// Video frames emitted at their RTP marker rather than when the next frame began
    /// (`media::ingest`, D172).
    pub marker_cuts: u64,
    /// 1 once this stream's RTP markers were seen inside a frame: they are no longer used.
    pub markers_distrusted: u64,
}

impl DemuxStats {
    /// One short human line per nonzero quirk.
    pub fn anomalies(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut add = |n: u64, s: String| {
            if n > 0 {
                v.push(s);
            }
        };
        add(self.garbage_bytes, format!("{} garbage bytes skipped while searching for sync", self.garbage_bytes));
        add(self.resyncs, format!("lost sync {} times (resynced at next pack header)", self.resyncs));
        add(self.dropped_frames, format!("{} partial frames dropped after loss or errors", self.dropped_frames));
        add(self.held_frames, format!("{} video frames held waiting for parameter sets/keyframe", self.held_frames));
        add(self.extra_stream_pes, format!("{} PES of extra video/audio streams ignored", self.extra_stream_pes));
        add(
            self.psm_crc_wrong,
            format!(
                "PSM CRC wrong in {} PSMs (not enforced; {} byte-swapped, {} zero)",
                self.psm_crc_wrong, self.psm_crc_byteswapped, self.psm_crc_zero
            ),
        );
        add(
            self.psm_length_mismatch,
            format!(
                "es_map_length disagrees with PSM length in {} PSMs (PSM length trusted)",
                self.psm_length_mismatch
            ),
        );
        add(
            self.psm_broken_descriptors,
            format!("broken descriptor lengths in {} PSM entries", self.psm_broken_descriptors),
        );
        add(self.video_codec_sniffed, "video codec not in PSM: sniffed from NAL headers".into());
        add(self.audio_codec_sniffed, "audio codec not in PSM: sniffed ADTS (AAC)".into());
        add(self.audio_codec_defaulted, "audio codec not in PSM: assumed G.711A".into());
        add(self.psm_codec_lies, format!("PSM stream type contradicted by the data {} times", self.psm_codec_lies));
        add(
            self.unsupported_audio_pes,
            format!("{} audio PES of an unsupported codec dropped", self.unsupported_audio_pes),
        );
        add(self.mpeg1_packs, format!("{} MPEG-1 pack headers", self.mpeg1_packs));
        add(self.mpeg1_pes, format!("{} MPEG-1 PES headers", self.mpeg1_pes));
        add(self.pack_stuffing, format!("pack stuffing in {} packs (skipped by length)", self.pack_stuffing));
        add(self.empty_packs, format!("{} empty pack headers followed directly by a start code", self.empty_packs));
        add(
            self.pes_without_header,
            format!("{} PES without a valid PES header (payload kept, no PTS)", self.pes_without_header),
        );
        add(self.unbounded_pes, format!("{} unbounded (length 0) video PES", self.unbounded_pes));
        add(self.pts_wraps, format!("{} 33-bit PTS wraps unwrapped", self.pts_wraps));
        add(self.auds_dropped, format!("{} AUD NAL units dropped", self.auds_dropped));
        add(self.lying_lengths, format!("{} packets whose length field lied", self.lying_lengths));
        add(self.zero_padding, format!("{} zero bytes before start codes", self.zero_padding));
        add(self.skipped_pes, format!("{} private/padding PES skipped", self.skipped_pes));
        add(self.oversize_drops, format!("{} oversize buffers dropped", self.oversize_drops));
        v
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Video,
    Audio,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Searching for `00 00 01 BA`.
    Sync,
    /// A start code is expected here.
    Start,
    /// Skipping bytes by length (stuffing, system header, private PES).
    Skip(usize),
    /// Inside a length-delimited PES payload.
    Payload(Kind, usize),
    /// Inside a video PES of length 0: runs to the next `00 00 01 xx` with xx >= 0xB9.
    Unbounded,
}

enum PesHeader {
    /// Need more body bytes to decide.
    Need,
    Ok {
        len: usize,
        pts: Option<u64>,
        dts: Option<u64>,
        mpeg1: bool,
    },
    /// No valid header: the whole body is payload.
    None,
}

fn ts(b: &[u8]) -> u64 {
    ((b[0] as u64 >> 1) & 7) << 30
        | (b[1] as u64) << 22
        | (b[2] as u64 >> 1) << 15
        | (b[3] as u64) << 7
        | b[4] as u64 >> 1
}

/// Parses a PES header from the body bytes available. `body_len` is None for unbounded PES.
fn parse_pes_header(b: &[u8], body_len: Option<usize>, mpeg1_pack: bool) -> PesHeader {
    let fits = |n: usize| body_len.is_none_or(|l| n <= l);
    let Some(&b0) = b.first() else {
        return PesHeader::Need;
    };
    if b0 & 0xC0 == 0x80 {
        if b.len() < 3 {
            return if fits(3) { PesHeader::Need } else { PesHeader::None };
        }
        let len = 3 + b[2] as usize;
        let flags = b[1] >> 6;
        let need_ts = match flags {
            2 => 8,
            3 => 13,
            _ => 3,
        };
        if !fits(len) || need_ts > len {
            return PesHeader::None;
        }
        if b.len() < len {
            return PesHeader::Need;
        }
        let pts = (flags & 2 != 0).then(|| ts(&b[3..8]));
        let dts = (flags == 3).then(|| ts(&b[8..13]));
        return PesHeader::Ok { len, pts, dts, mpeg1: false };
    }
    if !mpeg1_pack {
        return PesHeader::None;
    }
    // MPEG-1 (ISO 11172-1 2.4.3.3): up to 16 stuffing 0xFF, optional STD buffer, then PTS/DTS.
    let mut j = 0;
    while j < 16 && b.get(j) == Some(&0xFF) {
        j += 1;
    }
    let need = |n: usize| {
        if fits(n) {
            PesHeader::Need
        } else {
            PesHeader::None
        }
    };
    let Some(&c) = b.get(j) else {
        return need(j + 1);
    };
    if c & 0xC0 == 0x40 {
        j += 2;
    }
    let Some(&c) = b.get(j) else {
        return need(j + 1);
    };
    let (len, has_pts, has_dts) = match c >> 4 {
        2 => (j + 5, true, false),
        3 => (j + 10, true, true),
        _ if c == 0x0F => (j + 1, false, false),
        _ => return PesHeader::None,
    };
    if !fits(len) {
        return PesHeader::None;
    }
    if b.len() < len {
        return PesHeader::Need;
    }
    let pts = has_pts.then(|| ts(&b[j..j + 5]));
    let dts = has_dts.then(|| ts(&b[j + 5..j + 10]));
    PesHeader::Ok { len, pts, dts, mpeg1: true }
}

pub struct PsDemuxer {
    state: State,
    /// Unparsed tail kept between pushes.
    tail: Vec<u8>,
    /// The last length-delimited packet ended here: a missing start code means its length lied.
    after_length: bool,
    mpeg1: bool,
    /// stream_type per elementary_stream_id from the last PSM (0 = none).
    psm_types: [u8; 256],
    psm_seen: bool,
    video_id: Option<u8>,
    audio_id: Option<u8>,
    video: VideoEs,
    audio: AudioEs,
    stats: DemuxStats,
}

impl Default for PsDemuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl PsDemuxer {
    pub fn new() -> Self {
        PsDemuxer {
            state: State::Sync,
            tail: Vec::new(),
            after_length: false,
            mpeg1: false,
            psm_types: [0; 256],
            psm_seen: false,
            video_id: None,
            audio_id: None,
            video: VideoEs::new(),
            audio: AudioEs::new(),
            stats: DemuxStats::default(),
        }
    }

    /// Feeds the next bytes of the program stream (any split gives the same frames).
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Frame>) {
        self.stats.bytes += data.len() as u64;
        if self.tail.is_empty() {
            let used = self.parse(data, out);
            self.tail.extend_from_slice(&data[used..]);
        } else {
            let mut tail = std::mem::take(&mut self.tail);
            tail.extend_from_slice(data);
            let used = self.parse(&tail, out);
            tail.drain(..used);
            self.tail = tail;
        }
        if self.tail.len() > MAX_TAIL {
            self.stats.oversize_drops += 1;
            self.stats.garbage_bytes += self.tail.len() as u64;
            self.tail.clear();
            self.lose_sync();
        }
        if self.tail.capacity() > 64 << 10 && self.tail.len() < 16 << 10 {
            // A big tail was parsed: give the memory back rather than keep it per stream.
            self.tail.shrink_to(16 << 10);
        }
    }

    /// Caps the pending access unit (bytes); larger units are dropped and counted
    /// (`oversize_drops`). Default [`crate::proto::ps::es::DEFAULT_MAX_AU`].
    pub fn with_max_access_unit(mut self, max: usize) -> Self {
        self.video.set_max_au(max);
        self
    }

    /// Bytes this demuxer has allocated for reassembly (tail, pending access unit, audio).
    pub fn allocated_bytes(&self) -> usize {
        self.tail.capacity() + self.video.allocated() + self.audio.allocated()
    }

    /// Data was lost just before the next push: drop partial PES/frames, resync at the next
    /// pack header, hold video until the next keyframe.
    pub fn lost(&mut self) {
        self.tail.clear();
        self.after_length = false;
        self.lose_sync();
    }

    /// End of input: emits the pending access unit.
    pub fn flush(&mut self, out: &mut Vec<Frame>) {
        if let State::Payload(Kind::Audio, _) = self.state {
            // Truncated audio PES: its payload is incomplete.
            self.audio.drop_partial(&mut self.stats);
        }
        if self.state == State::Unbounded {
            let tail = std::mem::take(&mut self.tail);
            self.video.push(&tail, out, &mut self.stats);
        }
        self.video.flush(out, &mut self.stats);
        self.tail.clear();
        self.state = State::Sync;
    }

    /// The input paused at a unit boundary: emit the pending access unit now rather than when the
    /// next one starts. Without this a camera that pauses (or stops) holds back its last frame.
    /// Does nothing mid-PES, where the frame is known to be incomplete.
    pub fn flush_idle(&mut self, out: &mut Vec<Frame>) {
        if matches!(self.state, State::Start | State::Sync) && self.tail.is_empty() {
            self.video.flush(out, &mut self.stats);
        }
    }

    pub fn stats(&self) -> &DemuxStats {
        &self.stats
    }

    pub(crate) fn stats_mut(&mut self) -> &mut DemuxStats {
        &mut self.stats
    }

    /// Bytes of the video access unit being assembled (not yet emitted).
    pub fn pending_video_bytes(&self) -> usize {
        self.video.buffered()
    }

    pub fn video_config(&self) -> Option<&Arc<CodecConfig>> {
        self.video.config.as_ref()
    }

    pub fn audio_config(&self) -> Option<&Arc<CodecConfig>> {
        self.audio.config.as_ref()
    }

    /// The video codec, once known (from the PSM, verified by the SPS, or sniffed).
    pub fn video_codec(&self) -> Option<Codec> {
        self.video.codec
    }

    /// The audio codec, once decided.
    pub fn audio_codec(&self) -> Option<Codec> {
        self.audio.codec
    }

    fn lose_sync(&mut self) {
        if self.state != State::Sync {
            self.stats.resyncs += 1;
        }
        self.state = State::Sync;
        self.video.drop_partial(&mut self.stats);
        self.audio.drop_partial(&mut self.stats);
    }

    fn audio_hint(&self) -> AudioHint {
        match self.audio_id.map(|id| self.psm_types[id as usize]) {
            Some(t) if t != 0 => AudioHint::Type(t),
            _ => AudioHint::None,
        }
    }

    fn end_pes(&mut self, kind: Kind, out: &mut Vec<Frame>) {
        if kind == Kind::Audio {
            let hint = self.audio_hint();
            self.audio.end_pes(hint, out, &mut self.stats);
        }
    }

    /// Parses as much of `input` as possible; returns the bytes consumed.
    fn parse(&mut self, input: &[u8], out: &mut Vec<Frame>) -> usize {
        let len = input.len();
        let mut i = 0;
        loop {
            match self.state {
                State::Sync => match memchr::memmem::find(&input[i..], &[0, 0, 1, 0xBA]) {
                    Some(j) => {
                        self.stats.garbage_bytes += j as u64;
                        i += j;
                        self.state = State::Start;
                        self.after_length = false;
                    }
                    None => {
                        let keep = (len - i).min(3);
                        self.stats.garbage_bytes += (len - i - keep) as u64;
                        return len - keep;
                    }
                },
                State::Skip(n) => {
                    let k = n.min(len - i);
                    i += k;
                    if k == n {
                        self.state = State::Start;
                    } else {
                        self.state = State::Skip(n - k);
                        return i;
                    }
                }
                State::Payload(kind, n) => {
                    let k = n.min(len - i);
                    let chunk = &input[i..i + k];
                    match kind {
                        Kind::Video => self.video.push(chunk, out, &mut self.stats),
                        Kind::Audio => self.audio.push(chunk),
                    }
                    i += k;
                    if k == n {
                        self.state = State::Start;
                        self.after_length = true;
                        self.end_pes(kind, out);
                    } else {
                        self.state = State::Payload(kind, n - k);
                        return i;
                    }
                }
                State::Unbounded => {
                    let mut from = i;
                    loop {
                        match crate::codec::nal::find_start_code(&input[from..]) {
                            Some(r) => {
                                let p = from + r;
                                match input.get(p + 3) {
                                    None => {
                                        self.video.push(&input[i..p], out, &mut self.stats);
                                        return p;
                                    }
                                    Some(&id) if id >= 0xB9 => {
                                        self.video.push(&input[i..p], out, &mut self.stats);
                                        i = p;
                                        self.state = State::Start;
                                        self.after_length = false;
                                        break;
                                    }
                                    Some(_) => from = p + 3,
                                }
                            }
                            None => {
                                // Keep up to two trailing zeros: they may begin a start code.
                                let keep = input[i..].iter().rev().take(2).take_while(|&&b| b == 0).count();
                                self.video.push(&input[i..len - keep], out, &mut self.stats);
                                return len - keep;
                            }
                        }
                    }
                }
                State::Start => match self.start_code(&input[i..]) {
                    Some(n) => i += n,
                    None => return i,
                },
            }
        }
    }

    /// Handles the start code at `b[0]`. Returns bytes consumed, or None if more input is needed.
    fn start_code(&mut self, b: &[u8]) -> Option<usize> {
        if b.len() < 4 {
            return None;
        }
        if b[..3] != [0, 0, 1] {
            if b[0] == 0 && b[1] == 0 && b[2] == 0 {
                // `00 00 00 01 xx`: trailing zeros before a start code (MiBeeNvr PR #404).
                self.stats.zero_padding += 1;
                return Some(1);
            }
            if self.after_length {
                self.stats.lying_lengths += 1;
            }
            self.after_length = false;
            self.lose_sync();
            return Some(0);
        }
        self.after_length = false;
        let id = b[3];
        let u16_at = |k: usize| u16::from_be_bytes([b[k], b[k + 1]]) as usize;
        match id {
            0xBA => {
                let b4 = *b.get(4)?;
                if b4 == 0 {
                    // Hikvision H.265: `00 00 01 BA 00 00 01 E0`, a pack header with no body.
                    if b.len() < 7 {
                        return None;
                    }
                    if b[4..7] == [0, 0, 1] {
                        self.stats.packs += 1;
                        self.stats.empty_packs += 1;
                        return Some(4);
                    }
                    self.lose_sync();
                    return Some(4);
                }
                if b4 & 0xC0 == 0x40 {
                    if b.len() < 14 {
                        return None;
                    }
                    self.stats.packs += 1;
                    self.mpeg1 = false;
                    // Skip stuffing by length: the Hikvision counter in it can hold `00 00 01`.
                    let stuffing = (b[13] & 7) as usize;
                    if stuffing > 0 {
                        self.stats.pack_stuffing += 1;
                        self.state = State::Skip(stuffing);
                    }
                    Some(14)
                } else if b4 & 0xF0 == 0x20 {
                    if b.len() < 12 {
                        return None;
                    }
                    self.stats.packs += 1;
                    self.stats.mpeg1_packs += 1;
                    self.mpeg1 = true;
                    Some(12)
                } else {
                    self.lose_sync();
                    Some(4)
                }
            }
            0xB9 => Some(4),
            0xBC => {
                if b.len() < 6 {
                    return None;
                }
                let n = 6 + u16_at(4);
                if b.len() < n {
                    return None;
                }
                self.parse_psm(&b[..n]);
                Some(n)
            }
            0xC0..=0xEF => {
                if b.len() < 6 {
                    return None;
                }
                let plen = u16_at(4);
                let video = id >= 0xE0;
                let slot = if video { &mut self.video_id } else { &mut self.audio_id };
                if *slot.get_or_insert(id) != id {
                    self.stats.extra_stream_pes += 1;
                    self.state = State::Skip(plen);
                    self.after_length = true;
                    return Some(6);
                }
                let kind = if video { Kind::Video } else { Kind::Audio };
                if plen == 0 && !video {
                    return Some(6); // empty audio PES
                }
                let body = &b[6..];
                let bounded = (plen > 0).then_some(plen);
                let avail = &body[..body.len().min(plen.max(if plen == 0 { 258 } else { 0 }))];
                let (hlen, pts, dts) = match parse_pes_header(avail, bounded, self.mpeg1) {
                    PesHeader::Need => return None,
                    PesHeader::Ok { len, pts, dts, mpeg1 } => {
                        if mpeg1 {
                            self.stats.mpeg1_pes += 1;
                        }
                        (len, pts, dts)
                    }
                    PesHeader::None => {
                        // spvmn Audio_G711_PS2: payload right after the length field.
                        self.stats.pes_without_header += 1;
                        (0, None, None)
                    }
                };
                self.stats.pes += 1;
                match kind {
                    Kind::Video => {
                        if self.video.codec.is_none() {
                            self.video.hint = match self.psm_types[id as usize] {
                                0x1B => Some(Codec::H264),
                                0x24 => Some(Codec::H265),
                                _ => None,
                            };
                        }
                        self.video.on_pes(pts, dts);
                    }
                    Kind::Audio => self.audio.on_pes(pts, dts),
                }
                if plen == 0 {
                    self.stats.unbounded_pes += 1;
                    self.state = State::Unbounded;
                } else {
                    self.state = State::Payload(kind, plen - hlen);
                }
                Some(6 + hlen)
            }
            0xBB | 0xBD..=0xBF | 0xF0..=0xFF => {
                if b.len() < 6 {
                    return None;
                }
                if id != 0xBB {
                    self.stats.skipped_pes += 1;
                }
                self.state = State::Skip(u16_at(4));
                self.after_length = true;
                Some(6)
            }
            _ => {
                // 00..B8 are not PS start codes: we are not where the lengths said.
                self.lose_sync();
                Some(0)
            }
        }
    }

    /// PSM (ISO 13818-1 2.5.4): trusts program_stream_map_length over the inner lengths,
    /// tolerates broken descriptor lengths, counts but never enforces the CRC.
    fn parse_psm(&mut self, psm: &[u8]) {
        self.stats.psm += 1;
        let n = psm.len();
        if n < 16 {
            self.stats.psm_broken_descriptors += 1;
            return;
        }
        let crc = crc32_mpeg2(&psm[..n - 4]);
        let stored = u32::from_be_bytes([psm[n - 4], psm[n - 3], psm[n - 2], psm[n - 1]]);
        if crc != stored {
            self.stats.psm_crc_wrong += 1;
            if crc.swap_bytes() == stored {
                self.stats.psm_crc_byteswapped += 1;
            } else if stored == 0 {
                self.stats.psm_crc_zero += 1;
            }
        }
        let end = n - 4;
        let info_len = u16::from_be_bytes([psm[8], psm[9]]) as usize;
        let mut p = 10 + info_len;
        if p + 2 > end {
            self.stats.psm_broken_descriptors += 1;
            return;
        }
        let es_map_len = u16::from_be_bytes([psm[p], psm[p + 1]]) as usize;
        p += 2;
        if p + es_map_len != end {
            // spvmn: es_map_length 8 but a 10-byte video entry and a G.711A audio entry follow.
            self.stats.psm_length_mismatch += 1;
        }
        self.psm_types = [0; 256];
        self.psm_seen = true;
        while p + 4 <= end {
            let (st, id) = (psm[p], psm[p + 1]);
            let info = u16::from_be_bytes([psm[p + 2], psm[p + 3]]) as usize;
            self.psm_types[id as usize] = st;
            p += 4 + info;
            if p > end {
                self.stats.psm_broken_descriptors += 1;
            }
        }
    }
}

#[cfg(test)]
#[path = "demux_tests.rs"]
mod tests;
