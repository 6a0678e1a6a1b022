//! flotilla-raft owns consensus and durability: the openraft type configuration, the redb log
//! store (fsync'd before acknowledging, one transaction per appended batch), the redb state
//! machine (objects, watch history and `last_applied` changed in one transaction), snapshots,
//! and the Raft transport over tonic.
//!
//! It must never interpret objects itself (that is `flotilla-state`), never serve the client
//! API, and never acknowledge a write that is not durable.

pub mod convert;
pub mod failpoints;
pub mod log_store;
pub mod network;
pub mod planted;
pub mod service;
pub mod state_machine;
pub mod types;

pub use log_store::LogStore;
pub use state_machine::{AppliedBatch, StateMachine, StoreReader};
pub use types::{Raft, TypeConfig};

/// Errors opening or reading a data directory. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data file {path} is corrupt or unreadable: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("data directory {dir} belongs to cluster {found_cluster:?} node {found_node}, but this server is configured as cluster {want_cluster:?} node {want_node}; refusing to start")]
    WrongIdentity {
        dir: String,
        found_cluster: String,
        found_node: u64,
        want_cluster: String,
        want_node: u64,
    },
    #[error("data file {path}: {reason}")]
    Io { path: String, reason: String },
}

impl StoreError {
    pub(crate) fn corrupt(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
    pub(crate) fn io(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        StoreError::Io {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

/// Open (or create) a redb file, turning redb's errors into ones that name the file.
pub(crate) fn open_db(path: &std::path::Path) -> Result<redb::Database, StoreError> {
    redb::Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            StoreError::io(path, "already open by another process")
        }
        other => StoreError::corrupt(path, other),
    })
}
