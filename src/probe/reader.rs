//! Capture readers (being written).
