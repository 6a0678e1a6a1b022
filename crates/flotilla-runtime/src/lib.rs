//! The node runtime: everything an agent needs to turn a container description into a running
//! process on this machine. It owns the content-addressed image store (pull with `oci-client`,
//! digest checks, layer unpacking with whiteouts), overlayfs root filesystems, OCI bundles built
//! with `oci-spec`, pod network namespaces, the per-container shim, and the runc command-line
//! contract (create/start/state/kill/delete) for `runc` or any compatible runtime.
//!
//! It must never talk to the control plane or know about Raft, the store or Kubernetes objects
//! beyond the plain descriptions it is given: the agent translates pods into [`ContainerConfig`]s.

pub mod bundle;
pub mod cgroup;
pub mod container;
pub mod digest;
pub mod error;
pub mod image;
pub mod netns;
pub mod rootfs;
pub mod runc;
pub mod shim;

pub use bundle::{BindMount, ContainerConfig, Resources};
pub use container::{ContainerStatus, Containers, RuntimeConfig};
pub use error::RuntimeError;
pub use image::{ImageStore, PullPolicy, RegistryConfig};
pub use runc::{ContainerState, OciRuntime};

/// Installs the process-wide rustls crypto provider (ring) that the registry client uses.
/// Idempotent; call once at start-up before the first pull.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
