//! The Raft log in its own redb file. Every append is one write transaction committed with
//! immediate durability (fsync) before openraft is told the entries are flushed; since openraft
//! hands over every entry proposed while the previous flush ran, concurrent client writes share
//! one fsync (group commit).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_api::pb::raft as pb;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::convert;
use crate::types::{Entry, LogId, TypeConfig, Vote};
use crate::StoreError;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_PURGED: &str = "last_purged";
const KEY_IDENTITY: &str = "identity";

/// The log store; cheap to clone (clones share the database) and its own log reader.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    stats: Arc<AppendStats>,
}

/// Counters that show group commit at work: entries appended per durable flush.
#[derive(Default)]
pub struct AppendStats {
    pub flushes: std::sync::atomic::AtomicU64,
    pub entries: std::sync::atomic::AtomicU64,
}

fn other(path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("raft log {}: {e}", path.display()))
}

impl LogStore {
    /// Open the log file, creating it if absent, and check (or on first use, record) that it
    /// belongs to `cluster_id` / `node_id`.
    pub fn open(path: &Path, cluster_id: &str, node_id: u64) -> Result<LogStore, StoreError> {
        let db = crate::open_db(path)?;
        let txn = db.begin_write().map_err(|e| StoreError::io(path, e))?;
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| StoreError::corrupt(path, e))?;
            txn.open_table(LOG)
                .map_err(|e| StoreError::corrupt(path, e))?;
            let found = meta
                .get(KEY_IDENTITY)
                .map_err(|e| StoreError::corrupt(path, e))?;
            match found {
                Some(v) => {
                    let id = pb::DataDirIdentity::decode(v.value())
                        .map_err(|e| StoreError::corrupt(path, format!("identity record: {e}")))?;
                    if id.cluster_id != cluster_id || id.node_id != node_id {
                        return Err(StoreError::WrongIdentity {
                            dir: path.parent().unwrap_or(path).display().to_string(),
                            found_cluster: id.cluster_id,
                            found_node: id.node_id,
                            want_cluster: cluster_id.to_string(),
                            want_node: node_id,
                        });
                    }
                }
                None => {
                    drop(found);
                    let id = pb::DataDirIdentity {
                        cluster_id: cluster_id.to_string(),
                        node_id,
                    };
                    meta.insert(KEY_IDENTITY, id.encode_to_vec().as_slice())
                        .map_err(|e| StoreError::io(path, e))?;
                }
            }
        }
        txn.commit().map_err(|e| StoreError::io(path, e))?;
        let store = LogStore {
            db: Arc::new(db),
            path: Arc::new(path.to_path_buf()),
            stats: Arc::new(AppendStats::default()),
        };
        // Decode every stored entry header once: a damaged log is found now, not mid-election.
        store.verify().map_err(|e| StoreError::corrupt(path, e))?;
        Ok(store)
    }

    fn verify(&self) -> io::Result<()> {
        let txn = self.db.begin_read().map_err(|e| other(&self.path, e))?;
        let t = txn.open_table(LOG).map_err(|e| other(&self.path, e))?;
        for item in t.iter().map_err(|e| other(&self.path, e))? {
            let (k, v) = item.map_err(|e| other(&self.path, e))?;
            let e = decode_entry(&self.path, v.value())?;
            if e.log_id.index != k.value() {
                return Err(other(
                    &self.path,
                    format!("entry at key {} claims index {}", k.value(), e.log_id.index),
                ));
            }
        }
        Ok(())
    }

    fn read_meta<M: Message + Default>(&self, key: &str) -> io::Result<Option<M>> {
        let txn = self.db.begin_read().map_err(|e| other(&self.path, e))?;
        let t = txn.open_table(META).map_err(|e| other(&self.path, e))?;
        let Some(v) = t.get(key).map_err(|e| other(&self.path, e))? else {
            return Ok(None);
        };
        M::decode(v.value())
            .map(Some)
            .map_err(|e| other(&self.path, format!("meta {key}: {e}")))
    }

    /// Run a write transaction on a blocking thread and commit it durably.
    async fn write<F>(&self, f: F) -> io::Result<()>
    where
        F: FnOnce(&mut redb::WriteTransaction) -> Result<(), String> + Send + 'static,
    {
        let db = self.db.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write().map_err(|e| other(&path, e))?;
            f(&mut txn).map_err(|e| other(&path, e))?;
            txn.commit().map_err(|e| other(&path, e))
        })
        .await
        .map_err(|e| other(&self.path, e))?
    }

    /// (durable flushes, entries appended) since start.
    pub fn append_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.stats.flushes.load(Relaxed),
            self.stats.entries.load(Relaxed),
        )
    }

    /// The number of entries currently kept (for metrics).
    pub fn entry_count(&self) -> io::Result<u64> {
        let txn = self.db.begin_read().map_err(|e| other(&self.path, e))?;
        let t = txn.open_table(LOG).map_err(|e| other(&self.path, e))?;
        t.len().map_err(|e| other(&self.path, e))
    }
}

fn decode_entry(path: &Path, bytes: &[u8]) -> io::Result<Entry> {
    let e = pb::Entry::decode(bytes).map_err(|e| other(path, format!("undecodable entry: {e}")))?;
    convert::entry_from_pb(e).map_err(|e| other(path, e))
}

fn to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let txn = self.db.begin_read().map_err(|e| other(&self.path, e))?;
        let t = txn.open_table(LOG).map_err(|e| other(&self.path, e))?;
        let mut out = Vec::new();
        for item in t
            .range::<u64>(to_bounds(&range))
            .map_err(|e| other(&self.path, e))?
        {
            let (_, v) = item.map_err(|e| other(&self.path, e))?;
            out.push(decode_entry(&self.path, v.value())?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        match self.read_meta::<pb::Vote>(KEY_VOTE)? {
            None => Ok(None),
            Some(v) => convert::vote_from_pb(Some(&v))
                .map(Some)
                .map_err(|e| other(&self.path, e)),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged = match self.read_meta::<pb::LogId>(KEY_PURGED)? {
            Some(l) => Some(convert::log_id_from_pb(&l).map_err(|e| other(&self.path, e))?),
            None => None,
        };
        let txn = self.db.begin_read().map_err(|e| other(&self.path, e))?;
        let t = txn.open_table(LOG).map_err(|e| other(&self.path, e))?;
        let last = match t.last().map_err(|e| other(&self.path, e))? {
            Some((_, v)) => Some(decode_entry(&self.path, v.value())?.log_id),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = convert::vote_to_pb(vote).encode_to_vec();
        self.write(move |txn| {
            let mut t = txn.open_table(META).map_err(|e| e.to_string())?;
            t.insert(KEY_VOTE, bytes.as_slice())
                .map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.log_id.index, convert::entry_to_pb(&e).encode_to_vec()))
            .collect();
        let count = encoded.len() as u64;
        let res = self
            .write(move |txn| {
                if crate::planted::active("ack-before-fsync") {
                    txn.set_durability(redb::Durability::None)
                        .map_err(|e| e.to_string())?;
                }
                let mut t = txn.open_table(LOG).map_err(|e| e.to_string())?;
                for (i, b) in &encoded {
                    t.insert(*i, b.as_slice()).map_err(|e| e.to_string())?;
                }
                crate::failpoints::point!("log-append-before-fsync");
                Ok(())
            })
            .await;
        match res {
            Ok(()) => {
                crate::failpoints::point!("log-append-after-fsync");
                use std::sync::atomic::Ordering::Relaxed;
                self.stats.flushes.fetch_add(1, Relaxed);
                self.stats.entries.fetch_add(count, Relaxed);
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        self.write(move |txn| {
            let mut t = txn.open_table(LOG).map_err(|e| e.to_string())?;
            t.retain_in(from.., |_, _| false)
                .map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let bytes = convert::log_id_to_pb(&log_id).encode_to_vec();
        let upto = log_id.index;
        self.write(move |txn| {
            let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
            meta.insert(KEY_PURGED, bytes.as_slice())
                .map_err(|e| e.to_string())?;
            let mut t = txn.open_table(LOG).map_err(|e| e.to_string())?;
            t.retain_in(..=upto, |_, _| false)
                .map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_data_dir_of_another_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("raft-log.redb");
        drop(LogStore::open(&p, "alpha", 1).unwrap());
        let e = LogStore::open(&p, "beta", 1).err().unwrap();
        assert!(e.to_string().contains("cluster \"alpha\" node 1"), "{e}");
        let e = LogStore::open(&p, "alpha", 2).err().unwrap();
        assert!(matches!(e, StoreError::WrongIdentity { .. }));
        assert!(LogStore::open(&p, "alpha", 1).is_ok());
    }

    #[test]
    fn refuses_a_corrupted_file_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("raft-log.redb");
        drop(LogStore::open(&p, "alpha", 1).unwrap());
        let mut bytes = std::fs::read(&p).unwrap();
        for b in bytes.iter_mut().take(4096) {
            *b = 0xA5;
        }
        std::fs::write(&p, bytes).unwrap();
        let e = LogStore::open(&p, "alpha", 1).err().unwrap();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("raft-log.redb"), "{e}");
    }
}
