//! Proves a dead node is healed around, with real processes (three servers, two agents on
//! QUIC, runc, the local registry) and the grace period and toleration shortened: after an
//! agent is SIGKILLed, its Node turns `Ready=Unknown` and gets the `unreachable` taints, its
//! pods are evicted once their toleration runs out, and the Deployment's pods are re-created
//! and run on the surviving node. The time from the kill to full availability is printed.

use std::time::{Duration, Instant};

use flotilla_tests::agent::{pod_node as node_of, pod_ready as ready, Testbed};
use flotilla_tests::{cli, node_tests_possible};

fn deployment(image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: 4\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {image}\n        command: [\"sleep\", \"3600\"]\n"
    )
}

/// Ready pods of the app by node.
async fn placement(c: &mut flotilla_client::Client) -> std::collections::BTreeMap<String, usize> {
    let (pods, _) = c
        .list("Pod", "default", "app=web", false)
        .await
        .unwrap_or_default();
    let mut m = std::collections::BTreeMap::new();
    for p in pods.iter().filter(|p| ready(p)) {
        *m.entry(node_of(p)).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_a_dead_node_are_recreated_elsewhere() {
    if !node_tests_possible("node_failure") {
        return;
    }
    let bed = Testbed::start(&[
        "node_grace_period_ms = 3000",
        "node_monitor_period_ms = 500",
        "default_unreachable_toleration_seconds = 2",
    ])
    .await;
    let (cluster, servers) = (&bed.cluster, bed.servers.clone());
    let mut n1 = bed.agent("n1", &[]);
    let n2 = bed.agent("n2", &[]);
    let mut c = cluster.client().await;
    // Both nodes first, so the pods spread over both.
    bed.wait_nodes(&mut c, 2).await;
    bed.apply(&deployment(&bed.registry.image("busybox:test")));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let m = placement(&mut c).await;
        if m.values().sum::<usize>() == 4 && m.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never 4 ready pods on two nodes: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    n1.kill();
    let killed = Instant::now();
    // n1 is declared unreachable and tainted...
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out, _) = cli(
            &["--server", &servers, "get", "node", "n1", "-o", "json"],
            None,
        );
        if ok && out.contains("node.kubernetes.io/unreachable") && out.contains("\"Unknown\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n1 never marked unreachable: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let marked = killed.elapsed();
    // ...and its pods come back on n2.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let m = placement(&mut c).await;
        if m.get("n2") == Some(&4) && m.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pods never re-created on n2: {m:?}\n{}",
            cluster.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "node failure: unreachable after {} ms, 4/4 ready on n2 after {} ms (grace 3 s, toleration 2 s)",
        marked.as_millis(),
        killed.elapsed().as_millis()
    );
    let (_, events, _) = cli(&["--server", &servers, "get", "events"], None);
    assert!(events.contains("TaintManagerEviction"), "{events}");
    drop(n2);
}
