//! Sans-IO HLS segmenter: hub frames in, fMP4 parts, segments and a Low-Latency HLS media
//! playlist out.
//!
//! - A segment starts at a video keyframe once the current one is `segment_min` long (or is cut
//!   at `segment_max` without one, so a long GOP cannot grow a segment without bound). Segments
//!   are made of parts (`moof` + `mdat` each) of at most about `part_target`: a segment's bytes
//!   are its parts' bytes, so parts cost no extra memory.
//! - Sample durations come from the next frame's decode time, so each track holds one frame
//!   back. Each track's decode time runs on from its previous sample (clamped gaps), which keeps
//!   the timeline continuous across a stall, a codec change or a new init segment.
//! - The window is bounded in segments and in bytes; a codec change starts a new init segment
//!   (`EXT-X-DISCONTINUITY` + `EXT-X-MAP`).
//! - [`Segmenter::cut`] closes the segment at the live edge: the driver calls it once the GOP cache
//!   has been fed, so the first complete segment exists at once (D131).
//!
//! Nothing here waits: a driver asks [`Segmenter::playlist_ready`] / [`Segmenter::part_state`] and
//! waits (with its deadline) for the next change itself.
use std::collections::VecDeque;
use std::fmt::Write as _;

use bytes::Bytes;

use crate::frame::{Codec, CodecConfig, Frame, MediaKind, CLOCK_RATE};
use crate::proto::fmp4::{self, AudioTrack, Run, Sample, Tracks, VideoTrack, AUDIO_TRACK, VIDEO_TRACK};

/// Bounds and timing of one stream's segmenter. Durations are in 90 kHz ticks.
#[derive(Debug, Clone)]
pub struct SegmenterConfig {
    pub part_target: u64,
    pub segment_min: u64,
    pub segment_max: u64,
    /// Complete segments kept.
    pub max_segments: usize,
    /// Bytes of segments, parts and init segments kept (the window shrinks to stay within it).
    pub max_bytes: usize,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        SegmenterConfig {
            part_target: 45_000,
            segment_min: 180_000,
            segment_max: 900_000,
            max_segments: 7,
            max_bytes: 64 << 20,
        }
    }
}

/// The longest sample: a gap in a source's timestamps (a stall) beyond it is shortened, so one
/// sample never spans minutes.
const MAX_SAMPLE: i64 = 5 * CLOCK_RATE;
/// Without any video keyframe for this long of audio, the stream is taken as audio-only.
const AUDIO_ONLY_AFTER: i64 = 2 * CLOCK_RATE;

/// One part: a `moof` + `mdat`.
#[derive(Debug, Clone)]
struct Part {
    data: Bytes,
    /// 90 kHz ticks.
    duration: u64,
    independent: bool,
}

#[derive(Debug, Clone)]
struct Segment {
    msn: u64,
    init: u64,
    /// A new init segment starts here (`EXT-X-DISCONTINUITY`).
    discontinuity: bool,
    parts: Vec<Part>,
    duration: u64,
    bytes: usize,
}

#[derive(Debug, Clone)]
struct Init {
    id: u64,
    data: Bytes,
    codecs: String,
    tracks: Tracks,
}

#[derive(Debug, Default)]
struct TrackState {
    held: Option<Frame>,
    pending: Vec<Sample>,
    /// Decode time of `pending[0]`, in the track's timescale.
    pending_base: u64,
    /// Sum of the pending samples' durations, in the track's timescale.
    pending_ticks: u64,
    pending_bytes: usize,
    /// Source decode time (90 kHz) of each pending sample.
    pending_dts: Vec<i64>,
    /// Decode time of the next sample, in the track's timescale.
    time: u64,
}

impl TrackState {
    fn add(&mut self, s: Sample, dts: i64) {
        if self.pending.is_empty() {
            self.pending_base = self.time;
        }
        self.time += s.duration as u64;
        self.pending_ticks += s.duration as u64;
        self.pending_bytes += s.data.len();
        self.pending.push(s);
        self.pending_dts.push(dts);
    }

    /// The pending samples that start before `until` (source clock), and their decode time.
    fn take_until(&mut self, until: i64) -> (u64, Vec<Sample>) {
        let n = self.pending_dts.iter().take_while(|d| **d < until).count();
        let taken: Vec<Sample> = self.pending.drain(..n).collect();
        self.pending_dts.drain(..n);
        let base = self.pending_base;
        let ticks: u64 = taken.iter().map(|s| s.duration as u64).sum();
        self.pending_base += ticks;
        self.pending_ticks -= ticks;
        self.pending_bytes -= taken.iter().map(|s| s.data.len()).sum::<usize>();
        (base, taken)
    }
}

/// A part whose video is complete, waiting for the audio up to the same time: the hub's audio
/// comes later than its video (the transcoder), and a part whose audio ends early looks to an MSE
/// player like a buffer that did not grow (hls.js reloads it).
#[derive(Debug)]
struct Sealed {
    video: Vec<Sample>,
    video_base: u64,
    /// Source decode time (90 kHz) where the part ends: audio before it belongs to it.
    until: i64,
    /// 90 kHz ticks.
    duration: u64,
    independent: bool,
    ends_segment: bool,
}

/// What the segment being built (sealed and pending parts) holds, for the cut decisions.
#[derive(Debug, Default, Clone, Copy)]
struct Building {
    duration: u64,
    bytes: usize,
    /// Whether its first part starts at a keyframe (`None`: no part yet).
    independent: Option<bool>,
}

/// Audio later than this behind a sealed part's end does not hold the part any longer.
const MAX_AUDIO_WAIT: i64 = CLOCK_RATE;
/// Sealed parts waiting for audio at most.
const MAX_SEALED: usize = 4;

/// Where a segmenter replacing an earlier one of the same stream carries on (the stream ended
/// and came back while viewers watched): media sequence numbers and init ids never repeat, and
/// the first segment is a discontinuity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Continuation {
    pub next_msn: u64,
    pub next_init: u64,
    pub discontinuity_seq: u64,
}

/// What a request for a part or segment finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Ready(Vec<Bytes>),
    /// The next part (or the segment being filled): worth waiting for.
    Pending,
    Gone,
}

/// Whether a blocking playlist request (`_HLS_msn` / `_HLS_part`) can be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Wait,
    /// Too far ahead (RFC 8216bis 6.2.5.2): 400.
    Bad,
}

/// Counters of one segmenter (the API view).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SegmenterStats {
    pub segments: usize,
    pub parts: u64,
    /// Bytes held: segments in the window, the segment being filled, pending samples and inits.
    pub bytes: usize,
    /// Media sequence number of the oldest segment in the window.
    pub first_msn: u64,
    /// Frames dropped: before the first keyframe, of an unsupported codec, or while a new track
    /// waits for the next keyframe.
    pub frames_skipped: u64,
    /// Segments left out of the window to stay within `max_bytes`.
    pub evicted_for_bytes: u64,
}

pub struct Segmenter {
    cfg: SegmenterConfig,
    /// The audio track announced before its first frame (D63), declared in the first init.
    audio_hint: Option<AudioTrack>,
    init: Option<Init>,
    /// Older init segments still named by segments in the window.
    old_inits: Vec<Init>,
    next_init: u64,
    segments: VecDeque<Segment>,
    current: Option<Segment>,
    next_msn: u64,
    discontinuity_seq: u64,
    /// The next segment follows a new init.
    discontinuity_next: bool,
    frag_seq: u32,
    video: TrackState,
    audio: TrackState,
    /// Decode time (90 kHz, source clock) of the timeline's zero.
    origin: Option<i64>,
    /// A different audio track appeared: a new init at the next keyframe declares it.
    audio_change: Option<AudioTrack>,
    last_interval: u64,
    /// Parts waiting for their audio, oldest first.
    sealed: VecDeque<Sealed>,
    building: Building,
    /// Audio seen before any video (to decide the stream is audio-only).
    audio_before_video: Option<i64>,
    seen_video: bool,
    bytes: usize,
    stats: SegmenterStats,
}

fn rescale(v: i64, from: u32, to: u32) -> i64 {
    (v as i128 * to as i128 / from.max(1) as i128) as i64
}

impl Segmenter {
    pub fn new(cfg: SegmenterConfig, audio_hint: Option<AudioTrack>) -> Segmenter {
        Segmenter {
            cfg,
            audio_hint,
            init: None,
            old_inits: Vec::new(),
            next_init: 0,
            segments: VecDeque::new(),
            current: None,
            next_msn: 0,
            discontinuity_seq: 0,
            discontinuity_next: false,
            frag_seq: 0,
            video: TrackState::default(),
            audio: TrackState::default(),
            origin: None,
            audio_change: None,
            last_interval: 0,
            audio_before_video: None,
            sealed: VecDeque::new(),
            building: Building::default(),
            seen_video: false,
            bytes: 0,
            stats: SegmenterStats::default(),
        }
    }

    /// Where a successor of this segmenter should start (see [`Continuation`]).
    pub fn continuation(&self) -> Continuation {
        let listed = self.segments.iter().chain(self.current.iter()).filter(|s| s.discontinuity).count() as u64;
        let next_msn = self.next_msn;
        Continuation { next_msn, next_init: self.next_init, discontinuity_seq: self.discontinuity_seq + listed }
    }

    /// Starts after an earlier segmenter of the same stream (call before the first frame).
    pub fn resume(&mut self, c: Continuation) {
        self.next_msn = c.next_msn;
        self.next_init = c.next_init;
        self.discontinuity_seq = c.discontinuity_seq;
        self.discontinuity_next = c.next_msn > 0;
    }

    /// Feeds one hub frame. Returns whether a part (or segment) was completed.
    pub fn push(&mut self, frame: Frame) -> bool {
        match frame.kind() {
            MediaKind::Video => self.push_video(frame),
            MediaKind::Audio => self.push_audio(frame),
        }
    }

    fn tracks(&self) -> Option<&Tracks> {
        self.init.as_ref().map(|i| &i.tracks)
    }

    fn video_track_of(frame: &Frame) -> Option<VideoTrack> {
        match (&*frame.config, frame.codec) {
            (CodecConfig::Video(v), Codec::H264 | Codec::H265) if !v.sps.is_empty() && !v.pps.is_empty() => {
                Some(VideoTrack { codec: frame.codec, config: v.clone() })
            }
            _ => None,
        }
    }

    fn audio_track_of(frame: &Frame) -> Option<AudioTrack> {
        match &*frame.config {
            CodecConfig::Audio(a) => AudioTrack::aac(frame.codec, a),
            _ => None,
        }
    }

    fn push_video(&mut self, f: Frame) -> bool {
        self.seen_video = true;
        let mut changed = false;
        let track = if f.keyframe { Self::video_track_of(&f) } else { None };
        if let Some(track) = track {
            let current = self.tracks().cloned();
            let same_video = current.as_ref().is_some_and(|t| t.video.as_ref() == Some(&track));
            if !same_video || self.audio_change.is_some() {
                changed |= self.flush_all();
                let audio = match self.audio_change.take() {
                    Some(a) => Some(a),
                    None => current.and_then(|t| t.audio).or_else(|| self.audio_hint.clone()),
                };
                if self.origin.is_none() {
                    self.origin = Some(f.dts);
                }
                self.new_init(Tracks { video: Some(track), audio });
            }
        }
        if self.tracks().is_none_or(|t| t.video.is_none()) {
            self.stats.frames_skipped += 1;
            return changed;
        }
        if let Some(h) = self.video.held.take() {
            let d = (f.dts - h.dts).clamp(1, MAX_SAMPLE) as u64;
            self.last_interval = d;
            self.video.add(video_sample(&h, d), h.dts);
        }
        changed |= self.cut_before(f.keyframe, f.dts);
        self.video.held = Some(f);
        changed | self.drain_sealed(false)
    }

    fn push_audio(&mut self, f: Frame) -> bool {
        let Some(track) = Self::audio_track_of(&f) else {
            self.stats.frames_skipped += 1;
            return false;
        };
        let mut changed = false;
        if self.init.is_none() {
            if self.seen_video {
                self.stats.frames_skipped += 1;
                return false;
            }
            // Audio-only: start on audio once no video came for a while.
            let first = *self.audio_before_video.get_or_insert(f.dts);
            if f.dts - first < AUDIO_ONLY_AFTER {
                self.stats.frames_skipped += 1;
                return false;
            }
            self.origin = Some(f.dts);
            self.new_init(Tracks { video: None, audio: Some(track.clone()) });
        }
        let tracks = self.tracks().cloned().unwrap_or_default();
        if tracks.audio.as_ref() != Some(&track) && self.stats.parts == 0 && self.current.is_none() {
            // Nothing went out yet: the init segment can still gain the track in place (a
            // source whose audio was not announced would otherwise start with a discontinuity).
            if let Some(init) = &mut self.init {
                let tracks = Tracks { video: init.tracks.video.clone(), audio: Some(track.clone()) };
                if let Ok(data) = fmp4::init_segment(&tracks) {
                    self.bytes = self.bytes + data.len() - init.data.len();
                    *init = Init { id: init.id, codecs: tracks.codecs(), data, tracks };
                }
            }
        }
        let tracks = self.tracks().cloned().unwrap_or_default();
        if tracks.audio.as_ref() != Some(&track) {
            if tracks.video.is_some() {
                // Declared at the next keyframe; until then this audio has nowhere to go.
                self.audio_change = Some(track);
                self.stats.frames_skipped += 1;
                return false;
            }
            changed |= self.flush_all();
            self.new_init(Tracks { video: None, audio: Some(track.clone()) });
        }
        let rate = track.timescale();
        let origin = self.origin.unwrap_or(f.dts);
        if self.audio.held.is_none() && self.audio.pending.is_empty() && self.audio.time == 0 {
            // The audio track's first sample: its place on the shared timeline.
            if f.dts < origin {
                self.stats.frames_skipped += 1;
                return changed;
            }
            self.audio.time = rescale(f.dts - origin, CLOCK_RATE as u32, rate) as u64;
        }
        if let Some(h) = self.audio.held.take() {
            // From positions on the source clock, not from each gap alone: rounding every gap
            // down would drift the audio behind the video (0.5 sample a frame).
            let (at, next) = (h.dts - origin, f.dts - origin);
            let d = if (1..=MAX_SAMPLE).contains(&(next - at)) {
                rescale(next, CLOCK_RATE as u32, rate) - rescale(at, CLOCK_RATE as u32, rate)
            } else {
                rescale((next - at).clamp(1, MAX_SAMPLE), CLOCK_RATE as u32, rate)
            };
            let d = d.max(1) as u64;
            self.audio.add(Sample { duration: d as u32, cts: 0, keyframe: true, data: h.data.clone() }, h.dts);
        }
        let dts = f.dts;
        self.audio.held = Some(f);
        if tracks.video.is_none() {
            changed |= self.cut_before(true, dts);
        }
        changed | self.drain_sealed(false)
    }

    /// Ticks (90 kHz) of the pending part, by its video (or, audio-only, its audio) samples.
    fn pending_ticks(&self) -> u64 {
        match self.tracks().and_then(|t| t.audio.as_ref().filter(|_| t.video.is_none())) {
            Some(a) => rescale(self.audio.pending_ticks as i64, a.timescale(), CLOCK_RATE as u32) as u64,
            None => self.video.pending_ticks,
        }
    }

    /// Decides, before a frame at `dts` that may start a segment, whether to end the part or the
    /// segment there.
    fn cut_before(&mut self, keyframe: bool, dts: i64) -> bool {
        let pending = self.pending_ticks();
        let b = self.building;
        let seg = b.duration + pending;
        // One segment may fill at most half of the window's bytes.
        let too_big = b.bytes + self.video.pending_bytes + self.audio.pending_bytes >= self.cfg.max_bytes / 2;
        // A segment that did not start at a keyframe (the live-edge cut, a forced cut) ends at
        // the next one, however short: a player that joined on it gets a whole GOP sooner.
        let audio_only = self.tracks().is_some_and(|t| t.video.is_none());
        let independent = b.independent.unwrap_or(audio_only || self.video.pending.first().is_some_and(|s| s.keyframe));
        if (keyframe && (seg >= self.cfg.segment_min || !independent)) || seg >= self.cfg.segment_max || too_big {
            return self.seal(dts, true);
        }
        // Parts stay within the target: end one when the next frame would pass it.
        let interval = if audio_only { 0 } else { self.last_interval };
        if pending > 0 && (pending >= self.cfg.part_target || pending + interval > self.cfg.part_target) {
            return self.seal(dts, false);
        }
        false
    }

    /// Ends the pending part at `until` (source clock); it goes out once the audio is there too.
    fn seal(&mut self, until: i64, ends_segment: bool) -> bool {
        if self.init.is_none() {
            return false;
        }
        let audio_only = self.tracks().is_some_and(|t| t.video.is_none());
        let independent = audio_only || self.video.pending.first().is_some_and(|s| s.keyframe);
        let bytes_before = self.video.pending_bytes;
        let (video_base, video) = self.video.take_until(until);
        let duration = if audio_only { self.pending_ticks() } else { video.iter().map(|s| s.duration as u64).sum() };
        let empty = video.is_empty() && (!audio_only || self.audio.pending.is_empty());
        if empty {
            // Nothing to add: the segment still ends here.
            if !ends_segment {
                return false;
            }
            self.building = Building::default();
            return match self.sealed.back_mut() {
                // The segment ends with the last sealed part (once its audio is there).
                Some(last) => {
                    let marked = !last.ends_segment;
                    last.ends_segment = true;
                    marked
                }
                None => self.close_segment(),
            };
        }
        let bytes = bytes_before - self.video.pending_bytes;
        self.sealed.push_back(Sealed { video, video_base, until, duration, independent, ends_segment });
        self.building = if ends_segment {
            Building::default()
        } else {
            Building {
                duration: self.building.duration + duration,
                bytes: self.building.bytes + bytes,
                independent: Some(self.building.independent.unwrap_or(independent)),
            }
        };
        self.drain_sealed(false)
    }

    /// Sends out the sealed parts whose audio has come (or waited long enough; `force`: all).
    fn drain_sealed(&mut self, force: bool) -> bool {
        let mut changed = false;
        while let Some(front) = self.sealed.front() {
            let has_audio = self.tracks().is_some_and(|t| t.audio.is_some() && t.video.is_some());
            let audio_at = self.audio.held.as_ref().map(|h| h.dts);
            let video_at = self.video.held.as_ref().map_or(front.until, |h| h.dts);
            let ready = force
                || !has_audio
                || audio_at.is_some_and(|a| a >= front.until)
                || video_at - front.until > MAX_AUDIO_WAIT
                || self.sealed.len() > MAX_SEALED;
            if !ready {
                break;
            }
            let Some(part) = self.sealed.pop_front() else { break };
            let (abase, audio) = self.audio.take_until(part.until);
            changed |= self.emit_part(part.video, part.video_base, audio, abase, part.duration, part.independent);
            if part.ends_segment {
                changed |= self.close_segment();
            }
        }
        changed
    }

    /// Moves the held frames into the pending part (their duration guessed from the last
    /// interval), then closes the part and the segment: before a new init segment.
    fn flush_all(&mut self) -> bool {
        if let Some(h) = self.video.held.take() {
            let d = self.last_interval.max(1);
            self.video.add(video_sample(&h, d), h.dts);
        }
        if let Some(h) = self.audio.held.take() {
            // An AAC frame is 1024 samples.
            self.audio.add(Sample { duration: 1024, cts: 0, keyframe: true, data: h.data.clone() }, h.dts);
        }
        let sealed = self.seal(i64::MAX, true);
        self.drain_sealed(true) || sealed
    }

    fn new_init(&mut self, tracks: Tracks) {
        let data = match fmp4::init_segment(&tracks) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!("HLS init segment: {e}");
                return;
            }
        };
        // The audio timeline continues on the video's (a new sample rate rescales it).
        let rate_of = |t: &Tracks| t.audio.as_ref().map(|a| a.timescale());
        if let (Some(old), Some(new)) = (self.tracks().and_then(rate_of), rate_of(&tracks)) {
            if old != new {
                self.audio.time = rescale(self.audio.time as i64, old, new) as u64;
            }
        } else if self.tracks().is_some() && tracks.audio.is_some() && self.tracks().and_then(rate_of).is_none() {
            // Audio joins: it starts where the video is now.
            let rate = rate_of(&tracks).unwrap_or(CLOCK_RATE as u32);
            self.audio.time = rescale(self.video.time as i64, CLOCK_RATE as u32, rate) as u64;
            self.audio.held = None;
        }
        let init = Init { id: self.next_init, codecs: tracks.codecs(), data, tracks };
        self.next_init += 1;
        self.bytes += init.data.len();
        if let Some(old) = self.init.replace(init) {
            self.discontinuity_next = true;
            self.old_inits.push(old);
        }
        self.drop_unused_inits();
    }

    /// Puts one part (video and audio samples) into the current segment.
    fn emit_part(
        &mut self,
        vs: Vec<Sample>,
        vbase: u64,
        aus: Vec<Sample>,
        abase: u64,
        duration: u64,
        independent: bool,
    ) -> bool {
        let Some(init) = &self.init else { return false };
        if vs.is_empty() && aus.is_empty() {
            return false;
        }
        let runs = [
            Run { track_id: VIDEO_TRACK, base_decode_time: vbase, samples: &vs },
            Run { track_id: AUDIO_TRACK, base_decode_time: abase, samples: &aus },
        ];
        self.frag_seq = self.frag_seq.wrapping_add(1);
        let data = match fmp4::fragment(self.frag_seq, &runs) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!("HLS fragment dropped: {e}");
                self.stats.frames_skipped += (vs.len() + aus.len()) as u64;
                return false;
            }
        };
        let init_id = init.id;
        let seg = self.current.get_or_insert_with(|| {
            let s = Segment {
                msn: self.next_msn,
                init: init_id,
                discontinuity: std::mem::take(&mut self.discontinuity_next),
                parts: Vec::new(),
                duration: 0,
                bytes: 0,
            };
            self.next_msn += 1;
            s
        });
        seg.duration += duration;
        seg.bytes += data.len();
        self.bytes += data.len();
        seg.parts.push(Part { data, duration, independent });
        self.stats.parts += 1;
        true
    }

    /// Moves the current segment into the window, then trims the window.
    fn close_segment(&mut self) -> bool {
        let Some(seg) = self.current.take() else { return false };
        self.segments.push_back(seg);
        while self.segments.len() > self.cfg.max_segments.max(1) {
            self.evict();
        }
        while self.bytes > self.cfg.max_bytes && self.segments.len() > 1 {
            self.evict();
            self.stats.evicted_for_bytes += 1;
        }
        self.drop_unused_inits();
        true
    }

    fn evict(&mut self) {
        if let Some(old) = self.segments.pop_front() {
            self.bytes -= old.bytes;
            // EXT-X-DISCONTINUITY-SEQUENCE counts the tags that left the playlist.
            if old.discontinuity {
                self.discontinuity_seq += 1;
            }
        }
    }

    fn drop_unused_inits(&mut self) {
        let used: Vec<u64> = self.segments.iter().chain(self.current.iter()).map(|s| s.init).collect();
        let bytes = &mut self.bytes;
        self.old_inits.retain(|i| {
            let keep = used.contains(&i.id);
            if !keep {
                *bytes -= i.data.len();
            }
            keep
        });
    }

    /// Closes the current part and segment now (not at a keyframe): the driver's call once the
    /// GOP cache has been fed, so a player that needs a complete segment (ffmpeg) starts at once.
    /// Returns whether it ended anything (the part may still wait for its audio).
    pub fn cut(&mut self) -> bool {
        let before = (self.sealed.len(), self.stats.parts, self.segments.len());
        // Where both tracks have come: the video after it opens the next segment, so the first
        // one is whole (its audio as long as its video) and needs no wait.
        let video_at = self.video.held.as_ref().map_or(i64::MAX, |h| h.dts);
        let audio_at = match self.tracks().is_some_and(|t| t.audio.is_some() && t.video.is_some()) {
            true => self.audio.held.as_ref().map_or(i64::MIN, |h| h.dts),
            false => i64::MAX,
        };
        let marked = self.seal(video_at.min(audio_at), true);
        marked || (self.sealed.len(), self.stats.parts, self.segments.len()) != before
    }

    /// Whether there is an init segment and at least one part.
    pub fn has_media(&self) -> bool {
        self.init.is_some() && (self.current.is_some() || !self.segments.is_empty())
    }

    /// Whether at least one segment is complete.
    pub fn has_segment(&self) -> bool {
        !self.segments.is_empty()
    }

    /// The init segment `id`, or the current one for `None`.
    pub fn init(&self, id: Option<u64>) -> Option<Bytes> {
        match id {
            None => self.init.as_ref().map(|i| i.data.clone()),
            Some(id) => self.init.iter().chain(&self.old_inits).find(|i| i.id == id).map(|i| i.data.clone()),
        }
    }

    /// The RFC 6381 codecs of the current init segment (for MSE).
    pub fn codecs(&self) -> Option<&str> {
        self.init.as_ref().map(|i| i.codecs.as_str())
    }

    /// The (video width, height) of the current init segment, if it has video.
    pub fn resolution(&self) -> Option<(u32, u32)> {
        let v = self.tracks()?.video.as_ref()?;
        Some((v.config.width, v.config.height))
    }

    /// The msn of the segment being filled (or the next one).
    fn current_msn(&self) -> u64 {
        self.current.as_ref().map_or(self.next_msn, |s| s.msn)
    }

    fn find(&self, msn: u64) -> Option<&Segment> {
        self.segments.iter().chain(self.current.iter()).find(|s| s.msn == msn)
    }

    /// A complete segment's bytes (its parts, in order).
    pub fn segment(&self, msn: u64) -> Lookup {
        if let Some(s) = self.segments.iter().find(|s| s.msn == msn) {
            return Lookup::Ready(s.parts.iter().map(|p| p.data.clone()).collect());
        }
        if msn == self.current_msn() {
            return Lookup::Pending;
        }
        Lookup::Gone
    }

    /// One part's bytes; the next part to come is [`Lookup::Pending`] (a preload hint).
    pub fn part(&self, msn: u64, index: usize) -> Lookup {
        if let Some(p) = self.find(msn).and_then(|s| s.parts.get(index)) {
            return Lookup::Ready(vec![p.data.clone()]);
        }
        let next = self.current.as_ref().map_or((self.next_msn, 0), |s| (s.msn, s.parts.len()));
        if (msn, index) == next {
            return Lookup::Pending;
        }
        Lookup::Gone
    }

    /// Whether a playlist asked for with `_HLS_msn=msn` (and `_HLS_part=part`) can be sent.
    pub fn playlist_ready(&self, msn: u64, part: Option<u64>) -> Readiness {
        if msn > self.current_msn() + 2 {
            return Readiness::Bad;
        }
        if self.segments.back().is_some_and(|s| s.msn >= msn) {
            return Readiness::Ready;
        }
        match (part, &self.current) {
            (Some(p), Some(cur)) if cur.msn == msn && cur.parts.len() as u64 > p => Readiness::Ready,
            _ => Readiness::Wait,
        }
    }

    /// `EXT-X-TARGETDURATION`: every segment's duration rounded to whole seconds fits in it.
    pub fn target_duration(&self) -> u64 {
        let max = self.segments.iter().map(|s| s.duration).max().unwrap_or(0);
        let secs = (max + CLOCK_RATE as u64 / 2) / CLOCK_RATE as u64;
        secs.max(self.cfg.segment_min.div_ceil(CLOCK_RATE as u64)).max(1)
    }

    /// `PART-TARGET` in seconds: the configured target, or the longest part if one overshot.
    pub fn part_target(&self) -> f64 {
        let longest = self.segments.iter().chain(self.current.iter()).flat_map(|s| &s.parts).map(|p| p.duration).max();
        longest.unwrap_or(0).max(self.cfg.part_target) as f64 / CLOCK_RATE as f64
    }

    /// The media playlist. `query` (e.g. `session=...`) is appended to every URI.
    pub fn playlist(&self, query: &str) -> String {
        let q = if query.is_empty() { String::new() } else { format!("?{query}") };
        let part_target = self.part_target();
        let mut out = String::with_capacity(1024);
        out.push_str("#EXTM3U\n#EXT-X-VERSION:9\n");
        let _ = writeln!(out, "#EXT-X-TARGETDURATION:{}", self.target_duration());
        let _ = writeln!(out, "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}", part_target * 3.0);
        let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={part_target:.3}");
        let first = self.segments.front().or(self.current.as_ref());
        let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", first.map_or(self.next_msn, |s| s.msn));
        if self.discontinuity_seq > 0 {
            let _ = writeln!(out, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", self.discontinuity_seq);
        }
        // Parts are listed for the last two complete segments and the one being filled.
        let parts_from = self.segments.len().saturating_sub(2);
        let mut map: Option<u64> = None;
        let all = self.segments.iter().chain(self.current.iter());
        for (i, s) in all.enumerate() {
            if map != Some(s.init) {
                if s.discontinuity {
                    out.push_str("#EXT-X-DISCONTINUITY\n");
                }
                let _ = writeln!(out, "#EXT-X-MAP:URI=\"{}{q}\"", init_uri(s.init));
                map = Some(s.init);
            }
            let complete = i < self.segments.len();
            if i >= parts_from || !complete {
                for (k, p) in s.parts.iter().enumerate() {
                    let _ = write!(
                        out,
                        "#EXT-X-PART:DURATION={:.3},URI=\"part{}.{k}.m4s{q}\"",
                        p.duration as f64 / CLOCK_RATE as f64,
                        s.msn
                    );
                    out.push_str(if p.independent { ",INDEPENDENT=YES\n" } else { "\n" });
                }
            }
            if complete {
                let _ = writeln!(out, "#EXTINF:{:.3},\nseg{}.m4s{q}", s.duration as f64 / CLOCK_RATE as f64, s.msn);
            }
        }
        let (msn, k) = self.current.as_ref().map_or((self.next_msn, 0), |s| (s.msn, s.parts.len()));
        let _ = writeln!(out, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part{msn}.{k}.m4s{q}\"");
        out
    }

    pub fn stats(&self) -> SegmenterStats {
        SegmenterStats {
            segments: self.segments.len(),
            bytes: self.bytes
                + self.video.pending_bytes
                + self.audio.pending_bytes
                + self.sealed.iter().flat_map(|p| &p.video).map(|s| s.data.len()).sum::<usize>(),
            first_msn: self.segments.front().map_or(self.next_msn, |s| s.msn),
            ..self.stats.clone()
        }
    }
}

/// The URI of init segment `id`: `init.mp4` for the first, `init-<id>.mp4` after a codec change.
pub fn init_uri(id: u64) -> String {
    if id == 0 {
        "init.mp4".into()
    } else {
        format!("init-{id}.mp4")
    }
}

fn video_sample(f: &Frame, duration: u64) -> Sample {
    Sample {
        duration: duration.min(u32::MAX as u64) as u32,
        cts: (f.pts - f.dts).clamp(i32::MIN as i64, i32::MAX as i64) as i32,
        keyframe: f.keyframe,
        data: fmp4::video_sample(f.codec, &f.data),
    }
}

/// A request path under a stream, after `/<stream>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Playlist,
    /// `hls.json`: the codecs and URIs for a browser's MSE player.
    Info,
    Init(Option<u64>),
    Segment(u64),
    Part(u64, usize),
}

/// Parses the last path element of an HLS request (`index.m3u8`, `init.mp4`, `init-3.mp4`,
/// `seg12.m4s`, `part12.3.m4s`, `hls.json`).
pub fn parse_resource(file: &str) -> Option<Resource> {
    match file {
        "index.m3u8" => return Some(Resource::Playlist),
        "hls.json" => return Some(Resource::Info),
        "init.mp4" => return Some(Resource::Init(None)),
        _ => {}
    }
    if let Some(id) = file.strip_prefix("init-").and_then(|r| r.strip_suffix(".mp4")) {
        return id.parse().ok().map(|id| Resource::Init(Some(id)));
    }
    if let Some(msn) = file.strip_prefix("seg").and_then(|r| r.strip_suffix(".m4s")) {
        return msn.parse().ok().map(Resource::Segment);
    }
    let (msn, idx) = file.strip_prefix("part")?.strip_suffix(".m4s")?.split_once('.')?;
    Some(Resource::Part(msn.parse().ok()?, idx.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{AudioConfig, FrameCache, VideoConfig};
    use std::sync::Arc;

    fn vcfg(track: &VideoTrack) -> Arc<CodecConfig> {
        Arc::new(CodecConfig::Video(track.config.clone()))
    }

    fn video(cfg: &Arc<CodecConfig>, codec: Codec, dts: i64, key: bool, size: usize) -> Frame {
        let mut data = vec![0u8; 4 + size];
        data[..4].copy_from_slice(&(size as u32).to_be_bytes());
        data[4] = if key { 0x65 } else { 0x41 };
        Frame {
            codec,
            pts: dts,
            dts,
            keyframe: key,
            data: data.into(),
            config: cfg.clone(),
            cache: FrameCache::default(),
        }
    }

    fn aac_cfg() -> Arc<CodecConfig> {
        Arc::new(CodecConfig::Audio(AudioConfig {
            sample_rate: 11025,
            channels: 1,
            asc: Some(Bytes::from_static(&[0x15, 0x08])),
        }))
    }

    fn audio(cfg: &Arc<CodecConfig>, dts: i64) -> Frame {
        Frame {
            codec: Codec::Aac,
            pts: dts,
            dts,
            keyframe: true,
            data: Bytes::from_static(&[0x21, 0x10, 0x04]),
            config: cfg.clone(),
            cache: FrameCache::default(),
        }
    }

    fn h264() -> (Arc<CodecConfig>, VideoTrack) {
        let t = crate::proto::fmp4::tests::h264_track();
        (vcfg(&t), t)
    }

    /// 25 fps with a keyframe every `gop` frames, and AAC frames in between.
    fn feed(s: &mut Segmenter, cfg: &Arc<CodecConfig>, from: i64, frames: i64, gop: i64) -> usize {
        let acfg = aac_cfg();
        let mut completed = 0;
        let mut adts = from * 3600;
        for i in from..from + frames {
            let dts = i * 3600;
            if s.push(video(cfg, Codec::H264, dts, i % gop == 0, 500)) {
                completed += 1;
            }
            while adts < dts + 3600 {
                if s.push(audio(&acfg, adts)) {
                    completed += 1;
                }
                adts += 1024 * 90_000 / 11025;
            }
        }
        completed
    }

    fn parse_extinf(pl: &str) -> Vec<f64> {
        pl.lines()
            .filter_map(|l| l.strip_prefix("#EXTINF:"))
            .map(|v| v.trim_end_matches(',').parse().unwrap())
            .collect()
    }

    #[test]
    fn segments_start_at_keyframes_with_parts_within_the_target() {
        let (cfg, _) = h264();
        let mut s = Segmenter::new(SegmenterConfig::default(), AudioTrack::aac(Codec::Aac, &audio_cfg()));
        // 2 s GOPs, 12 s of video.
        feed(&mut s, &cfg, 0, 300, 50);
        let pl = s.playlist("session=abc");
        assert!(pl.starts_with("#EXTM3U\n"), "{pl}");
        assert!(pl.contains("#EXT-X-MAP:URI=\"init.mp4?session=abc\""), "{pl}");
        assert!(pl.contains("#EXT-X-PART-INF:PART-TARGET=0.500"), "{pl}");
        assert!(pl.contains("CAN-BLOCK-RELOAD=YES"), "{pl}");
        assert!(pl.contains("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part5.4.m4s?session=abc\""), "{pl}");
        let durs = parse_extinf(&pl);
        assert_eq!(durs, vec![2.0; 5], "{pl}");
        assert!(pl.contains("#EXT-X-TARGETDURATION:2\n"));
        for s in &s.segments {
            assert!(s.parts[0].independent);
            assert!(s.parts.iter().skip(1).all(|p| !p.independent));
            assert!(s.parts.iter().all(|p| p.duration <= 45_000), "{:?}", s.parts.iter().map(|p| p.duration));
            assert_eq!(s.parts.len(), 5, "2 s in parts of 12 frames (480 ms) and one of 2");
        }
        // The codecs for MSE, and the first segment decodes back to moof/mdat pairs.
        assert_eq!(s.codecs(), Some("avc1.64000d,mp4a.40.2"));
        let Lookup::Ready(parts) = s.segment(1) else { panic!() };
        assert_eq!(parts.len(), 5);
        assert_eq!(&parts[0][4..8], b"moof");
        assert_eq!(s.segment(5), Lookup::Pending);
        assert_eq!(s.segment(99), Lookup::Gone);
    }

    fn audio_cfg() -> AudioConfig {
        match &*aac_cfg() {
            CodecConfig::Audio(a) => a.clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn decode_times_are_continuous_across_parts_and_segments() {
        use mp4_atom::{Decode, Moof};
        let (cfg, _) = h264();
        let mut s = Segmenter::new(SegmenterConfig::default(), AudioTrack::aac(Codec::Aac, &audio_cfg()));
        feed(&mut s, &cfg, 10, 200, 50); // starts mid-GOP: frames before the first keyframe drop
        assert_eq!(s.stats().frames_skipped, 40 + 40 * 3600 * 11025 / 90000 / 1024 + 1);
        let mut next = [None::<u64>, None];
        for seg in &s.segments {
            for p in &seg.parts {
                let moof = Moof::decode(&mut &p.data[..]).unwrap();
                for traf in &moof.traf {
                    let i = (traf.tfhd.track_id - 1) as usize;
                    let base = traf.tfdt.as_ref().unwrap().base_media_decode_time;
                    if let Some(n) = next[i] {
                        assert_eq!(base, n, "track {} continuous", i + 1);
                    }
                    let total: u64 = traf.trun[0].samples.iter().map(|e| e.duration.unwrap() as u64).sum();
                    next[i] = Some(base + total);
                }
            }
        }
        assert!(next[0].unwrap() > 0 && next[1].unwrap() > 0);
        // Audio and video agree on where they are (within a frame of each), and an hour of
        // AAC frames (whose 90 kHz gaps are not whole) does not drift.
        let v = next[0].unwrap() as f64 / 90_000.0;
        let a = next[1].unwrap() as f64 / 11025.0;
        assert!((v - a).abs() < 0.15, "video {v} s, audio {a} s");
        let mut s = Segmenter::new(SegmenterConfig::default(), None);
        let acfg = aac_cfg();
        let step = 1024.0 * 90_000.0 / 11025.0;
        let frames = 3600 * 11025 / 1024;
        for i in 0..frames {
            s.push(audio(&acfg, (i as f64 * step) as i64));
        }
        // (The first 2 s wait for a video that never comes.)
        let expected = (frames as u64 - 1 - s.stats().frames_skipped) * 1024;
        let got = s.audio.time;
        assert!(got.abs_diff(expected) <= 1024, "audio time {got}, expected {expected}");
    }

    #[test]
    fn late_audio_still_fills_each_part_up_to_its_video_end() {
        use mp4_atom::{Decode, Moof};
        let (cfg, _) = h264();
        let acfg = aac_cfg();
        let mut s = Segmenter::new(SegmenterConfig::default(), AudioTrack::aac(Codec::Aac, &audio_cfg()));
        // The audio arrives 200 ms after the video of the same time (as the transcoder's does).
        let step = 1024.0 * 90_000.0 / 11025.0;
        let mut next_audio = 0usize;
        for i in 0..200i64 {
            s.push(video(&cfg, Codec::H264, i * 3600, i % 50 == 0, 500));
            while ((next_audio as f64) * step) as i64 <= i * 3600 - 18_000 {
                s.push(audio(&acfg, ((next_audio as f64) * step) as i64));
                next_audio += 1;
            }
        }
        let mut checked = 0;
        for seg in &s.segments {
            for p in &seg.parts {
                let moof = Moof::decode(&mut &p.data[..]).unwrap();
                let end = |i: usize, rate: f64| {
                    let t = &moof.traf[i];
                    let total: u64 = t.trun[0].samples.iter().map(|e| e.duration.unwrap() as u64).sum();
                    (t.tfdt.as_ref().unwrap().base_media_decode_time + total) as f64 / rate
                };
                assert_eq!(moof.traf.len(), 2, "every part has audio");
                let (v, a) = (end(0, 90_000.0), end(1, 11025.0));
                assert!((v - a).abs() < 0.1, "part ends: video {v} s, audio {a} s");
                checked += 1;
            }
        }
        assert!(checked > 10);
    }

    #[test]
    fn window_is_bounded_in_segments_and_bytes() {
        let (cfg, _) = h264();
        let c = SegmenterConfig { max_segments: 3, ..Default::default() };
        let mut s = Segmenter::new(c, None);
        feed(&mut s, &cfg, 0, 50 * 20, 50);
        assert_eq!(s.stats().segments, 3);
        assert_eq!(s.stats().first_msn, 16);
        let pl = s.playlist("");
        assert!(pl.contains("#EXT-X-MEDIA-SEQUENCE:16\n"), "{pl}");
        assert!(pl.contains("seg18.m4s"));
        assert!(!pl.contains("seg15.m4s"));
        assert_eq!(s.segment(15), Lookup::Gone);
        // Bytes: 50 frames of ~500 bytes is ~27 KB a segment; a 60 KB window holds two.
        let c = SegmenterConfig { max_bytes: 60_000, ..Default::default() };
        let mut s = Segmenter::new(c, None);
        feed(&mut s, &cfg, 0, 50 * 10, 50);
        let st = s.stats();
        assert!(st.bytes <= 60_000 + 30_000, "{st:?}");
        assert!(st.segments <= 2 && st.evicted_for_bytes > 0, "{st:?}");
        // A GOP that never ends is cut at segment_max (10 s), and a huge one at half the bytes.
        let mut s = Segmenter::new(SegmenterConfig::default(), None);
        feed(&mut s, &cfg, 0, 25 * 25, 100_000);
        assert_eq!(parse_extinf(&s.playlist("")), vec![10.0, 10.0]);
        let c = SegmenterConfig { max_bytes: 100_000, ..Default::default() };
        let mut s = Segmenter::new(c, None);
        feed(&mut s, &cfg, 0, 400, 100_000);
        assert!(s.stats().bytes <= 100_000 + 25_000, "{:?}", s.stats());
    }

    #[test]
    fn blocking_reload_and_preload_hint_states() {
        let (cfg, _) = h264();
        let mut s = Segmenter::new(SegmenterConfig::default(), None);
        assert_eq!(s.playlist_ready(0, None), Readiness::Wait);
        assert_eq!(s.part(0, 0), Lookup::Pending);
        assert_eq!(s.playlist_ready(3, None), Readiness::Bad);
        feed(&mut s, &cfg, 0, 14, 50); // 13 frames out: one part of 12
        assert!(matches!(s.part(0, 0), Lookup::Ready(_)));
        assert_eq!(s.part(0, 1), Lookup::Pending);
        assert_eq!(s.part(0, 2), Lookup::Gone);
        assert_eq!(s.playlist_ready(0, Some(0)), Readiness::Ready);
        assert_eq!(s.playlist_ready(0, Some(1)), Readiness::Wait);
        assert_eq!(s.playlist_ready(0, None), Readiness::Wait);
        assert!(feed(&mut s, &cfg, 14, 12, 50) >= 1);
        assert_eq!(s.playlist_ready(0, Some(1)), Readiness::Ready);
        // The driver's cut at the live edge completes segment 0 at once.
        assert!(s.cut());
        assert_eq!(s.playlist_ready(0, None), Readiness::Ready);
        assert!(s.has_segment());
        assert_eq!(s.part(1, 0), Lookup::Pending);
        assert_eq!(s.playlist_ready(4, None), Readiness::Bad);
        // Segment 1 started mid-GOP: it ends at the next keyframe (frame 50), not 2 s later
        // (once the audio has reached it too).
        feed(&mut s, &cfg, 26, 27, 50);
        assert_eq!(s.playlist_ready(1, None), Readiness::Ready);
        assert_eq!(parse_extinf(&s.playlist("")), vec![1.0, 1.0]);
    }

    #[test]
    fn a_new_resolution_starts_a_new_init_with_a_discontinuity() {
        let (cfg, t) = h264();
        let mut s = Segmenter::new(SegmenterConfig { max_segments: 4, ..Default::default() }, None);
        feed(&mut s, &cfg, 0, 150, 50);
        let mut other = t.config.clone();
        other.width = 640;
        let cfg2 =
            Arc::new(CodecConfig::Video(VideoConfig { pps: Bytes::from_static(&[0x68, 0xce, 0x38, 0x80]), ..other }));
        feed(&mut s, &cfg2, 150, 150, 50);
        let pl = s.playlist("");
        assert!(pl.contains("#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init-1.mp4\""), "{pl}");
        assert!(s.init(Some(1)).is_some() && s.init(Some(0)).is_some(), "{pl}");
        // Once the old segments leave the window, so does their init, and the tag is counted.
        feed(&mut s, &cfg2, 300, 300, 50);
        let pl = s.playlist("");
        assert!(s.init(Some(0)).is_none());
        assert!(pl.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"), "{pl}");
        assert!(!pl.contains("#EXT-X-DISCONTINUITY\n"), "{pl}");
        assert!(pl.contains("#EXT-X-MAP:URI=\"init-1.mp4\""), "{pl}");
    }

    #[test]
    fn audio_only_streams_start_after_a_while_and_g711_is_skipped() {
        let mut s = Segmenter::new(SegmenterConfig::default(), None);
        let acfg = aac_cfg();
        for i in 0..200 {
            s.push(audio(&acfg, i * 8163));
        }
        assert!(s.has_segment(), "{:?}", s.stats());
        assert_eq!(s.codecs(), Some("mp4a.40.2"));
        let g711 = Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: 8000, channels: 1, asc: None }));
        let mut f = audio(&g711, 0);
        f.codec = Codec::G711A;
        let before = s.stats().frames_skipped;
        s.push(f);
        assert_eq!(s.stats().frames_skipped, before + 1);
    }

    #[test]
    fn a_successor_carries_on_the_numbering_after_a_discontinuity() {
        let (cfg, _) = h264();
        let mut a = Segmenter::new(SegmenterConfig::default(), None);
        feed(&mut a, &cfg, 0, 160, 50);
        let c = a.continuation();
        assert_eq!((c.next_msn, c.next_init, c.discontinuity_seq), (3, 1, 0), "3 complete, 9 frames pending");
        let mut b = Segmenter::new(SegmenterConfig::default(), None);
        b.resume(c);
        feed(&mut b, &cfg, 0, 110, 50);
        let pl = b.playlist("");
        assert!(pl.contains("#EXT-X-MEDIA-SEQUENCE:3\n#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init-1.mp4\""), "{pl}");
        assert!(b.init(Some(1)).is_some());
        assert_eq!(b.continuation().discontinuity_seq, 1);
    }

    #[test]
    fn resources_parse() {
        assert_eq!(parse_resource("index.m3u8"), Some(Resource::Playlist));
        assert_eq!(parse_resource("init.mp4"), Some(Resource::Init(None)));
        assert_eq!(parse_resource("init-4.mp4"), Some(Resource::Init(Some(4))));
        assert_eq!(parse_resource("seg12.m4s"), Some(Resource::Segment(12)));
        assert_eq!(parse_resource("part12.3.m4s"), Some(Resource::Part(12, 3)));
        assert_eq!(parse_resource("hls.json"), Some(Resource::Info));
        for bad in
            ["seg.m4s", "part1.m4s", "part1.x.m4s", "seg-1.m4s", "x.ts", "init-.mp4", "seg99999999999999999999.m4s"]
        {
            assert_eq!(parse_resource(bad), None, "{bad}");
        }
    }
}
