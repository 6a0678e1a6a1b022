//! Kubernetes label selectors: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`,
//! joined by commas (all must hold).

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
        Ok(Selector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
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
