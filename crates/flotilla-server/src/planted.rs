//! Planted bugs, for the fault-injection harness's self-test (`jepsen/`): a harness that cannot
//! catch a known bug proves nothing. Compiled in only with the `planted-bugs` feature, which no
//! product build enables; one is switched on at start-up with `FLOTILLA_PLANTED_BUG=NAME`.
//!
//! - `stale-read`: linearizable reads are served from local state, without a read index.
//! - `drop-watch-event`: every watch stream silently skips its 50th event.

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

/// The event a stream with `drop-watch-event` skips (1-based count of events sent).
pub const DROPPED_WATCH_EVENT: u64 = 50;
