//! The scheduling workload's worker nodes: real `flotilla agent` processes, one per network
//! namespace, joined with a token, pulling their image from a Debian `docker-registry` the harness
//! serves in the clients' namespace, and running pods with runc. Teardown removes every
//! container, mount and cgroup they left, also after a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::net::Net;
use crate::HarnessError;

pub const REGISTRY_PORT: u16 = 5000;

/// `cluster-configs/local-registry.sh` of the checkout this harness was built from.
fn registry_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-configs/local-registry.sh")
}

/// The test registry (busybox images), listening on the clients' address inside the test
/// network; stopped on drop.
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    pub fn start(net: &Net, dir: &Path) -> Result<Registry, HarnessError> {
        let script = registry_script();
        if !script.exists() {
            return Err(HarnessError::Setup(format!(
                "{} is missing (the registry for the agents)",
                script.display()
            )));
        }
        let reg = Registry {
            dir: dir.to_path_buf(),
        };
        let port = REGISTRY_PORT.to_string();
        let host = Net::client_ip();
        let d = dir.display().to_string();
        let s = script.display().to_string();
        let ns = net.client_ns();
        crate::net::run(
            "ip",
            &[
                "netns", "exec", &ns, "bash", &s, "start", "--host", &host, "--port", &port,
                "--dir", &d,
            ],
        )?;
        Ok(reg)
    }

    pub fn addr() -> String {
        format!("{}:{REGISTRY_PORT}", Net::client_ip())
    }

    /// The image every pod of the workload runs.
    pub fn busybox() -> String {
        format!("{}/busybox:test", Registry::addr())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(registry_script())
            .args(["stop", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

struct AgentProc {
    child: Option<Child>,
    ns: String,
    dir: PathBuf,
    log: PathBuf,
}

impl AgentProc {
    fn runc_root(&self) -> PathBuf {
        self.dir.join("runtime/runc")
    }
}

pub struct Agents {
    bin: PathBuf,
    procs: BTreeMap<u64, AgentProc>,
    /// The servers' API addresses and the join token, once [`Agents::start_all`] ran.
    join: Option<(String, String)>,
}

impl Agents {
    pub fn new(net: &Net, bin: &Path, run_dir: &Path, data_root: &Path) -> Agents {
        let procs = net
            .agents
            .iter()
            .map(|k| {
                (
                    *k,
                    AgentProc {
                        child: None,
                        ns: net.agent_ns(*k),
                        dir: data_root.join(Agents::name(*k)),
                        log: run_dir.join(format!("{}/agent.log", Agents::name(*k))),
                    },
                )
            })
            .collect();
        Agents {
            bin: bin.to_path_buf(),
            procs,
            join: None,
        }
    }

    /// The node name of agent `k`.
    pub fn name(k: u64) -> String {
        format!("a{k}")
    }

    pub fn ids(&self) -> Vec<u64> {
        self.procs.keys().copied().collect()
    }

    /// Start every agent: `join` is the servers' API addresses.
    pub fn start_all(&mut self, join: &str, token: &str) -> Result<(), HarnessError> {
        self.join = Some((join.to_string(), token.to_string()));
        for k in self.ids() {
            self.start(k)?;
        }
        Ok(())
    }

    /// Start agent `k` again (a no-op if it runs).
    pub fn start(&mut self, k: u64) -> Result<(), HarnessError> {
        let bin = self.bin.clone();
        let (join, token) = self
            .join
            .clone()
            .ok_or_else(|| HarnessError::Setup("agents started before the cluster".into()))?;
        let p = self
            .procs
            .get_mut(&k)
            .ok_or_else(|| HarnessError::Setup(format!("no agent {k}")))?;
        if p.child.is_some() {
            return Ok(());
        }
        if let Some(d) = p.log.parent() {
            std::fs::create_dir_all(d).map_err(|e| HarnessError::io(d, e))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .map_err(|e| HarnessError::io(&p.log, e))?;
        // Only the network namespace: `ip netns exec` would also remount /sys in a new mount
        // namespace, hiding the cgroup file system runc needs.
        let ns_path = format!("/run/netns/{}", p.ns);
        let ns_file =
            std::fs::File::open(&ns_path).map_err(|e| HarnessError::io(Path::new(&ns_path), e))?;
        let mut cmd = Command::new(&bin);
        // SAFETY: between fork and exec the hook only calls setns(2), which is async-signal-safe,
        // on a file opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .args(["agent", "--join", &join, "--token", &token, "--name"])
            .arg(Agents::name(k))
            .args(["--insecure-registry", &Registry::addr()])
            .args(["--crash-backoff-initial-ms", "500"])
            .arg("--data-dir")
            .arg(&p.dir)
            .env("FLOTILLA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| HarnessError::Setup(format!("start agent {k}: {e}")))?;
        p.child = Some(child);
        Ok(())
    }

    /// SIGKILL agent `k`; its containers keep running, as on a real node whose agent died.
    pub fn kill(&mut self, k: u64) -> bool {
        match self.procs.get_mut(&k).and_then(|p| p.child.take()) {
            Some(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
                true
            }
            None => false,
        }
    }

    /// Agents that exited on their own (a finding), with how.
    pub fn exited(&mut self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for (k, p) in self.procs.iter_mut() {
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    out.push((*k, status.to_string()));
                    p.child = None;
                }
            }
        }
        out
    }

    /// Agent `k`'s runc containers: id (`<pod uid>_<container>_<restart>`) and runc's status.
    pub fn containers(&self, k: u64) -> Result<Vec<(String, String)>, String> {
        let p = self.procs.get(&k).ok_or_else(|| format!("no agent {k}"))?;
        let root = p.runc_root();
        if !root.exists() {
            return Ok(Vec::new());
        }
        let out = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "--format", "json"])
            .output()
            .map_err(|e| format!("runc list: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "runc --root {} list: {}",
                root.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("runc list printed no JSON: {e}"))?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        (
                            c["id"].as_str().unwrap_or_default().to_string(),
                            c["status"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Kill every agent, then remove what their pods left: containers, mounts, cgroups.
    pub fn cleanup(&mut self) {
        for k in self.ids() {
            self.kill(k);
        }
        for p in self.procs.values() {
            let mut uids = BTreeSet::new();
            let root = p.runc_root();
            if let Ok(out) = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["list", "-q"])
                .output()
            {
                for id in String::from_utf8_lossy(&out.stdout).lines() {
                    if let Some((uid, _)) = id.split_once('_') {
                        uids.insert(uid.to_string());
                    }
                    let _ = Command::new("runc")
                        .arg("--root")
                        .arg(&root)
                        .args(["delete", "--force", id])
                        .output();
                }
            }
            // Pods whose containers were already gone may still have their cgroup.
            if let Ok(rd) = std::fs::read_dir(p.dir.join("pods")) {
                uids.extend(
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned()),
                );
            }
            for m in flotilla_runtime::rootfs::mounts_under(&p.dir) {
                let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
            }
            for uid in uids {
                let _ = flotilla_runtime::cgroup::remove(&format!("/flotilla/{uid}"));
            }
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.cleanup();
    }
}
