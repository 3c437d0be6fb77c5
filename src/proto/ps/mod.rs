//! MPEG-2 Program Stream (ISO/IEC 13818-1 §2.5), as GB/T 28181 cameras send it.
pub mod demux;
pub mod es;
pub mod mux;
