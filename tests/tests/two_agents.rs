//! Proves two agents share a cluster without stepping on each other, with real processes
//! (three servers, two `flotilla agent`s on QUIC, runc, the local registry): each pod runs on
//! the node its `spec.nodeName` names and nowhere else (n2's through an OCI runtime given by
//! path), `logs` and `exec` reach both through
//! the servers, and an image no pod uses any more is garbage-collected from the node that
//! pulled it while an image in use stays. A server serves a node only the Secrets its pods
//! refer to (checked with each agent's own certificate).

use std::time::{Duration, Instant};

use flotilla_tests::agent::{run, running, wait_for, Agent};
use flotilla_tests::{cli, node_tests_possible, Cluster, Opts, Registry};

fn pod(name: &str, node: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"echo on $NODE; exec sleep 3600\"]\n    env:\n    - name: NODE\n      valueFrom:\n        fieldRef:\n          fieldPath: spec.nodeName\n"
    )
}

/// Speaks the agent protocol with `agent`'s own identity: asks `server` for `key`, returns how
/// many objects came back or the server's refusal.
async fn get_objects(
    agent: &Agent,
    server: &str,
    key: flotilla_api::ObjectKey,
) -> Result<usize, String> {
    use flotilla_api::pb::agent::{
        agent_request, agent_response, AgentRequest, AgentResponse, GetObjectsRequest,
    };
    let id = agent.dir.join("identity");
    let read = |f: &str| std::fs::read_to_string(id.join(f)).unwrap();
    let node = flotilla_identity::CertKey {
        cert_pem: read("node.crt"),
        key_pem: read("node.key"),
    };
    let tls =
        flotilla_identity::client_tls_config(&read("ca.crt"), Some(&node), &[flotilla_quic::ALPN])
            .unwrap();
    let addr: std::net::SocketAddr = server.parse().unwrap();
    let ep = flotilla_quic::client_endpoint(addr, tls).unwrap();
    let conn = flotilla_quic::connect(&ep, addr, 5_000).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let req = AgentRequest {
        kind: Some(agent_request::Kind::GetObjects(GetObjectsRequest {
            keys: vec![key],
        })),
    };
    flotilla_quic::write_frame(&mut send, &req).await.unwrap();
    let resp: AgentResponse = flotilla_quic::read_frame(&mut recv).await.unwrap().unwrap();
    conn.close(0u32.into(), b"done");
    match resp.kind {
        Some(agent_response::Kind::Objects(o)) => Ok(o.objects.len()),
        Some(agent_response::Kind::Error(e)) => Err(e.message),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

fn image_records(agent: &Agent) -> usize {
    std::fs::read_dir(agent.dir.join("images/refs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_run_their_own_pods_and_collect_unused_images() {
    if !node_tests_possible("two_agents") {
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
    // Image GC at every pass, for any image unused at all.
    let gc = [
        "--image-gc-high-percent",
        "0",
        "--image-gc-min-age-secs",
        "0",
        "--image-gc-period-ms",
        "500",
    ];
    let n1 = Agent::start_with(
        "n1",
        &servers,
        Some(token.trim()),
        dir.path(),
        &registry.addr,
        &gc,
    );
    // n2 runs its containers through a runtime given by path (here a wrapper around runc):
    // any runtime that honours runc's command-line contract will do.
    let wrapper = dir.path().join("my-runtime");
    std::fs::write(&wrapper, "#!/bin/sh\nexec runc \"$@\"\n").unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let wrapper = wrapper.display().to_string();
    let mut n2_flags = gc.to_vec();
    n2_flags.extend(["--runtime", wrapper.as_str()]);
    let n2 = Agent::start_with(
        "n2",
        &servers,
        Some(token.trim()),
        dir.path(),
        &registry.addr,
        &n2_flags,
    );
    let apply = |text: &str| {
        let (ok, out, err) = cli(&["--server", &servers, "apply", "-f", "-"], Some(text));
        assert!(ok, "apply: {err}{out}");
    };
    apply("apiVersion: v1\nkind: Secret\nmetadata:\n  name: n1-only\nstringData:\n  k: v\n");
    apply(&format!(
        "{}    - name: FROM_SECRET\n      valueFrom:\n        secretKeyRef:\n          name: n1-only\n          key: k\n",
        pod("on-n1", "n1", &registry.image("busybox:test"))
    ));
    apply(&pod("on-n2", "n2", &registry.image("busybox:latest")));
    let mut c = cluster.client().await;
    let (uid1, _) = wait_for(&mut c, "on-n1", "Running on n1", &n1, running).await;
    let (uid2, _) = wait_for(&mut c, "on-n2", "Running on n2", &n2, running).await;
    assert_eq!(n1.runc_ids(), vec![format!("{uid1}_main_0")]);
    assert_eq!(n2.runc_ids(), vec![format!("{uid2}_main_0")]);
    for (p, node) in [("on-n1", "n1"), ("on-n2", "n2")] {
        let (ok, out, err) = cli(&["--server", &servers, "logs", p], None);
        assert!(ok, "{err}");
        assert_eq!(out, format!("on {node}\n"));
        let (code, out, err) = run(&["--server", &servers, "exec", p, "--", "hostname"]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(out, format!("{p}\n"));
    }
    let (ok, out, _) = cli(&["--server", &servers, "get", "nodes"], None);
    assert!(ok && out.contains("n1") && out.contains("n2"), "{out}");

    // Node authorization: with its own certificate, n1 may read the Secret its pod uses; n2,
    // whose pods do not refer to it, is refused.
    let secret = flotilla_api::ObjectKey {
        kind: "Secret".into(),
        namespace: "default".into(),
        name: "n1-only".into(),
    };
    let got = get_objects(&n1, &cluster.api_addrs()[0], secret.clone()).await;
    assert!(
        got.is_ok_and(|n| n == 1),
        "n1 reads the Secret its pod uses"
    );
    let refused = get_objects(&n2, &cluster.api_addrs()[0], secret)
        .await
        .unwrap_err();
    assert!(
        refused.contains("node n2 may not read Secret default/n1-only"),
        "{refused}"
    );

    // on-n2 goes: its image, used by nothing else on n2, is collected there; n1 keeps its own.
    assert_eq!(image_records(&n2), 1);
    let (ok, _, err) = cli(&["--server", &servers, "delete", "pod", "on-n2"], None);
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while image_records(&n2) != 0 {
        assert!(
            Instant::now() < deadline,
            "the unused image stayed on n2\n{}",
            n2.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        n2.log().contains("image GC removed unused images"),
        "{}",
        n2.log()
    );
    assert!(n2.runc_ids().is_empty());
    assert_eq!(image_records(&n1), 1, "an image in use was collected");
    assert_eq!(n1.runc_ids(), vec![format!("{uid1}_main_0")]);
}
