//! Media types shared by every ingest and egress path, and the per-stream media processing
//! between ingest and the hub (timestamp repair, audio transcoding).
pub mod audio;
pub mod frame;
pub mod g711;
pub mod ingest;
pub mod pipeline;
pub mod rate;
pub mod timestamps;

pub use frame::{AudioConfig, Codec, CodecConfig, Frame, MediaKind, VideoConfig};
