//! Proves that a three-server cluster taking 2,000 concurrent writes survives a SIGKILL of its
//! leader mid-load: writes resume on the new leader, and once the killed server is back every
//! acknowledged write is on all three servers with the same resourceVersion. Under that load
//! the leader coalesces concurrent writes into shared entries and flushes many writes per
//! fsync (group commit). A write that
//! failed or timed out is "unknown", never counted as lost or as done.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_tests::{configmap, Cluster, Opts};

const WRITERS: usize = 50;
const PER_WRITER: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_under_2000_concurrent_writes_loses_nothing() {
    let mut cluster = Cluster::start(3, Opts::default());
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let addrs = cluster.api_addrs();
    let acked = Arc::new(AtomicUsize::new(0));

    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        // Spread writers over all servers: followers forward.
        let server = addrs[w % addrs.len()].clone();
        let all = addrs.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = flotilla_tests::connect(vec![server]).await;
            let mut done = BTreeMap::new();
            let mut after_kill = 0usize;
            for i in 0..PER_WRITER {
                let name = format!("w{w}-{i}");
                let mut r = c.create(configmap(&name, &[("v", "x")])).await;
                if r.is_err() {
                    // The server this writer uses may be the one killed: use any server.
                    c = flotilla_tests::connect(all.clone()).await;
                    r = c.create(configmap(&name, &[("v", "x")])).await;
                }
                if let Ok(o) = r {
                    let n = acked.fetch_add(1, Ordering::SeqCst);
                    if n >= 600 {
                        after_kill += 1;
                    }
                    done.insert(name, o.meta().resource_version);
                }
            }
            (done, after_kill)
        }));
    }

    // Kill the leader once a good share of the load is acknowledged.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while acked.load(Ordering::SeqCst) < 500 {
        assert!(
            std::time::Instant::now() < deadline,
            "load did not progress\n{}",
            cluster.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Group commit: with 50 concurrent writers the leader coalesces several writes into one
    // entry and flushes several writes per fsync.
    let flushes = cluster
        .metric(leader, "flotilla_raft_log_flushes")
        .await
        .unwrap_or(0.0);
    let (writes, proposals) = cluster.proposal_stats(leader).await;
    eprintln!(
        "leader before the kill: {writes} writes in {proposals} proposals, {flushes} log flushes"
    );
    assert!(
        flushes > 0.0 && writes / flushes > 1.5 && writes / proposals > 1.5,
        "no group commit: {writes} writes in {proposals} proposals and {flushes} flushes"
    );
    cluster.kill(leader);
    let at_kill = acked.load(Ordering::SeqCst);

    let mut acknowledged = BTreeMap::new();
    let mut resumed = 0;
    for t in tasks {
        let (done, after) = t.await.unwrap();
        resumed += after;
        acknowledged.extend(done);
    }
    let total = acknowledged.len();
    eprintln!(
        "acknowledged {total} of {} writes ({at_kill} before the kill)",
        WRITERS * PER_WRITER
    );
    assert!(
        total > at_kill,
        "no write was acknowledged after the leader was killed"
    );
    assert!(resumed > 0);
    assert!(
        total >= WRITERS * PER_WRITER * 9 / 10,
        "too many writes failed: {total}\n{}",
        cluster.log_tails()
    );

    cluster.start_server(leader);
    let new_leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let max_rv = *acknowledged.values().max().unwrap();
    cluster
        .wait_applied(&[1, 2, 3], max_rv, Duration::from_secs(60))
        .await;
    for id in [1, 2, 3] {
        let mut c = cluster.client_of(id).await;
        let (items, _) = c.list("ConfigMap", "default", "", true).await.unwrap();
        let on_server: BTreeMap<String, u64> = items
            .iter()
            .map(|o| (o.meta().name.clone(), o.meta().resource_version))
            .collect();
        for (name, rv) in &acknowledged {
            assert_eq!(
                on_server.get(name),
                Some(rv),
                "server {id} (leader now {new_leader}) lost or changed {name}"
            );
        }
    }
}
