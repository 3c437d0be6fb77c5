//! Stream registry and fan-out. (being written)
