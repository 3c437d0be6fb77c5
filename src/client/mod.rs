//! Outgoing connections: static RTMP pushes of hub streams to other servers, and pulls of RTSP/RTMP sources.
pub mod pull;
pub mod push;
pub mod rtmp;
pub mod rtmp_pull;
pub mod rtmp_push;
pub mod rtsp_pull;
