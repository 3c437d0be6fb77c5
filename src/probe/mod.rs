//! `gbgate probe`: the field engineer's "why is there no picture" tool.
pub mod reader;
pub mod report;
