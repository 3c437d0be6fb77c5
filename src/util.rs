//! Small shared helpers.
use std::time::{Duration, Instant};

/// Lets one log line through per interval and counts what it suppressed, so a flood of bad
/// packets costs a counter increment, not a log line each.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(interval: Duration) -> Self {
        RateLimit { interval, last: None, suppressed: 0 }
    }

    /// Returns `Some(suppressed_since_last)` when a line may be logged now.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}
