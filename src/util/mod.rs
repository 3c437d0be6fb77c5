//! Small shared helpers, and connection admission shared by every TCP listener.
pub mod admit;
pub mod io;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Binds a TCP listener and a UDP socket on one port with `bind_once`. With port 0 the kernel
/// chooses TCP's port and UDP takes the same number, which another socket may already hold, so
/// a taken port (`AddrInUse`) means choosing again, up to 16 times; a fixed port is tried once.
pub fn bind_same_port<T>(listen: SocketAddr, mut bind_once: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let attempts = if listen.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        match bind_once() {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AddrInUse)))
}

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

/// The latest instant humantime formats (9999-12-31T23:59:59.999).
const MAX_UNIX_MS: i64 = 253_402_300_799_999;

/// `YYYY-MM-DDTHH:MM:SS[.mmm]` of a Unix time in milliseconds (UTC, or local when the caller has
/// added its offset). The one date formatter of the crate (humantime), shared by the API's RFC 3339
/// times and GB28181's `Date` and MANSCDP times; out-of-range values are clamped, never a panic.
pub fn format_time(unix_ms: i64, millis: bool) -> String {
    let ms = unix_ms.clamp(0, MAX_UNIX_MS) as u64;
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    let text = if millis {
        humantime::format_rfc3339_millis(t).to_string()
    } else {
        humantime::format_rfc3339_seconds(t).to_string()
    };
    text.trim_end_matches('Z').to_string()
}

/// Seconds since the Unix epoch of `YYYY-MM-DDTHH:MM:SS` (a trailing fraction or UTC offset is
/// ignored: GB28181 times are the device's local time), or `None`.
pub fn parse_time(s: &str) -> Option<i64> {
    let head = s.trim().get(..19)?;
    let t = humantime::parse_rfc3339_weak(head).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_chosen_again_only_when_the_kernel_chose_it() {
        let in_use = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let mut calls = 0;
        let got = bind_same_port("127.0.0.1:0".parse().unwrap(), || {
            calls += 1;
            if calls < 4 {
                Err(in_use())
            } else {
                Ok(calls)
            }
        });
        assert_eq!(got.unwrap(), 4);
        // Always taken: gives up after 16 choices with the cause.
        let mut calls = 0;
        let got: std::io::Result<()> = bind_same_port("127.0.0.1:0".parse().unwrap(), || {
            calls += 1;
            Err(in_use())
        });
        assert_eq!((got.unwrap_err().kind(), calls), (std::io::ErrorKind::AddrInUse, 16));
        // A configured port is the operator's choice: tried once.
        let mut calls = 0;
        let got: std::io::Result<()> = bind_same_port("127.0.0.1:5060".parse().unwrap(), || {
            calls += 1;
            Err(in_use())
        });
        assert_eq!((got.unwrap_err().kind(), calls), (std::io::ErrorKind::AddrInUse, 1));
        // Other errors are not retried.
        let mut calls = 0;
        let got: std::io::Result<()> = bind_same_port("127.0.0.1:0".parse().unwrap(), || {
            calls += 1;
            Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        });
        assert_eq!((got.unwrap_err().kind(), calls), (std::io::ErrorKind::PermissionDenied, 1));
    }

    #[test]
    fn times_format_and_parse_and_clamp() {
        assert_eq!(format_time(1_795_226_400_123, true), "2026-11-21T02:00:00.123");
        assert_eq!(format_time(1_795_226_400_123, false), "2026-11-21T02:00:00");
        assert_eq!(parse_time("2026-11-21T02:00:00"), Some(1_795_226_400));
        assert_eq!(parse_time("2026-11-21T02:00:00+08:00"), Some(1_795_226_400));
        assert_eq!(parse_time("2026-13-21T02:00:00"), None);
        assert_eq!(parse_time("soon"), None);
        assert_eq!(format_time(i64::MIN, false), "1970-01-01T00:00:00");
        assert_eq!(format_time(i64::MAX, false), "9999-12-31T23:59:59");
    }
}
