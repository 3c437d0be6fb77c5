//! The per-stream media stage between ingest and the hub, sans-IO: demuxed frames in, frames with
//! repaired timestamps (and audio as AAC, unless `passthrough`) out.
//!
//! ```text
//! video ──────────────────────────────────────▶ TimestampRepair::video ──────────────────────▶ out
//! G.711 ─▶ G711RateDetector (held until decided) ─▶ TimestampRepair::audio ─▶ AudioTranscoder ─▶ out
//! AAC ─────────────────────────────────────────────────┘                    (or passthrough) ─┘
//! ```
//! The live server and `gbgate probe` both run it, so probe reports the same repairs.
use std::collections::VecDeque;
use std::sync::Arc;

use serde::Serialize;
use tracing::warn;

use crate::config::{AudioConfig as AudioSettings, AudioOutput};
use crate::media::audio::{AudioTranscoder, TranscodeStats};
use crate::media::rate::G711RateDetector;
use crate::media::timestamps::{RepairStats, TimestampRepair};
use crate::media::{AudioConfig, Codec, CodecConfig, Frame, MediaKind};
use crate::util::RateLimit;

/// Most audio frames held while the G.711 rate is still undecided (the detector decides within
/// 3 s or 200 frames, so this bound is only reached by a flood).
const MAX_HELD: usize = 256;

/// What the media stage did to one stream (`/api/v1/streams` → `media`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MediaStats {
    pub repair: RepairStats,
    /// G.711 input only: the rate in use, and whether it was detected, configured or assumed.
    pub g711_rate: Option<u32>,
    pub g711_rate_source: Option<&'static str>,
    pub g711_rate_switches: u64,
    /// Audio frames lost before transcoding: the hold queue overflowed.
    pub audio_held_dropped: u64,
    /// Audio frames lost because the transcoding worker was too far behind.
    pub audio_queue_dropped: u64,
    /// Present when audio is transcoded.
    pub transcode: Option<TranscodeStats>,
}

/// Where a stream's audio is transcoded: in the caller (`probe`, unit tests) or handed to a
/// worker off the async reactor (the live server, see `server::audio_pool`).
pub trait AudioOffload: Send + Sync {
    /// Queues one frame (timestamps repaired, samples at `rate` Hz) for transcoding and publishing.
    /// `false`: the worker is too far behind and the frame is dropped.
    fn submit(self: Arc<Self>, frame: Frame, rate: u32) -> bool;
    fn stats(&self) -> Option<TranscodeStats>;
}

/// One stream's transcoder, created on the first audio frame; when it cannot be created, audio
/// passes through unchanged. Used inline and by the offload workers alike.
pub struct TranscodeSlot {
    settings: AudioSettings,
    transcoder: Option<AudioTranscoder>,
    failed: bool,
    errors_log: RateLimit,
}

impl TranscodeSlot {
    pub fn new(settings: &AudioSettings) -> Self {
        TranscodeSlot {
            settings: settings.clone(),
            transcoder: None,
            failed: false,
            errors_log: RateLimit::new(std::time::Duration::from_secs(10)),
        }
    }

    /// Transcodes `frame` (at `rate` Hz) into `out`; a broken frame is counted and lost.
    pub fn push(&mut self, frame: Frame, rate: u32, out: &mut Vec<Frame>) {
        if self.failed {
            out.push(frame);
            return;
        }
        if self.transcoder.is_none() {
            match AudioTranscoder::new(self.settings.encoder, self.settings.rate, self.settings.bitrate) {
                Ok(t) => self.transcoder = Some(t),
                Err(e) => {
                    warn!("audio transcoding disabled for this stream: {e}");
                    self.failed = true;
                    out.push(frame);
                    return;
                }
            }
        }
        let Some(t) = &mut self.transcoder else { return };
        if let Err(e) = t.push(&frame, rate, out) {
            if let Some(suppressed) = self.errors_log.check(std::time::Instant::now()) {
                warn!(codec = %frame.codec, pts = frame.pts, suppressed, "audio frame lost: {e}");
            }
        }
    }

    /// A transcoder that panicked is not trusted again: the stream's audio passes through.
    pub fn disable(&mut self) {
        self.failed = true;
        self.transcoder = None;
    }

    pub fn stats(&self) -> Option<TranscodeStats> {
        self.transcoder.as_ref().map(|t| t.stats().clone())
    }
}

struct Held {
    frame: Frame,
    now_us: Option<u64>,
    video_ref: Option<i64>,
}

/// The 2-byte AudioSpecificConfig of AAC-LC (ISO 14496-3 1.6.2.1: object type 2, a sampling
/// frequency index, a channel configuration); `None` for a rate without an index.
pub fn aac_lc_asc(rate: u32, channels: u8) -> Option<[u8; 2]> {
    const RATES: [u32; 13] = [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];
    let index = RATES.iter().position(|r| *r == rate)? as u16;
    let v = (2u16 << 11) | (index << 7) | (u16::from(channels.min(7)) << 3);
    Some(v.to_be_bytes())
}

pub struct MediaPipeline {
    settings: AudioSettings,
    repair: TimestampRepair,
    detector: G711RateDetector,
    held: VecDeque<Held>,
    held_dropped: u64,
    transcode: TranscodeSlot,
    offload: Option<Arc<dyn AudioOffload>>,
    offload_dropped: u64,
    g711_config: Option<Arc<CodecConfig>>,
    saw_g711: bool,
    /// The AAC output config, once audio has been seen and is transcoded (D63).
    announced: Option<Arc<CodecConfig>>,
}

impl MediaPipeline {
    pub fn new(settings: &AudioSettings) -> Self {
        let detector = match settings.g711_rate {
            0 => G711RateDetector::new(),
            r => G711RateDetector::with_override(r),
        };
        MediaPipeline {
            settings: settings.clone(),
            repair: TimestampRepair::new(),
            detector,
            held: VecDeque::new(),
            held_dropped: 0,
            transcode: TranscodeSlot::new(settings),
            offload: None,
            offload_dropped: 0,
            g711_config: None,
            saw_g711: false,
            announced: None,
        }
    }

    /// A pipeline whose audio transcoding (the costly part) runs elsewhere: frames to transcode
    /// go to `offload`, which publishes the AAC itself.
    pub fn with_offload(settings: &AudioSettings, offload: Arc<dyn AudioOffload>) -> Self {
        MediaPipeline { offload: Some(offload), ..Self::new(settings) }
    }

    /// A G.711 rate signalled by the device (SDP `f=`): a hint, used at once and corrected by
    /// detection (cameras sampling at 16 kHz often declare 8 kHz). `[audio] g711_rate` wins.
    pub fn set_g711_rate(&mut self, rate: u32) {
        if self.settings.g711_rate == 0 && matches!(rate, 8_000 | 16_000) {
            self.detector = G711RateDetector::with_hint(rate);
        }
    }

    /// The audio track the output will carry, known as soon as the source's first audio frame is
    /// seen, before the G.711 rate is decided: AAC-LC at the configured rate, mono (D63).
    /// `None` before any audio, and in passthrough (whose G.711 config waits for the rate).
    pub fn announced_audio(&self) -> Option<(Codec, Arc<CodecConfig>)> {
        self.announced.clone().map(|c| (Codec::Aac, c))
    }

    /// Processes one frame that arrived at `now_us` (`None`: no arrival clock, e.g. a file).
    pub fn push(&mut self, mut frame: Frame, now_us: Option<u64>, out: &mut Vec<Frame>) {
        if self.announced.is_none() && frame.kind() == MediaKind::Audio && self.settings.output == AudioOutput::Aac {
            self.announced = aac_lc_asc(self.settings.rate, 1).map(|asc| {
                Arc::new(CodecConfig::Audio(AudioConfig {
                    sample_rate: self.settings.rate,
                    channels: 1,
                    asc: Some(bytes::Bytes::copy_from_slice(&asc)),
                }))
            });
        }
        match frame.codec {
            Codec::H264 | Codec::H265 => {
                self.repair.video(&mut frame, now_us);
                out.push(frame);
            }
            Codec::Aac => {
                let (rate, asc) = match frame.config.as_ref() {
                    CodecConfig::Audio(a) => (a.sample_rate, a.asc.as_ref()),
                    CodecConfig::Video(_) => return,
                };
                // AAC-LC: 1024 samples per frame; HE-AAC signalled in the ASC (object type 5) doubles it.
                let samples = if asc.is_some_and(|a| a.first().is_some_and(|b| b >> 3 == 5)) { 2048 } else { 1024 };
                let video_ref = self.repair.video_reference(now_us);
                self.audio(frame, samples, rate, now_us, video_ref, out);
            }
            Codec::G711A | Codec::G711U => {
                self.saw_g711 = true;
                let video_ref = self.repair.video_reference(now_us);
                let reference = match now_us {
                    Some(n) => Some((n as i64).saturating_mul(9) / 100),
                    None => video_ref,
                };
                let decided = self.detector.observe(frame.data.len(), frame.pts, reference);
                if self.held.len() >= MAX_HELD {
                    self.held.pop_front();
                    self.held_dropped += 1;
                }
                self.held.push_back(Held { frame, now_us, video_ref });
                if let Some(rate) = decided {
                    for h in std::mem::take(&mut self.held) {
                        let n = h.frame.data.len() as u64;
                        self.audio(h.frame, n, rate, h.now_us, h.video_ref, out);
                    }
                }
            }
        }
    }

    fn audio(
        &mut self,
        mut frame: Frame,
        samples: u64,
        rate: u32,
        now_us: Option<u64>,
        video_ref: Option<i64>,
        out: &mut Vec<Frame>,
    ) {
        if !self.repair.audio(&mut frame, samples, rate, now_us, video_ref) {
            return;
        }
        if matches!(frame.codec, Codec::G711A | Codec::G711U) {
            let cfg = match &self.g711_config {
                Some(c) if matches!(c.as_ref(), CodecConfig::Audio(a) if a.sample_rate == rate) => c.clone(),
                _ => {
                    let c = Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: rate, channels: 1, asc: None }));
                    self.g711_config = Some(c.clone());
                    c
                }
            };
            frame.config = cfg;
        }
        if self.settings.output == AudioOutput::Passthrough {
            out.push(frame);
            return;
        }
        match &self.offload {
            Some(o) => {
                if !o.clone().submit(frame, rate) {
                    self.offload_dropped += 1;
                }
            }
            None => self.transcode.push(frame, rate, out),
        }
    }

    /// End of input: audio still held is released at the rate decided so far (or 8 kHz).
    pub fn finish(&mut self, out: &mut Vec<Frame>) {
        let rate = self.detector.rate().unwrap_or(8_000);
        for h in std::mem::take(&mut self.held) {
            let n = h.frame.data.len() as u64;
            self.audio(h.frame, n, rate, h.now_us, h.video_ref, out);
        }
    }

    pub fn stats(&self) -> MediaStats {
        let g711 = self.saw_g711;
        MediaStats {
            repair: self.repair.stats().clone(),
            g711_rate: if g711 { self.detector.rate() } else { None },
            g711_rate_source: g711.then(|| {
                if self.settings.g711_rate != 0 || self.detector.is_fixed() {
                    "configured"
                } else if self.detector.is_hinted() {
                    "signalled"
                } else if self.detector.defaulted {
                    "assumed"
                } else {
                    "detected"
                }
            }),
            g711_rate_switches: self.detector.switches,
            audio_held_dropped: self.held_dropped,
            audio_queue_dropped: self.offload_dropped,
            transcode: match &self.offload {
                Some(o) => o.stats(),
                None => self.transcode.stats(),
            },
        }
    }

    /// The kind of output this pipeline gives a track (for callers that describe streams).
    pub fn output_codec(&self, input: Codec) -> Codec {
        match (input.kind(), self.settings.output) {
            (MediaKind::Audio, AudioOutput::Aac) => Codec::Aac,
            _ => input,
        }
    }
}

#[cfg(test)]
mod announce_tests {
    use super::*;
    use crate::media::audio::EncoderKind;

    #[test]
    fn the_announced_asc_is_the_encoders_own() {
        for rate in [8_000, 11_025, 16_000, 22_050, 44_100, 48_000] {
            let t = AudioTranscoder::new(EncoderKind::Syom, rate, 24_000).unwrap();
            let CodecConfig::Audio(cfg) = t.config().as_ref() else { panic!() };
            assert_eq!(cfg.asc.as_deref(), aac_lc_asc(rate, 1).as_ref().map(|a| &a[..]), "{rate} Hz");
        }
        assert_eq!(aac_lc_asc(11_025, 1), Some([0x15, 0x08]));
        assert_eq!(aac_lc_asc(12_345, 1), None);
    }
}
