//! RTP reorder buffer (being written).
