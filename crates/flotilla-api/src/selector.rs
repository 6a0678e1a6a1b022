//! Kubernetes label selectors: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`,
//! joined by commas (all must hold).

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<Requirement>,
    fields: FieldSelector,
}

/// The fields a field selector may name (Kubernetes supports a per-kind subset too).
pub const SELECTABLE_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.schedulerName",
    "spec.unschedulable",
    "status.phase",
    "type",
    "reason",
    "involvedObject.kind",
    "involvedObject.name",
    "involvedObject.namespace",
    "involvedObject.uid",
];

/// A field selector: `field=value`, `field==value`, `field!=value`, joined by commas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(text: &str) -> Result<FieldSelector, ApiError> {
        let mut reqs = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::invalid(
                    "fieldSelector",
                    format!("invalid selector {part:?}: expected field=value or field!=value"),
                ));
            };
            let field = field.trim();
            if !SELECTABLE_FIELDS.contains(&field) {
                return Err(ApiError::invalid(
                    "fieldSelector",
                    format!(
                        "field label not supported: {field} (supported: {})",
                        SELECTABLE_FIELDS.join(", ")
                    ),
                ));
            }
            reqs.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn matches(&self, o: &crate::pb::api::Object) -> bool {
        self.reqs
            .iter()
            .all(|(f, eq, v)| (field_value(o, f) == v.as_str()) == *eq)
    }

    /// The value `field` must equal, if the selector requires one (what an index can look up).
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.reqs
            .iter()
            .find(|(f, eq, _)| *eq && f == field)
            .map(|(_, _, v)| v.as_str())
    }
}

/// A selectable field's value as a string ("" when unset); borrowed where the object holds it,
/// as watch filters call this for every event.
fn field_value<'a>(o: &'a crate::pb::api::Object, field: &str) -> Cow<'a, str> {
    use crate::pb::api::object::Body;
    let m = o.meta();
    let b = |s: &'a String| Cow::Borrowed(s.as_str());
    match (field, &o.body) {
        ("metadata.name", _) => b(&m.name),
        ("metadata.namespace", _) => b(&m.namespace),
        ("spec.nodeName", Some(Body::Pod(p))) => {
            p.spec.as_ref().map(|s| b(&s.node_name)).unwrap_or_default()
        }
        ("spec.schedulerName", Some(Body::Pod(p))) => p
            .spec
            .as_ref()
            .map(|s| b(&s.scheduler_name))
            .unwrap_or_default(),
        ("status.phase", Some(Body::Pod(p))) => {
            p.status.as_ref().map(|s| b(&s.phase)).unwrap_or_default()
        }
        ("status.phase", Some(Body::Namespace(n))) => {
            n.status.as_ref().map(|s| b(&s.phase)).unwrap_or_default()
        }
        ("spec.unschedulable", Some(Body::Node(n))) => {
            Cow::Borrowed(if n.spec.as_ref().is_some_and(|s| s.unschedulable) {
                "true"
            } else {
                "false"
            })
        }
        ("type", Some(Body::Secret(s))) => b(&s.r#type),
        ("type", Some(Body::Event(e))) => b(&e.r#type),
        ("reason", Some(Body::Event(e))) => b(&e.reason),
        (f, Some(Body::Event(e))) if f.starts_with("involvedObject.") => {
            match e.involved_object.as_ref() {
                None => Cow::Borrowed(""),
                Some(r) => match f {
                    "involvedObject.kind" => b(&r.kind),
                    "involvedObject.name" => b(&r.name),
                    "involvedObject.namespace" => b(&r.namespace),
                    _ => b(&r.uid),
                },
            }
        }
        _ => Cow::Borrowed(""),
    }
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, ApiError> {
        let err = |m: String| ApiError::invalid("labelSelector", m);
        let mut reqs = Vec::new();
        for part in split_top_level(text).map_err(err)? {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            let req = if let Some(k) = p.strip_prefix('!') {
                Requirement::NotExists(check_key(k.trim())?)
            } else if let Some((k, v)) = p.split_once("!=") {
                Requirement::NotEq(check_key(k.trim())?, v.trim().to_string())
            } else if let Some((k, v)) = p.split_once("==") {
                Requirement::Eq(check_key(k.trim())?, v.trim().to_string())
            } else if let Some((k, v)) = p.split_once('=') {
                Requirement::Eq(check_key(k.trim())?, v.trim().to_string())
            } else if let Some((k, set)) = split_set_op(p, " notin ") {
                Requirement::NotIn(check_key(k)?, parse_set(set)?)
            } else if let Some((k, set)) = split_set_op(p, " in ") {
                Requirement::In(check_key(k)?, parse_set(set)?)
            } else {
                Requirement::Exists(check_key(p)?)
            };
            reqs.push(req);
        }
        Ok(Selector {
            reqs,
            fields: FieldSelector::default(),
        })
    }

    /// Also require the field selector `text`.
    pub fn with_fields(mut self, text: &str) -> Result<Selector, ApiError> {
        self.fields = FieldSelector::parse(text)?;
        Ok(self)
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty() && self.fields.reqs.is_empty()
    }

    pub fn fields(&self) -> &FieldSelector {
        &self.fields
    }

    /// Labels and fields of `o` both match.
    pub fn matches_object(&self, o: &crate::pb::api::Object) -> bool {
        self.matches(&o.meta().labels) && self.fields.matches(o)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| match r {
            Requirement::Eq(k, v) => labels.get(k) == Some(v),
            Requirement::NotEq(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced ')' in {text:?}"));
                }
            }
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in {text:?}"));
    }
    out.push(&text[start..]);
    Ok(out)
}

fn split_set_op<'a>(p: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    p.find(op)
        .map(|i| (p[..i].trim(), p[i + op.len()..].trim()))
}

fn check_key(k: &str) -> Result<String, ApiError> {
    crate::validation::check_label_key("labelSelector", k)?;
    Ok(k.to_string())
}

fn parse_set(s: &str) -> Result<Vec<String>, ApiError> {
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| {
            ApiError::invalid(
                "labelSelector",
                format!("expected a parenthesised set, got {s:?}"),
            )
        })?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_selectors() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: n1, containers: [{name: c, image: i}]}\n";
        let pod = crate::manifest::parse_manifests("p", text)
            .unwrap()
            .remove(0)
            .object;
        let s = |t: &str| Selector::default().with_fields(t).unwrap();
        assert!(s("spec.nodeName=n1").matches_object(&pod));
        assert!(s("spec.nodeName==n1,metadata.name=p").matches_object(&pod));
        assert!(!s("spec.nodeName=n2").matches_object(&pod));
        assert!(s("spec.nodeName!=n2").matches_object(&pod));
        assert!(s("status.phase=").matches_object(&pod));
        let e = Selector::default().with_fields("spec.bogus=1").unwrap_err();
        assert!(
            e.message.contains("field label not supported: spec.bogus"),
            "{}",
            e.message
        );
        assert!(Selector::default().with_fields("spec.nodeName").is_err());
        let f = s("metadata.name!=x,spec.nodeName==n1");
        assert_eq!(f.fields().required_value("spec.nodeName"), Some("n1"));
        assert_eq!(f.fields().required_value("metadata.name"), None);
        assert_eq!(
            s("spec.nodeName!=n1")
                .fields()
                .required_value("spec.nodeName"),
            None
        );
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_and_sets() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(Selector::parse("").unwrap().matches(&l));
        assert!(Selector::parse("app=web").unwrap().matches(&l));
        assert!(Selector::parse("app==web,tier").unwrap().matches(&l));
        assert!(!Selector::parse("app!=web").unwrap().matches(&l));
        assert!(Selector::parse("tier in (front, back)")
            .unwrap()
            .matches(&l));
        assert!(!Selector::parse("tier notin (front)").unwrap().matches(&l));
        assert!(Selector::parse("!db").unwrap().matches(&l));
        assert!(!Selector::parse("db").unwrap().matches(&l));
        assert!(Selector::parse("env notin (prod)").unwrap().matches(&l));
    }

    #[test]
    fn bad_selectors_name_the_field() {
        let e = Selector::parse("tier in front").unwrap_err();
        assert_eq!(e.field, "labelSelector");
        assert!(Selector::parse("a in (b").is_err());
        assert!(Selector::parse("bad key=x").is_err());
    }
}
