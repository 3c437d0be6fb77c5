//! RFC 4571 TCP framing (being written).
