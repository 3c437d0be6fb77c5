//! Sans-IO protocol modules: bytes in, events out. No tokio, no sockets, no clocks here.
pub mod amf0;
pub mod flv;
pub mod flv_file;
pub mod flv_flow;
pub mod fmp4;
pub mod hls;
pub mod ps;
pub mod rtcp;
pub mod rtmp_chunk;
pub mod rtmp_guard;
pub mod rtp;
pub mod rtp_depack;
pub mod rtsp;
pub mod rtsp_client;
pub mod sdp;
pub mod sip;
