//! gbgate: a GB/T 28181 media gateway.
//!
//! Layout (see `docs/architecture.md`); imports point down this list, checked by
//! `tests/layering.rs`:
//! - [`util`], [`frame`]: the ground floor. `frame` is the one frame type between every ingest
//!   and every egress, with its codec configs.
//! - [`codec`] and [`proto`]: sans-IO bitstream and protocol code (H.264/H.265/AAC, RTP, PS,
//!   RTSP, FLV, RTMP guard, SIP/SDP/MANSCDP). Bytes in, events out, time passed in. No tokio, no
//!   sockets, no clocks.
//! - [`config`]: the TOML configuration, its defaults and validation.
//! - [`media`]: the per-stream media stage (RTP reorder -> PS demux -> timestamp repair -> audio
//!   to AAC) and the stream stats it fills.
//! - [`notify`]: callbacks to a control center (bounded outbox, retries, access hooks).
//! - [`hub`]: stream registry (a live name belongs to its source), GOP cache, bounded fan-out.
//! - [`gb`]: GB/T 28181 signalling: a sans-IO core by job (`gb::core`: registrar, presence,
//!   catalog, dialogs, playback) under a thin tokio driver (`gb::driver`) that owns the SIP
//!   sockets (`gb::transport`) and the device store (`gb::store`).
//! - [`client`]: outgoing connections (RTMP push, RTMP pull).
//! - [`relay`]: `[[pull]]` sources pulled at boot or on demand, and stopped when idle.
//! - [`server`]: thin tokio drivers: RTP on one port, RTSP, RTMP, SIP transport, HTTP API.
//! - [`probe`]: offline analysis of captures (`gbgate probe`).
//! - [`sim`]: load and test tools: `send`, `players`, the camera simulator `sim` and `attack`.
//! - [`auth`]: publish/play credentials (signed URLs, static keys), sans-IO, for RTMP and RTSP.
#![forbid(unsafe_code)]

pub mod auth;
pub mod channel;
pub mod client;
pub mod codec;
pub mod config;
pub mod diag;
pub mod frame;
pub mod gb;
pub mod hub;
pub mod media;
pub mod notify;
pub mod probe;
pub mod proto;
pub mod relay;
pub mod server;
pub mod sim;
pub mod util;
