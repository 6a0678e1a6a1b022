//! The scheduler's in-memory picture of the cluster, kept up to date from watch events: nodes
//! with what is placed on them, the queue of pods waiting for a node, and the pods that fit
//! nowhere (retried when something changes that could make room).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use flotilla_api::pb::api::{object::Body, Object};

use crate::algorithm::{guarded_nodes, schedule, FitError};
use crate::model::{NodeInfo, PlacedPod, PodInfo};

/// The scheduler names it answers to (an empty `schedulerName` means the default).
pub const SCHEDULER_NAMES: [&str; 3] = ["", "default-scheduler", "flotilla-scheduler"];

/// Queue order: higher priority first, then older first, then by name.
type QueueKey = (Reverse<i32>, i64, String);

#[derive(Debug, Clone)]
struct Waiting {
    pod: PodInfo,
    order: QueueKey,
    /// The message of the pod's current `PodScheduled=False` condition, if any.
    reported: Option<String>,
}

/// A decision: bind `pod` to `node`.
#[derive(Debug, Clone)]
pub struct Placement {
    pub pod: PodInfo,
    pub node: String,
}

/// A pod that fits nowhere, and the message to tell (only when it differs from the pod's).
#[derive(Debug, Clone)]
pub struct Unplaced {
    pub pod: PodInfo,
    pub error: FitError,
    pub report: bool,
}

#[derive(Debug, Default)]
pub struct Cluster {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Every pod holding a node's resources, by `namespace/name`: (node, what it takes).
    placed: HashMap<String, (String, PlacedPod)>,
    /// Decided here and not yet seen bound in the store.
    assumed: HashMap<String, Waiting>,
    active: BTreeMap<QueueKey, Waiting>,
    /// Pod key → its key in `active`.
    active_keys: HashMap<String, QueueKey>,
    unschedulable: HashMap<String, Waiting>,
    /// Binds the store refused (our copy was stale): retried when news of the pod arrives,
    /// or at the periodic retry.
    refused: HashMap<String, Waiting>,
    next_start: usize,
}

fn unscheduled_message(o: &Object) -> Option<String> {
    let Some(Body::Pod(p)) = &o.body else {
        return None;
    };
    p.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.r#type == "PodScheduled" && c.status == "False")
            .map(|c| c.message.clone())
    })
}

/// Finished pods hold nothing.
fn terminal(o: &Object) -> bool {
    match &o.body {
        Some(Body::Pod(p)) => p
            .status
            .as_ref()
            .is_some_and(|s| s.phase == "Succeeded" || s.phase == "Failed"),
        _ => true,
    }
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster::default()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn pending_count(&self) -> usize {
        self.active.len()
    }

    pub fn unschedulable_count(&self) -> usize {
        self.unschedulable.len()
    }

    pub fn assumed_count(&self) -> usize {
        self.assumed.len()
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// Pods that fit nowhere go back to the queue: something changed that may make room.
    fn wake(&mut self) {
        for (key, w) in self.unschedulable.drain().chain(self.refused.drain()) {
            self.active_keys.insert(key, w.order.clone());
            self.active.insert(w.order.clone(), w);
        }
    }

    pub fn apply_node(&mut self, o: &Object) {
        let Some(mut info) = NodeInfo::from_object(o) else {
            return;
        };
        match self.index.get(&info.name) {
            Some(&i) => {
                let old = std::mem::take(&mut self.nodes[i]);
                let changed = old.labels != info.labels
                    || old.taints != info.taints
                    || old.unschedulable != info.unschedulable
                    || old.allocatable != info.allocatable;
                info.take_placements(old);
                self.nodes[i] = info;
                if changed {
                    self.wake();
                }
            }
            None => {
                // Pods bound to the node before we saw it hold its resources already.
                for (key, (node, p)) in &self.placed {
                    if *node == info.name {
                        info.place(key.clone(), p.clone());
                    }
                }
                self.index.insert(info.name.clone(), self.nodes.len());
                self.nodes.push(info);
                self.wake();
            }
        }
    }

    pub fn delete_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
        }
    }

    fn unplace(&mut self, key: &str) -> bool {
        let Some((node, _)) = self.placed.remove(key) else {
            return false;
        };
        if let Some(&i) = self.index.get(&node) {
            self.nodes[i].remove(key);
        }
        true
    }

    fn place(&mut self, key: &str, node: &str, p: PlacedPod) {
        self.unplace(key);
        if let Some(&i) = self.index.get(node) {
            self.nodes[i].place(key.to_string(), p.clone());
        }
        self.placed.insert(key.to_string(), (node.to_string(), p));
    }

    fn dequeue(&mut self, key: &str) {
        if let Some(q) = self.active_keys.remove(key) {
            self.active.remove(&q);
        }
        self.unschedulable.remove(key);
        self.refused.remove(key);
    }

    /// A pod was added or changed in the store.
    pub fn apply_pod(&mut self, o: &Object) {
        let Some(info) = PodInfo::from_object(o) else {
            return;
        };
        let key = info.key();
        // News of a pod whose bind was refused: decide again from this copy.
        self.refused.remove(&key);
        let node = match &o.body {
            Some(Body::Pod(p)) => p
                .spec
                .as_ref()
                .map(|s| s.node_name.clone())
                .unwrap_or_default(),
            _ => String::new(),
        };
        let scheduler = match &o.body {
            Some(Body::Pod(p)) => p
                .spec
                .as_ref()
                .map(|s| s.scheduler_name.clone())
                .unwrap_or_default(),
            _ => String::new(),
        };
        if terminal(o) {
            self.delete_pod(&key);
            return;
        }
        if !node.is_empty() {
            self.dequeue(&key);
            self.assumed.remove(&key);
            self.place(&key, &node, PlacedPod::from_info(&info));
            return;
        }
        if o.meta().deletion_timestamp_ms.is_some()
            || !SCHEDULER_NAMES.contains(&scheduler.as_str())
        {
            self.delete_pod(&key);
            return;
        }
        let w = Waiting {
            order: (
                Reverse(info.priority),
                o.meta().creation_timestamp_ms,
                key.clone(),
            ),
            reported: unscheduled_message(o),
            pod: info,
        };
        if let Some(a) = self.assumed.get_mut(&key) {
            // In flight: keep the newest copy for a retry if the bind fails.
            if a.pod.uid == w.pod.uid {
                *a = w;
                return;
            }
            self.assumed.remove(&key);
            self.unplace(&key);
        }
        if let Some(u) = self.unschedulable.get_mut(&key) {
            *u = w;
            return;
        }
        self.dequeue(&key);
        self.active_keys.insert(key, w.order.clone());
        self.active.insert(w.order.clone(), w);
    }

    /// A pod was deleted from the store (or finished): its resources are free.
    pub fn delete_pod(&mut self, key: &str) {
        self.dequeue(key);
        self.assumed.remove(key);
        if self.unplace(key) {
            self.wake();
        }
    }

    /// Decide for up to `max` waiting pods. Placed pods count as placed at once (assumed),
    /// so the next decision sees them; [`Cluster::bind_failed`] undoes one.
    pub fn next_batch(&mut self, max: usize) -> (Vec<Placement>, Vec<Unplaced>) {
        let mut placed = Vec::new();
        let mut unplaced = Vec::new();
        // Found once per batch and kept up to date as the batch places pods.
        let mut guarded: Option<Vec<usize>> = None;
        while placed.len() + unplaced.len() < max {
            let Some((_, w)) = self.active.pop_first() else {
                break;
            };
            let key = w.pod.key();
            self.active_keys.remove(&key);
            if self.nodes.is_empty() {
                let error = FitError {
                    nodes: 0,
                    reasons: Default::default(),
                };
                unplaced.push(self.park(key, w, error));
                continue;
            }
            let start = self.next_start % self.nodes.len();
            let g = guarded.get_or_insert_with(|| guarded_nodes(&self.nodes));
            match schedule(&w.pod, &self.nodes, start, g) {
                Ok((i, examined)) => {
                    if !w.pod.anti_affinity().is_empty() && !g.contains(&i) {
                        g.push(i);
                    }
                    self.next_start = (start + examined) % self.nodes.len();
                    let node = self.nodes[i].name.clone();
                    self.place(&key, &node, PlacedPod::from_info(&w.pod));
                    placed.push(Placement {
                        pod: w.pod.clone(),
                        node,
                    });
                    self.assumed.insert(key, w);
                }
                Err(error) => unplaced.push(self.park(key, w, error)),
            }
        }
        (placed, unplaced)
    }

    fn park(&mut self, key: String, mut w: Waiting, error: FitError) -> Unplaced {
        let message = error.to_string();
        let report = w.reported.as_deref() != Some(message.as_str());
        w.reported = Some(message);
        let out = Unplaced {
            pod: w.pod.clone(),
            error,
            report,
        };
        self.unschedulable.insert(key, w);
        out
    }

    /// A bind was refused or lost: forget the assumption and queue the pod again (if the
    /// store says it is bound after all, its watch event will say so).
    pub fn bind_failed(&mut self, key: &str) {
        let Some(w) = self.assumed.remove(key) else {
            return;
        };
        self.unplace(key);
        self.active_keys.insert(key.to_string(), w.order.clone());
        self.active.insert(w.order.clone(), w);
    }

    /// The store refused the bind on the pod's own merits (it is gone, bound by someone else,
    /// or another pod now has its name): this copy is stale. It waits until the feed brings
    /// news of the pod (or the periodic retry), so a stale copy is never bound again and again
    /// (each attempt a log entry) while the news that would correct it waits.
    pub fn bind_refused(&mut self, key: &str) {
        let Some(w) = self.assumed.remove(key) else {
            return;
        };
        self.unplace(key);
        self.refused.insert(key.to_string(), w);
    }

    /// Retry every unschedulable pod (periodically, as kube-scheduler's flush).
    pub fn retry_unschedulable(&mut self) {
        self.wake();
    }
}
