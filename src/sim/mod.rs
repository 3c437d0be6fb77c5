//! Load and simulation tools: `gbgate send` replays RTP/PS media as one or many cameras;
//! `gbgate players` opens many RTSP players (or measures joins); `gbgate latency` measures the
//! added latency frame in -> frame out; `gbgate floor` measures the fan-out floor (issue 12).
pub mod attack;
pub mod camera;
pub mod floor;
pub mod latency;
pub mod pattern;
pub mod players;
pub mod send;
pub mod synth;
