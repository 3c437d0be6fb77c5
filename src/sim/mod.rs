//! Camera-side tools: `gbgate send` replays RTP/PS media as one or many cameras.
pub mod send;
