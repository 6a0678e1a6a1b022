//! The state machine in its own redb file: objects, the bounded watch history and the Raft
//! bookkeeping (`last_applied`, membership) change together in one write transaction per
//! applied batch, so a restart never applies an entry twice. Those commits are not fsync'd: the
//! Raft log is the durable record, and after a crash the state, its events and `last_applied`
//! are all as of the last durable commit and the rest is applied again from the log. Snapshots
//! force a durable commit of what they contain first, so the log is never purged past durable
//! state. A snapshot also carries the newest part of the watch history (bounded in bytes), and
//! a server that installs one keeps its own older history when the two join up, so a watch can
//! resume on a server that was just sent a snapshot.
//!
//! After each commit the applied entries are published on a bounded broadcast channel; watchers
//! that fall behind re-read the history table, so a slow watcher costs disk reads, not memory.

use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use flotilla_api::pb::api::{Object, ObjectKey, WatchEvent};
use flotilla_api::pb::raft as pb;
use flotilla_api::{keys, selector::Selector};
use flotilla_state::{apply_command, ObjectTable};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{broadcast, watch};

use crate::convert;
use crate::types::{LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};
use crate::StoreError;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// (revision, position in the revision) → encoded WatchEvent.
const EVENTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const KEY_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "membership";
/// History holds every event with a revision greater than this (u64, little endian).
const KEY_COMPACT: &str = "compact_revision";

/// What one applied log entry published to watchers.
#[derive(Debug)]
pub struct AppliedBatch {
    /// The entry's log index: the revision of all its events.
    pub revision: u64,
    pub events: Vec<WatchEvent>,
    /// The state was replaced by a snapshot: watchers behind `revision` cannot continue.
    pub reset: bool,
    /// Pod events by `spec.nodeName`, built by the first watcher that asks: every agent
    /// watches its own node's pods, and thousands of them each filtering every event of an
    /// entry would cost O(agents × events) per entry (Kubernetes' watch cache indexes pod
    /// watchers by node name for the same reason).
    by_node: std::sync::OnceLock<std::collections::HashMap<String, Vec<usize>>>,
}

impl AppliedBatch {
    pub fn new(revision: u64, events: Vec<WatchEvent>, reset: bool) -> AppliedBatch {
        AppliedBatch {
            revision,
            events,
            reset,
            by_node: std::sync::OnceLock::new(),
        }
    }

    /// The indexes in `events` of the Pod events whose pod has `spec.nodeName == node`.
    pub fn pod_events_on_node(&self, node: &str) -> &[usize] {
        let index = self.by_node.get_or_init(|| {
            let mut index: std::collections::HashMap<String, Vec<usize>> = Default::default();
            for (i, ev) in self.events.iter().enumerate() {
                let Some(o) = &ev.object else { continue };
                if let Some(flotilla_api::pb::api::object::Body::Pod(p)) = &o.body {
                    if let Some(n) = p.spec.as_ref().map(|s| &s.node_name) {
                        if !n.is_empty() {
                            index.entry(n.clone()).or_default().push(i);
                        }
                    }
                }
            }
            index
        });
        index.get(node).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// One applied entry: its revision, the command result (normal entries) and its events.
type AppliedEntry = (u64, Option<pb::CommandResult>, Vec<WatchEvent>);

/// Settings of the state machine that are local to a server (none affects apply).
#[derive(Debug, Clone)]
pub struct StateMachineConfig {
    /// Revisions of watch history kept; older ones are compacted.
    pub history_revisions: u64,
    /// Capacity of the applied-entry broadcast; a watcher further behind re-reads history.
    pub broadcast_capacity: usize,
    /// Encoded watch history carried in a snapshot, newest revisions first, whole revisions
    /// only: a server that installs the snapshot keeps serving watches resumed from there.
    pub snapshot_history_max_bytes: usize,
}

impl Default for StateMachineConfig {
    fn default() -> Self {
        StateMachineConfig {
            history_revisions: 100_000,
            broadcast_capacity: 4096,
            snapshot_history_max_bytes: 32 * 1024 * 1024,
        }
    }
}

struct Inner {
    db: Database,
    path: PathBuf,
    snapshot_path: PathBuf,
    config: StateMachineConfig,
    events_tx: broadcast::Sender<Arc<AppliedBatch>>,
    applied_tx: watch::Sender<u64>,
    current_snapshot: Mutex<Option<(SnapshotMeta, Arc<Vec<u8>>)>>,
    /// Snapshots received from a leader and installed since start (for metrics and tests).
    snapshots_installed: std::sync::atomic::AtomicU64,
}

/// The openraft state machine; clones share one database.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Inner>,
}

/// Read access for the API layer: objects, history, revision, and the applied-entry feed.
#[derive(Clone)]
pub struct StoreReader {
    inner: Arc<Inner>,
}

/// A watch cannot start from a revision the history no longer holds.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("revision {requested} has been compacted; the oldest revision a watch can start from is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn err(path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("state file {}: {e}", path.display()))
}

fn decode<M: Message + Default>(path: &Path, what: &str, bytes: &[u8]) -> io::Result<M> {
    M::decode(bytes).map_err(|e| err(path, format!("undecodable {what}: {e}")))
}

/// The object table of an open write transaction, as `flotilla-state` sees it.
struct RedbObjects<'a, 't> {
    table: &'a mut redb::Table<'t, &'static str, &'static [u8]>,
    path: &'a Path,
}

impl ObjectTable for RedbObjects<'_, '_> {
    type Error = io::Error;
    fn get(&self, key: &str) -> io::Result<Option<Object>> {
        match self.table.get(key).map_err(|e| err(self.path, e))? {
            Some(v) => Ok(Some(decode(self.path, "object", v.value())?)),
            None => Ok(None),
        }
    }
    fn put(&mut self, key: &str, object: &Object) -> io::Result<()> {
        self.table
            .insert(key, object.encode_to_vec().as_slice())
            .map_err(|e| err(self.path, e))?;
        Ok(())
    }
    fn remove(&mut self, key: &str) -> io::Result<()> {
        self.table.remove(key).map_err(|e| err(self.path, e))?;
        Ok(())
    }
    fn keys_with_prefix(&self, prefix: &str, limit: usize) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for item in self.table.range(prefix..).map_err(|e| err(self.path, e))? {
            let (k, _) = item.map_err(|e| err(self.path, e))?;
            let k = k.value();
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push(k.to_string());
        }
        Ok(out)
    }
}

impl StateMachine {
    /// Open (or create) the state file and load the last snapshot, if any.
    pub fn open(
        path: &Path,
        snapshot_path: &Path,
        config: StateMachineConfig,
    ) -> Result<StateMachine, StoreError> {
        let db = crate::open_db(path)?;
        let txn = db.begin_write().map_err(|e| StoreError::io(path, e))?;
        for t in [OBJECTS, META] {
            txn.open_table(t)
                .map_err(|e| StoreError::corrupt(path, e))?;
        }
        txn.open_table(EVENTS)
            .map_err(|e| StoreError::corrupt(path, e))?;
        txn.commit().map_err(|e| StoreError::io(path, e))?;

        let current_snapshot = match std::fs::read(snapshot_path) {
            Ok(bytes) => {
                let stored = pb::StoredSnapshot::decode(bytes.as_slice())
                    .map_err(|e| StoreError::corrupt(snapshot_path, e))?;
                let meta = stored
                    .meta
                    .as_ref()
                    .ok_or_else(|| StoreError::corrupt(snapshot_path, "no meta"))
                    .and_then(|m| {
                        convert::snapshot_meta_from_pb(m)
                            .map_err(|e| StoreError::corrupt(snapshot_path, e))
                    })?;
                Some((meta, Arc::new(stored.data)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io(snapshot_path, e)),
        };

        let (events_tx, _) = broadcast::channel(config.broadcast_capacity.max(16));
        let (applied_tx, _) = watch::channel(0);
        let sm = StateMachine {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                snapshot_path: snapshot_path.to_path_buf(),
                config,
                events_tx,
                applied_tx,
                current_snapshot: Mutex::new(current_snapshot),
                snapshots_installed: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        let (applied, _) = sm
            .read_applied_state()
            .map_err(|e| StoreError::corrupt(path, e))?;
        sm.inner
            .applied_tx
            .send_replace(applied.map(|l| l.index).unwrap_or(0));
        Ok(sm)
    }

    pub fn reader(&self) -> StoreReader {
        StoreReader {
            inner: self.inner.clone(),
        }
    }

    fn read_applied_state(&self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let p = &self.inner.path;
        let txn = self.inner.db.begin_read().map_err(|e| err(p, e))?;
        let meta = txn.open_table(META).map_err(|e| err(p, e))?;
        let applied = match meta.get(KEY_APPLIED).map_err(|e| err(p, e))? {
            Some(v) => Some(
                convert::log_id_from_pb(&decode::<pb::LogId>(p, "last_applied", v.value())?)
                    .map_err(|e| err(p, e))?,
            ),
            None => None,
        };
        let membership =
            match meta.get(KEY_MEMBERSHIP).map_err(|e| err(p, e))? {
                Some(v) => convert::stored_membership_from_pb(Some(
                    &decode::<pb::StoredMembership>(p, "membership", v.value())?,
                ))
                .map_err(|e| err(p, e))?,
                None => StoredMembership::default(),
            };
        Ok((applied, membership))
    }

    /// Apply committed entries in one durable transaction; returns per entry its revision, the
    /// command result (normal entries) and its events.
    fn apply_blocking(
        inner: &Inner,
        entries: Vec<crate::types::Entry>,
    ) -> io::Result<Vec<AppliedEntry>> {
        let p = inner.path.as_path();
        let mut out = Vec::with_capacity(entries.len());
        let mut txn = inner.db.begin_write().map_err(|e| err(p, e))?;
        // Not fsync'd: the entries are durable in the Raft log, and a crash that loses this
        // commit re-applies them from there (objects, events and last_applied go back
        // together). The log is never purged past durable state: see build_snapshot_blocking.
        txn.set_durability(redb::Durability::None)
            .map_err(|e| err(p, e))?;
        {
            let mut objects = txn.open_table(OBJECTS).map_err(|e| err(p, e))?;
            let mut events = txn.open_table(EVENTS).map_err(|e| err(p, e))?;
            let mut meta = txn.open_table(META).map_err(|e| err(p, e))?;
            let mut last = None;
            for entry in entries {
                let index = entry.log_id.index;
                match &entry.payload {
                    EntryPayload::Normal(encoded) => {
                        let cmd = encoded.decode().map_err(|e| {
                            err(
                                p,
                                format!(
                                    "committed entry {index} holds an undecodable command: {e}"
                                ),
                            )
                        })?;
                        let mut t = RedbObjects {
                            table: &mut objects,
                            path: p,
                        };
                        let applied = apply_command(&mut t, index, &cmd)?;
                        for (seq, ev) in applied.events.iter().enumerate() {
                            events
                                .insert((index, seq as u32), ev.encode_to_vec().as_slice())
                                .map_err(|e| err(p, e))?;
                        }
                        out.push((
                            index,
                            Some(pb::CommandResult {
                                results: applied.results,
                            }),
                            applied.events,
                        ));
                    }
                    EntryPayload::Membership(m) => {
                        let sm = StoredMembership::new(Some(entry.log_id), m.clone());
                        meta.insert(
                            KEY_MEMBERSHIP,
                            convert::stored_membership_to_pb(&sm)
                                .encode_to_vec()
                                .as_slice(),
                        )
                        .map_err(|e| err(p, e))?;
                        out.push((index, None, Vec::new()));
                    }
                    EntryPayload::Blank => out.push((index, None, Vec::new())),
                }
                last = Some(entry.log_id);
            }
            if let Some(last) = last {
                meta.insert(
                    KEY_APPLIED,
                    convert::log_id_to_pb(&last).encode_to_vec().as_slice(),
                )
                .map_err(|e| err(p, e))?;
                let compact = read_compact(&meta, p)?;
                let cutoff = last.index.saturating_sub(inner.config.history_revisions);
                if cutoff > compact {
                    events
                        .retain_in((0u64, 0u32)..=(cutoff, u32::MAX), |_, _| false)
                        .map_err(|e| err(p, e))?;
                    meta.insert(KEY_COMPACT, cutoff.to_le_bytes().as_slice())
                        .map_err(|e| err(p, e))?;
                }
            }
        }
        crate::failpoints::point!("apply-before-commit");
        txn.commit().map_err(|e| err(p, e))?;
        crate::failpoints::point!("apply-after-commit");
        Ok(out)
    }

    fn build_snapshot_blocking(inner: &Inner) -> io::Result<Snapshot> {
        let p = inner.path.as_path();
        // One read transaction: the objects and the applied index are one consistent state.
        let txn = inner.db.begin_read().map_err(|e| err(p, e))?;
        // Make everything this read sees durable before the snapshot exists: openraft purges
        // the log behind a snapshot, and applied state is committed without fsync.
        let flush = inner.db.begin_write().map_err(|e| err(p, e))?;
        flush.commit().map_err(|e| err(p, e))?;
        crate::failpoints::point!("snapshot-build");
        let meta_t = txn.open_table(META).map_err(|e| err(p, e))?;
        let last_applied = match meta_t.get(KEY_APPLIED).map_err(|e| err(p, e))? {
            Some(v) => Some(decode::<pb::LogId>(p, "last_applied", v.value())?),
            None => None,
        };
        let membership = match meta_t.get(KEY_MEMBERSHIP).map_err(|e| err(p, e))? {
            Some(v) => Some(decode::<pb::StoredMembership>(p, "membership", v.value())?),
            None => None,
        };
        let objects_t = txn.open_table(OBJECTS).map_err(|e| err(p, e))?;
        let mut objects = Vec::with_capacity(objects_t.len().map_err(|e| err(p, e))? as usize);
        for item in objects_t.iter().map_err(|e| err(p, e))? {
            let (_, v) = item.map_err(|e| err(p, e))?;
            objects.push(decode::<Object>(p, "object", v.value())?);
        }
        let (history, history_after) = history_tail(
            &txn.open_table(EVENTS).map_err(|e| err(p, e))?,
            read_compact(&meta_t, p)?,
            inner.config.snapshot_history_max_bytes,
            p,
        )?;
        let data = pb::SnapshotData {
            last_applied,
            membership: membership.clone(),
            objects,
            history,
            history_after,
        }
        .encode_to_vec();
        let meta = SnapshotMeta {
            last_log_id: convert::opt_log_id_from_pb(last_applied.as_ref())
                .map_err(|e| err(p, e))?,
            last_membership: convert::stored_membership_from_pb(membership.as_ref())
                .map_err(|e| err(p, e))?,
        };
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }

    /// Write the snapshot file atomically (temp file, fsync, rename, fsync directory).
    fn persist_snapshot(inner: &Inner, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let path = &inner.snapshot_path;
        let tmp = path.with_extension("tmp");
        let stored = pb::StoredSnapshot {
            meta: Some(convert::snapshot_meta_to_pb(meta)),
            data: data.to_vec(),
        };
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
        f.write_all(&stored.encode_to_vec())
            .map_err(|e| err(&tmp, e))?;
        f.sync_all().map_err(|e| err(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| err(path, e))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| err(dir, e))?;
        }
        Ok(())
    }

    /// Make `data` the current snapshot (in memory and on disk) unless a newer one already is.
    /// A build runs beside the state machine's worker, so it can finish after an install of a
    /// newer snapshot: one lock keeps the file writes apart (they share the temporary file)
    /// and the current snapshot from going back.
    fn keep_current(inner: &Inner, meta: &SnapshotMeta, data: &Arc<Vec<u8>>) -> io::Result<bool> {
        let mut current = inner
            .current_snapshot
            .lock()
            .map_err(|_| io::Error::other("snapshot lock poisoned"))?;
        if current
            .as_ref()
            .is_some_and(|(m, _)| m.last_log_id > meta.last_log_id)
        {
            return Ok(false);
        }
        Self::persist_snapshot(inner, meta, data)?;
        *current = Some((meta.clone(), data.clone()));
        Ok(true)
    }

    fn install_blocking(
        inner: &Inner,
        meta: &SnapshotMeta,
        data: &Arc<Vec<u8>>,
    ) -> io::Result<u64> {
        let p = inner.path.as_path();
        let snap: pb::SnapshotData = decode(p, "snapshot", data.as_slice())?;
        let revision = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        // A snapshot without history (or from before snapshots carried it) holds none.
        let history_after = if snap.history.is_empty() {
            revision
        } else {
            snap.history_after.min(revision)
        };
        let txn = inner.db.begin_write().map_err(|e| err(p, e))?;
        {
            let mut objects = txn.open_table(OBJECTS).map_err(|e| err(p, e))?;
            objects.retain(|_, _| false).map_err(|e| err(p, e))?;
            for o in &snap.objects {
                let k = keys::object_key(&o.key());
                objects
                    .insert(k.as_str(), o.encode_to_vec().as_slice())
                    .map_err(|e| err(p, e))?;
            }
            let mut events = txn.open_table(EVENTS).map_err(|e| err(p, e))?;
            let mut m = txn.open_table(META).map_err(|e| err(p, e))?;
            // Own history holds every event in (compact, applied]; applied entries are
            // committed, so where it overlaps the snapshot's history the two are the same.
            let own_compact = read_compact(&m, p)?;
            let own_applied = match m.get(KEY_APPLIED).map_err(|e| err(p, e))? {
                Some(v) => decode::<pb::LogId>(p, "last_applied", v.value())?.index,
                None => 0,
            };
            let compact = if own_applied >= history_after && own_compact <= history_after {
                events
                    .retain_in((history_after.saturating_add(1), 0u32).., |_, _| false)
                    .map_err(|e| err(p, e))?;
                own_compact
            } else {
                events.retain(|_, _| false).map_err(|e| err(p, e))?;
                history_after
            };
            let mut seq = (0u64, 0u32);
            for ev in &snap.history {
                if ev.revision <= history_after || ev.revision > revision {
                    return Err(err(
                        p,
                        format!(
                            "snapshot history holds revision {} outside ({history_after}, {revision}]",
                            ev.revision
                        ),
                    ));
                }
                seq = if seq.0 == ev.revision {
                    (ev.revision, seq.1 + 1)
                } else if ev.revision > seq.0 {
                    (ev.revision, 0)
                } else {
                    return Err(err(p, "snapshot history is not in revision order"));
                };
                events
                    .insert(seq, ev.encode_to_vec().as_slice())
                    .map_err(|e| err(p, e))?;
            }
            match &meta.last_log_id {
                Some(l) => m.insert(
                    KEY_APPLIED,
                    convert::log_id_to_pb(l).encode_to_vec().as_slice(),
                ),
                None => m.remove(KEY_APPLIED),
            }
            .map_err(|e| err(p, e))?;
            m.insert(
                KEY_MEMBERSHIP,
                convert::stored_membership_to_pb(&meta.last_membership)
                    .encode_to_vec()
                    .as_slice(),
            )
            .map_err(|e| err(p, e))?;
            m.insert(KEY_COMPACT, compact.to_le_bytes().as_slice())
                .map_err(|e| err(p, e))?;
        }
        txn.commit().map_err(|e| err(p, e))?;
        crate::failpoints::point!("snapshot-install-before-file");
        Self::keep_current(inner, meta, data)?;
        Ok(revision)
    }
}

/// The newest events, whole revisions, within `max_bytes` encoded; and the revision after
/// which the returned history is complete.
fn history_tail(
    events: &impl ReadableTable<(u64, u32), &'static [u8]>,
    compact: u64,
    max_bytes: usize,
    p: &Path,
) -> io::Result<(Vec<WatchEvent>, u64)> {
    let mut newest_first: Vec<WatchEvent> = Vec::new();
    let mut revision: Vec<WatchEvent> = Vec::new();
    let mut bytes = 0usize;
    let mut current = None;
    for item in events.iter().map_err(|e| err(p, e))?.rev() {
        let (k, v) = item.map_err(|e| err(p, e))?;
        let (rev, _) = k.value();
        if current != Some(rev) {
            // A revision is complete once a lower one starts: keep it only if it fits whole.
            newest_first.append(&mut revision);
            current = Some(rev);
        }
        bytes = bytes.saturating_add(v.value().len());
        if bytes > max_bytes {
            newest_first.reverse();
            return Ok((newest_first, rev));
        }
        // Within a revision the table is walked backwards too; reversed with the rest below.
        revision.push(decode(p, "event", v.value())?);
    }
    newest_first.append(&mut revision);
    newest_first.reverse();
    Ok((newest_first, compact))
}

fn read_compact(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    p: &Path,
) -> io::Result<u64> {
    Ok(match meta.get(KEY_COMPACT).map_err(|e| err(p, e))? {
        Some(v) => {
            let b: [u8; 8] = v
                .value()
                .try_into()
                .map_err(|_| err(p, "compact_revision is not 8 bytes"))?;
            u64::from_le_bytes(b)
        }
        None => 0,
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let inner = self.inner.clone();
        blocking(move || {
            let snap = Self::build_snapshot_blocking(&inner)?;
            let data = Arc::new(snap.snapshot.clone());
            let kept = Self::keep_current(&inner, &snap.meta, &data)?;
            tracing::info!(last = ?snap.meta.last_log_id, bytes = snap.snapshot.len(), kept, "built snapshot");
            Ok(snap)
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.read_applied_state()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            batch.push(entry);
            responders.push(responder);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let inner = self.inner.clone();
        let applied = blocking(move || Self::apply_blocking(&inner, batch)).await?;
        // Durable now: answer clients, then tell watchers.
        let mut last = 0;
        for ((revision, result, events), responder) in applied.into_iter().zip(responders) {
            if let Some(r) = responder {
                r.send(result.unwrap_or_default());
            }
            // No receiver is fine: nobody is watching.
            let _ = self
                .inner
                .events_tx
                .send(Arc::new(AppliedBatch::new(revision, events, false)));
            last = revision;
        }
        self.inner.applied_tx.send_replace(last);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let inner = self.inner.clone();
        let m = meta.clone();
        let data = Arc::new(snapshot);
        let revision = blocking(move || Self::install_blocking(&inner, &m, &data)).await?;
        self.inner
            .snapshots_installed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(revision, "installed snapshot");
        let _ = self
            .inner
            .events_tx
            .send(Arc::new(AppliedBatch::new(revision, Vec::new(), true)));
        self.inner.applied_tx.send_replace(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let guard = self
            .inner
            .current_snapshot
            .lock()
            .map_err(|_| io::Error::other("snapshot lock poisoned"))?;
        Ok(guard.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: data.as_ref().clone(),
        }))
    }
}

/// A page of objects from [`StoreReader::list`].
pub struct ListPage {
    pub items: Vec<Object>,
    pub revision: u64,
    /// The store key to continue after, when more items follow.
    pub next_key: Option<String>,
}

/// Events from [`StoreReader::history_after`]: whole revisions, in order.
pub struct HistoryPage {
    pub events: Vec<WatchEvent>,
    /// The applied revision at the time of the read: every event up to it is in `events` unless
    /// `more` is set.
    pub revision: u64,
    pub more: bool,
}

impl StoreReader {
    /// The last applied revision.
    pub fn revision(&self) -> u64 {
        *self.inner.applied_tx.borrow()
    }

    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.inner.applied_tx.subscribe()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AppliedBatch>> {
        self.inner.events_tx.subscribe()
    }

    pub fn snapshots_installed(&self) -> u64 {
        self.inner
            .snapshots_installed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn watcher_count(&self) -> usize {
        self.inner.events_tx.receiver_count()
    }

    fn applied_in(
        &self,
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> io::Result<u64> {
        let p = &self.inner.path;
        Ok(match meta.get(KEY_APPLIED).map_err(|e| err(p, e))? {
            Some(v) => decode::<pb::LogId>(p, "last_applied", v.value())?.index,
            None => 0,
        })
    }

    /// One object and the revision the read reflects, from one read transaction.
    pub fn get(&self, key: &ObjectKey) -> io::Result<(Option<Object>, u64)> {
        let p = &self.inner.path;
        let txn = self.inner.db.begin_read().map_err(|e| err(p, e))?;
        let revision = self.applied_in(&txn.open_table(META).map_err(|e| err(p, e))?)?;
        let t = txn.open_table(OBJECTS).map_err(|e| err(p, e))?;
        let obj = match t
            .get(keys::object_key(key).as_str())
            .map_err(|e| err(p, e))?
        {
            Some(v) => Some(decode(p, "object", v.value())?),
            None => None,
        };
        Ok((obj, revision))
    }

    /// Objects of `kind` (in `namespace`, or all when empty) matching `selector`, in key order,
    /// starting after `after_key`, at most `limit`.
    pub fn list(
        &self,
        kind: &str,
        namespace: &str,
        selector: &Selector,
        limit: usize,
        after_key: Option<&str>,
    ) -> io::Result<ListPage> {
        let p = &self.inner.path;
        let txn = self.inner.db.begin_read().map_err(|e| err(p, e))?;
        let revision = self.applied_in(&txn.open_table(META).map_err(|e| err(p, e))?)?;
        let t = txn.open_table(OBJECTS).map_err(|e| err(p, e))?;
        let prefix = keys::list_prefix(kind, namespace);
        let start = match after_key {
            Some(k) => Bound::Excluded(k),
            None => Bound::Included(prefix.as_str()),
        };
        let mut items = Vec::new();
        let mut next_key = None;
        for item in t
            .range::<&str>((start, Bound::Unbounded))
            .map_err(|e| err(p, e))?
        {
            let (k, v) = item.map_err(|e| err(p, e))?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            if items.len() == limit {
                // Only report a continuation when something follows.
                next_key = Some(keys_before(&items, kind));
                break;
            }
            let o: Object = decode(p, "object", v.value())?;
            if selector.matches_object(&o) {
                items.push(o);
            }
        }
        Ok(ListPage {
            items,
            revision,
            next_key,
        })
    }

    /// Events with a revision greater than `after`, whole revisions only, about `max_events`.
    pub fn history_after(
        &self,
        after: u64,
        max_events: usize,
    ) -> Result<HistoryPage, HistoryError> {
        let p = &self.inner.path;
        let txn = self.inner.db.begin_read().map_err(|e| err(p, e))?;
        let meta = txn.open_table(META).map_err(|e| err(p, e))?;
        let revision = self.applied_in(&meta)?;
        let oldest = read_compact(&meta, p)?;
        if after < oldest {
            return Err(HistoryError::Compacted {
                requested: after,
                oldest,
            });
        }
        let t = txn.open_table(EVENTS).map_err(|e| err(p, e))?;
        let mut events: Vec<WatchEvent> = Vec::new();
        let mut more = false;
        let start = after.saturating_add(1);
        for item in t.range((start, 0u32)..).map_err(|e| err(p, e))? {
            let (k, v) = item.map_err(|e| err(p, e))?;
            let (rev, _) = k.value();
            if events.len() >= max_events && events.last().is_some_and(|l| l.revision != rev) {
                more = true;
                break;
            }
            events.push(decode(p, "event", v.value())?);
        }
        Ok(HistoryPage {
            events,
            revision,
            more,
        })
    }
}

fn keys_before(items: &[Object], _kind: &str) -> String {
    items
        .last()
        .map(|o| keys::object_key(&o.key()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_applied_batch_indexes_pod_events_by_node() {
        use flotilla_api::pb::api::{object::Body, Pod, PodSpec};
        let pod = |name: &str, node: &str| WatchEvent {
            object: Some(Object {
                kind: "Pod".into(),
                body: Some(Body::Pod(Pod {
                    spec: Some(PodSpec {
                        node_name: node.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                metadata: Some(flotilla_api::pb::api::ObjectMeta {
                    name: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let b = AppliedBatch::new(
            7,
            vec![pod("a", "n1"), pod("b", ""), pod("c", "n2"), pod("d", "n1")],
            false,
        );
        assert_eq!(b.pod_events_on_node("n1"), &[0, 3]);
        assert_eq!(b.pod_events_on_node("n2"), &[2]);
        assert!(b.pod_events_on_node("").is_empty());
        assert!(b.pod_events_on_node("n3").is_empty());
    }
    use flotilla_api::pb::api::{
        object::Body, write::Op, ConfigMap, DeleteRequest, EventType, ObjectMeta, Write,
    };
    use openraft::vote::RaftLeaderId;

    fn cm(name: &str, app: &str) -> Object {
        Object {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                labels: [("app".to_string(), app.to_string())].into(),
                ..Default::default()
            }),
            body: Some(Body::ConfigMap(ConfigMap::default())),
        }
    }

    fn entry(index: u64, ops: Vec<Op>) -> crate::types::Entry {
        crate::types::Entry {
            log_id: LogId::new(crate::types::LeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::types::EncodedCommand::encode(&pb::Command {
                timestamp_ms: 1,
                writes: ops
                    .into_iter()
                    .map(|op| Write {
                        op: Some(op),
                        fence: None,
                    })
                    .collect(),
            })),
        }
    }

    async fn apply(sm: &mut StateMachine, e: crate::types::Entry) {
        let s = futures::stream::iter(vec![Ok((e, None))]);
        sm.apply(s).await.unwrap();
    }

    #[tokio::test]
    async fn list_pages_history_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StateMachineConfig {
            history_revisions: 2,
            broadcast_capacity: 16,
            ..Default::default()
        };
        let mut sm =
            StateMachine::open(&dir.path().join("s.redb"), &dir.path().join("snap.pb"), cfg)
                .unwrap();
        let r = sm.reader();
        let creates = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| Op::Create(cm(n, if *n < "c" { "x" } else { "y" })))
            .collect();
        apply(&mut sm, entry(1, creates)).await;
        let key = ObjectKey {
            kind: "ConfigMap".into(),
            namespace: "default".into(),
            name: "a".into(),
        };
        apply(
            &mut sm,
            entry(
                2,
                vec![Op::Delete(DeleteRequest {
                    key: Some(key.clone()),
                    ..Default::default()
                })],
            ),
        )
        .await;
        assert_eq!(r.revision(), 2);

        // Pages of two follow the continue key to the end, in key order.
        let all = Selector::default();
        let mut names = Vec::new();
        let mut after = None;
        loop {
            let page = r
                .list("ConfigMap", "default", &all, 2, after.as_deref())
                .unwrap();
            assert_eq!(page.revision, 2);
            names.extend(page.items.iter().map(|o| o.meta().name.clone()));
            match page.next_key {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        assert_eq!(names, ["b", "c", "d", "e"]);
        let y = r
            .list(
                "ConfigMap",
                "",
                &Selector::parse("app=y").unwrap(),
                10,
                None,
            )
            .unwrap();
        assert_eq!(y.items.len(), 3);
        assert!(r
            .list("ConfigMap", "other", &all, 10, None)
            .unwrap()
            .items
            .is_empty());
        assert_eq!(r.get(&key).unwrap(), (None, 2));

        // History: six ADDED at revision 1 (namespace `default`, created on first use, and
        // five config maps), one DELETED at 2.
        let h = r.history_after(0, 100).unwrap();
        assert_eq!(h.events.len(), 7);
        assert!(h.events[..6]
            .iter()
            .all(|e| e.revision == 1 && e.r#type == EventType::Added as i32));
        assert_eq!(
            (h.events[6].revision, h.events[6].r#type),
            (2, EventType::Deleted as i32)
        );
        // A page never splits a revision.
        let h = r.history_after(0, 2).unwrap();
        assert_eq!((h.events.len(), h.more), (6, true));
        assert_eq!(r.history_after(1, 100).unwrap().events.len(), 1);

        // Past the kept history (2 revisions), old start points are compacted.
        apply(&mut sm, entry(3, vec![Op::Create(cm("f", "z"))])).await;
        apply(&mut sm, entry(4, vec![Op::Create(cm("g", "z"))])).await;
        assert!(matches!(
            r.history_after(0, 100),
            Err(HistoryError::Compacted {
                requested: 0,
                oldest: 2
            })
        ));
        assert_eq!(r.history_after(2, 100).unwrap().events.len(), 2);
    }

    fn open(dir: &Path, name: &str, snapshot_history_max_bytes: usize) -> StateMachine {
        let cfg = StateMachineConfig {
            snapshot_history_max_bytes,
            ..Default::default()
        };
        StateMachine::open(
            &dir.join(format!("{name}.redb")),
            &dir.join(format!("{name}.pb")),
            cfg,
        )
        .unwrap()
    }

    fn revisions(r: &StoreReader, after: u64) -> Result<Vec<u64>, HistoryError> {
        r.history_after(after, 1000)
            .map(|h| h.events.iter().map(|e| e.revision).collect())
    }

    #[tokio::test]
    async fn snapshots_carry_the_newest_history_and_join_it_to_what_the_receiver_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut leader = open(dir.path(), "leader", usize::MAX);
        let mut behind = open(dir.path(), "behind", usize::MAX);
        for i in 1..=6u64 {
            let e = entry(i, vec![Op::Create(cm(&format!("c{i}"), "x"))]);
            if i <= 3 {
                apply(&mut behind, e.clone()).await;
            }
            apply(&mut leader, e).await;
        }
        let all = revisions(&leader.reader(), 0).unwrap();
        // Revision 1 also creates namespace `default`.
        assert_eq!(all, [1, 1, 2, 3, 4, 5, 6]);

        // Whole history fits: a fresh server gets all of it, one that is behind keeps its own.
        let snap = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut fresh = open(dir.path(), "fresh", usize::MAX);
        fresh
            .install_snapshot(&snap.meta, snap.snapshot.clone())
            .await
            .unwrap();
        assert_eq!(revisions(&fresh.reader(), 0).unwrap(), all);
        behind
            .install_snapshot(&snap.meta, snap.snapshot.clone())
            .await
            .unwrap();
        assert_eq!(revisions(&behind.reader(), 0).unwrap(), all);

        // A byte bound keeps whole revisions, newest first: here revisions 5 and 6.
        let one = leader.reader().history_after(5, 10).unwrap().events[0].encoded_len();
        let mut small = open(dir.path(), "small", one * 2 + one / 2);
        for i in 1..=6u64 {
            apply(
                &mut small,
                entry(i, vec![Op::Create(cm(&format!("c{i}"), "x"))]),
            )
            .await;
        }
        let snap = small
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let data = pb::SnapshotData::decode(snap.snapshot.as_slice()).unwrap();
        assert_eq!(data.history_after, 4);
        let mut fresh = open(dir.path(), "fresh2", usize::MAX);
        fresh
            .install_snapshot(&snap.meta, snap.snapshot.clone())
            .await
            .unwrap();
        assert_eq!(revisions(&fresh.reader(), 4).unwrap(), [5, 6]);
        assert!(matches!(
            revisions(&fresh.reader(), 3),
            Err(HistoryError::Compacted { oldest: 4, .. })
        ));
        // A receiver whose own history ends before the snapshot's starts keeps none of it.
        let mut far = open(dir.path(), "far", usize::MAX);
        apply(&mut far, entry(1, vec![Op::Create(cm("c1", "x"))])).await;
        far.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert!(matches!(
            revisions(&far.reader(), 0),
            Err(HistoryError::Compacted { oldest: 4, .. })
        ));
        assert_eq!(revisions(&far.reader(), 4).unwrap(), [5, 6]);
    }

    /// Found by jepsen/ (watch, failpoint nemesis): a snapshot build (it runs beside the state
    /// machine's worker) and the install of a newer snapshot from the leader wrote the snapshot
    /// file at the same time through one temporary file; the loser's rename failed, which is
    /// fatal to Raft. Both must succeed, and the newer snapshot must stay current.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_build_beside_an_install_neither_fails_nor_wins() {
        let dir = tempfile::tempdir().unwrap();
        let objects = |from: usize, n: usize| {
            (from..from + n)
                .map(|i| Op::Create(cm(&format!("c{i}"), &"x".repeat(64))))
                .collect::<Vec<_>>()
        };
        let mut leader = open(dir.path(), "leader", usize::MAX);
        apply(&mut leader, entry(1, objects(0, 1500))).await;
        apply(&mut leader, entry(2, objects(1500, 1500))).await;
        let newer = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        for round in 0..12 {
            let mut follower = open(dir.path(), &format!("f{round}"), usize::MAX);
            apply(&mut follower, entry(1, objects(0, 1500))).await;
            let mut builder = follower.get_snapshot_builder().await;
            let (built, installed) = tokio::join!(
                builder.build_snapshot(),
                follower.install_snapshot(&newer.meta, newer.snapshot.clone())
            );
            built.unwrap();
            installed.unwrap();
            let current = follower.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(
                current.meta.last_log_id, newer.meta.last_log_id,
                "round {round}"
            );
            let on_disk = pb::StoredSnapshot::decode(
                std::fs::read(dir.path().join(format!("f{round}.pb")))
                    .unwrap()
                    .as_slice(),
            )
            .unwrap();
            assert_eq!(on_disk.data, newer.snapshot, "round {round}");
        }
    }
}
