//! The start reason (D95): a small JSON file holding the version that last ran and whether it
//! shut down cleanly. Written `clean_shutdown: false` at start and `true` by a graceful shutdown
//! (`Notifier::flush`), so the next start tells a crash from a restart.
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Why this process started, as reported in `gateway_started`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartReason {
    /// No state file (first start, or no place to keep one).
    FirstStart,
    /// The previous run did not shut down gracefully (killed, crashed, power loss).
    Crash,
    /// The previous run was another version (and shut down gracefully).
    Upgrade,
    /// The previous run, same version, shut down gracefully (a signal or a service restart).
    Restart,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    version: String,
    instance_id: String,
    clean_shutdown: bool,
}

/// Decides the start reason from the previous run's state.
fn reason(prev: Option<&State>, version: &str) -> StartReason {
    match prev {
        None => StartReason::FirstStart,
        Some(s) if !s.clean_shutdown => StartReason::Crash,
        Some(s) if s.version != version => StartReason::Upgrade,
        Some(_) => StartReason::Restart,
    }
}

fn write(path: &Path, state: &State) {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(state).unwrap_or_default();
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::warn!(path = %path.display(), "cannot write the callbacks state file: {e}");
    }
}

/// At start: the reason, and the file rewritten as "running, not shut down yet".
pub(super) fn begin(path: Option<&Path>, version: &str, instance_id: &str) -> StartReason {
    let Some(path) = path else { return StartReason::FirstStart };
    // A hostile or damaged file is at most a wrong reason: read a bounded amount, parse or ignore.
    let prev = std::fs::read(path)
        .ok()
        .filter(|b| b.len() <= 64 * 1024)
        .and_then(|b| serde_json::from_slice::<State>(&b).ok());
    let r = reason(prev.as_ref(), version);
    write(path, &State { version: version.into(), instance_id: instance_id.into(), clean_shutdown: false });
    r
}

/// At graceful shutdown.
pub(super) fn end(path: Option<&Path>, version: &str, instance_id: &str) {
    if let Some(path) = path {
        write(path, &State { version: version.into(), instance_id: instance_id.into(), clean_shutdown: true });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_follow_the_previous_run() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        assert_eq!(begin(Some(&p), "1.0", "a"), StartReason::FirstStart);
        assert_eq!(begin(Some(&p), "1.0", "b"), StartReason::Crash, "no clean marker");
        end(Some(&p), "1.0", "b");
        assert_eq!(begin(Some(&p), "1.0", "c"), StartReason::Restart);
        end(Some(&p), "1.0", "c");
        assert_eq!(begin(Some(&p), "1.1", "d"), StartReason::Upgrade);
        std::fs::write(&p, b"garbage").unwrap();
        assert_eq!(begin(Some(&p), "1.1", "e"), StartReason::FirstStart);
        assert_eq!(begin(None, "1.1", "f"), StartReason::FirstStart);
    }
}
