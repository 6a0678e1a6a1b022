//! The runc command-line contract: `create` (through the shim), `start`, `state`, `kill`,
//! `delete`, `list`, with a state directory of our own (`--root`) and a timeout on every call.
//! Any runtime that honours the contract works by path (`crun` on pure cgroup-v2 hosts).

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

use crate::bundle::validate_id;
use crate::error::{Result, RuntimeError};

/// `runc state` output (the fields we use).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    #[serde(default)]
    pub pid: i64,
    /// creating, created, running, paused or stopped.
    pub status: String,
    #[serde(default)]
    pub bundle: String,
}

#[derive(Clone, Debug)]
pub struct OciRuntime {
    binary: PathBuf,
    root: PathBuf,
    timeout: Duration,
}

impl OciRuntime {
    /// `binary` is a path or a name looked up in PATH; `root` is the runtime's state directory.
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>, timeout_ms: u64) -> Self {
        OciRuntime {
            binary: binary.into(),
            root: root.into(),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn name(&self) -> String {
        self.binary.display().to_string()
    }

    async fn run(&self, command: &str, id: &str, args: &[&str]) -> Result<Vec<u8>> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg(command)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let err = |message: String| RuntimeError::Runtime {
            runtime: self.name(),
            command: command.to_string(),
            id: id.to_string(),
            message,
        };
        let out = match tokio::time::timeout(self.timeout, cmd.output()).await {
            Err(_) => {
                return Err(RuntimeError::RuntimeTimeout {
                    runtime: self.name(),
                    command: command.to_string(),
                    id: id.to_string(),
                    timeout_ms: self.timeout.as_millis() as u64,
                })
            }
            Ok(Err(e)) => return Err(err(format!("cannot run: {e}"))),
            Ok(Ok(o)) => o,
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(err(runtime_message(&stderr)));
        }
        Ok(out.stdout)
    }

    /// The runtime's version line, e.g. `runc version 1.1.5+ds1`.
    pub async fn version(&self) -> Result<String> {
        let out = tokio::time::timeout(
            self.timeout,
            Command::new(&self.binary)
                .arg("--version")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| RuntimeError::RuntimeTimeout {
            runtime: self.name(),
            command: "--version".into(),
            id: String::new(),
            timeout_ms: self.timeout.as_millis() as u64,
        })?
        .map_err(|e| RuntimeError::Runtime {
            runtime: self.name(),
            command: "--version".into(),
            id: String::new(),
            message: format!("cannot run: {e}"),
        })?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        self.run("start", id, &[id]).await.map(drop)
    }

    /// The container's state, or None when the runtime does not know it.
    pub async fn state(&self, id: &str) -> Result<Option<ContainerState>> {
        validate_id(id)?;
        match self.run("state", id, &[id]).await {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|e| RuntimeError::Runtime {
                    runtime: self.name(),
                    command: "state".into(),
                    id: id.into(),
                    message: format!("unreadable output: {e}"),
                }),
            Err(RuntimeError::Runtime { message, .. }) if message.contains("does not exist") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the container's init, or to all its processes.
    pub async fn kill(&self, id: &str, signal: &str, all: bool) -> Result<()> {
        validate_id(id)?;
        let mut args = Vec::new();
        if all {
            args.push("--all");
        }
        args.extend([id, signal]);
        match self.run("kill", id, &args).await {
            // Signalling a container that already stopped is not an error for the caller.
            Err(RuntimeError::Runtime { message, .. })
                if message.contains("not running")
                    || message.contains("process already finished") =>
            {
                Ok(())
            }
            r => r.map(drop),
        }
    }

    /// Deletes the container; `force` kills it first if it still runs. Unknown ids are fine.
    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        validate_id(id)?;
        let args: Vec<&str> = if force { vec!["--force", id] } else { vec![id] };
        match self.run("delete", id, &args).await {
            Err(RuntimeError::Runtime { message, .. }) if message.contains("does not exist") => {
                Ok(())
            }
            r => r.map(drop),
        }
    }

    /// Every container in our state directory.
    pub async fn list(&self) -> Result<Vec<ContainerState>> {
        let out = self.run("list", "", &["--format", "json"]).await?;
        // runc prints `null` when there are none.
        let list: Option<Vec<ContainerState>> =
            serde_json::from_slice(&out).map_err(|e| RuntimeError::Runtime {
                runtime: self.name(),
                command: "list".into(),
                id: String::new(),
                message: format!("unreadable output: {e}"),
            })?;
        Ok(list.unwrap_or_default())
    }
}

/// runc reports errors as logfmt (`time=... level=error msg="..."`) or plain text; keep the
/// message.
pub fn runtime_message(stderr: &str) -> String {
    let line = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if let Some(pos) = line.find("msg=\"") {
        let rest = &line[pos + 5..];
        let end = rest.rfind('"').unwrap_or(rest.len());
        return rest[..end].replace("\\\"", "\"");
    }
    if line.is_empty() {
        "failed with no message".into()
    } else {
        line.to_string()
    }
}

/// The last error in a runc `--log-format json` file.
pub fn last_log_error(log: &str) -> Option<String> {
    log.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["level"] == "error" || v["level"] == "fatal")
            .then(|| v["msg"].as_str().unwrap_or_default().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        assert_eq!(
            runtime_message("time=\"x\" level=error msg=\"container \\\"a\\\" does not exist\"\n"),
            "container \"a\" does not exist"
        );
        assert_eq!(runtime_message("plain failure\n"), "plain failure");
        assert_eq!(
            last_log_error(
                "{\"level\":\"info\",\"msg\":\"a\"}\n{\"level\":\"error\",\"msg\":\"b\"}\n"
            ),
            Some("b".into())
        );
    }
}
