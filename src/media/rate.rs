//! G.711 sample-rate detection (8 or 16 kHz).
//!
//! MPEG-PS has no field for the G.711 sample rate, and cameras that sample at 16 kHz usually
//! declare 8 kHz (or nothing) in SDP. The rate is inferred two ways:
//! - **bytes against a reference clock**: audio bytes received over the last seconds of wall-clock
//!   arrival (live) or of repaired video time (files), which does not depend on the audio
//!   timestamps at all, so it also works when those are wrong (a 2x clock, jumps back);
//! - **bytes per PTS step**: `bytes * 90000 / step` of consecutive frames, quick (three frames)
//!   and good when the audio clock is honest.
//!
//! The reference clock wins when it has seen enough (1.5 s); a decision is switched only after a
//! second of consistent evidence, so a burst or one odd frame does not flap the rate. A configured
//! rate ([`G711RateDetector::with_override`]) disables detection. A rate signalled in SDP `f=`
//! ([`G711RateDetector::with_hint`]) is only a hint: it is the rate from the first frame (no
//! audio held back), and the evidence corrects it like any decision, since cameras sampling at
//! 16 kHz often declare 8 kHz.
use std::collections::VecDeque;

/// Seconds of reference time the byte-rate window spans.
const WINDOW_TICKS: i64 = 3 * 90_000;
/// Reference time the window needs before it is trusted.
const MIN_SPAN_TICKS: i64 = 135_000;
/// Frames of consistent disagreement before a decided rate is switched.
const SWITCH_FRAMES: u32 = 25;
/// Undecided for this long (reference or PTS time), or this many frames: settle on 8 kHz.
const GIVE_UP_TICKS: i64 = 3 * 90_000;
const GIVE_UP_FRAMES: u32 = 200;

#[derive(Debug, Clone)]
pub struct G711RateDetector {
    fixed: Option<u32>,
    /// A signalled rate not confirmed or corrected by evidence yet.
    hint: Option<u32>,
    rate: Option<u32>,
    prev: Option<(i64, usize)>,
    pts_rate: Option<u32>,
    pts_streak: u32,
    window: VecDeque<(i64, u64)>,
    cum_bytes: u64,
    first_ref: Option<i64>,
    first_pts: Option<i64>,
    frames: u32,
    pending: Option<(u32, u32)>,
    /// How many times a decided rate changed.
    pub switches: u64,
    /// Set when detection gave up and assumed 8 kHz.
    pub defaulted: bool,
}

/// Classifies a measured byte rate (bytes per second, 1 byte per sample) as 8 or 16 kHz.
fn classify(rate: i64, tolerance_pct: i64) -> Option<u32> {
    [8_000i64, 16_000].into_iter().find(|&r| (rate - r).abs() * 100 <= r * tolerance_pct).map(|r| r as u32)
}

impl Default for G711RateDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl G711RateDetector {
    pub fn new() -> Self {
        G711RateDetector {
            fixed: None,
            hint: None,
            rate: None,
            prev: None,
            pts_rate: None,
            pts_streak: 0,
            window: VecDeque::with_capacity(256),
            cum_bytes: 0,
            first_ref: None,
            first_pts: None,
            frames: 0,
            pending: None,
            switches: 0,
            defaulted: false,
        }
    }

    /// A rate known from configuration or signalling: detection is off.
    pub fn with_override(rate: u32) -> Self {
        G711RateDetector { fixed: Some(rate), rate: Some(rate), ..Self::new() }
    }

    /// A rate signalled by the device (SDP `f=`): used at once, still checked against the bytes.
    pub fn with_hint(rate: u32) -> Self {
        G711RateDetector { hint: Some(rate), rate: Some(rate), ..Self::new() }
    }

    /// The rate in use is a signalled one that no evidence has confirmed or corrected yet.
    pub fn is_hinted(&self) -> bool {
        self.hint.is_some()
    }

    /// The rate was given, not detected.
    pub fn is_fixed(&self) -> bool {
        self.fixed.is_some()
    }

    /// The decided rate; `None` while the detector still needs frames.
    pub fn rate(&self) -> Option<u32> {
        self.rate
    }

    /// Observes one G.711 frame of `bytes` bytes with raw `pts` (90 kHz), arriving at reference
    /// time `reference` (90 kHz; wall clock or video clock, `None` if there is neither).
    /// Returns the rate decided so far.
    pub fn observe(&mut self, bytes: usize, pts: i64, reference: Option<i64>) -> Option<u32> {
        if self.fixed.is_some() {
            return self.rate;
        }
        self.frames = self.frames.saturating_add(1);
        let by_pts = self.observe_pts(bytes, pts);
        let by_ref = reference.and_then(|r| self.observe_ref(bytes, r));
        let candidate = by_ref.or(by_pts);
        match (self.rate, candidate) {
            (None, Some(c)) => self.rate = Some(c),
            (None, None) => {
                let waited = |first: Option<i64>, now: i64| first.is_some_and(|f| now - f >= GIVE_UP_TICKS);
                if self.frames >= GIVE_UP_FRAMES
                    || reference.is_some_and(|r| waited(self.first_ref, r))
                    || waited(self.first_pts, pts)
                {
                    self.rate = Some(8_000);
                    self.defaulted = true;
                }
            }
            (Some(cur), Some(c)) if c != cur => {
                let n = match self.pending {
                    Some((r, n)) if r == c => n.saturating_add(1),
                    _ => 1,
                };
                self.pending = Some((c, n));
                if n >= SWITCH_FRAMES {
                    self.rate = Some(c);
                    self.pending = None;
                    self.hint = None;
                    self.switches += 1;
                }
            }
            (Some(_), Some(_)) => {
                self.pending = None;
                self.hint = None;
            }
            _ => self.pending = None,
        }
        self.rate
    }

    fn observe_pts(&mut self, bytes: usize, pts: i64) -> Option<u32> {
        self.first_pts.get_or_insert(pts);
        let prev = self.prev.replace((pts, bytes));
        let (ppts, pbytes) = prev?;
        let step = pts - ppts;
        if step <= 0 || step > 90_000 {
            self.pts_streak = 0;
            return None;
        }
        let rate = classify(pbytes as i64 * 90_000 / step, 5);
        if rate.is_some() && rate == self.pts_rate {
            self.pts_streak += 1;
        } else {
            self.pts_rate = rate;
            self.pts_streak = u32::from(rate.is_some());
        }
        if self.pts_streak >= 3 {
            self.pts_rate
        } else {
            None
        }
    }

    fn observe_ref(&mut self, bytes: usize, reference: i64) -> Option<u32> {
        self.first_ref.get_or_insert(reference);
        // A reference going back or leaping (a pause in the audio) restarts the window.
        if let Some(&(last, _)) = self.window.back() {
            if reference < last || reference - last > 90_000 {
                self.window.clear();
            }
        }
        self.cum_bytes += bytes as u64;
        self.window.push_back((reference, self.cum_bytes));
        while self.window.len() > 2 && self.window.front().is_some_and(|&(t, _)| reference - t > WINDOW_TICKS) {
            self.window.pop_front();
        }
        if self.window.len() > 512 {
            self.window.pop_front();
        }
        let (&(t0, c0), &(t1, c1)) = (self.window.front()?, self.window.back()?);
        let span = t1 - t0;
        if span < MIN_SPAN_TICKS {
            return None;
        }
        // Bytes after the first entry arrived over `span`.
        classify((c1 - c0) as i64 * 90_000 / span, 25)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of `bytes` each, `pts_step` apart in PTS, arriving `ref_step` apart.
    fn run(d: &mut G711RateDetector, n: usize, bytes: usize, pts_step: i64, ref_step: Option<i64>) -> Option<u32> {
        let mut r = None;
        for i in 0..n as i64 {
            r = d.observe(bytes, 1_000 + i * pts_step, ref_step.map(|s| 5_000 + i * s));
        }
        r
    }

    #[test]
    fn eight_and_sixteen_from_pts_steps() {
        assert_eq!(run(&mut G711RateDetector::new(), 5, 320, 3600, None), Some(8_000));
        assert_eq!(run(&mut G711RateDetector::new(), 5, 640, 3600, None), Some(16_000));
        // Not decided after two frames.
        assert_eq!(run(&mut G711RateDetector::new(), 2, 640, 3600, None), None);
    }

    #[test]
    fn reference_clock_beats_a_lying_pts() {
        // 16 kHz audio, 727 bytes per packet at ~22 packets/s, PTS steps of 92 ms (a 2x clock):
        // bytes per PTS step say ~7.9 kHz, arrival says 16 kHz.
        let mut d = G711RateDetector::new();
        let r = run(&mut d, 60, 727, 8280, Some(4090));
        assert_eq!(r, Some(16_000));
    }

    #[test]
    fn switches_only_after_consistent_evidence() {
        let mut d = G711RateDetector::new();
        assert_eq!(run(&mut d, 10, 320, 3600, None), Some(8_000));
        // A few odd frames do not switch.
        for i in 0..5 {
            d.observe(640, 100_000 + i * 3600, None);
        }
        assert_eq!(d.rate(), Some(8_000));
        for i in 5..40 {
            d.observe(640, 100_000 + i * 3600, None);
        }
        assert_eq!(d.rate(), Some(16_000));
        assert_eq!(d.switches, 1);
    }

    #[test]
    fn a_signalled_rate_is_used_at_once_and_corrected_by_the_bytes() {
        // Declares 8 kHz, sends 16 kHz (640 bytes per 40 ms), honest PTS and arrival.
        let mut d = G711RateDetector::with_hint(8_000);
        assert_eq!(d.observe(640, 0, Some(0)), Some(8_000), "no frame held back");
        assert!(d.is_hinted());
        assert_eq!(run(&mut d, 60, 640, 3600, Some(3600)), Some(16_000));
        assert!(!d.is_hinted());
        assert_eq!(d.switches, 1);
        // Declares 16 kHz and means it: confirmed, never switched.
        let mut d = G711RateDetector::with_hint(16_000);
        assert_eq!(run(&mut d, 60, 640, 3600, Some(3600)), Some(16_000));
        assert_eq!((d.switches, d.is_hinted()), (0, false));
    }

    #[test]
    fn gives_up_on_8k_and_honours_override() {
        let mut d = G711RateDetector::new();
        // Nonsense steps: 100 bytes per 3600 ticks is 2.5 kHz.
        assert_eq!(run(&mut d, 100, 100, 3600, None), Some(8_000));
        assert!(d.defaulted);
        let mut o = G711RateDetector::with_override(16_000);
        assert_eq!(run(&mut o, 5, 320, 3600, None), Some(16_000));
    }
}
