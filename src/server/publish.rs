//! The stage every non-GB source feeds (RTMP and RTSP publishers, RTSP and RTMP pulls): frames in,
//! the media stage (timestamp repair, G.711 rate, AAC transcoding; D11) in the middle, the hub
//! stream and its stats out. One place, so every source is repaired, transcoded and counted alike.
use std::sync::Arc;
use std::time::Instant;

use crate::hub::{AudioStats, Hub, Stream, StreamStats, VideoStats};
use crate::media::ingest::TrackCounter;
use crate::media::pipeline::MediaPipeline;
use crate::media::{CodecConfig, Frame, MediaKind};
use crate::server::rtp::RtpShared;

/// Publishes one source's frames into its hub stream through the media stage.
pub struct Publisher {
    pub stream: Arc<Stream>,
    stats: StreamStats,
    pipeline: MediaPipeline,
    out: Vec<Frame>,
    video: TrackCounter,
    /// Arrival clock of the media stage.
    epoch: Instant,
}

impl Publisher {
    /// `media` gives the stream its media stage (audio worker pool, configured G.711 rate).
    pub fn new(stream: Arc<Stream>, media: &RtpShared) -> Publisher {
        Publisher {
            pipeline: media.media_pipeline(&stream),
            stream,
            stats: StreamStats::default(),
            out: Vec::new(),
            video: TrackCounter::default(),
            epoch: Instant::now(),
        }
    }

    /// Counts `bytes` of the source's wire data (RTP packets, FLV tags) in the stream's stats.
    pub fn count_wire_bytes(&mut self, bytes: usize) {
        self.stats.bytes_in += bytes as u64;
    }

    /// Pushes one source frame (as the source sent it) through the media stage into the stream.
    pub fn frame(&mut self, f: Frame) {
        match &*f.config {
            CodecConfig::Video(v) => {
                self.video.count(&f);
                let s = self.stats.video.get_or_insert_with(VideoStats::default);
                s.codec = f.codec.name();
                (s.width, s.height) = (v.width, v.height);
                s.frames += 1;
                s.keyframes += f.keyframe as u64;
                s.fps = self.video.rate();
            }
            CodecConfig::Audio(a) => {
                // What the source sends; what leaves is the media stage's (`media`).
                let s = self.stats.audio.get_or_insert_with(AudioStats::default);
                s.codec = f.codec.name();
                (s.sample_rate, s.channels) = (a.sample_rate, a.channels);
                s.frames += 1;
            }
        }
        self.stats.bytes_in += f.data.len() as u64;
        self.stats.packets += 1;
        let keyframe = f.keyframe && f.kind() == MediaKind::Video;
        let now_us = self.epoch.elapsed().as_micros() as u64;
        self.pipeline.push(f, Some(now_us), &mut self.out);
        // The output audio track is known from the first source audio frame, before the
        // transcoder's first AAC frame: DESCRIBE can then describe it at once (D63).
        if self.stream.announced_audio().is_none() {
            if let Some((codec, config)) = self.pipeline.announced_audio() {
                self.stream.announce_audio(codec, config);
            }
        }
        for f in self.out.drain(..) {
            self.stream.publish(f);
        }
        if self.stats.packets % 25 == 1 || keyframe {
            self.publish_stats();
        }
    }

    fn publish_stats(&mut self) {
        self.stats.media = self.pipeline.stats();
        self.stream.set_stats(self.stats.clone());
    }

    /// The source left: audio still held by the media stage goes out, the stats are final, and
    /// the stream leaves the hub.
    pub fn finish(mut self, hub: &Hub) {
        self.pipeline.finish(&mut self.out);
        for f in self.out.drain(..) {
            self.stream.publish(f);
        }
        self.publish_stats();
        hub.remove(&self.stream);
    }
}
