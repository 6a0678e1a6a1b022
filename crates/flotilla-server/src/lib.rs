//! flotilla-server owns a server node's wiring and its network faces: the object API (writes
//! forwarded to the leader, linearizable or stale reads, watches), the cluster admin API, the
//! Raft transport listener (both mutual TLS only) and the Prometheus endpoint.
//!
//! It must never decide what a write means (that is `flotilla-state`) nor touch the log or the
//! state file directly (that is `flotilla-raft`); it only proposes, reads and routes.

pub mod admin;
pub mod api;
pub mod config;
pub mod controllers;
pub mod dispatcher;
pub mod election;
pub mod events;
pub mod identity;
pub mod informer;
pub mod metrics;
pub mod node;
pub mod planted;
pub mod pods;
pub mod proposer;
pub mod scheduling;
pub mod tls;
pub mod watch;

pub use config::ServerConfig;
pub use node::{start, Node, ServerHandle, StartError};

/// gRPC metadata key marking a request that one server forwarded to another: the receiver must
/// not forward it again.
pub const FORWARDED_HEADER: &str = "x-flotilla-forwarded";

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
