//! Kubernetes-style manifests: YAML (several documents) or JSON in, stored objects out, and the
//! reverse for `get -o yaml|json`. Unknown fields are errors that name their path; fields the
//! server owns (uid, resourceVersion, generation, timestamps) are ignored on input so that
//! `get -o yaml | apply -f -` changes nothing.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::pb::api::{Object, ObjectMeta, OwnerReference};
use crate::validation;

/// A manifest problem, located by source, document index (0-based) and field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: document {document}: {path}: {message}")]
pub struct ManifestError {
    pub source_name: String,
    pub document: usize,
    pub path: String,
    pub message: String,
}

/// One object read from a manifest, with where it came from.
#[derive(Debug, Clone)]
pub struct ManifestObject {
    pub document: usize,
    pub object: Object,
}

/// Parse every document of `text` (YAML, which includes JSON) and validate each. Empty
/// documents are skipped; a `List` expands to its items.
pub fn parse_manifests(
    source_name: &str,
    text: &str,
) -> Result<Vec<ManifestObject>, ManifestError> {
    let mut out = Vec::new();
    let merr = |document: usize, path: &str, message: String| ManifestError {
        source_name: source_name.to_string(),
        document,
        path: path.to_string(),
        message,
    };
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| merr(i, "(document)", format!("not valid YAML/JSON: {e}")))?;
        if value.is_null() {
            continue;
        }
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            let items = value
                .get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| merr(i, "items", "a List must have an items array".into()))?;
            for (j, item) in items.iter().enumerate() {
                let object = object_from_value(item)
                    .map_err(|(p, m)| merr(i, &format!("items[{j}].{p}"), m))?;
                out.push(ManifestObject {
                    document: i,
                    object,
                });
            }
            continue;
        }
        let object = object_from_value(&value).map_err(|(p, m)| merr(i, &p, m))?;
        out.push(ManifestObject {
            document: i,
            object,
        });
    }
    Ok(out)
}

type FieldErr = (String, String);

fn ferr(path: &str, msg: impl Into<String>) -> FieldErr {
    (path.to_string(), msg.into())
}

fn as_object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, FieldErr> {
    v.as_object()
        .ok_or_else(|| ferr(path, format!("expected an object, got {}", type_name(v))))
}

fn as_str<'a>(v: &'a Value, path: &str) -> Result<&'a str, FieldErr> {
    v.as_str()
        .ok_or_else(|| ferr(path, format!("expected a string, got {}", type_name(v))))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_map(v: &Value, path: &str) -> Result<BTreeMap<String, String>, FieldErr> {
    if v.is_null() {
        return Ok(BTreeMap::new());
    }
    as_object(v, path)?
        .iter()
        .map(|(k, v)| Ok((k.clone(), as_str(v, &format!("{path}.{k}"))?.to_string())))
        .collect()
}

fn check_unknown(map: &Map<String, Value>, path: &str, known: &[&str]) -> Result<(), FieldErr> {
    for k in map.keys() {
        if !known.contains(&k.as_str()) {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            return Err(ferr(&p, format!("unknown field {k:?}")));
        }
    }
    Ok(())
}

/// Convert one manifest document into an object and validate it.
pub fn object_from_value(v: &Value) -> Result<Object, FieldErr> {
    let top = as_object(v, "(document)")?;
    let kind = as_str(
        top.get("kind")
            .ok_or_else(|| ferr("kind", "required field is missing"))?,
        "kind",
    )?;
    let api_version = as_str(
        top.get("apiVersion")
            .ok_or_else(|| ferr("apiVersion", "required field is missing"))?,
        "apiVersion",
    )?;
    let meta_v = top
        .get("metadata")
        .ok_or_else(|| ferr("metadata", "required field is missing"))?;
    let metadata = meta_from_value(meta_v)?;
    if validation::kind_info(kind).is_none() {
        let known: Vec<_> = validation::KINDS.iter().map(|(k, _, _)| *k).collect();
        return Err(ferr(
            "kind",
            format!("unsupported kind {kind:?}; supported: {}", known.join(", ")),
        ));
    }
    let mut fields = top.clone();
    for k in ["apiVersion", "kind", "metadata"] {
        fields.remove(k);
    }
    let body = crate::schema::body_from_json(kind, Value::Object(fields))?;
    let mut obj = Object {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        metadata: Some(metadata),
        body: Some(body),
    };
    crate::kinds::apply_defaults(&mut obj);
    validation::validate_object(&obj).map_err(|e| {
        let msg = e
            .message
            .strip_prefix(&format!("{}: ", e.field))
            .unwrap_or(&e.message)
            .to_string();
        (e.field.clone(), msg)
    })?;
    Ok(obj)
}

fn meta_from_value(v: &Value) -> Result<ObjectMeta, FieldErr> {
    let m = as_object(v, "metadata")?;
    check_unknown(
        m,
        "metadata",
        &[
            "name",
            "namespace",
            "labels",
            "annotations",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "ownerReferences",
            "finalizers",
        ],
    )?;
    let name = as_str(
        m.get("name")
            .ok_or_else(|| ferr("metadata.name", "required field is missing"))?,
        "metadata.name",
    )?;
    let namespace = m
        .get("namespace")
        .map(|n| as_str(n, "metadata.namespace"))
        .transpose()?
        .unwrap_or("");
    let labels = m
        .get("labels")
        .map(|l| string_map(l, "metadata.labels"))
        .transpose()?
        .unwrap_or_default();
    let annotations = m
        .get("annotations")
        .map(|l| string_map(l, "metadata.annotations"))
        .transpose()?
        .unwrap_or_default();
    let mut finalizers = Vec::new();
    if let Some(f) = m.get("finalizers").filter(|f| !f.is_null()) {
        let arr = f
            .as_array()
            .ok_or_else(|| ferr("metadata.finalizers", "expected an array"))?;
        for (i, s) in arr.iter().enumerate() {
            finalizers.push(as_str(s, &format!("metadata.finalizers[{i}]"))?.to_string());
        }
    }
    let mut owner_references = Vec::new();
    if let Some(o) = m.get("ownerReferences").filter(|f| !f.is_null()) {
        let arr = o
            .as_array()
            .ok_or_else(|| ferr("metadata.ownerReferences", "expected an array"))?;
        for (i, r) in arr.iter().enumerate() {
            let p = format!("metadata.ownerReferences[{i}]");
            let r = as_object(r, &p)?;
            check_unknown(
                r,
                &p,
                &[
                    "apiVersion",
                    "kind",
                    "name",
                    "uid",
                    "controller",
                    "blockOwnerDeletion",
                ],
            )?;
            let s = |k: &str| -> Result<String, FieldErr> {
                Ok(as_str(
                    r.get(k)
                        .ok_or_else(|| ferr(&format!("{p}.{k}"), "required field is missing"))?,
                    &format!("{p}.{k}"),
                )?
                .to_string())
            };
            let b = |k: &str| -> Result<bool, FieldErr> {
                match r.get(k) {
                    None | Some(Value::Null) => Ok(false),
                    Some(Value::Bool(b)) => Ok(*b),
                    Some(o) => Err(ferr(
                        &format!("{p}.{k}"),
                        format!("expected a boolean, got {}", type_name(o)),
                    )),
                }
            };
            owner_references.push(OwnerReference {
                api_version: s("apiVersion")?,
                kind: s("kind")?,
                name: s("name")?,
                uid: s("uid")?,
                controller: b("controller")?,
                block_owner_deletion: b("blockOwnerDeletion")?,
            });
        }
    }
    Ok(ObjectMeta {
        name: name.to_string(),
        namespace: namespace.to_string(),
        labels,
        annotations,
        finalizers,
        owner_references,
        ..Default::default()
    })
}

/// RFC 3339 (UTC, second precision) as Kubernetes prints timestamps.
pub fn format_timestamp_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The object as a Kubernetes-style JSON value (what `get -o json|yaml` prints).
pub fn object_to_value(obj: &Object) -> Value {
    let m = obj.meta();
    let mut meta = Map::new();
    meta.insert("name".into(), json!(m.name));
    if !m.namespace.is_empty() {
        meta.insert("namespace".into(), json!(m.namespace));
    }
    meta.insert("uid".into(), json!(m.uid));
    meta.insert(
        "resourceVersion".into(),
        json!(m.resource_version.to_string()),
    );
    meta.insert("generation".into(), json!(m.generation));
    meta.insert(
        "creationTimestamp".into(),
        json!(format_timestamp_ms(m.creation_timestamp_ms)),
    );
    if let Some(d) = m.deletion_timestamp_ms {
        meta.insert("deletionTimestamp".into(), json!(format_timestamp_ms(d)));
    }
    if let Some(g) = m.deletion_grace_period_seconds {
        meta.insert("deletionGracePeriodSeconds".into(), json!(g));
    }
    if !m.labels.is_empty() {
        meta.insert("labels".into(), json!(m.labels));
    }
    if !m.annotations.is_empty() {
        meta.insert("annotations".into(), json!(m.annotations));
    }
    if !m.owner_references.is_empty() {
        let refs: Vec<Value> = m
            .owner_references
            .iter()
            .map(|r| {
                json!({"apiVersion": r.api_version, "kind": r.kind, "name": r.name, "uid": r.uid,
                       "controller": r.controller, "blockOwnerDeletion": r.block_owner_deletion})
            })
            .collect();
        meta.insert("ownerReferences".into(), Value::Array(refs));
    }
    if !m.finalizers.is_empty() {
        meta.insert("finalizers".into(), json!(m.finalizers));
    }
    let mut top = Map::new();
    top.insert("apiVersion".into(), json!(obj.api_version));
    top.insert("kind".into(), json!(obj.kind));
    top.insert("metadata".into(), Value::Object(meta));
    if let Some(body) = &obj.body {
        top.extend(crate::schema::body_to_json(body));
    }
    Value::Object(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  k: v\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  namespace: team\n  labels: {app: web}\n";

    #[test]
    fn multi_document_yaml_defaults_namespace() {
        let objs = parse_manifests("f.yaml", TWO).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].object.meta().namespace, "default");
        assert_eq!(objs[1].document, 2);
        assert_eq!(objs[1].object.meta().labels["app"], "web");
    }

    #[test]
    fn errors_name_file_document_and_field() {
        let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n";
        let e = parse_manifests("cm.yaml", bad).unwrap_err();
        assert_eq!(e.document, 1);
        assert_eq!(e.path, "metadata.name");
        assert!(
            e.to_string()
                .starts_with("cm.yaml: document 1: metadata.name: invalid value"),
            "{e}"
        );

        let unknown = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndatta: {}\n";
        assert_eq!(parse_manifests("u", unknown).unwrap_err().path, "datta");
        let wrong_type = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: [1]}\n";
        assert_eq!(parse_manifests("w", wrong_type).unwrap_err().path, "data.k");
        let missing = "apiVersion: v1\nkind: ConfigMap\nmetadata: {namespace: x}\n";
        assert_eq!(
            parse_manifests("m", missing).unwrap_err().path,
            "metadata.name"
        );
        assert!(parse_manifests("y", "a: [").is_err());
    }

    #[test]
    fn printed_objects_parse_back_identically() {
        let mut obj = parse_manifests("f", TWO).unwrap().remove(1).object;
        obj.meta_mut().uid = "u-1".into();
        obj.meta_mut().resource_version = 42;
        obj.meta_mut().creation_timestamp_ms = 1_700_000_000_000;
        let printed = object_to_value(&obj);
        assert_eq!(printed["metadata"]["resourceVersion"], "42");
        assert_eq!(
            printed["metadata"]["creationTimestamp"],
            "2023-11-14T22:13:20Z"
        );
        let back = object_from_value(&printed).unwrap();
        assert_eq!(back.body, obj.body);
        assert_eq!(back.meta().labels, obj.meta().labels);
        assert_eq!(
            back.meta().resource_version,
            0,
            "server-owned fields are ignored on input"
        );
    }
}
