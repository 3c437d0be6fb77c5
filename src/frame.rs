//! The one frame type that flows from every ingest, through the hub, to every egress.
//!
//! Timestamps are in a fixed 90 kHz clock, widened to i64 (33-bit PS and 32-bit RTP wraps are
//! unwrapped before a frame is built). Video payloads are AVCC/HVCC style: each NAL unit is
//! prefixed by its 4-byte big-endian length, access unit delimiters are removed, and keyframes
//! carry their parameter sets in band. That form is what RTMP/FLV sends as is, and what an RTP
//! packetiser walks without scanning for start codes.
use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::Serialize;

/// The clock every [`Frame`] timestamp is expressed in.
pub const CLOCK_RATE: i64 = 90_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    H264,
    H265,
    G711A,
    G711U,
    Aac,
}

impl Codec {
    pub fn kind(self) -> MediaKind {
        match self {
            Codec::H264 | Codec::H265 => MediaKind::Video,
            Codec::G711A | Codec::G711U | Codec::Aac => MediaKind::Audio,
        }
    }

    /// The lower-case name used in the API and in `probe` output.
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::H265 => "h265",
            Codec::G711A => "g711a",
            Codec::G711U => "g711u",
            Codec::Aac => "aac",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Video,
    Audio,
}

/// Decoder configuration of a video track, taken from the in-band parameter sets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VideoConfig {
    /// H.265 only.
    pub vps: Option<Bytes>,
    pub sps: Bytes,
    pub pps: Bytes,
    pub width: u32,
    pub height: u32,
    /// `profile_idc` (H.264) or `general_profile_idc` (H.265).
    pub profile: u8,
    pub level: u8,
}

/// Decoder configuration of an audio track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioConfig {
    pub sample_rate: u32,
    pub channels: u8,
    /// AAC AudioSpecificConfig (2 bytes for AAC-LC); `None` for G.711.
    pub asc: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecConfig {
    Video(VideoConfig),
    Audio(AudioConfig),
}

/// One access unit (video) or one audio frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub codec: Codec,
    /// Presentation time, 90 kHz.
    pub pts: i64,
    /// Decoding time, 90 kHz. Equal to `pts` when the source has no B-frames.
    pub dts: i64,
    /// A random-access point: IDR/IRAP for video; every audio frame is a keyframe.
    pub keyframe: bool,
    /// Video: 4-byte-length-prefixed NAL units. G.711: raw samples. AAC: one raw frame, ADTS removed.
    pub data: Bytes,
    /// The track's configuration when this frame was produced. Shared, replaced only when it changes.
    pub config: Arc<CodecConfig>,
    /// Per-output-format forms of this frame, computed by the first consumer that needs them and
    /// shared by every clone: a stream is packetised once per format, whatever the player count.
    pub cache: FrameCache,
}

/// Lazily built output forms of one frame (see [`Frame::cache`]).
#[derive(Debug, Clone, Default)]
pub struct FrameCache(Arc<FrameCacheInner>);

#[derive(Debug, Default)]
pub struct FrameCacheInner {
    /// RTP payloads (RFC 6184 / 7798 / 3640 / 3551), marker on the last.
    pub rtp: OnceLock<Vec<RtpPayload>>,
    /// The FLV tag body (RTMP, HTTP-FLV); H.265 in its Enhanced (FourCC) form.
    pub flv: OnceLock<Bytes>,
    /// The FLV tag body of an H.265 frame in the legacy form (codec id 12), for the players that
    /// ask for it while others get the Enhanced form (HTTP-FLV `?hevc=legacy`).
    pub flv_legacy: OnceLock<Bytes>,
}

/// One RTP payload of a frame ([`FrameCacheInner::rtp`]): up to 4 bytes of its own (an FU or AU
/// header), then a body that is a slice of the frame's own `data`, shared, not copied (D181). So a
/// watched stream's GOP cache holds its video once, not once more as RTP packets. Aggregation
/// packets (parameter sets, small) own their body.
#[derive(Debug, Clone, Default)]
pub struct RtpPayload {
    head: [u8; 4],
    head_len: u8,
    pub body: Bytes,
}

impl RtpPayload {
    /// `head` longer than 4 bytes is a packetiser bug: it is cut to 4 (debug builds panic).
    pub fn new(head: &[u8], body: Bytes) -> Self {
        debug_assert!(head.len() <= 4, "RTP payload head of {} bytes", head.len());
        let n = head.len().min(4);
        let mut h = [0u8; 4];
        h[..n].copy_from_slice(&head[..n]);
        RtpPayload { head: h, head_len: n as u8, body }
    }

    /// The payload's own leading bytes (FU indicator and header, AU headers), possibly none.
    pub fn head(&self) -> &[u8] {
        &self.head[..self.head_len as usize]
    }

    /// Payload length in bytes (head and body).
    pub fn len(&self) -> usize {
        self.head_len as usize + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload as one contiguous buffer (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(self.head());
        v.extend_from_slice(&self.body);
        v
    }
}

impl std::ops::Deref for FrameCache {
    type Target = FrameCacheInner;
    fn deref(&self) -> &FrameCacheInner {
        &self.0
    }
}

impl Frame {
    pub fn kind(&self) -> MediaKind {
        self.codec.kind()
    }

    /// Iterates the NAL units of a video frame (each without its length prefix).
    /// Stops quietly at a truncated length; frames are built by us so that never happens.
    pub fn nal_units(&self) -> NalUnits<'_> {
        NalUnits { rest: &self.data }
    }
}

pub struct NalUnits<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for NalUnits<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.len() < 4 {
            return None;
        }
        let len = u32::from_be_bytes([self.rest[0], self.rest[1], self.rest[2], self.rest[3]]) as usize;
        if self.rest.len() < 4 + len {
            return None;
        }
        let nal = &self.rest[4..4 + len];
        self.rest = &self.rest[4 + len..];
        Some(nal)
    }
}
