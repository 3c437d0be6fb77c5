//! gbgate: a GB/T 28181 media gateway.
//!
//! Layout (see `docs/architecture.md`):
//! - [`proto`] and [`codec`]: sans-IO protocol and bitstream code. Bytes in, events out, time passed in.
//!   No tokio, no sockets, no clocks.
//! - [`media`]: the one frame type shared by every ingest and egress, plus the per-stream ingest
//!   pipeline (RTP reorder -> PS demux -> frames).
//! - [`hub`]: stream registry, GOP cache and bounded fan-out to subscribers.
//! - [`server`]: thin tokio drivers (RTP on one port, HTTP API).
//! - [`probe`]: offline analysis of captures (`gbgate probe`).
//! - [`auth`]: publish/play credentials (signed URLs, static keys), sans-IO, for RTMP and RTSP.
#![forbid(unsafe_code)]

pub mod auth;
pub mod client;
pub mod codec;
pub mod config;
pub mod gb;
pub mod hub;
pub mod media;
pub mod probe;
pub mod proto;
pub mod server;
pub mod sim;
pub mod util;
