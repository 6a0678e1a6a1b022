//! Filter, then score: which nodes can take a pod, and which of them is best.

use std::collections::BTreeMap;

use flotilla_api::pb::api::{NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};

use crate::model::{term_selects, NodeInfo, PodInfo};

/// Why a node cannot take a pod, worded as kube-scheduler words it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Unschedulable,
    UntoleratedTaint(String),
    NodeAffinity,
    HostPorts,
    Insufficient(&'static str),
    TooManyPods,
    AntiAffinity,
    ExistingAntiAffinity,
    Affinity,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Unschedulable => write!(f, "node(s) were unschedulable"),
            Reason::UntoleratedTaint(t) => write!(f, "node(s) had untolerated taint {{{t}}}"),
            Reason::NodeAffinity => write!(f, "node(s) didn't match Pod's node affinity/selector"),
            Reason::HostPorts => write!(
                f,
                "node(s) didn't have free ports for the requested pod ports"
            ),
            Reason::Insufficient(r) => write!(f, "Insufficient {r}"),
            Reason::TooManyPods => write!(f, "Too many pods"),
            Reason::AntiAffinity => write!(f, "node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingAntiAffinity => write!(
                f,
                "node(s) didn't satisfy existing pods anti-affinity rules"
            ),
            Reason::Affinity => write!(f, "node(s) didn't match pod affinity rules"),
        }
    }
}

/// No node fits: how many nodes there were and why each one failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub nodes: usize,
    /// Reason → how many nodes gave it (a node may give several resource reasons).
    pub reasons: BTreeMap<Reason, usize>,
}

impl std::fmt::Display for FitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0/{} nodes are available", self.nodes)?;
        if self.reasons.is_empty() {
            return write!(f, ".");
        }
        // Sorted by text, as kube-scheduler sorts them.
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort_by(|a, b| {
            let ta = a.split_once(' ').map(|x| x.1).unwrap_or(a);
            let tb = b.split_once(' ').map(|x| x.1).unwrap_or(b);
            ta.cmp(tb)
        });
        write!(f, ": {}.", parts.join(", "))
    }
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if !t.effect.is_empty() && t.effect != taint.effect {
        return false;
    }
    if t.key.is_empty() {
        // An empty key with Exists tolerates everything.
        return t.operator == "Exists";
    }
    if t.key != taint.key {
        return false;
    }
    match t.operator.as_str() {
        "Exists" => true,
        _ => t.value == taint.value,
    }
}

/// The first taint with `effects` that no toleration tolerates.
pub fn untolerated<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
    effects: &[&str],
) -> Option<&'a Taint> {
    taints.iter().find(|taint| {
        effects.contains(&taint.effect.as_str()) && !tolerations.iter().any(|t| tolerates(t, taint))
    })
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| r.values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| r.values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                r.values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// A term matches when all its requirements do; an empty term matches nothing.
fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    if term.match_expressions.is_empty() && term.match_fields.is_empty() {
        return false;
    }
    term.match_expressions
        .iter()
        .all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
        && term.match_fields.iter().all(|r| {
            let v = (r.key == "metadata.name").then_some(node.name.as_str());
            requirement_matches(r, v)
        })
}

/// nodeSelector and required node affinity.
pub fn node_affinity_fits(pod: &PodInfo, node: &NodeInfo) -> bool {
    if !pod
        .node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
    {
        return false;
    }
    let required = pod.affinity.node_affinity.as_ref().and_then(|a| {
        a.required_during_scheduling_ignored_during_execution
            .as_ref()
    });
    match required {
        // Terms are ORed.
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node)),
        None => true,
    }
}

/// The nodes in `node`'s topology domain for `key` (just `node` for the hostname).
fn same_domain<'a>(
    nodes: &'a [NodeInfo],
    node: &'a NodeInfo,
    key: &str,
) -> Box<dyn Iterator<Item = &'a NodeInfo> + 'a> {
    let Some(value) = node.topology_value(key) else {
        return Box::new(std::iter::empty());
    };
    if key == crate::model::HOSTNAME_LABEL && node.labels.get(key).is_none_or(|v| v == &node.name) {
        return Box::new(std::iter::once(node));
    }
    let key = key.to_string();
    let value = value.to_string();
    Box::new(
        nodes
            .iter()
            .filter(move |n| n.topology_value(&key) == Some(value.as_str())),
    )
}

/// Every filter, in kube-scheduler's order; the reasons the node fails, empty when it fits.
/// `guarded`: the indexes of the nodes holding pods with anti-affinity terms (found once per
/// pod, not once per node: a scan of every node per candidate would cost O(nodes²) per pod).
pub fn filter(
    pod: &PodInfo,
    node: &NodeInfo,
    nodes: &[NodeInfo],
    guarded: &[usize],
) -> Vec<Reason> {
    if node.unschedulable
        && !pod.tolerations.iter().any(|t| {
            tolerates(
                t,
                &Taint {
                    key: "node.kubernetes.io/unschedulable".into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                },
            )
        })
    {
        return vec![Reason::Unschedulable];
    }
    if let Some(t) = untolerated(&node.taints, &pod.tolerations, &["NoSchedule", "NoExecute"]) {
        return vec![Reason::UntoleratedTaint(format!("{}: {}", t.key, t.value))];
    }
    if !node_affinity_fits(pod, node) {
        return vec![Reason::NodeAffinity];
    }
    if pod
        .host_ports
        .iter()
        .any(|hp| node.host_ports.contains_key(hp))
    {
        return vec![Reason::HostPorts];
    }
    let mut out = Vec::new();
    let (free, want) = (&node.allocatable, &pod.requests);
    if want.cpu_milli > 0 && node.requested.cpu_milli + want.cpu_milli > free.cpu_milli {
        out.push(Reason::Insufficient("cpu"));
    }
    if want.memory > 0 && node.requested.memory + want.memory > free.memory {
        out.push(Reason::Insufficient("memory"));
    }
    if node.requested.pods + want.pods > free.pods {
        out.push(Reason::TooManyPods);
    }
    if !out.is_empty() {
        return out;
    }
    for term in pod.anti_affinity() {
        let clash = same_domain(nodes, node, &term.topology_key).any(|n| {
            n.pods
                .values()
                .any(|p| term_selects(term, &pod.namespace, &p.namespace, &p.labels))
        });
        if clash {
            return vec![Reason::AntiAffinity];
        }
    }
    // Symmetry: a placed pod's anti-affinity keeps this pod out of its domain too.
    if !guarded.is_empty() {
        for n in guarded.iter().map(|&i| &nodes[i]) {
            for p in n.pods.values() {
                for term in &p.anti_affinity {
                    let same = match (
                        n.topology_value(&term.topology_key),
                        node.topology_value(&term.topology_key),
                    ) {
                        (Some(a), Some(b)) => a == b,
                        _ => false,
                    };
                    if same && term_selects(term, &p.namespace, &pod.namespace, &pod.labels) {
                        return vec![Reason::ExistingAntiAffinity];
                    }
                }
            }
        }
    }
    for term in pod.required_affinity() {
        let found = same_domain(nodes, node, &term.topology_key).any(|n| {
            n.pods
                .values()
                .any(|p| term_selects(term, &pod.namespace, &p.namespace, &p.labels))
        });
        // As Kubernetes: the first pod of a group that selects itself may start anywhere.
        let first_of_group = term_selects(term, &pod.namespace, &pod.namespace, &pod.labels)
            && !nodes.iter().any(|n| {
                n.pods
                    .values()
                    .any(|p| term_selects(term, &pod.namespace, &p.namespace, &p.labels))
            });
        if !found && !first_of_group {
            return vec![Reason::Affinity];
        }
    }
    Vec::new()
}

/// Score weights (kube-scheduler's defaults, in spirit: taints and affinity weigh more than
/// balance).
const W_LEAST_ALLOCATED: i64 = 1;
const W_SPREAD: i64 = 2;
const W_NODE_AFFINITY: i64 = 2;
const W_TAINTS: i64 = 3;
const MAX_SCORE: i64 = 100;

fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let part = |requested: i64, want: i64, alloc: i64| {
        if alloc <= 0 {
            return 0;
        }
        let used = requested.saturating_add(want).min(alloc);
        (alloc - used).saturating_mul(MAX_SCORE) / alloc
    };
    let cpu = part(
        node.requested.cpu_milli,
        pod.requests.cpu_milli,
        node.allocatable.cpu_milli,
    );
    let mem = part(
        node.requested.memory,
        pod.requests.memory,
        node.allocatable.memory,
    );
    let pods = part(
        node.requested.pods,
        pod.requests.pods,
        node.allocatable.pods,
    );
    (cpu + mem + pods) / 3
}

fn preferred_affinity(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.affinity
        .node_affinity
        .as_ref()
        .map(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .iter()
                .filter(|t| t.preference.as_ref().is_some_and(|p| term_matches(p, node)))
                .map(|t| i64::from(t.weight))
                .sum()
        })
        .unwrap_or(0)
}

fn prefer_no_schedule(pod: &PodInfo, node: &NodeInfo) -> i64 {
    node.taints
        .iter()
        .filter(|taint| {
            taint.effect == "PreferNoSchedule"
                && !pod.tolerations.iter().any(|t| tolerates(t, taint))
        })
        .count() as i64
}

/// Normalize raw values to 0..=100 (higher raw is better unless `reverse`).
fn normalize(raw: &[i64], reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter()
        .map(|&v| {
            let s = if max <= 0 { 0 } else { v * MAX_SCORE / max };
            if reverse {
                MAX_SCORE - s
            } else {
                s
            }
        })
        .collect()
}

/// The index (into `candidates`) of the best node; ties go to the earliest.
pub fn score(pod: &PodInfo, nodes: &[NodeInfo], candidates: &[usize]) -> usize {
    if candidates.len() <= 1 {
        return 0;
    }
    let owner_counts: Vec<i64> = candidates
        .iter()
        .map(|&i| {
            pod.owner
                .as_ref()
                .and_then(|o| nodes[i].owners.get(o))
                .map(|&n| i64::from(n))
                .unwrap_or(0)
        })
        .collect();
    let spread = normalize(&owner_counts, true);
    let affinity = normalize(
        &candidates
            .iter()
            .map(|&i| preferred_affinity(pod, &nodes[i]))
            .collect::<Vec<_>>(),
        false,
    );
    let taints = normalize(
        &candidates
            .iter()
            .map(|&i| prefer_no_schedule(pod, &nodes[i]))
            .collect::<Vec<_>>(),
        true,
    );
    let mut best = (i64::MIN, 0);
    for (j, &i) in candidates.iter().enumerate() {
        let s = W_LEAST_ALLOCATED * least_allocated(pod, &nodes[i])
            + W_SPREAD * spread[j]
            + W_NODE_AFFINITY * affinity[j]
            + W_TAINTS * taints[j];
        if s > best.0 {
            best = (s, j);
        }
    }
    best.1
}

/// How many feasible nodes to find before scoring, as kube-scheduler's adaptive
/// percentageOfNodesToScore: all of a small cluster, a shrinking share of a large one.
pub fn feasible_to_find(nodes: usize) -> usize {
    const MIN: usize = 100;
    if nodes < MIN {
        return nodes;
    }
    let percent = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percent / 100).max(MIN)
}

/// The indexes of the nodes holding pods with anti-affinity terms (what [`filter`] needs as
/// `guarded`).
pub fn guarded_nodes(nodes: &[NodeInfo]) -> Vec<usize> {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.pods_with_anti_affinity > 0)
        .map(|(i, _)| i)
        .collect()
}

/// Place `pod` on one of `nodes`, examining them from `start` round the ring. Returns the
/// chosen node's index and how many nodes were examined (the next pod starts after them).
/// `guarded` is [`guarded_nodes`] of `nodes`, kept by the caller across a batch of pods (a
/// scan of every node per pod costs more than the filtering itself in a large cluster).
pub fn schedule(
    pod: &PodInfo,
    nodes: &[NodeInfo],
    start: usize,
    guarded: &[usize],
) -> Result<(usize, usize), FitError> {
    let n = nodes.len();
    let want = feasible_to_find(n);
    let mut candidates = Vec::with_capacity(want.min(n));
    let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
    let mut examined = 0;
    for k in 0..n {
        if candidates.len() >= want {
            break;
        }
        let i = (start + k) % n;
        examined += 1;
        let why = filter(pod, &nodes[i], nodes, guarded);
        if why.is_empty() {
            candidates.push(i);
        } else {
            for r in why {
                *reasons.entry(r).or_default() += 1;
            }
        }
    }
    if candidates.is_empty() {
        return Err(FitError { nodes: n, reasons });
    }
    let best = score(pod, nodes, &candidates);
    Ok((candidates[best], examined))
}
