//! The node agent. It owns the node's side of the agent protocol (DESIGN.md §2.5): joining with
//! a token that pins the cluster CA (discovery, then a CSR signed by a server), keeping its
//! identity under `<data-dir>/identity`, and one mutual-TLS QUIC session at a time to any server,
//! over which it registers its Node and heartbeats at the period the server asks for,
//! reconnecting with jittered exponential backoff.
//!
//! It must never depend on the Raft or state crates, or listen on a port: servers reach it only
//! over the connection it opened.

pub mod join;
pub mod nodeinfo;
pub mod pods;
pub mod probe;
pub mod session;
pub mod streams;
pub mod volumes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use join::Identity;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Servers' agent (QUIC) addresses; any of them will do.
    pub servers: Vec<SocketAddr>,
    /// Needed only until the agent has an identity.
    pub token: Option<String>,
    pub data_dir: PathBuf,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The OCI runtime (for the Node's runtime version; it runs the pods).
    pub runtime: PathBuf,
    pub connect_timeout_ms: u64,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Rounds over all servers while joining before giving up.
    pub join_rounds: u32,
    /// Registries reached over plain HTTP (`host:port`).
    pub insecure_registries: Vec<String>,
    /// The program that runs container shims (`flotilla runtime-shim`): this binary.
    pub shim_program: PathBuf,
    /// First delay of a crashing container's restart backoff (Kubernetes: 10 s).
    pub crash_backoff_initial_ms: u64,
    pub image_gc: pods::ImageGc,
    /// A QUIC endpoint to open sessions on instead of one per session: lets one process
    /// simulate many nodes (the scheduling benchmark's hollow nodes) on one UDP socket.
    pub shared_endpoint: Option<quinn::Endpoint>,
}

impl AgentConfig {
    pub fn new(servers: Vec<SocketAddr>, data_dir: PathBuf, name: String) -> Self {
        AgentConfig {
            servers,
            token: None,
            data_dir,
            name,
            labels: BTreeMap::new(),
            runtime: PathBuf::from("runc"),
            connect_timeout_ms: 3_000,
            backoff_min_ms: 200,
            backoff_max_ms: 10_000,
            join_rounds: 20,
            insecure_registries: Vec::new(),
            shim_program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("flotilla")),
            crash_backoff_initial_ms: 10_000,
            image_gc: pods::ImageGc::default(),
            shared_endpoint: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no identity in {0} and no --token to join with")]
    NoToken(String),
    #[error("malformed join token: {0}")]
    Token(String),
    #[error("the cluster CA served by {addr} is {actual}, but the token pins {expected}: refusing to trust it")]
    CaMismatch {
        addr: SocketAddr,
        actual: String,
        expected: String,
    },
    #[error("join refused by {addr}: {message}")]
    Refused { addr: SocketAddr, message: String },
    #[error("could not join: no server answered ({0})")]
    Unreachable(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("identity: {0}")]
    Identity(#[from] flotilla_identity::IdentityError),
    #[error("invalid node: {0}")]
    InvalidNode(String),
    #[error("node runtime: {0}")]
    Runtime(String),
}

/// Full-jitter exponential backoff: a random wait in [0, min(max, base * 2^attempt)].
pub fn backoff_ms(attempt: u32, base_ms: u64, max_ms: u64) -> u64 {
    use rand::Rng;
    let cap = base_ms
        .saturating_mul(1u64 << attempt.min(20))
        .min(max_ms)
        .max(1);
    rand::rng().random_range(cap / 2..=cap)
}

/// Runs the agent until `shutdown`: makes sure it has an identity, then keeps a session.
pub async fn run(
    cfg: AgentConfig,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), AgentError> {
    flotilla_api::validation::check_dns1123_subdomain("--name", &cfg.name)
        .map_err(|e| AgentError::InvalidNode(e.to_string()))?;
    let identity = join::ensure_identity(&cfg, &shutdown).await?;
    let desired = pods::SharedDesired::default();
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let (status_tx, status_rx) = tokio::sync::mpsc::channel(STATUS_QUEUE);
    let mut pcfg = pods::PodsConfig::new(
        cfg.data_dir.clone(),
        cfg.runtime.clone(),
        cfg.shim_program.clone(),
    );
    pcfg.insecure_registries = cfg.insecure_registries.clone();
    pcfg.crash_backoff_initial_ms = cfg.crash_backoff_initial_ms;
    pcfg.image_gc = cfg.image_gc.clone();
    let server = session::ServerLink::default();
    let manager = pods::PodManager::open(
        pcfg,
        desired.clone(),
        changed.clone(),
        status_tx,
        server.clone(),
    )
    .map_err(|e| AgentError::Runtime(e.to_string()))?;
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(manager.run(shutdown.clone()));
    let mut links = session::Links {
        desired,
        changed,
        status_rx,
        latest: Default::default(),
        server,
    };
    let res = session::run(&cfg, &identity, &mut links, shutdown.clone()).await;
    // Containers keep running without the agent; only the loops stop.
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    res
}

/// Status reports waiting for the session (the manager re-reports when a send fails).
const STATUS_QUEUE: usize = 1024;

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_is_bounded_and_grows() {
        for attempt in 0..40 {
            let b = super::backoff_ms(attempt, 200, 10_000);
            assert!(b <= 10_000);
        }
        assert!(super::backoff_ms(0, 200, 10_000) <= 200);
        assert!(super::backoff_ms(10, 200, 10_000) >= 5_000);
    }
}
