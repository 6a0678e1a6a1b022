//! DaemonSet: one pod on every node that fits the template (nodeSelector, required node
//! affinity, NoSchedule/NoExecute taints it does not tolerate), placed through the scheduler
//! by a node affinity on the node's name (so the node's resources are accounted), and rolled
//! to a new template `maxUnavailable` pods at a time.

use std::collections::{BTreeMap, HashMap};

use flotilla_api::pb::api::{
    object::Body, Affinity, DaemonSetStatus, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, Object, Toleration,
};
use flotilla_scheduler::{NodeInfo, PodInfo};

use crate::common::{availability, int_or_percent, is_active, is_ready, Action, Reconciled};
use crate::deployment::template_hash;
use crate::replicaset::pod_from_template;

pub const HASH_LABEL: &str = "controller-revision-hash";

/// Tolerations every DaemonSet pod gets (as Kubernetes adds them): a daemon stays on its node
/// when the node is cordoned, not ready or unreachable.
fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: key.into(),
        operator: "Exists".into(),
        value: String::new(),
        effect: effect.into(),
        toleration_seconds: None,
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// Whether the daemon's pod belongs on `node`.
pub fn should_run(template_pod: &PodInfo, node: &NodeInfo) -> bool {
    flotilla_scheduler::algorithm::node_affinity_fits(template_pod, node)
        && flotilla_scheduler::algorithm::untolerated(
            &node.taints,
            &template_pod.tolerations,
            &["NoSchedule", "NoExecute"],
        )
        .is_none()
}

fn node_of(p: &Object) -> &str {
    match &p.body {
        Some(Body::Pod(x)) => x
            .spec
            .as_ref()
            .map(|s| {
                if !s.node_name.is_empty() {
                    return s.node_name.as_str();
                }
                // Not bound yet: the node its affinity names.
                s.affinity
                    .as_ref()
                    .and_then(|a| a.node_affinity.as_ref())
                    .and_then(|n| {
                        n.required_during_scheduling_ignored_during_execution
                            .as_ref()
                    })
                    .and_then(|r| r.node_selector_terms.first())
                    .and_then(|t| t.match_fields.first())
                    .and_then(|f| f.values.first())
                    .map(String::as_str)
                    .unwrap_or("")
            })
            .unwrap_or(""),
        _ => "",
    }
}

/// Reconcile a DaemonSet against every node and the pods it controls.
pub fn reconcile(
    ds: &Object,
    nodes: &[&Object],
    pods: &[&Object],
    now_ms: i64,
    new_name: &mut dyn FnMut() -> String,
) -> Reconciled {
    let mut out = Reconciled::default();
    let Some(Body::DaemonSet(d)) = &ds.body else {
        return out;
    };
    if ds.meta().deletion_timestamp_ms.is_some() {
        return out;
    }
    let spec = d.spec.clone().unwrap_or_default();
    let Some(mut template) = spec.template.clone() else {
        return out;
    };
    let hash = template_hash(&template);
    {
        let ps = template.spec.get_or_insert_with(Default::default);
        for t in daemon_tolerations() {
            if !ps.tolerations.contains(&t) {
                ps.tolerations.push(t);
            }
        }
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .insert(HASH_LABEL.into(), hash.clone());
    }
    // The template as a pod, to test nodes with the scheduler's own predicates.
    let probe = pod_from_template(ds, &template, String::new());
    let Some(probe) = PodInfo::from_object(&probe) else {
        return out;
    };
    let mut by_node: BTreeMap<&str, Vec<&Object>> = BTreeMap::new();
    for p in pods.iter().copied().filter(|p| is_active(p)) {
        by_node.entry(node_of(p)).or_default().push(p);
    }
    let eligible: HashMap<String, bool> = nodes
        .iter()
        .filter_map(|n| NodeInfo::from_object(n))
        .map(|n| (n.name.clone(), should_run(&probe, &n)))
        .collect();
    let mut desired = 0;
    let mut misscheduled = 0;
    let (mut current, mut ready, mut available, mut updated) = (0, 0, 0, 0);
    let max_unavailable = spec
        .update_strategy
        .as_ref()
        .filter(|s| s.r#type != "OnDelete")
        .map(|s| {
            let v = s
                .rolling_update
                .as_ref()
                .map(|r| r.max_unavailable.clone())
                .unwrap_or_default();
            int_or_percent(
                &v,
                eligible.values().filter(|e| **e).count() as i32,
                false,
                "1",
            )
            .max(1)
        });
    let mut unavailable_now = 0;
    let mut old_pods: Vec<&Object> = Vec::new();
    for (node, &fits) in &eligible {
        let here = by_node.get(node.as_str()).cloned().unwrap_or_default();
        if !fits {
            misscheduled += i32::from(!here.is_empty());
            for p in here {
                out.actions.push(Action::Delete {
                    key: p.key(),
                    uid: p.meta().uid.clone(),
                });
            }
            continue;
        }
        desired += 1;
        if here.is_empty() {
            let name = format!("{}-{}", ds.meta().name, new_name());
            let mut pod = pod_from_template(ds, &template, name.clone());
            if let Some(Body::Pod(x)) = &mut pod.body {
                let ps = x.spec.get_or_insert_with(Default::default);
                ps.affinity = Some(pin_to(node, ps.affinity.take()));
            }
            out.event(
                ds,
                "Normal",
                "SuccessfulCreate",
                format!("Created pod: {name}"),
            );
            out.actions.push(Action::Create(pod));
            unavailable_now += 1;
            continue;
        }
        current += 1;
        // One per node: extra pods go (the newest first).
        let mut here = here;
        here.sort_by_key(|p| std::cmp::Reverse(p.meta().creation_timestamp_ms));
        for extra in &here[1..] {
            out.actions.push(Action::Delete {
                key: extra.key(),
                uid: extra.meta().uid.clone(),
            });
        }
        let p = here[0];
        if is_ready(p) {
            ready += 1;
        }
        match availability(p, spec.min_ready_seconds, now_ms) {
            Ok(()) => available += 1,
            Err(at) => {
                unavailable_now += 1;
                if let Some(at) = at {
                    out.requeue(at - now_ms);
                }
            }
        }
        if p.meta().labels.get(HASH_LABEL) == Some(&hash) {
            updated += 1;
        } else {
            old_pods.push(p);
        }
    }
    // Pods on nodes that are gone.
    for (node, here) in &by_node {
        if !eligible.contains_key(*node) {
            for p in here {
                out.actions.push(Action::Delete {
                    key: p.key(),
                    uid: p.meta().uid.clone(),
                });
            }
        }
    }
    // Rolling update: replace old pods while fewer than maxUnavailable are down.
    if let Some(max) = max_unavailable {
        let budget = (max - unavailable_now).max(0) as usize;
        old_pods.sort_by_key(|p| is_ready(p));
        for p in old_pods.iter().take(budget) {
            out.actions.push(Action::Delete {
                key: p.key(),
                uid: p.meta().uid.clone(),
            });
        }
    }
    let old = d.status.unwrap_or_default();
    let st = DaemonSetStatus {
        current_number_scheduled: current,
        number_misscheduled: misscheduled,
        desired_number_scheduled: desired,
        number_ready: ready,
        observed_generation: ds.meta().generation,
        updated_number_scheduled: updated,
        number_available: available,
        number_unavailable: (desired - available).max(0),
    };
    if st != old {
        let mut o = ds.clone();
        if let Some(Body::DaemonSet(x)) = &mut o.body {
            x.status = Some(st);
        }
        out.actions.push(Action::UpdateStatus(o));
    }
    out
}

/// The template's affinity plus a required term on the node's name.
fn pin_to(node: &str, affinity: Option<Affinity>) -> Affinity {
    let mut a = affinity.unwrap_or_default();
    let na = a.node_affinity.get_or_insert_with(NodeAffinity::default);
    let field = NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "In".into(),
        values: vec![node.to_string()],
    };
    let required = na
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(NodeSelector::default);
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    // Terms are ORed: the name goes into each, so every way to match also names the node.
    for t in &mut required.node_selector_terms {
        t.match_fields.retain(|f| f.key != "metadata.name");
        t.match_fields.push(field.clone());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Object {
        let mut o = flotilla_api::manifest::parse_manifests("t", y)
            .unwrap()
            .remove(0)
            .object;
        flotilla_api::kinds::apply_defaults(&mut o);
        o
    }

    fn ds(image: &str) -> Object {
        let mut o = parse(&format!("apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: agent}}\nspec:\n  selector: {{matchLabels: {{app: a}}}}\n  template:\n    metadata: {{labels: {{app: a}}}}\n    spec:\n      nodeSelector: {{role: worker}}\n      containers: [{{name: c, image: {image}}}]\n"));
        o.meta_mut().uid = "ds-uid".into();
        o
    }

    fn node(name: &str, extra: &str) -> Object {
        parse(&format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{role: worker}}}}\n{extra}"))
    }

    fn names() -> impl FnMut() -> String {
        let mut i = 0;
        move || {
            i += 1;
            format!("x{i}")
        }
    }

    fn created(r: &Reconciled) -> Vec<Object> {
        r.actions
            .iter()
            .filter_map(|a| match a {
                Action::Create(o) => Some(o.clone()),
                _ => None,
            })
            .collect()
    }

    fn bind(mut p: Object, ready: bool) -> Object {
        let node = node_of(&p).to_string();
        if let Some(Body::Pod(x)) = &mut p.body {
            x.spec.as_mut().unwrap().node_name = node;
            if ready {
                x.status = Some(flotilla_api::pb::api::PodStatus {
                    phase: "Running".into(),
                    conditions: vec![flotilla_api::pb::api::PodCondition {
                        r#type: "Ready".into(),
                        status: "True".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
            }
        }
        p
    }

    #[test]
    fn one_pod_per_fitting_node_including_cordoned_and_new_ones() {
        let d = ds("a:1");
        let n1 = node("n1", "spec: {unschedulable: true}");
        let n2 = node("n2", "spec:\n  taints: [{key: gpu, effect: NoSchedule}]");
        let other = parse("apiVersion: v1\nkind: Node\nmetadata: {name: db}\n");
        let r = reconcile(&d, &[&n1, &n2, &other], &[], 0, &mut names());
        let pods = created(&r);
        assert_eq!(
            pods.len(),
            1,
            "only n1 fits (n2's taint, db's labels do not)"
        );
        assert_eq!(node_of(&pods[0]), "n1");
        let n3 = node("n3", "");
        let running = bind(pods[0].clone(), true);
        let r = reconcile(&d, &[&n1, &n2, &other, &n3], &[&running], 0, &mut names());
        let pods = created(&r);
        assert_eq!(pods.len(), 1);
        assert_eq!(node_of(&pods[0]), "n3");
    }

    #[test]
    fn a_new_template_rolls_one_node_at_a_time() {
        let nodes: Vec<Object> = (1..=3).map(|i| node(&format!("n{i}"), "")).collect();
        let refs: Vec<&Object> = nodes.iter().collect();
        let v1 = ds("a:1");
        let pods: Vec<Object> = created(&reconcile(&v1, &refs, &[], 0, &mut names()))
            .into_iter()
            .map(|p| bind(p, true))
            .collect();
        let prefs: Vec<&Object> = pods.iter().collect();
        let v2 = ds("a:2");
        let r = reconcile(&v2, &refs, &prefs, 0, &mut names());
        let deleted = r
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Delete { .. }))
            .count();
        assert_eq!(deleted, 1, "maxUnavailable 1");
        assert!(created(&r).is_empty());
    }
}
