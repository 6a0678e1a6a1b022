//! The scheduling workload: real agents run a Deployment's pods with runc while clients scale it
//! up and down (past what the nodes can hold, so some pods wait) and the nemeses hit the
//! servers, where the scheduler and the controllers move between servers with their leases.
//!
//! Checked after healing, from the committed history of Pods and Nodes read back from a server:
//! no pod was bound twice or unbound, no pod was bound to a node that does not exist, and at no
//! revision did the pods bound to a node request more CPU, memory or pod slots than the node
//! had allocatable (a scheduler deciding from a stale picture would do that). While the run goes,
//! the agents' runc containers are sampled: no pod may run on two nodes. Then the Deployment is
//! scaled to a final count and must converge: that many pods Running and Ready, each with its
//! container running on the node it is bound to and nowhere else, and no container left for a
//! pod that is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::pb::api::{object::Body, EventType, Object, WatchEvent};
use flotilla_api::quantity::Quantity;
use flotilla_api::{ErrorCode, ObjectKey};
use flotilla_client::Client;
use rand::Rng;
use serde_json::{json, Value};

use crate::agents::{Agents, Registry};
use crate::checker::{Validity, Verdict};
use crate::cluster::{Clients, Db};
use crate::stop::Stop;
use crate::workload::{Done, Planned, NAMESPACE};

pub const DEPLOYMENT: &str = "jepsen-sched";
const SELECTOR: &str = "app=jepsen-sched";
/// Each pod's CPU request: five fit on a node with 2 CPUs allocatable.
const CPU_REQUEST: &str = "400m";
const MEMORY_REQUEST: &str = "16Mi";
/// Scale targets go up to this: more than three such nodes hold, so some pods must wait.
const MAX_REPLICAS: u64 = 18;
/// The count the Deployment is scaled to after healing, and must converge to.
pub const FINAL_REPLICAS: u64 = 6;
/// How long convergence may take after healing.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(240);
/// How often the agents' containers are sampled during the run.
const SAMPLE_PERIOD: Duration = Duration::from_secs(2);

fn deployment_manifest(replicas: u64) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {DEPLOYMENT}
  namespace: {NAMESPACE}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {DEPLOYMENT}
  template:
    metadata:
      labels:
        app: {DEPLOYMENT}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {image}
        imagePullPolicy: IfNotPresent
        command: ["sleep", "100000"]
        resources:
          requests:
            cpu: {CPU_REQUEST}
            memory: {MEMORY_REQUEST}
"#,
        image = Registry::busybox()
    )
}

fn deployment_key() -> ObjectKey {
    ObjectKey {
        kind: "Deployment".into(),
        namespace: NAMESPACE.into(),
        name: DEPLOYMENT.into(),
    }
}

/// Create the Deployment with `replicas` (kept if it exists).
pub async fn setup(c: &mut Client, replicas: u64) -> Result<(), String> {
    let objs =
        flotilla_api::manifest::parse_manifests("jepsen-sched", &deployment_manifest(replicas))
            .map_err(|e| e.to_string())?;
    for m in objs {
        match c.create(m.object).await {
            Ok(_) => {}
            Err(e) if e.code() == ErrorCode::AlreadyExists => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Mostly scaling; one operation in five rolls the pods out again (a new template).
pub fn plan(rng: &mut impl Rng, unique: u64) -> Planned {
    if rng.random_range(0..5) == 0 {
        Planned {
            f: "rollout",
            key: 0,
            value: json!(unique),
        }
    } else {
        Planned {
            f: "scale",
            key: 0,
            value: json!(rng.random_range(0..=MAX_REPLICAS)),
        }
    }
}

pub enum Change {
    Scale(u64),
    /// A new value of the template's `jepsen/rollout` annotation.
    Rollout(u64),
}

/// Read the Deployment and write it back changed, conditional on the resourceVersion read; a
/// Conflict (the controllers write it too) is read again, a few times.
pub async fn change(c: &mut Client, what: Change) -> Done {
    const ATTEMPTS: usize = 3;
    let mut last = Done::fail("not attempted");
    for _ in 0..ATTEMPTS {
        let (mut o, _) = match c.get(deployment_key(), false).await {
            Ok(x) => x,
            // Nothing was written by this attempt; an earlier one got a certain Conflict.
            Err(e) => return Done::fail(format!("read before writing: {e}")),
        };
        let Some(Body::Deployment(d)) = &mut o.body else {
            return Done::fail("the Deployment has no body");
        };
        let spec = d.spec.get_or_insert_with(Default::default);
        match what {
            Change::Scale(n) => spec.replicas = Some(n as i32),
            Change::Rollout(v) => {
                spec.template
                    .get_or_insert_with(Default::default)
                    .metadata
                    .get_or_insert_with(Default::default)
                    .annotations
                    .insert("jepsen/rollout".into(), v.to_string());
            }
        }
        match c.update(o).await {
            Ok(o) => return Done::ok(json!(o.meta().resource_version)),
            Err(e) if e.code() == ErrorCode::Conflict => last = Done::write_error(&e),
            Err(e) => return Done::write_error(&e),
        }
    }
    last
}

/// Sample every agent's containers until `stop`: a pod (uid) with running containers on two
/// nodes at once is an anomaly.
pub async fn sample(agents: Arc<tokio::sync::Mutex<Agents>>, stop: Stop) -> SampleLog {
    let mut log = SampleLog::default();
    loop {
        let listing = listing(&*agents.lock().await);
        let (running, twice) = (running_by_uid(&listing), running_twice(&listing));
        log.samples += 1;
        for (uid, nodes) in running {
            if nodes.len() > 1 && log.anomalies.len() < 20 {
                log.anomalies
                    .push(json!({ "pod_uid": uid, "running_on": nodes }));
            }
        }
        for (node, ids) in twice {
            if log.anomalies.len() < 20 {
                log.anomalies
                    .push(json!({ "node": node, "same_container_running_twice": ids }));
            }
        }
        if stop.sleep(SAMPLE_PERIOD).await {
            return log;
        }
    }
}

#[derive(Default)]
pub struct SampleLog {
    samples: u64,
    anomalies: Vec<Value>,
}

/// Per node, containers that run twice: two running runc containers for one pod's container
/// (ids `<uid>_<name>_<restart>` differing only in the restart count), as an agent that lost
/// track of one it had started would leave.
fn running_twice(listing: &Listing) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (node, list) in listing {
        let mut by: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for id in list {
            if let Some((prefix, _restart)) = id.rsplit_once('_') {
                by.entry(prefix).or_default().push(id.clone());
            }
        }
        out.extend(
            by.into_values()
                .filter(|ids| ids.len() > 1)
                .map(|ids| (node.clone(), ids)),
        );
    }
    out
}

/// Node name → the ids of its running runc containers (agents whose listing failed are left
/// out).
type Listing = BTreeMap<String, Vec<String>>;

fn listing(agents: &Agents) -> Listing {
    agents
        .ids()
        .into_iter()
        .filter_map(|k| {
            let list = agents.containers(k).ok()?;
            let running = list
                .into_iter()
                .filter(|(_, status)| status == "running")
                .map(|(id, _)| id)
                .collect();
            Some((Agents::name(k), running))
        })
        .collect()
}

/// Pod uid → the nodes where one of its containers is running.
fn running_by_uid(listing: &Listing) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (node, list) in listing {
        for id in list {
            if let Some((uid, _)) = id.split_once('_') {
                out.entry(uid.to_string()).or_default().insert(node.clone());
            }
        }
    }
    out
}

/// The final scale, convergence, and the history checks.
pub async fn check(
    db: &Db,
    clients: &Clients,
    agents: &Arc<tokio::sync::Mutex<Agents>>,
    samples: SampleLog,
    start_rev: u64,
    initial_nodes: Vec<Object>,
) -> Verdict {
    let mut details = json!({
        "samples": samples.samples,
        "pod_running_on_two_nodes": samples.anomalies,
    });
    let mut valid = if samples.anomalies.is_empty() {
        Validity::Valid
    } else {
        Validity::Invalid
    };

    // Scale to the final count, retrying while the cluster settles.
    let mut scaled = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(mut c) = db.any_client().await {
            let d = change(&mut c, Change::Scale(FINAL_REPLICAS)).await;
            if d.outcome == crate::history::Outcome::Ok {
                scaled = true;
                break;
            }
            last = d.error;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if !scaled {
        details["error"] = json!(format!("the final scale never succeeded: {last}"));
        return Verdict {
            valid: Validity::Unknown,
            checker: "schedule".into(),
            details,
        };
    }

    let began = Instant::now();
    let mut problems: Vec<String> = vec!["not checked yet".into()];
    let mut final_rev = 0;
    while began.elapsed() < CONVERGE_TIMEOUT {
        match converged(db, agents).await {
            Ok((p, rev)) => {
                final_rev = rev;
                problems = p;
                if problems.is_empty() {
                    break;
                }
            }
            Err(e) => problems = vec![e],
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    details["final_replicas"] = json!(FINAL_REPLICAS);
    if problems.is_empty() {
        details["converged_after_s"] = json!(began.elapsed().as_secs());
    } else {
        valid = Validity::Invalid;
        details["not_converged"] = json!(problems);
    }

    // The committed history, from the first server that can serve all of it.
    let mut history = None;
    let mut errors = Vec::new();
    if final_rev > 0 {
        for id in &db.ids {
            match read_history(clients, *id, start_rev, final_rev).await {
                Ok(mut h) => {
                    // The nodes as they were at the start, ahead of their changes.
                    let start = initial_nodes.iter().map(|n| WatchEvent {
                        r#type: EventType::Added as i32,
                        object: Some(n.clone()),
                        revision: start_rev,
                    });
                    h.splice(0..0, start);
                    details["history_from"] = json!(format!("n{id}"));
                    history = Some(h);
                    break;
                }
                Err(e) => errors.push(e),
            }
        }
    }
    match history {
        Some(h) => {
            let r = check_history(&h);
            if !r.anomalies.is_empty() {
                valid = Validity::Invalid;
            }
            details["history"] = r.stats;
            details["anomalies"] = json!(r.anomalies);
        }
        None => {
            valid = valid.max(Validity::Unknown);
            details["history_error"] = json!(errors);
        }
    }
    Verdict {
        valid,
        checker: "schedule".into(),
        details,
    }
}

fn pod_node(o: &Object) -> String {
    match &o.body {
        Some(Body::Pod(p)) => p
            .spec
            .as_ref()
            .map(|s| s.node_name.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn pod_phase(o: &Object) -> String {
    match &o.body {
        Some(Body::Pod(p)) => p
            .status
            .as_ref()
            .map(|s| s.phase.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn pod_ready(o: &Object) -> bool {
    match &o.body {
        Some(Body::Pod(p)) => p.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == "True")
        }),
        _ => false,
    }
}

/// What still differs from a converged Deployment (empty: converged), and the revision read.
async fn converged(
    db: &Db,
    agents: &Arc<tokio::sync::Mutex<Agents>>,
) -> Result<(Vec<String>, u64), String> {
    let mut c = db.any_client().await.map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    let (d, _) = c
        .get(deployment_key(), false)
        .await
        .map_err(|e| e.to_string())?;
    let want = FINAL_REPLICAS as i32;
    if let Some(Body::Deployment(dep)) = &d.body {
        let st = dep.status.clone().unwrap_or_default();
        if st.observed_generation < d.meta().generation
            || st.replicas != want
            || st.updated_replicas != want
            || st.ready_replicas != want
            || st.available_replicas != want
        {
            problems.push(format!(
                "deployment status: observedGeneration {} of {}, replicas {}, updated {}, ready {}, available {} (want {want})",
                st.observed_generation,
                d.meta().generation,
                st.replicas,
                st.updated_replicas,
                st.ready_replicas,
                st.available_replicas
            ));
        }
    }
    let (pods, rev) = c
        .list("Pod", NAMESPACE, SELECTOR, false)
        .await
        .map_err(|e| e.to_string())?;
    let live: Vec<&Object> = pods
        .iter()
        .filter(|p| p.meta().deletion_timestamp_ms.is_none())
        .collect();
    if live.len() != FINAL_REPLICAS as usize {
        problems.push(format!(
            "{} pods not being deleted (want {FINAL_REPLICAS}), {} in all",
            live.len(),
            pods.len()
        ));
    }
    let bound: BTreeMap<String, (String, String)> = pods
        .iter()
        .map(|p| (p.meta().uid.clone(), (p.meta().name.clone(), pod_node(p))))
        .collect();
    for p in &live {
        if pod_phase(p) != "Running" || !pod_ready(p) {
            problems.push(format!(
                "pod {} on {:?}: phase {:?}, ready {}",
                p.meta().name,
                pod_node(p),
                pod_phase(p),
                pod_ready(p)
            ));
        }
    }
    let listing = listing(&*agents.lock().await);
    let running = running_by_uid(&listing);
    for (node, ids) in running_twice(&listing) {
        problems.push(format!("on {node} one container runs twice: {ids:?}"));
    }
    for p in &live {
        let uid = &p.meta().uid;
        let node = pod_node(p);
        match running.get(uid) {
            Some(nodes) if nodes.len() == 1 && nodes.contains(&node) => {}
            other => problems.push(format!(
                "pod {} bound to {node:?}: its container runs on {:?}",
                p.meta().name,
                other.map(|s| s.iter().cloned().collect::<Vec<_>>())
            )),
        }
    }
    for (uid, nodes) in &running {
        match bound.get(uid) {
            Some((_, node)) if nodes.len() == 1 && nodes.contains(node) => {}
            Some((name, node)) => problems.push(format!(
                "pod {name} bound to {node:?} has containers running on {nodes:?}"
            )),
            None => problems.push(format!(
                "a container of pod uid {uid}, which no longer exists, still runs on {nodes:?}"
            )),
        }
    }
    Ok((problems, rev))
}

/// Pod and Node events after `from` through `to`, in revision order, from one server.
async fn read_history(
    clients: &Clients,
    server: u64,
    from: u64,
    to: u64,
) -> Result<Vec<WatchEvent>, String> {
    let mut all = Vec::new();
    for (kind, ns) in [("Node", ""), ("Pod", NAMESPACE)] {
        let req = flotilla_api::pb::api::WatchRequest {
            kind: kind.into(),
            namespace: ns.into(),
            name: String::new(),
            label_selector: String::new(),
            start_revision: from,
            field_selector: String::new(),
        };
        let evs = crate::watch::read_events(clients, server, req, to)
            .await
            .map_err(|e| format!("n{server}: {kind}: {e}"))?;
        all.extend(evs);
    }
    // Each kind's stream is in revision order; a stable sort keeps a revision's events as sent.
    all.sort_by_key(|e| e.revision);
    Ok(all)
}

#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct Amount {
    cpu_m: i128,
    memory: i128,
    pods: i128,
}

fn quantity(map: &BTreeMap<String, String>, k: &str, milli: bool) -> i128 {
    map.get(k)
        .and_then(|v| Quantity::parse(v).ok())
        .map(|q| {
            if milli {
                q.millis_ceil()
            } else {
                q.units_ceil()
            }
        })
        .unwrap_or(0)
}

fn requests(o: &Object) -> Amount {
    let mut a = Amount {
        pods: 1,
        ..Default::default()
    };
    if let Some(Body::Pod(p)) = &o.body {
        for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
            if let Some(r) = &c.resources {
                a.cpu_m += quantity(&r.requests, "cpu", true);
                a.memory += quantity(&r.requests, "memory", false);
            }
        }
    }
    a
}

fn allocatable(o: &Object) -> Option<Amount> {
    match &o.body {
        Some(Body::Node(n)) => n.status.as_ref().map(|s| Amount {
            cpu_m: quantity(&s.allocatable, "cpu", true),
            memory: quantity(&s.allocatable, "memory", false),
            pods: quantity(&s.allocatable, "pods", false),
        }),
        _ => None,
    }
}

struct HistoryResult {
    anomalies: Vec<Value>,
    stats: Value,
}

/// Replay the history: bindings never change, and no node is ever over its allocatable.
fn check_history(events: &[WatchEvent]) -> HistoryResult {
    const MAX_REPORTED: usize = 50;
    let mut anomalies = Vec::new();
    let mut report = |v: Value| {
        if anomalies.len() < MAX_REPORTED {
            anomalies.push(v);
        }
    };
    let mut nodes: BTreeMap<String, Amount> = BTreeMap::new();
    // Live pods by key: uid, node, requests, whether they still hold resources.
    let mut pods: BTreeMap<String, (String, String, Amount, bool)> = BTreeMap::new();
    let mut bound_once: BTreeMap<String, String> = BTreeMap::new();
    let mut binds = 0u64;
    let mut full_revisions = 0u64;
    let mut peak_pods_on_a_node = 0i128;
    let mut i = 0;
    while i < events.len() {
        let rev = events[i].revision;
        let mut touched = BTreeSet::new();
        while i < events.len() && events[i].revision == rev {
            let ev = &events[i];
            i += 1;
            let Some(o) = &ev.object else { continue };
            let deleted = ev.r#type == EventType::Deleted as i32;
            if o.kind == "Node" {
                if deleted {
                    nodes.remove(&o.meta().name);
                } else if let Some(a) = allocatable(o) {
                    nodes.insert(o.meta().name.clone(), a);
                    touched.insert(o.meta().name.clone());
                }
                continue;
            }
            let key = o.meta().name.clone();
            let uid = o.meta().uid.clone();
            let node = pod_node(o);
            if !node.is_empty() {
                match bound_once.get(&uid) {
                    None => {
                        binds += 1;
                        bound_once.insert(uid.clone(), node.clone());
                        if !nodes.contains_key(&node) {
                            report(json!({ "anomaly": "bound_to_unknown_node", "pod": key,
                                "uid": uid, "node": node, "revision": rev }));
                        }
                    }
                    Some(first) if *first != node => report(
                        json!({ "anomaly": "pod_bound_twice", "pod": key, "uid": uid,
                            "first": first, "then": node, "revision": rev }),
                    ),
                    Some(_) => {}
                }
            } else if let Some(first) = bound_once.get(&uid) {
                report(json!({ "anomaly": "pod_unbound", "pod": key, "uid": uid,
                    "was": first, "revision": rev }));
            }
            if let Some((_, old_node, _, _)) = pods.get(&key) {
                touched.insert(old_node.clone());
            }
            if deleted {
                pods.remove(&key);
            } else {
                let phase = pod_phase(o);
                let holds = phase != "Succeeded" && phase != "Failed";
                pods.insert(key, (uid, node.clone(), requests(o), holds));
            }
            touched.insert(node);
        }
        for n in touched {
            let Some(cap) = nodes.get(&n) else { continue };
            let mut sum = Amount::default();
            let mut names = Vec::new();
            for (k, (_, node, req, holds)) in &pods {
                if *node == n && *holds {
                    sum.cpu_m += req.cpu_m;
                    sum.memory += req.memory;
                    sum.pods += req.pods;
                    names.push(k.clone());
                }
            }
            peak_pods_on_a_node = peak_pods_on_a_node.max(sum.pods);
            let over = (cap.cpu_m > 0 && sum.cpu_m > cap.cpu_m)
                || (cap.memory > 0 && sum.memory > cap.memory)
                || (cap.pods > 0 && sum.pods > cap.pods);
            if over {
                report(
                    json!({ "anomaly": "node_overcommitted", "node": n, "revision": rev,
                    "requested_cpu_m": sum.cpu_m.to_string(), "allocatable_cpu_m": cap.cpu_m.to_string(),
                    "pods": names }),
                );
            } else if cap.cpu_m > 0 && sum.cpu_m + requests_cpu_of_one() > cap.cpu_m {
                full_revisions += 1;
            }
        }
    }
    HistoryResult {
        anomalies,
        stats: json!({
            "events": events.len(),
            "pods": bound_once.len().max(pods.len()),
            "binds": binds,
            "node_full_revisions": full_revisions,
            "peak_pods_on_a_node": peak_pods_on_a_node.to_string(),
            "nodes": nodes.keys().collect::<Vec<_>>(),
        }),
    }
}

/// One pod's CPU request, to tell when a node is full.
fn requests_cpu_of_one() -> i128 {
    Quantity::parse(CPU_REQUEST)
        .map(|q| q.millis_ceil())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::pb::api::ObjectMeta;

    fn pod(name: &str, uid: &str, node: &str, rev: u64, t: EventType) -> WatchEvent {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
             nodeName: \"{node}\"\n  containers:\n  - name: c\n    image: x\n    resources: {{requests: {{cpu: 400m}}}}\n"
        );
        let mut o = flotilla_api::manifest::parse_manifests("t", &text)
            .unwrap()
            .remove(0)
            .object;
        o.metadata.get_or_insert_with(ObjectMeta::default).uid = uid.into();
        WatchEvent {
            r#type: t as i32,
            object: Some(o),
            revision: rev,
        }
    }

    fn node(name: &str, cpu: &str, rev: u64) -> WatchEvent {
        let text = format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n");
        let mut o = flotilla_api::manifest::parse_manifests("t", &text)
            .unwrap()
            .remove(0)
            .object;
        if let Some(Body::Node(n)) = &mut o.body {
            let st = n.status.get_or_insert_with(Default::default);
            st.allocatable.insert("cpu".into(), cpu.into());
            st.allocatable.insert("pods".into(), "110".into());
        }
        WatchEvent {
            r#type: EventType::Added as i32,
            object: Some(o),
            revision: rev,
        }
    }

    fn kinds(r: &HistoryResult) -> Vec<String> {
        r.anomalies
            .iter()
            .map(|a| a["anomaly"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn a_clean_history_has_no_anomaly() {
        let evs = vec![
            node("a1", "1", 1),
            pod("p1", "u1", "", 2, EventType::Added),
            pod("p1", "u1", "a1", 3, EventType::Modified),
            pod("p2", "u2", "a1", 4, EventType::Added),
            pod("p1", "u1", "a1", 5, EventType::Deleted),
            pod("p3", "u3", "a1", 6, EventType::Added),
        ];
        let r = check_history(&evs);
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
        assert_eq!(r.stats["binds"], 3);
    }

    #[test]
    fn a_rebind_an_unbind_and_an_overcommit_are_found() {
        let evs = vec![
            node("a1", "1", 1),
            node("a2", "1", 1),
            pod("p1", "u1", "a1", 2, EventType::Added),
            pod("p1", "u1", "a2", 3, EventType::Modified),
            pod("p2", "u2", "a1", 4, EventType::Added),
            pod("p2", "u2", "", 5, EventType::Modified),
            pod("p3", "u3", "a2", 6, EventType::Added),
            pod("p4", "u4", "a2", 6, EventType::Added),
            pod("p5", "u5", "a9", 7, EventType::Added),
        ];
        let r = check_history(&evs);
        assert_eq!(
            kinds(&r),
            [
                "pod_bound_twice",
                "pod_unbound",
                "node_overcommitted",
                "bound_to_unknown_node"
            ]
        );
    }
}
