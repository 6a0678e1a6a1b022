//! Proves that coalescing concurrent writes into shared Raft entries (and forwarded batches)
//! never gives two versions of one object the same resourceVersion, with writers on the
//! leader and on a follower racing on one key; and that a batch writing one object twice is
//! refused naming both writes. (Its own file: test binaries run one after another, so this
//! load never overlaps another test's cluster.)

use std::time::Duration;

use flotilla_api::ErrorCode;
use flotilla_tests::{configmap, Cluster, Opts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_writes_keep_one_version_per_revision() {
    use flotilla_api::pb::api::{write::Op, Write};
    let cluster = Cluster::start(3, Opts::default());
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let mut c = cluster.client().await;
    c.create(configmap("hot", &[("v", "0")])).await.unwrap();
    let others: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|i| *i != leader)
        .collect();

    // 40 writers, half through a follower: unconditional updates of one object race with
    // creates of distinct ones, so batches fill and the same key is offered twice.
    let mut tasks = Vec::new();
    for w in 0..40u64 {
        let mut c = if w % 2 == 0 {
            cluster.client_of(others[0]).await
        } else {
            cluster.client_of(leader).await
        };
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for i in 0..10 {
                let mut o = configmap("hot", &[("v", &format!("{w}-{i}"))]);
                o.meta_mut().resource_version = 0;
                if let Ok(o) = c.update(o).await {
                    versions.push(o.meta().resource_version);
                }
                let _ = c.create(configmap(&format!("cold-{w}-{i}"), &[])).await;
            }
            versions
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        n,
        "two updates of one object share a resourceVersion"
    );
    assert!(n >= 300, "only {n} of 400 updates succeeded");
    let (writes, proposals) = cluster.proposal_stats(leader).await;
    eprintln!("leader: {writes} writes in {proposals} proposals");

    // One batch may not write an object twice.
    let w = |name: &str| Write {
        op: Some(Op::Create(configmap(name, &[]))),
        fence: None,
    };
    let e = c.batch(vec![w("x"), w("y"), w("x")]).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert_eq!(e.field, "writes[2]", "{}", e.message);
    assert!(e.message.contains("writes[0]"), "{}", e.message);
}
