//! Thin tokio drivers around the sans-IO modules. (being written)
