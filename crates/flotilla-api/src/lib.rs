//! flotilla-api owns the schema as Rust: the types generated from `proto/`, the API error model
//! with its stable codes, label selectors, object-name rules, and the conversion between
//! Kubernetes-style manifests (YAML/JSON) and stored objects.
//!
//! It must never do I/O beyond parsing the bytes it is handed, and never depend on any other
//! Flotilla crate: everything else depends on it.

pub mod error;
pub mod events;
pub mod keys;
pub mod kinds;
pub mod manifest;
pub mod quantity;
pub mod refs;
pub mod resume;
pub mod schema;
pub mod selector;
pub mod validation;

/// Generated protobuf types and gRPC stubs; `proto/` is the one schema.
pub mod pb {
    // Nested as the proto packages are, so cross-package references resolve.
    #[allow(clippy::all)]
    pub mod flotilla {
        pub mod api {
            pub mod v1 {
                tonic::include_proto!("flotilla.api.v1");
            }
        }
        pub mod admin {
            pub mod v1 {
                tonic::include_proto!("flotilla.admin.v1");
            }
        }
        pub mod raft {
            pub mod v1 {
                tonic::include_proto!("flotilla.raft.v1");
            }
        }
        pub mod node {
            pub mod v1 {
                tonic::include_proto!("flotilla.node.v1");
            }
        }
        pub mod agent {
            pub mod v1 {
                tonic::include_proto!("flotilla.agent.v1");
            }
        }
    }
    pub use flotilla::admin::v1 as admin;
    pub use flotilla::agent::v1 as agent;
    pub use flotilla::api::v1 as api;
    pub use flotilla::node::v1 as node;
    pub use flotilla::raft::v1 as raft;
}

pub use error::{ApiError, ErrorCode};
pub use pb::api::{Object, ObjectKey, ObjectMeta};

/// Default upper bound on one encoded object (above etcd's 1.5 MiB request limit).
pub const DEFAULT_MAX_OBJECT_BYTES: usize = 4 * 1024 * 1024;

impl std::fmt::Display for pb::raft::Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Command({} writes @{}ms)",
            self.writes.len(),
            self.timestamp_ms
        )
    }
}

impl std::fmt::Display for pb::raft::RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{{raft: {}, api: {}}}",
            self.raft_address, self.api_address
        )
    }
}

impl Object {
    /// The store key of this object.
    pub fn key(&self) -> ObjectKey {
        let m = self.metadata.as_ref();
        ObjectKey {
            kind: self.kind.clone(),
            namespace: m.map(|m| m.namespace.clone()).unwrap_or_default(),
            name: m.map(|m| m.name.clone()).unwrap_or_default(),
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        static EMPTY: std::sync::OnceLock<ObjectMeta> = std::sync::OnceLock::new();
        self.metadata
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(ObjectMeta::default))
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.metadata.get_or_insert_with(ObjectMeta::default)
    }

    pub fn resource_version(&self) -> u64 {
        self.meta().resource_version
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}
