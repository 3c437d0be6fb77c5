//! What a stream's tracks are, remembered from the frames it published, so that an output can
//! describe the stream at once (RTSP DESCRIBE, D167) instead of waiting for frames, and whatever
//! the GOP cache holds (it may be empty: overflowed, over the shared budget, or not kept).
use std::sync::Arc;

use crate::media::{Codec, CodecConfig, Frame};

/// Audio frames after which a passthrough G.711 rate is taken as settled (the ingest infers
/// 16 kHz from the first few frames of a stream that PS does not signal).
pub const AUDIO_SETTLED_FRAMES: u32 = 5;

/// The newest video config with parameter sets and the newest config of the first audio codec.
#[derive(Debug, Clone, Default)]
pub struct TrackHints {
    pub video: Option<(Codec, Arc<CodecConfig>)>,
    pub audio: Option<(Codec, Arc<CodecConfig>)>,
    /// Audio frames seen, counted up to [`AUDIO_SETTLED_FRAMES`].
    pub audio_frames: u32,
}

impl TrackHints {
    /// Notes one published frame. Cheap: configs are shared, so a pointer comparison settles
    /// nearly every frame.
    pub fn see(&mut self, frame: &Frame) {
        match &*frame.config {
            CodecConfig::Video(v) => {
                let same =
                    self.video.as_ref().is_some_and(|(c, cfg)| *c == frame.codec && Arc::ptr_eq(cfg, &frame.config));
                if !same && !v.sps.is_empty() {
                    self.video = Some((frame.codec, frame.config.clone()));
                }
            }
            CodecConfig::Audio(_) => {
                if self.audio_frames < AUDIO_SETTLED_FRAMES {
                    self.audio_frames += 1;
                }
                match &self.audio {
                    Some((c, cfg)) if *c != frame.codec || Arc::ptr_eq(cfg, &frame.config) => {}
                    _ => self.audio = Some((frame.codec, frame.config.clone())),
                }
            }
        }
    }
}
