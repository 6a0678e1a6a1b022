//! flotilla-scheduler owns pod placement as pure code (DESIGN.md §2.6): which nodes can take
//! a pod (requests against allocatable CPU, memory and pod count, nodeSelector, node
//! affinity, taints and tolerations, host ports, cordoned nodes, pod (anti-)affinity), which
//! of them is best (least allocated, spreading pods of one owner, preferred affinity,
//! PreferNoSchedule taints), the queue of waiting pods, and kube-scheduler's wording of why a
//! pod fits nowhere.
//!
//! It must never do I/O, read a clock or draw randomness: the loop that feeds it watch events
//! and writes its bindings (with fencing) lives in `flotilla-server`.

pub mod algorithm;
pub mod cluster;
pub mod model;

pub use algorithm::{FitError, Reason};
pub use cluster::{Cluster, Placement, Unplaced};
pub use model::{NodeInfo, PodInfo, Resources};

#[cfg(test)]
mod tests;
