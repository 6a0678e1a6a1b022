//! Job: run pods from the template until `completions` of them succeed, at most
//! `parallelism` at a time; fail after more than `backoffLimit` failed pods or past
//! `activeDeadlineSeconds`; delete the finished Job after `ttlSecondsAfterFinished`.

use flotilla_api::pb::api::{object::Body, JobCondition, JobStatus, Object};

use crate::common::{format_time, is_ready, parse_time_ms, phase, Action, Reconciled};
use crate::replicaset::pod_from_template;

pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

fn finished_condition(st: &JobStatus) -> Option<&JobCondition> {
    st.conditions
        .iter()
        .find(|c| (c.r#type == "Complete" || c.r#type == "Failed") && c.status == "True")
}

/// Reconcile a Job against the pods it controls.
pub fn reconcile(
    job: &Object,
    pods: &[&Object],
    now_ms: i64,
    burst: usize,
    new_name: &mut dyn FnMut() -> String,
) -> Reconciled {
    let mut out = Reconciled::default();
    let Some(Body::Job(j)) = &job.body else {
        return out;
    };
    if job.meta().deletion_timestamp_ms.is_some() {
        return out;
    }
    let spec = j.spec.clone().unwrap_or_default();
    let old = j.status.clone().unwrap_or_default();
    let now = format_time(now_ms);
    let mut st = old.clone();

    // A finished Job only waits for its time to live.
    if let Some(done) = finished_condition(&old) {
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let at = parse_time_ms(&done.last_transition_time)
                .unwrap_or(now_ms)
                .saturating_add(i64::from(ttl.max(0)) * 1000);
            if now_ms >= at {
                out.actions.push(Action::Delete {
                    key: job.key(),
                    uid: job.meta().uid.clone(),
                });
            } else {
                out.requeue(at - now_ms);
            }
        }
        return out;
    }

    let active: Vec<&Object> = pods
        .iter()
        .copied()
        .filter(|p| p.meta().deletion_timestamp_ms.is_none())
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .collect();
    let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i32;
    let failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i32;
    // Finished pods may be deleted by someone: what was counted stays counted.
    st.succeeded = old.succeeded.max(succeeded);
    st.failed = old.failed.max(failed);
    st.active = active.len() as i32;
    st.ready = Some(active.iter().filter(|p| is_ready(p)).count() as i32);
    if st.start_time.is_empty() && !spec.suspend.unwrap_or(false) {
        st.start_time = now.clone();
    }

    let completions = spec.completions.unwrap_or(1).max(0);
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6).max(0);
    let finish = |st: &mut JobStatus, t: &str, reason: &str, message: String| {
        st.conditions.push(JobCondition {
            r#type: t.into(),
            status: "True".into(),
            last_probe_time: now.clone(),
            last_transition_time: now.clone(),
            reason: reason.into(),
            message,
        });
    };
    let past_deadline = spec.active_deadline_seconds.is_some_and(|d| {
        parse_time_ms(&st.start_time)
            .is_some_and(|s| now_ms >= s.saturating_add(d.max(0).saturating_mul(1000)))
    });
    let mut stop_active = false;
    if st.succeeded >= completions {
        finish(&mut st, "Complete", "", String::new());
        st.completion_time = now.clone();
        out.event(job, "Normal", "Completed", "Job completed".into());
        stop_active = true;
    } else if st.failed > backoff_limit {
        finish(
            &mut st,
            "Failed",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into(),
        );
        out.event(
            job,
            "Warning",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into(),
        );
        stop_active = true;
    } else if past_deadline {
        finish(
            &mut st,
            "Failed",
            "DeadlineExceeded",
            "Job was active longer than specified deadline".into(),
        );
        out.event(
            job,
            "Warning",
            "DeadlineExceeded",
            "Job was active longer than specified deadline".into(),
        );
        stop_active = true;
    } else if spec.suspend.unwrap_or(false) {
        stop_active = true;
    } else {
        // Never more pods running than still needed, nor than parallelism.
        let remaining = (completions - st.succeeded).max(0);
        let want = parallelism.min(remaining);
        let missing = (want - st.active).max(0) as usize;
        if let Some(t) = &spec.template {
            for _ in 0..missing.min(burst) {
                let name = format!("{}-{}", job.meta().name, new_name());
                let mut p = pod_from_template(job, t, name.clone());
                let m = p.meta_mut();
                m.labels
                    .insert(JOB_NAME_LABEL.into(), job.meta().name.clone());
                m.labels.insert("job-name".into(), job.meta().name.clone());
                m.labels
                    .insert("controller-uid".into(), job.meta().uid.clone());
                out.event(
                    job,
                    "Normal",
                    "SuccessfulCreate",
                    format!("Created pod: {name}"),
                );
                out.actions.push(Action::Create(p));
            }
        }
        if let Some(d) = spec.active_deadline_seconds {
            if let Some(s) = parse_time_ms(&st.start_time) {
                out.requeue(s.saturating_add(d.max(0).saturating_mul(1000)) - now_ms);
            }
        }
    }
    if stop_active {
        for p in &active {
            out.actions.push(Action::Delete {
                key: p.key(),
                uid: p.meta().uid.clone(),
            });
        }
        st.active = 0;
    }
    if st != old {
        let mut o = job.clone();
        if let Some(Body::Job(x)) = &mut o.body {
            x.status = Some(st);
        }
        out.actions.push(Action::UpdateStatus(o));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(extra: &str) -> Object {
        let mut o = flotilla_api::manifest::parse_manifests(
            "t",
            &format!("apiVersion: batch/v1\nkind: Job\nmetadata: {{name: pi}}\nspec:\n{extra}  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{name: c, image: busybox}}]\n"),
        )
        .unwrap()
        .remove(0)
        .object;
        o.meta_mut().uid = "job-uid".into();
        o
    }

    fn pod(name: &str, phase: &str) -> Object {
        let j = job("");
        let t = match &j.body {
            Some(Body::Job(x)) => x.spec.clone().unwrap().template.unwrap(),
            _ => unreachable!(),
        };
        let mut p = pod_from_template(&j, &t, name.into());
        if let Some(Body::Pod(x)) = &mut p.body {
            x.status.get_or_insert_with(Default::default).phase = phase.into();
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

    fn creates(r: &Reconciled) -> usize {
        r.actions
            .iter()
            .filter(|a| matches!(a, Action::Create(_)))
            .count()
    }

    fn status(r: &Reconciled) -> JobStatus {
        r.actions
            .iter()
            .find_map(|a| match a {
                Action::UpdateStatus(o) => match &o.body {
                    Some(Body::Job(x)) => x.status.clone(),
                    _ => None,
                },
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn runs_parallelism_pods_until_completions_succeed() {
        let j = job("  completions: 5\n  parallelism: 2\n");
        let r = reconcile(&j, &[], 0, 500, &mut names());
        assert_eq!(creates(&r), 2);
        // 4 done, 1 running: nothing more to start (only 1 still needed).
        let done: Vec<Object> = (0..4).map(|i| pod(&format!("d{i}"), "Succeeded")).collect();
        let running = pod("r", "Running");
        let mut all: Vec<&Object> = done.iter().collect();
        all.push(&running);
        let r = reconcile(&j, &all, 0, 500, &mut names());
        assert_eq!(creates(&r), 0);
        assert_eq!(status(&r).succeeded, 4);
        let fifth = pod("d4", "Succeeded");
        all.pop();
        all.push(&fifth);
        let r = reconcile(&j, &all, 0, 500, &mut names());
        let st = status(&r);
        assert_eq!(st.succeeded, 5);
        assert_eq!(st.conditions[0].r#type, "Complete");
        assert!(!st.completion_time.is_empty());
    }

    #[test]
    fn fails_past_the_backoff_limit_and_the_deadline() {
        let j = job("  backoffLimit: 1\n");
        let f: Vec<Object> = (0..2).map(|i| pod(&format!("f{i}"), "Failed")).collect();
        let refs: Vec<&Object> = f.iter().collect();
        let st = status(&reconcile(&j, &refs, 0, 500, &mut names()));
        assert_eq!(st.conditions[0].reason, "BackoffLimitExceeded");

        let mut j = job("  activeDeadlineSeconds: 10\n");
        if let Some(Body::Job(x)) = &mut j.body {
            x.status = Some(JobStatus {
                start_time: "2026-01-01T00:00:00Z".into(),
                ..Default::default()
            });
        }
        let running = pod("r", "Running");
        let t0 = 1_767_225_600_000;
        let r = reconcile(&j, &[&running], t0 + 5_000, 500, &mut names());
        assert_eq!(r.requeue_after_ms, Some(5_000));
        let r = reconcile(&j, &[&running], t0 + 11_000, 500, &mut names());
        assert_eq!(status(&r).conditions[0].reason, "DeadlineExceeded");
        assert!(r
            .actions
            .iter()
            .any(|a| matches!(a, Action::Delete { key, .. } if key.name == "r")));
    }

    #[test]
    fn a_finished_job_is_deleted_after_its_ttl() {
        let mut j = job("  ttlSecondsAfterFinished: 30\n");
        if let Some(Body::Job(x)) = &mut j.body {
            x.status = Some(JobStatus {
                conditions: vec![JobCondition {
                    r#type: "Complete".into(),
                    status: "True".into(),
                    last_transition_time: "2026-01-01T00:00:00Z".into(),
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        let t0 = 1_767_225_600_000;
        let r = reconcile(&j, &[], t0 + 10_000, 500, &mut names());
        assert!(r.actions.is_empty());
        assert_eq!(r.requeue_after_ms, Some(20_000));
        let r = reconcile(&j, &[], t0 + 30_000, 500, &mut names());
        assert!(matches!(&r.actions[0], Action::Delete { key, .. } if key.name == "pi"));
    }
}
