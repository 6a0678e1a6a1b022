//! Workloads: what the clients do, and how each answer becomes an `ok`, `fail` or `info`
//! operation. A write whose fate is not certain (timeout, lost connection, a server that
//! crashed) is `info`, never `fail`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use flotilla_api::pb::api::{object::Body, ConfigMap, Object, ObjectMeta};
use flotilla_api::{ApiError, ErrorCode, ObjectKey};
use flotilla_client::Client;
use rand::Rng;
use serde_json::{json, Value};

use crate::checker::{self, FinalReads, Verdict};
use crate::cluster::Db;
use crate::history::{Op, Outcome};
use crate::HarnessError;

pub(crate) const NAMESPACE: &str = "default";
pub(crate) const LABEL: &str = "flotilla-jepsen";
/// The `result` of a compare-and-set whose first read failed: nothing was attempted.
pub const CAS_NOT_ATTEMPTED: &str = "not-attempted";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Read, write and compare-and-set on a few keys; checked for linearizability.
    Register,
    /// Unique adds, then a final read after healing; no acknowledged add may be lost.
    Set,
    /// Writes, batches and deletes on a few objects while watchers follow them, restarting and
    /// resuming across servers; their streams are checked against the committed history.
    Watch,
    /// Clients contend for a Lease and write fenced with its epoch, some after stalling past
    /// its duration; no write may apply at another epoch than the lease's.
    Fence,
    /// Real agents run a Deployment's pods while clients scale it; no pod is bound twice, no
    /// node is overcommitted, and the Deployment converges after healing.
    Schedule,
}

pub struct Workload {
    pub kind: Kind,
    keys: u64,
    /// Unique values and set elements (starting at 1; registers start at 0).
    next: AtomicU64,
    /// What each process last saw per key, to choose a plausible compare-and-set.
    seen: Mutex<BTreeMap<(u32, u64), u64>>,
    /// The fencing workload's lease contenders.
    fence: crate::fence::FenceState,
    /// The revision after setup.
    start_rev: AtomicU64,
    /// The schedule workload's Nodes at the start revision (the history after it has only
    /// their changes).
    pub initial_nodes: Mutex<Vec<Object>>,
}

/// An operation chosen but not yet run.
pub struct Planned {
    pub f: &'static str,
    pub key: u64,
    pub value: Value,
}

/// The result of running one.
pub struct Done {
    pub outcome: Outcome,
    pub result: Value,
    pub error: String,
}

impl Done {
    pub(crate) fn ok(result: Value) -> Done {
        Done {
            outcome: Outcome::Ok,
            result,
            error: String::new(),
        }
    }
    pub(crate) fn fail(e: impl Into<String>) -> Done {
        Done {
            outcome: Outcome::Fail,
            result: Value::Null,
            error: e.into(),
        }
    }
    pub fn info(e: impl Into<String>) -> Done {
        Done {
            outcome: Outcome::Info,
            result: Value::Null,
            error: e.into(),
        }
    }
    /// A write that returned an error: certain only when the server refused it on its merits.
    pub(crate) fn write_error(e: &ApiError) -> Done {
        match e.code() {
            // NOT_LEADER: refused before it was proposed (the API's contract; a write applied
            // after this answer would show up as a read of a failed write).
            ErrorCode::NotLeader
            | ErrorCode::Conflict
            | ErrorCode::AlreadyExists
            | ErrorCode::InvalidArgument
            | ErrorCode::NotFound
            | ErrorCode::TooLarge => Done::fail(e.to_string()),
            _ => Done::info(e.to_string()),
        }
    }
}

impl Workload {
    pub fn new(kind: Kind, keys: u64) -> Workload {
        Workload {
            kind,
            keys: keys.max(1),
            next: AtomicU64::new(1),
            seen: Mutex::new(BTreeMap::new()),
            fence: Default::default(),
            start_rev: AtomicU64::new(0),
            initial_nodes: Mutex::new(Vec::new()),
        }
    }

    pub fn key_name(&self, key: u64) -> String {
        match self.kind {
            Kind::Register => format!("jepsen-reg-{key}"),
            Kind::Set => format!("jepsen-set-{key}"),
            Kind::Watch => format!("jepsen-watch-{key}"),
            Kind::Fence => format!("jepsen-fence-{key}"),
            Kind::Schedule => crate::schedule::DEPLOYMENT.to_string(),
        }
    }

    /// Create what the workload needs before the clock starts (registers at 0, the watched
    /// objects); returns the revision after setup.
    pub async fn setup(&self, db: &Db) -> Result<u64, HarnessError> {
        let rev = self.setup_objects(db).await?;
        self.start_rev.store(rev, Ordering::Relaxed);
        Ok(rev)
    }

    async fn setup_objects(&self, db: &Db) -> Result<u64, HarnessError> {
        let role = match self.kind {
            Kind::Register => "register",
            Kind::Watch => "watch",
            Kind::Set => return Ok(0),
            Kind::Fence => return self.setup_fence(db).await,
            Kind::Schedule => return self.setup_schedule(db).await,
        };
        let mut c = db
            .any_client()
            .await
            .map_err(|e| HarnessError::Setup(format!("connect for setup: {e}")))?;
        for k in 0..self.keys {
            let obj = configmap(&self.key_name(k), role, 0);
            let mut attempts = 0;
            loop {
                match c.create(obj.clone()).await {
                    Ok(_) => break,
                    Err(e) if e.code() == ErrorCode::AlreadyExists => break,
                    Err(e) => {
                        attempts += 1;
                        if attempts > 50 {
                            return Err(HarnessError::Setup(format!("create register {k}: {e}")));
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        let (_, rev) = c
            .list("ConfigMap", NAMESPACE, &format!("{LABEL}={role}"), false)
            .await
            .map_err(|e| HarnessError::Setup(format!("list after setup: {e}")))?;
        Ok(rev)
    }

    async fn setup_fence(&self, db: &Db) -> Result<u64, HarnessError> {
        let mut c = db
            .any_client()
            .await
            .map_err(|e| HarnessError::Setup(format!("connect for setup: {e}")))?;
        let mut attempts = 0;
        while let Err(e) = crate::fence::FenceState::setup(&mut c).await {
            attempts += 1;
            if attempts > 50 {
                return Err(HarnessError::Setup(format!("create the lease: {e}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (_, rev) = c
            .list("Lease", NAMESPACE, "", false)
            .await
            .map_err(|e| HarnessError::Setup(format!("list after setup: {e}")))?;
        Ok(rev)
    }

    async fn setup_schedule(&self, db: &Db) -> Result<u64, HarnessError> {
        let mut c = db
            .any_client()
            .await
            .map_err(|e| HarnessError::Setup(format!("connect for setup: {e}")))?;
        // The start: the Nodes as they are, before any pod of the workload exists.
        let (nodes, rev) = c
            .list("Node", "", "", false)
            .await
            .map_err(|e| HarnessError::Setup(format!("list nodes before setup: {e}")))?;
        if let Ok(mut n) = self.initial_nodes.lock() {
            *n = nodes;
        }
        let mut attempts = 0;
        while let Err(e) = crate::schedule::setup(&mut c, crate::schedule::FINAL_REPLICAS).await {
            attempts += 1;
            if attempts > 50 {
                return Err(HarnessError::Setup(format!("create the Deployment: {e}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(rev)
    }

    pub fn plan(&self, process: u32, rng: &mut impl Rng) -> Planned {
        match self.kind {
            Kind::Schedule => crate::schedule::plan(rng, self.next.fetch_add(1, Ordering::Relaxed)),
            Kind::Fence => self
                .fence
                .plan(process, self.next.fetch_add(1, Ordering::Relaxed), rng),
            Kind::Watch => {
                let key = rng.random_range(0..self.keys);
                match rng.random_range(0..20) {
                    0..=11 => Planned {
                        f: "write",
                        key,
                        value: json!(self.next.fetch_add(1, Ordering::Relaxed)),
                    },
                    12..=16 => {
                        // Two different objects in one request: one revision for both.
                        let other = (key + 1 + rng.random_range(0..self.keys.max(2) - 1))
                            % self.keys.max(2);
                        let a = self.next.fetch_add(1, Ordering::Relaxed);
                        let b = self.next.fetch_add(1, Ordering::Relaxed);
                        Planned {
                            f: "batch",
                            key,
                            value: json!([[key, a], [other, b]]),
                        }
                    }
                    _ => Planned {
                        f: "delete",
                        key,
                        value: Value::Null,
                    },
                }
            }
            Kind::Set => {
                let e = self.next.fetch_add(1, Ordering::Relaxed);
                Planned {
                    f: "add",
                    key: e,
                    value: json!(e),
                }
            }
            Kind::Register => {
                let key = rng.random_range(0..self.keys);
                let roll = rng.random_range(0..4);
                match roll {
                    0 | 1 => Planned {
                        f: "read",
                        key,
                        value: Value::Null,
                    },
                    2 => Planned {
                        f: "write",
                        key,
                        value: json!(self.next.fetch_add(1, Ordering::Relaxed)),
                    },
                    _ => {
                        let from = self
                            .seen
                            .lock()
                            .ok()
                            .and_then(|s| s.get(&(process, key)).copied())
                            .unwrap_or(0);
                        let to = self.next.fetch_add(1, Ordering::Relaxed);
                        Planned {
                            f: "cas",
                            key,
                            value: json!([from, to]),
                        }
                    }
                }
            }
        }
    }

    /// Run one planned operation through `client`.
    pub async fn invoke(&self, client: &mut Client, process: u32, p: &Planned) -> Done {
        let name = self.key_name(p.key);
        match (self.kind, p.f) {
            (Kind::Fence, _) => self.fence.invoke(client, process, p).await,
            (Kind::Schedule, f) => {
                use crate::schedule::{change, Change};
                let v = p.value.as_u64().unwrap_or(0);
                let what = if f == "rollout" {
                    Change::Rollout(v)
                } else {
                    Change::Scale(v)
                };
                change(client, what).await
            }
            (Kind::Set, _) => {
                let e = p.key;
                match client.create(configmap(&name, "set", e)).await {
                    Ok(_) => Done::ok(Value::Null),
                    // Names are unique: it exists only because this very add happened (a
                    // retry of an attempt that had reached the leader).
                    Err(err) if err.code() == ErrorCode::AlreadyExists => Done {
                        outcome: Outcome::Ok,
                        result: Value::Null,
                        error: err.to_string(),
                    },
                    Err(err) => Done::write_error(&err),
                }
            }
            (Kind::Watch, "write") => {
                let v = p.value.as_u64().unwrap_or(0);
                let obj = configmap(&name, "watch", v);
                match client.update(obj.clone()).await {
                    Ok(o) => Done::ok(json!(rv(&o))),
                    Err(e) if e.code() == ErrorCode::NotFound => match client.create(obj).await {
                        Ok(o) => Done::ok(json!(rv(&o))),
                        Err(e) => Done::write_error(&e),
                    },
                    Err(e) => Done::write_error(&e),
                }
            }
            (Kind::Watch, "batch") => {
                use flotilla_api::pb::api::{write, write_result, Write};
                let pairs = p.value.as_array().cloned().unwrap_or_default();
                let writes = pairs
                    .iter()
                    .map(|kv| Write {
                        op: Some(write::Op::Update(configmap(
                            &self.key_name(kv[0].as_u64().unwrap_or(0)),
                            "watch",
                            kv[1].as_u64().unwrap_or(0),
                        ))),
                        fence: None,
                    })
                    .collect();
                match client.batch(writes).await {
                    Ok(r) => {
                        // Each write succeeds or fails on its own (a deleted object is not
                        // found); the ones that applied share the response's revision.
                        let applied: Vec<bool> = r
                            .results
                            .iter()
                            .map(|w| matches!(w.result, Some(write_result::Result::Object(_))))
                            .collect();
                        Done::ok(json!({ "revision": r.revision, "applied": applied }))
                    }
                    Err(e) => Done::write_error(&e),
                }
            }
            (Kind::Watch, _) => {
                let req = flotilla_api::pb::api::DeleteRequest {
                    key: Some(ObjectKey {
                        kind: "ConfigMap".into(),
                        namespace: NAMESPACE.into(),
                        name: name.clone(),
                    }),
                    ..Default::default()
                };
                match client.delete(req).await {
                    Ok(o) => Done::ok(json!(rv(&o))),
                    Err(e) => Done::write_error(&e),
                }
            }
            (Kind::Register, "read") => match read(client, &name).await {
                Ok((v, _)) => {
                    if let Ok(mut s) = self.seen.lock() {
                        s.insert((process, p.key), v);
                    }
                    Done::ok(json!(v))
                }
                // A read changes nothing: whatever went wrong, it did not happen.
                Err(e) => Done::fail(e),
            },
            (Kind::Register, "write") => {
                let v = p.value.as_u64().unwrap_or(0);
                match client.update(configmap(&name, "register", v)).await {
                    Ok(_) => Done::ok(Value::Null),
                    Err(e) => Done::write_error(&e),
                }
            }
            (Kind::Register, _) => {
                let from = p.value[0].as_u64().unwrap_or(0);
                let to = p.value[1].as_u64().unwrap_or(0);
                let (current, rv) = match read(client, &name).await {
                    Ok(r) => r,
                    // Nothing was attempted: the checker leaves it out.
                    Err(e) => {
                        return Done {
                            outcome: Outcome::Fail,
                            result: json!(CAS_NOT_ATTEMPTED),
                            error: format!("read before cas: {e}"),
                        }
                    }
                };
                if current != from {
                    // The read was the whole operation: the checker treats it as one.
                    return Done {
                        outcome: Outcome::Fail,
                        result: json!({ "read": current }),
                        error: format!("value was {current}"),
                    };
                }
                let mut obj = configmap(&name, "register", to);
                if let Some(m) = obj.metadata.as_mut() {
                    m.resource_version = rv;
                }
                match client.update(obj).await {
                    Ok(_) => Done::ok(Value::Null),
                    Err(e) => Done::write_error(&e),
                }
            }
        }
    }

    /// Check the history; `db` is used for the final reads a set needs (after healing).
    pub async fn check(&self, db: &Db, ops: &[Op], run_dir: &std::path::Path) -> Verdict {
        match self.kind {
            Kind::Register => {
                let ops = ops.to_vec();
                let explain = run_dir.join("linearizability.html");
                tokio::task::spawn_blocking(move || {
                    checker::check_register(&ops, Duration::from_secs(120), Some(&explain))
                })
                .await
                .unwrap_or_else(|e| Verdict {
                    valid: checker::Validity::Unknown,
                    checker: "linearizable-register".into(),
                    details: json!({ "error": format!("checker task failed: {e}") }),
                })
            }
            Kind::Set => {
                let reads = self.final_reads(db).await;
                checker::check_set(ops, &reads)
            }
            Kind::Fence => {
                crate::fence::check(db, ops, self.start_rev.load(Ordering::Relaxed)).await
            }
            // Checked in main: they need the watchers' streams, or the agents.
            Kind::Watch | Kind::Schedule => Verdict {
                valid: checker::Validity::Unknown,
                checker: format!("{:?}", self.kind).to_lowercase(),
                details: json!({ "error": "this workload is checked in main" }),
            },
        }
    }

    /// The set as a linearizable read sees it, then each server's local copy.
    async fn final_reads(&self, db: &Db) -> FinalReads {
        let mut out = FinalReads::default();
        for _ in 0..30 {
            if let Ok(mut c) = db.any_client().await {
                if let Ok((items, _)) = c
                    .list("ConfigMap", NAMESPACE, &format!("{LABEL}=set"), false)
                    .await
                {
                    out.linearizable = Some(elements(&items));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        for id in &db.ids {
            if let Ok(mut c) = db.client(*id).await {
                if let Ok((items, _)) = c
                    .list("ConfigMap", NAMESPACE, &format!("{LABEL}=set"), true)
                    .await
                {
                    out.per_node.insert(*id, elements(&items));
                }
            }
        }
        out
    }
}

fn rv(o: &Object) -> u64 {
    o.metadata.as_ref().map(|m| m.resource_version).unwrap_or(0)
}

fn elements(items: &[Object]) -> BTreeSet<u64> {
    items.iter().filter_map(|o| value_of(o).ok()).collect()
}

fn value_of(o: &Object) -> Result<u64, String> {
    match &o.body {
        Some(Body::ConfigMap(cm)) => cm
            .data
            .get("value")
            .ok_or_else(|| "no value".to_string())?
            .parse()
            .map_err(|e| format!("value is not a number: {e}")),
        _ => Err("not a ConfigMap".into()),
    }
}

/// A linearizable read of a register: its value and resourceVersion.
async fn read(client: &mut Client, name: &str) -> Result<(u64, u64), String> {
    let key = ObjectKey {
        kind: "ConfigMap".into(),
        namespace: NAMESPACE.into(),
        name: name.into(),
    };
    let (o, _) = client.get(key, false).await.map_err(|e| e.to_string())?;
    let v = value_of(&o)?;
    Ok((
        v,
        o.metadata.as_ref().map(|m| m.resource_version).unwrap_or(0),
    ))
}

/// The ConfigMap that holds one register or one set element.
fn configmap(name: &str, role: &str, value: u64) -> Object {
    configmap_with(
        name,
        role,
        [("value".to_string(), value.to_string())].into(),
    )
}

/// A ConfigMap of the workloads (labelled with its role) holding `data`.
pub(crate) fn configmap_with(
    name: &str,
    role: &str,
    data: std::collections::BTreeMap<String, String>,
) -> Object {
    Object {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: NAMESPACE.into(),
            labels: [(LABEL.to_string(), role.to_string())].into(),
            ..Default::default()
        }),
        body: Some(Body::ConfigMap(ConfigMap {
            data: data.into_iter().collect(),
            ..Default::default()
        })),
    }
}
