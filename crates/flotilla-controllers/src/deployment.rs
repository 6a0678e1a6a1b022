//! Deployment: one ReplicaSet per pod template (named by the template's hash, numbered by a
//! revision annotation), rolled from the old ones to the new one by RollingUpdate (never more
//! than `replicas + maxSurge` pods, never fewer than `replicas - maxUnavailable` available) or
//! Recreate (all old pods gone before new ones start), with history trimmed to
//! `revisionHistoryLimit`, pause, and Kubernetes' status and conditions.

use std::collections::HashMap;

use flotilla_api::pb::api::{
    object::Body, DeploymentCondition, DeploymentStatus, LabelSelector, Object, ObjectMeta,
    PodTemplateSpec, ReplicaSet, ReplicaSetSpec,
};
use prost::Message;

use crate::common::{
    controller_ref, format_time, int_or_percent, parse_time_ms, Action, PodCounts, Reconciled,
};

pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
pub const HASH_LABEL: &str = "pod-template-hash";

/// The template without the hash label a ReplicaSet adds to it.
pub fn strip_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(m) = &mut t.metadata {
        m.labels.remove(HASH_LABEL);
    }
    t
}

/// The hash that names a template's ReplicaSet (the encoding is deterministic: maps are
/// ordered).
pub fn template_hash(t: &PodTemplateSpec) -> String {
    crate::common::safe_hash(&strip_hash(t).encode_to_vec())
}

pub fn revision_of(rs: &Object) -> i64 {
    rs.meta()
        .annotations
        .get(REVISION_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rs_spec(rs: &Object) -> ReplicaSetSpec {
    match &rs.body {
        Some(Body::ReplicaSet(r)) => r.spec.clone().unwrap_or_default(),
        _ => ReplicaSetSpec::default(),
    }
}

fn rs_replicas(rs: &Object) -> i32 {
    rs_spec(rs).replicas.unwrap_or(1)
}

/// The ReplicaSet a Deployment's current template belongs to, if it exists.
pub fn find_new<'a>(template: &PodTemplateSpec, rss: &[&'a Object]) -> Option<&'a Object> {
    let want = strip_hash(template);
    rss.iter()
        .copied()
        .filter(|rs| rs_spec(rs).template.as_ref().map(strip_hash).as_ref() == Some(&want))
        .max_by_key(|rs| revision_of(rs))
}

/// A copy of `rs` scaled to `replicas` (and at `revision`, when given).
fn scaled(rs: &Object, replicas: i32, revision: Option<i64>) -> Object {
    let mut o = rs.clone();
    if let Some(Body::ReplicaSet(r)) = &mut o.body {
        r.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    }
    if let Some(rev) = revision {
        o.meta_mut()
            .annotations
            .insert(REVISION_ANNOTATION.into(), rev.to_string());
    }
    o
}

fn scale(out: &mut Reconciled, d: &Object, rs: &Object, to: i32, revision: Option<i64>) {
    let from = rs_replicas(rs);
    if from == to && revision.is_none() {
        return;
    }
    if from != to {
        let dir = if to > from { "up" } else { "down" };
        out.event(
            d,
            "Normal",
            "ScalingReplicaSet",
            format!(
                "Scaled {dir} replica set {} to {to} from {from}",
                rs.meta().name
            ),
        );
    }
    out.actions.push(Action::Update(scaled(rs, to, revision)));
}

fn new_replicaset(d: &Object, template: &PodTemplateSpec, replicas: i32, revision: i64) -> Object {
    let hash = template_hash(template);
    let mut t = strip_hash(template);
    let tm = t.metadata.get_or_insert_with(Default::default);
    tm.labels.insert(HASH_LABEL.into(), hash.clone());
    let spec = match &d.body {
        Some(Body::Deployment(x)) => x.spec.clone().unwrap_or_default(),
        _ => Default::default(),
    };
    let mut selector: LabelSelector = spec.selector.clone().unwrap_or_default();
    selector
        .match_labels
        .insert(HASH_LABEL.into(), hash.clone());
    let mut labels = tm.labels.clone();
    labels.insert(HASH_LABEL.into(), hash.clone());
    let mut annotations = std::collections::BTreeMap::new();
    annotations.insert(REVISION_ANNOTATION.into(), revision.to_string());
    Object {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        metadata: Some(ObjectMeta {
            name: format!("{}-{hash}", d.meta().name),
            namespace: d.meta().namespace.clone(),
            labels,
            annotations,
            owner_references: vec![controller_ref(d)],
            ..Default::default()
        }),
        body: Some(Body::ReplicaSet(ReplicaSet {
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector: Some(selector),
                template: Some(t),
            }),
            status: None,
        })),
    }
}

/// Reconcile a Deployment against the ReplicaSets it controls; `counts` gives each of them
/// (by uid) its pods as observed.
pub fn reconcile(
    d: &Object,
    rss: &[&Object],
    counts: &HashMap<String, PodCounts>,
    now_ms: i64,
) -> Reconciled {
    let mut out = Reconciled::default();
    let Some(Body::Deployment(dep)) = &d.body else {
        return out;
    };
    if d.meta().deletion_timestamp_ms.is_some() {
        return out;
    }
    let spec = dep.spec.clone().unwrap_or_default();
    let Some(template) = spec.template.clone() else {
        return out;
    };
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let strategy = spec.strategy.clone().unwrap_or_default();
    let recreate = strategy.r#type == "Recreate";
    let ru = strategy.rolling_update.clone().unwrap_or_default();
    let surge = if recreate {
        0
    } else {
        int_or_percent(&ru.max_surge, replicas, true, "25%")
    };
    let mut unavailable = if recreate {
        replicas
    } else {
        int_or_percent(&ru.max_unavailable, replicas, false, "25%")
    };
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    let count = |rs: &Object| counts.get(&rs.meta().uid).copied().unwrap_or_default();

    let new = find_new(&template, rss);
    let mut olds: Vec<&Object> = rss
        .iter()
        .copied()
        .filter(|rs| new.is_none_or(|n| n.meta().uid != rs.meta().uid))
        .collect();
    olds.sort_by_key(|rs| (revision_of(rs), rs.meta().creation_timestamp_ms));
    let max_old_revision = olds.iter().map(|rs| revision_of(rs)).max().unwrap_or(0);

    if !spec.paused {
        rollout(
            &mut out,
            d,
            &template,
            new,
            &olds,
            replicas,
            surge,
            unavailable,
            recreate,
            max_old_revision,
            &count,
        );
    }

    // History: old sets scaled to zero with no pods left, beyond revisionHistoryLimit.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let idle: Vec<&&Object> = olds
        .iter()
        .filter(|rs| rs_replicas(rs) == 0 && count(rs).active == 0)
        .collect();
    if idle.len() > limit {
        for rs in &idle[..idle.len() - limit] {
            out.actions.push(Action::Delete {
                key: rs.key(),
                uid: rs.meta().uid.clone(),
            });
        }
    }

    status(
        &mut out,
        d,
        &dep.status.clone().unwrap_or_default(),
        &spec,
        new,
        rss,
        replicas,
        unavailable,
        &count,
        now_ms,
    );
    out
}

#[allow(clippy::too_many_arguments)]
fn rollout(
    out: &mut Reconciled,
    d: &Object,
    template: &PodTemplateSpec,
    new: Option<&Object>,
    olds: &[&Object],
    replicas: i32,
    surge: i32,
    unavailable: i32,
    recreate: bool,
    max_old_revision: i64,
    count: &dyn Fn(&Object) -> PodCounts,
) {
    let old_total: i32 = olds.iter().map(|rs| rs_replicas(rs)).sum();
    let old_pods: i32 = olds.iter().map(|rs| count(rs).active).sum();
    let Some(new) = new else {
        // The template has no ReplicaSet yet: create it, scaled as far as the strategy allows.
        let initial = if recreate {
            if old_total > 0 || old_pods > 0 {
                0
            } else {
                replicas
            }
        } else {
            (replicas + surge - old_total).clamp(0, replicas)
        };
        let rs = new_replicaset(d, template, initial, max_old_revision + 1);
        out.event(
            d,
            "Normal",
            "ScalingReplicaSet",
            format!("Scaled up replica set {} to {initial}", rs.meta().name),
        );
        out.actions.push(Action::Create(rs));
        if recreate {
            for rs in olds.iter().filter(|rs| rs_replicas(rs) > 0) {
                scale(out, d, rs, 0, None);
            }
        }
        return;
    };
    // A template that came back (a rollback) takes the next revision.
    let revision = (revision_of(new) <= max_old_revision).then_some(max_old_revision + 1);
    let new_replicas = rs_replicas(new);
    if recreate {
        if old_total > 0 {
            for rs in olds.iter().filter(|rs| rs_replicas(rs) > 0) {
                scale(out, d, rs, 0, None);
            }
            if revision.is_some() {
                scale(out, d, new, new_replicas, revision);
            }
            return;
        }
        if old_pods > 0 {
            // Wait for the old pods to be gone.
            if revision.is_some() {
                scale(out, d, new, new_replicas, revision);
            }
            return;
        }
        scale(out, d, new, replicas, revision);
        return;
    }
    if new_replicas > replicas {
        scale(out, d, new, replicas, revision);
        return;
    }
    if new_replicas < replicas {
        let total = old_total + new_replicas;
        let room = replicas + surge - total;
        let up = room.min(replicas - new_replicas);
        if up > 0 {
            scale(out, d, new, new_replicas + up, revision);
            return;
        }
    }
    if revision.is_some() {
        scale(out, d, new, new_replicas, revision);
    }
    // Scale old sets down as far as availability allows.
    if old_total == 0 {
        return;
    }
    let all_pods = old_total + new_replicas;
    let min_available = replicas - unavailable;
    let new_unavailable = (new_replicas - count(new).available).max(0);
    let max_scaled_down = all_pods - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return;
    }
    let mut target: Vec<i32> = olds.iter().map(|rs| rs_replicas(rs)).collect();
    // First the old pods that are not available anyway.
    let mut budget = max_scaled_down;
    for (i, rs) in olds.iter().enumerate() {
        if budget == 0 {
            break;
        }
        let unhealthy = (target[i] - count(rs).available).max(0);
        let take = unhealthy.min(budget).min(target[i]);
        target[i] -= take;
        budget -= take;
    }
    // Then available ones, keeping min_available.
    let available: i32 =
        olds.iter().map(|rs| count(rs).available).sum::<i32>() + count(new).available;
    let mut more = (available - min_available).max(0);
    for (i, rs) in olds.iter().enumerate() {
        if more == 0 {
            break;
        }
        // Only pods still counted in the target, and only available ones (unavailable ones
        // were taken above or are protected by the budget).
        let avail_left = count(rs).available.min(target[i]);
        let take = avail_left.min(more);
        target[i] -= take;
        more -= take;
    }
    for (i, rs) in olds.iter().enumerate() {
        if target[i] != rs_replicas(rs) {
            scale(out, d, rs, target[i], None);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn status(
    out: &mut Reconciled,
    d: &Object,
    old: &DeploymentStatus,
    spec: &flotilla_api::pb::api::DeploymentSpec,
    new: Option<&Object>,
    rss: &[&Object],
    replicas: i32,
    unavailable: i32,
    count: &dyn Fn(&Object) -> PodCounts,
    now_ms: i64,
) {
    let total = rss
        .iter()
        .map(|rs| count(rs))
        .fold(PodCounts::default(), |a, c| PodCounts {
            active: a.active + c.active,
            ready: a.ready + c.ready,
            available: a.available + c.available,
            next_available_ms: match (a.next_available_ms, c.next_available_ms) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            },
        });
    if let Some(at) = total.next_available_ms {
        out.requeue(at - now_ms);
    }
    let updated = new.map(|n| count(n).active).unwrap_or(0);
    let now = format_time(now_ms);
    let mut st = DeploymentStatus {
        observed_generation: d.meta().generation,
        replicas: total.active,
        updated_replicas: updated,
        ready_replicas: total.ready,
        available_replicas: total.available,
        unavailable_replicas: (replicas - total.available).max(0),
        conditions: old.conditions.clone(),
        collision_count: old.collision_count,
    };
    let set = |st: &mut DeploymentStatus,
               t: &str,
               status: &str,
               reason: &str,
               message: String,
               touch: bool| {
        let prev = st.conditions.iter().find(|c| c.r#type == t).cloned();
        let mut c = prev.clone().unwrap_or(DeploymentCondition {
            r#type: t.into(),
            ..Default::default()
        });
        if c.status != status {
            c.last_transition_time = now.clone();
        }
        if touch || c.status != status || c.reason != reason || c.last_update_time.is_empty() {
            c.last_update_time = now.clone();
        }
        c.status = status.into();
        c.reason = reason.into();
        c.message = message;
        st.conditions.retain(|x| x.r#type != t);
        st.conditions.push(c);
    };
    let min_available = replicas - unavailable;
    if total.available >= min_available {
        set(
            &mut st,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            false,
        );
    } else {
        set(
            &mut st,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            false,
        );
    }
    let new_name = new.map(|n| n.meta().name.clone()).unwrap_or_default();
    let complete = new.is_some()
        && updated == replicas
        && total.active == replicas
        && total.available >= replicas;
    let progressed = st.replicas != old.replicas
        || st.updated_replicas != old.updated_replicas
        || st.ready_replicas != old.ready_replicas
        || st.available_replicas != old.available_replicas
        || st.observed_generation != old.observed_generation;
    if spec.paused {
        set(
            &mut st,
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
            false,
        );
    } else if complete {
        set(
            &mut st,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            false,
        );
    } else if progressed {
        set(
            &mut st,
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
            true,
        );
    } else if let Some(deadline_s) = spec.progress_deadline_seconds {
        let last = st
            .conditions
            .iter()
            .find(|c| c.r#type == "Progressing")
            .and_then(|c| parse_time_ms(&c.last_update_time))
            .unwrap_or(now_ms);
        let at = last.saturating_add(i64::from(deadline_s.max(0)) * 1000);
        let already = st
            .conditions
            .iter()
            .any(|c| c.r#type == "Progressing" && c.reason == "ProgressDeadlineExceeded");
        if now_ms >= at && !already {
            set(
                &mut st,
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                false,
            );
        } else if now_ms < at {
            out.requeue(at - now_ms);
        }
    }
    // Only a change worth telling is written (timestamps alone are not).
    let strip = |s: &DeploymentStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_update_time.clear();
            c.last_transition_time.clear();
        }
        s.conditions.sort_by(|a, b| a.r#type.cmp(&b.r#type));
        s
    };
    if strip(&st) != strip(old) {
        let mut o = d.clone();
        if let Some(Body::Deployment(x)) = &mut o.body {
            x.status = Some(st);
        }
        out.actions.push(Action::UpdateStatus(o));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i32, image: &str, strategy: &str) -> Object {
        let mut o = flotilla_api::manifest::parse_manifests(
            "t",
            &format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n{strategy}  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers: [{{name: c, image: {image}}}]\n"),
        )
        .unwrap()
        .remove(0)
        .object;
        flotilla_api::kinds::apply_defaults(&mut o);
        o.meta_mut().uid = "d-uid".into();
        o.meta_mut().generation = 1;
        o
    }

    /// A toy cluster: each ReplicaSet's pods, available or still starting.
    #[derive(Default)]
    struct Sim {
        sets: Vec<(Object, i32, i32)>,
        created: usize,
    }

    impl Sim {
        fn counts(&self) -> HashMap<String, PodCounts> {
            self.sets
                .iter()
                .map(|(rs, avail, starting)| {
                    (
                        rs.meta().uid.clone(),
                        PodCounts {
                            active: avail + starting,
                            ready: *avail,
                            available: *avail,
                            next_available_ms: None,
                        },
                    )
                })
                .collect()
        }

        fn step(&mut self, d: &Object) -> Reconciled {
            let refs: Vec<&Object> = self.sets.iter().map(|s| &s.0).collect();
            let out = reconcile(d, &refs, &self.counts(), 0);
            for a in &out.actions {
                match a {
                    Action::Create(o) if o.kind == "ReplicaSet" => {
                        let mut o = o.clone();
                        o.meta_mut().uid = format!("rs-{}", self.created);
                        o.meta_mut().creation_timestamp_ms = self.created as i64;
                        self.created += 1;
                        self.sets.push((o, 0, 0));
                    }
                    Action::Update(o) => {
                        let s = self
                            .sets
                            .iter_mut()
                            .find(|s| s.0.meta().name == o.meta().name)
                            .unwrap();
                        s.0 = o.clone();
                    }
                    Action::Delete { key, .. } => self.sets.retain(|s| s.0.meta().name != key.name),
                    _ => {}
                }
            }
            // The ReplicaSet controller: surplus pods go, starting ones first.
            for (rs, avail, starting) in &mut self.sets {
                let want = rs_replicas(rs);
                let mut extra = (*avail + *starting - want).max(0);
                let s = extra.min(*starting);
                *starting -= s;
                extra -= s;
                *avail -= extra;
            }
            out
        }

        /// Pods started last round become available; missing pods start.
        fn tick(&mut self) {
            for (rs, avail, starting) in &mut self.sets {
                *avail += *starting;
                *starting = (rs_replicas(rs) - *avail).max(0);
            }
        }

        fn available(&self) -> i32 {
            self.sets.iter().map(|s| s.1).sum()
        }

        fn pods(&self) -> i32 {
            self.sets.iter().map(|s| s.1 + s.2).sum()
        }
    }

    fn converge(sim: &mut Sim, d: &Object, min_available: i32, max_pods: i32) -> usize {
        for round in 0..100 {
            let out = sim.step(d);
            assert!(
                sim.available() >= min_available,
                "round {round}: {} available",
                sim.available()
            );
            assert!(sim.pods() <= max_pods, "round {round}: {} pods", sim.pods());
            let writes = out
                .actions
                .iter()
                .filter(|a| !matches!(a, Action::Event { .. } | Action::UpdateStatus(_)))
                .count();
            if writes == 0 && sim.sets.iter().all(|s| s.2 == 0) {
                return round;
            }
            sim.tick();
        }
        panic!("no convergence");
    }

    #[test]
    fn a_new_deployment_gets_one_replicaset_named_by_its_template() {
        let d = deployment(3, "nginx:1", "");
        let mut sim = Sim::default();
        converge(&mut sim, &d, 0, 4);
        assert_eq!(sim.sets.len(), 1);
        let rs = &sim.sets[0].0;
        assert_eq!(sim.sets[0].1, 3);
        let Some(Body::Deployment(x)) = &d.body else {
            panic!()
        };
        let hash = template_hash(x.spec.as_ref().unwrap().template.as_ref().unwrap());
        assert_eq!(rs.meta().name, format!("web-{hash}"));
        assert_eq!(rs.meta().labels[HASH_LABEL], hash);
        assert_eq!(revision_of(rs), 1);
        assert_eq!(rs.meta().owner_references[0].uid, "d-uid");
        let sel = rs_spec(rs).selector.unwrap();
        assert_eq!(sel.match_labels[HASH_LABEL], hash);
    }

    #[test]
    fn a_rolling_update_keeps_availability_and_the_surge_bound() {
        let mut sim = Sim::default();
        converge(&mut sim, &deployment(4, "nginx:1", ""), 0, 5);
        // 25 %/25 % of 4: at least 3 available, at most 5 pods, at every step.
        let d2 = deployment(4, "nginx:2", "");
        converge(&mut sim, &d2, 3, 5);
        assert_eq!(sim.sets.len(), 2);
        let new = sim.sets.iter().find(|s| revision_of(&s.0) == 2).unwrap();
        assert_eq!((rs_replicas(&new.0), new.1), (4, 4));
        let old = sim.sets.iter().find(|s| revision_of(&s.0) == 1).unwrap();
        assert_eq!((rs_replicas(&old.0), old.1), (0, 0));
        // maxUnavailable 0, maxSurge 1: never below 4.
        let strict =
            "  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}\n";
        converge(&mut sim, &deployment(4, "nginx:3", strict), 4, 5);
        // Back to nginx:1: its old set returns at the next revision (a rollback).
        converge(&mut sim, &deployment(4, "nginx:1", ""), 3, 5);
        let back = sim.sets.iter().find(|s| rs_replicas(&s.0) == 4).unwrap();
        assert_eq!(revision_of(&back.0), 4);
        assert_eq!(back.0.meta().uid, "rs-0", "the first set is reused");
    }

    #[test]
    fn recreate_stops_every_old_pod_before_starting_new_ones() {
        let recreate = "  strategy: {type: Recreate}\n";
        let mut sim = Sim::default();
        converge(&mut sim, &deployment(3, "nginx:1", recreate), 0, 3);
        let d2 = deployment(3, "nginx:2", recreate);
        for _ in 0..10 {
            sim.step(&d2);
            let old_pods = sim.sets[0].1 + sim.sets[0].2;
            let new_pods = sim.sets.get(1).map(|s| s.1 + s.2).unwrap_or(0);
            assert!(old_pods == 0 || new_pods == 0, "old and new together");
            sim.tick();
        }
        assert_eq!(sim.sets[1].1, 3);
    }

    #[test]
    fn history_is_trimmed_and_a_paused_deployment_does_not_roll() {
        let mut sim = Sim::default();
        let limit = "  revisionHistoryLimit: 1\n";
        for img in ["a:1", "a:2", "a:3", "a:4"] {
            converge(&mut sim, &deployment(1, img, limit), 0, 2);
        }
        // The current set and one old one remain.
        assert_eq!(
            sim.sets.len(),
            2,
            "{:?}",
            sim.sets
                .iter()
                .map(|s| (
                    s.0.meta().name.clone(),
                    revision_of(&s.0),
                    rs_replicas(&s.0),
                    s.1,
                    s.2
                ))
                .collect::<Vec<_>>()
        );
        let mut paused = deployment(1, "a:5", limit);
        if let Some(Body::Deployment(x)) = &mut paused.body {
            x.spec.as_mut().unwrap().paused = true;
        }
        let out = sim.step(&paused);
        assert!(
            out.actions
                .iter()
                .all(|a| matches!(a, Action::UpdateStatus(_) | Action::Event { .. })),
            "{out:?}"
        );
    }

    #[test]
    fn status_reports_counts_and_completion() {
        let d = deployment(2, "nginx:1", "");
        let mut sim = Sim::default();
        converge(&mut sim, &d, 0, 3);
        let refs: Vec<&Object> = sim.sets.iter().map(|s| &s.0).collect();
        let out = reconcile(&d, &refs, &sim.counts(), 0);
        let Some(Action::UpdateStatus(o)) = out.actions.last() else {
            panic!("{out:?}")
        };
        let Some(Body::Deployment(x)) = &o.body else {
            panic!()
        };
        let st = x.status.as_ref().unwrap();
        assert_eq!(
            (
                st.replicas,
                st.updated_replicas,
                st.available_replicas,
                st.unavailable_replicas
            ),
            (2, 2, 2, 0)
        );
        let progressing = st
            .conditions
            .iter()
            .find(|c| c.r#type == "Progressing")
            .unwrap();
        assert_eq!(progressing.reason, "NewReplicaSetAvailable");
        let available = st
            .conditions
            .iter()
            .find(|c| c.r#type == "Available")
            .unwrap();
        assert_eq!(available.status, "True");
    }
}
