//! PS demuxer (being written).
