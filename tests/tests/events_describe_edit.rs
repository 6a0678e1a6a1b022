//! Proves, on a real three-server cluster: Events recorded against an object aggregate
//! (a repeat bumps count and lastTimestamp), `describe` shows the object's fields and its
//! Events, and the leader deletes Events past their TTL; `edit` through $EDITOR writes the
//! change back (generation bumps) or cancels when nothing changed; `get -o wide` adds
//! kubectl's wide columns; `--field-selector` filters on the server.

use std::time::{Duration, Instant};

use flotilla_api::pb::api::{object::Body, ObjectKey};
use flotilla_tests::{cli, cli_env, cli_json, Cluster, Opts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_describe_edit_wide_and_field_selectors() {
    let opts = Opts {
        extra_limits: vec![
            "event_ttl_ms = 4000".into(),
            "event_gc_interval_ms = 500".into(),
        ],
        ..Opts::default()
    };
    let cluster = Cluster::start(3, opts);
    cluster.wait_leader(Duration::from_secs(20)).await;
    let servers = cluster.api_addrs().join(",");
    let s = ["--server", servers.as_str()];
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../cluster-configs/examples/nginx-deployment.yaml"
    );
    let (ok, _, err) = cli(&[s[0], s[1], "apply", "-f", example], None);
    assert!(ok, "{err}");

    // Two recordings of the same event are one Event with count 2.
    let mut c = cluster.client().await;
    let key = ObjectKey {
        kind: "Deployment".into(),
        namespace: "default".into(),
        name: "nginx-deployment".into(),
    };
    let (dep, _) = c.get(key, false).await.unwrap();
    let msg = "Scaled up replica set nginx-deployment-1 to 2";
    c.record_event(
        &dep,
        "Normal",
        "ScalingReplicaSet",
        msg,
        "deployment-controller",
    )
    .await
    .unwrap();
    let ev = c
        .record_event(
            &dep,
            "Normal",
            "ScalingReplicaSet",
            msg,
            "deployment-controller",
        )
        .await
        .unwrap();
    let Some(Body::Event(e)) = &ev.body else {
        panic!()
    };
    assert_eq!(e.count, 2);
    let (_, out, _) = cli(&[s[0], s[1], "get", "events", "-o", "name"], None);
    assert_eq!(out.lines().count(), 1, "{out}");

    let (ok, out, err) = cli(
        &[s[0], s[1], "describe", "deployment", "nginx-deployment"],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.starts_with("Name:               nginx-deployment\nNamespace:          default\n"),
        "{out}"
    );
    assert!(out.contains("        Image:  nginx:1.7.9"), "{out}");
    assert!(
        out.contains("ScalingReplicaSet")
            && out.contains("(x2 over")
            && out.contains("deployment-controller"),
        "{out}"
    );

    // -o wide.
    let (_, out, _) = cli(&[s[0], s[1], "get", "deploy", "-o", "wide"], None);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ],
        "{out}"
    );
    assert!(
        out.contains("nginx:1.7.9") && out.contains("app=nginx"),
        "{out}"
    );

    // edit: a change is written back; no change cancels.
    let (ok, out, err) = cli_env(
        &[s[0], s[1], "edit", "deployment", "nginx-deployment"],
        None,
        &[("EDITOR", "sed -i 's/replicas: 2/replicas: 3/'")],
        &["KUBE_EDITOR"],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "deployment.apps/nginx-deployment edited\n");
    let v = cli_json(&[
        s[0],
        s[1],
        "get",
        "deploy",
        "nginx-deployment",
        "-o",
        "json",
    ]);
    assert_eq!(
        (
            v["spec"]["replicas"].as_i64(),
            v["metadata"]["generation"].as_i64()
        ),
        (Some(3), Some(2))
    );
    let (ok, out, _) = cli_env(
        &[s[0], s[1], "edit", "deployment", "nginx-deployment"],
        None,
        &[("EDITOR", "true")],
        &["KUBE_EDITOR"],
    );
    assert!(ok);
    assert_eq!(out, "Edit cancelled, no changes made.\n");

    // Field selectors, evaluated by the server.
    let pod = |name: &str, node: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: busybox:1}}]\n---\n")
    };
    let (ok, _, err) = cli(
        &[s[0], s[1], "apply", "-f", "-"],
        Some(&(pod("a", "n1") + &pod("b", "n2"))),
    );
    assert!(ok, "{err}");
    for (sel, want) in [
        ("spec.nodeName=n1", "pod/a\n"),
        ("spec.nodeName!=n1", "pod/b\n"),
    ] {
        let (_, out, _) = cli(
            &[
                s[0],
                s[1],
                "get",
                "pods",
                "--field-selector",
                sel,
                "-o",
                "name",
            ],
            None,
        );
        assert_eq!(out, want, "{sel}");
    }
    let (ok, _, err) = cli(
        &[
            s[0],
            s[1],
            "get",
            "pods",
            "--field-selector",
            "spec.colour=red",
        ],
        None,
    );
    assert!(
        !ok && err.contains("field label not supported: spec.colour"),
        "{err}"
    );

    // The leader deletes the Event once it is older than event_ttl_ms (4 s here).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, _) = cli(&[s[0], s[1], "get", "events", "-o", "name"], None);
        if out.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "event not expired: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
