//! Proves, on a real three-server cluster through the `flotilla` CLI: every shipped example
//! (cluster-configs/examples: one manifest per supported kind, the classic nginx Deployment
//! among them) applies; applying the same files again reports `unchanged` and leaves
//! generation and resourceVersion as they were; `get -o yaml` piped back to `apply` changes
//! nothing; tables have kubectl's columns; a Secret's values never appear in its table.

use std::time::Duration;

use flotilla_tests::{cli, Cluster, Opts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_apply_idempotently_with_kubectl_tables() {
    let cluster = Cluster::start(3, Opts::default());
    cluster.wait_leader(Duration::from_secs(20)).await;
    let servers = cluster.api_addrs().join(",");
    let s = ["--server", servers.as_str()];
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../cluster-configs/examples");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();
    let mut args = vec![s[0], s[1], "apply"];
    for f in &files {
        args.extend(["-f", f.as_str()]);
    }
    let (ok, out, err) = cli(&args, None);
    assert!(ok, "{err}");
    assert!(
        out.contains("deployment.apps/nginx-deployment created"),
        "{out}"
    );
    assert!(out.contains("namespace/team-a created"), "{out}");
    assert!(!out.contains("unchanged"), "{out}");

    let rv = |kind: &str, name: &str| {
        let (ok, out, err) = cli(&[s[0], s[1], "get", kind, name, "-o", "json"], None);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (
            v["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_string(),
            v["metadata"]["generation"].as_i64().unwrap(),
        )
    };
    let before = rv("deployment", "nginx-deployment");
    let (ok, out, err) = cli(&args, None);
    assert!(ok, "{err}");
    for line in out.lines() {
        assert!(
            line.ends_with(" unchanged"),
            "second apply changed something: {out}"
        );
    }
    assert_eq!(rv("deploy", "nginx-deployment"), before);

    // get -o yaml | apply -f - changes nothing, for a defaulted kind too.
    for (kind, name) in [
        ("deployment", "nginx-deployment"),
        ("pod", "busybox"),
        ("svc", "nginx"),
        ("ns", "team-a"),
        ("secret", "db-credentials"),
    ] {
        let (ok, yaml, err) = cli(&[s[0], s[1], "get", kind, name, "-o", "yaml"], None);
        assert!(ok, "{err}");
        let (ok, out, err) = cli(&[s[0], s[1], "apply", "-f", "-"], Some(&yaml));
        assert!(ok, "{kind}: {err}");
        assert!(out.trim_end().ends_with("unchanged"), "{kind}: {out}");
    }
    assert_eq!(rv("deployment", "nginx-deployment"), before);

    let (_, out, _) = cli(&[s[0], s[1], "get", "deployments"], None);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{out}"
    );
    assert!(
        out.contains("nginx-deployment") && out.contains("0/2"),
        "{out}"
    );
    let (_, out, _) = cli(&[s[0], s[1], "get", "pods"], None);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{out}"
    );
    assert!(
        out.contains("busybox") && out.contains("0/1") && out.contains("Pending"),
        "{out}"
    );
    let (_, out, _) = cli(&[s[0], s[1], "get", "services"], None);
    assert!(
        out.starts_with("NAME") && out.contains("ClusterIP") && out.contains("80/TCP"),
        "{out}"
    );
    let (_, out, _) = cli(&[s[0], s[1], "get", "secrets"], None);
    assert!(
        out.contains("db-credentials") && out.contains("Opaque") && out.contains(" 2 "),
        "{out}"
    );
    assert!(
        !out.contains("YWRtaW4") && !out.contains("s3cr3t") && !out.contains("admin"),
        "{out}"
    );
    let (_, out, _) = cli(&[s[0], s[1], "get", "namespaces"], None);
    assert!(out.contains("team-a") && out.contains("Active"), "{out}");
    let (ok, out, _) = cli(&[s[0], s[1], "get", "rs", "-o", "name"], None);
    assert!(ok);
    assert_eq!(out, "replicaset.apps/frontend\n");

    // Defaults were applied by the server and read back.
    let (_, out, _) = cli(
        &[
            s[0],
            s[1],
            "get",
            "deploy",
            "nginx-deployment",
            "-o",
            "json",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(
        v["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );

    let (ok, out, err) = cli(
        &[s[0], s[1], "delete", "deployment", "nginx-deployment"],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out, "deployment.apps \"nginx-deployment\" deleted\n");
}
