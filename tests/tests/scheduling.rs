//! Proves the scheduler places pods, with real processes (three servers, agents on QUIC, runc,
//! the local registry): `cluster status` names the holder of each role's Lease; pods created
//! without `spec.nodeName` are bound by the scheduler and run where they were bound, spread
//! over both nodes; a pod that fits nowhere gets `PodScheduled=False` with kube-scheduler's
//! wording and a `FailedScheduling` Event, and is placed once a node that fits joins; a bound
//! pod is never bound again nor moved by an update (the state machine refuses both).

use std::time::{Duration, Instant};

use flotilla_api::pb::api::{object::Body, write::Op, write_result, Binding, Write};
use flotilla_api::ObjectKey;
use flotilla_tests::agent::{running, wait_for, Testbed};
use flotilla_tests::{cli, node_tests_possible};

fn pod(name: &str, image: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{extra_spec}  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    resources: {{requests: {{cpu: 10m, memory: 8Mi}}}}\n"
    )
}

fn key(name: &str) -> ObjectKey {
    ObjectKey {
        kind: "Pod".into(),
        namespace: "default".into(),
        name: name.into(),
    }
}

async fn node_of(c: &mut flotilla_client::Client, name: &str) -> String {
    let (o, _) = c.get(key(name), false).await.unwrap();
    match o.body {
        Some(Body::Pod(p)) => p.spec.unwrap_or_default().node_name,
        _ => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_places_pods_explains_misfits_and_never_binds_twice() {
    if !node_tests_possible("scheduling") {
        return;
    }
    let bed = Testbed::start(&[]).await;
    let cluster = &bed.cluster;
    let servers = bed.servers.clone();
    let registry = &bed.registry;

    // Both roles are held by some server, and `cluster status` says which.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) = cli(&["--server", &servers, "cluster", "status"], None);
        assert!(ok, "{err}");
        let held = |role: &str| {
            out.lines()
                .any(|l| l.starts_with(role) && l.contains("server-") && !l.contains("expired"))
        };
        if held("scheduler") && held("controller-manager") {
            assert!(out.contains("HOLDER") && out.contains("EPOCH"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "roles not held:\n{out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let n1 = bed.agent("n1", &[]);
    let n2 = bed.agent("n2", &[]);
    let apply = |text: &str| bed.apply(text);
    let image = registry.image("busybox:test");
    let mut c = cluster.client().await;
    // Both nodes first, so the spread is over two.
    bed.wait_nodes(&mut c, 2).await;
    for i in 0..4 {
        apply(&pod(&format!("free-{i}"), &image, ""));
    }
    let mut on = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..4 {
        let name = format!("free-{i}");
        wait_for(&mut c, &name, "Running", &n1, running).await;
        *on.entry(node_of(&mut c, &name).await).or_default() += 1;
    }
    assert_eq!(
        on.keys().cloned().collect::<Vec<_>>(),
        vec!["n1".to_string(), "n2".to_string()],
        "pods spread over both nodes: {on:?}"
    );
    let n1_count = n1.runc_ids().len();
    let n2_count = n2.runc_ids().len();
    assert_eq!(
        (n1_count, n2_count),
        (on["n1"], on["n2"]),
        "each runs where bound"
    );

    // A pod that fits nowhere says why, in its condition and in an Event.
    apply(&pod(
        "wants-ssd",
        &image,
        "  nodeSelector:\n    disktype: ssd\n",
    ));
    let want = "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.";
    let (_, st) = wait_for(&mut c, "wants-ssd", "explained", &n1, |st| {
        st.conditions
            .iter()
            .any(|c| c.r#type == "PodScheduled" && c.status == "False")
    })
    .await;
    let cond = st
        .conditions
        .iter()
        .find(|c| c.r#type == "PodScheduled")
        .unwrap();
    assert_eq!(cond.reason, "Unschedulable");
    assert_eq!(cond.message, want);
    let (ok, out, err) = cli(
        &["--server", &servers, "describe", "pod", "wants-ssd"],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("FailedScheduling") && out.contains(want),
        "{out}"
    );
    // A node that fits joins: the pod is placed there and runs.
    let n3 = bed.agent("n3", &["--labels", "disktype=ssd"]);
    wait_for(&mut c, "wants-ssd", "Running on n3", &n3, running).await;
    assert_eq!(node_of(&mut c, "wants-ssd").await, "n3");

    // Bound is bound: a second binding and a move by update are refused.
    let (o, _) = c.get(key("free-0"), false).await.unwrap();
    let bound_to = node_of(&mut c, "free-0").await;
    let other = if bound_to == "n1" { "n2" } else { "n1" };
    let r = c
        .batch(vec![Write {
            op: Some(Op::Bind(Binding {
                namespace: "default".into(),
                name: "free-0".into(),
                uid: o.meta().uid.clone(),
                node_name: other.into(),
            })),
            fence: None,
        }])
        .await
        .unwrap();
    match &r.results[0].result {
        Some(write_result::Result::Error(e)) => {
            assert!(e.message.contains("already bound"), "{}", e.message)
        }
        other => panic!("a second binding was accepted: {other:?}"),
    }
    let mut moved = o.clone();
    if let Some(Body::Pod(p)) = &mut moved.body {
        p.spec.as_mut().unwrap().node_name = other.into();
    }
    let e = c.update(moved).await.unwrap_err();
    assert!(e.to_string().contains("never moves"), "{e}");
    assert_eq!(node_of(&mut c, "free-0").await, bound_to);

    let bound = cluster
        .metric_sum("flotilla_scheduler_pods_bound_total")
        .await;
    assert!(bound >= 5.0, "pods bound by the scheduler: {bound}");
    drop((n1, n2, n3));
}
