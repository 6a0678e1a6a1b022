//! Proves joining and the agent session with real processes: three servers and `flotilla
//! agent` processes talking QUIC on loopback. The leader creates the cluster CA at bootstrap;
//! `token create` prints a token that pins it; agents join with it (discovery checks the pin,
//! then a CSR is signed), keep their identity on disk, register their Node with capacity,
//! addresses and system info, and heartbeat; heartbeats of several nodes renew their Leases in
//! one log entry (equal resourceVersions). A wrong secret, an unknown id, an expired token, a
//! revoked token and a token pinning another CA are each refused with a message saying which.
//! An agent restarted without a token reconnects with its stored certificate.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_api::pb::api::object::Body;
use flotilla_api::ObjectKey;
use flotilla_tests::{cli, flotilla_bin, run_server_expect_exit, Cluster, Opts};

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(servers: &str, token: Option<&str>, dir: &std::path::Path, name: &str) -> Agent {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut cmd = Command::new(flotilla_bin());
    cmd.args([
        "agent", "--join", servers, "--name", name, "--labels", "zone=a",
    ])
    .arg("--data-dir")
    .arg(dir.join(name))
    .env("FLOTILLA_LOG", "info")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log);
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    Agent(cmd.spawn().expect("spawn agent"))
}

fn lease_key(name: &str) -> ObjectKey {
    ObjectKey {
        kind: "Lease".into(),
        namespace: "kube-node-lease".into(),
        name: name.into(),
    }
}

fn renew_time(o: &flotilla_api::Object) -> String {
    match &o.body {
        Some(Body::Lease(l)) => l
            .spec
            .as_ref()
            .and_then(|s| s.renew_time.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_join_register_heartbeat_and_bad_tokens_are_refused() {
    let cluster = Cluster::start(
        3,
        Opts {
            extra_limits: vec![
                "heartbeat_period_ms = 200".into(),
                "node_lease_batch_ms = 300".into(),
            ],
            ..Default::default()
        },
    );
    cluster.wait_leader(Duration::from_secs(20)).await;
    let servers = cluster.api_addrs().join(",");
    let dir = tempfile::tempdir().unwrap();
    let token_of = |args: &[&str]| {
        let mut full = vec!["--server", servers.as_str(), "token", "create"];
        full.extend_from_slice(args);
        let (ok, out, err) = cli(&full, None);
        assert!(ok, "token create: {err}");
        out.trim().to_string()
    };
    let token = token_of(&["--ttl", "1h", "--description", "e2e"]);
    assert!(token.starts_with("FLT1::sha256:"), "{token}");

    // Both on one server, whose dispatcher batches their lease renewals.
    let first_server = cluster.api_addrs()[0].clone();
    let _a1 = start_agent(&first_server, Some(&token), dir.path(), "n1");
    let _a2 = start_agent(&first_server, Some(&token), dir.path(), "n2");
    let mut c = cluster.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let node = loop {
        let n1 = c
            .get(
                ObjectKey {
                    kind: "Node".into(),
                    namespace: String::new(),
                    name: "n1".into(),
                },
                false,
            )
            .await;
        let n2 = c
            .get(
                ObjectKey {
                    kind: "Node".into(),
                    namespace: String::new(),
                    name: "n2".into(),
                },
                false,
            )
            .await;
        // Registration writes the Node, then its status.
        let has_status =
            |o: &flotilla_api::Object| matches!(&o.body, Some(Body::Node(n)) if n.status.is_some());
        if let (Ok((n1, _)), Ok((n2, _))) = (n1, n2) {
            if has_status(&n1) && has_status(&n2) {
                break n1;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nodes did not register; agent log:\n{}",
            std::fs::read_to_string(dir.path().join("n1.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(node.meta().labels["zone"], "a");
    assert_eq!(node.meta().labels["kubernetes.io/hostname"], "n1");
    let Some(Body::Node(n)) = &node.body else {
        panic!("not a node")
    };
    let st = n.status.as_ref().unwrap();
    assert_eq!(st.capacity["pods"], "110");
    assert!(st.capacity["memory"].ends_with("Ki"));
    assert_eq!(st.conditions[0].r#type, "Ready");
    assert_eq!(st.conditions[0].status, "True");
    assert!(st
        .addresses
        .iter()
        .any(|a| a.r#type == "InternalIP" && a.address == "127.0.0.1"));
    assert!(st
        .node_info
        .as_ref()
        .unwrap()
        .container_runtime_version
        .contains("://"));
    // The agent keeps its key to itself.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("n1/identity/node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Heartbeats renew leases, both nodes' in one entry at least once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = renew_time(&c.get(lease_key("n1"), false).await.unwrap().0);
    let mut renewed = false;
    let mut shared_entry = false;
    while Instant::now() < deadline && !(renewed && shared_entry) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (l1, _) = c.get(lease_key("n1"), false).await.unwrap();
        let (l2, _) = c.get(lease_key("n2"), false).await.unwrap();
        renewed |= renew_time(&l1) != first;
        shared_entry |= l1.meta().resource_version == l2.meta().resource_version;
    }
    assert!(renewed, "lease of n1 never renewed");
    assert!(
        shared_entry,
        "leases of n1 and n2 were never renewed in the same log entry"
    );

    // Refusals, each saying why.
    let (id, secret) = token.rsplit_once("::").unwrap().1.split_once('.').unwrap();
    let wrong_secret = token.replace(secret, "0000000000000000");
    let unknown = token.replace(id, "zzzzzz");
    let expired = token_of(&["--ttl", "1s"]);
    let revoked = token_of(&["--ttl", "1h"]);
    let revoked_id = revoked
        .rsplit_once("::")
        .unwrap()
        .1
        .split_once('.')
        .unwrap()
        .0
        .to_string();
    let (ok, _, err) = cli(
        &["--server", &servers, "token", "revoke", &revoked_id],
        None,
    );
    assert!(ok, "revoke: {err}");
    let other_ca = format!("FLT1::sha256:{}::{}.{}", "ab".repeat(32), id, secret);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for (name, t, want) in [
        ("bad1", wrong_secret.as_str(), "the secret is wrong"),
        ("bad2", unknown.as_str(), "does not exist"),
        ("bad3", expired.as_str(), "expired at"),
        ("bad4", revoked.as_str(), "was revoked"),
        ("bad5", other_ca.as_str(), "but the token pins"),
        ("bad6", "FLT1::nonsense", "malformed join token"),
    ] {
        let data = dir.path().join(name);
        let (code, err) = run_server_expect_exit(
            &[
                "agent",
                "--join",
                &servers,
                "--name",
                name,
                "--token",
                t,
                "--data-dir",
                data.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        );
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains(want), "{name}: expected {want:?} in:\n{err}");
        assert!(!data.join("identity/node.crt").exists());
    }
    let (ok, out, _) = cli(&["--server", &servers, "token", "list"], None);
    assert!(ok);
    assert!(
        out.contains("TOKEN-ID")
            && out.contains("revoked")
            && out.contains("expired")
            && out.contains("valid"),
        "{out}"
    );

    // Restart n1 without a token: it reconnects with its stored identity and renews again.
    drop(_a1);
    // Past the last batch that could still carry the old process's heartbeat.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = renew_time(&c.get(lease_key("n1"), false).await.unwrap().0);
    let log = std::fs::File::create(dir.path().join("n1-restart.log")).unwrap();
    let _a1 = Agent(
        Command::new(flotilla_bin())
            .args(["agent", "--join", &servers, "--name", "n1"])
            .arg("--data-dir")
            .arg(dir.path().join("n1"))
            .env("FLOTILLA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = renew_time(&c.get(lease_key("n1"), false).await.unwrap().0);
        if now != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted agent did not renew; log:\n{}",
            std::fs::read_to_string(dir.path().join("n1-restart.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
