//! Start-up and shutdown of one server: open the stores, start Raft, bind the listeners,
//! bootstrap a new cluster, and in reverse on shutdown.

use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::pb::admin::cluster_service_server::ClusterServiceServer;
use flotilla_api::pb::api::object_service_server::ObjectServiceServer;
use flotilla_api::pb::raft::raft_service_server::RaftServiceServer;
use flotilla_api::pb::raft::RaftNode;
use flotilla_api::ApiError;
use flotilla_raft::network::{Network, TransportConfig};
use flotilla_raft::service::RaftGrpc;
use flotilla_raft::state_machine::StateMachineConfig;
use flotilla_raft::{LogStore, Raft, StateMachine, StoreReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};

use crate::config::{Limits, ServerConfig};
use crate::metrics::Metrics;

pub(crate) type TC = flotilla_raft::TypeConfig;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] flotilla_raft::StoreError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid raft settings: {0}")]
    RaftConfig(String),
    #[error("cannot listen on {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Everything a request handler needs; shared by all services of one server.
pub struct Node {
    pub id: u64,
    pub cluster_id: String,
    pub raft: Raft,
    pub reader: StoreReader,
    pub log: LogStore,
    pub limits: Limits,
    pub metrics: Metrics,
    pub watchers: Arc<tokio::sync::Semaphore>,
    pub shutdown: CancellationToken,
    /// This server's client API address (agents' Leases name it as their server).
    pub api_addr: String,
    /// Agents with a session on this server, by node name.
    pub agents: crate::dispatcher::AgentConnections,
    channels: Mutex<HashMap<String, Channel>>,
    /// The cluster CA and this server's certificate.
    pub tls: crate::tls::ServerTls,
}

impl Node {
    /// The current leader's id and client API address, as this server knows them. A leader
    /// that is no longer in the membership (it was just removed) does not count.
    pub fn leader(&self) -> Option<(u64, String)> {
        // Borrow, not clone: this runs on every request.
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        let id = m.current_leader?;
        let found = m
            .membership_config
            .membership()
            .nodes()
            .find(|(nid, _)| **nid == id)
            .map(|(_, n)| (id, n.api_address.clone()));
        found
    }

    /// Wait (bounded by `leader_wait_ms`) until some leader is known.
    pub async fn wait_leader(&self) -> Option<(u64, String)> {
        if let Some(l) = self.leader() {
            return Some(l);
        }
        let mut rx = self.raft.metrics();
        let wait = tokio::time::timeout(Duration::from_millis(self.limits.leader_wait_ms), async {
            loop {
                if rx.borrow_and_update().current_leader.is_some() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        let _ = wait.await;
        self.leader()
    }

    /// Wait (bounded by `leader_wait_ms`) until the known leader is not `old`.
    pub async fn wait_leader_change(&self, old: u64) {
        let mut rx = self.raft.metrics();
        let _ = tokio::time::timeout(Duration::from_millis(self.limits.leader_wait_ms), async {
            loop {
                let l = rx.borrow_and_update().current_leader;
                if l.is_some() && l != Some(old) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    pub fn is_leader(&self) -> bool {
        self.leader().is_some_and(|(id, _)| id == self.id)
    }

    /// A lazily connecting channel to another server's client API, cached per address.
    pub fn channel(&self, addr: &str) -> Result<Channel, ApiError> {
        let mut map = self
            .channels
            .lock()
            .map_err(|_| ApiError::internal("channel cache poisoned"))?;
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let ch = Endpoint::from_shared(format!("https://{addr}"))
            .and_then(|e| e.tls_config(self.tls.client_config()))
            .map_err(|e| ApiError::internal(format!("server address {addr:?} is invalid: {e}")))?
            .connect_timeout(Duration::from_millis(1000))
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// This server's member record.
    pub fn members(&self) -> BTreeMap<u64, RaftNode> {
        let m = self.raft.metrics().borrow_watched().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    }
}

/// A running server. Dropping it does not stop it; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    pub node: Arc<Node>,
    /// Which roles this server holds, at which epoch.
    pub elections: crate::election::Elections,
    tasks: TaskTracker,
}

impl ServerHandle {
    /// Orderly stop, the reverse of start-up: stop accepting, drain the listeners, stop Raft.
    pub async fn shutdown(self) {
        self.node.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Err(e) = self.node.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }

    /// Resolves when something asked the server to stop (a fatal error in a listener).
    pub async fn stopped(&self) {
        self.node.shutdown.cancelled().await
    }

    /// Resolves, with the error, when Raft stops on a fatal error (a failed log write or
    /// fsync). Such a server cannot go on: its disk may not hold what it acknowledged.
    pub async fn raft_failed(&self) -> String {
        let mut rx = self.node.raft.metrics();
        loop {
            if let Err(e) = &rx.borrow_watched().running_state {
                return e.to_string();
            }
            if rx.changed().await.is_err() {
                return "Raft stopped".to_string();
            }
        }
    }
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })
}

pub async fn start(config: ServerConfig, data_dir: PathBuf) -> Result<ServerHandle, StartError> {
    std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let log = LogStore::open(
        &data_dir.join("raft-log.redb"),
        &config.cluster_id,
        config.node_id,
    )?;
    let sm = StateMachine::open(
        &data_dir.join("state.redb"),
        &data_dir.join("snapshot.pb"),
        StateMachineConfig {
            history_revisions: config.limits.watch_history_revisions,
            broadcast_capacity: config.limits.watch_broadcast_capacity,
            snapshot_history_max_bytes: config.limits.snapshot_watch_history_bytes,
        },
    )?;
    let reader = sm.reader();
    let tls = crate::tls::ServerTls::new(&config).map_err(StartError::Tls)?;
    // The store's CA (written by the first leader) must be the one the secret gives.
    if let Ok((Some(o), _)) = reader.get(&crate::identity::ca_key()) {
        if let Some(stored) = crate::identity::ca_from_object(&o) {
            if stored.cert_pem != tls.ca.cert_pem {
                return Err(StartError::Tls(format!(
                    "the cluster CA in {} is not the one cluster_id {:?} and this \
                     cluster_secret give: a wrong secret, or a data directory made by another cluster (or \
                     by a Flotilla older than the derived CA: remove it to start a new cluster)",
                    data_dir.display(),
                    config.cluster_id
                )));
            }
        }
    }
    match crate::tls::write_admin_conf(&data_dir, &config, &tls) {
        Ok(true) => {
            tracing::info!(path = %data_dir.join("admin.conf").display(), "wrote the admin CLI config")
        }
        Ok(false) => {}
        Err(e) => return Err(StartError::Tls(format!("admin.conf: {e}"))),
    }

    let r = &config.raft;
    let raft_config = openraft::Config {
        cluster_name: config.cluster_id.clone(),
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        heartbeat_interval: r.heartbeat_interval_ms,
        install_snapshot_timeout: r.install_snapshot_timeout_ms,
        max_payload_entries: r.max_payload_entries,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: r.max_in_snapshot_log_to_keep,
        // A leader restarted after a crash must not take its leadership back without an
        // election: its state machine may have rolled back to its last durable commit (applies
        // are not fsync'd), and a read index from that restored leader served older state than
        // acknowledged writes (found by jepsen/, tests/tests/restart_reads.rs).
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::RaftConfig(e.to_string()))?;
    let transport = TransportConfig {
        max_message_bytes: r.max_message_bytes,
        max_snapshot_bytes: r.max_snapshot_bytes,
        client_tls: Some(tls.client_config()),
        ..Default::default()
    };

    // Bind before starting Raft so a taken port fails start-up cleanly.
    let raft_listener = bind("raft", &config.raft_addr).await?;
    let api_listener = bind("api", &config.api_addr).await?;
    let agent_addr: std::net::SocketAddr = config
        .agent_addr
        .as_deref()
        .unwrap_or(&config.api_addr)
        .parse()
        .map_err(|e| StartError::Bind {
            what: "agent",
            addr: config.api_addr.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")),
        })?;
    let agent_endpoint = crate::dispatcher::bind(agent_addr).map_err(|e| StartError::Bind {
        what: "agent (UDP)",
        addr: agent_addr.to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let metrics_listener = match &config.metrics_addr {
        Some(a) => Some(bind("metrics", a).await?),
        None => None,
    };

    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config),
        Network {
            config: transport.clone(),
        },
        log.clone(),
        sm,
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;

    let node = Arc::new(Node {
        id: config.node_id,
        cluster_id: config.cluster_id.clone(),
        raft: raft.clone(),
        reader,
        log,
        limits: config.limits.clone(),
        metrics: Metrics::new(),
        watchers: Arc::new(tokio::sync::Semaphore::new(config.limits.max_watchers)),
        shutdown: CancellationToken::new(),
        api_addr: config.api_addr.clone(),
        agents: Default::default(),
        channels: Mutex::new(HashMap::new()),
        tls: tls.clone(),
    });
    let tasks = TaskTracker::new();

    let token = node.shutdown.clone();
    let raft_svc =
        RaftServiceServer::new(RaftGrpc::new(raft.clone(), transport.max_snapshot_bytes))
            .max_decoding_message_size(transport.max_message_bytes)
            .max_encoding_message_size(transport.max_message_bytes);
    let raft_tls = tls.server_config();
    tasks.spawn(serve("raft", token.clone(), async move {
        tonic::transport::Server::builder()
            .tls_config(raft_tls)?
            .layer(tonic::service::InterceptorLayer::new(
                crate::tls::servers_only,
            ))
            .add_service(raft_svc)
            .serve_with_incoming_shutdown(incoming(raft_listener), token.cancelled_owned())
            .await
    }));

    let token = node.shutdown.clone();
    let max_req = config.limits.max_request_bytes;
    let proposer = crate::proposer::Proposer::start(node.clone(), &tasks);
    crate::events::start(node.clone(), proposer.clone(), &tasks);
    let internal_api = Arc::new(crate::api::ObjectApi::new(node.clone(), proposer.clone()));
    crate::identity::start(node.clone(), internal_api.clone(), &tasks);
    let elections = crate::election::start(node.clone(), internal_api.clone(), &tasks);
    crate::controllers::start(
        node.clone(),
        internal_api.clone(),
        elections.clone(),
        &tasks,
    );
    crate::scheduling::start(
        node.clone(),
        internal_api.clone(),
        elections.clone(),
        &tasks,
    );
    let internal_pods_api = internal_api.clone();
    crate::dispatcher::start(node.clone(), internal_api, agent_endpoint, &tasks);
    let object_svc = ObjectServiceServer::new(crate::api::ObjectApi::new(node.clone(), proposer))
        .max_decoding_message_size(max_req)
        .max_encoding_message_size(usize::MAX);
    let cluster_svc = ClusterServiceServer::new(crate::admin::ClusterApi::new(node.clone()));
    let pod_svc = flotilla_api::pb::api::pod_service_server::PodServiceServer::new(
        crate::pods::PodApi::new(node.clone(), internal_pods_api),
    );
    let api_tls = tls.server_config();
    tasks.spawn(serve("api", token.clone(), async move {
        tonic::transport::Server::builder()
            .tls_config(api_tls)?
            .layer(tonic::service::InterceptorLayer::new(
                crate::tls::api_clients,
            ))
            .add_service(object_svc)
            .add_service(cluster_svc)
            .add_service(pod_svc)
            .serve_with_incoming_shutdown(incoming(api_listener), token.cancelled_owned())
            .await
    }));

    if let Some(l) = metrics_listener {
        let token = node.shutdown.clone();
        let app = crate::metrics::router(node.clone());
        tasks.spawn(serve("metrics", token.clone(), async move {
            axum::serve(l, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
        }));
    }

    if !config.initial_members.is_empty() {
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if !initialized {
            let members: BTreeMap<u64, RaftNode> = config
                .initial_members
                .iter()
                .map(|m| {
                    (
                        m.id,
                        RaftNode {
                            raft_address: m.raft_addr.clone(),
                            api_address: m.api_addr.clone(),
                        },
                    )
                })
                .collect();
            // Every initial member proposes the same membership; a member that already has a
            // log (it heard from a leader first) answers NotAllowed, which is fine.
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(node = config.node_id, "bootstrapped a new cluster"),
                Err(e) => tracing::info!(node = config.node_id, "not bootstrapping: {e}"),
            }
        }
    }
    tracing::info!(node = config.node_id, api = %config.api_addr, raft = %config.raft_addr, data = %data_dir.display(), "server started");
    Ok(ServerHandle {
        node,
        elections,
        tasks,
    })
}

/// Accepted connections with Nagle's algorithm off: small RPCs must not wait for delayed ACKs.
fn incoming(l: TcpListener) -> TcpIncoming {
    TcpIncoming::from(l).with_nodelay(Some(true))
}

/// Run one listener; if it fails, ask the whole server to stop rather than limp on.
async fn serve<E: std::fmt::Display>(
    what: &'static str,
    token: CancellationToken,
    fut: impl std::future::Future<Output = Result<(), E>>,
) {
    if let Err(e) = fut.await {
        tracing::error!("{what} listener failed: {e}");
        token.cancel();
    }
}
