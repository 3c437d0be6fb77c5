//! Per-stream event logs (D90): each stream's own events (start/stop with reason, source, codec
//! changes, timestamp repairs, loss bursts, transcoder errors, players, push state) go to
//! `<dir>/<stream>/<local date>.log`, a new file from local midnight on, files older than
//! `keep_days` deleted. Each stream is rate-limited by a token bucket (a misbehaving camera cannot
//! fill the disk); what the bucket suppressed is counted and written when it lets lines through
//! again. The global log stays on stderr/journald.
//!
//! Time comes from a [`Clock`] (tests cross midnight with their own); the file name, the rotation
//! and the expiry are decided from it by the sans-IO functions below. One writer thread appends,
//! fed through a bounded channel: a slow disk drops lines (counted), never delays a stream.
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::config::LogConfig;

/// Lines waiting for the writer, all streams together.
const QUEUE_LINES: usize = 4096;
/// Characters of one event's text kept (longer text is cut).
const MAX_TEXT: usize = 1000;
/// Files kept open by the writer; beyond it all are closed (and reopened on their next line).
const MAX_OPEN: usize = 512;

/// Wall-clock time and the local UTC offset.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// Seconds east of UTC in effect at `unix_secs`.
    fn utc_offset(&self, unix_secs: i64) -> i64;
}

/// The system clock, with the offset from a function (the GB module's TZif reader).
pub struct SystemClock(pub fn(i64) -> i64);

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
    }

    fn utc_offset(&self, unix_secs: i64) -> i64 {
        (self.0)(unix_secs)
    }
}

/// Local date `YYYY-MM-DD` of `unix_ms` at `offset_s` east of UTC.
pub fn local_date(unix_ms: i64, offset_s: i64) -> String {
    let local = unix_ms.saturating_add(offset_s.clamp(-86_400, 86_400) * 1000);
    crate::util::format_time(local, false).chars().take(10).collect()
}

/// The log file name of a local date.
pub fn file_name(date: &str) -> String {
    format!("{date}.log")
}

/// Day number (days since 1970-01-01) of a `YYYY-MM-DD.log` file name.
fn day_of(name: &str) -> Option<i64> {
    let date = name.strip_suffix(".log")?;
    if date.len() != 10 {
        return None;
    }
    Some(crate::util::parse_time(&format!("{date}T00:00:00"))?.div_euclid(86_400))
}

/// Which of `names` (files of one stream's directory) are older than `keep_days` on `today`
/// (a `YYYY-MM-DD` date): today's file and those of the `keep_days - 1` days before stay.
/// Names that are not log files are left alone.
pub fn expired<'a>(names: impl IntoIterator<Item = &'a str>, today: &str, keep_days: u32) -> Vec<&'a str> {
    let Some(today) = day_of(&file_name(today)) else { return Vec::new() };
    names.into_iter().filter(|n| day_of(n).is_some_and(|d| today - d >= i64::from(keep_days.max(1)))).collect()
}

/// A token bucket (sans-IO): `rate` tokens per second up to `burst`; each line takes one.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Tokens in thousandths, so slow rates refill smoothly.
    milli: u64,
    burst: u64,
    rate: u64,
    last_ms: Option<i64>,
    suppressed: u64,
}

impl Bucket {
    pub fn new(rate: u32, burst: u32) -> Bucket {
        let burst = u64::from(burst.max(1));
        Bucket { milli: burst * 1000, burst, rate: u64::from(rate.max(1)), last_ms: None, suppressed: 0 }
    }

    /// `Some(lines suppressed since the last admitted one)` when a line may be written at `now_ms`.
    pub fn admit(&mut self, now_ms: i64) -> Option<u64> {
        let elapsed = self.last_ms.map_or(0, |l| now_ms.saturating_sub(l).max(0) as u64);
        self.last_ms = Some(now_ms);
        self.milli = (self.milli + elapsed.saturating_mul(self.rate)).min(self.burst * 1000);
        if self.milli < 1000 {
            self.suppressed += 1;
            return None;
        }
        self.milli -= 1000;
        Some(std::mem::take(&mut self.suppressed))
    }
}

enum Msg {
    Line { dir: String, date: String, line: String },
    Close { dir: String },
    Flush(mpsc::SyncSender<()>),
}

/// Figures of one stream's log, for the API.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StreamLogStats {
    pub lines: u64,
    /// Lines the rate limit held back.
    pub suppressed: u64,
}

/// The per-stream logs of the process: where, how long, how fast, and the writer thread.
pub struct StreamLogs {
    keep_days: u32,
    rate: u32,
    burst: u32,
    clock: Arc<dyn Clock>,
    tx: mpsc::SyncSender<Msg>,
    /// Lines lost because the writer queue was full.
    pub queue_drops: AtomicU64,
}

impl StreamLogs {
    /// The directory `[log] dir` names, else `$LOGS_DIRECTORY` (systemd `LogsDirectory=`; the
    /// first when it lists several), else none: per-stream logs are off.
    pub fn dir_of(cfg: &LogConfig) -> Option<PathBuf> {
        if !cfg.streams {
            return None;
        }
        cfg.dir.clone().or_else(|| {
            let v = std::env::var("LOGS_DIRECTORY").ok()?;
            v.split(':').find(|s| !s.is_empty()).map(PathBuf::from)
        })
    }

    /// Starts the writer for `dir` with the limits of `cfg`.
    pub fn start(dir: PathBuf, cfg: &LogConfig, clock: Arc<dyn Clock>) -> Option<Arc<StreamLogs>> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let keep_days = cfg.keep_days.max(1);
        let spawned =
            std::thread::Builder::new().name("gbgate-streamlog".into()).spawn(move || writer(dir, keep_days, rx));
        if let Err(e) = spawned {
            tracing::error!("per-stream logs disabled: cannot start the writer thread: {e}");
            return None;
        }
        Some(Arc::new(StreamLogs {
            keep_days,
            rate: cfg.lines_per_second,
            burst: cfg.burst,
            clock,
            tx,
            queue_drops: AtomicU64::new(0),
        }))
    }

    /// The log of stream `name`.
    pub fn open(self: &Arc<Self>, name: &str) -> StreamLog {
        StreamLog {
            name: name.to_string(),
            dir: super::file_component(name),
            logs: self.clone(),
            bucket: Mutex::new(Bucket::new(self.rate, self.burst)),
            lines: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Waits until the writer has written everything queued before this call.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }

    pub fn keep_days(&self) -> u32 {
        self.keep_days
    }

    fn send(&self, m: Msg) {
        if self.tx.try_send(m).is_err() {
            self.queue_drops.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One stream's log.
pub struct StreamLog {
    name: String,
    dir: String,
    logs: Arc<StreamLogs>,
    bucket: Mutex<Bucket>,
    lines: AtomicU64,
    suppressed: AtomicU64,
}

impl StreamLog {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes one event: `<local time with offset> <kind> <text>`, one line (line breaks in the
    /// text become spaces), unless the stream's rate limit holds it back.
    pub fn event(&self, kind: &str, text: &str) {
        let now = self.logs.clock.now_ms();
        let Some(suppressed) = self.bucket.lock().unwrap_or_else(|e| e.into_inner()).admit(now) else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let offset = self.logs.clock.utc_offset(now.div_euclid(1000));
        let stamp = format!(
            "{}{}{:02}:{:02}",
            crate::util::format_time(now + offset.clamp(-86_400, 86_400) * 1000, true),
            if offset < 0 { '-' } else { '+' },
            offset.abs() / 3600 % 24,
            offset.abs() / 60 % 60
        );
        let text: String = text.chars().take(MAX_TEXT).map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).collect();
        let mut line = String::with_capacity(stamp.len() + kind.len() + text.len() + 64);
        if suppressed > 0 {
            line.push_str(&format!("{stamp} log {suppressed} lines suppressed by the rate limit\n"));
        }
        line.push_str(&format!("{stamp} {kind} {text}\n"));
        self.lines.fetch_add(1, Ordering::Relaxed);
        let date = local_date(now, offset);
        self.logs.send(Msg::Line { dir: self.dir.clone(), date, line });
    }

    pub fn stats(&self) -> StreamLogStats {
        StreamLogStats {
            lines: self.lines.load(Ordering::Relaxed),
            suppressed: self.suppressed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        // Lines held back until the end are still reported.
        let suppressed = self.bucket.get_mut().unwrap_or_else(|e| e.into_inner()).suppressed;
        if suppressed > 0 {
            let now = self.logs.clock.now_ms();
            let offset = self.logs.clock.utc_offset(now.div_euclid(1000));
            let line = format!(
                "{} log {suppressed} lines suppressed by the rate limit\n",
                crate::util::format_time(now + offset.clamp(-86_400, 86_400) * 1000, true)
            );
            self.logs.send(Msg::Line { dir: self.dir.clone(), date: local_date(now, offset), line });
        }
        self.logs.send(Msg::Close { dir: self.dir.clone() });
    }
}

/// The writer thread: appends each line to its stream's file of the line's date, switching files
/// when the date changes and then deleting expired ones.
fn writer(root: PathBuf, keep_days: u32, rx: mpsc::Receiver<Msg>) {
    let mut open: HashMap<String, (String, File)> = HashMap::new();
    let mut errors = crate::util::RateLimit::new(Duration::from_secs(60));
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Line { dir, date, line } => {
                let same_day = open.get(&dir).is_some_and(|(d, _)| *d == date);
                if !same_day {
                    open.remove(&dir);
                    if open.len() >= MAX_OPEN {
                        open.clear();
                    }
                    let path = root.join(&dir);
                    let file = std::fs::create_dir_all(&path)
                        .and_then(|_| OpenOptions::new().create(true).append(true).open(path.join(file_name(&date))));
                    match file {
                        Ok(f) => {
                            open.insert(dir.clone(), (date.clone(), f));
                            delete_expired(&path, &date, keep_days);
                        }
                        Err(e) => {
                            if let Some(suppressed) = errors.check(std::time::Instant::now()) {
                                tracing::error!(suppressed, "per-stream log {}: {e}", path.display());
                            }
                            continue;
                        }
                    }
                }
                if let Some((_, f)) = open.get_mut(&dir) {
                    if let Err(e) = f.write_all(line.as_bytes()) {
                        if let Some(suppressed) = errors.check(std::time::Instant::now()) {
                            tracing::error!(suppressed, "per-stream log of {dir}: {e}");
                        }
                        open.remove(&dir);
                    }
                }
            }
            Msg::Close { dir } => {
                open.remove(&dir);
            }
            Msg::Flush(done) => {
                let _ = done.try_send(());
            }
        }
    }
}

fn delete_expired(dir: &std::path::Path, today: &str, keep_days: u32) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    for name in expired(names.iter().map(String::as_str), today, keep_days) {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_dates_follow_the_offset() {
        // 2025-12-05T15:59:59Z is 23:59:59 in +08:00; a second later it is the 6th there.
        let t = 1_764_950_399_000;
        assert_eq!(local_date(t, 0), "2025-12-05");
        assert_eq!(local_date(t, 8 * 3600), "2025-12-05");
        assert_eq!(local_date(t + 1000, 8 * 3600), "2025-12-06");
        assert_eq!(local_date(t, -10 * 3600), "2025-12-05");
        assert_eq!(local_date(0, -3600), "1970-01-01", "clamped, never a panic");
        assert_eq!(file_name("2025-12-06"), "2025-12-06.log");
    }

    #[test]
    fn expiry_keeps_today_and_the_days_before() {
        let names = ["2025-12-01.log", "2025-12-02.log", "2025-12-04.log", "2025-12-05.log", "notes.txt", "x.log"];
        assert_eq!(expired(names, "2025-12-05", 2), ["2025-12-01.log", "2025-12-02.log"]);
        assert_eq!(expired(names, "2025-12-05", 1), ["2025-12-01.log", "2025-12-02.log", "2025-12-04.log"]);
        assert_eq!(expired(names, "2025-12-05", 30), Vec::<&str>::new());
        // Across a month end.
        assert_eq!(expired(["2025-11-30.log", "2025-12-01.log"], "2025-12-02", 2), ["2025-11-30.log"]);
    }

    #[test]
    fn bucket_bursts_then_refills_and_reports_what_it_held_back() {
        let mut b = Bucket::new(2, 3);
        assert_eq!((0..3).map(|_| b.admit(0)).collect::<Vec<_>>(), [Some(0), Some(0), Some(0)]);
        assert_eq!(b.admit(0), None);
        assert_eq!(b.admit(100), None, "0.2 tokens");
        // 500 ms at 2/s: one token; two lines were held back.
        assert_eq!(b.admit(500), Some(2));
        assert_eq!(b.admit(500), None);
        // A long pause refills to the burst, no more.
        assert_eq!((0..4).map(|_| b.admit(100_000).is_some()).collect::<Vec<_>>(), [true, true, true, false]);
        // Time going backwards refills nothing.
        assert_eq!(b.admit(0), None);
    }
}
