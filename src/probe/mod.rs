//! `gbgate probe`. (being written)
