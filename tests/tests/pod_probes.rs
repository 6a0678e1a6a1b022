//! Proves liveness and readiness probes with real processes (three servers, a `flotilla
//! agent`, runc, the local registry): an exec readiness probe flips the container's `ready`
//! and the pod's Ready condition both ways as the file it checks comes and goes; a failing exec
//! liveness probe has the container restarted (restartCount goes up); HTTP and TCP probes reach
//! a server (busybox httpd) listening inside the pod's network namespace, and an HTTP probe
//! on a path that answers 404 keeps the pod unready. The agent's Events (Started, Unhealthy,
//! Killing) show in `describe pod`.

use std::time::Duration;

use flotilla_api::pb::api::PodStatus;
use flotilla_tests::agent::{run, wait_for, Agent};
use flotilla_tests::{cli, node_tests_possible, Cluster, Opts, Registry};

fn ready(st: &PodStatus) -> bool {
    st.conditions
        .iter()
        .any(|c| c.r#type == "Ready" && c.status == "True")
}

fn running_unready(st: &PodStatus) -> bool {
    st.phase == "Running"
        && st
            .container_statuses
            .first()
            .is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()) && !c.ready)
        && st
            .conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "False")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_drive_readiness_and_restarts() {
    if !node_tests_possible("pod_probes") {
        return;
    }
    let registry = Registry::start();
    let cluster = Cluster::start(
        3,
        Opts {
            extra_limits: vec!["heartbeat_period_ms = 500".into()],
            ..Default::default()
        },
    );
    cluster.wait_leader(Duration::from_secs(20)).await;
    let servers = cluster.api_addrs().join(",");
    let dir = tempfile::tempdir().unwrap();
    let (ok, token, err) = cli(&["--server", &servers, "token", "create"], None);
    assert!(ok, "{err}");
    let agent = Agent::start(&servers, Some(token.trim()), dir.path(), &registry.addr);
    let image = registry.image("busybox:test");
    let apply = |text: &str| {
        let (ok, out, err) = cli(&["--server", &servers, "apply", "-f", "-"], Some(text));
        assert!(ok, "apply: {err}{out}");
    };
    let exec = |script: &str| {
        let (code, _, err) = run(&[
            "--server", &servers, "exec", "probed", "--", "sh", "-c", script,
        ]);
        assert_eq!(code, Some(0), "exec {script}: {err}");
    };
    let mut c = cluster.client().await;

    apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: probed
spec:
  nodeName: n1
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "touch /tmp/healthy; exec sleep 3600"]
    readinessProbe:
      exec:
        command: ["cat", "/tmp/ready"]
      periodSeconds: 1
    livenessProbe:
      exec:
        command: ["cat", "/tmp/healthy"]
      initialDelaySeconds: 1
      periodSeconds: 1
      failureThreshold: 2
"#
    ));
    let (_, st) = wait_for(
        &mut c,
        "probed",
        "Running but not Ready",
        &agent,
        running_unready,
    )
    .await;
    assert_eq!(st.container_statuses[0].restart_count, 0);
    exec("touch /tmp/ready");
    wait_for(&mut c, "probed", "Ready", &agent, ready).await;
    exec("rm /tmp/ready");
    wait_for(&mut c, "probed", "unready again", &agent, running_unready).await;

    // Liveness fails twice in a row: the container is stopped and started again.
    exec("rm /tmp/healthy");
    let (_, st) = wait_for(
        &mut c,
        "probed",
        "restarted by its liveness probe",
        &agent,
        |s| {
            s.container_statuses
                .first()
                .is_some_and(|c| c.restart_count >= 1)
        },
    )
    .await;
    let last = st.container_statuses[0]
        .last_state
        .clone()
        .and_then(|s| s.terminated)
        .expect("the killed instance is the last state");
    assert_ne!(last.exit_code, 0, "{last:?}");
    // The new instance is healthy (its command made /tmp/healthy again) and not ready.
    wait_for(&mut c, "probed", "running again", &agent, running_unready).await;
    // The node recorded what happened as Events against the pod.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) = cli(&["--server", &servers, "describe", "pod", "probed"], None);
        assert!(ok, "{err}");
        if [
            "Started container main",
            "Liveness probe failed",
            "Readiness probe failed",
            "Container main failed liveness probe, will be restarted",
        ]
        .iter()
        .all(|m| out.contains(m))
        {
            assert!(
                out.contains("Unhealthy") && out.contains("flotilla-agent"),
                "{out}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events missing:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // HTTP and TCP probes against busybox httpd inside the pod's network namespace.
    apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  nodeName: n1
  terminationGracePeriodSeconds: 2
  containers:
  - name: httpd
    image: {image}
    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports:
    - name: http
      containerPort: 8080
    readinessProbe:
      httpGet:
        path: /index.html
        port: http
      periodSeconds: 1
    livenessProbe:
      tcpSocket:
        port: 8080
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: web404
spec:
  nodeName: n1
  terminationGracePeriodSeconds: 2
  containers:
  - name: httpd
    image: {image}
    command: ["sh", "-c", "mkdir -p /www && exec httpd -f -p 8080 -h /www"]
    readinessProbe:
      httpGet:
        path: /missing
        port: 8080
      periodSeconds: 1
"#
    ));
    let (_, st) = wait_for(&mut c, "web", "Ready through HTTP", &agent, ready).await;
    assert_eq!(st.container_statuses[0].restart_count, 0);
    wait_for(&mut c, "web404", "Running", &agent, running_unready).await;
    // Several probe periods later it is still unready, and never restarted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, st) = wait_for(&mut c, "web404", "still unready", &agent, running_unready).await;
    assert_eq!(st.container_statuses[0].restart_count, 0);
    assert!(
        agent
            .log()
            .contains("HTTP probe failed with statuscode: 404"),
        "{}",
        agent.log()
    );
    let (_, st) = wait_for(&mut c, "web", "still Ready", &agent, ready).await;
    assert_eq!(st.container_statuses[0].restart_count, 0);
}
