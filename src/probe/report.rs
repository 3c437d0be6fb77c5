//! Probe report (being written).
