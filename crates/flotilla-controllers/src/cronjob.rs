//! CronJob: create a Job from the template at each time the schedule names (in `timeZone`,
//! UTC by default), honouring `concurrencyPolicy` (Allow, Forbid, Replace),
//! `startingDeadlineSeconds`, `suspend` and the history limits. The time comes in as an
//! argument, so tests run it on any clock.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use flotilla_api::pb::api::{
    object::Body, Job, JobTemplateSpec, Object, ObjectMeta, ObjectReference,
};

use crate::common::{controller_ref, format_time, parse_time_ms, Action, Reconciled};

/// Missed times looked at, at most (Kubernetes gives up after 100).
const MAX_MISSED: usize = 100;

/// The schedule's times in (`after_ms`, `until_ms`], at most `max`, and the first one after
/// `until_ms`.
pub fn schedule_times(
    schedule: &str,
    time_zone: Option<&str>,
    after_ms: i64,
    until_ms: i64,
    max: usize,
) -> Result<(Vec<i64>, Option<i64>), String> {
    let cron =
        croner::Cron::from_str(schedule).map_err(|e| format!("schedule {schedule:?}: {e}"))?;
    let tz: chrono_tz::Tz = match time_zone {
        None | Some("") => chrono_tz::UTC,
        Some(z) => z.parse().map_err(|_| format!("unknown time zone {z:?}"))?,
    };
    let start: DateTime<Utc> = Utc
        .timestamp_millis_opt(after_ms)
        .single()
        .ok_or("time out of range")?;
    let mut t = start.with_timezone(&tz);
    let mut times = Vec::new();
    loop {
        let next = cron
            .find_next_occurrence(&t, false)
            .map_err(|e| format!("schedule {schedule:?}: {e}"))?;
        let ms = next.timestamp_millis();
        if ms > until_ms {
            return Ok((times, Some(ms)));
        }
        if times.len() >= max {
            return Ok((times, Some(ms)));
        }
        times.push(ms);
        t = next;
    }
}

fn job_finished(o: &Object) -> Option<bool> {
    let Some(Body::Job(j)) = &o.body else {
        return None;
    };
    let st = j.status.as_ref()?;
    st.conditions
        .iter()
        .find(|c| (c.r#type == "Complete" || c.r#type == "Failed") && c.status == "True")
        .map(|c| c.r#type == "Complete")
}

fn job_from_template(cj: &Object, t: &JobTemplateSpec, scheduled_ms: i64) -> Object {
    let tm = t.metadata.clone().unwrap_or_default();
    let mut annotations = tm.annotations;
    annotations.insert(
        "batch.kubernetes.io/cronjob-scheduled-timestamp".into(),
        format_time(scheduled_ms),
    );
    Object {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        metadata: Some(ObjectMeta {
            // As Kubernetes: the scheduled time in minutes, so one time makes one Job.
            name: format!("{}-{}", cj.meta().name, scheduled_ms / 60_000),
            namespace: cj.meta().namespace.clone(),
            labels: tm.labels,
            annotations,
            owner_references: vec![controller_ref(cj)],
            ..Default::default()
        }),
        body: Some(Body::Job(Job {
            spec: t.spec.clone(),
            status: None,
        })),
    }
}

/// Reconcile a CronJob against the Jobs it controls, at `now_ms`.
pub fn reconcile(cj: &Object, jobs: &[&Object], now_ms: i64) -> Reconciled {
    let mut out = Reconciled::default();
    let Some(Body::CronJob(c)) = &cj.body else {
        return out;
    };
    if cj.meta().deletion_timestamp_ms.is_some() {
        return out;
    }
    let spec = c.spec.clone().unwrap_or_default();
    let old = c.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let active: Vec<&Object> = jobs
        .iter()
        .copied()
        .filter(|j| job_finished(j).is_none() && j.meta().deletion_timestamp_ms.is_none())
        .collect();
    st.active = active
        .iter()
        .map(|j| ObjectReference {
            kind: "Job".into(),
            namespace: j.meta().namespace.clone(),
            name: j.meta().name.clone(),
            uid: j.meta().uid.clone(),
            api_version: "batch/v1".into(),
            ..Default::default()
        })
        .collect();
    if let Some(last_ok) = jobs
        .iter()
        .filter(|j| job_finished(j) == Some(true))
        .filter_map(|j| match &j.body {
            Some(Body::Job(x)) => x.status.as_ref().map(|s| s.completion_time.clone()),
            _ => None,
        })
        .max()
    {
        st.last_successful_time = last_ok;
    }

    // History: finished Jobs beyond the limits go, oldest first.
    for (ok, limit) in [
        (true, spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&&Object> = jobs
            .iter()
            .filter(|j| job_finished(j) == Some(ok))
            .collect();
        done.sort_by_key(|j| j.meta().creation_timestamp_ms);
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        for j in &done[..extra] {
            out.actions.push(Action::Delete {
                key: j.key(),
                uid: j.meta().uid.clone(),
            });
        }
    }

    if !spec.suspend.unwrap_or(false) {
        let since =
            parse_time_ms(&old.last_schedule_time).unwrap_or(cj.meta().creation_timestamp_ms);
        match schedule_times(
            &spec.schedule,
            spec.time_zone.as_deref(),
            since,
            now_ms,
            MAX_MISSED,
        ) {
            Err(e) => out.event(cj, "Warning", "InvalidSchedule", e),
            Ok((missed, next)) => {
                if let Some(n) = next {
                    out.requeue(n - now_ms);
                }
                // Only the most recent missed time runs; older ones are skipped, as Kubernetes.
                if let Some(&t) = missed.last() {
                    let too_late = spec
                        .starting_deadline_seconds
                        .is_some_and(|d| now_ms > t.saturating_add(d.max(0).saturating_mul(1000)));
                    let policy = spec.concurrency_policy.as_str();
                    if too_late {
                        out.event(
                            cj,
                            "Warning",
                            "MissSchedule",
                            format!("Missed scheduled time to start a job: {}", format_time(t)),
                        );
                        st.last_schedule_time = format_time(t);
                    } else if policy == "Forbid" && !active.is_empty() {
                        // Wait: the time stays due until the running Job ends.
                    } else if let Some(t_spec) = &spec.job_template {
                        if policy == "Replace" {
                            for j in &active {
                                out.event(
                                    cj,
                                    "Normal",
                                    "SuccessfulDelete",
                                    format!("Deleted job {}", j.meta().name),
                                );
                                out.actions.push(Action::Delete {
                                    key: j.key(),
                                    uid: j.meta().uid.clone(),
                                });
                            }
                        }
                        let job = job_from_template(cj, t_spec, t);
                        out.event(
                            cj,
                            "Normal",
                            "SuccessfulCreate",
                            format!("Created job {}", job.meta().name),
                        );
                        out.actions.push(Action::Create(job));
                        st.last_schedule_time = format_time(t);
                    }
                }
            }
        }
    }
    if st != old {
        let mut o = cj.clone();
        if let Some(Body::CronJob(x)) = &mut o.body {
            x.status = Some(st);
        }
        out.actions.push(Action::UpdateStatus(o));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cj(schedule: &str, extra: &str) -> Object {
        let mut o = flotilla_api::manifest::parse_manifests(
            "t",
            &format!("apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: tick}}\nspec:\n  schedule: \"{schedule}\"\n{extra}  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{{name: c, image: busybox}}]\n"),
        )
        .unwrap()
        .remove(0)
        .object;
        o.meta_mut().uid = "cj-uid".into();
        o
    }

    // 2026-01-01T00:00:00Z
    const T0: i64 = 1_767_225_600_000;

    fn created(r: &Reconciled) -> Vec<String> {
        r.actions
            .iter()
            .filter_map(|a| match a {
                Action::Create(o) => Some(o.meta().name.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn schedules_in_a_time_zone() {
        // 09:00 in Berlin is 08:00 UTC in January.
        let (times, next) =
            schedule_times("0 9 * * *", Some("Europe/Berlin"), T0, T0 + 86_400_000, 10).unwrap();
        assert_eq!(times, vec![T0 + 8 * 3_600_000]);
        assert_eq!(next, Some(T0 + 32 * 3_600_000));
        assert!(schedule_times("0 9 * * *", Some("Mars/Olympus"), T0, T0, 1).is_err());
    }

    #[test]
    fn fires_at_each_scheduled_time_on_an_injected_clock() {
        let mut c = cj("*/5 * * * *", "");
        c.meta_mut().creation_timestamp_ms = T0;
        let r = reconcile(&c, &[], T0 + 60_000);
        assert!(created(&r).is_empty());
        assert_eq!(r.requeue_after_ms, Some(240_000));
        let r = reconcile(&c, &[], T0 + 300_000);
        assert_eq!(
            created(&r),
            vec![format!("tick-{}", (T0 + 300_000) / 60_000)]
        );
        let Some(Action::UpdateStatus(s)) = r.actions.last() else {
            panic!()
        };
        let Some(Body::CronJob(x)) = &s.body else {
            panic!()
        };
        assert_eq!(
            x.status.as_ref().unwrap().last_schedule_time,
            "2026-01-01T00:05:00Z"
        );
    }

    #[test]
    fn forbid_waits_for_the_running_job_and_replace_replaces_it() {
        let mut c = cj("* * * * *", "  concurrencyPolicy: Forbid\n");
        c.meta_mut().creation_timestamp_ms = T0;
        let first = reconcile(&c, &[], T0 + 60_000);
        let Action::Create(running) = first
            .actions
            .iter()
            .find(|a| matches!(a, Action::Create(_)))
            .unwrap()
            .clone()
        else {
            panic!()
        };
        let r = reconcile(&c, &[&running], T0 + 120_000);
        assert!(created(&r).is_empty(), "Forbid with a Job running");
        let mut c = cj("* * * * *", "  concurrencyPolicy: Replace\n");
        c.meta_mut().creation_timestamp_ms = T0;
        let r = reconcile(&c, &[&running], T0 + 120_000);
        assert_eq!(created(&r).len(), 1);
        assert!(r
            .actions
            .iter()
            .any(|a| matches!(a, Action::Delete { key, .. } if key.name == running.meta().name)));
    }
}
