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
        _ => {}
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
        Some(Body::ConfigMap(_)) | None => Ok(()),
    }
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
    fn percent_and_counts() {
        assert_eq!(check_int_or_percent("p", "25%").unwrap(), None);
        assert_eq!(check_int_or_percent("p", "0%").unwrap(), Some(0));
        assert_eq!(check_int_or_percent("p", "3").unwrap(), Some(3));
        assert!(check_int_or_percent("p", "101%").is_err());
        assert!(check_int_or_percent("p", "x").is_err());
    }
}
