//! Planted bugs, for the fault-injection harness's self-test (`jepsen/`): a harness that cannot
//! catch a known bug proves nothing. Compiled in only with the `planted-bugs` feature, which no
//! product build enables; one is switched on at start-up with `FLOTILLA_PLANTED_BUG=NAME`.
//!
//! - `stale-read`: linearizable reads are served from local state, without a read index.
//! - `drop-watch-event`: every watch stream silently skips its 50th event.
//! - `ack-before-fsync`: the Raft log acknowledges appends without fsync (in flotilla-raft).
//! - `skip-fencing`: writes through the API lose their fence before they are proposed, so a
//!   deposed lease holder's writes apply.

pub use flotilla_raft::planted::active;

/// The event a stream with `drop-watch-event` skips (1-based count of events sent).
pub const DROPPED_WATCH_EVENT: u64 = 50;
