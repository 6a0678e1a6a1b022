//! Node lifecycle: a node whose Lease has not been renewed for the grace period becomes
//! `Ready=Unknown` and is tainted `node.kubernetes.io/unreachable` (NoSchedule and NoExecute);
//! its pods are marked not ready and, once their toleration of that taint runs out (by
//! default `default_toleration_seconds`, Kubernetes' 300 s), deleted so their controllers
//! replace them elsewhere. A node heard from again is untainted and Ready.
//!
//! "Heard from" is when the controller saw the Lease change, by its own clock, not the
//! Lease's timestamp: a new controller leader starts every node's grace period afresh, so a
//! control-plane failover never evicts a healthy workload.

use flotilla_api::pb::api::{object::Body, NodeCondition, Object, PodCondition, Taint};

use crate::common::{format_time, parse_time_ms, Action, Reconciled};

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// Settings of the node lifecycle controller.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// A node unheard of for this long is unreachable (Kubernetes: 40 s).
    pub grace_ms: i64,
    /// How long a pod without its own toleration stays on an unreachable node (300 s).
    pub default_toleration_seconds: i64,
}

fn node_parts(
    o: &Object,
) -> Option<(
    flotilla_api::pb::api::NodeSpec,
    flotilla_api::pb::api::NodeStatus,
)> {
    match &o.body {
        Some(Body::Node(n)) => Some((
            n.spec.clone().unwrap_or_default(),
            n.status.clone().unwrap_or_default(),
        )),
        _ => None,
    }
}

/// How long `pod` tolerates `taint` (seconds; None: forever; Some(default) without a toleration).
fn toleration_seconds(pod: &Object, taint: &Taint, default: i64) -> Option<i64> {
    let tolerations = match &pod.body {
        Some(Body::Pod(p)) => p
            .spec
            .as_ref()
            .map(|s| s.tolerations.clone())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let matching = tolerations.iter().find(|t| {
        (t.effect.is_empty() || t.effect == taint.effect)
            && ((t.key.is_empty() && t.operator == "Exists")
                || (t.key == taint.key && (t.operator == "Exists" || t.value == taint.value)))
    });
    match matching {
        Some(t) => t.toleration_seconds.map(|s| s.max(0)),
        None => Some(default),
    }
}

/// Reconcile one node. `last_heard_ms`: when this controller last saw its Lease renewed (or
/// when it started watching it). `pods`: the pods bound to it.
pub fn reconcile(
    node: &Object,
    last_heard_ms: i64,
    now_ms: i64,
    settings: Settings,
    pods: &[&Object],
) -> Reconciled {
    let mut out = Reconciled::default();
    let Some((spec, status)) = node_parts(node) else {
        return out;
    };
    let reachable = now_ms.saturating_sub(last_heard_ms) <= settings.grace_ms;
    let tainted = spec.taints.iter().any(|t| t.key == UNREACHABLE_TAINT);
    let ready = status.conditions.iter().find(|c| c.r#type == "Ready");
    let now = format_time(now_ms);
    let name = &node.meta().name;
    if reachable {
        out.requeue(last_heard_ms + settings.grace_ms + 1 - now_ms);
        let unknown = ready.is_some_and(|c| c.status == "Unknown");
        if tainted {
            let mut o = node.clone();
            if let Some(Body::Node(n)) = &mut o.body {
                n.spec
                    .get_or_insert_with(Default::default)
                    .taints
                    .retain(|t| t.key != UNREACHABLE_TAINT);
            }
            out.actions.push(Action::Update(o));
        }
        if unknown {
            out.actions.push(Action::UpdateStatus(with_ready(
                node,
                "True",
                "AgentReady",
                "the agent is renewing the node's lease",
                &now,
            )));
            out.event(
                node,
                "Normal",
                "NodeReady",
                format!("Node {name} status is now: NodeReady"),
            );
        }
        return out;
    }
    // Unreachable.
    if ready.is_none_or(|c| c.status != "Unknown") {
        out.actions.push(Action::UpdateStatus(with_ready(
            node,
            "Unknown",
            "NodeStatusUnknown",
            "Kubelet stopped posting node status.",
            &now,
        )));
        out.event(
            node,
            "Normal",
            "NodeNotReady",
            format!("Node {name} status is now: NodeNotReady"),
        );
        for p in pods {
            if let Some(x) = pod_not_ready(p, &now) {
                out.actions.push(Action::UpdateStatus(x));
            }
        }
    }
    let mut taints = spec.taints.clone();
    if !tainted {
        let mut o = node.clone();
        for effect in ["NoSchedule", "NoExecute"] {
            taints.push(Taint {
                key: UNREACHABLE_TAINT.into(),
                value: String::new(),
                effect: effect.into(),
                time_added: now.clone(),
            });
        }
        if let Some(Body::Node(n)) = &mut o.body {
            n.spec.get_or_insert_with(Default::default).taints = taints.clone();
        }
        out.actions.push(Action::Update(o));
    }
    let Some(no_execute) = taints
        .iter()
        .find(|t| t.key == UNREACHABLE_TAINT && t.effect == "NoExecute")
    else {
        return out;
    };
    let since = parse_time_ms(&no_execute.time_added).unwrap_or(now_ms);
    for p in pods {
        if p.meta().deletion_timestamp_ms.is_some() {
            continue;
        }
        let Some(secs) = toleration_seconds(p, no_execute, settings.default_toleration_seconds)
        else {
            continue;
        };
        let at = since.saturating_add(secs.saturating_mul(1000));
        if now_ms >= at {
            out.event(
                p,
                "Normal",
                "TaintManagerEviction",
                format!(
                    "Marking for deletion Pod {}/{}",
                    p.meta().namespace,
                    p.meta().name
                ),
            );
            out.actions.push(Action::Delete {
                key: p.key(),
                uid: p.meta().uid.clone(),
            });
        } else {
            out.requeue(at - now_ms);
        }
    }
    out
}

fn with_ready(node: &Object, status: &str, reason: &str, message: &str, now: &str) -> Object {
    let mut o = node.clone();
    // The status write replaces the stored status whole: no resourceVersion precondition, so
    // the taint update in the same round does not make it conflict.
    o.meta_mut().resource_version = 0;
    if let Some(Body::Node(n)) = &mut o.body {
        let st = n.status.get_or_insert_with(Default::default);
        let mut c = st
            .conditions
            .iter()
            .find(|c| c.r#type == "Ready")
            .cloned()
            .unwrap_or(NodeCondition {
                r#type: "Ready".into(),
                ..Default::default()
            });
        if c.status != status {
            c.last_transition_time = now.into();
        }
        c.status = status.into();
        c.reason = reason.into();
        c.message = message.into();
        c.last_heartbeat_time = now.into();
        st.conditions.retain(|x| x.r#type != "Ready");
        st.conditions.push(c);
    }
    o
}

/// The pod with Ready (and ContainersReady) False, if it was ready.
fn pod_not_ready(p: &Object, now: &str) -> Option<Object> {
    let Some(Body::Pod(pod)) = &p.body else {
        return None;
    };
    let st = pod.status.as_ref()?;
    if !st
        .conditions
        .iter()
        .any(|c| c.r#type == "Ready" && c.status == "True")
    {
        return None;
    }
    let mut o = p.clone();
    if let Some(Body::Pod(x)) = &mut o.body {
        if let Some(st) = &mut x.status {
            for c in &mut st.conditions {
                if c.r#type == "Ready" || c.r#type == "ContainersReady" {
                    *c = PodCondition {
                        r#type: c.r#type.clone(),
                        status: "False".into(),
                        reason: "NodeNotReady".into(),
                        last_transition_time: now.into(),
                        ..Default::default()
                    };
                }
            }
        }
    }
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Settings = Settings {
        grace_ms: 40_000,
        default_toleration_seconds: 300,
    };

    fn node() -> Object {
        flotilla_api::manifest::parse_manifests(
            "t",
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus:\n  conditions: [{type: Ready, status: \"True\"}]\n",
        )
        .unwrap()
        .remove(0)
        .object
    }

    fn pod(name: &str, toleration: &str) -> Object {
        flotilla_api::manifest::parse_manifests(
            "t",
            &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, uid: u-{name}}}\nspec:\n  nodeName: n1\n{toleration}  containers: [{{name: c, image: x}}]\nstatus:\n  conditions: [{{type: Ready, status: \"True\"}}]\n"),
        )
        .unwrap()
        .remove(0)
        .object
    }

    fn apply(node: &mut Object, out: &Reconciled) {
        for a in &out.actions {
            match a {
                Action::Update(o) if o.kind == "Node" => {
                    if let (Some(Body::Node(n)), Some(Body::Node(new))) = (&mut node.body, &o.body)
                    {
                        n.spec = new.spec.clone();
                    }
                }
                Action::UpdateStatus(o) if o.kind == "Node" => {
                    if let (Some(Body::Node(n)), Some(Body::Node(new))) = (&mut node.body, &o.body)
                    {
                        n.status = new.status.clone();
                    }
                }
                _ => {}
            }
        }
    }

    fn deleted(out: &Reconciled) -> Vec<String> {
        out.actions
            .iter()
            .filter_map(|a| match a {
                Action::Delete { key, .. } => Some(key.name.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_silent_node_is_tainted_then_its_pods_evicted_after_their_toleration() {
        let t0 = 1_800_000_000_000;
        let mut n = node();
        let default = pod("default", "");
        let short = pod(
            "short",
            "  tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 10}]\n",
        );
        let forever = pod("forever", "  tolerations: [{operator: Exists}]\n");
        let pods = [&default, &short, &forever];
        // Within the grace period: nothing but a look after it.
        let out = reconcile(&n, t0, t0 + 30_000, S, &pods);
        assert!(out.actions.is_empty());
        assert_eq!(out.requeue_after_ms, Some(10_001));
        // Past it: Ready=Unknown, tainted, pods not ready; nobody evicted yet.
        let out = reconcile(&n, t0, t0 + 41_000, S, &pods);
        assert!(deleted(&out).is_empty());
        let not_ready = out
            .actions
            .iter()
            .filter(|a| matches!(a, Action::UpdateStatus(o) if o.kind == "Pod"))
            .count();
        assert_eq!(not_ready, 3);
        apply(&mut n, &out);
        let Some(Body::Node(x)) = &n.body else {
            panic!()
        };
        let taints = &x.spec.as_ref().unwrap().taints;
        assert_eq!(taints.len(), 2);
        assert_eq!(x.status.as_ref().unwrap().conditions[0].status, "Unknown");
        // The short toleration runs out first, the default one later, "forever" never.
        let out = reconcile(&n, t0, t0 + 52_000, S, &pods);
        assert_eq!(deleted(&out), vec!["short"]);
        let out = reconcile(&n, t0, t0 + 342_000, S, &pods);
        assert_eq!(deleted(&out), vec!["default", "short"]);
        // Heard from again: untainted and Ready.
        let out = reconcile(&n, t0 + 400_000, t0 + 400_000, S, &pods);
        apply(&mut n, &out);
        let Some(Body::Node(x)) = &n.body else {
            panic!()
        };
        assert!(x.spec.as_ref().unwrap().taints.is_empty());
        assert_eq!(x.status.as_ref().unwrap().conditions[0].status, "True");
    }
}
