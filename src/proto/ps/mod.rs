//! MPEG-2 Program Stream (ISO/IEC 13818-1 §2.5) demuxer and muxer. (being written)
