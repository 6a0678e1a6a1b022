//! ReplicaSet: keep `spec.replicas` active pods made from the template, and report how many
//! are ready and available.

use flotilla_api::pb::api::{object::Body, Object, ObjectMeta, Pod, ReplicaSetStatus};

use crate::common::{
    controller_ref, count_pods, is_active, is_ready, phase, Action, PodCounts, Reconciled,
};

/// A pod from `owner`'s template (ReplicaSet, and later Job or DaemonSet templates).
pub fn pod_from_template(
    owner: &Object,
    template: &flotilla_api::pb::api::PodTemplateSpec,
    name: String,
) -> Object {
    let tm = template.metadata.clone().unwrap_or_default();
    Object {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: Some(ObjectMeta {
            name,
            namespace: owner.meta().namespace.clone(),
            labels: tm.labels,
            annotations: tm.annotations,
            owner_references: vec![controller_ref(owner)],
            ..Default::default()
        }),
        body: Some(Body::Pod(Pod {
            spec: template.spec.clone(),
            status: None,
        })),
    }
}

/// The order in which surplus pods go first (Kubernetes' ActivePods ranking): unbound before
/// bound, pending before running, not ready before ready, more restarts first, newer first.
fn deletion_rank(o: &Object) -> (u8, u8, u8, i32, i64) {
    let (bound, restarts) = match &o.body {
        Some(Body::Pod(p)) => (
            p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty()),
            p.status
                .as_ref()
                .map(|s| s.container_statuses.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0),
        ),
        _ => (false, 0),
    };
    let phase_rank = match phase(o) {
        "Pending" | "" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    (
        u8::from(bound),
        phase_rank,
        u8::from(is_ready(o)),
        -restarts,
        -o.meta().creation_timestamp_ms,
    )
}

/// Reconcile one ReplicaSet against the pods it controls. `new_name` gives each new pod its
/// name suffix; at most `burst` pods are created or deleted per call (Kubernetes: 500).
pub fn reconcile(
    rs: &Object,
    pods: &[&Object],
    now_ms: i64,
    burst: usize,
    new_name: &mut dyn FnMut() -> String,
) -> Reconciled {
    let mut out = Reconciled::default();
    let Some(Body::ReplicaSet(r)) = &rs.body else {
        return out;
    };
    if rs.meta().deletion_timestamp_ms.is_some() {
        return out;
    }
    let spec = r.spec.clone().unwrap_or_default();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    let mut active: Vec<&Object> = pods.iter().copied().filter(|p| is_active(p)).collect();
    let name = &rs.meta().name;
    if active.len() < want {
        if let Some(t) = &spec.template {
            for _ in 0..(want - active.len()).min(burst) {
                let pod_name = format!("{name}-{}", new_name());
                out.event(
                    rs,
                    "Normal",
                    "SuccessfulCreate",
                    format!("Created pod: {pod_name}"),
                );
                out.actions
                    .push(Action::Create(pod_from_template(rs, t, pod_name)));
            }
        }
    } else if active.len() > want {
        active.sort_by_key(|p| deletion_rank(p));
        for p in active.iter().take((active.len() - want).min(burst)) {
            out.event(
                rs,
                "Normal",
                "SuccessfulDelete",
                format!("Deleted pod: {}", p.meta().name),
            );
            out.actions.push(Action::Delete {
                key: p.key(),
                uid: p.meta().uid.clone(),
            });
        }
    }
    let counts: PodCounts = count_pods(pods.iter().copied(), spec.min_ready_seconds, now_ms);
    if let Some(at) = counts.next_available_ms {
        out.requeue(at - now_ms);
    }
    let labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .map(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = pods
        .iter()
        .filter(|p| is_active(p))
        .filter(|p| {
            labels
                .iter()
                .all(|(k, v)| p.meta().labels.get(k) == Some(v))
        })
        .count() as i32;
    let old = r.status.clone().unwrap_or_default();
    let status = ReplicaSetStatus {
        replicas: counts.active,
        fully_labeled_replicas: fully_labeled,
        ready_replicas: counts.ready,
        available_replicas: counts.available,
        observed_generation: rs.meta().generation,
        conditions: old.conditions.clone(),
    };
    if status != old {
        let mut o = rs.clone();
        if let Some(Body::ReplicaSet(x)) = &mut o.body {
            x.status = Some(status);
        }
        out.actions.push(Action::UpdateStatus(o));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::pb::api::{PodCondition, PodStatus};

    pub(crate) fn rs(replicas: i32) -> Object {
        let mut o = flotilla_api::manifest::parse_manifests(
            "t",
            &format!("apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers: [{{name: c, image: nginx}}]\n"),
        )
        .unwrap()
        .remove(0)
        .object;
        o.meta_mut().uid = "rs-uid".into();
        o.meta_mut().generation = 1;
        o
    }

    pub(crate) fn pod(name: &str, node: &str, ready_since: Option<&str>, created: i64) -> Object {
        let owner = rs(1);
        let t = match &owner.body {
            Some(Body::ReplicaSet(r)) => r.spec.clone().unwrap().template.unwrap(),
            _ => unreachable!(),
        };
        let mut p = pod_from_template(&owner, &t, name.into());
        p.meta_mut().uid = format!("uid-{name}");
        p.meta_mut().creation_timestamp_ms = created;
        if let Some(Body::Pod(x)) = &mut p.body {
            x.spec.as_mut().unwrap().node_name = node.into();
            x.status = Some(PodStatus {
                phase: if node.is_empty() {
                    "Pending"
                } else {
                    "Running"
                }
                .into(),
                conditions: ready_since
                    .map(|t| PodCondition {
                        r#type: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: t.into(),
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            });
        }
        p
    }

    fn names() -> impl FnMut() -> String {
        let mut i = 0;
        move || {
            i += 1;
            format!("x{i}")
        }
    }

    #[test]
    fn creates_the_missing_pods_from_the_template_owned_by_the_set() {
        let r = rs(3);
        let existing = pod("web-a", "n1", Some("2026-01-01T00:00:00Z"), 1);
        let out = reconcile(&r, &[&existing], 0, 500, &mut names());
        let created: Vec<&Object> = out
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Create(o) => Some(o),
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 2);
        assert_eq!(created[0].meta().name, "web-x1");
        assert_eq!(created[0].meta().labels["app"], "web");
        let owner = &created[0].meta().owner_references[0];
        assert!(owner.controller && owner.uid == "rs-uid" && owner.kind == "ReplicaSet");
        let burst = reconcile(&rs(1000), &[], 0, 500, &mut names());
        let n = burst
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Create(_)))
            .count();
        assert_eq!(n, 500, "bounded per round");
    }

    #[test]
    fn deletes_the_least_valuable_pods_first() {
        let r = rs(1);
        let ready = pod("ready", "n1", Some("2026-01-01T00:00:00Z"), 1);
        let unbound = pod("unbound", "", None, 2);
        let running = pod("running-not-ready", "n1", None, 3);
        let out = reconcile(&r, &[&ready, &unbound, &running], 0, 500, &mut names());
        let deleted: Vec<String> = out
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Delete { key, .. } => Some(key.name.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, vec!["unbound", "running-not-ready"]);
    }

    #[test]
    fn status_counts_ready_and_available_after_min_ready_seconds() {
        let mut r = rs(2);
        if let Some(Body::ReplicaSet(x)) = &mut r.body {
            x.spec.as_mut().unwrap().min_ready_seconds = 10;
        }
        // 2026-01-01T00:00:00Z
        let t0 = 1_767_225_600_000;
        let a = pod("a", "n1", Some("2026-01-01T00:00:00Z"), 1);
        let b = pod("b", "n1", None, 2);
        let out = reconcile(&r, &[&a, &b], t0 + 4_000, 500, &mut names());
        let Some(Action::UpdateStatus(s)) = out.actions.last() else {
            panic!("{out:?}")
        };
        let Some(Body::ReplicaSet(x)) = &s.body else {
            panic!()
        };
        let st = x.status.as_ref().unwrap();
        assert_eq!(
            (st.replicas, st.ready_replicas, st.available_replicas),
            (2, 1, 0)
        );
        assert_eq!(out.requeue_after_ms, Some(6_000));
        let out = reconcile(&r, &[&a, &b], t0 + 10_000, 500, &mut names());
        let Some(Action::UpdateStatus(s)) = out.actions.last() else {
            panic!()
        };
        let Some(Body::ReplicaSet(x)) = &s.body else {
            panic!()
        };
        assert_eq!(x.status.as_ref().unwrap().available_replicas, 1);
    }

    #[test]
    fn a_set_at_its_count_with_current_status_writes_nothing() {
        let mut r = rs(1);
        let a = pod("a", "n1", Some("2026-01-01T00:00:00Z"), 1);
        let first = reconcile(&r, &[&a], 0, 500, &mut names());
        let Some(Action::UpdateStatus(s)) = first.actions.last() else {
            panic!()
        };
        r.body = s.body.clone();
        assert!(reconcile(&r, &[&a], 0, 500, &mut names())
            .actions
            .is_empty());
    }
}
