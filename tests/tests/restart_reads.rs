//! Proves that a linearizable read after a crash never returns state older than an acknowledged
//! write. Found by the fault-injection suite (jepsen/, register on five servers): a Raft leader
//! SIGKILLed and restarted took its leadership back at once (openraft's leader restore), while
//! its state machine had rolled back to its last durable commit (applies are not fsync'd; the
//! log is), and served reads from that older state while the others had not yet caught it up.
//! The race is narrow on loopback, so besides reading, this checks the rule that closes it: a
//! restarted server never resumes leadership without an election (a new term, whose first
//! entry must commit before a read index is served).

use std::time::{Duration, Instant};

use flotilla_api::pb::api::object::Body;
use flotilla_tests::{cm_key, configmap, Cluster, Opts};

fn value(o: &flotilla_api::pb::api::Object) -> String {
    match &o.body {
        Some(Body::ConfigMap(cm)) => cm.data.get("v").cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_never_serves_a_read_older_than_an_acknowledged_write() {
    let mut cluster = Cluster::start(3, Opts::default());
    for round in 0..3 {
        let leader = cluster.wait_leader(Duration::from_secs(20)).await;
        let mut c = cluster.client().await;
        let name = format!("r{round}");
        let mut last = c.create(configmap(&name, &[("v", "0")])).await.unwrap();
        // A snapshot on the leader makes its state machine durable at that point (applies
        // between snapshots are not fsync'd); the writes after it are only in the Raft log.
        for i in 1..=50 {
            if i == 25 {
                let mut on_leader =
                    flotilla_tests::connect(vec![cluster.servers[&leader].api.clone()]).await;
                on_leader.snapshot().await.unwrap();
            }
            let mut o = configmap(&name, &[("v", &i.to_string())]);
            o.metadata.as_mut().unwrap().resource_version = last.meta().resource_version;
            last = c.update(o).await.unwrap();
        }
        let acked = value(&last);
        let old_term = cluster.local_status(leader).await.unwrap().term;
        // Every server down at once, then the old leader and one other back: a quorum whose
        // state machines both rolled back.
        let ids: Vec<u64> = cluster.servers.keys().copied().collect();
        for id in &ids {
            cluster.kill(*id);
        }
        let other = *ids.iter().find(|i| **i != leader).unwrap();
        cluster.start_server(leader);
        cluster.start_server(other);
        let mut reader = flotilla_tests::connect(vec![cluster.servers[&leader].api.clone()]).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let got = loop {
            match reader.get(cm_key(&name), false).await {
                Ok((o, _)) => break o,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no read served: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        assert_eq!(
            value(&got),
            acked,
            "round {round}: a linearizable read on restarted leader {leader} returned resourceVersion {} after {} was acknowledged",
            got.meta().resource_version,
            last.meta().resource_version
        );
        let now = cluster.wait_leader(Duration::from_secs(20)).await;
        let term = cluster.local_status(now).await.unwrap().term;
        assert!(
            term > old_term,
            "round {round}: server {now} leads in term {term} after a restart of every server; before it, {leader} led term {old_term}: leadership came back without an election"
        );
        for id in &ids {
            if !cluster.is_running(*id) {
                cluster.start_server(*id);
            }
        }
    }
}
