//! Load and simulation tools: `gbgate send` replays RTP/PS media as one or many cameras;
//! `gbgate players` opens many RTSP players.
pub mod attack;
pub mod camera;
pub mod pattern;
pub mod players;
pub mod send;
pub mod synth;
