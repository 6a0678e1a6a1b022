//! Planted bugs (jepsen/'s self-test), switched on with `FLOTILLA_PLANTED_BUG=NAME` in builds
//! with the `planted-bugs` feature only; see `flotilla-server`'s `planted` module for the list.
//! Here: `ack-before-fsync`, the log store commits appends without fsync.

/// Whether planted bug `name` is switched on in this process.
#[cfg(feature = "planted-bugs")]
pub fn active(name: &str) -> bool {
    static BUG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let bug = BUG.get_or_init(|| {
        let b = std::env::var("FLOTILLA_PLANTED_BUG").unwrap_or_default();
        if !b.is_empty() {
            tracing::warn!(bug = %b, "PLANTED BUG ACTIVE: this server is wrong on purpose");
        }
        b
    });
    bug == name
}

#[cfg(not(feature = "planted-bugs"))]
#[inline(always)]
pub fn active(_name: &str) -> bool {
    false
}
