//! Channels kept across restarts: a `channels` table in the `[sip] db` redb file (D100).
//!
//! redb opens a file once per process, so the table lives in the database the GB store already
//! opened (shared `Arc<Database>`). Writes happen on API calls only (a control center creates a
//! channel now and then, not per packet): each commits before the API answers, off the reactor.
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::spec::ChannelSpec;

const CHANNELS: TableDefinition<&str, &[u8]> = TableDefinition::new("channels");

/// One stored channel: what was asked and whether it should run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub spec: ChannelSpec,
    /// Started (and not stopped): started again after a restart.
    pub run: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("channel database: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// `None`: memory only.
#[derive(Clone)]
pub struct ChannelStore {
    db: Option<Arc<Database>>,
}

impl ChannelStore {
    pub fn new(db: Option<Arc<Database>>) -> ChannelStore {
        ChannelStore { db }
    }

    pub fn persistent(&self) -> bool {
        self.db.is_some()
    }

    /// Every stored channel (unreadable rows are logged and skipped).
    pub fn load(&self) -> Result<Vec<Stored>, StoreError> {
        let Some(db) = &self.db else { return Ok(Vec::new()) };
        let w = db.begin_write().map_err(err)?;
        w.open_table(CHANNELS).map_err(err)?;
        w.commit().map_err(err)?;
        let r = db.begin_read().map_err(err)?;
        let t = r.open_table(CHANNELS).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            match serde_json::from_slice::<Stored>(v.value()) {
                Ok(s) => out.push(s),
                Err(e) => warn!(channel = k.value(), "stored channel unreadable, skipped: {e}"),
            }
        }
        Ok(out)
    }

    /// Writes (or with `None` deletes) channel `id` and commits, on a blocking thread.
    pub async fn write(&self, id: &str, value: Option<&Stored>) -> Result<(), StoreError> {
        let Some(db) = self.db.clone() else { return Ok(()) };
        let bytes = value.map(serde_json::to_vec).transpose().map_err(err)?;
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            let w = db.begin_write().map_err(err)?;
            {
                let mut t = w.open_table(CHANNELS).map_err(err)?;
                match &bytes {
                    Some(b) => {
                        t.insert(id.as_str(), b.as_slice()).map_err(err)?;
                    }
                    None => {
                        t.remove(id.as_str()).map_err(err)?;
                    }
                }
            }
            w.commit().map_err(err)
        })
        .await
        .map_err(err)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str) -> ChannelSpec {
        serde_json::from_value(serde_json::json!({"id": id, "source": {"rtp": {"ssrc": "0600000001"}}})).unwrap()
    }

    #[tokio::test]
    async fn channels_written_come_back_from_the_file_and_deleted_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.redb");
        {
            let store = ChannelStore::new(Some(Arc::new(Database::create(&path).unwrap())));
            assert!(store.load().unwrap().is_empty());
            store.write("a", Some(&Stored { spec: spec("a"), run: true })).await.unwrap();
            store.write("b", Some(&Stored { spec: spec("b"), run: false })).await.unwrap();
            store.write("a", Some(&Stored { spec: spec("a"), run: false })).await.unwrap();
            store.write("b", None).await.unwrap();
        }
        let store = ChannelStore::new(Some(Arc::new(Database::create(&path).unwrap())));
        let back = store.load().unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].spec.id.as_str(), back[0].run), ("a", false), "the newest write of a");
        // Memory only: nothing kept, nothing fails.
        let memory = ChannelStore::new(None);
        memory.write("a", Some(&back[0])).await.unwrap();
        assert!(!memory.persistent() && memory.load().unwrap().is_empty());
    }
}
