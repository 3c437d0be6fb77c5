//! Outgoing connections: static RTMP pushes of hub streams to other servers.
pub mod rtmp;
pub mod rtmp_push;
