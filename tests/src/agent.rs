//! Helpers for tests with a real `flotilla agent`: start and kill it, list its runc
//! containers, and wait for pod status; its Drop removes every container, mount and cgroup
//! the agent left, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_api::pb::api::object::Body;
use flotilla_api::pb::api::PodStatus;
use flotilla_api::ObjectKey;

use crate::flotilla_bin;

/// A `flotilla agent` process (node `n1` unless started with another name) and its data dir.
pub struct Agent {
    child: Option<Child>,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(servers: &str, token: Option<&str>, dir: &Path, registry: &str) -> Agent {
        Self::start_named("n1", servers, token, dir, registry)
    }

    /// An agent for node `name`, its data in `dir/<name>`, its log in `dir/agent-<name>.log`.
    pub fn start_named(
        name: &str,
        servers: &str,
        token: Option<&str>,
        dir: &Path,
        registry: &str,
    ) -> Agent {
        Self::start_with(name, servers, token, dir, registry, &[])
    }

    /// [`Agent::start_named`] with more agent flags.
    pub fn start_with(
        name: &str,
        servers: &str,
        token: Option<&str>,
        dir: &Path,
        registry: &str,
        extra: &[&str],
    ) -> Agent {
        let log = dir.join(format!("agent-{name}.log"));
        // Every run of the agent appends to one log.
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(flotilla_bin());
        cmd.args([
            "agent",
            "--join",
            servers,
            "--name",
            name,
            "--insecure-registry",
            registry,
        ])
        .args(["--crash-backoff-initial-ms", "500"])
        .args(extra)
        .arg("--data-dir")
        .arg(dir.join(name))
        .env("FLOTILLA_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(f);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        Agent {
            child: Some(cmd.spawn().expect("spawn agent")),
            dir: dir.join(name),
            log,
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn runc_ids(&self) -> Vec<String> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.dir.join("runtime/runc"))
            .args(["list", "-q"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Nothing of the agent's containers may outlive the test, also when it fails.
impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        for id in self.runc_ids() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(self.dir.join("runtime/runc"))
                .args(["delete", "--force", &id])
                .output();
        }
        for m in flotilla_runtime::rootfs::mounts_under(&self.dir) {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for d in flotilla_runtime::cgroup::existing("/flotilla") {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    let _ = flotilla_runtime::cgroup::remove(&format!(
                        "/flotilla/{}",
                        e.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
}

/// The CLI's exit code, stdout and stderr.
pub fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(flotilla_bin())
        .args(args)
        .env("FLOTILLA_CONFIG", crate::admin_config_path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub fn pod_manifest(
    name: &str,
    image: &str,
    extra_spec: &str,
    container_extra: &str,
    command: &str,
) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: n1\n{extra_spec}  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"{command}\"]\n{container_extra}"
    )
}

pub async fn status(c: &mut flotilla_client::Client, name: &str) -> Option<(String, PodStatus)> {
    let key = ObjectKey {
        kind: "Pod".into(),
        namespace: "default".into(),
        name: name.into(),
    };
    let (o, _) = c.get(key, false).await.ok()?;
    match o.body {
        Some(Body::Pod(p)) => Some((o.metadata.unwrap_or_default().uid, p.status?)),
        _ => None,
    }
}

pub async fn wait_for<F: Fn(&PodStatus) -> bool>(
    c: &mut flotilla_client::Client,
    name: &str,
    what: &str,
    agent: &Agent,
    f: F,
) -> (String, PodStatus) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        if let Some((uid, st)) = status(c, name).await {
            if f(&st) {
                return (uid, st);
            }
            last = Some(st);
        }
        assert!(
            Instant::now() < deadline,
            "pod {name}: never {what}; last status {last:?}\nagent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn main_state(st: &PodStatus) -> flotilla_api::pb::api::ContainerState {
    st.container_statuses
        .first()
        .and_then(|c| c.state.clone())
        .unwrap_or_default()
}

pub fn running(st: &PodStatus) -> bool {
    st.phase == "Running" && main_state(st).running.is_some()
}

/// What the control-plane tests with agents share: three servers with fast test settings
/// (heartbeats every 500 ms, 3 s role leases) plus `limits`, the loopback registry, a join
/// token and a directory for the agents.
pub struct Testbed {
    pub registry: crate::Registry,
    pub cluster: crate::Cluster,
    /// The servers' API addresses, comma-separated (for `--server` and `--join`).
    pub servers: String,
    pub token: String,
    pub dir: tempfile::TempDir,
}

impl Testbed {
    pub async fn start(limits: &[&str]) -> Testbed {
        let registry = crate::Registry::start();
        let mut extra_limits: Vec<String> = vec![
            "heartbeat_period_ms = 500".into(),
            "role_lease_duration_ms = 3000".into(),
            "role_retry_ms = 500".into(),
        ];
        extra_limits.extend(limits.iter().map(|l| l.to_string()));
        let cluster = crate::Cluster::start(
            3,
            crate::Opts {
                extra_limits,
                ..Default::default()
            },
        );
        cluster.wait_leader(Duration::from_secs(20)).await;
        let servers = cluster.api_addrs().join(",");
        let (ok, token, err) = crate::cli(&["--server", &servers, "token", "create"], None);
        assert!(ok, "token create: {err}");
        Testbed {
            registry,
            cluster,
            servers,
            token: token.trim().to_string(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// An agent for node `name` joined with the token (more agent flags in `extra`).
    pub fn agent(&self, name: &str, extra: &[&str]) -> Agent {
        Agent::start_with(
            name,
            &self.servers,
            Some(&self.token),
            self.dir.path(),
            &self.registry.addr,
            extra,
        )
    }

    /// The CLI against these servers; panics with its output unless it succeeds.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut full = vec!["--server", self.servers.as_str()];
        full.extend_from_slice(args);
        let (ok, out, err) = crate::cli(&full, stdin);
        assert!(ok, "{args:?}: {err}{out}");
        out
    }

    /// `apply -f -` of `manifest`.
    pub fn apply(&self, manifest: &str) -> String {
        self.run(&["apply", "-f", "-"], Some(manifest))
    }

    /// Wait until `n` Nodes are registered.
    pub async fn wait_nodes(&self, c: &mut flotilla_client::Client, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = c.list("Node", "", "", false).await.map(|(v, _)| v.len());
            if got.as_ref().is_ok_and(|g| *g == n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} nodes never registered: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A pod's phase ("" before any status).
pub fn pod_phase(o: &flotilla_api::pb::api::Object) -> String {
    match &o.body {
        Some(Body::Pod(p)) => p
            .status
            .as_ref()
            .map(|s| s.phase.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// The node a pod is bound to ("" when unbound).
pub fn pod_node(o: &flotilla_api::pb::api::Object) -> String {
    match &o.body {
        Some(Body::Pod(p)) => p
            .spec
            .as_ref()
            .map(|s| s.node_name.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// Ready and not being deleted.
pub fn pod_ready(o: &flotilla_api::pb::api::Object) -> bool {
    o.meta().deletion_timestamp_ms.is_none()
        && match &o.body {
            Some(Body::Pod(p)) => p.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.r#type == "Ready" && c.status == "True")
            }),
            _ => false,
        }
}
