//! Proves pods run on agents, with real processes: three servers, a `flotilla agent` on QUIC,
//! Debian's `docker-registry` on loopback and real `runc`. A pod with `spec.nodeName` is
//! assigned to its node, pulled and started; its status (phase, Ready, container states)
//! comes back through the status stream. A container killed from outside is restarted
//! (restartCount goes up); a missing image shows ErrImagePull/ImagePullBackOff with the
//! registry's reason, and so does a missing tag; a failing `restartPolicy: Never` pod ends Failed with its exit code;
//! `runAsUser` is honoured; a pod
//! over its memory limit is OOMKilled. SIGKILL of the agent: on restart it adopts the running
//! containers (none duplicated, restartCount unchanged). SIGKILL of the server it is connected
//! to: it continues on another server and misses no assignment made meanwhile. `logs` (also
//! `--previous`) and `exec` reach the container through any server. Deleting a pod is
//! graceful (Terminating until its node has stopped it) and leaves no container, mount,
//! network namespace or cgroup behind.

use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_tests::agent::{main_state, pod_manifest, run, running, status, wait_for, Agent};
use flotilla_tests::{cli, node_tests_possible, Cluster, Opts, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_restart_report_and_survive_agent_and_server_kills() {
    if !node_tests_possible("agent_pods") {
        return;
    }
    let registry = Registry::start();
    let mut cluster = Cluster::start(
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
    let mut agent = Agent::start(&servers, Some(token.trim()), dir.path(), &registry.addr);
    let image = registry.image("busybox:test");
    let apply = |text: String| {
        let (ok, out, err) = cli(&["--server", &servers, "apply", "-f", "-"], Some(&text));
        assert!(ok, "apply: {err}{out}");
    };
    let mut c = cluster.client().await;

    // A long-running pod: Running and Ready, output in its log.
    apply(pod_manifest(
        "hello",
        &image,
        "",
        "",
        "echo started; exec sleep 3600",
    ));
    let (uid, st) = wait_for(&mut c, "hello", "Running", &agent, running).await;
    assert!(
        st.conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "True"),
        "{st:?}"
    );
    let cs = &st.container_statuses[0];
    assert_eq!(cs.restart_count, 0);
    assert!(cs.image_id.starts_with("sha256:"), "{cs:?}");
    let ids = agent.runc_ids();
    assert_eq!(ids, vec![format!("{uid}_main_0")]);

    // Killed from outside: restarted, restartCount 1, lastState terminated by SIGKILL.
    let state = Command::new("runc")
        .arg("--root")
        .arg(agent.dir.join("runtime/runc"))
        .args(["state", &ids[0]])
        .output()
        .unwrap();
    let pid = serde_json::from_slice::<serde_json::Value>(&state.stdout).unwrap()["pid"]
        .as_i64()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (_, st) = wait_for(&mut c, "hello", "restarted", &agent, |s| {
        running(s) && s.container_statuses[0].restart_count == 1
    })
    .await;
    let last = st.container_statuses[0]
        .last_state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(last.exit_code, 137, "{last:?}");

    // logs (current and previous instance) and exec, through whichever server the CLI reaches.
    let (ok, out, err) = cli(&["--server", &servers, "logs", "hello"], None);
    assert!(ok, "logs: {err}");
    assert_eq!(out, "started\n");
    let (ok, out, err) = cli(&["--server", &servers, "logs", "hello", "--previous"], None);
    assert!(ok, "logs --previous: {err}");
    assert_eq!(out, "started\n");
    let (code, out, err) = run(&[
        "--server",
        &servers,
        "exec",
        "hello",
        "--",
        "sh",
        "-c",
        "echo from-exec; echo to-err >&2; exit 4",
    ]);
    assert_eq!(code, Some(4), "exec: {err}");
    assert_eq!(out, "from-exec\n");
    assert!(err.contains("to-err"), "{err}");

    // A missing image: ErrImagePull / ImagePullBackOff with the registry's reason.
    apply(pod_manifest(
        "missing",
        &registry.image("nosuch:1"),
        "",
        "",
        "true",
    ));
    let (_, st) = wait_for(&mut c, "missing", "waiting on the image", &agent, |s| {
        main_state(s)
            .waiting
            .is_some_and(|w| w.reason == "ErrImagePull" || w.reason == "ImagePullBackOff")
    })
    .await;
    let w = main_state(&st).waiting.unwrap();
    assert!(w.message.to_lowercase().contains("unknown"), "{w:?}");
    // A missing tag of an image that exists: likewise, naming the manifest.
    apply(pod_manifest(
        "missing-tag",
        &registry.image("busybox:no-such-tag"),
        "",
        "",
        "true",
    ));
    let (_, st) = wait_for(&mut c, "missing-tag", "waiting on the tag", &agent, |s| {
        main_state(s)
            .waiting
            .is_some_and(|w| w.reason == "ErrImagePull" || w.reason == "ImagePullBackOff")
    })
    .await;
    let w = main_state(&st).waiting.unwrap();
    assert!(
        w.message.contains("no-such-tag") && w.message.to_lowercase().contains("manifest"),
        "{w:?}"
    );

    // restartPolicy Never, exit 3: Failed with the exit code.
    apply(pod_manifest(
        "fails",
        &image,
        "  restartPolicy: Never\n",
        "",
        "exit 3",
    ));
    let (_, st) = wait_for(&mut c, "fails", "Failed", &agent, |s| s.phase == "Failed").await;
    let t = main_state(&st).terminated.unwrap();
    assert_eq!((t.exit_code, t.reason.as_str()), (3, "Error"));

    // securityContext.runAsUser: the process runs as that user.
    apply(pod_manifest(
        "user",
        &image,
        "  restartPolicy: Never\n  securityContext:\n    runAsUser: 1000\n",
        "",
        "id -u",
    ));
    wait_for(&mut c, "user", "Succeeded", &agent, |s| {
        s.phase == "Succeeded"
    })
    .await;
    let (ok, out, err) = cli(&["--server", &servers, "logs", "user"], None);
    assert!(ok, "logs user: {err}");
    assert_eq!(out, "1000\n");

    // Over the memory limit: OOMKilled.
    apply(pod_manifest(
        "hog",
        &image,
        "  restartPolicy: Never\n",
        "    resources:\n      limits:\n        memory: 16Mi\n",
        "dd if=/dev/zero of=/dev/null bs=64M count=4",
    ));
    let (_, st) = wait_for(&mut c, "hog", "terminated", &agent, |s| {
        main_state(s).terminated.is_some()
    })
    .await;
    assert_eq!(main_state(&st).terminated.unwrap().reason, "OOMKilled");

    // SIGKILL the agent and start it again: the running container is adopted, not duplicated.
    agent.kill();
    let before = agent.runc_ids();
    let cgroups_before = flotilla_runtime::cgroup::existing(&format!("/flotilla/{uid}/main"));
    assert!(
        !cgroups_before.is_empty(),
        "the running container has a cgroup"
    );
    let mut agent = Agent::start(&servers, None, dir.path(), &registry.addr);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, st) = wait_for(
        &mut c,
        "hello",
        "Running after the agent restart",
        &agent,
        running,
    )
    .await;
    assert_eq!(st.container_statuses[0].restart_count, 1);
    assert_eq!(
        agent.runc_ids(),
        before,
        "containers changed across the agent restart"
    );
    assert_eq!(
        flotilla_runtime::cgroup::existing(&format!("/flotilla/{uid}/main")),
        cgroups_before,
        "cgroups changed across the agent restart"
    );
    assert!(
        agent.log().contains("adopted a running container"),
        "{}",
        agent.log()
    );

    // SIGKILL the server the agent is connected to; a pod created meanwhile still arrives.
    let log = agent.log();
    let addr = log
        .lines()
        .rev()
        .find(|l| l.contains("session established"))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .expect("session log line")
        .to_string();
    let victim = (1..=3u64)
        .find(|id| cluster.api_addrs()[(*id - 1) as usize] == addr)
        .expect("agent's server");
    cluster.kill(victim);
    let others: Vec<String> = cluster
        .running()
        .iter()
        .map(|id| cluster.api_addrs()[(*id - 1) as usize].clone())
        .collect();
    let others = others.join(",");
    let text = pod_manifest("later", &image, "", "", "exec sleep 3600");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, err) = cli(&["--server", &others, "apply", "-f", "-"], Some(&text));
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "apply after the server kill: {err}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut c = flotilla_tests::connect(others.split(',').map(str::to_string).collect()).await;
    wait_for(
        &mut c,
        "later",
        "Running on the agent's new server",
        &agent,
        running,
    )
    .await;
    // exec from every live server: one holds the agent's session, the other forwards to it.
    for s in others.split(',') {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, out, err) = run(&["--server", s, "exec", "later", "--", "echo", "ok"]);
            if code == Some(0) {
                assert_eq!(out, "ok\n");
                break;
            }
            assert!(Instant::now() < deadline, "exec via {s}: {err}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    // Delete: graceful (the pod shows Terminating while its node stops it, then is removed on
    // the node's word); containers, mounts, netns and cgroup of the pod are gone.
    let (ok, out, err) = cli(
        &[
            "--server",
            &others,
            "delete",
            "pod",
            "hello",
            "--grace-period",
            "3",
            "--wait=false",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out, "pod \"hello\" deleted\n");
    let (ok, out, err) = cli(&["--server", &others, "get", "pod", "hello"], None);
    assert!(ok && out.contains("Terminating"), "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&mut c, "hello").await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the deleted pod was never removed\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        let left: Vec<String> = agent
            .runc_ids()
            .into_iter()
            .filter(|i| i.starts_with(&uid))
            .collect();
        let mounts: Vec<String> = flotilla_runtime::rootfs::mounts_under(&agent.dir)
            .into_iter()
            .filter(|m| m.contains(&uid))
            .collect();
        let cgroups = flotilla_runtime::cgroup::existing(&format!("/flotilla/{uid}"));
        if left.is_empty() && mounts.is_empty() && cgroups.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: containers {left:?} mounts {mounts:?} cgroups {cgroups:?}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!agent
        .dir
        .join("runtime/containers")
        .join(format!("{uid}_main_1"))
        .exists());
    agent.kill();
}
