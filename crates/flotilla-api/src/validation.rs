//! Name, label and object checks shared by the server (the authority) and the CLI (early
//! feedback). Each error names the field path at fault.

use crate::error::ApiError;
use crate::pb::api::{object::Body, Object};

/// Kinds the store accepts today, with their apiVersion and whether they are namespaced.
pub const KINDS: &[(&str, &str, bool)] = &[
    ("ConfigMap", "v1", true),
    ("Namespace", "v1", false),
    ("Secret", "v1", true),
    ("Pod", "v1", true),
    ("Service", "v1", true),
    ("Deployment", "apps/v1", true),
    ("ReplicaSet", "apps/v1", true),
    ("DaemonSet", "apps/v1", true),
    ("StatefulSet", "apps/v1", true),
    ("Job", "batch/v1", true),
    ("CronJob", "batch/v1", true),
    ("Endpoints", "v1", true),
    ("Node", "v1", false),
    ("Lease", "coordination.k8s.io/v1", true),
    ("Event", "v1", true),
    ("HorizontalPodAutoscaler", "autoscaling/v2", true),
];

/// The kind a CLI resource name means: `configmap`, `configmaps`, `cm`, `ConfigMap`.
pub fn resolve_kind(name: &str) -> Option<&'static str> {
    let n = name.to_ascii_lowercase();
    let n = n.split('.').next().unwrap_or("");
    match n {
        "configmap" | "configmaps" | "cm" => Some("ConfigMap"),
        "namespace" | "namespaces" | "ns" => Some("Namespace"),
        "secret" | "secrets" => Some("Secret"),
        "pod" | "pods" | "po" => Some("Pod"),
        "service" | "services" | "svc" => Some("Service"),
        "deployment" | "deployments" | "deploy" => Some("Deployment"),
        "replicaset" | "replicasets" | "rs" => Some("ReplicaSet"),
        "daemonset" | "daemonsets" | "ds" => Some("DaemonSet"),
        "statefulset" | "statefulsets" | "sts" => Some("StatefulSet"),
        "job" | "jobs" => Some("Job"),
        "cronjob" | "cronjobs" | "cj" => Some("CronJob"),
        "endpoints" | "ep" => Some("Endpoints"),
        "node" | "nodes" | "no" => Some("Node"),
        "lease" | "leases" => Some("Lease"),
        "event" | "events" | "ev" => Some("Event"),
        "horizontalpodautoscaler" | "horizontalpodautoscalers" | "hpa" => {
            Some("HorizontalPodAutoscaler")
        }
        _ => None,
    }
}

pub fn kind_info(kind: &str) -> Option<(&'static str, bool)> {
    KINDS
        .iter()
        .find(|(k, _, _)| *k == kind)
        .map(|(_, v, ns)| (*v, *ns))
}

/// DNS-1123 subdomain: lowercase alphanumerics, '-' and '.', at most 253 characters,
/// starting and ending with an alphanumeric.
pub fn check_dns1123_subdomain(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if value.len() > 253 {
        return Err(ApiError::invalid(
            field,
            format!("must be no more than 253 characters, got {}", value.len()),
        ));
    }
    for label in value.split('.') {
        check_dns1123_label_chars(field, value, label)?;
    }
    Ok(())
}

/// DNS-1123 label (namespaces): at most 63 characters, no dots.
pub fn check_dns1123_label(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if value.len() > 63 {
        return Err(ApiError::invalid(
            field,
            format!("must be no more than 63 characters, got {}", value.len()),
        ));
    }
    check_dns1123_label_chars(field, value, value)
}

fn check_dns1123_label_chars(field: &str, whole: &str, label: &str) -> Result<(), ApiError> {
    let ok_edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_body = label
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok_body || !ok_edge(label.chars().next()) || !ok_edge(label.chars().last()) {
        return Err(ApiError::invalid(
            field,
            format!(
                "invalid value {whole:?}: a lowercase RFC 1123 name must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ));
    }
    Ok(())
}

/// Label keys: an optional DNS subdomain prefix and '/', then a name of at most 63 characters
/// of alphanumerics, '-', '_' and '.', starting and ending with an alphanumeric.
pub fn check_label_key(field: &str, key: &str) -> Result<(), ApiError> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        check_dns1123_subdomain(field, p)?;
    }
    if name.is_empty() || name.len() > 63 || !qualified_chars(name) {
        return Err(ApiError::invalid(
            field,
            format!("invalid label key {key:?}: name part must be 1-63 characters of [A-Za-z0-9_.-], starting and ending with an alphanumeric"),
        ));
    }
    Ok(())
}

pub fn check_label_value(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 || !qualified_chars(value) {
        return Err(ApiError::invalid(
            field,
            format!("invalid label value {value:?}: must be at most 63 characters of [A-Za-z0-9_.-], starting and ending with an alphanumeric"),
        ));
    }
    Ok(())
}

fn qualified_chars(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// ConfigMap data keys: [-._a-zA-Z0-9]+, at most 253 characters.
pub fn check_config_key(field: &str, key: &str) -> Result<(), ApiError> {
    if key.is_empty()
        || key.len() > 253
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(ApiError::invalid(
            field,
            format!("invalid key {key:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

/// Checks an object as a client submits it (before the server stamps uid, revision, times).
pub fn validate_object(obj: &Object) -> Result<(), ApiError> {
    if obj.kind.is_empty() {
        return Err(ApiError::invalid("kind", "must be set"));
    }
    let Some((api_version, namespaced)) = kind_info(&obj.kind) else {
        let known: Vec<_> = KINDS.iter().map(|(k, _, _)| *k).collect();
        return Err(ApiError::invalid(
            "kind",
            format!(
                "unsupported kind {:?}; supported: {}",
                obj.kind,
                known.join(", ")
            ),
        ));
    };
    if obj.api_version != api_version {
        return Err(ApiError::invalid(
            "apiVersion",
            format!(
                "{} is served as apiVersion {api_version:?}, got {:?}",
                obj.kind, obj.api_version
            ),
        ));
    }
    let Some(meta) = obj.metadata.as_ref() else {
        return Err(ApiError::invalid("metadata", "must be set"));
    };
    check_dns1123_subdomain("metadata.name", &meta.name)?;
    if namespaced {
        check_dns1123_label("metadata.namespace", &meta.namespace)?;
    } else if !meta.namespace.is_empty() {
        return Err(ApiError::invalid(
            "metadata.namespace",
            format!("{} is not namespaced", obj.kind),
        ));
    }
    for (k, v) in &meta.labels {
        check_label_key(&format!("metadata.labels[{k}]"), k)?;
        check_label_value(&format!("metadata.labels[{k}]"), v)?;
    }
    for k in meta.annotations.keys() {
        check_label_key(&format!("metadata.annotations[{k}]"), k)?;
    }
    let body_kind = match &obj.body {
        Some(Body::ConfigMap(cm)) => {
            for k in cm.data.keys() {
                check_config_key(&format!("data[{k}]"), k)?;
            }
            for k in cm.binary_data.keys() {
                check_config_key(&format!("binaryData[{k}]"), k)?;
                if cm.data.contains_key(k) {
                    return Err(ApiError::invalid(
                        format!("binaryData[{k}]"),
                        "duplicate of a key in data",
                    ));
                }
            }
            "ConfigMap"
        }
        Some(Body::Namespace(_)) => "Namespace",
        Some(Body::Secret(_)) => "Secret",
        Some(Body::Pod(_)) => "Pod",
        Some(Body::Service(_)) => "Service",
        Some(Body::Deployment(_)) => "Deployment",
        Some(Body::ReplicaSet(_)) => "ReplicaSet",
        Some(Body::DaemonSet(_)) => "DaemonSet",
        Some(Body::StatefulSet(_)) => "StatefulSet",
        Some(Body::Job(_)) => "Job",
        Some(Body::CronJob(_)) => "CronJob",
        Some(Body::Endpoints(_)) => "Endpoints",
        Some(Body::Node(_)) => "Node",
        Some(Body::Lease(_)) => "Lease",
        Some(Body::Event(_)) => "Event",
        Some(Body::HorizontalPodAutoscaler(_)) => "HorizontalPodAutoscaler",
        None => {
            return Err(ApiError::invalid(
                "kind",
                format!("{} object carries no {} body", obj.kind, obj.kind),
            ))
        }
    };
    if body_kind != obj.kind {
        return Err(ApiError::invalid(
            "kind",
            format!(
                "kind {} does not match the object's {body_kind} body",
                obj.kind
            ),
        ));
    }
    crate::kinds::validate_body(obj)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(check_dns1123_subdomain("n", "web-1.example").is_ok());
        assert!(check_dns1123_subdomain("n", "Web").is_err());
        assert!(check_dns1123_subdomain("n", "-a").is_err());
        assert!(check_dns1123_subdomain("n", "a..b").is_err());
        assert!(check_dns1123_subdomain("n", &"a".repeat(254)).is_err());
        assert!(check_dns1123_label("ns", "a.b").is_err());
        let e = check_dns1123_subdomain("metadata.name", "Bad_Name").unwrap_err();
        assert!(
            e.message
                .starts_with("metadata.name: invalid value \"Bad_Name\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn label_keys_and_values() {
        assert!(check_label_key("l", "app").is_ok());
        assert!(check_label_key("l", "example.com/tier").is_ok());
        assert!(check_label_key("l", "bad key").is_err());
        assert!(check_label_key("l", "Example.com/x").is_err());
        assert!(check_label_value("l", "").is_ok());
        assert!(check_label_value("l", "v1.2_x").is_ok());
        assert!(check_label_value("l", "-x").is_err());
    }
}
