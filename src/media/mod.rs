//! Media types shared by every ingest and egress path, and the per-stream media processing
//! between ingest and the hub (timestamp repair, audio transcoding).
pub mod audio;
pub mod g711;
pub mod ingest;
pub mod pipeline;
pub mod rate;
pub mod resample;
pub mod timestamps;

pub mod stats;

// The frame types live on the ground floor (`crate::frame`) so proto/ and codec/ need not import
// media/; these re-exports keep `media::Frame` and `media::frame::*` as the names callers know.
pub use crate::frame;
pub use crate::frame::{AudioConfig, Codec, CodecConfig, Frame, MediaKind, VideoConfig};
pub use stats::{AudioStats, StreamStats, VideoStats};
