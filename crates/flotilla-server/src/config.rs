//! The server's TOML configuration. Every duration names its unit; every queue has a bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// One member of the initial cluster.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: u64,
    pub raft_addr: String,
    pub api_addr: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot, for followers that lag a little.
    pub max_in_snapshot_log_to_keep: u64,
    pub max_payload_entries: u64,
    pub install_snapshot_timeout_ms: u64,
    pub max_message_bytes: usize,
    pub max_snapshot_bytes: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            heartbeat_interval_ms: 250,
            // etcd's --snapshot-count default: a snapshot re-reads every object, so not too often.
            snapshot_logs_since_last: 100_000,
            max_in_snapshot_log_to_keep: 1000,
            max_payload_entries: 256,
            install_snapshot_timeout_ms: 30_000,
            max_message_bytes: 256 * 1024 * 1024,
            max_snapshot_bytes: 8 * 1024 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest encoded object accepted.
    pub max_object_bytes: usize,
    /// Largest API request accepted (a batch of writes).
    pub max_request_bytes: usize,
    /// Writes in one batch request, and in one Raft entry after coalescing.
    pub max_batch_writes: usize,
    /// Write requests waiting to be coalesced into a proposal; more wait for room.
    pub proposal_queue_len: usize,
    /// Proposals (Raft entries, or forwarded batches) in flight at once; while all are busy,
    /// new requests queue and go out together in the next one.
    pub max_inflight_proposals: usize,
    /// Largest page a list returns; clients follow continue tokens for more.
    pub max_list_page: usize,
    /// Revisions of watch history kept for resuming watches.
    pub watch_history_revisions: u64,
    /// Newest watch history carried in each snapshot (encoded bytes), so a server sent a
    /// snapshot still serves watches resumed from before it.
    pub snapshot_watch_history_bytes: usize,
    /// Events queued per watcher before the server falls back to reading history.
    pub watch_queue_len: usize,
    /// Applied entries buffered for all watchers together.
    pub watch_broadcast_capacity: usize,
    /// An idle watch gets a bookmark this often.
    pub watch_progress_interval_ms: u64,
    /// How long a write waits for commit before answering TIMEOUT (outcome unknown).
    pub write_timeout_ms: u64,
    /// How long a request waits for an election to produce a leader.
    pub leader_wait_ms: u64,
    /// Concurrent watch streams served by this server.
    pub max_watchers: usize,
    /// Events whose last occurrence is older than this are deleted (Kubernetes: 1 h).
    pub event_ttl_ms: u64,
    /// How often the leader looks for expired Events.
    pub event_gc_interval_ms: u64,
    /// Expired Events deleted per look, at most.
    pub event_gc_batch: usize,
    /// How often agents heartbeat (told to them on every session response).
    pub heartbeat_period_ms: u64,
    /// Heartbeats received within this window renew their node Leases in one log entry.
    pub node_lease_batch_ms: u64,
    /// Validity of the client certificates agents get when they join.
    pub node_cert_days: i64,
    /// Agent QUIC connections served at once by one server.
    pub max_agent_connections: usize,
    /// Duration of the scheduler's and controller-manager's Leases (Kubernetes: 15 s).
    pub role_lease_duration_ms: u64,
    /// How often each server reads, renews or tries to take the role Leases (Kubernetes: 2 s).
    pub role_retry_ms: u64,
    /// How often the scheduler tries again the pods that fit nowhere, even if nothing it
    /// watches changed (kube-scheduler flushes its unschedulable queue every 60 s).
    pub unschedulable_retry_ms: u64,
    /// Pods bound per fenced batch (one log entry); at most `max_batch_writes`.
    pub scheduler_bind_batch: usize,
    /// Bind batches committing at once: the scheduler decides the next batch while earlier
    /// ones commit (each decision is assumed placed at once, so batches never share room).
    pub scheduler_binds_in_flight: usize,
    /// Objects the controller-manager reconciles per round before it writes.
    pub controller_round_keys: usize,
    /// A node whose Lease the controller-manager has not seen renewed for this long is
    /// unreachable: tainted, its pods marked not ready (Kubernetes: 40 s). Counted from when
    /// the current controller leader started watching, so a failover gives every node a
    /// fresh period.
    pub node_grace_period_ms: u64,
    /// How long pods stay on an unreachable node unless they tolerate it longer or shorter
    /// (Kubernetes' default tolerationSeconds: 300).
    pub default_unreachable_toleration_seconds: u64,
    /// How often the controller-manager checks every node (Kubernetes: 5 s).
    pub node_monitor_period_ms: u64,
    /// Shifts the clock the controllers reconcile with (CronJob schedules, deadlines, TTLs).
    /// For tests and demos only: 0 in production.
    pub controller_clock_offset_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_object_bytes: flotilla_api::DEFAULT_MAX_OBJECT_BYTES,
            max_request_bytes: 16 * 1024 * 1024,
            max_batch_writes: 1000,
            proposal_queue_len: 4096,
            max_inflight_proposals: 4,
            max_list_page: 5000,
            watch_history_revisions: 100_000,
            snapshot_watch_history_bytes: 32 * 1024 * 1024,
            watch_queue_len: 1024,
            watch_broadcast_capacity: 4096,
            watch_progress_interval_ms: 5000,
            write_timeout_ms: 10_000,
            leader_wait_ms: 5000,
            max_watchers: 10_000,
            event_ttl_ms: 3_600_000,
            event_gc_interval_ms: 60_000,
            event_gc_batch: 1000,
            heartbeat_period_ms: 5000,
            node_lease_batch_ms: 1000,
            node_cert_days: 365,
            max_agent_connections: 10_000,
            role_lease_duration_ms: 15_000,
            role_retry_ms: 2_000,
            unschedulable_retry_ms: 30_000,
            scheduler_bind_batch: 1000,
            scheduler_binds_in_flight: 4,
            controller_round_keys: 1000,
            node_grace_period_ms: 40_000,
            default_unreachable_toleration_seconds: 300,
            node_monitor_period_ms: 5_000,
            controller_clock_offset_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub node_id: u64,
    /// A name shared by all members; a data directory of another cluster is refused.
    pub cluster_id: String,
    /// The secret the cluster CA is derived from (the same on every server; see
    /// `flotilla_identity::derive_ca`). Give it here or in `cluster_secret_file`.
    #[serde(default)]
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret (relative paths from the config file's directory).
    #[serde(default)]
    pub cluster_secret_file: Option<PathBuf>,
    pub api_addr: String,
    pub raft_addr: String,
    /// UDP address agents reach over QUIC; absent: the api_addr's IP and port (over UDP).
    #[serde(default)]
    pub agent_addr: Option<String>,
    /// Prometheus text metrics on http://ADDR/metrics; absent: no metrics listener.
    #[serde(default)]
    pub metrics_addr: Option<String>,
    /// Relative paths are taken from the directory the server is started in.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Members that bootstrap a new cluster together. Empty: join an existing cluster by being
    /// added as a learner.
    #[serde(default)]
    pub initial_members: Vec<MemberConfig>,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    pub limits: Limits,
}

impl ServerConfig {
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut c = Self::parse(&path.display().to_string(), &text)?;
        if let Some(f) = c.cluster_secret_file.clone() {
            let f = match path.parent() {
                Some(dir) if f.is_relative() => dir.join(f),
                _ => f,
            };
            let secret = std::fs::read_to_string(&f).map_err(|source| ConfigError::Read {
                path: f.display().to_string(),
                source,
            })?;
            c.cluster_secret = Some(secret.trim().to_string());
            c.check_secret(&path.display().to_string())?;
        }
        Ok(c)
    }

    /// The cluster secret, checked by `parse`/`load`.
    pub fn secret(&self) -> &str {
        self.cluster_secret.as_deref().unwrap_or_default()
    }

    fn check_secret(&self, name: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: name.to_string(),
            message,
        };
        match &self.cluster_secret {
            None => Err(invalid(
                "cluster_secret (or cluster_secret_file) is required: the cluster CA is derived \
                 from it, so every server needs the same one; generate it with \
                 `openssl rand -hex 32` and keep it as secret as a CA key"
                    .into(),
            )),
            Some(s) if s.len() < flotilla_identity::MIN_SECRET_BYTES => Err(invalid(format!(
                "cluster_secret must be at least {} bytes",
                flotilla_identity::MIN_SECRET_BYTES
            ))),
            Some(_) => Ok(()),
        }
    }

    pub fn parse(name: &str, text: &str) -> Result<ServerConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: name.to_string(),
            message,
        };
        let c: ServerConfig = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (field, addr) in [("api_addr", &c.api_addr), ("raft_addr", &c.raft_addr)] {
            addr.parse::<SocketAddr>()
                .map_err(|e| invalid(format!("{field} {addr:?} is not an IP:port address: {e}")))?;
        }
        if let Some(a) = &c.agent_addr {
            a.parse::<SocketAddr>()
                .map_err(|e| invalid(format!("agent_addr {a:?} is not an IP:port address: {e}")))?;
        }
        if let Some(m) = &c.metrics_addr {
            m.parse::<SocketAddr>().map_err(|e| {
                invalid(format!("metrics_addr {m:?} is not an IP:port address: {e}"))
            })?;
        }
        if c.cluster_id.is_empty() {
            return Err(invalid("cluster_id must not be empty".into()));
        }
        match (&c.cluster_secret, &c.cluster_secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "give cluster_secret or cluster_secret_file, not both".into(),
                ))
            }
            (Some(_), None) => c.check_secret(name)?,
            // Read (and checked) by `load`.
            (None, Some(_)) => {}
            (None, None) => c.check_secret(name)?,
        }
        if !c.initial_members.is_empty() && !c.initial_members.iter().any(|m| m.id == c.node_id) {
            return Err(invalid(format!(
                "initial_members does not include this server's node_id {}",
                c.node_id
            )));
        }
        if c.raft.election_timeout_min_ms <= c.raft.heartbeat_interval_ms
            || c.raft.election_timeout_max_ms <= c.raft.election_timeout_min_ms
        {
            return Err(invalid(
                "need heartbeat_interval_ms < election_timeout_min_ms < election_timeout_max_ms"
                    .into(),
            ));
        }
        if c.limits.max_object_bytes > c.limits.max_request_bytes {
            return Err(invalid(
                "limits.max_object_bytes must not exceed limits.max_request_bytes".into(),
            ));
        }
        Ok(c)
    }

    /// The data directory: the flag, else the config's, else `data/server-<id>`, relative paths
    /// taken from the current directory.
    pub fn resolve_data_dir(&self, flag: Option<&Path>) -> PathBuf {
        let d = flag
            .map(Path::to_path_buf)
            .or_else(|| self.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(format!("data/server-{}", self.node_id)));
        if d.is_absolute() {
            d
        } else {
            std::env::current_dir().map(|c| c.join(&d)).unwrap_or(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
node_id = 1
cluster_id = "t"
cluster_secret = "test-secret-0123456789"
api_addr = "127.0.0.1:7101"
raft_addr = "127.0.0.1:7111"
[[initial_members]]
id = 1
raft_addr = "127.0.0.1:7111"
api_addr = "127.0.0.1:7101"
"#;

    #[test]
    fn parses_with_defaults() {
        let c = ServerConfig::parse("x", OK).unwrap();
        assert_eq!(c.limits.max_object_bytes, 4 * 1024 * 1024);
        assert!(c.resolve_data_dir(None).ends_with("data/server-1"));
    }

    #[test]
    fn shipped_configs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster-configs");
        let mut n = 0;
        for sub in ["three-node", "five-node"] {
            for entry in std::fs::read_dir(root.join(sub)).unwrap() {
                let c = ServerConfig::load(&entry.unwrap().path()).unwrap();
                assert!(c.initial_members.iter().any(|m| m.id == c.node_id));
                n += 1;
            }
        }
        assert_eq!(n, 8);
        // Parsed, not loaded: its secret file exists only on a real install.
        let example = root.join("systemd/server.toml.example");
        let c =
            ServerConfig::parse("example", &std::fs::read_to_string(&example).unwrap()).unwrap();
        assert!(c.cluster_secret_file.is_some());
    }

    #[test]
    fn errors_name_the_problem() {
        let e =
            ServerConfig::parse("x.toml", &OK.replace("7101\"\nraft", "nope\"\nraft")).unwrap_err();
        assert!(e.to_string().contains("api_addr"), "{e}");
        let e = ServerConfig::parse("x.toml", &format!("{OK}\nbogus = 1\n")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e =
            ServerConfig::parse("x.toml", &OK.replace("node_id = 1", "node_id = 2")).unwrap_err();
        assert!(e.to_string().contains("initial_members"), "{e}");
        let e = ServerConfig::parse(
            "x.toml",
            &OK.replace("cluster_secret = \"test-secret-0123456789\"\n", ""),
        )
        .unwrap_err();
        assert!(e.to_string().contains("cluster_secret"), "{e}");
        let e = ServerConfig::parse("x.toml", &OK.replace("test-secret-0123456789", "short"))
            .unwrap_err();
        assert!(e.to_string().contains("at least 16 bytes"), "{e}");
    }
}
