//! The feed the control loops (scheduler, controllers) run on: every object of some kinds
//! from this server's own state, then each change as it is applied, in revision order. A
//! consumer that falls behind the applied-entry broadcast, or a snapshot install, gets a
//! fresh list (after a `Reset`), as a Kubernetes informer relists.
//!
//! It reads local state only: a follower's loops see what the follower has applied, and their
//! writes are safe anyway because they carry preconditions and fences.

use std::collections::HashMap;
use std::sync::Arc;

use flotilla_api::pb::api::{EventType, Object};
use flotilla_api::selector::Selector;
use flotilla_api::ApiError;
use tokio::sync::broadcast::error::RecvError;

use crate::node::Node;

/// One change, for one object.
#[derive(Debug, Clone)]
pub enum Change {
    /// Forget everything: a full list follows.
    Reset,
    /// Added or modified (or listed).
    Upsert(Object),
    /// Deleted; the object as it last was.
    Delete(Object),
}

/// A list read in pages: the revisions of its first and last page and the resourceVersion of
/// each object it returned, kept until the feed passes the last page's revision.
#[derive(Default)]
struct Listed {
    first: u64,
    last: u64,
    seen: HashMap<String, u64>,
}

impl Listed {
    /// Whether an event at `revision` for `key` is news to the list.
    fn is_new(&mut self, key: &str, revision: u64) -> bool {
        if revision > self.last {
            self.seen = HashMap::new();
            return true;
        }
        revision > self.seen.get(key).copied().unwrap_or(self.first)
    }
}

pub struct Informer {
    node: Arc<Node>,
    kinds: Vec<&'static str>,
    /// Per kind, what its last list saw: events at or below it may already be in it.
    listed: HashMap<&'static str, Listed>,
    rx: Option<tokio::sync::broadcast::Receiver<Arc<flotilla_raft::state_machine::AppliedBatch>>>,
    /// Every change up to this revision has been delivered.
    revision: u64,
    /// `next` returns (maybe with nothing) once `revision` reaches this.
    target: Option<u64>,
}

impl Informer {
    pub fn new(node: Arc<Node>, kinds: &[&'static str]) -> Informer {
        Informer {
            node,
            kinds: kinds.to_vec(),
            listed: HashMap::new(),
            rx: None,
            revision: 0,
            target: None,
        }
    }

    /// Every change up to this revision has been delivered.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Make `next` return once changes up to `revision` are delivered, even if none of them
    /// is of a watched kind (a caller waiting to see its own writes).
    pub fn wake_at(&mut self, revision: u64) {
        if revision > self.revision {
            self.target = Some(revision);
        }
    }

    fn list_all(&mut self, out: &mut Vec<Change>) -> Result<(), ApiError> {
        // Subscribe before listing: nothing applied after the list can be missed.
        self.rx = Some(self.node.reader.subscribe());
        out.push(Change::Reset);
        self.listed.clear();
        let page_size = self.node.limits.max_list_page.max(1);
        for kind in self.kinds.clone() {
            let mut after: Option<String> = None;
            let mut listed = Listed {
                first: u64::MAX,
                ..Default::default()
            };
            loop {
                let page = self
                    .node
                    .reader
                    .list(kind, "", &Selector::default(), page_size, after.as_deref())
                    .map_err(ApiError::internal)?;
                // Pages are separate reads at rising revisions: `Listed` sorts out which
                // events in between each page already saw.
                listed.first = listed.first.min(page.revision);
                listed.last = page.revision;
                if page.next_key.is_some() || after.is_some() {
                    for o in &page.items {
                        listed.seen.insert(
                            flotilla_api::keys::object_key(&o.key()),
                            o.meta().resource_version,
                        );
                    }
                }
                out.extend(page.items.into_iter().map(Change::Upsert));
                match page.next_key {
                    Some(k) => after = Some(k),
                    None => break,
                }
            }
            if listed.first == u64::MAX {
                listed.first = 0;
            }
            self.revision = if self.listed.is_empty() {
                listed.first
            } else {
                self.revision.min(listed.first)
            };
            self.listed.insert(kind, listed);
        }
        Ok(())
    }

    /// The next changes: the first call lists; later calls wait for applied entries and
    /// return their changes (at most about `max` per call, whole entries).
    pub async fn next(&mut self, max: usize) -> Result<Vec<Change>, ApiError> {
        let mut out = Vec::new();
        if self.rx.is_none() {
            self.list_all(&mut out)?;
            return Ok(out);
        }
        loop {
            let rx = self
                .rx
                .as_mut()
                .ok_or_else(|| ApiError::internal("no feed"))?;
            let batch = if out.is_empty() {
                match rx.recv().await {
                    Ok(b) => b,
                    Err(RecvError::Lagged(_)) => {
                        self.list_all(&mut out)?;
                        return Ok(out);
                    }
                    Err(RecvError::Closed) => {
                        return Err(ApiError::unavailable("the state machine stopped"))
                    }
                }
            } else {
                match rx.try_recv() {
                    Ok(b) => b,
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                        out.clear();
                        self.list_all(&mut out)?;
                        return Ok(out);
                    }
                    Err(_) => return Ok(out),
                }
            };
            if batch.reset {
                out.clear();
                self.list_all(&mut out)?;
                return Ok(out);
            }
            for ev in &batch.events {
                let Some(o) = &ev.object else { continue };
                let Some(kind) = self.kinds.iter().find(|k| **k == o.kind) else {
                    continue;
                };
                if let Some(l) = self.listed.get_mut(kind) {
                    if ev.revision <= l.last || !l.seen.is_empty() {
                        let key = flotilla_api::keys::object_key(&o.key());
                        if !l.is_new(&key, ev.revision) {
                            continue;
                        }
                    }
                }
                out.push(if ev.r#type == EventType::Deleted as i32 {
                    Change::Delete(o.clone())
                } else {
                    Change::Upsert(o.clone())
                });
            }
            self.revision = self.revision.max(batch.revision);
            if self.target.is_some_and(|t| self.revision >= t) {
                self.target = None;
                return Ok(out);
            }
            if out.len() >= max {
                return Ok(out);
            }
        }
    }
}
