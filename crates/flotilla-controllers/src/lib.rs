//! flotilla-controllers owns what the controller-manager decides (DESIGN.md §2.7): each
//! controller is a reconcile function from the desired object and the observed objects it
//! owns to the writes that bring them together (create, update, status, delete, Events), plus
//! when to look again. ReplicaSet, Deployment (RollingUpdate and Recreate, revision history),
//! node lifecycle (unreachable nodes tainted, their pods evicted) and garbage collection
//! through ownerReferences live here.
//!
//! It must never do I/O, read a clock or draw randomness: the time and new names come in as
//! arguments, and the loop that watches, writes with fencing and requeues lives in
//! `flotilla-server`.

pub mod common;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod job;
pub mod nodes;
pub mod replicaset;
pub mod statefulset;

pub use common::{Action, Reconciled};
