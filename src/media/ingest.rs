//! Per-stream ingest pipeline. (being written)
