//! StatefulSet: pods with stable names `<set>-<ordinal>` (hostname = the pod's name,
//! subdomain = `serviceName`), started in order (each waits for the previous one to be Running
//! and Ready) and stopped in reverse order, one at a time, under `OrderedReady`; all at once
//! under `Parallel`. A new template rolls from the highest ordinal down, one pod at a time,
//! down to `partition`.

use flotilla_api::pb::api::{object::Body, Object, StatefulSetStatus};

use crate::common::{availability, is_ready, phase, Action, Reconciled};
use crate::deployment::template_hash;
use crate::replicaset::pod_from_template;

pub const REVISION_LABEL: &str = "controller-revision-hash";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";

fn ordinal(set: &str, pod: &Object) -> Option<i32> {
    pod.meta()
        .name
        .strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

pub fn reconcile(set: &Object, pods: &[&Object], now_ms: i64) -> Reconciled {
    let mut out = Reconciled::default();
    let Some(Body::StatefulSet(s)) = &set.body else {
        return out;
    };
    if set.meta().deletion_timestamp_ms.is_some() {
        return out;
    }
    let spec = s.spec.clone().unwrap_or_default();
    let Some(template) = spec.template.clone() else {
        return out;
    };
    let name = set.meta().name.clone();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let parallel = spec.pod_management_policy == "Parallel";
    let revision = template_hash(&template);
    let running_ready = |p: &Object| {
        p.meta().deletion_timestamp_ms.is_none() && phase(p) == "Running" && is_ready(p)
    };
    let mut by_ordinal: std::collections::BTreeMap<i32, &Object> = Default::default();
    for p in pods {
        if let Some(i) = ordinal(&name, p) {
            by_ordinal.insert(i, p);
        }
    }
    let new_pod = |i: i32| {
        let mut p = pod_from_template(set, &template, format!("{name}-{i}"));
        let m = p.meta_mut();
        m.labels
            .insert(POD_NAME_LABEL.into(), format!("{name}-{i}"));
        m.labels
            .insert("apps.kubernetes.io/pod-index".into(), i.to_string());
        m.labels.insert(REVISION_LABEL.into(), revision.clone());
        if let Some(Body::Pod(x)) = &mut p.body {
            let ps = x.spec.get_or_insert_with(Default::default);
            ps.hostname = format!("{name}-{i}");
            ps.subdomain = spec.service_name.clone();
        }
        p
    };
    let delete = |out: &mut Reconciled, p: &Object, why: &str| {
        out.event(
            set,
            "Normal",
            "SuccessfulDelete",
            format!("delete Pod {} in StatefulSet {name} {why}", p.meta().name),
        );
        out.actions.push(Action::Delete {
            key: p.key(),
            uid: p.meta().uid.clone(),
        });
    };
    let mut blocked = false;
    // Failed pods are replaced.
    for p in by_ordinal.values() {
        if phase(p) == "Failed" && p.meta().deletion_timestamp_ms.is_none() {
            delete(&mut out, p, "failed");
            blocked = true;
        }
    }
    // Start up: ordinals 0..replicas, in order unless Parallel.
    for i in 0..replicas {
        if blocked && !parallel {
            break;
        }
        match by_ordinal.get(&i) {
            None => {
                let p = new_pod(i);
                out.event(
                    set,
                    "Normal",
                    "SuccessfulCreate",
                    format!(
                        "create Pod {} in StatefulSet {name} successful",
                        p.meta().name
                    ),
                );
                out.actions.push(Action::Create(p));
                if !parallel {
                    blocked = true;
                }
            }
            Some(p) if !running_ready(p) && !parallel => blocked = true,
            Some(_) => {}
        }
    }
    // Scale down: the highest ordinal first, one at a time unless Parallel.
    let mut surplus: Vec<&&Object> = by_ordinal
        .iter()
        .filter(|(i, _)| **i >= replicas)
        .map(|(_, p)| p)
        .collect();
    surplus.reverse();
    if !surplus.is_empty() {
        let terminating = surplus
            .iter()
            .any(|p| p.meta().deletion_timestamp_ms.is_some());
        if parallel {
            for p in surplus
                .iter()
                .filter(|p| p.meta().deletion_timestamp_ms.is_none())
            {
                delete(&mut out, p, "successful");
            }
        } else if !terminating && !blocked {
            delete(&mut out, surplus[0], "successful");
            blocked = true;
        } else {
            blocked = true;
        }
    }
    // Rolling update: from the highest ordinal down to the partition, one at a time, when
    // every pod is up.
    let on_delete = spec
        .update_strategy
        .as_ref()
        .is_some_and(|u| u.r#type == "OnDelete");
    let partition = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let all_up = (0..replicas).all(|i| by_ordinal.get(&i).is_some_and(|p| running_ready(p)));
    if !blocked && !on_delete && all_up {
        if let Some(p) = (partition..replicas).rev().find_map(|i| {
            by_ordinal
                .get(&i)
                .filter(|p| p.meta().labels.get(REVISION_LABEL) != Some(&revision))
        }) {
            delete(&mut out, p, "for update");
        }
    }
    let active: Vec<&&Object> = by_ordinal
        .values()
        .filter(|p| p.meta().deletion_timestamp_ms.is_none())
        .collect();
    let mut available = 0;
    for p in &active {
        match availability(p, spec.min_ready_seconds, now_ms) {
            Ok(()) => available += 1,
            Err(Some(at)) => out.requeue(at - now_ms),
            Err(None) => {}
        }
    }
    let updated = active
        .iter()
        .filter(|p| p.meta().labels.get(REVISION_LABEL) == Some(&revision))
        .count() as i32;
    let old = s.status.clone().unwrap_or_default();
    let st = StatefulSetStatus {
        observed_generation: set.meta().generation,
        replicas: active.len() as i32,
        ready_replicas: active.iter().filter(|p| is_ready(p)).count() as i32,
        current_replicas: updated,
        updated_replicas: updated,
        current_revision: format!("{name}-{revision}"),
        update_revision: format!("{name}-{revision}"),
        available_replicas: available,
    };
    if st != old {
        let mut o = set.clone();
        if let Some(Body::StatefulSet(x)) = &mut o.body {
            x.status = Some(st);
        }
        out.actions.push(Action::UpdateStatus(o));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(replicas: i32, image: &str, extra: &str) -> Object {
        let mut o = flotilla_api::manifest::parse_manifests(
            "t",
            &format!("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: web}}\nspec:\n  serviceName: nginx\n  replicas: {replicas}\n{extra}  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers: [{{name: c, image: {image}}}]\n"),
        )
        .unwrap()
        .remove(0)
        .object;
        o.meta_mut().uid = "ss-uid".into();
        o
    }

    fn up(mut p: Object) -> Object {
        if let Some(Body::Pod(x)) = &mut p.body {
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
        p
    }

    /// Run to a fixed point: creates start and become ready, deletes go.
    fn converge(s: &Object, pods: &mut Vec<Object>) -> Vec<String> {
        let mut log = Vec::new();
        for _ in 0..50 {
            let refs: Vec<&Object> = pods.iter().collect();
            let r = reconcile(s, &refs, 0);
            let mut wrote = false;
            for a in r.actions {
                match a {
                    Action::Create(p) => {
                        log.push(format!("+{}", p.meta().name));
                        pods.push(up(p));
                        wrote = true;
                    }
                    Action::Delete { key, .. } => {
                        log.push(format!("-{}", key.name));
                        pods.retain(|p| p.meta().name != key.name);
                        wrote = true;
                    }
                    _ => {}
                }
            }
            if !wrote {
                return log;
            }
        }
        panic!("no fixed point")
    }

    #[test]
    fn ordered_start_stop_and_update() {
        let mut pods = Vec::new();
        assert_eq!(
            converge(&set(3, "a:1", ""), &mut pods),
            ["+web-0", "+web-1", "+web-2"]
        );
        let p0 = pods.iter().find(|p| p.meta().name == "web-0").unwrap();
        let Some(Body::Pod(x)) = &p0.body else {
            panic!()
        };
        assert_eq!(x.spec.as_ref().unwrap().hostname, "web-0");
        assert_eq!(x.spec.as_ref().unwrap().subdomain, "nginx");
        assert_eq!(
            converge(&set(1, "a:1", ""), &mut pods),
            ["-web-2", "-web-1"]
        );
        // A new template: recreated from the highest ordinal down.
        converge(&set(3, "a:1", ""), &mut pods);
        let log = converge(&set(3, "a:2", ""), &mut pods);
        assert_eq!(
            log,
            ["-web-2", "+web-2", "-web-1", "+web-1", "-web-0", "+web-0"]
        );
        // Parallel: everything at once.
        let r = reconcile(&set(3, "a:1", "  podManagementPolicy: Parallel\n"), &[], 0);
        let creates = r
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Create(_)))
            .count();
        assert_eq!(creates, 3);
    }

    #[test]
    fn ordered_start_waits_for_the_previous_pod() {
        let s = set(3, "a:1", "");
        let r = reconcile(&s, &[], 0);
        let created: Vec<String> = r
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Create(p) => Some(p.meta().name.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(created, ["web-0"]);
        let Action::Create(p0) = r
            .actions
            .iter()
            .find(|a| matches!(a, Action::Create(_)))
            .unwrap()
            .clone()
        else {
            panic!()
        };
        // web-0 exists but is not ready: nothing more.
        let r = reconcile(&s, &[&p0], 0);
        assert!(!r.actions.iter().any(|a| matches!(a, Action::Create(_))));
    }
}
