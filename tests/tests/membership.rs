//! Proves membership changes on real processes: 3 → 5 → 3 servers while a writer keeps
//! writing loses no acknowledged write; the servers added after the log was compacted behind a
//! snapshot catch up by snapshot install; the final three agree on every object; and a server
//! that received its state as a snapshot still serves a watch from before the snapshot (the
//! snapshot carries the watch history).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::pb::admin::AddLearnerRequest;
use flotilla_api::pb::api::{EventType, WatchRequest};
use flotilla_tests::{configmap, Cluster, Opts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_to_five_to_three_under_write_load() {
    let opts = Opts {
        snapshot_logs_since_last: 200,
        max_in_snapshot_log_to_keep: 20,
        ..Opts::default()
    };
    let mut cluster = Cluster::start(3, opts);
    cluster.wait_leader(Duration::from_secs(20)).await;
    let mut c = cluster.client().await;
    for i in 0..450 {
        c.create(configmap(&format!("pre-{i}"), &[])).await.unwrap();
    }
    // The log has been compacted behind a snapshot on the leader.
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    assert!(
        cluster
            .metric(leader, "flotilla_raft_snapshot_index")
            .await
            .unwrap_or(0.0)
            >= 200.0
    );

    for id in [4, 5] {
        cluster.add_server(id);
        cluster.write_config(id, &[]);
        cluster.start_server(id);
    }

    // A writer that keeps going through every change.
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let addrs: Vec<String> = cluster.api_addrs();
    let writer = {
        let stop = stop.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut c = flotilla_tests::connect(addrs.clone()).await;
            let mut acked = BTreeMap::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && i < 5000 {
                let name = format!("load-{i}");
                match c.create(configmap(&name, &[])).await {
                    Ok(o) => {
                        acked.insert(name, o.meta().resource_version);
                        progress.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => c = flotilla_tests::connect(addrs.clone()).await,
                }
                i += 1;
            }
            acked
        })
    };

    // The membership changes below happen while the writer is acknowledged writes.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while progress.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never got going"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before_changes = progress.load(Ordering::SeqCst);
    let mut admin = cluster.client().await;
    for id in [4, 5] {
        let s = &cluster.servers[&id];
        admin
            .add_learner(AddLearnerRequest {
                id,
                raft_address: s.raft.clone(),
                api_address: s.api.clone(),
            })
            .await
            .unwrap();
    }
    for id in [4, 5] {
        // A server added after compaction received the state as a snapshot.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while cluster
            .metric(id, "flotilla_raft_snapshots_installed")
            .await
            .unwrap_or(0.0)
            < 1.0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "server {id} did not catch up by snapshot install\n{}",
                cluster.metrics_text(id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        admin.promote(id).await.unwrap();
    }
    let st = admin.cluster_status().await.unwrap();
    assert_eq!(st.members.iter().filter(|m| m.voter).count(), 5, "{st:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    for id in [1, 2] {
        admin.remove(id).await.unwrap();
        cluster.stop(id);
    }
    // Let the writer show it still makes progress on the final three servers.
    let after_changes = progress.load(Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while progress.load(Ordering::SeqCst) < after_changes + 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "no writes acknowledged after 3 -> 5 -> 3\n{}",
            cluster.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.unwrap();
    assert!(
        after_changes > before_changes,
        "no write was acknowledged while membership changed"
    );

    cluster.wait_leader(Duration::from_secs(20)).await;
    let mut admin = flotilla_tests::connect(vec![
        cluster.servers[&3].api.clone(),
        cluster.servers[&4].api.clone(),
        cluster.servers[&5].api.clone(),
    ])
    .await;
    let st = admin.cluster_status().await.unwrap();
    let voters: Vec<u64> = st
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    assert_eq!(voters, vec![3, 4, 5], "{st:?}");

    let max_rv = *acked.values().max().unwrap();
    cluster
        .wait_applied(&[3, 4, 5], max_rv, Duration::from_secs(30))
        .await;
    let mut reference = None;
    for id in [3, 4, 5] {
        let mut c = cluster.client_of(id).await;
        let (items, _) = c.list("ConfigMap", "default", "", true).await.unwrap();
        let got: BTreeMap<String, u64> = items
            .iter()
            .map(|o| (o.meta().name.clone(), o.meta().resource_version))
            .collect();
        for (name, rv) in &acked {
            assert_eq!(
                got.get(name),
                Some(rv),
                "server {id} lost or changed {name}"
            );
        }
        assert!(got.len() >= 450 + acked.len());
        match &reference {
            None => reference = Some(got),
            Some(r) => assert_eq!(r, &got, "servers 3..5 disagree"),
        }
    }

    // Server 4 never applied the first entries itself; its snapshot brought their history.
    let mut c = cluster.client_of(4).await;
    let mut w = c
        .watch(WatchRequest {
            kind: "ConfigMap".into(),
            namespace: "default".into(),
            start_revision: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("watch from revision 1 on server 4: {e}"))
        .unwrap();
    assert_eq!(first.r#type, EventType::Added as i32);
    assert_eq!(first.object.unwrap().meta().name, "pre-0");
}
