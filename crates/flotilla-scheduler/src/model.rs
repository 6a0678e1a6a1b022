//! What the algorithm knows of a node and of a pod, read once from the stored objects.

use std::collections::{BTreeMap, HashMap};

use flotilla_api::pb::api::{
    object::Body, Affinity, LabelSelector, Object, PodAffinityTerm, PodSpec, Taint, Toleration,
};
use flotilla_api::quantity::Quantity;

/// Kubernetes' default pod capacity of a node that does not say.
pub const DEFAULT_MAX_PODS: i64 = 110;
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// CPU in millicores, memory in bytes, and a pod count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_milli: i64,
    pub memory: i64,
    pub pods: i64,
}

impl Resources {
    pub fn add(&mut self, o: &Resources) {
        self.cpu_milli = self.cpu_milli.saturating_add(o.cpu_milli);
        self.memory = self.memory.saturating_add(o.memory);
        self.pods = self.pods.saturating_add(o.pods);
    }
    pub fn sub(&mut self, o: &Resources) {
        self.cpu_milli = self.cpu_milli.saturating_sub(o.cpu_milli);
        self.memory = self.memory.saturating_sub(o.memory);
        self.pods = self.pods.saturating_sub(o.pods);
    }
}

fn quantity(map: &BTreeMap<String, String>, name: &str, milli: bool) -> Option<i64> {
    let q = Quantity::parse(map.get(name)?).ok()?;
    let v = if milli {
        q.millis_ceil()
    } else {
        q.units_ceil()
    };
    Some(v.clamp(0, i128::from(i64::MAX)) as i64)
}

/// What a pod asks for: the sum of its containers' requests, or the largest init container's
/// when that is more (init containers run one at a time), plus one pod slot.
pub fn pod_requests(spec: &PodSpec) -> Resources {
    let mut sum = Resources {
        pods: 1,
        ..Default::default()
    };
    for c in &spec.containers {
        let Some(r) = &c.resources else { continue };
        // A limit without a request requests the limit, as in Kubernetes.
        let get = |name, milli| {
            quantity(&r.requests, name, milli).or_else(|| quantity(&r.limits, name, milli))
        };
        sum.cpu_milli = sum.cpu_milli.saturating_add(get("cpu", true).unwrap_or(0));
        sum.memory = sum.memory.saturating_add(get("memory", false).unwrap_or(0));
    }
    for c in &spec.init_containers {
        let Some(r) = &c.resources else { continue };
        let get = |name, milli| {
            quantity(&r.requests, name, milli).or_else(|| quantity(&r.limits, name, milli))
        };
        sum.cpu_milli = sum.cpu_milli.max(get("cpu", true).unwrap_or(0));
        sum.memory = sum.memory.max(get("memory", false).unwrap_or(0));
    }
    sum
}

/// A host port a pod takes: (protocol, port). A host IP is not told apart (a port taken on
/// one address conflicts with the same port on any), which is stricter than Kubernetes.
pub type HostPort = (String, i32);

pub fn host_ports(spec: &PodSpec) -> Vec<HostPort> {
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter())
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let proto = if p.protocol.is_empty() {
                "TCP".to_string()
            } else {
                p.protocol.clone()
            };
            (proto, p.host_port)
        })
        .collect()
}

/// The uid of the pod's controller (ownerReference with controller: true), for spreading.
pub fn controller_uid(o: &Object) -> Option<String> {
    o.meta()
        .owner_references
        .iter()
        .find(|r| r.controller)
        .map(|r| r.uid.clone())
}

/// A pod as the algorithm sees it.
#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub requests: Resources,
    pub node_selector: BTreeMap<String, String>,
    pub affinity: Affinity,
    pub tolerations: Vec<Toleration>,
    pub host_ports: Vec<HostPort>,
    pub owner: Option<String>,
    pub priority: i32,
}

impl PodInfo {
    pub fn from_object(o: &Object) -> Option<PodInfo> {
        let Some(Body::Pod(p)) = &o.body else {
            return None;
        };
        let spec = p.spec.as_ref()?;
        let m = o.meta();
        Some(PodInfo {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            uid: m.uid.clone(),
            labels: m.labels.clone(),
            requests: pod_requests(spec),
            node_selector: spec.node_selector.clone(),
            affinity: spec.affinity.clone().unwrap_or_default(),
            tolerations: spec.tolerations.clone(),
            host_ports: host_ports(spec),
            owner: controller_uid(o),
            priority: spec.priority.unwrap_or(0),
        })
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Required anti-affinity terms (what this pod refuses to share a domain with).
    pub fn anti_affinity(&self) -> &[PodAffinityTerm] {
        self.affinity
            .pod_anti_affinity
            .as_ref()
            .map(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_slice()
            })
            .unwrap_or(&[])
    }

    /// Required affinity terms (what this pod must share a domain with).
    pub fn required_affinity(&self) -> &[PodAffinityTerm] {
        self.affinity
            .pod_affinity
            .as_ref()
            .map(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_slice()
            })
            .unwrap_or(&[])
    }
}

/// A pod placed on a node, as far as other pods' (anti-)affinity cares.
#[derive(Debug, Clone)]
pub struct PlacedPod {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub anti_affinity: Vec<PodAffinityTerm>,
    pub requests: Resources,
    pub host_ports: Vec<HostPort>,
    pub owner: Option<String>,
}

/// A node and what is placed on it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    pub requested: Resources,
    pub host_ports: HashMap<HostPort, u32>,
    pub owners: HashMap<String, u32>,
    /// Pods placed here, by `namespace/name`.
    pub pods: HashMap<String, PlacedPod>,
    /// How many of `pods` carry anti-affinity terms (skips a scan when none do).
    pub pods_with_anti_affinity: usize,
}

impl NodeInfo {
    /// The node's own fields from a Node object (placed pods are kept by the caller).
    pub fn from_object(o: &Object) -> Option<NodeInfo> {
        let Some(Body::Node(n)) = &o.body else {
            return None;
        };
        let spec = n.spec.clone().unwrap_or_default();
        let status = n.status.clone().unwrap_or_default();
        let alloc = if status.allocatable.is_empty() {
            &status.capacity
        } else {
            &status.allocatable
        };
        Some(NodeInfo {
            name: o.meta().name.clone(),
            labels: o.meta().labels.clone(),
            taints: spec.taints,
            unschedulable: spec.unschedulable,
            allocatable: Resources {
                cpu_milli: quantity(alloc, "cpu", true).unwrap_or(0),
                memory: quantity(alloc, "memory", false).unwrap_or(0),
                pods: quantity(alloc, "pods", false).unwrap_or(DEFAULT_MAX_PODS),
            },
            ..Default::default()
        })
    }

    /// Keep what is placed on `old` when the node's own fields change.
    pub fn take_placements(&mut self, old: NodeInfo) {
        self.requested = old.requested;
        self.host_ports = old.host_ports;
        self.owners = old.owners;
        self.pods = old.pods;
        self.pods_with_anti_affinity = old.pods_with_anti_affinity;
    }

    pub fn place(&mut self, key: String, p: PlacedPod) {
        self.requested.add(&p.requests);
        for hp in &p.host_ports {
            *self.host_ports.entry(hp.clone()).or_default() += 1;
        }
        if let Some(o) = &p.owner {
            *self.owners.entry(o.clone()).or_default() += 1;
        }
        if !p.anti_affinity.is_empty() {
            self.pods_with_anti_affinity += 1;
        }
        if let Some(old) = self.pods.insert(key, p) {
            self.unaccount(&old);
        }
    }

    pub fn remove(&mut self, key: &str) -> bool {
        match self.pods.remove(key) {
            Some(old) => {
                self.unaccount(&old);
                true
            }
            None => false,
        }
    }

    fn unaccount(&mut self, p: &PlacedPod) {
        self.requested.sub(&p.requests);
        for hp in &p.host_ports {
            if let Some(n) = self.host_ports.get_mut(hp) {
                *n -= 1;
                if *n == 0 {
                    self.host_ports.remove(hp);
                }
            }
        }
        if let Some(o) = &p.owner {
            if let Some(n) = self.owners.get_mut(o) {
                *n -= 1;
                if *n == 0 {
                    self.owners.remove(o);
                }
            }
        }
        if !p.anti_affinity.is_empty() {
            self.pods_with_anti_affinity -= 1;
        }
    }

    /// The node's value for a topology key; the hostname falls back to the node's name.
    pub fn topology_value(&self, key: &str) -> Option<&str> {
        match self.labels.get(key) {
            Some(v) => Some(v.as_str()),
            None if key == HOSTNAME_LABEL => Some(self.name.as_str()),
            None => None,
        }
    }
}

impl PlacedPod {
    pub fn from_info(p: &PodInfo) -> PlacedPod {
        PlacedPod {
            namespace: p.namespace.clone(),
            labels: p.labels.clone(),
            anti_affinity: p.anti_affinity().to_vec(),
            requests: p.requests,
            host_ports: p.host_ports.clone(),
            owner: p.owner.clone(),
        }
    }
}

/// Whether a term (of a pod in `term_ns`) selects a pod in `ns` with `labels`.
pub fn term_selects(
    term: &PodAffinityTerm,
    term_ns: &str,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let in_ns = if term.namespaces.is_empty() {
        ns == term_ns
    } else {
        term.namespaces.iter().any(|n| n == ns)
    };
    in_ns && selects(term.label_selector.as_ref(), labels)
}

/// A missing selector selects nothing (Kubernetes' rule for affinity terms).
pub fn selects(sel: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    match sel {
        None => false,
        Some(s) => flotilla_api::kinds::selector_matches(s, labels).unwrap_or(false),
    }
}
