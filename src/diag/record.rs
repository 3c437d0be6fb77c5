//! Raw RTP recording (D89): the packets of streams whose name matches `[record] streams`, written
//! as `[u16 big-endian length][RTP packet]` records (what `gbgate probe` and `gbgate send` read)
//! to `<dir>/<stream>/<UTC start>.rtp`, rotated by size and age, oldest files deleted to keep
//! each stream and all recordings within their byte bounds.
//!
//! The ingest side only copies the packet into a channel bounded in bytes ([`RecordHandle::packet`]);
//! when the writer falls behind, packets are dropped and counted, never waited for. One writer
//! thread does all file IO, driven by the sans-IO [`Planner`]. A write error (full disk, read-only
//! directory) stops that stream's recording with one logged reason; the stream goes on.
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::RecordConfig;

/// Largest packet a record can hold (its length is 16 bits).
pub const MAX_PACKET: usize = u16::MAX as usize;
/// Queue accounting per packet beyond its bytes (the message and allocation overhead).
const PACKET_OVERHEAD: usize = 64;
/// Buffered bytes per open file before they go to the kernel.
const FILE_BUFFER: usize = 64 << 10;
/// The writer flushes open files when idle this long (a crash then loses at most this much).
const IDLE_FLUSH: Duration = Duration::from_millis(500);

/// Bounds the planner keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub per_stream: u64,
    pub total: u64,
}

impl Limits {
    pub fn of(cfg: &RecordConfig) -> Limits {
        Limits {
            segment_bytes: cfg.segment_bytes.max(4096),
            segment_ms: cfg.segment_duration.0.as_millis().clamp(100, i64::MAX as u128) as i64,
            per_stream: cfg.max_bytes_per_stream.max(cfg.segment_bytes),
            total: cfg.max_bytes_total.max(cfg.segment_bytes),
        }
    }
}

/// What the writer must do, in order, for one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Flush and close the stream's current file.
    Close,
    Delete(PathBuf),
    /// Create the directory if needed and a new file; the packet goes there.
    Open(PathBuf),
    /// Append the packet to the current file.
    Write,
    /// Drop the packet: no room can be made (every byte is in files still being written).
    Drop,
}

#[derive(Debug, Clone)]
struct Segment {
    path: PathBuf,
    bytes: u64,
    started_ms: i64,
}

#[derive(Debug)]
struct Recording {
    dir: PathBuf,
    current: Option<Segment>,
}

/// The sans-IO core: file names, rotation and deletion from packet sizes and `now_ms` (Unix ms).
/// It knows every `.rtp` file under the directory (closed ones, by start time, which is their
/// name) and the one each recording is writing.
#[derive(Debug)]
pub struct Planner {
    root: PathBuf,
    limits: Limits,
    /// Closed files, oldest first: (file name, directory) -> bytes.
    closed: BTreeMap<(String, PathBuf), u64>,
    /// Closed bytes per directory.
    dir_bytes: HashMap<PathBuf, u64>,
    /// The last file name used per directory (names must grow).
    last_name: HashMap<PathBuf, String>,
    recordings: HashMap<u64, Recording>,
    /// Bytes of every file, closed and open.
    total: u64,
    pub deleted_files: u64,
}

/// `2026-12-05T03-05-12.345Z.rtp`: sortable, no `:` (portable to any file system).
pub fn file_name(unix_ms: i64) -> String {
    format!("{}Z.rtp", crate::util::format_time(unix_ms, true).replace(':', "-"))
}

impl Planner {
    pub fn new(root: PathBuf, limits: Limits) -> Planner {
        Planner {
            root,
            limits,
            closed: BTreeMap::new(),
            dir_bytes: HashMap::new(),
            last_name: HashMap::new(),
            recordings: HashMap::new(),
            total: 0,
            deleted_files: 0,
        }
    }

    /// A file found on disk at start (an earlier run's recording): counted and deletable.
    pub fn add_existing(&mut self, dir: PathBuf, name: String, bytes: u64) {
        self.total += bytes;
        *self.dir_bytes.entry(dir.clone()).or_default() += bytes;
        let last = self.last_name.entry(dir.clone()).or_default();
        if name > *last {
            *last = name.clone();
        }
        self.closed.insert((name, dir), bytes);
    }

    /// Starts recording `id` into `<root>/<component>`.
    pub fn open(&mut self, id: u64, component: &str) {
        self.recordings.insert(id, Recording { dir: self.root.join(component), current: None });
    }

    /// Ends recording `id`: its current file (if any) becomes an ordinary closed file.
    pub fn close(&mut self, id: u64) {
        if let Some(mut r) = self.recordings.remove(&id) {
            self.close_current(&mut r);
        }
    }

    fn close_current(&mut self, r: &mut Recording) {
        if let Some(seg) = r.current.take() {
            let name = seg.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            *self.dir_bytes.entry(r.dir.clone()).or_default() += seg.bytes;
            self.closed.insert((name, r.dir.clone()), seg.bytes);
        }
    }

    /// The current file of `id`.
    pub fn current(&self, id: u64) -> Option<&Path> {
        self.recordings.get(&id)?.current.as_ref().map(|s| s.path.as_path())
    }

    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Bytes of `id`'s stream on disk (closed files of its directory and the current one).
    pub fn stream_bytes(&self, id: u64) -> u64 {
        let Some(r) = self.recordings.get(&id) else { return 0 };
        self.dir_bytes.get(&r.dir).copied().unwrap_or(0) + r.current.as_ref().map_or(0, |s| s.bytes)
    }

    /// Plans one packet of `len` bytes for `id` at `now_ms`.
    pub fn packet(&mut self, id: u64, len: usize, now_ms: i64) -> Vec<Action> {
        let need = 2 + len as u64;
        let Some(mut r) = self.recordings.remove(&id) else { return vec![Action::Drop] };
        let mut actions = Vec::new();
        if let Some(seg) = &r.current {
            let full = seg.bytes > 0 && seg.bytes + need > self.limits.segment_bytes;
            let old = now_ms.saturating_sub(seg.started_ms) >= self.limits.segment_ms;
            if full || old {
                self.close_current(&mut r);
                actions.push(Action::Close);
            }
        }
        // Make room: the stream's own oldest files first, then everyone's oldest.
        let current = r.current.as_ref().map_or(0, |s| s.bytes);
        while self.dir_bytes.get(&r.dir).copied().unwrap_or(0) + current + need > self.limits.per_stream {
            let Some(key) = self.closed.keys().find(|(_, d)| *d == r.dir).cloned() else { break };
            actions.push(Action::Delete(self.delete(key)));
        }
        while self.total + need > self.limits.total {
            let Some(key) = self.closed.keys().next().cloned() else { break };
            actions.push(Action::Delete(self.delete(key)));
        }
        let stream_full = self.dir_bytes.get(&r.dir).copied().unwrap_or(0) + current + need > self.limits.per_stream;
        if stream_full || self.total + need > self.limits.total {
            actions.push(Action::Drop);
            self.recordings.insert(id, r);
            return actions;
        }
        if r.current.is_none() {
            let mut name = file_name(now_ms);
            // Two files within one millisecond (tiny segments): the name must still grow.
            let last = self.last_name.get(&r.dir).cloned().unwrap_or_default();
            let mut bump = 1;
            while name <= last {
                name = file_name(now_ms + bump);
                bump += 1;
            }
            self.last_name.insert(r.dir.clone(), name.clone());
            let path = r.dir.join(&name);
            actions.push(Action::Open(path.clone()));
            r.current = Some(Segment { path, bytes: 0, started_ms: now_ms });
        } else {
            actions.push(Action::Write);
        }
        if let Some(seg) = &mut r.current {
            seg.bytes += need;
        }
        self.total += need;
        self.recordings.insert(id, r);
        actions
    }

    fn delete(&mut self, key: (String, PathBuf)) -> PathBuf {
        let bytes = self.closed.remove(&key).unwrap_or(0);
        self.total = self.total.saturating_sub(bytes);
        if let Some(d) = self.dir_bytes.get_mut(&key.1) {
            *d = d.saturating_sub(bytes);
        }
        self.deleted_files += 1;
        key.1.join(key.0)
    }
}

/// One recording's figures, as the API shows them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RecordStats {
    /// Recording now (false once stopped by an error or by the stream's end).
    pub active: bool,
    pub packets: u64,
    pub bytes: u64,
    pub files: u64,
    /// Packets dropped because the writer's queue was full (or a packet over 64 KiB).
    pub dropped: u64,
    pub current_file: Option<String>,
    /// Why the recording stopped, when an error stopped it.
    pub error: Option<String>,
}

#[derive(Debug, Default)]
struct RecState {
    stopped: AtomicBool,
    packets: AtomicU64,
    bytes: AtomicU64,
    files: AtomicU64,
    dropped: AtomicU64,
    current: Mutex<Option<String>>,
    error: Mutex<Option<String>>,
}

enum Msg {
    Open { id: u64, name: String, state: Arc<RecState> },
    Packet { id: u64, data: Vec<u8>, cost: usize },
    Close { id: u64 },
    Flush(mpsc::SyncSender<()>),
}

struct Shared {
    queued: AtomicUsize,
    limit: usize,
}

/// Totals of the recorder, for the API.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RecorderStats {
    pub dir: PathBuf,
    pub queued_bytes: usize,
    pub queue_limit: usize,
    pub bytes_on_disk: u64,
    pub deleted_files: u64,
    pub recordings: usize,
}

/// The recorder: name patterns, the writer thread and its queue. [`Recorder::handle`] gives a
/// stream its [`RecordHandle`] when its name matches.
pub struct Recorder {
    patterns: Vec<String>,
    /// Exact names recorded besides the patterns, added at run time (a channel's `record`, D104).
    names: Mutex<std::collections::HashSet<String>>,
    /// Each handle has its own clone: sending takes no lock shared by the streams. The writer
    /// ends when the recorder and every handle are gone.
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    totals: Arc<Mutex<RecorderStats>>,
}

impl Recorder {
    /// Starts the writer when `[record]` has a directory and patterns; `None` otherwise.
    pub fn start(cfg: &RecordConfig) -> Option<Arc<Recorder>> {
        let Some(dir) = cfg.dir.clone() else {
            if !cfg.streams.is_empty() {
                tracing::warn!("[record] streams is set but dir is not: nothing is recorded");
            }
            return None;
        };
        // With a directory and no pattern the writer still starts: channels may ask for their
        // stream's recording at run time (D104).
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared { queued: AtomicUsize::new(0), limit: cfg.queue_bytes });
        let totals = Arc::new(Mutex::new(RecorderStats {
            dir: dir.clone(),
            queue_limit: cfg.queue_bytes,
            ..Default::default()
        }));
        let planner = Planner::new(dir, Limits::of(cfg));
        let (s, t) = (shared.clone(), totals.clone());
        let spawned = std::thread::Builder::new().name("gbgate-record".into()).spawn(move || writer(planner, rx, s, t));
        if let Err(e) = spawned {
            tracing::error!("recording disabled: cannot start the writer thread: {e}");
            return None;
        }
        Some(Arc::new(Recorder {
            patterns: cfg.streams.clone(),
            names: Mutex::new(Default::default()),
            tx,
            shared,
            next_id: AtomicU64::new(1),
            totals,
        }))
    }

    /// Whether `name` is to be recorded.
    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| super::glob_match(p, name))
            || self.names.lock().unwrap_or_else(|e| e.into_inner()).contains(name)
    }

    /// Records stream `name` from its next start on, besides the configured patterns.
    pub fn add_name(&self, name: &str) {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string());
    }

    /// Undoes [`Recorder::add_name`] (streams already recording go on until they end).
    pub fn remove_name(&self, name: &str) {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// A handle recording stream `name`, or `None` when no pattern matches it.
    pub fn handle(&self, name: &str) -> Option<RecordHandle> {
        if !self.matches(name) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(RecState::default());
        self.tx.send(Msg::Open { id, name: name.to_string(), state: state.clone() }).ok()?;
        Some(RecordHandle {
            id,
            tx: self.tx.clone(),
            shared: self.shared.clone(),
            state,
            closed: AtomicBool::new(false),
        })
    }

    /// Waits until the writer has written and flushed everything queued before this call.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }

    pub fn stats(&self) -> RecorderStats {
        let mut s = self.totals.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.queued_bytes = self.shared.queued.load(Ordering::Relaxed);
        s
    }
}

/// One stream's recording. [`RecordHandle::packet`] is all the ingest path calls.
pub struct RecordHandle {
    id: u64,
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    state: Arc<RecState>,
    closed: AtomicBool,
}

impl RecordHandle {
    /// Queues one RTP packet for the disk. Never blocks: over the queue's byte bound the packet
    /// is dropped and counted; after an error or [`close`](Self::close) it is ignored.
    pub fn packet(&self, pkt: &[u8]) {
        if self.state.stopped.load(Ordering::Relaxed) {
            return;
        }
        if pkt.len() > MAX_PACKET {
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let cost = pkt.len() + PACKET_OVERHEAD;
        let before = self.shared.queued.fetch_add(cost, Ordering::Relaxed);
        if before + cost > self.shared.limit {
            self.shared.queued.fetch_sub(cost, Ordering::Relaxed);
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.tx.send(Msg::Packet { id: self.id, data: pkt.to_vec(), cost }).is_err() {
            self.shared.queued.fetch_sub(cost, Ordering::Relaxed);
            self.state.stopped.store(true, Ordering::Relaxed);
        }
    }

    /// Ends the recording (the stream ended); later packets are ignored.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::Relaxed) {
            self.state.stopped.store(true, Ordering::Relaxed);
            let _ = self.tx.send(Msg::Close { id: self.id });
        }
    }

    pub fn stats(&self) -> RecordStats {
        let s = &self.state;
        RecordStats {
            active: !s.stopped.load(Ordering::Relaxed),
            packets: s.packets.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            files: s.files.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            current_file: s.current.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            error: s.error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

impl Drop for RecordHandle {
    fn drop(&mut self) {
        self.close();
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `.rtp` files one level below `root` (an earlier run's recordings).
fn scan(root: &Path, planner: &mut Planner) {
    let Ok(dirs) = std::fs::read_dir(root) else { return };
    for d in dirs.flatten().filter(|d| d.file_type().is_ok_and(|t| t.is_dir())) {
        let Ok(files) = std::fs::read_dir(d.path()) else { continue };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".rtp") {
                if let Ok(m) = f.metadata() {
                    planner.add_existing(d.path(), name, m.len());
                }
            }
        }
    }
}

struct Open {
    name: String,
    state: Arc<RecState>,
    file: Option<BufWriter<File>>,
}

/// The writer thread: applies the planner's actions; an error stops that recording only.
fn writer(mut planner: Planner, rx: mpsc::Receiver<Msg>, shared: Arc<Shared>, totals: Arc<Mutex<RecorderStats>>) {
    scan(&planner.root.clone(), &mut planner);
    let mut open: HashMap<u64, Open> = HashMap::new();
    let mut dirty = false;
    loop {
        let msg = match rx.recv_timeout(IDLE_FLUSH) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if dirty {
                    flush_all(&mut open, &mut planner);
                    dirty = false;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match msg {
            Msg::Open { id, name, state } => {
                planner.open(id, &super::file_component(&name));
                open.insert(id, Open { name, state, file: None });
            }
            Msg::Packet { id, data, cost } => {
                shared.queued.fetch_sub(cost, Ordering::Relaxed);
                if let Some(o) = open.get_mut(&id) {
                    if let Err(reason) = write_packet(&mut planner, id, o, &data) {
                        fail(&mut planner, id, o, reason);
                    }
                    dirty = true;
                }
            }
            Msg::Close { id } => {
                if let Some(mut o) = open.remove(&id) {
                    if let Some(mut f) = o.file.take() {
                        if let Err(e) = f.flush() {
                            tracing::error!(stream = %o.name, "recording: closing the file failed: {e}");
                        }
                    }
                    *o.state.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                planner.close(id);
            }
            Msg::Flush(done) => {
                flush_all(&mut open, &mut planner);
                let _ = done.try_send(());
            }
        }
        let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
        t.bytes_on_disk = planner.total_bytes();
        t.deleted_files = planner.deleted_files;
        t.recordings = open.len();
    }
    flush_all(&mut open, &mut planner);
}

fn flush_all(open: &mut HashMap<u64, Open>, planner: &mut Planner) {
    let mut failed = Vec::new();
    for (id, o) in open.iter_mut() {
        if let Some(f) = &mut o.file {
            if let Err(e) = f.flush() {
                failed.push((*id, format!("writing {}: {e}", o.state_path())));
            }
        }
    }
    for (id, reason) in failed {
        if let Some(o) = open.get_mut(&id) {
            fail(planner, id, o, reason);
        }
    }
}

impl Open {
    fn state_path(&self) -> String {
        self.state.current.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default()
    }
}

fn write_packet(planner: &mut Planner, id: u64, o: &mut Open, data: &[u8]) -> Result<(), String> {
    for action in planner.packet(id, data.len(), now_ms()) {
        match action {
            Action::Close => {
                if let Some(mut f) = o.file.take() {
                    f.flush().map_err(|e| format!("writing {}: {e}", o.state_path()))?;
                }
            }
            Action::Delete(path) => match std::fs::remove_file(&path) {
                Ok(()) => {
                    // A stream directory left empty goes too (fails, harmlessly, otherwise).
                    if let Some(parent) = path.parent() {
                        let _ = std::fs::remove_dir(parent);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // Not fatal for this recording: the bound is off by one file until it is gone.
                Err(e) => tracing::warn!(stream = %o.name, "recording: cannot delete {}: {e}", path.display()),
            },
            Action::Open(path) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
                }
                let f = File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
                o.file = Some(BufWriter::with_capacity(FILE_BUFFER, f));
                o.state.files.fetch_add(1, Ordering::Relaxed);
                *o.state.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.display().to_string());
                append(o, data)?;
            }
            Action::Write => append(o, data)?,
            Action::Drop => {
                o.state.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

fn append(o: &mut Open, data: &[u8]) -> Result<(), String> {
    let path = o.state_path();
    let f = o.file.as_mut().ok_or_else(|| "no open file".to_string())?;
    f.write_all(&(data.len() as u16).to_be_bytes())
        .and_then(|_| f.write_all(data))
        .map_err(|e| format!("writing {path}: {e}"))?;
    o.state.packets.fetch_add(1, Ordering::Relaxed);
    o.state.bytes.fetch_add(2 + data.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Stops one recording after an IO error: logged once, with the reason, in the API too.
fn fail(planner: &mut Planner, id: u64, o: &mut Open, reason: String) {
    if o.state.stopped.swap(true, Ordering::Relaxed)
        && o.state.error.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    {
        return;
    }
    tracing::error!(stream = %o.name, "recording stopped: {reason}");
    *o.state.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    // What reached the disk stays; the planner counts the file as closed.
    o.file = None;
    planner.close(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { segment_bytes: 1000, segment_ms: 10_000, per_stream: 3000, total: 5000 }
    }

    fn opened(actions: &[Action]) -> Option<&PathBuf> {
        actions.iter().find_map(|a| if let Action::Open(p) = a { Some(p) } else { None })
    }

    #[test]
    fn rotates_by_size_and_by_age_with_growing_names() {
        let mut p = Planner::new("/r".into(), limits());
        p.open(1, "gb_1");
        let a = p.packet(1, 398, 0);
        assert_eq!(opened(&a).unwrap(), &PathBuf::from("/r/gb_1/1970-01-01T00-00-00.000Z.rtp"));
        assert_eq!(p.packet(1, 398, 1), vec![Action::Write]);
        // 800 + 400 > 1000: a new file.
        let a = p.packet(1, 398, 1);
        assert_eq!(a[0], Action::Close);
        assert_eq!(opened(&a).unwrap(), &PathBuf::from("/r/gb_1/1970-01-01T00-00-00.001Z.rtp"));
        // Another at the same millisecond: the name is bumped so that names keep growing.
        let a = p.packet(1, 998, 1);
        assert_eq!(opened(&a).unwrap(), &PathBuf::from("/r/gb_1/1970-01-01T00-00-00.002Z.rtp"));
        // That one is full: the next packet opens a file started at 5 s ...
        assert!(opened(&p.packet(1, 10, 5000)).is_some());
        assert_eq!(p.packet(1, 10, 6000), vec![Action::Write]);
        // ... which 10 s later rotates by age, though small.
        let a = p.packet(1, 10, 15_000);
        assert_eq!(a[0], Action::Close);
        assert_eq!(opened(&a).unwrap(), &PathBuf::from("/r/gb_1/1970-01-01T00-00-15.000Z.rtp"));
        assert_eq!(p.total_bytes(), 400 * 3 + 1000 + 12 * 3);
    }

    #[test]
    fn deletes_the_streams_oldest_then_everyones_oldest() {
        let mut p = Planner::new("/r".into(), Limits { per_stream: 4000, ..limits() });
        // An earlier run left 2000 bytes of another stream.
        p.add_existing("/r/old".into(), "1960.rtp".into(), 2000);
        p.open(1, "a");
        let mut deleted = Vec::new();
        for i in 0..40 {
            for a in p.packet(1, 198, i * 100) {
                if let Action::Delete(path) = a {
                    deleted.push(path);
                }
            }
            assert!(p.stream_bytes(1) <= 4000 && p.total_bytes() <= 5000, "{i}");
        }
        // 8000 bytes written: the old run's file went first (total bound), then the stream's own.
        assert_eq!(deleted[0], PathBuf::from("/r/old/1960.rtp"));
        assert!(deleted[1..].iter().all(|d| d.starts_with("/r/a")), "{deleted:?}");
        assert!(p.stream_bytes(1) >= 3000, "{}", p.stream_bytes(1));
    }

    #[test]
    fn full_of_open_files_drops_instead_of_deleting_them() {
        let mut p = Planner::new(
            "/r".into(),
            Limits { segment_bytes: 1000, segment_ms: 10_000, per_stream: 1000, total: 1500 },
        );
        p.open(1, "a");
        p.open(2, "b");
        assert!(opened(&p.packet(1, 898, 0)).is_some());
        let a = p.packet(2, 898, 0);
        assert_eq!(a, vec![Action::Drop], "1800 > 1500 and nothing closed to delete");
        p.close(1);
        let a = p.packet(2, 898, 1);
        assert!(matches!(&a[0], Action::Delete(d) if d.starts_with("/r/a")), "{a:?}");
        assert!(opened(&a).is_some());
    }
}
