//! Bitstream helpers for the codecs gbgate carries. Sans-IO.
pub mod aac;
pub mod h264;
pub mod h265;
pub mod nal;
pub mod rtp_pack;
