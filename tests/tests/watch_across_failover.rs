//! Proves the watch guarantees on real processes: a watch from revision R on a follower sees
//! exactly the events after R, in revision order, with no gap and no duplicate, across a SIGKILL
//! of the leader; it resumes from its last revision on another server; an idle watch gets
//! bookmarks; and a watch from a compacted revision gets COMPACTED.

use std::time::Duration;

use flotilla_api::pb::api::{EventType, WatchEvent, WatchRequest};
use flotilla_api::{ApiError, ErrorCode};
use flotilla_tests::{configmap, Cluster, Opts};

async fn next(stream: &mut tonic::Streaming<WatchEvent>) -> WatchEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("watch event within 20 s")
            .expect("watch stream error")
            .expect("watch stream ended");
        if ev.r#type != EventType::Bookmark as i32 {
            return ev;
        }
    }
}

fn req(start: u64) -> WatchRequest {
    WatchRequest {
        kind: "ConfigMap".into(),
        namespace: "default".into(),
        start_revision: start,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_revision_on_follower_across_leader_kill() {
    let mut cluster = Cluster::start(
        3,
        Opts {
            watch_history_revisions: 200,
            ..Opts::default()
        },
    );
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let follower = *cluster.servers.keys().find(|id| **id != leader).unwrap();
    let mut c = cluster.client().await;
    let before = c.create(configmap("before", &[])).await.unwrap();
    let r = before.meta().resource_version;

    // Writes after R, before the kill: creates, an update, a delete.
    let mut expected: Vec<(i32, String, u64)> = Vec::new();
    for i in 0..20 {
        let o = c.create(configmap(&format!("a{i}"), &[])).await.unwrap();
        expected.push((
            EventType::Added as i32,
            o.meta().name.clone(),
            o.meta().resource_version,
        ));
    }
    let mut upd = configmap("a0", &[("k", "v")]);
    upd.meta_mut().resource_version = expected[0].2;
    let o = c.update(upd).await.unwrap();
    expected.push((
        EventType::Modified as i32,
        "a0".into(),
        o.meta().resource_version,
    ));
    let d = c
        .delete(flotilla_api::pb::api::DeleteRequest {
            key: Some(flotilla_tests::cm_key("a1")),
            ..Default::default()
        })
        .await
        .unwrap();
    expected.push((
        EventType::Deleted as i32,
        "a1".into(),
        d.meta().resource_version,
    ));

    let mut fc = cluster.client_of(follower).await;
    let mut stream = fc.watch(req(r)).await.unwrap();

    cluster.kill(leader);
    let addrs = cluster.api_addrs();
    for i in 0..20 {
        // The client's server may be the one killed: a write in flight then has an unknown
        // outcome, resolved by reading it back.
        let o =
            flotilla_tests::create_resolved(&mut c, &addrs, configmap(&format!("b{i}"), &[])).await;
        expected.push((
            EventType::Added as i32,
            o.meta().name.clone(),
            o.meta().resource_version,
        ));
    }

    let mut seen = Vec::new();
    let mut last_rev = r;
    while seen.len() < expected.len() {
        let ev = next(&mut stream).await;
        assert!(
            ev.revision >= last_rev,
            "events out of order: {} after {last_rev}",
            ev.revision
        );
        last_rev = ev.revision;
        let o = ev.object.unwrap();
        seen.push((ev.r#type, o.meta().name.clone(), ev.revision));
    }
    assert_eq!(
        seen, expected,
        "the watch must see exactly the writes after R, in order"
    );

    // Resume from the last revision on another live server: only newer events.
    let other = cluster
        .running()
        .into_iter()
        .find(|id| *id != follower)
        .unwrap();
    let mut oc = cluster.client_of(other).await;
    let mut resumed = oc.watch(req(last_rev)).await.unwrap();
    let o = flotilla_tests::create_resolved(&mut c, &addrs, configmap("after-resume", &[])).await;
    let ev = next(&mut resumed).await;
    assert_eq!(ev.object.unwrap().meta().name, "after-resume");
    assert_eq!(ev.revision, o.meta().resource_version);
    // The original stream continues too, with no duplicate.
    let ev = next(&mut stream).await;
    assert_eq!(
        (ev.object.unwrap().meta().name.as_str(), ev.revision),
        ("after-resume", o.meta().resource_version)
    );

    // An idle watch learns the current revision from bookmarks.
    let mut idle = oc
        .watch(WatchRequest {
            name: "nothing-here".into(),
            ..req(0)
        })
        .await
        .unwrap();
    let bm = tokio::time::timeout(Duration::from_secs(10), idle.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(bm.r#type, EventType::Bookmark as i32);
    assert!(bm.revision >= o.meta().resource_version);

    // Push history past its bound; a watch from the old revision is COMPACTED.
    let batch: Vec<_> = (0..250)
        .map(|i| flotilla_api::pb::api::Write {
            op: Some(flotilla_api::pb::api::write::Op::Create(configmap(
                &format!("c{i}"),
                &[],
            ))),
            fence: None,
        })
        .collect();
    for chunk in batch.chunks(1) {
        c.batch(chunk.to_vec()).await.unwrap();
    }
    let mut old = oc.watch(req(r)).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), old.message())
        .await
        .unwrap()
        .unwrap_err();
    let e = ApiError::from_status(&e);
    assert_eq!(e.code(), ErrorCode::Compacted, "{e}");
    assert!(e.message.contains("compacted"), "{e}");
}
