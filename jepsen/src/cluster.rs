//! The system under test: real `flotilla server` processes, one per network namespace, started
//! through `ip netns exec`, killed, paused and restarted by the nemeses. Each server's output
//! goes to `<run dir>/n<id>/server.log`, appended across restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_api::pb::admin::cluster_service_client::ClusterServiceClient;
use flotilla_api::pb::admin::{LocalStatusRequest, MemberStatus, Role, SetFailpointRequest};
use flotilla_client::{Client, ClientConfig, TlsFiles};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tonic::transport::Channel;

use crate::net::Net;
use crate::HarnessError;

pub const API_PORT: u16 = 7100;
const RAFT_PORT: u16 = 7110;
const METRICS_PORT: u16 = 7120;
const SECRET: &str = "flotilla-jepsen-secret-not-for-production";

/// Settings that shape how the cluster behaves under faults.
#[derive(Clone, Debug)]
pub struct DbOpts {
    /// Entries between snapshots: low, so snapshots (and installs) happen under faults.
    pub snapshot_logs_since_last: u64,
    pub request_timeout: Duration,
    /// A planted bug the servers switch on (`FLOTILLA_PLANTED_BUG`; needs a `planted-bugs`
    /// build of flotilla), for the harness's self-test.
    pub planted_bug: Option<String>,
    /// Start servers under libfaketime so the clock nemesis can skew their wall clocks.
    pub fake_clock: bool,
    /// Start servers under libfiu so the fsync nemesis can make their fsyncs fail.
    pub fsync_faults: bool,
    /// More `[limits]` lines for the servers' config (`name = value`).
    pub extra_limits: Vec<String>,
}

/// Debian's libfiu preload libraries (`fiu-utils`): remote control, and the POSIX wrappers.
pub fn libfiu() -> Option<[PathBuf; 2]> {
    let dir = Path::new("/usr/lib/fiu");
    let libs = [
        dir.join("fiu_run_preload.so"),
        dir.join("fiu_posix_preload.so"),
    ];
    (libs.iter().all(|l| l.exists()) && Path::new("/usr/bin/fiu-ctrl").exists()).then_some(libs)
}

/// Where Debian's `faketime` package puts the library, on any architecture.
pub fn libfaketime() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    dirs.filter_map(|d| d.ok())
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .chain(std::iter::once(PathBuf::from(
            "/usr/lib/faketime/libfaketime.so.1",
        )))
        .find(|p| p.exists())
}

struct Server {
    child: Option<Child>,
    paused: bool,
    config: PathBuf,
    log: PathBuf,
}

impl Server {
    /// libfaketime's offset file (`+0`, `-42`: seconds).
    fn clock_file(&self) -> PathBuf {
        self.log.with_file_name("faketime")
    }
}

pub struct Db {
    pub ids: Vec<u64>,
    /// Servers the membership nemesis removed from the cluster (process stopped, data wiped).
    pub removed: BTreeSet<u64>,
    /// Servers with a crash failpoint armed: their exit is the nemesis's, not a finding.
    pub armed: BTreeSet<u64>,
    cluster_id: String,
    data_root: PathBuf,
    pub tls: TlsFiles,
    bin: PathBuf,
    servers: BTreeMap<u64, Server>,
    ns: BTreeMap<u64, String>,
    pub opts: DbOpts,
}

impl Db {
    /// Write every server's config (data under `data_root`, logs under `run_dir`).
    pub fn new(
        net: &Net,
        bin: &Path,
        run_dir: &Path,
        data_root: &Path,
        opts: DbOpts,
    ) -> Result<Db, HarnessError> {
        let cluster_id = format!("jepsen-{}", std::process::id());
        let ca = flotilla_identity::derive_ca(&cluster_id, SECRET)
            .map_err(|e| HarnessError::Setup(format!("cluster CA: {e}")))?;
        let cert = flotilla_identity::issue_client_cert(&ca, flotilla_identity::ADMIN_CN, 2)
            .map_err(|e| HarnessError::Setup(format!("admin certificate: {e}")))?;
        let tls = TlsFiles {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: cert.cert_pem.clone(),
            key_pem: cert.key_pem.clone(),
        };
        let mut servers = BTreeMap::new();
        let mut ns = BTreeMap::new();
        for id in &net.nodes {
            let dir = run_dir.join(format!("n{id}"));
            std::fs::create_dir_all(&dir).map_err(|e| HarnessError::io(&dir, e))?;
            let config = dir.join("server.toml");
            let text = server_config(*id, &net.nodes, &cluster_id, data_root, &opts);
            std::fs::write(&config, text).map_err(|e| HarnessError::io(&config, e))?;
            servers.insert(
                *id,
                Server {
                    child: None,
                    paused: false,
                    config,
                    log: dir.join("server.log"),
                },
            );
            ns.insert(*id, net.node_ns(*id));
        }
        Ok(Db {
            ids: net.nodes.clone(),
            removed: BTreeSet::new(),
            armed: BTreeSet::new(),
            cluster_id,
            data_root: data_root.to_path_buf(),
            tls,
            bin: bin.to_path_buf(),
            servers,
            ns,
            opts,
        })
    }

    pub fn api_addr(id: u64) -> String {
        format!("{}:{API_PORT}", Net::node_ip(id))
    }

    pub fn api_addrs(&self) -> Vec<String> {
        self.ids.iter().map(|i| Db::api_addr(*i)).collect()
    }

    pub fn start(&mut self, id: u64) -> Result<(), HarnessError> {
        let fiu_prefix = self.fiu_prefix(id);
        let s = self
            .servers
            .get_mut(&id)
            .ok_or_else(|| HarnessError::Setup(format!("no server {id}")))?;
        if s.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .map_err(|e| HarnessError::io(&s.log, e))?;
        let err = log.try_clone().map_err(|e| HarnessError::io(&s.log, e))?;
        let mut cmd = Command::new("ip");
        if let Some(bug) = &self.opts.planted_bug {
            cmd.env("FLOTILLA_PLANTED_BUG", bug);
        }
        // Preloads go through `env` to the server alone, not to `ip` on the way.
        let mut preload: Vec<PathBuf> = Vec::new();
        let mut env_args: Vec<String> = Vec::new();
        if let (true, Some(libs)) = (self.opts.fsync_faults, libfiu()) {
            preload.extend(libs);
            env_args.push(format!("FIU_CTRL_FIFO={}", fiu_prefix.display()));
        }
        if let (true, Some(lib)) = (self.opts.fake_clock, libfaketime()) {
            // The wall clock only: faking the monotonic clock hangs tokio. The offset file is
            // read again every second, so the nemesis changes the skew of a running server.
            let file = s.clock_file();
            if !file.exists() {
                std::fs::write(&file, "+0").map_err(|e| HarnessError::io(&file, e))?;
            }
            preload.push(lib);
            cmd.env("FAKETIME_TIMESTAMP_FILE", &file)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        cmd.args(["netns", "exec", &self.ns[&id]]);
        if !preload.is_empty() {
            let libs: Vec<String> = preload.iter().map(|p| p.display().to_string()).collect();
            cmd.arg("env")
                .arg(format!("LD_PRELOAD={}", libs.join(" ")))
                .args(&env_args);
        }
        let child = cmd
            .arg(&self.bin)
            .args(["server", "--config"])
            .arg(&s.config)
            .env(
                "FLOTILLA_LOG",
                std::env::var("FLOTILLA_JEPSEN_SERVER_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| HarnessError::Setup(format!("start server {id}: {e}")))?;
        s.child = Some(child);
        s.paused = false;
        Ok(())
    }

    /// A join token for agents, made with `flotilla token create` and the admin config a server
    /// wrote into its data directory (run in the clients' namespace, where the servers are
    /// reachable).
    pub fn join_token(&self, net: &Net) -> Result<String, HarnessError> {
        let conf = self
            .ids
            .iter()
            .map(|id| self.data_root.join(format!("n{id}/admin.conf")))
            .find(|p| p.exists())
            .ok_or_else(|| HarnessError::Setup("no server wrote an admin.conf".into()))?;
        let out = crate::net::run(
            "ip",
            &[
                "netns",
                "exec",
                &net.client_ns(),
                &self.bin.display().to_string(),
                "--config",
                &conf.display().to_string(),
                "token",
                "create",
                "--ttl",
                "0",
            ],
        )?;
        Ok(out.trim().to_string())
    }

    pub fn start_all(&mut self) -> Result<(), HarnessError> {
        for id in self.ids.clone() {
            self.start(id)?;
        }
        Ok(())
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.servers.get(&id).is_some_and(|s| s.child.is_some())
    }

    /// SIGKILL server `id` and reap it. False if it was not running.
    pub fn kill(&mut self, id: u64) -> bool {
        let Some(s) = self.servers.get_mut(&id) else {
            return false;
        };
        let Some(mut child) = s.child.take() else {
            return false;
        };
        let _ = child.kill();
        let _ = child.wait();
        s.paused = false;
        true
    }

    /// SIGSTOP (`pause`) or SIGCONT server `id`. False if it was not running.
    pub fn pause(&mut self, id: u64, pause: bool) -> bool {
        let Some(s) = self.servers.get_mut(&id) else {
            return false;
        };
        let Some(child) = &s.child else {
            return false;
        };
        let sig = if pause {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        let ok = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), sig).is_ok();
        if ok {
            s.paused = pause;
        }
        ok
    }

    pub fn paused(&self) -> Vec<u64> {
        self.servers
            .iter()
            .filter(|(_, s)| s.paused)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn stopped(&self) -> Vec<u64> {
        self.servers
            .iter()
            .filter(|(_, s)| s.child.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Servers that exited on their own (a crash is a finding, not a nemesis). A server with
    /// an armed failpoint is left to the failpoint nemesis.
    pub fn crashed(&mut self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for (id, s) in self.servers.iter_mut() {
            if self.armed.contains(id) {
                continue;
            }
            if let Some(c) = &mut s.child {
                if let Ok(Some(status)) = c.try_wait() {
                    out.push((*id, status.to_string()));
                    s.child = None;
                }
            }
        }
        out
    }

    /// Where server `id`'s libfiu control pipes live (`<prefix>-<pid>.in|out`).
    fn fiu_prefix(&self, id: u64) -> PathBuf {
        self.data_root.join(format!("fiu-n{id}"))
    }

    /// Send a libfiu command (`enable name=posix/io/sync/*`) to running server `id`.
    pub async fn fiu(&self, id: u64, command: &str) -> Result<(), String> {
        let pid = self
            .servers
            .get(&id)
            .and_then(|s| s.child.as_ref())
            .map(|c| c.id().to_string())
            .ok_or_else(|| format!("n{id} is not running"))?;
        let prefix = self.fiu_prefix(id).display().to_string();
        let command = command.to_string();
        // fiu-ctrl waits for the answer on a pipe: bounded, as a stopped server never answers.
        let out = tokio::task::spawn_blocking(move || {
            crate::net::run(
                "timeout",
                &["5", "fiu-ctrl", "-f", &prefix, "-c", &command, &pid],
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        if out.contains("rror") {
            return Err(format!("fiu-ctrl on n{id}: {}", out.trim()));
        }
        Ok(())
    }

    /// Whether server `id` has exited (reaped here); its exit status if so.
    pub fn exited(&mut self, id: u64) -> Option<String> {
        let s = self.servers.get_mut(&id)?;
        let status = s.child.as_mut()?.try_wait().ok()??;
        s.child = None;
        Some(status.to_string())
    }

    pub fn kill_all(&mut self) {
        for id in self.ids.clone() {
            // A stopped process must run again before SIGKILL reaps cleanly.
            self.pause(id, false);
            self.kill(id);
        }
    }

    /// A client bound to one server (it follows the leader only when that server names it).
    pub async fn client(&self, id: u64) -> Result<Client, flotilla_api::ApiError> {
        self.clients().client(id).await
    }

    /// What the client tasks need to connect, without holding the `Db`.
    pub fn clients(&self) -> Clients {
        Clients {
            tls: self.tls.clone(),
            request_timeout: self.opts.request_timeout,
        }
    }

    /// A client that may use any server.
    pub async fn any_client(&self) -> Result<Client, flotilla_api::ApiError> {
        let mut cfg = ClientConfig::new(self.api_addrs());
        cfg.tls = Some(self.tls.clone());
        cfg.request_timeout = self.opts.request_timeout;
        cfg.connect_timeout = Duration::from_secs(1);
        Client::connect(cfg).await
    }

    /// An admin connection to server `id` itself (never forwarded).
    async fn admin_of(&self, id: u64) -> Result<ClusterServiceClient<Channel>, String> {
        let addr = Db::api_addr(id);
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| e.to_string())?
            .tls_config(flotilla_client::client_tls(&self.tls))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await
            .map_err(|e| format!("n{id}: {e}"))?;
        Ok(ClusterServiceClient::new(ch))
    }

    /// Server `id`'s own view of itself, or None when it does not answer within a second.
    pub async fn local_status(&self, id: u64) -> Option<MemberStatus> {
        let fut = async move {
            let mut c = self.admin_of(id).await.ok()?;
            c.local_status(LocalStatusRequest {})
                .await
                .ok()
                .map(|r| r.into_inner())
        };
        tokio::time::timeout(Duration::from_secs(1), fut)
            .await
            .ok()
            .flatten()
    }

    /// Arm (`crash`) or disarm (`off`) a failpoint on server `id` (a `failpoints` build).
    pub async fn set_failpoint(&self, id: u64, name: &str, action: &str) -> Result<(), String> {
        let fut = async move {
            let mut c = self.admin_of(id).await?;
            c.set_failpoint(SetFailpointRequest {
                name: name.to_string(),
                action: action.to_string(),
            })
            .await
            .map(|_| ())
            .map_err(|e| flotilla_api::ApiError::from_status(&e).to_string())
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .map_err(|_| format!("n{id}: no answer within 5 s"))?
    }

    /// The running, unpaused server that calls itself leader with the highest term.
    pub async fn leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for id in &self.ids {
            if !self.is_running(*id) || self.paused().contains(id) {
                continue;
            }
            if let Some(s) = self.local_status(*id).await {
                if s.role == Role::Leader as i32 && best.is_none_or(|(t, _)| s.term > t) {
                    best = Some((s.term, *id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Wait (bounded) until a leader answers and every running server has applied as far as it.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut applied = Vec::new();
            let mut leader = None;
            for id in &self.ids {
                if let Some(s) = self.local_status(*id).await {
                    if s.role == Role::Leader as i32 {
                        leader = Some(s.last_log_index);
                    }
                    applied.push(s.applied_index);
                }
            }
            if let Some(last) = leader {
                if applied.len() == self.ids.len() && applied.iter().all(|a| *a >= last) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Setup(format!(
                    "the cluster did not converge within {timeout:?} (leader's last index {leader:?}, applied {applied:?})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Db {
    /// Skew server `id`'s wall clock by `secs` (0: the true time). Needs `fake_clock`.
    pub fn set_clock_offset(&self, id: u64, secs: i64) -> Result<(), String> {
        let s = self
            .servers
            .get(&id)
            .ok_or_else(|| format!("no server {id}"))?;
        let file = s.clock_file();
        std::fs::write(&file, format!("{secs:+}")).map_err(|e| format!("{}: {e}", file.display()))
    }

    /// Remove server `id` from the membership, then stop it and wipe its data: when it comes
    /// back it is a new, empty server that must be added again.
    /// Remove `id` from the cluster, then stop and wipe it. A call whose answer was lost is
    /// settled by asking for the membership: if `id` is no longer a voter it was removed.
    pub async fn remove_member(&mut self, id: u64) -> Result<(), String> {
        let mut c = self.member_client(id).await?;
        let answer = match tokio::time::timeout(Duration::from_secs(20), c.remove(id)).await {
            Err(_) => Err(format!("remove n{id}: no answer within 20 s")),
            Ok(Err(e)) if e.code() == flotilla_api::ErrorCode::NotFound => Ok(()),
            Ok(Err(e)) => Err(format!("remove n{id}: {e}")),
            Ok(Ok(_)) => Ok(()),
        };
        if let Err(e) = answer {
            match self.voters().await {
                Some(v) if !v.contains(&id) => {}
                _ => return Err(e),
            }
        }
        self.mark_removed(id)
    }

    /// The voters as the leader reports them (None if no leader answered, or if its membership
    /// is not committed yet): a follower's view may lag behind a promotion, and a change in
    /// flight may still be truncated — a server wiped on its word could still be a voter.
    pub async fn voters(&self) -> Option<BTreeSet<u64>> {
        let leader = self.leader().await?;
        let mut c = self.client(leader).await.ok()?;
        let st = tokio::time::timeout(Duration::from_secs(10), c.cluster_status())
            .await
            .ok()?
            .ok()?;
        (st.leader_id == leader && st.membership_committed).then(|| {
            st.members
                .iter()
                .filter(|m| m.voter)
                .map(|m| m.id)
                .collect()
        })
    }

    /// Servers this harness counts as members that the cluster no longer has as voters (a
    /// removal whose answer was lost): stop and wipe them, so healing adds them back.
    pub async fn settle_lost_removals(&mut self) -> Vec<u64> {
        let Some(voters) = self.voters().await else {
            return Vec::new();
        };
        let lost: Vec<u64> = self
            .ids
            .iter()
            .copied()
            .filter(|i| !self.removed.contains(i) && !voters.contains(i))
            .collect();
        for id in &lost {
            if let Err(e) = self.mark_removed(*id) {
                eprintln!("flotilla-jepsen: n{id}: {e}");
            }
        }
        lost
    }

    /// Stop and wipe `id` (no longer a member) and let it start as a server waiting to be
    /// added.
    fn mark_removed(&mut self, id: u64) -> Result<(), String> {
        self.removed.insert(id);
        self.pause(id, false);
        self.kill(id);
        let dir = self.data_root.join(format!("n{id}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| format!("wipe {}: {e}", dir.display()))?;
        }
        // Without initial members it waits to be added instead of bootstrapping a cluster.
        let text = server_config(id, &[], &self.cluster_id, &self.data_root, &self.opts);
        let config = &self.servers[&id].config;
        std::fs::write(config, text).map_err(|e| format!("{}: {e}", config.display()))?;
        Ok(())
    }

    /// Start a removed server empty, add it as a learner, let it catch up, promote it.
    pub async fn add_member(&mut self, id: u64) -> Result<(), String> {
        self.start(id).map_err(|e| e.to_string())?;
        let mut c = self.member_client(id).await?;
        let ip = Net::node_ip(id);
        let req = flotilla_api::pb::admin::AddLearnerRequest {
            id,
            raft_address: format!("{ip}:{RAFT_PORT}"),
            api_address: format!("{ip}:{API_PORT}"),
        };
        let mut last = String::new();
        let mut added = false;
        for _ in 0..10 {
            match tokio::time::timeout(Duration::from_secs(30), c.add_learner(req.clone())).await {
                Ok(Ok(_)) => {
                    added = true;
                    break;
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no answer within 30 s".into(),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !added {
            return Err(format!("add learner n{id}: {last}"));
        }
        // Caught up: it has applied what the leader had when we looked.
        let target = match self.leader().await {
            Some(l) => self
                .local_status(l)
                .await
                .map(|s| s.last_log_index)
                .unwrap_or(0),
            None => 0,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .local_status(id)
            .await
            .map(|s| s.applied_index)
            .unwrap_or(0)
            < target
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "n{id} did not catch up to index {target} within 30 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::timeout(Duration::from_secs(20), c.promote(id))
            .await
            .map_err(|_| format!("promote n{id}: no answer within 20 s"))?
            .map_err(|e| format!("promote n{id}: {e}"))?;
        self.removed.remove(&id);
        Ok(())
    }

    /// An admin client over the current members other than `except`.
    async fn member_client(&self, except: u64) -> Result<Client, String> {
        let addrs: Vec<String> = self
            .ids
            .iter()
            .filter(|i| **i != except && !self.removed.contains(i))
            .map(|i| Db::api_addr(*i))
            .collect();
        let mut cfg = ClientConfig::new(addrs);
        cfg.tls = Some(self.tls.clone());
        cfg.request_timeout = Duration::from_secs(20);
        cfg.connect_timeout = Duration::from_secs(1);
        Client::connect(cfg).await.map_err(|e| e.to_string())
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn server_config(id: u64, all: &[u64], cluster_id: &str, data_root: &Path, o: &DbOpts) -> String {
    let ip = Net::node_ip(id);
    let mut t = format!(
        "node_id = {id}\ncluster_id = \"{cluster_id}\"\ncluster_secret = \"{SECRET}\"\n\
         api_addr = \"{ip}:{API_PORT}\"\nraft_addr = \"{ip}:{RAFT_PORT}\"\n\
         metrics_addr = \"{ip}:{METRICS_PORT}\"\ndata_dir = \"{}\"\n",
        data_root.join(format!("n{id}")).display()
    );
    for m in all {
        let mip = Net::node_ip(*m);
        t.push_str(&format!(
            "\n[[initial_members]]\nid = {m}\nraft_addr = \"{mip}:{RAFT_PORT}\"\napi_addr = \"{mip}:{API_PORT}\"\n"
        ));
    }
    t.push_str(&format!(
        "\n[raft]\nsnapshot_logs_since_last = {}\nmax_in_snapshot_log_to_keep = {}\n",
        o.snapshot_logs_since_last,
        o.snapshot_logs_since_last / 2
    ));
    // Frequent bookmarks, so the watch checker sees progress events.
    t.push_str("\n[limits]\nwatch_progress_interval_ms = 1000\n");
    for l in &o.extra_limits {
        t.push_str(l);
        t.push('\n');
    }
    t
}

#[derive(Clone)]
pub struct Clients {
    tls: TlsFiles,
    request_timeout: Duration,
}

impl Clients {
    pub async fn client(&self, id: u64) -> Result<Client, flotilla_api::ApiError> {
        let mut cfg = ClientConfig::new(vec![Db::api_addr(id)]);
        cfg.tls = Some(self.tls.clone());
        cfg.request_timeout = self.request_timeout;
        cfg.connect_timeout = Duration::from_secs(1);
        Client::connect(cfg).await
    }
}
