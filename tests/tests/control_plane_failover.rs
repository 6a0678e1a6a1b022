//! Proves the scheduler and controllers survive control-plane faults, with three real servers
//! and Node objects to schedule onto (no agents: binding does not need running containers):
//!
//! - SIGSTOP the server holding the scheduler Lease while pods keep arriving, until another
//!   server takes the Lease, then SIGCONT it: the late bind writes it makes with its old
//!   epoch are refused by fencing (counted in its `flotilla_fenced_writes_total`), every pod
//!   ends up bound, and no pod is ever bound twice (checked on the full watch history: a
//!   pod's `spec.nodeName` is set once and never changes).
//! - SIGKILL the Raft leader: the roles live on followers (the Raft leader hands them off), so
//!   scheduling and ReplicaSet reconciliation resume right after a new leader is elected; the
//!   times are printed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::pb::api::{object::Body, EventType, Object, WatchRequest};
use flotilla_api::ObjectKey;
use flotilla_tests::{Cluster, Opts};
use nix::sys::signal::Signal;

fn parse(yaml: &str) -> Object {
    flotilla_api::manifest::parse_manifests("test", yaml)
        .unwrap()
        .remove(0)
        .object
}

fn node(name: &str) -> Object {
    parse(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nstatus:\n  allocatable: {{cpu: \"1000\", memory: 1000Gi, pods: \"100000\"}}\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
    ))
}

fn pod(name: &str) -> Object {
    parse(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers: [{{name: c, image: busybox, resources: {{requests: {{cpu: 10m}}}}}}]\n"
    ))
}

fn node_name(o: &Object) -> String {
    match &o.body {
        Some(Body::Pod(p)) => p
            .spec
            .as_ref()
            .map(|s| s.node_name.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

async fn scheduler_holder(c: &mut flotilla_client::Client) -> Option<(u64, i64)> {
    let key = ObjectKey {
        kind: "Lease".into(),
        namespace: "flotilla-system".into(),
        name: "scheduler".into(),
    };
    let (o, _) = c.get(key, false).await.ok()?;
    match o.body {
        Some(Body::Lease(l)) => {
            let s = l.spec?;
            let id = s.holder_identity?.strip_prefix("server-")?.parse().ok()?;
            Some((id, i64::from(s.lease_transitions?)))
        }
        _ => None,
    }
}

async fn wait_bound(c: &mut flotilla_client::Client, name: &str, within: Duration) -> Duration {
    let start = Instant::now();
    let key = ObjectKey {
        kind: "Pod".into(),
        namespace: "default".into(),
        name: name.into(),
    };
    loop {
        if let Ok((o, _)) = c.get(key.clone(), false).await {
            if !node_name(&o).is_empty() {
                return start.elapsed();
            }
        }
        assert!(start.elapsed() < within, "{name} never bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_stops_a_paused_scheduler_and_roles_survive_a_leader_kill() {
    let mut cluster = Cluster::start(
        3,
        Opts {
            extra_limits: vec![
                "role_lease_duration_ms = 3000".into(),
                "role_retry_ms = 300".into(),
                // These Node objects have no agent renewing their Leases.
                "node_grace_period_ms = 3600000".into(),
                // Small binding batches: a burst keeps the scheduler busy long enough to be
                // paused in the middle of it.
                "scheduler_bind_batch = 20".into(),
            ],
            ..Default::default()
        },
    );
    cluster.wait_leader(Duration::from_secs(20)).await;
    let mut c = cluster.client().await;
    for n in ["node-a", "node-b", "node-c"] {
        // Status is the status subresource's: written after the create, as an agent does.
        let mut stored = c.create(node(n)).await.unwrap();
        stored.body = node(n).body;
        c.update_status(stored).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut holder, mut epoch) = loop {
        if let Some(h) = scheduler_holder(&mut c).await {
            break h;
        }
        assert!(Instant::now() < deadline, "no scheduler lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Pods keep arriving, through servers other than the paused one.
    let created = Arc::new(AtomicUsize::new(0));
    let mut fenced = 0.0;
    for cycle in 0..5 {
        let others: Vec<String> = cluster
            .running()
            .into_iter()
            .filter(|id| *id != holder)
            .map(|id| cluster.servers[&id].api.clone())
            .collect();
        // A burst, so the scheduler is busy binding when it is paused halfway through it.
        let mut bc = flotilla_tests::connect(others.clone()).await;
        let burst = |created: &AtomicUsize| -> Vec<flotilla_api::pb::api::Write> {
            (0..1000)
                .map(|_| {
                    let i = created.fetch_add(1, Ordering::SeqCst);
                    flotilla_api::pb::api::Write {
                        op: Some(flotilla_api::pb::api::write::Op::Create(pod(&format!(
                            "p-{i}"
                        )))),
                        fence: None,
                    }
                })
                .collect()
        };
        let bound_before = cluster
            .metric(holder, "flotilla_scheduler_pods_bound_total")
            .await
            .unwrap_or(0.0);
        for _ in 0..3 {
            bc.batch(burst(&created)).await.unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let creator = {
            let (stop, created) = (stop.clone(), created.clone());
            let mut c = flotilla_tests::connect(others.clone()).await;
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let i = created.fetch_add(1, Ordering::SeqCst);
                    let _ = c.create(pod(&format!("p-{i}"))).await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        // Pause it once it is binding the burst.
        let t = Instant::now();
        while cluster
            .metric(holder, "flotilla_scheduler_pods_bound_total")
            .await
            .unwrap_or(0.0)
            <= bound_before
        {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the scheduler never bound the burst"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        cluster.signal(holder, Signal::SIGSTOP);
        let paused_at = Instant::now();
        for _ in 0..3 {
            bc.batch(burst(&created)).await.unwrap();
        }
        let mut oc = flotilla_tests::connect(others).await;
        let (next, next_epoch) = loop {
            if let Some((h, e)) = scheduler_holder(&mut oc).await {
                if e > epoch {
                    break (h, e);
                }
            }
            assert!(
                paused_at.elapsed() < Duration::from_secs(30),
                "nobody took the scheduler lease from the paused server"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        println!(
            "cycle {cycle}: server-{holder} paused; server-{next} took the scheduler lease (epoch {epoch} -> {next_epoch}) after {} ms",
            paused_at.elapsed().as_millis()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.signal(holder, Signal::SIGCONT);
        tokio::time::sleep(Duration::from_millis(2000)).await;
        stop.store(true, Ordering::SeqCst);
        creator.await.unwrap();
        fenced = cluster
            .metric(holder, "flotilla_fenced_writes_total")
            .await
            .unwrap_or(0.0);
        println!("cycle {cycle}: server-{holder} had {fenced} writes refused by fencing");
        if fenced > 0.0 {
            break;
        }
        (holder, epoch) = (next, next_epoch);
    }
    assert!(
        fenced > 0.0,
        "no late write of a deposed scheduler was seen refused"
    );

    // Every pod is bound, and none was ever bound twice: the full history of pod events.
    let total = created.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (pods, _) = c.list("Pod", "default", "", false).await.unwrap();
        let unbound = pods.iter().filter(|p| node_name(p).is_empty()).count();
        if unbound == 0 {
            break;
        }
        if Instant::now() > deadline {
            let one = pods.iter().find(|p| node_name(p).is_empty()).cloned();
            let mut bound = Vec::new();
            for id in cluster.running() {
                bound.push((
                    id,
                    cluster
                        .metric(id, "flotilla_scheduler_pods_bound_total")
                        .await,
                ));
            }
            let (ok, st, _) = flotilla_tests::cli(
                &[
                    "--server",
                    &cluster.api_addrs().join(","),
                    "cluster",
                    "status",
                ],
                None,
            );
            panic!("{unbound} pods never bound; bound by server: {bound:?}; one: {one:?}\n{ok} {st}\n{}", cluster.log_tails());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut stream = c
        .watch(WatchRequest {
            kind: "Pod".into(),
            namespace: "default".into(),
            start_revision: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let (_, now) = c.list("Pod", "default", "", false).await.unwrap();
    let mut bound_to: BTreeMap<String, String> = BTreeMap::new();
    let mut bindings = 0;
    while let Ok(Some(Ok(ev))) = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut stream),
    )
    .await
    {
        if ev.r#type == EventType::Bookmark as i32 {
            if ev.revision >= now {
                break;
            }
            continue;
        }
        let Some(o) = ev.object else { continue };
        let n = node_name(&o);
        if n.is_empty() {
            continue;
        }
        match bound_to.get(&o.meta().name) {
            Some(first) => assert_eq!(first, &n, "{} was bound twice", o.meta().name),
            None => {
                bindings += 1;
                bound_to.insert(o.meta().name.clone(), n);
            }
        }
        if ev.revision >= now && bound_to.len() >= total {
            break;
        }
    }
    println!("{total} pods created, {bindings} bound once each");
    assert!(bindings >= total.saturating_sub(5) && bindings > 0);

    // SIGKILL the Raft leader: the roles are on followers and carry on.
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let (role_holder, _) = scheduler_holder(&mut c).await.unwrap();
    assert_ne!(
        role_holder, leader,
        "the Raft leader holds the scheduler role"
    );
    let killed = Instant::now();
    cluster.kill(leader);
    let survivors: Vec<String> = cluster
        .running()
        .iter()
        .map(|id| cluster.servers[id].api.clone())
        .collect();
    let mut c = flotilla_tests::connect(survivors).await;
    let new_leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let elected = killed.elapsed();
    let t = Instant::now();
    c.create(pod("after-failover")).await.unwrap();
    let bound = wait_bound(&mut c, "after-failover", Duration::from_secs(60)).await;
    let scheduling = t.elapsed().max(bound);
    let rs = parse(
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: after}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: after}}\n  template:\n    metadata: {labels: {app: after}}\n    spec:\n      containers: [{name: c, image: busybox}]\n",
    );
    let t = Instant::now();
    c.create(rs).await.unwrap();
    let reconciled = loop {
        let (pods, _) = c.list("Pod", "default", "app=after", false).await.unwrap();
        if pods.len() == 3 && pods.iter().all(|p| !node_name(p).is_empty()) {
            break t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the ReplicaSet was never reconciled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "Raft leader server-{leader} SIGKILLed: server-{new_leader} elected after {} ms; a new pod was bound {} ms later; a new ReplicaSet had its 3 pods created and bound {} ms after it was created",
        elected.as_millis(),
        scheduling.as_millis(),
        reconciled.as_millis()
    );
}
