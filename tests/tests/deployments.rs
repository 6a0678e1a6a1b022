//! Proves Deployments work end to end with real processes (three servers, two agents on QUIC,
//! runc, the local registry): the classic `nginx-deployment` manifest (image swapped for the
//! local test image) reaches 2/2 available, and a Service selecting it gets Endpoints with the
//! ready pods; `scale` to 10 and back to 2 converges (Endpoints follow); a rolling
//! update of the image never drops below `replicas - maxUnavailable` available pods, sampled
//! continuously from the API during the rollout, while `rollout status` reports progress;
//! `rollout history` lists the revisions and `rollout undo` restores the previous template
//! (reusing its ReplicaSet at a new revision); `drain` cordons a node and its pods move to
//! the other one; deleting the Deployment garbage-collects its
//! ReplicaSets and pods.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::pb::api::{object::Body, Object};
use flotilla_tests::agent::{pod_node as node_of, pod_ready as ready, Testbed};
use flotilla_tests::{cli, node_tests_possible, Cluster};

fn manifest(image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
  labels:
    app: nginx
spec:
  replicas: 2
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: nginx
        image: {image}
        command: ["httpd", "-f", "-p", "80"]
        ports:
        - containerPort: 80
"#
    )
}

fn image_of(o: &Object) -> String {
    match &o.body {
        Some(Body::Pod(p)) => p
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .map(|c| c.image.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

async fn pods(c: &mut flotilla_client::Client) -> Vec<Object> {
    c.list("Pod", "default", "app=nginx", false)
        .await
        .map(|(p, _)| p)
        .unwrap_or_default()
}

/// Wait until exactly `n` pods are ready (and no other pod of the app is left), all `image`.
async fn wait_pods(c: &mut flotilla_client::Client, n: usize, image: &str, cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = pods(c).await;
        let ready_n = p.iter().filter(|o| ready(o)).count();
        if ready_n == n && p.len() == n && p.iter().all(|o| image_of(o) == image) {
            return;
        }
        if Instant::now() > deadline {
            let (_, out, _) = cli(
                &[
                    "--server",
                    &cluster.api_addrs().join(","),
                    "get",
                    "pods,rs,deploy",
                ],
                None,
            );
            panic!(
                "never {n} ready pods of {image}: {ready_n} ready of {}\n{out}",
                p.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Wait until the Service's Endpoints list exactly `n` ready addresses on port 80.
async fn wait_endpoints(c: &mut flotilla_client::Client, n: usize) {
    let key = flotilla_api::ObjectKey {
        kind: "Endpoints".into(),
        namespace: "default".into(),
        name: "nginx".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        if let Ok((o, _)) = c.get(key.clone(), false).await {
            if let Some(Body::Endpoints(e)) = &o.body {
                let ready: usize = e.subsets.iter().map(|s| s.addresses.len()).sum();
                let port_ok = e
                    .subsets
                    .iter()
                    .all(|s| s.ports.iter().any(|p| p.port == 80));
                if ready == n && port_ok {
                    return;
                }
            }
            last = Some(o);
        }
        assert!(
            Instant::now() < deadline,
            "endpoints never had {n} addresses: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_scale_undo_and_are_collected() {
    if !node_tests_possible("deployments") {
        return;
    }
    let bed = Testbed::start(&[]).await;
    let (cluster, registry) = (&bed.cluster, &bed.registry);
    let _n1 = bed.agent("n1", &[]);
    let _n2 = bed.agent("n2", &[]);
    let run = |args: &[&str]| bed.run(args, None);
    let apply = |text: &str| bed.apply(text);
    let v1 = registry.image("busybox:test");
    let v2 = registry.image("busybox:latest");
    let mut c = cluster.client().await;

    // The classic example reaches 2/2.
    let out = apply(&manifest(&v1));
    assert_eq!(out.trim(), "deployment.apps/nginx-deployment created");
    let out = run(&[
        "rollout",
        "status",
        "deployment/nginx-deployment",
        "--timeout-secs",
        "120",
    ]);
    assert!(out.contains("successfully rolled out"), "{out}");
    wait_pods(&mut c, 2, &v1, cluster).await;
    let out = run(&["get", "deployment", "nginx-deployment"]);
    assert!(
        out.lines().nth(1).is_some_and(|l| l.contains("2/2")),
        "{out}"
    );

    // A Service selecting the pods gets Endpoints with their addresses.
    apply("apiVersion: v1\nkind: Service\nmetadata: {name: nginx}\nspec:\n  selector: {app: nginx}\n  ports: [{name: http, port: 80, targetPort: 80}]\n");
    wait_endpoints(&mut c, 2).await;

    // Scale to 10 and back to 2.
    let out = run(&["scale", "deployment/nginx-deployment", "--replicas", "10"]);
    assert_eq!(out.trim(), "deployment.apps/nginx-deployment scaled");
    run(&[
        "rollout",
        "status",
        "deployment/nginx-deployment",
        "--timeout-secs",
        "120",
    ]);
    wait_pods(&mut c, 10, &v1, cluster).await;
    wait_endpoints(&mut c, 10).await;
    run(&["scale", "deployment", "nginx-deployment", "--replicas", "2"]);
    wait_pods(&mut c, 2, &v1, cluster).await;
    wait_endpoints(&mut c, 2).await;

    // A rolling update, sampled: with 2 replicas and the default 25 % / 25 %, maxUnavailable
    // rounds down to 0, so at least 2 pods are available at every moment.
    let stop = Arc::new(AtomicBool::new(false));
    let lowest = Arc::new(AtomicI32::new(i32::MAX));
    let samples = Arc::new(AtomicI32::new(0));
    let sampler = {
        let (stop, lowest, samples) = (stop.clone(), lowest.clone(), samples.clone());
        let mut c = cluster.client().await;
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Ok((p, _)) = c.list("Pod", "default", "app=nginx", false).await {
                    let n = p.iter().filter(|o| ready(o)).count() as i32;
                    lowest.fetch_min(n, Ordering::SeqCst);
                    samples.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let out = apply(&manifest(&v2));
    assert_eq!(out.trim(), "deployment.apps/nginx-deployment configured");
    let out = run(&[
        "rollout",
        "status",
        "deployment/nginx-deployment",
        "--timeout-secs",
        "120",
    ]);
    assert!(
        out.contains("Waiting for deployment \"nginx-deployment\" rollout to finish")
            && out.contains("successfully rolled out"),
        "progress is shown: {out}"
    );
    wait_pods(&mut c, 2, &v2, cluster).await;
    stop.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    let (low, n) = (
        lowest.load(Ordering::SeqCst),
        samples.load(Ordering::SeqCst),
    );
    println!("rolling update: {n} samples, lowest available {low} (floor 2)");
    assert!(n > 10, "too few samples: {n}");
    assert!(
        low >= 2,
        "available pods dropped to {low} during the rollout"
    );

    // History and undo.
    let out = run(&["rollout", "history", "deployment/nginx-deployment"]);
    let revs: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revs, vec!["1", "2"], "{out}");
    let out = run(&["rollout", "undo", "deployment/nginx-deployment"]);
    assert_eq!(out.trim(), "deployment.apps/nginx-deployment rolled back");
    run(&[
        "rollout",
        "status",
        "deployment/nginx-deployment",
        "--timeout-secs",
        "120",
    ]);
    wait_pods(&mut c, 2, &v1, cluster).await;
    let out = run(&["rollout", "history", "deployment/nginx-deployment"]);
    let rows: Vec<&str> = out
        .lines()
        .skip(2)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(rows.len(), 2, "the first set is reused: {out}");
    assert!(
        rows.iter()
            .any(|l| l.starts_with('3') && l.contains("busybox:test")),
        "{out}"
    );

    // Drain n1: it is cordoned, its pods are evicted and come back on n2; uncordon undoes it.
    let out = run(&["drain", "n1", "--ignore-daemonsets", "--timeout-secs", "60"]);
    assert!(
        out.contains("node/n1 cordoned") && out.contains("node/n1 drained"),
        "{out}"
    );
    let out = run(&["get", "nodes"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("n1") && l.contains("SchedulingDisabled")),
        "{out}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = pods(&mut c).await;
        let on_n2 = p.iter().filter(|o| ready(o) && node_of(o) == "n2").count();
        if on_n2 == 2 && p.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "pods never moved to n2");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = run(&["uncordon", "n1"]);
    assert_eq!(out.trim(), "node/n1 uncordoned");

    // Deleting the Deployment takes its ReplicaSets and pods (garbage collection).
    run(&["delete", "deployment", "nginx-deployment"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (rs, _) = c.list("ReplicaSet", "default", "", false).await.unwrap();
        let p = pods(&mut c).await;
        if rs.is_empty() && p.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {} replica sets, {} pods",
            rs.len(),
            p.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
