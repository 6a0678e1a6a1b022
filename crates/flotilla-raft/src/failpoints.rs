//! Failpoints for the fault-injection harness (`jepsen/`): named places in the log store and
//! the state machine where a test build can be made to crash, so recovery is exercised at the
//! exact moments that matter (between writing and fsync, between apply and commit, in the
//! middle of a snapshot). Compiled in only with the `failpoints` feature, which pulls in the
//! `fail` crate; a product build has no failpoint and refuses to arm one.

/// Every failpoint, in the order a write meets them.
pub const NAMES: &[&str] = &[
    // Log entries written, not yet committed (fsync'd); nothing acknowledged.
    "log-append-before-fsync",
    // Log entries durable, openraft not yet told.
    "log-append-after-fsync",
    // Entries applied in the state machine's transaction, not committed.
    "apply-before-commit",
    // Applied and committed (not fsync'd), watchers and clients not yet told.
    "apply-after-commit",
    // Snapshot built from a consistent read (state flushed), not yet handed to openraft.
    "snapshot-build",
    // Snapshot installed in the state file, its copy on disk not yet written.
    "snapshot-install-before-file",
];

/// Why a failpoint could not be set.
#[derive(Debug, thiserror::Error)]
pub enum FailpointError {
    #[error(
        "this server was built without failpoints (test builds enable the `failpoints` feature)"
    )]
    NotBuilt,
    #[error("unknown failpoint {name:?}; known: {}", NAMES.join(", "))]
    Unknown { name: String },
    #[error("failpoint {name}: action {action:?} is not valid: {reason}")]
    BadAction {
        name: String,
        action: String,
        reason: String,
    },
}

/// A failpoint site; nothing at all without the `failpoints` feature.
macro_rules! point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}
pub(crate) use point;

/// Whether this build has failpoints.
pub fn built() -> bool {
    cfg!(feature = "failpoints")
}

/// Arm failpoint `name`. `crash` aborts the process when it is reached (no destructor runs,
/// nothing is flushed: a crash); `off` disarms it; anything else is the `fail` crate's action
/// syntax (`panic`, `sleep(200)`, `1*crash` is not supported: a crash happens once anyway).
pub fn set(name: &str, action: &str) -> Result<(), FailpointError> {
    if !NAMES.contains(&name) {
        return Err(FailpointError::Unknown {
            name: name.to_string(),
        });
    }
    imp::set(name, action)
}

#[cfg(feature = "failpoints")]
mod imp {
    use super::FailpointError;

    pub fn set(name: &str, action: &str) -> Result<(), FailpointError> {
        let bad = |reason: String| FailpointError::BadAction {
            name: name.to_string(),
            action: action.to_string(),
            reason,
        };
        match action {
            "off" => {
                fail::remove(name);
                Ok(())
            }
            "crash" => {
                let n = name.to_string();
                fail::cfg_callback(name, move || {
                    tracing::error!(failpoint = %n, "failpoint reached: crashing on purpose");
                    std::process::abort()
                })
                .map_err(bad)
            }
            other => fail::cfg(name, other).map_err(bad),
        }
    }
}

#[cfg(not(feature = "failpoints"))]
mod imp {
    use super::FailpointError;

    pub fn set(_name: &str, _action: &str) -> Result<(), FailpointError> {
        Err(FailpointError::NotBuilt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_refused_in_every_build() {
        let e = set("no-such-point", "crash").unwrap_err();
        assert!(e.to_string().contains("log-append-before-fsync"), "{e}");
    }

    #[cfg(not(feature = "failpoints"))]
    #[test]
    fn a_product_build_refuses_to_arm_a_failpoint() {
        assert!(!built());
        assert!(matches!(
            set("snapshot-build", "crash"),
            Err(FailpointError::NotBuilt)
        ));
    }
}
