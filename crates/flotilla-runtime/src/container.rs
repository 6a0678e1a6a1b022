//! Container lifecycle on one node: root filesystem, bundle, shim, runtime calls and cleanup,
//! composed from the other modules. State lives on disk (bundles under `containers/`, the
//! runtime's own state directory) so an agent that restarts finds everything again.

use flotilla_api::pb::node::{ContainerExit, ImageRecord};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

use crate::bundle::{self, ContainerConfig};
use crate::digest::Digest;
use crate::error::{Result, RuntimeError};
use crate::image::ImageStore;
use crate::runc::OciRuntime;
use crate::shim::{self, ShimArgs};
use crate::{cgroup, rootfs};

/// Where and how containers run on this node.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Root of bundles (`containers/`), logs (`logs/`) and the runtime state (`runc/`).
    pub data_dir: PathBuf,
    /// `runc`, `crun` or a path to a compatible runtime.
    pub runtime_binary: PathBuf,
    /// The program that runs the shim and the arguments before the shim's own, e.g.
    /// (`/usr/bin/flotilla`, [`runtime-shim`]).
    pub shim_program: PathBuf,
    pub shim_prefix: Vec<String>,
    pub runtime_timeout_ms: u64,
    pub shim_handshake_timeout_ms: u64,
    pub max_log_bytes: u64,
    pub max_log_files: u32,
}

impl RuntimeConfig {
    pub fn new(data_dir: impl Into<PathBuf>, shim_program: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            data_dir: data_dir.into(),
            runtime_binary: PathBuf::from("runc"),
            shim_program: shim_program.into(),
            shim_prefix: vec!["runtime-shim".into()],
            runtime_timeout_ms: 30_000,
            shim_handshake_timeout_ms: 30_000,
            max_log_bytes: 10 * 1024 * 1024,
            max_log_files: 5,
        }
    }
}

/// What the node knows about one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerStatus {
    /// The runtime's status (created, running, stopped, ...) or "unknown" if it lost it.
    pub status: String,
    pub pid: i64,
    pub exit: Option<ContainerExit>,
    pub oom_killed: bool,
}

#[derive(Clone)]
pub struct Containers {
    cfg: RuntimeConfig,
    runtime: OciRuntime,
}

impl Containers {
    pub fn open(cfg: RuntimeConfig) -> Result<Self> {
        for d in ["containers", "logs", "runc"] {
            let p = cfg.data_dir.join(d);
            std::fs::create_dir_all(&p)
                .map_err(RuntimeError::io("create runtime directory", &p))?;
        }
        let runtime = OciRuntime::new(
            &cfg.runtime_binary,
            cfg.data_dir.join("runc"),
            cfg.runtime_timeout_ms,
        );
        Ok(Containers { cfg, runtime })
    }

    pub fn runtime(&self) -> &OciRuntime {
        &self.runtime
    }

    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("containers").join(id)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("logs").join(format!("{id}.log"))
    }

    /// The container's log files, oldest first.
    pub fn log_files(&self, id: &str) -> Vec<PathBuf> {
        shim::log_files(&self.log_path(id), self.cfg.max_log_files)
    }

    /// Builds the root filesystem and bundle and has the shim run `create`; returns the pid of
    /// the container's init, which waits for [`Containers::start`].
    pub async fn create(
        &self,
        cfg: &ContainerConfig,
        image: &ImageRecord,
        images: &ImageStore,
    ) -> Result<i64> {
        bundle::validate_id(&cfg.id)?;
        let dir = self.bundle_dir(&cfg.id);
        if dir.exists() {
            return Err(RuntimeError::InvalidConfig(format!(
                "container {} already exists at {}",
                cfg.id,
                dir.display()
            )));
        }
        let res = self.create_inner(cfg, image, images, &dir).await;
        if res.is_err() {
            let _ = self.runtime.delete(&cfg.id, true).await;
            let _ = rootfs::unmount(&dir.join("rootfs"));
            let _ = std::fs::remove_dir_all(&dir);
        }
        res
    }

    async fn create_inner(
        &self,
        cfg: &ContainerConfig,
        image: &ImageRecord,
        images: &ImageStore,
        dir: &Path,
    ) -> Result<i64> {
        let rootfs_dir = dir.join("rootfs");
        for d in [&rootfs_dir, &dir.join("upper"), &dir.join("work")] {
            std::fs::create_dir_all(d).map_err(RuntimeError::io("create bundle", d))?;
        }
        let lower = image
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d).map(|d| images.layer_dir(&d)))
            .collect::<Result<Vec<_>>>()?;
        for l in &lower {
            if !l.is_dir() {
                return Err(RuntimeError::InvalidConfig(format!(
                    "layer {} of {} is missing from the image store",
                    l.display(),
                    image.reference
                )));
            }
        }
        rootfs::mount_overlay(&lower, &dir.join("upper"), &dir.join("work"), &rootfs_dir)?;
        let spec = bundle::build_spec(cfg, &rootfs_dir)?;
        bundle::write(&spec, dir)?;
        self.spawn_shim(&cfg.id, dir).await
    }

    async fn spawn_shim(&self, id: &str, dir: &Path) -> Result<i64> {
        let args = ShimArgs {
            runtime: self.runtime.binary().to_path_buf(),
            runtime_root: self.runtime.root().to_path_buf(),
            id: id.to_string(),
            bundle: dir.to_path_buf(),
            log_path: self.log_path(id),
            max_log_bytes: self.cfg.max_log_bytes,
            max_log_files: self.cfg.max_log_files,
        };
        let mut cmd = tokio::process::Command::new(&self.cfg.shim_program);
        cmd.args(&self.cfg.shim_prefix)
            .args(args.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own session: signals to the agent's process group must not reach it.
            .process_group(0);
        let shim_err = |message: String| RuntimeError::Shim {
            id: id.to_string(),
            message,
        };
        let mut child = cmd.spawn().map_err(|e| {
            shim_err(format!(
                "cannot start {}: {e}",
                self.cfg.shim_program.display()
            ))
        })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| shim_err("no stdout".into()))?;
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        let read = reader.read_line(&mut line);
        match tokio::time::timeout(
            Duration::from_millis(self.cfg.shim_handshake_timeout_ms),
            read,
        )
        .await
        {
            Err(_) => {
                let _ = child.start_kill();
                return Err(shim_err(format!(
                    "no answer within {} ms",
                    self.cfg.shim_handshake_timeout_ms
                )));
            }
            Ok(Err(e)) => return Err(shim_err(format!("reading its answer: {e}"))),
            Ok(Ok(_)) => {}
        }
        // The shim goes on alone; tokio reaps it when it exits.
        drop(child);
        let line = line.trim();
        if let Some(pid) = line.strip_prefix("ok ") {
            return pid
                .parse()
                .map_err(|_| shim_err(format!("bad answer {line:?}")));
        }
        let msg = line.strip_prefix("error: ").unwrap_or(line);
        Err(shim_err(if msg.is_empty() {
            "exited without an answer".into()
        } else {
            msg.to_string()
        }))
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.runtime.start(id).await
    }

    pub async fn status(&self, id: &str) -> Result<ContainerStatus> {
        let state = self.runtime.state(id).await?;
        let exit = shim::read_exit(&self.bundle_dir(id))?;
        let oom_killed = match self.cgroups_path(id) {
            Some(p) if exit.is_some() => cgroup::oom_killed(&p),
            _ => false,
        };
        Ok(ContainerStatus {
            status: state
                .as_ref()
                .map_or_else(|| "unknown".to_string(), |s| s.status.clone()),
            pid: state.map_or(0, |s| s.pid),
            exit,
            oom_killed,
        })
    }

    /// The exit record and OOM flag if the container's init has ended, read from the shim's
    /// file and the cgroup without calling the runtime: cheap enough to poll every container.
    pub fn exited(&self, id: &str) -> Result<Option<(ContainerExit, bool)>> {
        let Some(exit) = shim::read_exit(&self.bundle_dir(id))? else {
            return Ok(None);
        };
        let oom = self
            .cgroups_path(id)
            .is_some_and(|p| cgroup::oom_killed(&p));
        Ok(Some((exit, oom)))
    }

    /// The cgroup path recorded in the container's bundle.
    pub fn cgroups_path(&self, id: &str) -> Option<String> {
        let spec = oci_spec::runtime::Spec::load(self.bundle_dir(id).join("config.json")).ok()?;
        spec.linux()
            .as_ref()?
            .cgroups_path()
            .as_ref()
            .map(|p| p.display().to_string())
    }

    /// SIGTERM, then SIGKILL after `grace`; returns when the container has stopped (bounded).
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        self.runtime.kill(id, "TERM", false).await?;
        if self.wait_stopped(id, grace).await? {
            return Ok(());
        }
        self.runtime.kill(id, "KILL", true).await?;
        if self.wait_stopped(id, Duration::from_secs(10)).await? {
            return Ok(());
        }
        Err(RuntimeError::Shim {
            id: id.to_string(),
            message: "still running 10 s after SIGKILL".into(),
        })
    }

    async fn wait_stopped(&self, id: &str, limit: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.runtime.state(id).await? {
                None => return Ok(true),
                Some(s) if s.status == "stopped" => return Ok(true),
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes the container from the runtime and removes its root filesystem, bundle, logs
    /// and cgroup. Removing an unknown container is not an error.
    pub async fn remove(&self, id: &str) -> Result<()> {
        self.remove_inner(id, false).await
    }

    /// [`Containers::remove`] but the logs stay (`logs --previous` of a restarted container).
    pub async fn remove_keep_logs(&self, id: &str) -> Result<()> {
        self.remove_inner(id, true).await
    }

    /// Ids of containers with logs whose id starts with `prefix`.
    pub fn logged_ids(&self, prefix: &str) -> Vec<String> {
        let dir = self.cfg.data_dir.join("logs");
        let mut out: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.strip_suffix(".log").map(str::to_string)
                    })
                    .filter(|id| id.starts_with(prefix))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Removes the log files of containers whose id starts with `prefix`.
    pub fn remove_logs(&self, prefix: &str) {
        for id in self.logged_ids(prefix) {
            for f in self.log_files(&id) {
                let _ = std::fs::remove_file(f);
            }
        }
    }

    /// `runtime exec` of `command` in a running container, stdio piped, killed on drop.
    pub fn exec_command(&self, id: &str, command: &[String]) -> Result<tokio::process::Command> {
        bundle::validate_id(id)?;
        if command.is_empty() {
            return Err(RuntimeError::InvalidConfig("exec needs a command".into()));
        }
        let mut cmd = tokio::process::Command::new(self.runtime.binary());
        cmd.arg("--root")
            .arg(self.runtime.root())
            .arg("exec")
            .arg(id)
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(cmd)
    }

    async fn remove_inner(&self, id: &str, keep_logs: bool) -> Result<()> {
        bundle::validate_id(id)?;
        let cg = self.cgroups_path(id);
        self.runtime.delete(id, true).await?;
        let dir = self.bundle_dir(id);
        rootfs::unmount(&dir.join("rootfs"))?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(RuntimeError::io("remove bundle", &dir))?;
        }
        if !keep_logs {
            for f in self.log_files(id) {
                let _ = std::fs::remove_file(f);
            }
        }
        if let Some(cg) = cg {
            cgroup::remove(&cg).map_err(|message| RuntimeError::Shim {
                id: id.to_string(),
                message: format!("cgroup left behind: {message}"),
            })?;
        }
        Ok(())
    }
}
