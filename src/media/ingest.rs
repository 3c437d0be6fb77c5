//! The per-stream ingest pipeline, sans-IO: RTP packets in (any order), frames out.
//!
//! ```text
//! RTP packet ─▶ ReorderBuffer ─▶ payload bytes ─▶ PsDemuxer ─▶ Frame
//!                    │ Lost / Reset                   ▲
//!                    └──────────── lost() ────────────┘ (drop the partial frame, resync, wait for a keyframe)
//! ```
//! The live server and `gbgate probe` both drive this same type, so what probe reports about a
//! capture is exactly what the gateway would do with it.
use std::sync::Arc;

use crate::media::stats::{AudioStats, StreamStats, VideoStats};
use crate::media::{CodecConfig, Frame, MediaKind};
use crate::proto::ps::demux::{DemuxStats, PsDemuxer};
use crate::proto::rtp::reorder::{ReorderBuffer, Reordered, RtpStats};
use crate::proto::rtp::RtpPacket;

pub struct StreamIngest {
    reorder: ReorderBuffer,
    demux: PsDemuxer,
    reordered: Vec<Reordered>,
    video: TrackCounter,
    audio: TrackCounter,
    markers: MarkerCuts,
}

/// Ends a video frame at its RTP marker (D172). The PS demuxer alone cuts an access unit when the
/// next one begins, which holds every frame back one frame period (40 ms at 25 fps). GB28181
/// cameras set the marker on the last packet of each frame (RFC 3551 5.1: "the marker bit
/// marks the end of a frame" for video), but some mark every packet or none, so a stream's
/// markers are used only after they have been seen to end frames: [`TRUST_AFTER`] natural cuts
/// that each followed a marked packet, and no marked packet after which the pending frame grew.
/// One marked packet inside a frame distrusts them for the stream's life.
#[derive(Debug, Default)]
struct MarkerCuts {
    /// The previous packet had the marker bit, and how many bytes the pending frame then held.
    prev_marker: Option<usize>,
    evidence: u32,
    distrusted: bool,
}

/// Natural frame ends that followed a marked packet before markers are trusted.
const TRUST_AFTER: u32 = 8;

impl MarkerCuts {
    fn trusted(&self) -> bool {
        !self.distrusted && self.evidence >= TRUST_AFTER
    }
}

/// Frame counts and a frame-rate estimate of one track, from the frames actually emitted.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrackCounter {
    frames: u64,
    keyframes: u64,
    /// The frame-rate window restarts when timestamps go back or jump (camera restart, looped
    /// file), so the estimate reflects the current run of timestamps.
    window_start: Option<i64>,
    window_frames: u64,
    last_pts: i64,
}

/// A forward step beyond this restarts the frame-rate window.
const RATE_WINDOW_JUMP: i64 = 5 * 90_000;

impl TrackCounter {
    pub(crate) fn count(&mut self, frame: &Frame) {
        self.frames += 1;
        self.keyframes += u64::from(frame.keyframe);
        let step = frame.pts - self.last_pts;
        if self.window_start.is_none() || !(0..=RATE_WINDOW_JUMP).contains(&step) {
            self.window_start = Some(frame.pts);
            self.window_frames = 0;
        }
        self.window_frames += 1;
        self.last_pts = frame.pts;
    }

    /// Frames per second over the current window; 0 when it cannot be told yet.
    pub(crate) fn rate(&self) -> f64 {
        match self.window_start {
            Some(first) if self.last_pts > first && self.window_frames > 1 => {
                let fps = (self.window_frames - 1) as f64 * 90_000.0 / (self.last_pts - first) as f64;
                (fps * 100.0).round() / 100.0
            }
            _ => 0.0,
        }
    }
}

impl StreamIngest {
    /// `reorder_packets`: how many packets may wait for a missing one; `reorder_delay_us`: how long.
    pub fn new(reorder_packets: usize, reorder_delay_us: u64) -> StreamIngest {
        StreamIngest {
            reorder: ReorderBuffer::new(reorder_packets, reorder_delay_us),
            demux: PsDemuxer::new(),
            reordered: Vec::with_capacity(8),
            video: TrackCounter::default(),
            audio: TrackCounter::default(),
            markers: MarkerCuts::default(),
        }
    }

    /// Bounds what this stream holds in bytes: the pending access unit (larger ones are dropped
    /// and counted in `oversize_drops`) and the payload waiting in the reorder buffer.
    pub fn with_byte_limits(mut self, max_access_unit: usize, reorder_bytes: usize) -> StreamIngest {
        self.demux = std::mem::take(&mut self.demux).with_max_access_unit(max_access_unit);
        self.reorder = std::mem::replace(&mut self.reorder, ReorderBuffer::new(1, 0)).with_max_bytes(reorder_bytes);
        self
    }

    /// Bytes held for reassembly: reorder buffer payloads and the demuxer's buffers.
    pub fn held_bytes(&self) -> usize {
        self.reorder.held_bytes() + self.demux.allocated_bytes()
    }

    /// Memory is short (the global budget is spent): drop the partial access unit, as after a
    /// loss; the next keyframe resumes the stream.
    pub fn shed(&mut self, out: &mut Vec<Frame>) {
        self.reorder.flush(&mut self.reordered);
        self.drain(out);
        self.demux.lost();
    }

    /// Feeds one RTP packet received at `now_us`; completed frames are appended to `out`.
    pub fn push_rtp(&mut self, packet: RtpPacket, now_us: u64, out: &mut Vec<Frame>) {
        self.reorder.push(packet, now_us, &mut self.reordered);
        self.drain(out);
    }

    /// Feeds raw program-stream bytes (a `.ps` file: no RTP layer, nothing to reorder).
    pub fn push_ps(&mut self, data: &[u8], out: &mut Vec<Frame>) {
        let start = out.len();
        self.demux.push(data, out);
        self.count(&out[start..]);
    }

    /// When the reorder buffer next needs [`Self::handle_timeout`], as an absolute `now_us`.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.reorder.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now_us: u64, out: &mut Vec<Frame>) {
        self.reorder.handle_timeout(now_us, &mut self.reordered);
        self.drain(out);
    }

    /// No packet arrived for a while: emit the pending frame if the stream paused between frames.
    pub fn flush_idle(&mut self, out: &mut Vec<Frame>) {
        if self.reorder.poll_timeout().is_none() {
            let start = out.len();
            self.demux.flush_idle(out);
            self.count(&out[start..]);
        }
    }

    /// End of input: releases held packets and the last pending frame.
    pub fn finish(&mut self, out: &mut Vec<Frame>) {
        self.reorder.flush(&mut self.reordered);
        self.drain(out);
        let start = out.len();
        self.demux.flush(out);
        self.count(&out[start..]);
    }

    fn drain(&mut self, out: &mut Vec<Frame>) {
        let start = out.len();
        let mut reordered = std::mem::take(&mut self.reordered);
        for item in reordered.drain(..) {
            match item {
                Reordered::Packet(packet) => self.push_packet(&packet.payload, packet.marker, out),
                Reordered::Lost { .. } | Reordered::Reset => {
                    self.markers.prev_marker = None;
                    self.demux.lost()
                }
            }
        }
        self.reordered = reordered;
        self.count(&out[start..]);
    }

    /// Demuxes one packet's payload; with trusted markers a marked packet that leaves the demuxer
    /// between PES packets ends the pending video frame at once (D172).
    fn push_packet(&mut self, payload: &[u8], marker: bool, out: &mut Vec<Frame>) {
        let start = out.len();
        let pending_before = self.demux.pending_video_bytes();
        self.demux.push(payload, out);
        if let Some(at_marker) = self.markers.prev_marker.take() {
            let cut = out[start..].iter().any(|f| f.kind() == MediaKind::Video);
            if cut {
                self.markers.evidence = self.markers.evidence.saturating_add(1);
            } else if at_marker > 0 && self.demux.pending_video_bytes() > pending_before && !self.markers.distrusted {
                // The frame pending at the marker went on growing: this camera marks inside frames.
                self.markers.distrusted = true;
                self.demux.stats_mut().markers_distrusted = 1;
            }
        }
        if marker {
            if self.markers.trusted() {
                let before = out.len();
                self.demux.flush_idle(out);
                let cuts = out[before..].iter().filter(|f| f.kind() == MediaKind::Video).count();
                self.demux.stats_mut().marker_cuts += cuts as u64;
            }
            self.markers.prev_marker = Some(self.demux.pending_video_bytes());
        }
    }

    fn count(&mut self, frames: &[Frame]) {
        for frame in frames {
            match frame.kind() {
                MediaKind::Video => self.video.count(frame),
                MediaKind::Audio => self.audio.count(frame),
            }
        }
    }

    pub fn rtp_stats(&self) -> &RtpStats {
        self.reorder.stats()
    }

    pub fn demux_stats(&self) -> &DemuxStats {
        self.demux.stats()
    }

    pub fn video_codec(&self) -> Option<crate::media::Codec> {
        self.demux.video_codec()
    }

    pub fn audio_codec(&self) -> Option<crate::media::Codec> {
        self.demux.audio_codec()
    }

    pub fn video_config(&self) -> Option<&Arc<CodecConfig>> {
        self.demux.video_config()
    }

    pub fn audio_config(&self) -> Option<&Arc<CodecConfig>> {
        self.demux.audio_config()
    }

    /// The figures `/api/v1/streams` shows for this stream.
    pub fn stream_stats(&self) -> StreamStats {
        let rtp = self.rtp_stats();
        let demux = self.demux_stats();
        let video = self.demux.video_codec().map(|codec| {
            let (width, height) = match self.video_config().map(|c| c.as_ref()) {
                Some(CodecConfig::Video(v)) => (v.width, v.height),
                _ => (0, 0),
            };
            VideoStats {
                codec: codec.name(),
                width,
                height,
                frames: self.video.frames,
                keyframes: self.video.keyframes,
                fps: self.video.rate(),
            }
        });
        let audio = self.demux.audio_codec().map(|codec| {
            let (sample_rate, channels) = match self.audio_config().map(|c| c.as_ref()) {
                Some(CodecConfig::Audio(a)) => (a.sample_rate, a.channels),
                _ => (0, 0),
            };
            AudioStats { codec: codec.name(), sample_rate, channels, frames: self.audio.frames }
        });
        StreamStats {
            video,
            audio,
            bytes_in: rtp.bytes,
            packets: rtp.packets,
            lost: rtp.lost,
            duplicates: rtp.duplicates,
            reordered: rtp.reordered,
            late: rtp.late,
            seq_resets: rtp.resets,
            stray: rtp.stray,
            queue_drops: 0,
            foreign_packets: 0,
            garbage_bytes: demux.garbage_bytes,
            resyncs: demux.resyncs,
            dropped_frames: demux.dropped_frames,
            oversize_drops: demux.oversize_drops,
            media: Default::default(),
            rtcp: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{Codec, VideoConfig};
    use bytes::Bytes;

    fn frame(pts: i64) -> Frame {
        Frame {
            codec: Codec::H264,
            pts,
            dts: pts,
            keyframe: false,
            data: Bytes::new(),
            config: Arc::new(CodecConfig::Video(VideoConfig::default())),
            cache: Default::default(),
        }
    }

    #[test]
    fn frame_rate_restarts_when_timestamps_go_back_or_jump() {
        let mut t = TrackCounter::default();
        for i in 0..50 {
            t.count(&frame(1_000_000 + i * 3600));
        }
        assert_eq!(t.rate(), 25.0);
        // A looped file: timestamps start over.
        for i in 0..11 {
            t.count(&frame(i * 3600));
        }
        assert_eq!(t.rate(), 25.0);
        // A +10 s jump, then 30 fps.
        for i in 0..31 {
            t.count(&frame(10_000_000 + i * 3000));
        }
        assert_eq!(t.rate(), 30.0);
        assert_eq!(t.frames, 92);
    }

    /// `n` H.264 frames (a keyframe, then P frames), each one PS pack of one PES, cut into RTP
    /// packets of at most 200 bytes; `mark(last)` decides each packet's marker bit.
    fn camera_packets(n: usize, mark: impl Fn(bool) -> bool) -> Vec<Vec<RtpPacket>> {
        use crate::proto::ps::mux::{PsMuxer, RtpPacketizer};
        let sps: &[u8] = &[
            0x67, 0x4d, 0x40, 0x1e, 0xda, 0x02, 0x80, 0xbf, 0xe5, 0xc0, 0x44, 0x00, 0x00, 0x03, 0x00, 0x04, 0x00, 0x00,
            0x03, 0x00, 0xc8, 0x3c, 0x58, 0xba, 0x80,
        ];
        let pps: &[u8] = &[0x68, 0xef, 0x3c, 0x80];
        let mut mux = PsMuxer::new(Some(Codec::H264), None);
        let mut rtp = RtpPacketizer { ssrc: 1, seq: 0, payload_type: 96, max_payload: 200 };
        (0..n)
            .map(|i| {
                let mut au = Vec::new();
                let body: Vec<u8> = if i == 0 { vec![0x65; 600] } else { vec![0x41; 500] };
                for nal in [&[0x09, 0xf0][..], sps, pps, &body] {
                    if i > 0 && (nal == sps || nal == pps) {
                        continue;
                    }
                    au.extend_from_slice(&[0, 0, 0, 1]);
                    au.extend_from_slice(nal);
                }
                let mut ps = Vec::new();
                let pts = 90_000 + i as i64 * 3600;
                mux.write_frame(Codec::H264, pts, pts, i == 0, &au, &mut ps);
                let mut datagrams = Vec::new();
                rtp.packetize(&ps, pts as u32, &mut datagrams);
                let last = datagrams.len() - 1;
                datagrams
                    .into_iter()
                    .enumerate()
                    .map(|(k, d)| {
                        let mut p = RtpPacket::parse(d).unwrap();
                        p.marker = mark(k == last);
                        p
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn trusted_markers_end_a_frame_at_its_last_packet() {
        let frames = camera_packets(20, |last| last);
        let mut ingest = StreamIngest::new(64, 100_000);
        let mut out = Vec::new();
        let mut emitted_on_own_marker = Vec::new();
        for (i, packets) in frames.into_iter().enumerate() {
            for p in packets {
                ingest.push_rtp(p, 0, &mut out);
            }
            // Was frame i out once its own last packet was in?
            emitted_on_own_marker.push(out.iter().any(|f| f.pts == 90_000 + i as i64 * 3600));
        }
        // Before trust, a frame leaves when the next begins; from then on, at its marker.
        assert!(!emitted_on_own_marker[0..TRUST_AFTER as usize].iter().any(|&e| e), "{emitted_on_own_marker:?}");
        assert!(emitted_on_own_marker[TRUST_AFTER as usize + 1..].iter().all(|&e| e), "{emitted_on_own_marker:?}");
        let st = ingest.demux_stats();
        assert!(st.marker_cuts >= 10, "{}", st.marker_cuts);
        assert_eq!(st.markers_distrusted, 0);
        ingest.finish(&mut out);
        assert_eq!(out.len(), 20);
        assert!(out.iter().all(|f| f.data.len() > 400), "every frame whole");
    }

    #[test]
    fn markers_on_every_packet_are_never_trusted() {
        let frames = camera_packets(20, |_| true);
        let mut ingest = StreamIngest::new(64, 100_000);
        let mut out = Vec::new();
        for p in frames.into_iter().flatten() {
            ingest.push_rtp(p, 0, &mut out);
        }
        ingest.finish(&mut out);
        let st = ingest.demux_stats();
        assert_eq!(st.markers_distrusted, 1);
        assert_eq!(st.marker_cuts, 0);
        assert_eq!(out.len(), 20);
        assert!(out.iter().all(|f| f.data.len() > 400), "no frame cut short");
    }
}
