//! Media types shared by every ingest and egress path.
pub mod frame;
pub mod ingest;

pub use frame::{AudioConfig, Codec, CodecConfig, Frame, MediaKind, VideoConfig};
