//! The controller-manager's loop: every server keeps a cache of the kinds the controllers
//! watch (from its own state, through an [`Informer`]); the one holding the
//! `controller-manager` Lease reconciles what changed, with `flotilla-controllers`' pure
//! functions, and writes the result fenced with the Lease's epoch.
//!
//! A round takes up to `controller_round_keys` dirty objects, reconciles each, writes all
//! their writes in batches, then waits until its own cache has seen those writes before the
//! next round, so no decision is made twice from a cache that has not caught up (Kubernetes'
//! "expectations"). A key whose writes fail is retried with exponential backoff; a reconcile
//! may ask to be looked at again later (minReadySeconds, deadlines). Garbage collection
//! deletes dependents whose owners are gone, after a linearizable read confirms it.
//!
//! It must never write without a fence, nor act on a cache older than its last writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::pb::api::object_service_server::ObjectService;
use flotilla_api::pb::api::{
    object::Body, write::Op, write_result, BatchRequest, DeleteRequest, GetRequest, Object,
    ObjectKey, Write,
};
use flotilla_api::ErrorCode;
use flotilla_controllers::common::{count_pods, PodCounts};
use flotilla_controllers::{deployment, gc, replicaset, Action, Reconciled};
use tokio_util::task::TaskTracker;

use crate::api::ObjectApi;
use crate::election::{fence, Elections};
use crate::informer::{Change, Informer};
use crate::node::Node;

pub const ROLE: &str = "controller-manager";
const COMPONENT: &str = "controller-manager";
/// The kinds the controllers watch (owners before dependents).
const KINDS: [&str; 11] = [
    "Node",
    "Lease",
    "Service",
    "Endpoints",
    "CronJob",
    "Job",
    "DaemonSet",
    "StatefulSet",
    "Deployment",
    "ReplicaSet",
    "Pod",
];
/// The kinds reconciled when they (or their dependents) change.
const OWNER_KINDS: [&str; 8] = [
    "Deployment",
    "ReplicaSet",
    "Node",
    "DaemonSet",
    "StatefulSet",
    "Job",
    "CronJob",
    "Service",
];
/// Pods a ReplicaSet creates or deletes per reconcile (Kubernetes' burstReplicas).
const BURST: usize = 500;
const FEED_BATCH: usize = 20_000;
const BACKOFF_MIN_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 30_000;

type Key = (String, String);

fn key_of(o: &Object) -> Key {
    let m = o.meta();
    (o.kind.clone(), format!("{}/{}", m.namespace, m.name))
}

/// The objects of the watched kinds and who owns what.
#[derive(Default)]
struct Cache {
    objects: HashMap<String, BTreeMap<String, Object>>,
    /// uid → the object's key.
    uids: HashMap<String, Key>,
    /// Owner uid → its dependents' keys.
    dependents: HashMap<String, BTreeSet<Key>>,
    /// Node name → the pods bound to it.
    pods_by_node: HashMap<String, BTreeSet<Key>>,
}

/// Marked for deletion and held by the Foreground or Orphan finalizer.
fn finalizing(o: &Object) -> bool {
    let m = o.meta();
    m.deletion_timestamp_ms.is_some()
        && m.finalizers.iter().any(|f| {
            f == flotilla_controllers::gc::FOREGROUND_FINALIZER
                || f == flotilla_controllers::gc::ORPHAN_FINALIZER
        })
}

fn node_name_of(o: &Object) -> Option<&str> {
    match &o.body {
        Some(Body::Pod(p)) => p
            .spec
            .as_ref()
            .map(|s| s.node_name.as_str())
            .filter(|n| !n.is_empty()),
        _ => None,
    }
}

impl Cache {
    fn get(&self, k: &Key) -> Option<&Object> {
        self.objects.get(&k.0)?.get(&k.1)
    }

    fn unlink(&mut self, o: &Object) {
        let k = key_of(o);
        for r in &o.meta().owner_references {
            if let Some(d) = self.dependents.get_mut(&r.uid) {
                d.remove(&k);
                if d.is_empty() {
                    self.dependents.remove(&r.uid);
                }
            }
        }
        self.uids.remove(&o.meta().uid);
        if let Some(n) = node_name_of(o) {
            if let Some(set) = self.pods_by_node.get_mut(n) {
                set.remove(&k);
                if set.is_empty() {
                    self.pods_by_node.remove(n);
                }
            }
        }
    }

    /// Store or forget `o`; the keys to reconcile because of it.
    fn apply(
        &mut self,
        o: Object,
        deleted: bool,
        dirty: &mut BTreeSet<Key>,
        gc: &mut BTreeSet<Key>,
    ) {
        let k = key_of(&o);
        let previous = self.get(&k).cloned();
        if let Some(old) = &previous {
            self.unlink(old);
        }
        let m = o.meta();
        // Owners it had or has: a reference removed (orphaning) concerns the old owner too.
        let refs = previous
            .iter()
            .flat_map(|p| p.meta().owner_references.iter())
            .chain(m.owner_references.iter());
        for r in refs {
            if let Some(owner) = self.uids.get(&r.uid) {
                dirty.insert(owner.clone());
                // An owner finishing a Foreground or Orphan deletion waits on its dependents.
                if self.get(owner).is_some_and(finalizing) {
                    gc.insert(owner.clone());
                }
            }
        }
        if finalizing(&o) {
            gc.insert(k.clone());
        }
        if OWNER_KINDS.contains(&o.kind.as_str()) {
            dirty.insert(k.clone());
        }
        if deleted {
            // Its dependents may be orphans now.
            if let Some(deps) = self.dependents.get(&m.uid) {
                gc.extend(deps.iter().cloned());
            }
            if let Some(map) = self.objects.get_mut(&k.0) {
                map.remove(&k.1);
            }
            return;
        }
        if !m.owner_references.is_empty() {
            gc.insert(k.clone());
        }
        for r in &m.owner_references {
            self.dependents
                .entry(r.uid.clone())
                .or_default()
                .insert(k.clone());
        }
        if let Some(n) = node_name_of(&o) {
            self.pods_by_node
                .entry(n.to_string())
                .or_default()
                .insert(k.clone());
        }
        self.uids.insert(m.uid.clone(), k.clone());
        self.objects.entry(k.0.clone()).or_default().insert(k.1, o);
    }

    fn pods_on(&self, node: &str) -> Vec<&Object> {
        self.pods_by_node
            .get(node)
            .map(|keys| keys.iter().filter_map(|k| self.get(k)).collect())
            .unwrap_or_default()
    }

    fn dependents_of(&self, o: &Object, kind: &str) -> Vec<&Object> {
        let Some(deps) = self.dependents.get(&o.meta().uid) else {
            return Vec::new();
        };
        deps.iter()
            .filter(|k| k.0 == kind)
            .filter_map(|k| self.get(k))
            // Only what it controls (a controller reference with its uid).
            .filter(|d| {
                d.meta()
                    .owner_references
                    .iter()
                    .any(|r| r.controller && r.uid == o.meta().uid)
            })
            .collect()
    }
}

pub fn start(node: Arc<Node>, api: Arc<ObjectApi>, elections: Elections, tasks: &TaskTracker) {
    tasks.spawn(async move { Manager::new(node, api, elections).run().await });
}

struct Manager {
    node: Arc<Node>,
    api: Arc<ObjectApi>,
    elections: Elections,
    cache: Cache,
    dirty: BTreeSet<Key>,
    gc: BTreeSet<Key>,
    /// Keys to look at again, by when.
    later: BTreeMap<Instant, BTreeSet<Key>>,
    failures: HashMap<Key, u32>,
    /// Our last writes' revision: no round until the cache has seen it.
    barrier: Option<(u64, Instant)>,
    held: Option<i64>,
    /// An epoch whose writes fencing refused: do nothing at it until the elections move on.
    deposed: Option<i64>,
    /// Node name → (its Lease's renewTime, when this server saw that renewTime first, ms).
    heard: HashMap<String, (String, i64)>,
}

fn suffix() -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let a = flotilla_controllers::common::SAFE_ALPHABET;
    bytes[..5]
        .iter()
        .map(|b| a[*b as usize % a.len()] as char)
        .collect()
}

impl Manager {
    fn new(node: Arc<Node>, api: Arc<ObjectApi>, elections: Elections) -> Manager {
        Manager {
            node,
            api,
            elections,
            cache: Cache::default(),
            dirty: BTreeSet::new(),
            gc: BTreeSet::new(),
            later: BTreeMap::new(),
            failures: HashMap::new(),
            barrier: None,
            held: None,
            deposed: None,
            heard: HashMap::new(),
        }
    }

    fn feed(&mut self, changes: Vec<Change>) {
        for c in changes {
            match c {
                Change::Reset => {
                    self.cache = Cache::default();
                    self.dirty.clear();
                    self.gc.clear();
                }
                Change::Upsert(o) if o.kind == "Lease" => self.heard_from(&o),
                Change::Delete(o) if o.kind == "Lease" => {}
                Change::Upsert(o) => {
                    if o.kind == "Node" {
                        self.daemonsets_dirty();
                    }
                    self.services_dirty(&o);
                    self.cache.apply(o, false, &mut self.dirty, &mut self.gc)
                }
                Change::Delete(o) => {
                    self.services_dirty(&o);
                    self.cache.apply(o, true, &mut self.dirty, &mut self.gc)
                }
            }
        }
    }

    /// The Services whose Endpoints `o` (a pod, before and after the change, or their own
    /// Endpoints) may change.
    fn services_dirty(&mut self, o: &Object) {
        let ns = o.meta().namespace.clone();
        match o.kind.as_str() {
            "Endpoints" => {
                self.dirty
                    .insert(("Service".into(), format!("{ns}/{}", o.meta().name)));
            }
            "Pod" => {
                let old = self.cache.get(&key_of(o)).cloned();
                let Some(services) = self.cache.objects.get("Service") else {
                    return;
                };
                let prefix = format!("{ns}/");
                let hits: Vec<Key> = services
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .filter(|(_, svc)| {
                        flotilla_controllers::endpoints::selects(svc, o)
                            || old
                                .as_ref()
                                .is_some_and(|p| flotilla_controllers::endpoints::selects(svc, p))
                    })
                    .map(|(k, _)| ("Service".to_string(), k.clone()))
                    .collect();
                self.dirty.extend(hits);
            }
            _ => {}
        }
    }

    /// Nodes changed: every DaemonSet may want a pod more or less.
    fn daemonsets_dirty(&mut self) {
        if let Some(map) = self.cache.objects.get("DaemonSet") {
            for k in map.keys() {
                self.dirty.insert(("DaemonSet".to_string(), k.clone()));
            }
        }
    }

    /// A node's Lease changed: the node was heard from now, by this server's clock.
    fn heard_from(&mut self, lease: &Object) {
        if lease.meta().namespace != crate::identity::NODE_LEASE_NAMESPACE {
            return;
        }
        let renewed = match &lease.body {
            Some(Body::Lease(l)) => l
                .spec
                .as_ref()
                .and_then(|s| s.renew_time.clone())
                .unwrap_or_default(),
            _ => String::new(),
        };
        let name = lease.meta().name.clone();
        let now = crate::now_ms();
        let entry = self
            .heard
            .entry(name.clone())
            .or_insert((String::new(), now));
        if entry.0 != renewed {
            *entry = (renewed, now);
            let k = ("Node".to_string(), format!("/{name}"));
            if self.cache.get(&k).is_some() {
                self.dirty.insert(k);
            }
        }
    }

    /// Everything is worth a look (a new holder, a relist).
    fn resync(&mut self) {
        for kind in OWNER_KINDS {
            if let Some(map) = self.cache.objects.get(kind) {
                for k in map.keys() {
                    self.dirty.insert((kind.to_string(), k.clone()));
                }
            }
        }
        for map in self.cache.objects.values() {
            for o in map.values() {
                if !o.meta().owner_references.is_empty() {
                    self.gc.insert(key_of(o));
                }
            }
        }
    }

    async fn run(mut self) {
        let mut informer = Informer::new(self.node.clone(), &KINDS);
        let mut role_rx = self
            .elections
            .roles
            .iter()
            .find(|(r, _)| *r == ROLE)
            .map(|(_, rx)| rx.clone());
        let mut node_tick = tokio::time::interval(Duration::from_millis(
            self.node.limits.node_monitor_period_ms.max(100),
        ));
        node_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_later = self.later.keys().next().copied();
            let role_changed = async {
                match role_rx.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let timer = async {
                match next_later {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = self.node.shutdown.cancelled() => return,
                r = informer.next(FEED_BATCH) => match r {
                    Ok(changes) => {
                        let relisted = matches!(changes.first(), Some(Change::Reset));
                        self.feed(changes);
                        if relisted {
                            self.resync();
                        }
                    }
                    Err(e) => {
                        tracing::warn!("controller feed: {e}; relisting");
                        informer = Informer::new(self.node.clone(), &KINDS);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                _ = timer => {}
                _ = role_changed => {}
                _ = node_tick.tick() => {
                    let nodes: Vec<Key> = self
                        .cache
                        .objects
                        .get("Node")
                        .map(|m| m.keys().map(|k| ("Node".to_string(), k.clone())).collect())
                        .unwrap_or_default();
                    self.dirty.extend(nodes);
                }
            }
            let now = Instant::now();
            while let Some(entry) = self.later.first_entry() {
                if *entry.key() > now {
                    break;
                }
                let keys = entry.remove();
                self.dirty.extend(keys);
            }
            let epoch = self.elections.epoch(ROLE);
            if epoch != self.held {
                self.held = epoch;
                if epoch.is_some() {
                    tracing::info!(epoch, "controller-manager: reconciling everything");
                    // A new leader gives every node a fresh grace period: it has not been
                    // watching, so silence so far proves nothing.
                    let now = crate::now_ms();
                    for v in self.heard.values_mut() {
                        v.1 = now;
                    }
                    self.resync();
                }
            }
            let Some(epoch) = epoch else { continue };
            if self.deposed == Some(epoch) {
                continue;
            }
            // Reconcile only from a cache that has the previous holder's last writes (they
            // are older than our taking the role), or a lagging follower recreates pods that
            // exist.
            if let Some(h) = self.elections.held(ROLE) {
                if informer.revision() < h.since {
                    informer.wake_at(h.since);
                    continue;
                }
            }
            if let Some((rev, since)) = self.barrier {
                let waited_too_long =
                    since.elapsed() > Duration::from_millis(self.node.limits.write_timeout_ms);
                if informer.revision() < rev && !waited_too_long {
                    informer.wake_at(rev);
                    continue;
                }
                self.barrier = None;
            }
            if self.dirty.is_empty() && self.gc.is_empty() {
                continue;
            }
            if let Some(rev) = self.round(epoch).await {
                self.barrier = Some((rev, Instant::now()));
                informer.wake_at(rev);
            }
        }
    }

    fn reconcile(&self, k: &Key, now_ms: i64) -> Reconciled {
        let Some(o) = self.cache.get(k) else {
            return Reconciled::default();
        };
        match o.kind.as_str() {
            "ReplicaSet" => {
                let pods = self.cache.dependents_of(o, "Pod");
                replicaset::reconcile(o, &pods, now_ms, BURST, &mut suffix)
            }
            "Deployment" => {
                let rss = self.cache.dependents_of(o, "ReplicaSet");
                let counts: HashMap<String, PodCounts> = rss
                    .iter()
                    .map(|rs| {
                        let min_ready = match &rs.body {
                            Some(Body::ReplicaSet(r)) => {
                                r.spec.as_ref().map(|s| s.min_ready_seconds).unwrap_or(0)
                            }
                            _ => 0,
                        };
                        let pods = self.cache.dependents_of(rs, "Pod");
                        (rs.meta().uid.clone(), count_pods(pods, min_ready, now_ms))
                    })
                    .collect();
                deployment::reconcile(o, &rss, &counts, now_ms)
            }
            "StatefulSet" => {
                let pods = self.cache.dependents_of(o, "Pod");
                flotilla_controllers::statefulset::reconcile(o, &pods, now_ms)
            }
            "Service" => {
                let ns = &o.meta().namespace;
                let prefix = format!("{ns}/");
                let pods: Vec<&Object> = self
                    .cache
                    .objects
                    .get("Pod")
                    .map(|m| {
                        m.range(prefix.clone()..)
                            .take_while(|(k, _)| k.starts_with(&prefix))
                            .map(|(_, p)| p)
                            .collect()
                    })
                    .unwrap_or_default();
                let existing = self
                    .cache
                    .get(&("Endpoints".to_string(), format!("{ns}/{}", o.meta().name)));
                let node_ip = |name: &str| -> Option<String> {
                    let n = self.cache.get(&("Node".to_string(), format!("/{name}")))?;
                    match &n.body {
                        Some(Body::Node(x)) => x
                            .status
                            .as_ref()?
                            .addresses
                            .iter()
                            .find(|a| a.r#type == "InternalIP")
                            .map(|a| a.address.clone()),
                        _ => None,
                    }
                };
                flotilla_controllers::endpoints::reconcile(o, &pods, &node_ip, existing)
            }
            "Job" => {
                let pods = self.cache.dependents_of(o, "Pod");
                flotilla_controllers::job::reconcile(o, &pods, now_ms, BURST, &mut suffix)
            }
            "CronJob" => {
                let jobs = self.cache.dependents_of(o, "Job");
                flotilla_controllers::cronjob::reconcile(o, &jobs, now_ms)
            }
            "DaemonSet" => {
                let nodes: Vec<&Object> = self
                    .cache
                    .objects
                    .get("Node")
                    .map(|m| m.values().collect())
                    .unwrap_or_default();
                let pods = self.cache.dependents_of(o, "Pod");
                flotilla_controllers::daemonset::reconcile(o, &nodes, &pods, now_ms, &mut suffix)
            }
            "Node" => {
                let name = &o.meta().name;
                // A node never heard of is heard of now (its Lease may not exist yet).
                let real_now = crate::now_ms();
                let last = self.heard.get(name).map(|h| h.1).unwrap_or(real_now);
                let settings = flotilla_controllers::nodes::Settings {
                    grace_ms: self.node.limits.node_grace_period_ms as i64,
                    default_toleration_seconds: self
                        .node
                        .limits
                        .default_unreachable_toleration_seconds
                        as i64,
                };
                let pods = self.cache.pods_on(name);
                // Heard-from times are this server's own clock, never the shifted one.
                flotilla_controllers::nodes::reconcile(o, last, real_now, settings, &pods)
            }
            _ => Reconciled::default(),
        }
    }

    fn to_write(&self, a: Action, epoch: i64) -> Write {
        let op = match a {
            Action::Create(o) => Op::Create(o),
            Action::Update(o) => Op::Update(o),
            Action::UpdateStatus(o) => Op::UpdateStatus(o),
            Action::Delete { key, uid } => Op::Delete(DeleteRequest {
                key: Some(key),
                expected_resource_version: None,
                expected_uid: Some(uid),
                grace_period_seconds: None,
                propagation_policy: String::new(),
            }),
            Action::Event {
                involved,
                event_type,
                reason,
                message,
            } => {
                let w = crate::events::record(
                    &self.node, COMPONENT, involved, event_type, reason, &message,
                );
                return Write {
                    fence: Some(fence(ROLE, epoch)),
                    ..w
                };
            }
        };
        Write {
            op: Some(op),
            fence: Some(fence(ROLE, epoch)),
        }
    }

    /// One round: reconcile up to a bounded number of dirty keys and write the result. The
    /// revision of the last write, if any was made.
    async fn round(&mut self, epoch: i64) -> Option<u64> {
        // The controllers' clock (shifted in tests, e.g. to bring a CronJob's time near).
        let now_ms = crate::now_ms().saturating_add(self.node.limits.controller_clock_offset_ms);
        let limit = self.node.limits.controller_round_keys.max(1);
        let keys: Vec<Key> = self.dirty.iter().take(limit).cloned().collect();
        for k in &keys {
            self.dirty.remove(k);
        }
        // (key that asked, write)
        let mut writes: Vec<(Key, Write)> = Vec::new();
        for k in &keys {
            let r = self.reconcile(k, now_ms);
            if let Some(ms) = r.requeue_after_ms {
                let at = Instant::now() + Duration::from_millis(ms.max(1) as u64);
                self.later.entry(at).or_default().insert(k.clone());
            }
            for a in r.actions {
                writes.push((k.clone(), self.to_write(a, epoch)));
            }
        }
        let mut revision = None;
        let mut failed: BTreeSet<Key> = BTreeSet::new();
        for (batch_keys, batch) in batches(writes, self.node.limits.max_batch_writes.max(1)) {
            match self
                .api
                .batch(tonic::Request::new(BatchRequest { writes: batch }))
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    revision = Some(r.revision);
                    for (k, res) in batch_keys.iter().zip(r.results) {
                        if let Some(write_result::Result::Error(e)) = res.result {
                            if e.code == ErrorCode::Fenced as i32 {
                                if self.deposed != Some(epoch) {
                                    tracing::warn!(epoch, "controller-manager: writes refused by fencing; another server holds the role now");
                                }
                                self.deposed = Some(epoch);
                            }
                            // A lost race for an Event series is not worth a retry.
                            if e.code == ErrorCode::AlreadyExists as i32
                                && e.message.contains("Event")
                            {
                                continue;
                            }
                            tracing::debug!(key = ?k, "controller write refused: {}", e.message);
                            failed.insert(k.clone());
                        }
                    }
                }
                Err(s) => {
                    tracing::warn!("controller batch failed: {}", s.message());
                    failed.extend(batch_keys);
                }
            }
        }
        for k in keys {
            if failed.contains(&k) {
                let n = self.failures.entry(k.clone()).or_insert(0);
                *n = n.saturating_add(1);
                let ms = (BACKOFF_MIN_MS << (*n - 1).min(16)).min(BACKOFF_MAX_MS);
                let at = Instant::now() + Duration::from_millis(ms);
                self.later.entry(at).or_default().insert(k);
            } else {
                self.failures.remove(&k);
            }
        }
        if let Some(rev) = self.collect_garbage(epoch).await {
            revision = Some(revision.map_or(rev, |r: u64| r.max(rev)));
        }
        revision
    }

    /// Background garbage collection of dependents whose owners are all gone.
    async fn collect_garbage(&mut self, epoch: i64) -> Option<u64> {
        let limit = self.node.limits.controller_round_keys.max(1);
        let keys: Vec<Key> = self.gc.iter().take(limit).cloned().collect();
        for k in &keys {
            self.gc.remove(k);
        }
        let cache = &self.cache;
        let exists = |ns: &str, r: &flotilla_api::pb::api::OwnerReference| {
            if cache.uids.contains_key(&r.uid) {
                return Some(true);
            }
            let _ = ns;
            KINDS.contains(&r.kind.as_str()).then_some(false)
        };
        let candidates = gc::orphans(keys.iter().filter_map(|k| cache.get(k)), &exists);
        let mut writes = Vec::new();
        // Owners finishing a Foreground or Orphan deletion.
        for owner in keys
            .iter()
            .filter_map(|k| cache.get(k))
            .filter(|o| finalizing(o))
        {
            let deps: Vec<&Object> = cache
                .dependents
                .get(&owner.meta().uid)
                .map(|ks| ks.iter().filter_map(|k| cache.get(k)).collect())
                .unwrap_or_default();
            for a in gc::finalize(owner, &deps) {
                writes.push(self.to_write(a, epoch));
            }
        }
        for orphan in candidates {
            // The cache may not have seen an owner yet: ask the store (linearizable).
            let mut all_gone = true;
            for r in &orphan.owners {
                let got = self
                    .api
                    .get(tonic::Request::new(GetRequest {
                        key: Some(ObjectKey {
                            kind: r.kind.clone(),
                            namespace: orphan.key.namespace.clone(),
                            name: r.name.clone(),
                        }),
                        stale: false,
                    }))
                    .await;
                match got {
                    Ok(o)
                        if o.get_ref()
                            .object
                            .as_ref()
                            .is_some_and(|o| o.meta().uid == r.uid) =>
                    {
                        all_gone = false
                    }
                    Ok(_) => {}
                    Err(s)
                        if flotilla_api::ApiError::from_status(&s).code()
                            == ErrorCode::NotFound => {}
                    Err(_) => all_gone = false,
                }
            }
            if all_gone {
                tracing::info!(object = %orphan.key, "garbage-collecting: its owners are gone");
                writes.push(Write {
                    op: Some(Op::Delete(DeleteRequest {
                        key: Some(orphan.key),
                        expected_resource_version: None,
                        expected_uid: Some(orphan.uid),
                        grace_period_seconds: None,
                        propagation_policy: String::new(),
                    })),
                    fence: Some(fence(ROLE, epoch)),
                });
            }
        }
        let mut revision = None;
        let keyed: Vec<(Key, Write)> = writes
            .into_iter()
            .map(|w| ((String::new(), String::new()), w))
            .collect();
        for (_, batch) in batches(keyed, self.node.limits.max_batch_writes.max(1)) {
            if let Ok(r) = self
                .api
                .batch(tonic::Request::new(BatchRequest { writes: batch }))
                .await
            {
                revision = Some(r.into_inner().revision);
            }
        }
        revision
    }
}

/// Split writes into batches of at most `max`, each touching an object once (a second write
/// to the same object starts the next batch, so it applies after the first).
fn batches(writes: Vec<(Key, Write)>, max: usize) -> Vec<(Vec<Key>, Vec<Write>)> {
    let mut out: Vec<(Vec<Key>, Vec<Write>)> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for (k, w) in writes {
        let target = crate::proposer::write_key(&w).unwrap_or_default();
        let full = out.last().is_none_or(|(_, b)| b.len() >= max);
        if full || seen.contains(&target) {
            out.push((Vec::new(), Vec::new()));
            seen.clear();
        }
        seen.insert(target);
        if let Some((ks, ws)) = out.last_mut() {
            ks.push(k);
            ws.push(w);
        }
    }
    out
}
