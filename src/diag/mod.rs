//! Per-stream diagnostics, below the hub: raw RTP recording ([`record`], D89) and per-stream event
//! logs ([`streamlog`], D90). Each is a sans-IO core (what file to write, when to rotate, what to
//! delete, whether a line may be written: decided from `now` and counters) under a thin writer
//! thread, so disk IO never runs on the ingest path. Imports only util, config and std.
pub mod record;
pub mod streamlog;

use std::sync::Arc;

/// What the hub gives each new stream: a recording when its name matches `[record] streams`, and
/// its own event log when per-stream logs are on.
#[derive(Default, Clone)]
pub struct Diag {
    pub recorder: Option<Arc<record::Recorder>>,
    pub logs: Option<Arc<streamlog::StreamLogs>>,
}

/// Whether `name` matches the glob `pattern`: `*` matches any run of characters (`/` included),
/// `?` one character, anything else itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matcher with one backtrack point (the last `*`): linear in practice, never
    // exponential on hostile names.
    let (mut i, mut j, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// A stream name as one path component: `/` and anything outside `[A-Za-z0-9._-]` become `_`, a
/// leading dot too (no `..`, no hidden files), at most 120 bytes. Stream names come from peers
/// (RTMP publish names): they must never reach outside the directory.
pub fn file_component(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(120)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    if out.starts_with('.') {
        out.replace_range(..1, "_");
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("gb/*", "gb/34020000001320000001"));
        assert!(glob_match("*", "rtp/0000ABCD"));
        assert!(glob_match("rtp/????ABCD", "rtp/0000ABCD"));
        assert!(glob_match("*/cam*", "live/cam1"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("gb/*", "rtp/1"));
        assert!(!glob_match("a*b", "aXbX"));
        assert!(glob_match("gb/1", "gb/1") && !glob_match("gb/1", "gb/12"));
        assert!(!glob_match("*a*a*a*a*a*b", &"a".repeat(200)), "no blow-up");
    }

    #[test]
    fn names_stay_in_their_directory() {
        assert_eq!(file_component("gb/34020000001320000001"), "gb_34020000001320000001");
        assert_eq!(file_component("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(file_component(".hidden"), "_hidden");
        assert_eq!(file_component("live/摄像机 1"), "live_____1");
        assert_eq!(file_component(""), "_");
        assert_eq!(file_component(&"x".repeat(500)).len(), 120);
    }
}
