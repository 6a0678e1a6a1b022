//! One error type for the runtime; each variant names what failed and on what.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// Kubernetes' `ErrImagePull`: the registry's own message is kept.
    #[error("failed to pull image {reference:?}: {message}")]
    Pull { reference: String, message: String },
    /// `imagePullPolicy: Never` and the image is not on the node.
    #[error("image {reference:?} is not present on the node and the pull policy is Never")]
    ImageNotPresent { reference: String },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("invalid digest {0:?}: only sha256:<64 hex digits> is supported")]
    InvalidDigest(String),
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("invalid image config {digest}: {reason}")]
    InvalidImageConfig { digest: String, reason: String },
    #[error("layer {digest}: {reason}")]
    Layer { digest: String, reason: String },
    #[error("corrupt record {path}: {reason}")]
    CorruptRecord { path: PathBuf, reason: String },
    #[error("invalid container id {0:?}: use 1-128 of [A-Za-z0-9_.-]")]
    InvalidContainerId(String),
    #[error("invalid container config: {0}")]
    InvalidConfig(String),
    #[error("{runtime} {command} {id}: {message}")]
    Runtime {
        runtime: String,
        command: String,
        id: String,
        message: String,
    },
    #[error("{runtime} {command} {id} did not finish within {timeout_ms} ms")]
    RuntimeTimeout {
        runtime: String,
        command: String,
        id: String,
        timeout_ms: u64,
    },
    #[error("container shim for {id}: {message}")]
    Shim { id: String, message: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {path}: {source}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

impl RuntimeError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| RuntimeError::Io { op, path, source }
    }

    pub(crate) fn sys(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(nix::Error) -> Self {
        let path = path.into();
        move |source| RuntimeError::Sys { op, path, source }
    }

    /// The Kubernetes waiting reason this error shows as on a container.
    pub fn reason(&self) -> &'static str {
        match self {
            RuntimeError::Pull { .. } | RuntimeError::DigestMismatch { .. } => "ErrImagePull",
            RuntimeError::InvalidReference { .. } => "InvalidImageName",
            RuntimeError::ImageNotPresent { .. } => "ErrImageNeverPull",
            RuntimeError::InvalidConfig(_) => "CreateContainerConfigError",
            _ => "CreateContainerError",
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
