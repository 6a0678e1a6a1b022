//! Proves `delete --cascade` with three real servers and the controller-manager (no agents:
//! the ReplicaSets' pods stay unbound, which is all this needs): `orphan` deletes the
//! ReplicaSet and keeps its pods with their owner reference removed; `foreground` keeps the
//! ReplicaSet (with the `foregroundDeletion` finalizer) until its pods are gone, then deletes it;
//! `background` deletes it at once and garbage collection takes the pods after.

use std::time::{Duration, Instant};

use flotilla_tests::{cli, Cluster, Opts};

fn rs(name: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: {name}}}\nspec:\n  replicas: 3\n  selector: {{matchLabels: {{set: {name}}}}}\n  template:\n    metadata: {{labels: {{set: {name}}}}}\n    spec:\n      containers: [{{name: c, image: busybox}}]\n"
    )
}

async fn pods_of(c: &mut flotilla_client::Client, set: &str) -> Vec<flotilla_api::pb::api::Object> {
    c.list("Pod", "default", &format!("set={set}"), false)
        .await
        .map(|(p, _)| p)
        .unwrap_or_default()
}

async fn wait_pods(c: &mut flotilla_client::Client, set: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = pods_of(c, set).await.len();
        if got == n {
            return;
        }
        assert!(Instant::now() < deadline, "{set}: {got} pods, expected {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_orphan_foreground_and_background() {
    let cluster = Cluster::start(
        3,
        Opts {
            extra_limits: vec![
                "role_lease_duration_ms = 3000".into(),
                "role_retry_ms = 300".into(),
            ],
            ..Default::default()
        },
    );
    cluster.wait_leader(Duration::from_secs(20)).await;
    let servers = cluster.api_addrs().join(",");
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut full = vec!["--server", servers.as_str()];
        full.extend_from_slice(args);
        let (ok, out, err) = cli(&full, stdin);
        assert!(ok, "{args:?}: {err}{out}");
        out
    };
    let mut c = cluster.client().await;
    for name in ["keep", "front", "back"] {
        run(&["apply", "-f", "-"], Some(&rs(name)));
        wait_pods(&mut c, name, 3).await;
    }

    // Orphan: the set goes, its pods stay, no longer owned.
    let out = run(&["delete", "rs", "keep", "--cascade=orphan"], None);
    assert!(out.contains("deleted"), "{out}");
    let (sets, _) = c.list("ReplicaSet", "default", "", false).await.unwrap();
    assert!(sets.iter().all(|s| s.meta().name != "keep"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kept = pods_of(&mut c, "keep").await;
    assert_eq!(kept.len(), 3, "orphaned pods stay");
    assert!(kept.iter().all(|p| p.meta().owner_references.is_empty()));

    // Foreground: the command waits until the pods and then the set are gone.
    let out = run(&["delete", "rs", "front", "--cascade=foreground"], None);
    assert!(
        out.contains("waiting on finalizers: foregroundDeletion") && out.contains("deleted"),
        "{out}"
    );
    assert!(pods_of(&mut c, "front").await.is_empty(), "pods went first");
    let (sets, _) = c.list("ReplicaSet", "default", "", false).await.unwrap();
    assert!(sets.iter().all(|s| s.meta().name != "front"));

    // Background: the set goes at once, its pods after.
    run(&["delete", "rs", "back"], None);
    wait_pods(&mut c, "back", 0).await;

    let out = cli(
        &[
            "--server",
            &servers,
            "delete",
            "rs",
            "x",
            "--cascade=sideways",
        ],
        None,
    );
    assert!(!out.0 && out.2.contains("sideways"), "{}", out.2);
}
