//! PS muxer (being written).
