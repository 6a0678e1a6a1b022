//! Test harness: a cluster of real `flotilla server` processes on 127.0.0.1, each with its own
//! data directory in a temporary folder, killed, stopped and restarted at will. Nothing here
//! reaches beyond loopback; every wait is bounded.

pub mod agent;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_api::pb::admin::cluster_service_client::ClusterServiceClient;
use flotilla_api::pb::admin::{LocalStatusRequest, MemberStatus, Role};
use flotilla_api::pb::api::{object::Body, ConfigMap, Object, ObjectMeta};
use flotilla_client::{Client, ClientConfig, TlsFiles};

/// The `flotilla` binary built in the same target directory as this test.
pub fn flotilla_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FLOTILLA_BIN") {
        return PathBuf::from(p);
    }
    // Tests run from target/<profile>/deps/, tools (flotilla-bench) from target/<profile>/.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    let bin = [
        dir.join("flotilla"),
        dir.parent().map(|d| d.join("flotilla")).unwrap_or_default(),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| dir.join("flotilla"));
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p flotilla` (the README's test command does)",
        bin.display()
    );
    bin
}

/// Per-cluster settings written into every server's config.
#[derive(Clone, Debug)]
pub struct Opts {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_logs_since_last: u64,
    pub max_in_snapshot_log_to_keep: u64,
    pub watch_history_revisions: u64,
    pub watch_progress_interval_ms: u64,
    pub max_object_bytes: usize,
    /// Extra `key = value` lines for the servers' `[limits]` table.
    pub extra_limits: Vec<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_logs_since_last: 10_000,
            max_in_snapshot_log_to_keep: 1000,
            watch_history_revisions: 100_000,
            watch_progress_interval_ms: 1000,
            max_object_bytes: 4 * 1024 * 1024,
            extra_limits: Vec::new(),
        }
    }
}

pub struct Server {
    pub id: u64,
    pub api: String,
    pub raft: String,
    pub metrics: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Extra environment for the server process (e.g. a fault-injection preload).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub cluster_id: String,
    pub servers: BTreeMap<u64, Server>,
    pub opts: Opts,
}

fn free_ports(n: usize) -> Vec<u16> {
    // Below the kernel's ephemeral range (32768 and up by default): a port taken with bind(0)
    // there can be handed to some outgoing connection as its source port between the choice
    // and the server's bind ("Address already in use" in CI). Ports here are only ever taken
    // by a bind that names them. Spread by process, unique within it, checked free (TCP for
    // the API and Raft, UDP for QUIC on the API port).
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    let mut out = Vec::with_capacity(n);
    for _ in 0..SPAN {
        if out.len() == n {
            break;
        }
        let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let port = (FIRST + (start + i) % SPAN) as u16;
        let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            out.push(port);
        }
    }
    assert_eq!(
        out.len(),
        n,
        "no {n} free ports in {FIRST}..{}",
        FIRST + SPAN
    );
    out
}

impl Cluster {
    /// Write configs for servers 1..=n that bootstrap together, and start them.
    pub fn start(n: u64, opts: Opts) -> Cluster {
        let mut c = Cluster::new(opts);
        let ids: Vec<u64> = (1..=n).collect();
        for id in &ids {
            c.add_server(*id);
        }
        let initial: Vec<u64> = ids.clone();
        for id in &ids {
            c.write_config(*id, &initial);
        }
        for id in ids {
            c.start_server(id);
        }
        c
    }

    pub fn new(opts: Opts) -> Cluster {
        LIVE_CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster_id = test_cluster_id();
        Cluster {
            dir,
            cluster_id,
            servers: BTreeMap::new(),
            opts,
        }
    }

    /// Allocate ports and paths for a server (not yet started, no config yet).
    pub fn add_server(&mut self, id: u64) -> &Server {
        let p = free_ports(3);
        let root = self.dir.path();
        let s = Server {
            id,
            api: format!("127.0.0.1:{}", p[0]),
            raft: format!("127.0.0.1:{}", p[1]),
            metrics: format!("127.0.0.1:{}", p[2]),
            config: root.join(format!("server-{id}.toml")),
            data_dir: root.join(format!("data-{id}")),
            log: root.join(format!("server-{id}.log")),
            env: Vec::new(),
            child: None,
            starts: 0,
        };
        self.servers.insert(id, s);
        &self.servers[&id]
    }

    /// Write server `id`'s config; `initial` are the bootstrap members (empty: join later).
    pub fn write_config(&self, id: u64, initial: &[u64]) {
        let s = &self.servers[&id];
        let o = &self.opts;
        let mut text = format!(
            "node_id = {id}\ncluster_id = \"{}\"\ncluster_secret = \"{TEST_SECRET}\"\napi_addr = \"{}\"\nraft_addr = \"{}\"\nmetrics_addr = \"{}\"\ndata_dir = \"{}\"\n",
            self.cluster_id,
            s.api,
            s.raft,
            s.metrics,
            s.data_dir.display()
        );
        for m in initial {
            let ms = &self.servers[m];
            text.push_str(&format!(
                "\n[[initial_members]]\nid = {m}\nraft_addr = \"{}\"\napi_addr = \"{}\"\n",
                ms.raft, ms.api
            ));
        }
        text.push_str(&format!(
            "\n[raft]\nheartbeat_interval_ms = {}\nelection_timeout_min_ms = {}\nelection_timeout_max_ms = {}\nsnapshot_logs_since_last = {}\nmax_in_snapshot_log_to_keep = {}\n",
            o.heartbeat_interval_ms, o.election_timeout_min_ms, o.election_timeout_max_ms, o.snapshot_logs_since_last, o.max_in_snapshot_log_to_keep
        ));
        text.push_str(&format!(
            "\n[limits]\nwatch_history_revisions = {}\nwatch_progress_interval_ms = {}\nmax_object_bytes = {}\nleader_wait_ms = 5000\n",
            o.watch_history_revisions, o.watch_progress_interval_ms, o.max_object_bytes
        ));
        for l in &o.extra_limits {
            text.push_str(&format!("{l}\n"));
        }
        std::fs::write(&s.config, text).expect("write config");
    }

    pub fn start_server(&mut self, id: u64) {
        let bin = flotilla_bin();
        let s = self.servers.get_mut(&id).expect("known server");
        assert!(s.child.is_none(), "server {id} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .expect("open log");
        let child = Command::new(bin)
            .args(["server", "--config"])
            .arg(&s.config)
            .envs(s.env.iter().map(|(k, v)| (k, v)))
            .env("FLOTILLA_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn flotilla server");
        s.child = Some(child);
        s.starts += 1;
    }

    /// The server's process id, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.servers
            .get(&id)
            .and_then(|s| s.child.as_ref())
            .map(|c| c.id())
    }

    /// Whether the server exited on its own (reaped here): its exit status.
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let s = self.servers.get_mut(&id)?;
        let st = s.child.as_mut()?.try_wait().ok()??;
        s.child = None;
        Some(st)
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.servers.get_mut(&id).and_then(|s| s.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send a signal to a running server (SIGSTOP / SIGCONT to pause and resume it).
    pub fn signal(&self, id: u64, sig: nix::sys::signal::Signal) {
        if let Some(c) = self.servers.get(&id).and_then(|s| s.child.as_ref()) {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, sig);
        }
    }

    /// SIGTERM and wait (bounded) for an orderly exit; returns the exit status.
    pub fn stop(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let mut c = self.servers.get_mut(&id).and_then(|s| s.child.take())?;
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.servers[&id].child.is_some()
    }

    pub fn running(&self) -> Vec<u64> {
        self.servers
            .values()
            .filter(|s| s.child.is_some())
            .map(|s| s.id)
            .collect()
    }

    pub fn api_addrs(&self) -> Vec<String> {
        self.servers.values().map(|s| s.api.clone()).collect()
    }

    /// A client that may use any server.
    pub async fn client(&self) -> Client {
        connect(self.api_addrs()).await
    }

    /// A client bound to one server.
    pub async fn client_of(&self, id: u64) -> Client {
        connect(vec![self.servers[&id].api.clone()]).await
    }

    /// The server's own view (role, term, indexes), or None if it does not answer.
    pub async fn local_status(&self, id: u64) -> Option<MemberStatus> {
        let addr = self.servers[&id].api.clone();
        let fut = async {
            let mut c = ClusterServiceClient::new(channel(&addr).await.ok()?);
            c.local_status(LocalStatusRequest {})
                .await
                .ok()
                .map(|r| r.into_inner())
        };
        tokio::time::timeout(Duration::from_millis(1500), fut)
            .await
            .ok()
            .flatten()
    }

    /// Wait until one running server reports itself leader and returns its id.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            for id in self.running() {
                if let Some(s) = self.local_status(id).await {
                    if s.role == Role::Leader as i32 {
                        return id;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {timeout:?}\n{}",
                self.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until server `id` reports `role` and has applied something.
    pub async fn wait_role(&self, id: u64, role: Role, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.local_status(id).await {
                if s.role == role as i32 && s.applied_index > 0 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "server {id} is not {role:?} within {timeout:?}\n{}",
                self.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until every listed server has applied at least `index`.
    pub async fn wait_applied(&self, ids: &[u64], index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for id in ids {
            loop {
                if let Some(s) = self.local_status(*id).await {
                    if s.applied_index >= index {
                        break;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "server {id} did not apply index {index} within {timeout:?}\n{}",
                    self.log_tails()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The last lines of every server's log, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for s in self.servers.values() {
            let text = std::fs::read_to_string(&s.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- server {} log (last 15 lines) ---\n", s.id));
            for l in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Text of one server's /metrics.
    pub async fn metrics_text(&self, id: u64) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = &self.servers[&id].metrics;
        let fut = async {
            let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
            s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
                .await
                .ok()?;
            let mut buf = String::new();
            s.read_to_string(&mut buf).await.ok()?;
            Some(buf)
        };
        tokio::time::timeout(Duration::from_secs(3), fut)
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// (writes, proposals) a server's proposer has coalesced so far.
    pub async fn proposal_stats(&self, id: u64) -> (f64, f64) {
        let m = |name: &'static str| async move { self.metric(id, name).await.unwrap_or(0.0) };
        (
            m("flotilla_proposal_batch_writes_sum").await,
            m("flotilla_proposal_batch_writes_count").await,
        )
    }

    /// One metric summed over every running server.
    pub async fn metric_sum(&self, name: &str) -> f64 {
        let mut sum = 0.0;
        for id in self.running() {
            sum += self.metric(id, name).await.unwrap_or(0.0);
        }
        sum
    }

    /// One gauge from a server's metrics.
    pub async fn metric(&self, id: u64, name: &str) -> Option<f64> {
        let text = self.metrics_text(id).await;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
        let ids: Vec<u64> = self.servers.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
        // The last cluster of the process takes the admin config file with it.
        if LIVE_CLUSTERS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            let _ = std::fs::remove_file(&admin().1);
        }
    }
}

static LIVE_CLUSTERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The cluster id of every test cluster of this process: with [`TEST_SECRET`] it gives one
/// cluster CA, so one admin certificate serves them all.
pub fn test_cluster_id() -> String {
    format!("test-{}", std::process::id())
}

/// The cluster secret of test clusters.
pub const TEST_SECRET: &str = "flotilla-test-secret-0123456789";

/// Admin credentials for this process's test clusters, and where [`admin_config_path`] keeps
/// a CLI config file holding them.
pub fn admin() -> &'static (TlsFiles, PathBuf) {
    static ADMIN: std::sync::OnceLock<(TlsFiles, PathBuf)> = std::sync::OnceLock::new();
    ADMIN.get_or_init(|| {
        let ca = flotilla_identity::derive_ca(&test_cluster_id(), TEST_SECRET).expect("test CA");
        let cert = flotilla_identity::issue_client_cert(&ca, flotilla_identity::ADMIN_CN, 2)
            .expect("admin certificate");
        let tls = TlsFiles {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: cert.cert_pem.clone(),
            key_pem: cert.key_pem.clone(),
        };
        let path =
            std::env::temp_dir().join(format!("flotilla-test-admin-{}.conf", std::process::id()));
        (tls, path)
    })
}

/// The admin config file, written again if the last cluster removed it.
pub fn admin_config_path() -> &'static PathBuf {
    let (tls, path) = admin();
    if !path.exists() {
        let file = flotilla_client::configfile::ClientConfig {
            current_cluster: "test".into(),
            clusters: vec![flotilla_client::configfile::ClusterEntry::with_credentials(
                "test",
                Vec::new(),
                &tls.ca_pem,
                &tls.cert_pem,
                &tls.key_pem,
            )],
        };
        file.save(path).expect("write the test admin config");
    }
    path
}

/// A mutual-TLS channel to one server's client API, as the admin.
pub async fn channel(addr: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(flotilla_client::client_tls(&admin().0))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
}

pub async fn connect(servers: Vec<String>) -> Client {
    let mut cfg = ClientConfig::new(servers);
    cfg.tls = Some(admin().0.clone());
    cfg.request_timeout = Duration::from_secs(20);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Client::connect(cfg.clone()).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Create `obj`, resolving unknown outcomes (the connection died mid-request): reconnect, and
/// either create it or, if the lost attempt did apply, read it back. Bounded attempts.
pub async fn create_resolved(c: &mut Client, servers: &[String], obj: Object) -> Object {
    let mut last = None;
    for _ in 0..10 {
        match c.create(obj.clone()).await {
            Ok(o) => return o,
            Err(e) if e.code() == flotilla_api::ErrorCode::AlreadyExists => {
                if let Ok((o, _)) = c.get(obj.key(), false).await {
                    return o;
                }
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        *c = connect(servers.to_vec()).await;
    }
    panic!("could not create {} : {last:?}", obj.key());
}

/// A ConfigMap in `default` with the given data.
pub fn configmap(name: &str, data: &[(&str, &str)]) -> Object {
    Object {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        body: Some(Body::ConfigMap(ConfigMap {
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })),
    }
}

pub fn cm_key(name: &str) -> flotilla_api::ObjectKey {
    flotilla_api::ObjectKey {
        kind: "ConfigMap".into(),
        namespace: "default".into(),
        name: name.into(),
    }
}

/// Run the flotilla CLI; returns (exit success, stdout, stderr).
pub fn cli(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    cli_env(args, stdin, &[], &[])
}

/// Run the CLI, which must succeed, and parse what it printed as JSON (`-o json`).
pub fn cli_json(args: &[&str]) -> serde_json::Value {
    let (ok, out, err) = cli(args, None);
    assert!(ok, "flotilla {}: {err}", args.join(" "));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

/// [`cli`] with environment variables set (EDITOR) or removed (FLOTILLA_SERVER).
pub fn cli_env(
    args: &[&str],
    stdin: Option<&str>,
    set: &[(&str, &str)],
    unset: &[&str],
) -> (bool, String, String) {
    use std::io::Write;
    let mut cmd = Command::new(flotilla_bin());
    // The admin credentials, unless the test names a config of its own.
    if !args.contains(&"--config") {
        cmd.env("FLOTILLA_CONFIG", admin_config_path());
    }
    for v in unset {
        cmd.env_remove(v);
    }
    for (k, v) in set {
        cmd.env(k, v);
    }
    let mut child = cmd
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flotilla");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait flotilla");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run the flotilla CLI with a bounded wait, for commands that must exit by themselves.
pub fn run_server_expect_exit(args: &[&str], timeout: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(flotilla_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flotilla");
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (st.code(), err);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, String::new());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The repository root (tests run from their crate directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// Whether tests that need root, runc and a local registry can run. When they cannot, the
/// reason is printed and the test returns early, unless `FLOTILLA_REQUIRE_NODE_TESTS=1` (CI
/// sets it) turns the missing requirement into a failure.
pub fn node_tests_possible(test: &str) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        missing.push("root".to_string());
    }
    for tool in ["runc", "docker-registry", "skopeo"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            missing.push(tool.to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let reason = format!(
        "{test}: needs {} (apt-get install -y runc docker-registry skopeo busybox-static, as root)",
        missing.join(", ")
    );
    if std::env::var("FLOTILLA_REQUIRE_NODE_TESTS").as_deref() == Ok("1") {
        panic!("{reason}");
    }
    eprintln!("SKIPPED {reason}");
    false
}

/// Debian's `docker-registry` on a loopback port with the test images from
/// `cluster-configs/local-registry.sh`; stopped on drop.
pub struct Registry {
    pub addr: String,
    dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_ports(1)[0];
        let script = repo_root().join("cluster-configs/local-registry.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args(["start", "--port", &port.to_string(), "--dir"])
            .arg(dir.path())
            .output()
            .expect("run local-registry.sh");
        if !out.status.success() {
            // A registry the script started before failing must not outlive the test.
            let _ = Command::new("bash")
                .arg(&script)
                .args(["stop", "--dir"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .status();
            panic!(
                "local-registry.sh start failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Registry {
            addr: format!("127.0.0.1:{port}"),
            dir,
        }
    }

    /// `<addr>/<name>` for an image of the test registry.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let script = repo_root().join("cluster-configs/local-registry.sh");
        let _ = Command::new("bash")
            .arg(&script)
            .args(["stop", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .status();
    }
}
