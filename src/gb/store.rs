//! Persistence of registrations and device facts (redb, pure Rust, one file).
//!
//! The signalling task never waits on the disk: it hands records to a writer thread through a
//! bounded queue, and the thread commits whatever has queued up in one transaction.
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use redb::{Database, ReadableTable, TableDefinition};
use tracing::{info, warn};

use super::DeviceRecord;

const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
/// Pending writes; beyond it the oldest updates are dropped (the next change rewrites the device).
const QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {message}")]
    Db { path: PathBuf, message: String },
}

enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// A handle to the writer thread; `None` path = memory only (every call is a no-op).
#[derive(Clone)]
pub struct Store {
    tx: Option<mpsc::SyncSender<Op>>,
}

impl Store {
    pub fn memory() -> Store {
        Store { tx: None }
    }

    /// Opens (or creates) the database and loads every stored device.
    pub fn open(path: &Path) -> Result<(Store, Vec<DeviceRecord>), StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Db { path: path.to_path_buf(), message: e.to_string() };
        let db = Database::create(path).map_err(|e| err(&e))?;
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
        let (tx, rx) = mpsc::sync_channel::<Op>(QUEUE);
        let p = path.to_path_buf();
        std::thread::Builder::new()
            .name("gb-store".into())
            .spawn(move || writer(db, rx, p))
            .map_err(|e| StoreError::Db { path: path.to_path_buf(), message: e.to_string() })?;
        Ok((Store { tx: Some(tx) }, devices))
    }

    pub fn put(&self, d: &DeviceRecord) {
        if let Some(tx) = &self.tx {
            if let Ok(bytes) = serde_json::to_vec(d) {
                let _ = tx.try_send(Op::Put(d.id.clone(), bytes));
            }
        }
    }

    pub fn delete(&self, id: &str) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Op::Delete(id.to_string()));
        }
    }
}

fn writer(db: Database, rx: mpsc::Receiver<Op>, path: PathBuf) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        let result = (|| -> Result<(), String> {
            let w = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut t = w.open_table(DEVICES).map_err(|e| e.to_string())?;
                for op in &ops {
                    match op {
                        Op::Put(k, v) => {
                            t.insert(k.as_str(), v.as_slice()).map_err(|e| e.to_string())?;
                        }
                        Op::Delete(k) => {
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
}
