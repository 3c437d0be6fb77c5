//! Bitstream helpers for the codecs gbgate carries. Sans-IO.
