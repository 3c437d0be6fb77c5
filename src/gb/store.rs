//! Persistence of registrations and device facts (redb, pure Rust, one file).
//!
//! The signalling task never waits on the disk: it hands records to a writer thread through a
//! bounded queue, and the thread commits whatever has queued up in one transaction.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, TableDefinition};
use tracing::{info, warn};

use super::{DeviceRecord, GbCounters};
use crate::util::RateLimit;

const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
/// Devices with a write pending. Writes of one device coalesce (the newest replaces the one
/// still queued, so nothing is lost while the writer catches up); a write of a further device
/// when this many are pending is dropped, counted (`store_writes_dropped`) and logged.
const QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {message}")]
    Db { path: PathBuf, message: String },
}

#[derive(Debug, PartialEq, Eq)]
enum Op {
    Put(Vec<u8>),
    Delete,
}

/// The pending writes, newest per device, bounded by device count.
struct WriteQueue {
    ops: HashMap<String, Op>,
    max: usize,
    closed: bool,
}

impl WriteQueue {
    /// Queues `op` for `id`; `false` when it was dropped (queue full of other devices).
    fn push(&mut self, id: &str, op: Op) -> bool {
        if let Some(slot) = self.ops.get_mut(id) {
            *slot = op;
            return true;
        }
        if self.ops.len() >= self.max {
            return false;
        }
        self.ops.insert(id.to_string(), op);
        true
    }
}

struct Shared {
    queue: Mutex<WriteQueue>,
    ready: Condvar,
}

/// Closes the queue when the last [`Store`] handle goes, so the writer commits what is left,
/// exits and releases the file.
struct Handle {
    shared: Arc<Shared>,
    counters: Arc<GbCounters>,
    log: Mutex<RateLimit>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.shared.ready.notify_all();
    }
}

/// A handle to the writer thread; `None` = memory only (every call is a no-op).
#[derive(Clone)]
pub struct Store {
    inner: Option<Arc<Handle>>,
    /// The open database, shared with the channel layer's table (redb opens a file once, D100).
    db: Option<Arc<Database>>,
}

impl Store {
    pub fn memory() -> Store {
        Store { inner: None, db: None }
    }

    /// The open database (`None`: memory only), for other tables of the same file.
    pub fn database(&self) -> Option<Arc<Database>> {
        self.db.clone()
    }

    /// Opens (or creates) the database and loads every stored device.
    pub fn open(path: &Path, counters: Arc<GbCounters>) -> Result<(Store, Vec<DeviceRecord>), StoreError> {
        Self::open_with(path, counters, QUEUE)
    }

    fn open_with(path: &Path, counters: Arc<GbCounters>, max: usize) -> Result<(Store, Vec<DeviceRecord>), StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Db { path: path.to_path_buf(), message: e.to_string() };
        let db = Arc::new(Database::create(path).map_err(|e| err(&e))?);
        let mut devices = Vec::new();
        {
            let w = db.begin_write().map_err(|e| err(&e))?;
            w.open_table(DEVICES).map_err(|e| err(&e))?;
            w.commit().map_err(|e| err(&e))?;
            let r = db.begin_read().map_err(|e| err(&e))?;
            let t = r.open_table(DEVICES).map_err(|e| err(&e))?;
            for row in t.iter().map_err(|e| err(&e))? {
                let (k, v) = row.map_err(|e| err(&e))?;
                match serde_json::from_slice::<DeviceRecord>(v.value()) {
                    Ok(d) => devices.push(d),
                    Err(e) => warn!(device = k.value(), "stored device unreadable, skipped: {e}"),
                }
            }
        }
        info!(path = %path.display(), devices = devices.len(), "device database opened");
        let shared = Arc::new(Shared {
            queue: Mutex::new(WriteQueue { ops: HashMap::new(), max, closed: false }),
            ready: Condvar::new(),
        });
        let p = path.to_path_buf();
        let (s, d) = (shared.clone(), db.clone());
        std::thread::Builder::new()
            .name("gb-store".into())
            .spawn(move || writer(d, s, p))
            .map_err(|e| StoreError::Db { path: path.to_path_buf(), message: e.to_string() })?;
        let handle = Handle { shared, counters, log: Mutex::new(RateLimit::new(Duration::from_secs(10))) };
        Ok((Store { inner: Some(Arc::new(handle)), db: Some(db) }, devices))
    }

    fn push(&self, id: &str, op: Op) {
        let Some(h) = &self.inner else { return };
        let queued = h.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).push(id, op);
        if queued {
            h.shared.ready.notify_one();
            return;
        }
        h.counters.store_writes_dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = h.log.lock().unwrap_or_else(|e| e.into_inner()).check(Instant::now()) {
            warn!(device = id, suppressed, "device database write dropped: {QUEUE} devices already wait for the disk");
        }
    }

    pub fn put(&self, d: &DeviceRecord) {
        if self.inner.is_some() {
            if let Ok(bytes) = serde_json::to_vec(d) {
                self.push(&d.id, Op::Put(bytes));
            }
        }
    }

    pub fn delete(&self, id: &str) {
        self.push(id, Op::Delete);
    }
}

fn writer(db: Arc<Database>, shared: Arc<Shared>, path: PathBuf) {
    loop {
        let (ops, closed) = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            while q.ops.is_empty() && !q.closed {
                q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            (std::mem::take(&mut q.ops), q.closed)
        };
        if !ops.is_empty() {
            let result = (|| -> Result<(), String> {
                let w = db.begin_write().map_err(|e| e.to_string())?;
                {
                    let mut t = w.open_table(DEVICES).map_err(|e| e.to_string())?;
                    for (k, op) in &ops {
                        match op {
                            Op::Put(v) => {
                                t.insert(k.as_str(), v.as_slice()).map_err(|e| e.to_string())?;
                            }
                            Op::Delete => {
                                t.remove(k.as_str()).map_err(|e| e.to_string())?;
                            }
                        }
                    }
                }
                w.commit().map_err(|e| e.to_string())
            })();
            if let Err(e) = result {
                warn!(path = %path.display(), "device database write failed: {e}");
            }
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_of_one_device_coalesce_and_a_full_queue_drops_counted() {
        let mut q = WriteQueue { ops: HashMap::new(), max: 2, closed: false };
        assert!(q.push("a", Op::Put(b"1".to_vec())));
        assert!(q.push("a", Op::Put(b"2".to_vec())), "the newest write of a device replaces the queued one");
        assert!(q.push("b", Op::Delete));
        assert!(!q.push("c", Op::Delete), "a third device is dropped");
        assert_eq!(q.ops.get("a"), Some(&Op::Put(b"2".to_vec())));
        assert!(q.push("b", Op::Put(b"3".to_vec())), "a queued device still takes its newest write");
    }

    #[test]
    fn a_dropped_write_is_counted() {
        // No writer thread: the queue stays as filled.
        let counters = Arc::new(GbCounters::default());
        let shared = Arc::new(Shared {
            queue: Mutex::new(WriteQueue { ops: HashMap::new(), max: 1, closed: false }),
            ready: Condvar::new(),
        });
        let log = Mutex::new(RateLimit::new(Duration::from_secs(10)));
        let store = Store { inner: Some(Arc::new(Handle { shared, counters: counters.clone(), log })), db: None };
        store.delete("x");
        store.delete("x");
        assert_eq!(counters.store_writes_dropped.load(Ordering::Relaxed), 0);
        store.delete("y");
        store.delete("z");
        assert_eq!(counters.store_writes_dropped.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_last_handle_lets_the_writer_commit_and_release_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let counters = Arc::new(GbCounters::default());
        let (store, _) = Store::open(&path, counters.clone()).unwrap();
        let rec: DeviceRecord = serde_json::from_value(serde_json::json!({
            "id": "d1", "online": false, "transport": "udp", "addr": "127.0.0.1:5060", "contact": "",
            "user_agent": "", "expires": 0, "registered_at": 0, "last_keepalive": 0, "info": null,
            "channels": [], "catalog_at": null
        }))
        .unwrap();
        store.put(&rec);
        drop(store);
        let t0 = Instant::now();
        let stored = loop {
            match Store::open(&path, counters.clone()) {
                Ok((_, stored)) => break stored,
                Err(_) => {
                    assert!(t0.elapsed() < Duration::from_secs(5), "the writer lets go of the file");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        assert_eq!(stored.len(), 1, "the queued write was committed before the writer left");
    }
}
