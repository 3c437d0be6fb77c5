//! The FLV flow of one RTMP player or push: hub frames in, RTMP messages (metadata, sequence
//! headers, tags with output timestamps) out. Sans-IO, shared by the RTMP server and the push
//! client so both send the same thing.
use std::sync::Arc;

use bytes::Bytes;
use rml_rtmp::sessions::StreamMetadata;
use rml_rtmp::time::RtmpTimestamp;
use tracing::info;

use crate::frame::{Codec, CodecConfig, Frame, MediaKind};
use crate::proto::flv::{self, HevcFlv};

/// One message of the outgoing FLV flow.
pub enum Out {
    Meta(StreamMetadata),
    Video(Bytes, RtmpTimestamp),
    Audio(Bytes, RtmpTimestamp),
}

/// Turns hub frames into the FLV flow of one player/push: metadata first, sequence headers before
/// the first frame and whenever a track's configuration changes, timestamps from 0.
pub struct FlvFlow {
    hevc: HevcFlv,
    stream: String,
    meta_sent: bool,
    video_cfg: Option<Arc<CodecConfig>>,
    audio_cfg: Option<Arc<CodecConfig>>,
    clock: OutClock,
    g711_logged: bool,
    video_started: bool,
    first_audio_dts: Option<i64>,
}

/// Maps source decoding times to output timestamps that start at 0. Every source passes the
/// media stage, whose repair makes each track continuous and monotonic (D12), so this only
/// rebases on the first frame sent; a track's output never goes back (FLV requires it).
#[derive(Debug, Default)]
pub struct OutClock {
    first: Option<i64>,
    last: [i64; 2],
}

impl OutClock {
    /// The output decoding time (90 kHz, from 0) of a frame of `track` (0 video, 1 audio).
    pub fn map(&mut self, track: usize, dts: i64) -> i64 {
        let first = *self.first.get_or_insert(dts);
        let out = dts.saturating_sub(first).max(0).max(self.last[track]);
        self.last[track] = out;
        out
    }
}

impl FlvFlow {
    pub fn new(stream: &str, hevc: HevcFlv) -> FlvFlow {
        FlvFlow {
            hevc,
            stream: stream.to_string(),
            meta_sent: false,
            video_cfg: None,
            audio_cfg: None,
            clock: OutClock::default(),
            video_started: false,
            first_audio_dts: None,
            g711_logged: false,
        }
    }

    pub fn push(&mut self, frame: &Frame, out: &mut Vec<Out>) {
        if matches!(frame.codec, Codec::G711A | Codec::G711U) {
            if !self.g711_logged {
                self.g711_logged = true;
                info!(stream = %self.stream, codec = %frame.codec, "G.711 audio is not sent over RTMP (video only)");
            }
            return;
        }
        let video = frame.kind() == MediaKind::Video;
        if video {
            self.video_started = true;
        } else if !self.video_started {
            // A stream's first audio frames may precede its first video frame (the demuxer emits
            // a video frame when the next one starts). Players probe tracks from the first tags,
            // so audio waits for video, unless the stream shows no video for a second.
            let first = *self.first_audio_dts.get_or_insert(frame.dts);
            if frame.dts - first < 90_000 {
                return;
            }
        }
        let track = if video { 0 } else { 1 };
        let ts = RtmpTimestamp::new((self.clock.map(track, frame.dts) / 90) as u32);
        if !self.meta_sent {
            self.meta_sent = true;
            out.push(Out::Meta(self.metadata(frame)));
        }
        let current = if video { &mut self.video_cfg } else { &mut self.audio_cfg };
        let changed = match current {
            Some(c) => !Arc::ptr_eq(c, &frame.config) && **c != *frame.config,
            None => true,
        };
        if changed {
            *current = Some(frame.config.clone());
            if let Some(seq) = flv::sequence_header(frame, self.hevc) {
                out.push(if video { Out::Video(seq, ts) } else { Out::Audio(seq, ts) });
            }
        }
        if let Some(tag) = flv::cached_frame_tag(frame, self.hevc) {
            out.push(if video { Out::Video(tag, ts) } else { Out::Audio(tag, ts) });
        }
    }

    fn metadata(&self, first: &Frame) -> StreamMetadata {
        let mut m = StreamMetadata::new();
        m.encoder = Some("gbgate".to_string());
        if let CodecConfig::Video(v) = &*first.config {
            m.video_width = Some(v.width);
            m.video_height = Some(v.height);
            m.video_codec_id = Some(match (first.codec, self.hevc) {
                (Codec::H264, _) => flv::CODEC_ID_AVC as u32,
                (_, HevcFlv::Legacy) => flv::CODEC_ID_HEVC_LEGACY as u32,
                (_, HevcFlv::Enhanced) => u32::from_be_bytes(flv::FOURCC_HVC1),
            });
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_clock_starts_at_zero_and_never_goes_back_per_track() {
        let mut c = OutClock::default();
        assert_eq!(c.map(0, 900_000), 0);
        assert_eq!(c.map(1, 899_000), 0);
        assert_eq!(c.map(1, 902_000), 2000);
        assert_eq!(c.map(0, 903_600), 3600);
        // A real pause keeps its length (the media stage decided it is real).
        assert_eq!(c.map(0, 903_600 + 20 * 90_000), 3600 + 20 * 90_000);
        // A step back (which repair never emits) is held, not sent backwards.
        assert_eq!(c.map(1, 0), 2000);
    }

    /// Peer-chosen times at the ends of i64 cannot overflow the output clock.
    #[test]
    fn out_clock_saturates_at_the_extremes() {
        let mut c = OutClock::default();
        assert_eq!(c.map(0, i64::MIN), 0);
        assert!(c.map(0, i64::MAX) >= 0);
        assert!(c.map(1, i64::MAX) >= 0);
        assert!(c.map(0, 0) >= 0);
    }
}
