//! Per-stream ingest figures: filled by the ingest and media stage, kept by the hub, shown by the API.
use serde::Serialize;

/// Per-stream ingest figures, refreshed by the stream's ingest task.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStats {
    pub video: Option<VideoStats>,
    pub audio: Option<AudioStats>,
    pub bytes_in: u64,
    pub packets: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub late: u64,
    /// Sequence restarts (camera restart, sequence jump confirmed by a second packet).
    pub seq_resets: u64,
    /// Single packets far outside the sequence, ignored.
    pub stray: u64,
    /// Packets dropped because the stream's task could not keep up (socket -> task queue full).
    pub queue_drops: u64,
    /// Datagrams with this stream's SSRC from another source address, dropped (RTP over UDP).
    pub foreign_packets: u64,
    /// Bytes the PS demuxer skipped while searching for sync.
    pub garbage_bytes: u64,
    pub resyncs: u64,
    pub dropped_frames: u64,
    /// Access units (or header tails) larger than `[rtp] max_access_unit`, dropped.
    pub oversize_drops: u64,
    /// Timestamp repairs, G.711 rate detection and audio transcoding.
    pub media: super::pipeline::MediaStats,
    /// RTCP with the source (receiver reports sent, sender reports received), when it speaks RTCP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtcp: Option<crate::proto::rtcp::RtcpCounters>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VideoStats {
    pub codec: &'static str,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub keyframes: u64,
    pub fps: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AudioStats {
    pub codec: &'static str,
    pub sample_rate: u32,
    pub channels: u8,
    pub frames: u64,
}
