//! Timestamp repair, once per stream, before the hub: frames in, frames with monotonic, smooth,
//! A/V-aligned timestamps out, plus counters of what was repaired. Sans-IO: the arrival time is
//! passed in (`None` when there is none, e.g. `probe` reading a `.ps` file).
//!
//! Hand-written on purpose: no crate models the ways camera clocks go wrong. What it handles:
//! - **Video** keeps its own clock (`out = raw + offset`) while raw DTS steps are sane.
//!   - A zero DTS step (b) gets one estimated frame duration; the offset is kept, so the next
//!     frame with a normal timestamp lands where it belongs (no drift).
//!   - A step back (a, camera restart, 33-bit wrap the demuxer could not unwrap) or a step
//!     forward far beyond the arrival time (a jump of hours) re-anchors the offset so the output
//!     continues one frame later (or after the real pause, when arrival says there was one).
//! - **Audio** timestamps are re-derived from sample counts (`anchor + samples * 90000 / rate`);
//!   raw audio timestamps are used only to place the first frame, and mismatches are counted
//!   (c: a clock running twice too fast that jumps back, a). The sample clock is compared with
//!   the video clock at arrival: audio that falls behind by more than [`AV_TOLERANCE`] (lost
//!   audio, a pause) is re-anchored forward; audio that runs ahead loses frames until aligned.
//!   Output audio never goes back.
use serde::Serialize;

use crate::media::{Frame, MediaKind};

/// Audio further than this from the video clock (smoothed) is realigned.
pub const AV_TOLERANCE: i64 = 36_000; // 400 ms
/// A forward video step is a jump when it exceeds arrival time by this much.
const JUMP_SLACK: i64 = 90_000;
/// Without arrival times, a forward video step longer than this many frames (and than
/// [`JUMP_NO_CLOCK_MIN`]) is a jump.
const JUMP_NO_CLOCK_FRAMES: i64 = 8;
const JUMP_NO_CLOCK_MIN: i64 = 45_000;
/// An arrival gap longer than this is a real pause, kept in the output.
const REAL_PAUSE: i64 = 90_000;
/// Composition offsets (PTS - DTS) beyond this are treated as broken.
const MAX_CTO: i64 = 2 * 90_000;

/// What the repair did to one stream, shown in `/api/v1/streams` and by `probe`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepairStats {
    /// Video frames whose DTS equalled the previous one (given one frame duration).
    pub video_zero_steps: u64,
    /// Video DTS went back (re-anchored).
    pub video_back_steps: u64,
    /// Video DTS jumped forward beyond the arrival time (re-anchored).
    pub video_jumps: u64,
    /// Video frames with PTS before DTS or far after it (PTS set to DTS).
    pub video_pts_fixed: u64,
    /// Audio frames whose raw PTS disagreed with the sample count (ignored: audio time comes from
    /// samples).
    pub audio_ts_mismatches: u64,
    /// Audio re-anchored forward to the video clock (audio was lost or paused).
    pub audio_realigned: u64,
    /// Audio frames dropped because audio ran ahead of the video clock.
    pub audio_dropped_ahead: u64,
}

#[derive(Debug, Clone)]
struct VideoClock {
    offset: i64,
    last_raw: i64,
    last_out: i64,
    step: i64,
    last_arrival: Option<u64>,
}

#[derive(Debug, Clone)]
struct AudioClock {
    base: i64,
    samples: u64,
    rate: u32,
    /// Raw PTS expected for the next frame, for the mismatch counter.
    next_raw: i64,
    drift: i64,
    dropping: bool,
    /// Audio-only streams with arrival times: (output ts, arrival) of the last anchor.
    wall_anchor: Option<(i64, u64)>,
    /// Audio-only streams without arrival times: raw-to-output offset.
    raw_offset: i64,
}

impl AudioClock {
    fn next_ts(&self) -> i64 {
        let r = u64::from(self.rate.max(1));
        self.base + (self.samples.saturating_mul(90_000) / r).min(i64::MAX as u64 / 4) as i64
    }
    fn rebase(&mut self, at: i64) {
        self.base = at;
        self.samples = 0;
    }
}

#[derive(Debug, Clone, Default)]
pub struct TimestampRepair {
    video: Option<VideoClock>,
    audio: Option<AudioClock>,
    stats: RepairStats,
}

fn ticks_between(later: u64, earlier: u64) -> i64 {
    (later.saturating_sub(earlier) as i64).saturating_mul(9) / 100
}

impl TimestampRepair {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> &RepairStats {
        &self.stats
    }

    /// Repairs a video frame's `pts`/`dts` in place.
    pub fn video(&mut self, frame: &mut Frame, now_us: Option<u64>) {
        debug_assert_eq!(frame.kind(), MediaKind::Video);
        let raw = frame.dts;
        let mut cto = frame.pts.saturating_sub(frame.dts);
        if !(0..=MAX_CTO).contains(&cto) {
            self.stats.video_pts_fixed += 1;
            cto = 0;
        }
        let out = match &mut self.video {
            None => {
                // The first frame keeps its time, or continues after audio that came first.
                let offset = self.audio.as_ref().map_or(0, |a| a.raw_offset);
                self.video = Some(VideoClock {
                    offset,
                    last_raw: raw,
                    last_out: raw + offset,
                    step: 3600,
                    last_arrival: now_us,
                });
                raw + offset
            }
            Some(v) => {
                let d = raw.saturating_sub(v.last_raw);
                let wall = match (now_us, v.last_arrival) {
                    (Some(n), Some(l)) => Some(ticks_between(n, l)),
                    _ => None,
                };
                let limit = wall.map_or((JUMP_NO_CLOCK_FRAMES * v.step).max(JUMP_NO_CLOCK_MIN), |w| {
                    (w + JUMP_SLACK).max(4 * v.step)
                });
                let gap = match wall {
                    Some(w) if w > REAL_PAUSE => w,
                    _ => v.step,
                };
                let out = if d == 0 {
                    self.stats.video_zero_steps += 1;
                    v.last_out + v.step
                } else if d < 0 || d > limit {
                    if d < 0 {
                        self.stats.video_back_steps += 1;
                    } else {
                        self.stats.video_jumps += 1;
                    }
                    let out = v.last_out + gap;
                    v.offset = out - raw;
                    out
                } else {
                    // After zero steps the output may lead the raw clock: catch up gently.
                    let out = (raw + v.offset).max(v.last_out + (v.step / 2).max(1));
                    // The frame duration estimate follows output steps, which zero steps and
                    // their catch-up do not disturb.
                    let step = out - v.last_out;
                    if step <= REAL_PAUSE {
                        v.step = (v.step * 7 + step + 4) / 8;
                    }
                    out
                };
                v.last_raw = raw;
                v.last_out = out;
                if now_us.is_some() {
                    v.last_arrival = now_us;
                }
                out
            }
        };
        frame.dts = out;
        frame.pts = out + cto;
    }

    /// The video clock now: the last video frame's time, plus one frame (the demuxer emits a
    /// frame when the next one starts), plus the time since it arrived.
    /// `None` before the first video frame.
    pub fn video_reference(&self, now_us: Option<u64>) -> Option<i64> {
        let v = self.video.as_ref()?;
        let since = match (now_us, v.last_arrival) {
            (Some(n), Some(l)) => ticks_between(n, l).min(90_000),
            _ => 0,
        };
        Some(v.last_out + v.step + since)
    }

    /// Repairs an audio frame of `samples` samples at `rate` Hz in place, given the video clock
    /// when it arrived ([`Self::video_reference`], taken at arrival if the frame was held).
    /// Returns `false` when the frame must be dropped (audio ahead of video).
    pub fn audio(
        &mut self,
        frame: &mut Frame,
        samples: u64,
        rate: u32,
        now_us: Option<u64>,
        video_ref: Option<i64>,
    ) -> bool {
        let raw = frame.pts;
        let dur = (samples.saturating_mul(90_000) / u64::from(rate.max(1))) as i64;
        let video_offset = self.video.as_ref().map(|v| v.offset);
        let Some(a) = &mut self.audio else {
            let cand = raw + video_offset.unwrap_or(0);
            let start = match video_ref {
                Some(r) if (cand - r).abs() > AV_TOLERANCE => {
                    self.stats.audio_realigned += 1;
                    r
                }
                _ => cand,
            };
            self.audio = Some(AudioClock {
                base: start,
                samples,
                rate,
                next_raw: raw + dur,
                drift: 0,
                dropping: false,
                wall_anchor: now_us.map(|n| (start, n)),
                raw_offset: start - raw,
            });
            frame.pts = start;
            frame.dts = start;
            return true;
        };
        if rate != a.rate {
            let at = a.next_ts();
            a.rebase(at);
            a.rate = rate;
        }
        if (raw - a.next_raw).abs() > (dur / 2).max(900) {
            self.stats.audio_ts_mismatches += 1;
        }
        a.next_raw = raw + dur;
        let next = a.next_ts();
        let reference = video_ref.or_else(|| match (a.wall_anchor, now_us) {
            (Some((at, then)), Some(n)) => Some(at + ticks_between(n, then)),
            (None, None) => Some(raw + a.raw_offset),
            _ => None,
        });
        if let Some(r) = reference {
            let drift = next - r;
            a.drift += (drift - a.drift) / 8;
            if a.drift < -AV_TOLERANCE {
                self.stats.audio_realigned += 1;
                a.rebase(r);
                a.drift = 0;
                a.dropping = false;
                if let Some(n) = now_us {
                    a.wall_anchor = Some((r, n));
                }
                a.raw_offset = r - raw;
            } else if a.drift > AV_TOLERANCE || a.dropping {
                if drift > dur.max(3600) {
                    self.stats.audio_dropped_ahead += 1;
                    a.dropping = true;
                    return false;
                }
                a.dropping = false;
                a.drift = drift;
            }
        }
        let ts = a.next_ts();
        a.samples = a.samples.saturating_add(samples);
        frame.pts = ts;
        frame.dts = ts;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{AudioConfig, Codec, CodecConfig, VideoConfig};
    use bytes::Bytes;
    use std::sync::Arc;

    fn video(ts: i64) -> Frame {
        Frame {
            codec: Codec::H264,
            pts: ts,
            dts: ts,
            keyframe: false,
            data: Bytes::new(),
            config: Arc::new(CodecConfig::Video(VideoConfig::default())),
            cache: Default::default(),
        }
    }

    fn audio(ts: i64) -> Frame {
        Frame {
            codec: Codec::G711A,
            pts: ts,
            dts: ts,
            keyframe: true,
            data: Bytes::from_static(&[0xD5; 320]),
            config: Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: 8000, channels: 1, asc: None })),
            cache: Default::default(),
        }
    }

    /// 25 fps video and 40 ms G.711 frames (320 samples at 8 kHz) for `secs` seconds, raw
    /// timestamps from `vraw(i)`/`araw(i)`, arriving in real time. Returns (video, audio) outputs.
    fn run(
        secs: i64,
        vraw: impl Fn(i64) -> i64,
        araw: impl Fn(i64) -> i64,
        clock: bool,
    ) -> (Vec<i64>, Vec<i64>, RepairStats) {
        let mut r = TimestampRepair::new();
        let (mut v, mut a) = (Vec::new(), Vec::new());
        for i in 0..secs * 25 {
            let now = clock.then_some(1_000_000 + i as u64 * 40_000);
            let mut f = video(vraw(i));
            r.video(&mut f, now);
            v.push(f.dts);
            let mut f = audio(araw(i));
            let vref = r.video_reference(now);
            if r.audio(&mut f, 320, 8000, now, vref) {
                a.push(f.pts);
            }
        }
        (v, a, r.stats().clone())
    }

    fn assert_smooth(ts: &[i64], step: i64) {
        for w in ts.windows(2) {
            assert_eq!(w[1] - w[0], step, "{ts:?}");
        }
    }

    #[test]
    fn clean_stream_is_untouched() {
        for clock in [false, true] {
            let (v, a, st) = run(10, |i| 1000 + i * 3600, |i| 1000 + i * 3600, clock);
            assert_eq!(v[0], 1000);
            assert_eq!(a[0], 1000);
            assert_smooth(&v, 3600);
            assert_smooth(&a, 3600);
            assert_eq!(st, RepairStats::default());
        }
    }

    #[test]
    fn zero_video_steps_get_one_frame() {
        // Every 10th frame repeats the previous DTS.
        let raw = |i: i64| if i % 10 == 5 { (i - 1) * 3600 } else { i * 3600 };
        let (v, _, st) = run(10, raw, |i| i * 3600, true);
        assert_smooth(&v, 3600);
        assert_eq!(st.video_zero_steps, 25);
        // Pairs sharing one DTS.
        let (v, _, _) = run(10, |i| (i / 2) * 7200, |i| i * 3600, false);
        assert_smooth(&v, 3600);
    }

    #[test]
    fn jumps_back_and_forth_restart_and_hours_stay_smooth_and_aligned() {
        type Clock = Box<dyn Fn(i64) -> i64>;
        let cases: Vec<(&str, Clock)> = vec![
            // (a) both tracks jump back 2 s for one second out of every three.
            ("back-and-forth", Box::new(|i| i * 3600 - if (i / 25) % 3 == 1 { 180_000 } else { 0 })),
            // A camera restart at 20 s: the clock starts over near zero.
            ("restart", Box::new(|i| if i < 500 { 900_000 + i * 3600 } else { (i - 500) * 3600 })),
            // A jump of 3 hours at 30 s.
            ("hours", Box::new(|i| i * 3600 + if i >= 750 { 3 * 3600 * 90_000 } else { 0 })),
            // The 33-bit PS clock wrapping (as raw values before unwrapping would look).
            ("wrap", Box::new(|i| ((1i64 << 33) - 900_000 + i * 3600) % (1 << 33))),
        ];
        for (name, f) in cases {
            for clock in [true, false] {
                let (v, a, st) = run(60, &f, &f, clock);
                println!("{name} clock={clock}: {st:?}");
                assert_smooth(&v, 3600);
                assert_smooth(&a, 3600);
                assert_eq!(a.len(), 1500, "{name}: no audio lost");
                assert_eq!(v[0] - a[0], 0, "{name}");
                let drift = (v[1499] - v[0]) - (a[1499] - a[0]);
                assert!(drift.abs() < 3600, "{name}: drift {drift}");
                assert!(st.video_back_steps + st.video_jumps > 0, "{name}: {st:?}");
            }
        }
    }

    #[test]
    fn audio_clock_twice_too_fast_is_rederived_from_samples() {
        // (c): audio PTS advance 80 ms per 40 ms frame and jump back to the video every second.
        let (v, a, st) = run(60, |i| i * 3600, |i| (i / 25) * 90_000 + (i % 25) * 7200, true);
        assert_smooth(&a, 3600);
        assert_eq!(a.len(), 1500);
        assert_eq!(a[0], v[0]);
        assert!(st.audio_ts_mismatches >= 1400, "{st:?}");
        assert_eq!(st.audio_realigned + st.audio_dropped_ahead, 0);
    }

    #[test]
    fn lost_audio_is_realigned_forward_never_back() {
        let mut r = TimestampRepair::new();
        let mut last = i64::MIN;
        let mut out = Vec::new();
        for i in 0..750i64 {
            let now = Some(i as u64 * 40_000);
            let mut f = video(i * 3600);
            r.video(&mut f, now);
            // Audio missing between 10 s and 12 s.
            if !(250..300).contains(&i) {
                let mut f = audio(i * 3600);
                let vref = r.video_reference(now);
                if r.audio(&mut f, 320, 8000, now, vref) {
                    assert!(f.pts > last);
                    last = f.pts;
                    out.push((i, f.pts));
                }
            }
        }
        assert_eq!(r.stats().audio_realigned, 1);
        let &(i, ts) = out.last().unwrap();
        assert!((ts - i * 3600).abs() <= AV_TOLERANCE, "aligned again at the end");
        // Too many samples (audio ahead): frames are dropped, never sent back in time.
        let mut r = TimestampRepair::new();
        let mut dropped = 0;
        for i in 0..500i64 {
            let now = Some(i as u64 * 40_000);
            let mut f = video(i * 3600);
            r.video(&mut f, now);
            let mut f = audio(i * 3600);
            // Each frame claims 80 ms of samples.
            let vref = r.video_reference(now);
            dropped += u32::from(!r.audio(&mut f, 640, 8000, now, vref));
        }
        assert!(dropped > 200, "{dropped}");
        assert!(r.stats().audio_dropped_ahead > 0);
    }
}
