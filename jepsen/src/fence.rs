//! The fencing workload: clients contend for one Lease the way Flotilla's scheduler and
//! controller-manager do (take it when it looks expired, bumping `leaseTransitions`, the epoch;
//! renew it by writing), and the holder writes objects fenced with `(lease, epoch)`. Now and
//! then a holder stalls past the lease's duration (a GC pause, a stopped process) and then
//! writes with the epoch it had: by then another client may have taken the lease, and the
//! state machine must refuse the write (FENCED).
//!
//! The checker reads the committed history of the Lease and the written objects back from a
//! server and requires that no object was applied while the lease was at another epoch, that
//! every acknowledged write is there and every fenced one is not, and that no epoch was handed
//! to two clients. Expiry is judged by each client's own monotonic clock, as client-go does:
//! only liveness depends on clocks, never safety.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla_api::pb::api::{
    object::Body, write, write_result, Fence, Lease, LeaseSpec, Object, ObjectMeta, Write,
};
use flotilla_api::{ErrorCode, ObjectKey};
use flotilla_client::Client;
use rand::Rng;
use serde_json::{json, Value};

use crate::checker::{Validity, Verdict};
use crate::cluster::{Clients, Db};
use crate::history::{Op, Outcome};
use crate::workload::{configmap_with, Done, Planned, LABEL, NAMESPACE};

pub const LEASE: &str = "jepsen-fence";
/// The lease's duration: a holder that has not renewed for this long may be replaced.
const LEASE_SECONDS: i32 = 2;
/// How long a stalled holder sleeps before writing with its old epoch: past the duration.
const STALL: Duration = Duration::from_millis(2600);
const ROLE: &str = "fence";

/// What one client process believes about the lease.
#[derive(Default)]
pub struct FenceState {
    /// Processes holding the lease: their epoch and the lease's resourceVersion they wrote.
    holding: Mutex<BTreeMap<u32, (i64, u64)>>,
    /// Per process: the lease version it last saw and since when (its own monotonic clock).
    observed: Mutex<BTreeMap<u32, (u64, Instant)>>,
}

fn me(process: u32) -> String {
    format!("client-{process}")
}

fn lease_object(holder: &str, epoch: i32, resource_version: u64) -> Object {
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    Object {
        api_version: "coordination.k8s.io/v1".into(),
        kind: "Lease".into(),
        metadata: Some(ObjectMeta {
            name: LEASE.into(),
            namespace: NAMESPACE.into(),
            resource_version,
            ..Default::default()
        }),
        body: Some(Body::Lease(Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_string()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(epoch),
            }),
        })),
    }
}

fn lease_spec(o: &Object) -> Option<&LeaseSpec> {
    match &o.body {
        Some(Body::Lease(l)) => l.spec.as_ref(),
        _ => None,
    }
}

fn epoch_of(o: &Object) -> i64 {
    lease_spec(o)
        .and_then(|s| s.lease_transitions)
        .map(i64::from)
        .unwrap_or(0)
}

fn rv(o: &Object) -> u64 {
    o.metadata.as_ref().map(|m| m.resource_version).unwrap_or(0)
}

impl FenceState {
    /// The lease, free (epoch 0), before the clock starts.
    pub async fn setup(c: &mut Client) -> Result<(), String> {
        match c.create(lease_object("", 0, 0)).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == ErrorCode::AlreadyExists => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn plan(&self, process: u32, value: u64, rng: &mut impl Rng) -> Planned {
        let held = self
            .holding
            .lock()
            .ok()
            .and_then(|h| h.get(&process).copied());
        let Some((epoch, _)) = held else {
            return Planned {
                f: "acquire",
                key: 0,
                value: Value::Null,
            };
        };
        let f = match rng.random_range(0..40) {
            0..=33 => "write",
            34..=38 => "renew",
            _ => "stall-write",
        };
        Planned {
            f,
            key: value,
            value: if f == "renew" {
                json!({ "epoch": epoch })
            } else {
                json!({ "epoch": epoch, "value": value })
            },
        }
    }

    fn drop_holding(&self, process: u32) {
        if let Ok(mut h) = self.holding.lock() {
            h.remove(&process);
        }
    }

    pub async fn invoke(&self, client: &mut Client, process: u32, p: &Planned) -> Done {
        match p.f {
            "acquire" => self.acquire(client, process).await,
            "renew" => {
                let Some((epoch, version)) = self
                    .holding
                    .lock()
                    .ok()
                    .and_then(|h| h.get(&process).copied())
                else {
                    return Done::fail("not holding the lease");
                };
                match self.hold(client, process, epoch, version).await {
                    Ok(done) => done,
                    Err(e) => {
                        // CONFLICT: someone took it; anything else: unknown, so stop holding.
                        self.drop_holding(process);
                        Done::write_error(&e)
                    }
                }
            }
            _ => {
                if p.f == "stall-write" {
                    tokio::time::sleep(STALL).await;
                }
                let epoch = p.value["epoch"].as_i64().unwrap_or(0);
                let name = format!("jepsen-fence-{}", p.key);
                let w = Write {
                    op: Some(write::Op::Create(configmap_with(
                        &name,
                        ROLE,
                        [
                            ("value".to_string(), p.key.to_string()),
                            ("epoch".to_string(), epoch.to_string()),
                        ]
                        .into(),
                    ))),
                    fence: Some(Fence {
                        lease_namespace: NAMESPACE.into(),
                        lease_name: LEASE.into(),
                        epoch,
                    }),
                };
                match client.batch(vec![w]).await {
                    Ok(r) => match r.results.first().and_then(|w| w.result.as_ref()) {
                        Some(write_result::Result::Object(o)) => {
                            Done::ok(json!({ "revision": rv(o) }))
                        }
                        Some(write_result::Result::Error(e)) => {
                            if e.code() == ErrorCode::Fenced {
                                self.drop_holding(process);
                                Done::fail(e.message.clone())
                            } else {
                                Done::write_error(e)
                            }
                        }
                        None => Done::info("a batch answer without a result"),
                    },
                    Err(e) => Done::write_error(&e),
                }
            }
        }
    }

    /// Take the lease if it is free or has not changed for its duration (by this client's
    /// clock), with the lease's version as the precondition and the epoch bumped.
    async fn acquire(&self, client: &mut Client, process: u32) -> Done {
        let key = ObjectKey {
            kind: "Lease".into(),
            namespace: NAMESPACE.into(),
            name: LEASE.into(),
        };
        let (lease, _) = match client.get(key, false).await {
            Ok(l) => l,
            Err(e) => return Done::fail(format!("read the lease: {e}")),
        };
        let version = rv(&lease);
        let holder = lease_spec(&lease)
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default();
        let epoch = epoch_of(&lease);
        let now = Instant::now();
        let unchanged_for = match self.observed.lock() {
            Ok(mut o) => {
                let e = o.entry(process).or_insert((version, now));
                if e.0 != version {
                    *e = (version, now);
                }
                now - e.1
            }
            Err(_) => Duration::ZERO,
        };
        let expired = unchanged_for >= Duration::from_secs(LEASE_SECONDS as u64);
        if !holder.is_empty() && !expired {
            return Done::fail(format!("held by {holder} at epoch {epoch}"));
        }
        self.hold(client, process, epoch + 1, version)
            .await
            .unwrap_or_else(|e| Done::write_error(&e))
    }

    /// Write the lease as held by `process` at `epoch` (precondition: resourceVersion
    /// `version`) and, once acknowledged, remember it as held.
    async fn hold(
        &self,
        client: &mut Client,
        process: u32,
        epoch: i64,
        version: u64,
    ) -> Result<Done, flotilla_api::ApiError> {
        let o = client
            .update(lease_object(&me(process), epoch as i32, version))
            .await?;
        if let Ok(mut h) = self.holding.lock() {
            h.insert(process, (epoch, rv(&o)));
        }
        Ok(Done::ok(json!({ "epoch": epoch, "revision": rv(&o) })))
    }
}

/// One event of the committed history as the checker needs it.
#[derive(Debug, Clone)]
struct FenceEv {
    revision: u64,
    /// Some(epoch) for the lease; None for a written object.
    lease_epoch: Option<i64>,
    name: String,
    /// A written object's epoch.
    epoch: i64,
    added: bool,
}

fn to_fence_ev(e: &flotilla_api::pb::api::WatchEvent) -> Option<FenceEv> {
    use flotilla_api::pb::api::EventType;
    let t = EventType::try_from(e.r#type).ok()?;
    if !matches!(
        t,
        EventType::Added | EventType::Modified | EventType::Deleted
    ) {
        return None;
    }
    let o = e.object.as_ref()?;
    let name = o.metadata.as_ref()?.name.clone();
    let (lease_epoch, epoch) = match &o.body {
        Some(Body::Lease(_)) => (Some(epoch_of(o)), 0),
        Some(Body::ConfigMap(cm)) => (
            None,
            cm.data
                .get("epoch")
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1),
        ),
        _ => return None,
    };
    Some(FenceEv {
        revision: e.revision,
        lease_epoch,
        name,
        epoch,
        added: t == EventType::Added,
    })
}

/// The lease's and the written objects' history after `from` through `to`, from one server.
async fn read_history(
    clients: &Clients,
    server: u64,
    from: u64,
    to: u64,
) -> Result<Vec<FenceEv>, String> {
    let mut out = Vec::new();
    for (kind, name, selector) in [
        ("Lease", LEASE, String::new()),
        ("ConfigMap", "", format!("{LABEL}={ROLE}")),
    ] {
        let req = flotilla_api::pb::api::WatchRequest {
            kind: kind.into(),
            namespace: NAMESPACE.into(),
            name: name.into(),
            label_selector: selector,
            start_revision: from,
            field_selector: String::new(),
        };
        let events = crate::watch::read_events(clients, server, req, to).await?;
        out.extend(events.iter().filter_map(to_fence_ev));
    }
    // Stable: within a revision the lease's events stay before the objects' (the order inside
    // a revision is not known across two streams; the check allows for it).
    out.sort_by_key(|e| e.revision);
    Ok(out)
}

/// Read the history back (from the first server that has it all) and check it.
pub async fn check(db: &Db, ops: &[Op], from: u64) -> Verdict {
    let clients = db.clients();
    let mut to = None;
    for _ in 0..30 {
        if let Ok(mut c) = db.any_client().await {
            let key = ObjectKey {
                kind: "Lease".into(),
                namespace: NAMESPACE.into(),
                name: LEASE.into(),
            };
            if let Ok((_, rev)) = c.get(key, false).await {
                to = Some(rev);
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let Some(to) = to else {
        return unknown("no linearizable read of the lease succeeded after healing");
    };
    let mut errors = Vec::new();
    for id in &db.ids {
        match read_history(&clients, *id, from, to).await {
            Ok(h) => return check_history(&h, ops, *id),
            Err(e) => errors.push(format!("n{id}: {e}")),
        }
    }
    unknown(&format!(
        "no server returned the history: {}",
        errors.join("; ")
    ))
}

fn unknown(why: &str) -> Verdict {
    Verdict {
        valid: Validity::Unknown,
        checker: "fencing".into(),
        details: json!({ "error": why }),
    }
}

fn check_history(history: &[FenceEv], ops: &[Op], server: u64) -> Verdict {
    let mut anomalies: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    let mut add = |kind: &'static str, v: Value| {
        let e = anomalies.entry(kind).or_default();
        if e.len() < 20 {
            e.push(v);
        }
    };
    // Walk revision by revision: a write applied at revision r must carry the lease's epoch
    // before r, or (when the lease changed at r too, in an unknown order) the one after.
    let mut epoch = 0i64;
    let mut present: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let mut transitions = 0usize;
    let mut i = 0;
    while i < history.len() {
        let r = history[i].revision;
        let j = i + history[i..].iter().take_while(|e| e.revision == r).count();
        let before = epoch;
        for e in &history[i..j] {
            if let Some(le) = e.lease_epoch {
                if le < epoch {
                    add(
                        "lease_epoch_went_back",
                        json!({ "revision": r, "from": epoch, "to": le }),
                    );
                }
                if le != epoch {
                    transitions += 1;
                }
                epoch = le;
            }
        }
        for e in &history[i..j] {
            if e.lease_epoch.is_none() && e.added {
                if e.epoch != before && e.epoch != epoch {
                    add(
                        "write_applied_at_another_epoch",
                        json!({ "object": e.name, "revision": r, "write_epoch": e.epoch, "lease_epoch": before }),
                    );
                }
                present.insert(e.name.clone(), (r, e.epoch));
            }
        }
        i = j;
    }

    let mut acquired: BTreeMap<i64, u32> = BTreeMap::new();
    let (mut acked, mut fenced, mut stalled, mut stalled_fenced, mut unknown_writes) =
        (0, 0, 0, 0, 0);
    for o in ops {
        match (o.f.as_str(), o.outcome) {
            ("acquire", Outcome::Ok) => {
                let e = o.result["epoch"].as_i64().unwrap_or(-1);
                if let Some(other) = acquired.insert(e, o.process) {
                    add(
                        "epoch_granted_twice",
                        json!({ "epoch": e, "processes": [other, o.process] }),
                    );
                }
            }
            ("write" | "stall-write", outcome) => {
                let name = o.key.clone();
                let stall = o.f == "stall-write";
                stalled += usize::from(stall);
                match outcome {
                    Outcome::Ok => {
                        acked += 1;
                        let rev = o.result["revision"].as_u64().unwrap_or(0);
                        match present.get(&name) {
                            None => add(
                                "acknowledged_write_missing",
                                json!({ "object": name, "revision": rev }),
                            ),
                            Some((r, _)) if *r != rev => add(
                                "acknowledged_at_another_revision",
                                json!({ "object": name, "acknowledged": rev, "history": r }),
                            ),
                            Some(_) => {}
                        }
                    }
                    Outcome::Fail => {
                        fenced += 1;
                        stalled_fenced += usize::from(stall);
                        if present.contains_key(&name) {
                            add("refused_write_applied", json!({ "object": name }));
                        }
                    }
                    Outcome::Info => unknown_writes += 1,
                }
            }
            _ => {}
        }
    }
    let written: BTreeSet<&String> = present.keys().collect();
    let valid = if anomalies.is_empty() {
        Validity::Valid
    } else {
        Validity::Invalid
    };
    Verdict {
        valid,
        checker: "fencing".into(),
        details: json!({
            "server": server,
            "lease_transitions": transitions,
            "acquisitions_acknowledged": acquired.len(),
            "writes_acknowledged": acked,
            "writes_refused": fenced,
            "writes_unknown": unknown_writes,
            "stalled_writes": stalled,
            "stalled_writes_fenced": stalled_fenced,
            "objects_in_history": written.len(),
            "anomalies": anomalies,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(revision: u64, epoch: i64) -> FenceEv {
        FenceEv {
            revision,
            lease_epoch: Some(epoch),
            name: LEASE.into(),
            epoch: 0,
            added: false,
        }
    }

    fn obj(revision: u64, n: u64, epoch: i64) -> FenceEv {
        FenceEv {
            revision,
            lease_epoch: None,
            name: format!("jepsen-fence-{n}"),
            epoch,
            added: true,
        }
    }

    fn write(n: u64, outcome: Outcome, revision: u64) -> Op {
        Op {
            process: 1,
            f: "write".into(),
            key: format!("jepsen-fence-{n}"),
            value: json!({ "epoch": 1, "value": n }),
            outcome,
            result: json!({ "revision": revision }),
            node: 1,
            call_ns: 0,
            return_ns: 1,
            error: String::new(),
        }
    }

    #[test]
    fn writes_at_the_current_epoch_are_valid_and_a_stale_one_is_caught() {
        let h = vec![
            lease(2, 1),
            obj(3, 1, 1),
            lease(4, 2),
            obj(4, 2, 1),
            obj(5, 3, 2),
        ];
        let ops = vec![write(1, Outcome::Ok, 3), write(2, Outcome::Info, 0)];
        let v = check_history(&h, &ops, 1);
        assert_eq!(v.valid, Validity::Valid, "{}", v.details);

        let stale = vec![lease(2, 1), lease(4, 2), obj(6, 2, 1)];
        let v = check_history(&stale, &[], 1);
        assert_eq!(v.valid, Validity::Invalid);
        assert!(v.details["anomalies"]["write_applied_at_another_epoch"].is_array());
    }

    #[test]
    fn a_lost_acknowledged_write_or_an_applied_refused_one_is_caught() {
        let h = vec![lease(2, 1), obj(3, 1, 1)];
        let v = check_history(&h, &[write(9, Outcome::Ok, 5)], 1);
        assert!(v.details["anomalies"]["acknowledged_write_missing"].is_array());
        let v = check_history(&h, &[write(1, Outcome::Fail, 0)], 1);
        assert!(v.details["anomalies"]["refused_write_applied"].is_array());
    }
}
