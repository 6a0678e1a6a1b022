//! Per-kind semantics shared by the server (the authority) and the CLI: Kubernetes' defaults,
//! the checks of each kind's fields, and the split between spec and the status subresource.
//! Pure functions: no I/O, no clock.

use std::collections::HashSet;

use crate::error::ApiError;
use crate::pb::api::{
    object::Body, Container, LabelSelector, Object, PodSpec, PodTemplateSpec, Probe,
};
use crate::quantity::Quantity;
use crate::validation::{check_dns1123_label, check_label_key, check_label_value};

// ---------------------------------------------------------------------------------------------
// Status subresource

/// The body without its status: what `generation` and `apply` compare.
pub fn without_status(body: &Option<Body>) -> Option<Body> {
    let mut b = body.clone();
    match &mut b {
        Some(Body::Namespace(x)) => x.status = None,
        Some(Body::Pod(x)) => x.status = None,
        Some(Body::Service(x)) => x.status = None,
        Some(Body::Deployment(x)) => x.status = None,
        Some(Body::ReplicaSet(x)) => x.status = None,
        Some(Body::DaemonSet(x)) => x.status = None,
        Some(Body::StatefulSet(x)) => x.status = None,
        Some(Body::Job(x)) => x.status = None,
        Some(Body::CronJob(x)) => x.status = None,
        Some(Body::Node(x)) => x.status = None,
        Some(Body::HorizontalPodAutoscaler(x)) => x.status = None,
        _ => {}
    }
    b
}

/// Copy `from`'s status into `to` (same kind): a spec write never changes status.
pub fn keep_status(to: &mut Option<Body>, from: &Option<Body>) {
    match (to, from) {
        (Some(Body::Namespace(t)), Some(Body::Namespace(f))) => t.status = f.status.clone(),
        (Some(Body::Pod(t)), Some(Body::Pod(f))) => t.status = f.status.clone(),
        (Some(Body::Service(t)), Some(Body::Service(f))) => t.status = f.status.clone(),
        (Some(Body::Deployment(t)), Some(Body::Deployment(f))) => t.status = f.status.clone(),
        (Some(Body::ReplicaSet(t)), Some(Body::ReplicaSet(f))) => t.status = f.status.clone(),
        (Some(Body::DaemonSet(t)), Some(Body::DaemonSet(f))) => t.status = f.status,
        (Some(Body::StatefulSet(t)), Some(Body::StatefulSet(f))) => t.status = f.status.clone(),
        (Some(Body::Job(t)), Some(Body::Job(f))) => t.status = f.status.clone(),
        (Some(Body::CronJob(t)), Some(Body::CronJob(f))) => t.status = f.status.clone(),
        (Some(Body::Node(t)), Some(Body::Node(f))) => t.status = f.status.clone(),
        (Some(Body::HorizontalPodAutoscaler(t)), Some(Body::HorizontalPodAutoscaler(f))) => {
            t.status = f.status.clone()
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Defaults

/// Fill in what Kubernetes' API server defaults, so a stored object reads back complete and
/// `apply` of the same manifest compares equal.
pub fn apply_defaults(obj: &mut Object) {
    if let Some((_, true)) = crate::validation::kind_info(&obj.kind) {
        if obj.meta().namespace.is_empty() {
            obj.meta_mut().namespace = "default".into();
        }
    }
    match &mut obj.body {
        Some(Body::Secret(s)) => {
            if s.r#type.is_empty() {
                s.r#type = "Opaque".into();
            }
            for (k, v) in std::mem::take(&mut s.string_data) {
                s.data.insert(k, v.into_bytes());
            }
        }
        Some(Body::Pod(p)) => {
            if let Some(spec) = &mut p.spec {
                default_pod_spec(spec);
            }
        }
        Some(Body::Service(s)) => {
            let spec = s.spec.get_or_insert_with(Default::default);
            if spec.r#type.is_empty() {
                spec.r#type = "ClusterIP".into();
            }
            if spec.session_affinity.is_empty() {
                spec.session_affinity = "None".into();
            }
            for p in &mut spec.ports {
                if p.protocol.is_empty() {
                    p.protocol = "TCP".into();
                }
                if p.target_port.is_empty() {
                    p.target_port = p.port.to_string();
                }
            }
        }
        Some(Body::Deployment(d)) => {
            let spec = d.spec.get_or_insert_with(Default::default);
            spec.replicas.get_or_insert(1);
            spec.revision_history_limit.get_or_insert(10);
            spec.progress_deadline_seconds.get_or_insert(600);
            let st = spec.strategy.get_or_insert_with(Default::default);
            if st.r#type.is_empty() {
                st.r#type = "RollingUpdate".into();
            }
            if st.r#type == "RollingUpdate" {
                let ru = st.rolling_update.get_or_insert_with(Default::default);
                if ru.max_surge.is_empty() {
                    ru.max_surge = "25%".into();
                }
                if ru.max_unavailable.is_empty() {
                    ru.max_unavailable = "25%".into();
                }
            }
            default_template(&mut spec.template);
        }
        Some(Body::ReplicaSet(r)) => {
            let spec = r.spec.get_or_insert_with(Default::default);
            spec.replicas.get_or_insert(1);
            default_template(&mut spec.template);
        }
        Some(Body::DaemonSet(d)) => {
            let spec = d.spec.get_or_insert_with(Default::default);
            spec.revision_history_limit.get_or_insert(10);
            let st = spec.update_strategy.get_or_insert_with(Default::default);
            if st.r#type.is_empty() {
                st.r#type = "RollingUpdate".into();
            }
            if st.r#type == "RollingUpdate" {
                let ru = st.rolling_update.get_or_insert_with(Default::default);
                if ru.max_unavailable.is_empty() {
                    ru.max_unavailable = "1".into();
                }
                if ru.max_surge.is_empty() {
                    ru.max_surge = "0".into();
                }
            }
            default_template(&mut spec.template);
        }
        Some(Body::StatefulSet(x)) => {
            let spec = x.spec.get_or_insert_with(Default::default);
            spec.replicas.get_or_insert(1);
            spec.revision_history_limit.get_or_insert(10);
            if spec.pod_management_policy.is_empty() {
                spec.pod_management_policy = "OrderedReady".into();
            }
            let st = spec.update_strategy.get_or_insert_with(Default::default);
            if st.r#type.is_empty() {
                st.r#type = "RollingUpdate".into();
            }
            if st.r#type == "RollingUpdate" {
                st.rolling_update
                    .get_or_insert_with(Default::default)
                    .partition
                    .get_or_insert(0);
            }
            default_template(&mut spec.template);
        }
        Some(Body::Job(j)) => default_job_spec(j.spec.get_or_insert_with(Default::default)),
        Some(Body::CronJob(c)) => {
            let spec = c.spec.get_or_insert_with(Default::default);
            if spec.concurrency_policy.is_empty() {
                spec.concurrency_policy = "Allow".into();
            }
            spec.suspend.get_or_insert(false);
            spec.successful_jobs_history_limit.get_or_insert(3);
            spec.failed_jobs_history_limit.get_or_insert(1);
            if let Some(js) = spec.job_template.as_mut().and_then(|t| t.spec.as_mut()) {
                default_job_spec(js);
            }
        }
        Some(Body::Endpoints(e)) => {
            for p in e.subsets.iter_mut().flat_map(|s| s.ports.iter_mut()) {
                if p.protocol.is_empty() {
                    p.protocol = "TCP".into();
                }
            }
        }
        Some(Body::Event(e)) => {
            if e.r#type.is_empty() {
                e.r#type = "Normal".into();
            }
            if e.count == 0 {
                e.count = 1;
            }
        }
        Some(Body::HorizontalPodAutoscaler(h)) => {
            h.spec
                .get_or_insert_with(Default::default)
                .min_replicas
                .get_or_insert(1);
        }
        _ => {}
    }
}

/// A Job's pods never restart in place forever: its template keeps the user's restartPolicy
/// (OnFailure or Never, checked by validation) instead of the pod default `Always`.
fn default_job_spec(spec: &mut crate::pb::api::JobSpec) {
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
    }
    spec.parallelism.get_or_insert(1);
    spec.backoff_limit.get_or_insert(6);
    spec.suspend.get_or_insert(false);
    if spec.completion_mode.is_empty() {
        spec.completion_mode = "NonIndexed".into();
    }
    if let Some(ps) = spec.template.as_mut().and_then(|t| t.spec.as_mut()) {
        let policy = std::mem::take(&mut ps.restart_policy);
        default_pod_spec(ps);
        ps.restart_policy = policy;
    }
}

fn default_template(t: &mut Option<PodTemplateSpec>) {
    if let Some(spec) = t.as_mut().and_then(|t| t.spec.as_mut()) {
        default_pod_spec(spec);
    }
}

/// `imagePullPolicy` from the tag: `Always` for `:latest` or no tag, else `IfNotPresent`.
pub fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_probe(p: &mut Option<Probe>) {
    if let Some(p) = p {
        if p.timeout_seconds == 0 {
            p.timeout_seconds = 1;
        }
        if p.period_seconds == 0 {
            p.period_seconds = 10;
        }
        if p.success_threshold == 0 {
            p.success_threshold = 1;
        }
        if p.failure_threshold == 0 {
            p.failure_threshold = 3;
        }
        if let Some(h) = &mut p.http_get {
            if h.scheme.is_empty() {
                h.scheme = "HTTP".into();
            }
        }
    }
}

fn default_container(c: &mut Container) {
    if c.image_pull_policy.is_empty() {
        c.image_pull_policy = default_pull_policy(&c.image).into();
    }
    if c.termination_message_path.is_empty() {
        c.termination_message_path = "/dev/termination-log".into();
    }
    if c.termination_message_policy.is_empty() {
        c.termination_message_policy = "File".into();
    }
    for p in &mut c.ports {
        if p.protocol.is_empty() {
            p.protocol = "TCP".into();
        }
    }
    default_probe(&mut c.liveness_probe);
    default_probe(&mut c.readiness_probe);
    default_probe(&mut c.startup_probe);
}

pub fn default_pod_spec(s: &mut PodSpec) {
    if s.restart_policy.is_empty() {
        s.restart_policy = "Always".into();
    }
    if s.dns_policy.is_empty() {
        s.dns_policy = "ClusterFirst".into();
    }
    if s.scheduler_name.is_empty() {
        s.scheduler_name = "default-scheduler".into();
    }
    s.termination_grace_period_seconds.get_or_insert(30);
    s.containers.iter_mut().for_each(default_container);
    s.init_containers.iter_mut().for_each(default_container);
}

// ---------------------------------------------------------------------------------------------
// Validation

fn inv(path: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(path, msg)
}

/// Check the body of `obj` (its kind already known to match the body).
pub fn validate_body(obj: &Object) -> Result<(), ApiError> {
    match &obj.body {
        Some(Body::Namespace(_)) => check_dns1123_label("metadata.name", &obj.meta().name),
        Some(Body::Secret(s)) => {
            for k in s.data.keys().chain(s.string_data.keys()) {
                crate::validation::check_config_key(&format!("data[{k}]"), k)?;
            }
            Ok(())
        }
        Some(Body::Pod(p)) => match &p.spec {
            Some(spec) => validate_pod_spec("spec", spec),
            None => Err(inv("spec", "required field is missing")),
        },
        Some(Body::Service(s)) => {
            let Some(spec) = &s.spec else {
                return Err(inv("spec", "required field is missing"));
            };
            const TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
            if !spec.r#type.is_empty() && !TYPES.contains(&spec.r#type.as_str()) {
                return Err(inv(
                    "spec.type",
                    format!(
                        "unsupported value {:?}: supported values: {}",
                        spec.r#type,
                        TYPES.join(", ")
                    ),
                ));
            }
            let mut names = HashSet::new();
            for (i, p) in spec.ports.iter().enumerate() {
                let at = format!("spec.ports[{i}]");
                check_port(&format!("{at}.port"), p.port)?;
                check_protocol(&format!("{at}.protocol"), &p.protocol)?;
                if spec.ports.len() > 1 && p.name.is_empty() {
                    return Err(inv(
                        &format!("{at}.name"),
                        "required when a service has more than one port",
                    ));
                }
                if !p.name.is_empty() && !names.insert(p.name.as_str()) {
                    return Err(inv(
                        &format!("{at}.name"),
                        format!("duplicate value {:?}", p.name),
                    ));
                }
                if !p.target_port.is_empty() {
                    check_int_or_port_name(&format!("{at}.targetPort"), &p.target_port)?;
                }
            }
            for (k, v) in &spec.selector {
                check_label_key(&format!("spec.selector[{k}]"), k)?;
                check_label_value(&format!("spec.selector[{k}]"), v)?;
            }
            Ok(())
        }
        Some(Body::Deployment(d)) => {
            let Some(spec) = &d.spec else {
                return Err(inv("spec", "required field is missing"));
            };
            check_replicas("spec.replicas", spec.replicas)?;
            validate_selected_template(spec.selector.as_ref(), spec.template.as_ref())?;
            if let Some(st) = &spec.strategy {
                match st.r#type.as_str() {
                    "" | "RollingUpdate" => {
                        if let Some(ru) = &st.rolling_update {
                            let s = check_int_or_percent("spec.strategy.rollingUpdate.maxSurge", &ru.max_surge)?;
                            let u = check_int_or_percent("spec.strategy.rollingUpdate.maxUnavailable", &ru.max_unavailable)?;
                            if s == Some(0) && u == Some(0) {
                                return Err(inv("spec.strategy.rollingUpdate.maxUnavailable", "may not be 0 when maxSurge is 0"));
                            }
                        }
                    }
                    "Recreate" => {
                        if st.rolling_update.is_some() {
                            return Err(inv("spec.strategy.rollingUpdate", "may not be specified when strategy type is 'Recreate'"));
                        }
                    }
                    other => {
                        return Err(inv("spec.strategy.type", format!("unsupported value {other:?}: supported values: \"Recreate\", \"RollingUpdate\"")))
                    }
                }
            }
            Ok(())
        }
        Some(Body::ReplicaSet(r)) => {
            let Some(spec) = &r.spec else {
                return Err(inv("spec", "required field is missing"));
            };
            check_replicas("spec.replicas", spec.replicas)?;
            validate_selected_template(spec.selector.as_ref(), spec.template.as_ref())
        }
        Some(Body::DaemonSet(d)) => {
            let Some(spec) = &d.spec else {
                return Err(inv("spec", "required field is missing"));
            };
            validate_selected_template(spec.selector.as_ref(), spec.template.as_ref())?;
            if let Some(st) = &spec.update_strategy {
                if !["", "RollingUpdate", "OnDelete"].contains(&st.r#type.as_str()) {
                    return Err(inv("spec.updateStrategy.type", format!("unsupported value {:?}: supported values: \"OnDelete\", \"RollingUpdate\"", st.r#type)));
                }
                if let Some(ru) = &st.rolling_update {
                    check_int_or_percent(
                        "spec.updateStrategy.rollingUpdate.maxUnavailable",
                        &ru.max_unavailable,
                    )?;
                    check_int_or_percent(
                        "spec.updateStrategy.rollingUpdate.maxSurge",
                        &ru.max_surge,
                    )?;
                }
            }
            Ok(())
        }
        Some(Body::StatefulSet(x)) => {
            let Some(spec) = &x.spec else {
                return Err(inv("spec", "required field is missing"));
            };
            check_replicas("spec.replicas", spec.replicas)?;
            if !["", "OrderedReady", "Parallel"].contains(&spec.pod_management_policy.as_str()) {
                return Err(inv(
                    "spec.podManagementPolicy",
                    format!(
                        "unsupported value {:?}: supported values: \"OrderedReady\", \"Parallel\"",
                        spec.pod_management_policy
                    ),
                ));
            }
            if !spec.service_name.is_empty() {
                check_dns1123_label("spec.serviceName", &spec.service_name)?;
            }
            validate_selected_template(spec.selector.as_ref(), spec.template.as_ref())
        }
        Some(Body::Job(j)) => match &j.spec {
            Some(spec) => validate_job_spec("spec", spec),
            None => Err(inv("spec", "required field is missing")),
        },
        Some(Body::CronJob(c)) => {
            let Some(spec) = &c.spec else {
                return Err(inv("spec", "required field is missing"));
            };
            check_cron("spec.schedule", &spec.schedule)?;
            if !["", "Allow", "Forbid", "Replace"].contains(&spec.concurrency_policy.as_str()) {
                return Err(inv("spec.concurrencyPolicy", format!("unsupported value {:?}: supported values: \"Allow\", \"Forbid\", \"Replace\"", spec.concurrency_policy)));
            }
            if let Some(tz) = &spec.time_zone {
                let ok = !tz.is_empty()
                    && tz.len() <= 64
                    && tz
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
                if !ok {
                    return Err(inv("spec.timeZone", format!("unknown time zone {tz:?}")));
                }
            }
            for (f, v) in [
                (
                    "successfulJobsHistoryLimit",
                    spec.successful_jobs_history_limit,
                ),
                ("failedJobsHistoryLimit", spec.failed_jobs_history_limit),
            ] {
                if v.is_some_and(|v| v < 0) {
                    return Err(inv(
                        &format!("spec.{f}"),
                        "must be greater than or equal to 0",
                    ));
                }
            }
            match spec.job_template.as_ref().and_then(|t| t.spec.as_ref()) {
                Some(js) => validate_job_spec("spec.jobTemplate.spec", js),
                None => Err(inv("spec.jobTemplate.spec", "required field is missing")),
            }
        }
        Some(Body::Endpoints(e)) => {
            for (i, s) in e.subsets.iter().enumerate() {
                for (f, list) in [
                    ("addresses", &s.addresses),
                    ("notReadyAddresses", &s.not_ready_addresses),
                ] {
                    for (j, a) in list.iter().enumerate() {
                        if a.ip.parse::<std::net::IpAddr>().is_err() {
                            return Err(inv(
                                &format!("subsets[{i}].{f}[{j}].ip"),
                                format!("must be a valid IP address, got {:?}", a.ip),
                            ));
                        }
                    }
                }
                for (j, p) in s.ports.iter().enumerate() {
                    check_port(&format!("subsets[{i}].ports[{j}].port"), p.port)?;
                    check_protocol(&format!("subsets[{i}].ports[{j}].protocol"), &p.protocol)?;
                }
            }
            Ok(())
        }
        Some(Body::Node(n)) => {
            if let Some(spec) = &n.spec {
                for (i, t) in spec.taints.iter().enumerate() {
                    check_label_key(&format!("spec.taints[{i}].key"), &t.key)?;
                    check_label_value(&format!("spec.taints[{i}].value"), &t.value)?;
                    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&t.effect.as_str())
                    {
                        return Err(inv(&format!("spec.taints[{i}].effect"), format!("unsupported value {:?}: supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"", t.effect)));
                    }
                }
            }
            if let Some(st) = &n.status {
                check_quantities("status.capacity", &st.capacity)?;
                check_quantities("status.allocatable", &st.allocatable)?;
            }
            Ok(())
        }
        Some(Body::Lease(l)) => {
            if let Some(d) = l.spec.as_ref().and_then(|s| s.lease_duration_seconds) {
                if d <= 0 {
                    return Err(inv("spec.leaseDurationSeconds", "must be greater than 0"));
                }
            }
            Ok(())
        }
        Some(Body::Event(e)) => {
            let Some(o) = e
                .involved_object
                .as_ref()
                .filter(|o| !o.kind.is_empty() && !o.name.is_empty())
            else {
                return Err(inv("involvedObject", "kind and name are required"));
            };
            let _ = o;
            if !["", "Normal", "Warning"].contains(&e.r#type.as_str()) {
                return Err(inv(
                    "type",
                    format!(
                        "unsupported value {:?}: supported values: \"Normal\", \"Warning\"",
                        e.r#type
                    ),
                ));
            }
            Ok(())
        }
        Some(Body::HorizontalPodAutoscaler(h)) => {
            let Some(spec) = &h.spec else {
                return Err(inv("spec", "required field is missing"));
            };
            match &spec.scale_target_ref {
                Some(r) if !r.kind.is_empty() && !r.name.is_empty() => {}
                _ => return Err(inv("spec.scaleTargetRef", "kind and name are required")),
            }
            if spec.max_replicas < 1 {
                return Err(inv(
                    "spec.maxReplicas",
                    "must be greater than or equal to 1",
                ));
            }
            if let Some(min) = spec.min_replicas {
                if min < 1 || min > spec.max_replicas {
                    return Err(inv(
                        "spec.minReplicas",
                        format!("must be between 1 and maxReplicas ({})", spec.max_replicas),
                    ));
                }
            }
            for (i, m) in spec.metrics.iter().enumerate() {
                if m.r#type != "Resource" {
                    return Err(inv(
                        &format!("spec.metrics[{i}].type"),
                        format!(
                            "unsupported value {:?}: supported values: \"Resource\"",
                            m.r#type
                        ),
                    ));
                }
                let Some(r) = &m.resource else {
                    return Err(inv(
                        &format!("spec.metrics[{i}].resource"),
                        "required field is missing",
                    ));
                };
                if r.name.is_empty() {
                    return Err(inv(
                        &format!("spec.metrics[{i}].resource.name"),
                        "required field is missing",
                    ));
                }
                if let Some(t) = &r.target {
                    for (f, v) in [("value", &t.value), ("averageValue", &t.average_value)] {
                        if !v.is_empty() {
                            Quantity::parse(v).map_err(|e| {
                                inv(&format!("spec.metrics[{i}].resource.target.{f}"), e)
                            })?;
                        }
                    }
                }
            }
            Ok(())
        }
        Some(Body::ConfigMap(_)) | None => Ok(()),
    }
}

fn validate_job_spec(path: &str, spec: &crate::pb::api::JobSpec) -> Result<(), ApiError> {
    for (f, v) in [
        ("parallelism", spec.parallelism),
        ("completions", spec.completions),
        ("backoffLimit", spec.backoff_limit),
    ] {
        if v.is_some_and(|v| v < 0) {
            return Err(inv(
                &format!("{path}.{f}"),
                "must be greater than or equal to 0",
            ));
        }
    }
    if spec.active_deadline_seconds.is_some_and(|v| v <= 0) {
        return Err(inv(
            &format!("{path}.activeDeadlineSeconds"),
            "must be greater than 0",
        ));
    }
    if !["", "NonIndexed", "Indexed"].contains(&spec.completion_mode.as_str()) {
        return Err(inv(
            &format!("{path}.completionMode"),
            format!("unsupported value {:?}", spec.completion_mode),
        ));
    }
    let Some(t) = &spec.template else {
        return Err(inv(
            &format!("{path}.template"),
            "required field is missing",
        ));
    };
    let Some(ps) = &t.spec else {
        return Err(inv(
            &format!("{path}.template.spec"),
            "required field is missing",
        ));
    };
    if !["OnFailure", "Never"].contains(&ps.restart_policy.as_str()) {
        return Err(inv(
            &format!("{path}.template.spec.restartPolicy"),
            format!(
                "unsupported value {:?}: supported values: \"OnFailure\", \"Never\"",
                ps.restart_policy
            ),
        ));
    }
    if let Some(sel) = &spec.selector {
        let labels = t
            .metadata
            .as_ref()
            .map(|m| m.labels.clone())
            .unwrap_or_default();
        if !selector_matches(sel, &labels)? {
            return Err(inv(
                &format!("{path}.template.metadata.labels"),
                "`selector` does not match template `labels`",
            ));
        }
    }
    validate_pod_spec(&format!("{path}.template.spec"), ps)
}

/// A standard five-field cron schedule (minute hour day-of-month month day-of-week) with
/// `*`, lists, ranges, steps and month/weekday names, or a macro such as `@hourly`.
pub fn check_cron(path: &str, expr: &str) -> Result<(), ApiError> {
    let e = expr.trim();
    if e.is_empty() {
        return Err(inv(path, "required field is missing"));
    }
    if e.starts_with('@') {
        return match e {
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight"
            | "@hourly" => Ok(()),
            _ => Err(inv(path, format!("unrecognized descriptor {e:?}"))),
        };
    }
    let fields: Vec<&str> = e.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(inv(path, format!("expected exactly 5 fields (minute hour day-of-month month day-of-week), found {}: {e:?}", fields.len())));
    }
    const MONTHS: &[&str] = &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let specs: [(&str, u32, u32, &[&str], u32); 5] = [
        ("minute", 0, 59, &[], 0),
        ("hour", 0, 23, &[], 0),
        ("day-of-month", 1, 31, &[], 0),
        ("month", 1, 12, MONTHS, 1),
        ("day-of-week", 0, 7, DAYS, 0),
    ];
    for (field, (name, lo, hi, names, base)) in fields.iter().zip(specs) {
        let value = |s: &str| -> Option<u32> {
            s.parse::<u32>().ok().or_else(|| {
                names
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(s))
                    .map(|i| i as u32 + base)
            })
        };
        for part in field.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, st)) => (r, Some(st)),
                None => (part, None),
            };
            if let Some(st) = step {
                if !st.parse::<u32>().is_ok_and(|n| n > 0) {
                    return Err(inv(
                        path,
                        format!("{name} field: invalid step {st:?} in {e:?}"),
                    ));
                }
            }
            let ok = match range {
                "*" | "?" => true,
                r => match r.split_once('-') {
                    Some((a, b)) => {
                        matches!((value(a), value(b)), (Some(a), Some(b)) if a >= lo && b <= hi && a <= b)
                    }
                    None => value(r).is_some_and(|v| v >= lo && v <= hi),
                },
            };
            if !ok {
                return Err(inv(
                    path,
                    format!("{name} field: {part:?} is out of range {lo}-{hi} in {e:?}"),
                ));
            }
        }
    }
    Ok(())
}

fn check_replicas(path: &str, r: Option<i32>) -> Result<(), ApiError> {
    match r {
        Some(n) if n < 0 => Err(inv(
            path,
            format!("must be greater than or equal to 0, got {n}"),
        )),
        _ => Ok(()),
    }
}

/// A controller's selector must be set and select its own template's labels.
fn validate_selected_template(
    sel: Option<&LabelSelector>,
    template: Option<&PodTemplateSpec>,
) -> Result<(), ApiError> {
    let Some(sel) = sel.filter(|s| !s.match_labels.is_empty() || !s.match_expressions.is_empty())
    else {
        return Err(inv("spec.selector", "required field is missing"));
    };
    let Some(t) = template else {
        return Err(inv("spec.template", "required field is missing"));
    };
    let labels = t
        .metadata
        .as_ref()
        .map(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in &labels {
        check_label_key(&format!("spec.template.metadata.labels[{k}]"), k)?;
        check_label_value(&format!("spec.template.metadata.labels[{k}]"), v)?;
    }
    if !selector_matches(sel, &labels)? {
        return Err(inv(
            "spec.template.metadata.labels",
            "`selector` does not match template `labels`",
        ));
    }
    match &t.spec {
        Some(spec) => validate_pod_spec("spec.template.spec", spec),
        None => Err(inv("spec.template.spec", "required field is missing")),
    }
}

/// Whether a LabelSelector selects `labels`.
pub fn selector_matches(
    sel: &LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<bool, ApiError> {
    for (k, v) in &sel.match_labels {
        check_label_key(&format!("spec.selector.matchLabels[{k}]"), k)?;
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for (i, e) in sel.match_expressions.iter().enumerate() {
        let has = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => has.is_some_and(|v| e.values.contains(v)),
            "NotIn" => !has.is_some_and(|v| e.values.contains(v)),
            "Exists" => has.is_some(),
            "DoesNotExist" => has.is_none(),
            other => {
                return Err(inv(
                    &format!("spec.selector.matchExpressions[{i}].operator"),
                    format!("not a valid selector operator: {other:?}"),
                ))
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn check_port(path: &str, p: i32) -> Result<(), ApiError> {
    if !(1..=65535).contains(&p) {
        return Err(inv(
            path,
            format!("must be between 1 and 65535, inclusive, got {p}"),
        ));
    }
    Ok(())
}

fn check_protocol(path: &str, p: &str) -> Result<(), ApiError> {
    if !["", "TCP", "UDP", "SCTP"].contains(&p) {
        return Err(inv(
            path,
            format!("unsupported value {p:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
        ));
    }
    Ok(())
}

/// IntOrString port: a number in range, or an IANA service name (≤ 15 chars, a letter).
fn check_int_or_port_name(path: &str, v: &str) -> Result<(), ApiError> {
    if let Ok(n) = v.parse::<i32>() {
        return check_port(path, n);
    }
    let ok = v.len() <= 15
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && v.chars().any(|c| c.is_ascii_lowercase())
        && !v.starts_with('-')
        && !v.ends_with('-');
    if !ok {
        return Err(inv(
            path,
            format!("must be a port number or an IANA service name, got {v:?}"),
        ));
    }
    Ok(())
}

/// IntOrString count or percentage; returns the count when it is one.
fn check_int_or_percent(path: &str, v: &str) -> Result<Option<i64>, ApiError> {
    if v.is_empty() {
        return Ok(None);
    }
    if let Some(p) = v.strip_suffix('%') {
        return match p.parse::<u32>() {
            Ok(n) if n <= 100 => Ok(if n == 0 { Some(0) } else { None }),
            _ => Err(inv(path, format!("a valid percent string must be a numeric string followed by an ending '%' (0-100%), got {v:?}"))),
        };
    }
    match v.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(Some(n)),
        _ => Err(inv(
            path,
            format!("must be a non-negative integer or a percentage, got {v:?}"),
        )),
    }
}

fn check_quantities(
    path: &str,
    m: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, Quantity)>, ApiError> {
    let mut out = Vec::new();
    for (k, v) in m {
        let q = Quantity::parse(v).map_err(|e| inv(&format!("{path}.{k}"), e))?;
        if q.nanos < 0 {
            return Err(inv(
                &format!("{path}.{k}"),
                "must be greater than or equal to 0",
            ));
        }
        out.push((k.clone(), q));
    }
    Ok(out)
}

fn validate_probe(path: &str, p: &Probe) -> Result<(), ApiError> {
    let handlers = usize::from(p.exec.is_some())
        + usize::from(p.http_get.is_some())
        + usize::from(p.tcp_socket.is_some());
    if handlers != 1 {
        return Err(inv(
            path,
            "must specify exactly one handler: exec, httpGet or tcpSocket",
        ));
    }
    if let Some(h) = &p.http_get {
        check_int_or_port_name(&format!("{path}.httpGet.port"), &h.port)?;
    }
    if let Some(t) = &p.tcp_socket {
        check_int_or_port_name(&format!("{path}.tcpSocket.port"), &t.port)?;
    }
    for (f, v) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        if v < 0 {
            return Err(inv(
                &format!("{path}.{f}"),
                "must be greater than or equal to 0",
            ));
        }
    }
    Ok(())
}

pub fn validate_pod_spec(path: &str, s: &PodSpec) -> Result<(), ApiError> {
    if s.containers.is_empty() {
        return Err(inv(
            &format!("{path}.containers"),
            "required value: a pod needs at least one container",
        ));
    }
    if !["", "Always", "OnFailure", "Never"].contains(&s.restart_policy.as_str()) {
        return Err(inv(
            &format!("{path}.restartPolicy"),
            format!(
                "unsupported value {:?}: supported values: \"Always\", \"OnFailure\", \"Never\"",
                s.restart_policy
            ),
        ));
    }
    let mut volumes = HashSet::new();
    for (i, v) in s.volumes.iter().enumerate() {
        let at = format!("{path}.volumes[{i}]");
        check_dns1123_label(&format!("{at}.name"), &v.name)?;
        if !volumes.insert(v.name.as_str()) {
            return Err(inv(
                &format!("{at}.name"),
                format!("duplicate value {:?}", v.name),
            ));
        }
        let sources = usize::from(v.empty_dir.is_some())
            + usize::from(v.host_path.is_some())
            + usize::from(v.config_map.is_some())
            + usize::from(v.secret.is_some());
        if sources != 1 {
            return Err(inv(
                &at,
                "must specify exactly one of emptyDir, hostPath, configMap, secret",
            ));
        }
        if let Some(e) = &v.empty_dir {
            if !e.size_limit.is_empty() {
                Quantity::parse(&e.size_limit)
                    .map_err(|e| inv(&format!("{at}.emptyDir.sizeLimit"), e))?;
            }
        }
        if let Some(h) = &v.host_path {
            if !h.path.starts_with('/') {
                return Err(inv(
                    &format!("{at}.hostPath.path"),
                    "must be an absolute path",
                ));
            }
        }
        let projected = v
            .config_map
            .as_ref()
            .map(|c| ("configMap", c.default_mode, &c.items))
            .or(v
                .secret
                .as_ref()
                .map(|s| ("secret", s.default_mode, &s.items)));
        if let Some((src, default_mode, items)) = projected {
            let mode_ok = |m: Option<i32>| m.is_none_or(|m| (0..=0o777).contains(&m));
            if !mode_ok(default_mode) {
                return Err(inv(
                    &format!("{at}.{src}.defaultMode"),
                    "must be a number between 0 and 0777 (octal), both inclusive",
                ));
            }
            for (j, it) in items.iter().enumerate() {
                let ip = format!("{at}.{src}.items[{j}]");
                if !mode_ok(it.mode) {
                    return Err(inv(
                        &format!("{ip}.mode"),
                        "must be a number between 0 and 0777 (octal), both inclusive",
                    ));
                }
                let p = std::path::Path::new(&it.path);
                if it.path.is_empty()
                    || p.components()
                        .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err(inv(
                        &format!("{ip}.path"),
                        "must be a relative path without '..'",
                    ));
                }
            }
        }
    }
    let mut names = HashSet::new();
    let all = s
        .init_containers
        .iter()
        .map(|c| ("initContainers", c))
        .enumerate()
        .map(|(i, (f, c))| (format!("{path}.{f}[{i}]"), c))
        .chain(
            s.containers
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("{path}.containers[{i}]"), c)),
        );
    for (at, c) in all {
        check_dns1123_label(&format!("{at}.name"), &c.name)?;
        if !names.insert(c.name.as_str()) {
            return Err(inv(
                &format!("{at}.name"),
                format!("duplicate value {:?}", c.name),
            ));
        }
        if c.image.trim().is_empty() {
            return Err(inv(&format!("{at}.image"), "required field is missing"));
        }
        if !["", "Always", "IfNotPresent", "Never"].contains(&c.image_pull_policy.as_str()) {
            return Err(inv(&format!("{at}.imagePullPolicy"), format!("unsupported value {:?}: supported values: \"Always\", \"IfNotPresent\", \"Never\"", c.image_pull_policy)));
        }
        let mut ports = HashSet::new();
        for (j, p) in c.ports.iter().enumerate() {
            let pa = format!("{at}.ports[{j}]");
            check_port(&format!("{pa}.containerPort"), p.container_port)?;
            if p.host_port != 0 {
                check_port(&format!("{pa}.hostPort"), p.host_port)?;
            }
            check_protocol(&format!("{pa}.protocol"), &p.protocol)?;
            if !p.name.is_empty() {
                check_int_or_port_name(&format!("{pa}.name"), &p.name)?;
                if p.name.parse::<i32>().is_ok() || !ports.insert(p.name.as_str()) {
                    return Err(inv(
                        &format!("{pa}.name"),
                        format!("duplicate or numeric port name {:?}", p.name),
                    ));
                }
            }
        }
        if let Some(r) = &c.resources {
            let limits = check_quantities(&format!("{at}.resources.limits"), &r.limits)?;
            let requests = check_quantities(&format!("{at}.resources.requests"), &r.requests)?;
            for (k, req) in &requests {
                if let Some((_, lim)) = limits.iter().find(|(lk, _)| lk == k) {
                    if req > lim {
                        return Err(inv(
                            &format!("{at}.resources.requests.{k}"),
                            format!("must be less than or equal to {k} limit of {}", r.limits[k]),
                        ));
                    }
                }
            }
        }
        for (j, e) in c.env.iter().enumerate() {
            if e.name.is_empty() {
                return Err(inv(
                    &format!("{at}.env[{j}].name"),
                    "required field is missing",
                ));
            }
            if let Some(src) = &e.value_from {
                if !e.value.is_empty() {
                    return Err(inv(
                        &format!("{at}.env[{j}].valueFrom"),
                        "may not be specified when `value` is not empty",
                    ));
                }
                let n = usize::from(src.config_map_key_ref.is_some())
                    + usize::from(src.secret_key_ref.is_some())
                    + usize::from(src.field_ref.is_some());
                if n != 1 {
                    return Err(inv(
                        &format!("{at}.env[{j}].valueFrom"),
                        "must specify exactly one of configMapKeyRef, secretKeyRef, fieldRef",
                    ));
                }
            }
        }
        for (j, m) in c.volume_mounts.iter().enumerate() {
            if !volumes.contains(m.name.as_str()) {
                return Err(inv(
                    &format!("{at}.volumeMounts[{j}].name"),
                    format!("not found: no volume named {:?}", m.name),
                ));
            }
            if !m.mount_path.starts_with('/') {
                return Err(inv(
                    &format!("{at}.volumeMounts[{j}].mountPath"),
                    "must be an absolute path",
                ));
            }
        }
        for (f, p) in [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            if let Some(p) = p {
                validate_probe(&format!("{at}.{f}"), p)?;
            }
        }
    }
    for (i, t) in s.tolerations.iter().enumerate() {
        let at = format!("{path}.tolerations[{i}]");
        if !["", "Exists", "Equal"].contains(&t.operator.as_str()) {
            return Err(inv(
                &format!("{at}.operator"),
                format!("unsupported value {:?}", t.operator),
            ));
        }
        if !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&t.effect.as_str()) {
            return Err(inv(
                &format!("{at}.effect"),
                format!("unsupported value {:?}", t.effect),
            ));
        }
    }
    for (k, v) in &s.node_selector {
        check_label_key(&format!("{path}.nodeSelector[{k}]"), k)?;
        check_label_value(&format!("{path}.nodeSelector[{k}]"), v)?;
    }
    if let Some(g) = s.termination_grace_period_seconds {
        if g < 0 {
            return Err(inv(
                &format!("{path}.terminationGracePeriodSeconds"),
                "must be greater than or equal to 0",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_follows_the_tag() {
        assert_eq!(default_pull_policy("nginx"), "Always");
        assert_eq!(default_pull_policy("nginx:latest"), "Always");
        assert_eq!(default_pull_policy("nginx:1.7.9"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/nginx"), "Always");
        assert_eq!(
            default_pull_policy("localhost:5000/nginx:1"),
            "IfNotPresent"
        );
        assert_eq!(default_pull_policy("nginx@sha256:abc"), "IfNotPresent");
    }

    #[test]
    fn cron_schedules() {
        for ok in [
            "*/5 * * * *",
            "0 3 * * 1-5",
            "30 2 1,15 * *",
            "0 0 * JAN,jul sun",
            "@hourly",
            "0 9-17/2 * * mon-fri",
        ] {
            assert!(check_cron("s", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "*/0 * * * *",
            "@sometimes",
            "a b c d e",
        ] {
            assert!(check_cron("s", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn percent_and_counts() {
        assert_eq!(check_int_or_percent("p", "25%").unwrap(), None);
        assert_eq!(check_int_or_percent("p", "0%").unwrap(), Some(0));
        assert_eq!(check_int_or_percent("p", "3").unwrap(), Some(3));
        assert!(check_int_or_percent("p", "101%").is_err());
        assert!(check_int_or_percent("p", "x").is_err());
    }
}
