//! The GOP cache: every frame since the last video keyframe, bounded in bytes and media time.
use std::collections::VecDeque;
use std::time::Duration;

use crate::media::frame::CLOCK_RATE;
use crate::media::{Frame, MediaKind};

/// Audio-only streams have no GOP; a new subscriber gets this much recent audio.
const AUDIO_ONLY_WINDOW: i64 = CLOCK_RATE / 2;

pub struct GopCache {
    frames: VecDeque<Frame>,
    bytes: usize,
    max_bytes: usize,
    max_ticks: i64,
    has_video: bool,
    /// Set when the cache overflowed: nothing is cached until the next keyframe, because a GOP
    /// with its head cut off cannot be decoded.
    overflowed: bool,
}

impl GopCache {
    pub fn new(max_bytes: usize, max_duration: Duration) -> GopCache {
        GopCache {
            frames: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_ticks: (max_duration.as_millis() as i64).saturating_mul(CLOCK_RATE / 1000),
            has_video: false,
            overflowed: false,
        }
    }

    pub fn push(&mut self, frame: Frame) {
        let is_video = frame.kind() == MediaKind::Video;
        if is_video {
            if !self.has_video {
                // The first video frame: audio cached so far belongs to no GOP.
                self.has_video = true;
                self.clear();
            }
            if frame.keyframe {
                self.clear();
                self.overflowed = false;
            } else if self.frames.is_empty() || self.overflowed {
                // No keyframe to start from: nothing a player could decode.
                return;
            }
        } else if self.has_video && (self.frames.is_empty() || self.overflowed) {
            return;
        }
        self.bytes += frame.data.len();
        self.frames.push_back(frame);
        if self.has_video {
            let first = self.frames.front().map_or(0, |f| f.dts);
            let last = self.frames.back().map_or(0, |f| f.dts);
            if self.bytes > self.max_bytes || last.saturating_sub(first) > self.max_ticks {
                self.clear();
                self.overflowed = true;
            }
        } else {
            // Audio only: a sliding window.
            while let (Some(first), Some(last)) = (self.frames.front(), self.frames.back()) {
                if last.dts.saturating_sub(first.dts) <= AUDIO_ONLY_WINDOW && self.bytes <= self.max_bytes {
                    break;
                }
                let old = self.frames.pop_front().expect("non-empty");
                self.bytes -= old.data.len();
            }
        }
    }

    pub fn frames(&self) -> impl Iterator<Item = &Frame> {
        self.frames.iter()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }
}
