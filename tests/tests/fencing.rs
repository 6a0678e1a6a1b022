//! Proves lease fencing through the API with three real servers: a batch that carries
//! `fence = (lease, epoch)` applies while the Lease is at that epoch (its leaseTransitions) and
//! is refused whole with FENCED once another holder has taken the lease (epoch bumped), while
//! unfenced writes are unaffected; each refusal counts in `flotilla_fenced_writes_total` on the
//! server the request entered. (The elected scheduler and controllers that will carry these
//! fences are issue 5's next step.)

use std::time::Duration;

use flotilla_api::pb::api::{
    object::Body, write::Op, write_result, Fence, Lease, LeaseSpec, Write,
};
use flotilla_api::{ErrorCode, Object, ObjectKey, ObjectMeta};
use flotilla_tests::{cm_key, configmap, Cluster, Opts};

fn lease(holder: &str, epoch: i32) -> Object {
    Object {
        api_version: "coordination.k8s.io/v1".into(),
        kind: "Lease".into(),
        metadata: Some(ObjectMeta {
            name: "scheduler".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        body: Some(Body::Lease(Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(10),
                lease_transitions: Some(epoch),
                ..Default::default()
            }),
        })),
    }
}

fn fenced(name: &str, epoch: i64) -> Write {
    Write {
        op: Some(Op::Create(configmap(name, &[]))),
        fence: Some(Fence {
            lease_namespace: "default".into(),
            lease_name: "scheduler".into(),
            epoch,
        }),
    }
}

fn codes(r: &flotilla_api::pb::api::BatchResponse) -> Vec<Option<ErrorCode>> {
    r.results
        .iter()
        .map(|r| match &r.result {
            Some(write_result::Result::Error(e)) => Some(e.code()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_holders_fenced_writes_are_refused() {
    let cluster = Cluster::start(3, Opts::default());
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let entry = *cluster.servers.keys().find(|id| **id != leader).unwrap();
    // Through a follower: fencing is decided where the write is applied, not where it entered.
    let mut c = cluster.client_of(entry).await;
    c.create(lease("server-1", 1)).await.unwrap();

    let r = c.batch(vec![fenced("a", 1), fenced("b", 1)]).await.unwrap();
    assert_eq!(codes(&r), vec![None, None]);

    // Another holder takes the lease: epoch 2.
    let key = ObjectKey {
        kind: "Lease".into(),
        namespace: "default".into(),
        name: "scheduler".into(),
    };
    let (mut current, _) = c.get(key, false).await.unwrap();
    current.body = lease("server-2", 2).body;
    c.update(current).await.unwrap();

    let r = c
        .batch(vec![
            fenced("late-1", 1),
            fenced("late-2", 1),
            Write {
                op: Some(Op::Create(configmap("unfenced", &[]))),
                fence: None,
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        codes(&r),
        vec![Some(ErrorCode::Fenced), Some(ErrorCode::Fenced), None]
    );
    for name in ["late-1", "late-2"] {
        let e = c.get(cm_key(name), false).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound, "{name} was applied");
    }
    let r = c.batch(vec![fenced("new-holder", 2)]).await.unwrap();
    assert_eq!(codes(&r), vec![None]);

    let text = cluster.metrics_text(entry).await;
    assert!(
        text.lines().any(|l| l == "flotilla_fenced_writes_total 2"),
        "metrics:\n{}",
        text.lines()
            .filter(|l| l.contains("fenced"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
