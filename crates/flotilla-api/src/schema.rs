//! Manifest JSON ⇄ object bodies, driven by the descriptors of `proto/` (prost-reflect), so the
//! proto files stay the one schema: a field exists in a manifest exactly when it exists there,
//! under its Kubernetes (lowerCamelCase or `json_name`) spelling.
//!
//! Two Kubernetes conventions protobuf's JSON mapping lacks are handled around it: `null`
//! means "not set", and IntOrString fields (`maxSurge: 1` or `"25%"`) are strings in proto.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};
use serde_json::{Map, Value};

use crate::pb::api::object::Body;

static POOL: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| {
    DescriptorPool::decode(
        include_bytes!(concat!(env!("OUT_DIR"), "/flotilla_descriptor.bin")).as_ref(),
    )
    .map_err(|e| e.to_string())
});

/// IntOrString fields, by JSON name; `port` only inside these parents.
const INT_OR_STRING: &[&str] = &["maxSurge", "maxUnavailable", "targetPort"];
const PORT_PARENTS: &[&str] = &["httpGet", "tcpSocket"];

/// A field error: (path, message).
pub type FieldErr = (String, String);

macro_rules! kinds {
    ($($kind:literal => $variant:ident),* $(,)?) => {
        fn message_name(kind: &str) -> Option<&'static str> {
            match kind {
                $($kind => Some(concat!("flotilla.api.v1.", stringify!($variant))),)*
                _ => None,
            }
        }

        fn body_from_bytes(kind: &str, bytes: &[u8]) -> Result<Body, prost::DecodeError> {
            Ok(match kind {
                $($kind => Body::$variant(Message::decode(bytes)?),)*
                // Unreachable: callers look the kind up in the same table first.
                _ => Body::ConfigMap(Default::default()),
            })
        }

        fn body_parts(body: &Body) -> (&'static str, Vec<u8>) {
            match body {
                $(Body::$variant(b) => (concat!("flotilla.api.v1.", stringify!($variant)), b.encode_to_vec()),)*
            }
        }
    };
}

kinds! {
    "ConfigMap" => ConfigMap,
    "Namespace" => Namespace,
    "Secret" => Secret,
    "Pod" => Pod,
    "Service" => Service,
    "Deployment" => Deployment,
    "ReplicaSet" => ReplicaSet,
    "DaemonSet" => DaemonSet,
    "StatefulSet" => StatefulSet,
    "Job" => Job,
    "CronJob" => CronJob,
    "Endpoints" => Endpoints,
    "Node" => Node,
    "Lease" => Lease,
    "Event" => Event,
    "HorizontalPodAutoscaler" => HorizontalPodAutoscaler,
}

fn pool() -> Result<&'static DescriptorPool, FieldErr> {
    POOL.as_ref().map_err(|e| {
        (
            "(schema)".to_string(),
            format!("built-in schema unreadable: {e}"),
        )
    })
}

/// The body of a `kind` object from the manifest's top-level fields other than `apiVersion`,
/// `kind` and `metadata`. Unknown fields and wrong types are errors naming their path.
pub fn body_from_json(kind: &str, mut fields: Value) -> Result<Body, FieldErr> {
    let name = message_name(kind)
        .ok_or_else(|| ("kind".to_string(), format!("unsupported kind {kind:?}")))?;
    let desc = pool()?
        .get_message_by_name(name)
        .ok_or_else(|| ("kind".to_string(), format!("no schema for kind {kind}")))?;
    strip_nulls(&mut fields);
    int_or_string_in(&mut fields, "");
    octal_modes(&mut fields);
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(&fields, &mut track);
    let msg = DynamicMessage::deserialize_with_options(desc, de, &DeserializeOptions::new())
        .map_err(|e| {
            let mut path = track.path().to_string();
            if path == "." {
                path.clear();
            }
            let (unknown, message) = clean_message(&e.to_string());
            if let Some(f) = unknown {
                // serde reports an unknown field at its parent: name the field itself.
                path = if path.is_empty() {
                    f
                } else {
                    format!("{path}.{f}")
                };
            }
            if path.is_empty() {
                path = "(document)".into();
            }
            (path, message)
        })?;
    body_from_bytes(kind, &msg.encode_to_vec())
        .map_err(|e| ("(document)".to_string(), format!("cannot convert: {e}")))
}

/// The body as the top-level manifest fields (`spec`, `status`, `data`, ...), with unset fields
/// left out and IntOrString values that are numbers written as numbers.
pub fn body_to_json(body: &Body) -> Map<String, Value> {
    let (name, bytes) = body_parts(body);
    let Ok(pool) = pool() else {
        return Map::new();
    };
    let Some(desc) = pool.get_message_by_name(name) else {
        return Map::new();
    };
    let Ok(msg) = DynamicMessage::decode(desc, bytes.as_slice()) else {
        return Map::new();
    };
    let opts = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .skip_default_fields(true);
    let mut v = match msg.serialize_with_options(serde_json::value::Serializer, &opts) {
        Ok(v) => v,
        Err(_) => return Map::new(),
    };
    int_or_string_out(&mut v, "");
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn type_name(f: &prost_reflect::FieldDescriptor) -> String {
    use prost_reflect::Kind;
    let base = |k: Kind| match k {
        Kind::Message(m) => m.name().to_string(),
        Kind::Bool => "boolean".into(),
        Kind::String => "string".into(),
        Kind::Bytes => "string (base64)".into(),
        Kind::Double | Kind::Float => "number".into(),
        Kind::Enum(e) => e.name().to_string(),
        _ => "integer".into(),
    };
    if f.is_map() {
        if let prost_reflect::Kind::Message(entry) = f.kind() {
            let v = entry.map_entry_value_field();
            return format!("map[string]{}", base(v.kind()));
        }
    }
    if f.is_list() {
        return format!("[]{}", base(f.kind()));
    }
    base(f.kind())
}

/// `kubectl explain`: the fields of a kind, or of the field at `path` (`spec.strategy`), with
/// their types, from the schema.
pub fn explain(kind: &str, path: &str) -> Result<String, String> {
    let (api_version, _) =
        crate::validation::kind_info(kind).ok_or(format!("unsupported kind {kind:?}"))?;
    let name = message_name(kind).ok_or(format!("unsupported kind {kind:?}"))?;
    let pool = pool().map_err(|(_, m)| m)?;
    let mut desc = pool
        .get_message_by_name(name)
        .ok_or(format!("no schema for {kind}"))?;
    let mut out = format!("KIND:     {kind}\nVERSION:  {api_version}\n\n");
    let parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let f = desc
            .fields()
            .find(|f| f.json_name() == *part)
            .ok_or(format!("field {part:?} does not exist in {}", desc.name()))?;
        let is_last = i + 1 == parts.len();
        match f.kind() {
            prost_reflect::Kind::Message(m) if !f.is_map() => {
                if is_last {
                    out.push_str(&format!("FIELD: {part} <{}>\n\n", type_name(&f)));
                }
                desc = m;
            }
            _ if is_last => {
                out.push_str(&format!("FIELD: {part} <{}>\n", type_name(&f)));
                return Ok(out);
            }
            _ => {
                return Err(format!(
                    "field {part:?} is a {} and has no fields",
                    type_name(&f)
                ))
            }
        }
    }
    out.push_str("FIELDS:\n");
    if parts.is_empty() {
        out.push_str("  apiVersion\t<string>\n  kind\t<string>\n  metadata\t<ObjectMeta>\n");
    }
    for f in desc.fields() {
        out.push_str(&format!("  {}\t<{}>\n", f.json_name(), type_name(&f)));
    }
    Ok(out)
}

/// (the unknown field's name, if that is the problem; the message).
fn clean_message(m: &str) -> (Option<String>, String) {
    // prost-reflect: "unrecognized field name 'x'"; serde: "unknown field `x`, expected ...".
    for (prefix, close) in [
        ("unrecognized field name '", '\''),
        ("unknown field `", '`'),
    ] {
        if let Some(rest) = m.strip_prefix(prefix) {
            if let Some((f, _)) = rest.split_once(close) {
                return (Some(f.to_string()), format!("unknown field {f:?}"));
            }
        }
    }
    // Integers written as strings reach Rust's integer parser; say what was expected.
    if m.contains("digit")
        || m.contains("integer")
        || m.contains("too large")
        || m.contains("too small")
    {
        return (None, format!("expected an integer: {m}"));
    }
    (None, m.to_string())
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// File modes as Kubernetes users write them (`defaultMode: 0400`): YAML 1.1 reads a leading
/// zero as octal, the YAML 1.2 parser here reads a string; take it as YAML 1.1 does.
fn octal_modes(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "defaultMode" || k == "mode" {
                    if let Value::String(s) = x {
                        let octal = s.len() > 1
                            && s.starts_with('0')
                            && s.bytes().all(|b| (b'0'..=b'7').contains(&b));
                        if let (true, Ok(n)) = (octal, i64::from_str_radix(s, 8)) {
                            *x = Value::from(n);
                            continue;
                        }
                    }
                }
                octal_modes(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(octal_modes),
        _ => {}
    }
}

fn is_int_or_string(key: &str, parent: &str) -> bool {
    INT_OR_STRING.contains(&key) || (key == "port" && PORT_PARENTS.contains(&parent))
}

fn int_or_string_in(v: &mut Value, parent: &str) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if is_int_or_string(k, parent) {
                    if let Value::Number(n) = x {
                        if n.is_i64() || n.is_u64() {
                            *x = Value::String(n.to_string());
                            continue;
                        }
                    }
                }
                int_or_string_in(x, k);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| int_or_string_in(x, parent)),
        _ => {}
    }
}

fn int_or_string_out(v: &mut Value, parent: &str) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if is_int_or_string(k, parent) {
                    if let Value::String(s) = x {
                        // Only canonical numbers: "080" stays a string, so it reads back as is.
                        if let Ok(n) = s.parse::<i64>() {
                            if n.to_string() == *s {
                                *x = Value::from(n);
                                continue;
                            }
                        }
                    }
                }
                int_or_string_out(x, k);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| int_or_string_out(x, parent)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployment_round_trips_with_int_or_string_and_nulls() {
        let v = json!({"spec": {"replicas": 2, "selector": {"matchLabels": {"app": "x"}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}},
            "template": {"metadata": {"labels": {"app": "x"}, "creationTimestamp": null},
                "spec": {"containers": [{"name": "c", "image": "i",
                    "livenessProbe": {"httpGet": {"port": 80, "path": "/"}},
                    "ports": [{"containerPort": 80}]}]}}}});
        let body = body_from_json("Deployment", v).unwrap();
        let Body::Deployment(d) = &body else { panic!() };
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let ru = spec
            .strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap();
        assert_eq!(
            (ru.max_surge.as_str(), ru.max_unavailable.as_str()),
            ("1", "25%")
        );
        let out = body_to_json(&body);
        assert_eq!(out["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 1);
        assert_eq!(
            out["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
            "25%"
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"],
            80
        );
        assert_eq!(
            body_from_json("Deployment", Value::Object(out)).unwrap(),
            body
        );
    }

    #[test]
    fn errors_name_the_path() {
        let v =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "imagee": "i"}]}}}});
        let (p, m) = body_from_json("Deployment", v).unwrap_err();
        assert_eq!(p, "spec.template.spec.containers[0].imagee");
        assert_eq!(m, "unknown field \"imagee\"");
        let v = json!({"spec": {"replicas": "two"}});
        let (p, m) = body_from_json("Deployment", v).unwrap_err();
        assert_eq!(p, "spec.replicas");
        assert!(m.starts_with("expected an integer"), "{m}");
        let v = json!({"spec": {"paused": "yes"}});
        let (p, m) = body_from_json("Deployment", v).unwrap_err();
        assert_eq!(p, "spec.paused");
        assert!(m.contains("invalid type"), "{m}");
    }

    #[test]
    fn file_modes_with_a_leading_zero_are_octal() {
        let v = json!({"spec": {"containers": [{"name": "c", "image": "i"}],
            "volumes": [{"name": "s", "secret": {"secretName": "x", "defaultMode": "0400",
                "items": [{"key": "k", "path": "p", "mode": "0644"}]}}]}});
        let Body::Pod(p) = body_from_json("Pod", v).unwrap() else {
            panic!("not a pod")
        };
        let s = p.spec.unwrap().volumes[0].secret.clone().unwrap();
        assert_eq!(s.default_mode, Some(0o400));
        assert_eq!(s.items[0].mode, Some(0o644));
        let v = json!({"spec": {"containers": [{"name": "c", "image": "i"}],
            "volumes": [{"name": "s", "secret": {"secretName": "x", "defaultMode": "0800"}}]}});
        let Body::Pod(p) = body_from_json("Pod", v).unwrap() else {
            panic!("not a pod")
        };
        // Not octal: read as 800, which validation refuses.
        assert_eq!(
            p.spec.unwrap().volumes[0]
                .secret
                .as_ref()
                .unwrap()
                .default_mode,
            Some(800)
        );
    }

    #[test]
    fn explain_walks_the_schema() {
        let t = explain("Deployment", "spec.strategy").unwrap();
        assert!(
            t.starts_with("KIND:     Deployment\nVERSION:  apps/v1\n"),
            "{t}"
        );
        assert!(t.contains("FIELD: strategy <DeploymentStrategy>"), "{t}");
        assert!(
            t.contains("  rollingUpdate\t<RollingUpdateDeployment>"),
            "{t}"
        );
        let t = explain("Pod", "spec.containers").unwrap();
        assert!(
            t.contains("FIELD: containers <[]Container>")
                && t.contains("  imagePullPolicy\t<string>"),
            "{t}"
        );
        assert!(explain("Pod", "")
            .unwrap()
            .contains("  metadata\t<ObjectMeta>"));
        assert!(explain("Pod", "spec.nodeSelector")
            .unwrap()
            .contains("<map[string]string>"));
        assert!(explain("Pod", "spec.bogus")
            .unwrap_err()
            .contains("\"bogus\" does not exist"));
    }

    #[test]
    fn json_names_follow_kubernetes() {
        let v = json!({"status": {"podIP": "10.0.0.1", "hostIP": "1.2.3.4"}});
        let body = body_from_json("Pod", v).unwrap();
        let out = body_to_json(&body);
        assert_eq!(out["status"]["podIP"], "10.0.0.1");
        let v = json!({"data": {"k": "dmFsdWU="}, "type": "Opaque"});
        let Body::Secret(s) = body_from_json("Secret", v).unwrap() else {
            panic!()
        };
        assert_eq!(s.data["k"], b"value");
    }
}
