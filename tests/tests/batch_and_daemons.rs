//! Proves Jobs, CronJobs and DaemonSets with real processes (three servers, agents on QUIC,
//! runc, the local registry): a Job with completions 5 and parallelism 2 completes with never
//! more than 2 pods running at once; a CronJob fires at its scheduled minute on the
//! controllers' test clock (shifted so the minute is seconds away) and its Job completes; a
//! DaemonSet puts one pod on every node, and on a node that joins later; a StatefulSet starts
//! `web-0`, `web-1`, `web-2` in order (each after the previous one is ready) and scales down
//! from the highest ordinal.

use std::time::{Duration, Instant};

use flotilla_api::pb::api::{object::Body, Object};
use flotilla_tests::agent::{pod_node as node_of, pod_phase as phase, Testbed};
use flotilla_tests::{cli, node_tests_possible};

fn job_done(o: &Object) -> bool {
    match &o.body {
        Some(Body::Job(j)) => j.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "Complete" && c.status == "True")
        }),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_cronjobs_daemonsets_and_statefulsets() {
    if !node_tests_possible("batch_and_daemons") {
        return;
    }
    // The controllers' clock runs ahead so that it reads hh:mm:52 at start: the CronJob's
    // next minute is 8 s away whatever the real time.
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let offset = (52_000 - real % 60_000).rem_euclid(60_000);
    let offset_limit = format!("controller_clock_offset_ms = {offset}");
    let bed = Testbed::start(&[offset_limit.as_str()]).await;
    let (cluster, registry, servers) = (&bed.cluster, &bed.registry, bed.servers.clone());
    let _n1 = bed.agent("n1", &[]);
    let _n2 = bed.agent("n2", &[]);
    let image = registry.image("busybox:test");
    let apply = |text: &str| bed.apply(text);
    let mut c = cluster.client().await;

    // A CronJob every minute (created first: its minute is seconds away).
    apply(&format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: tick}}\nspec:\n  schedule: \"* * * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          terminationGracePeriodSeconds: 1\n          containers:\n          - name: main\n            image: {image}\n            command: [\"sh\", \"-c\", \"echo tick\"]\n"
    ));

    // A Job: 5 completions, 2 at a time.
    apply(&format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: five}}\nspec:\n  completions: 5\n  parallelism: 2\n  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {image}\n        command: [\"sh\", \"-c\", \"sleep 1\"]\n"
    ));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut most_running = 0;
    loop {
        let (pods, _) = c
            .list("Pod", "default", "job-name=five", false)
            .await
            .unwrap();
        let running = pods
            .iter()
            .filter(|p| !matches!(phase(p).as_str(), "Succeeded" | "Failed"))
            .filter(|p| p.meta().deletion_timestamp_ms.is_none())
            .count();
        most_running = most_running.max(running);
        let (job, _) = c
            .get(
                flotilla_api::ObjectKey {
                    kind: "Job".into(),
                    namespace: "default".into(),
                    name: "five".into(),
                },
                false,
            )
            .await
            .unwrap();
        if job_done(&job) {
            let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count();
            assert_eq!(succeeded, 5, "5 pods succeeded");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Job never completed: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        most_running <= 2,
        "parallelism 2, seen {most_running} at once"
    );
    let (_, out, _) = cli(&["--server", &servers, "get", "job", "five"], None);
    assert!(out.contains("Complete") && out.contains("5/5"), "{out}");

    // The CronJob fired at its minute, by the controllers' clock.
    let deadline = Instant::now() + Duration::from_secs(60);
    let fired = loop {
        let (jobs, _) = c.list("Job", "default", "", false).await.unwrap();
        if let Some(j) = jobs.iter().find(|j| j.meta().name.starts_with("tick-")) {
            if job_done(j) {
                break j.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the CronJob never fired: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let minute: i64 = fired.meta().name["tick-".len()..].parse().unwrap();
    let scheduled = &fired.meta().annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"];
    assert_eq!(
        scheduled,
        &flotilla_api::manifest::format_timestamp_ms(minute * 60_000),
        "the Job is named by its scheduled minute"
    );
    assert!(scheduled.ends_with(":00Z"), "{scheduled}");
    let (_, out, _) = cli(&["--server", &servers, "get", "cronjob", "tick"], None);
    println!("{out}");

    // A DaemonSet: one pod per node, and on a node that joins later.
    apply(&format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: daemon}}\nspec:\n  selector: {{matchLabels: {{app: daemon}}}}\n  template:\n    metadata: {{labels: {{app: daemon}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {image}\n        command: [\"sleep\", \"3600\"]\n"
    ));
    let on_nodes = |pods: &[Object]| {
        let mut n: Vec<String> = pods
            .iter()
            .filter(|p| phase(p) == "Running")
            .map(node_of)
            .collect();
        n.sort();
        n
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (pods, _) = c.list("Pod", "default", "app=daemon", false).await.unwrap();
        if on_nodes(&pods) == ["n1", "n2"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "daemon pods: {:?}",
            on_nodes(&pods)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _n3 = bed.agent("n3", &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (pods, _) = c.list("Pod", "default", "app=daemon", false).await.unwrap();
        if on_nodes(&pods) == ["n1", "n2", "n3"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "daemon pods: {:?}",
            on_nodes(&pods)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, out, _) = cli(&["--server", &servers, "get", "daemonset", "daemon"], None);
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("3")),
        "{out}"
    );

    // A StatefulSet: ordered start, stable names, scale down from the top.
    apply(&format!(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: web}}\nspec:\n  serviceName: web\n  replicas: 3\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {image}\n        command: [\"sleep\", \"3600\"]\n"
    ));
    let running_names = |pods: &[Object]| {
        let mut n: Vec<String> = pods
            .iter()
            .filter(|p| phase(p) == "Running" && p.meta().deletion_timestamp_ms.is_none())
            .map(|p| p.meta().name.clone())
            .collect();
        n.sort();
        n
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let pods = loop {
        let (pods, _) = c.list("Pod", "default", "app=web", false).await.unwrap();
        if running_names(&pods) == ["web-0", "web-1", "web-2"] {
            break pods;
        }
        assert!(
            Instant::now() < deadline,
            "stateful pods: {:?}",
            running_names(&pods)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let created = |n: &str| {
        pods.iter()
            .find(|p| p.meta().name == n)
            .map(|p| p.meta().creation_timestamp_ms)
            .unwrap()
    };
    let t: Vec<i64> = ["web-0", "web-1", "web-2"]
        .iter()
        .map(|n| created(n))
        .collect();
    assert!(
        t[0] < t[1] && t[1] < t[2],
        "created in ordinal order: {t:?}"
    );
    let (ok, out, err) = cli(
        &[
            "--server",
            &servers,
            "scale",
            "statefulset/web",
            "--replicas",
            "1",
        ],
        None,
    );
    assert!(ok, "{err}{out}");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (pods, _) = c.list("Pod", "default", "app=web", false).await.unwrap();
        let names: Vec<String> = pods.iter().map(|p| p.meta().name.clone()).collect();
        if names == ["web-0"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stateful pods after scale down: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
