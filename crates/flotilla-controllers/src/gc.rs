//! Garbage collection through ownerReferences: a dependent whose owners are all gone goes too
//! (Kubernetes' background propagation). The caller confirms each owner's absence with a
//! linearizable read before deleting, because a cache may not have seen an owner yet.

use flotilla_api::pb::api::{Object, ObjectKey, OwnerReference};

/// Whether an owner exists: `Some(true|false)` when the caller's cache holds that kind, `None`
/// when it cannot tell.
pub type OwnerLookup<'a> = dyn Fn(&str, &OwnerReference) -> Option<bool> + 'a;

/// A dependent to delete, and the owners the caller must confirm are gone first.
#[derive(Debug, Clone, PartialEq)]
pub struct Orphan {
    pub key: ObjectKey,
    pub uid: String,
    pub owners: Vec<OwnerReference>,
}

/// The dependents among `objects` whose every owner is known to be gone.
pub fn orphans<'a>(
    objects: impl IntoIterator<Item = &'a Object>,
    exists: &OwnerLookup<'_>,
) -> Vec<Orphan> {
    let mut out = Vec::new();
    for o in objects {
        let m = o.meta();
        if m.owner_references.is_empty() || m.deletion_timestamp_ms.is_some() {
            continue;
        }
        let all_gone = m
            .owner_references
            .iter()
            .all(|r| exists(&m.namespace, r) == Some(false));
        if all_gone {
            out.push(Orphan {
                key: o.key(),
                uid: m.uid.clone(),
                owners: m.owner_references.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(name: &str, owners: &[(&str, &str)]) -> Object {
        let mut o = flotilla_api::manifest::parse_manifests(
            "t",
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n"),
        )
        .unwrap()
        .remove(0)
        .object;
        o.meta_mut().owner_references = owners
            .iter()
            .map(|(kind, uid)| OwnerReference {
                kind: (*kind).into(),
                uid: (*uid).into(),
                name: "o".into(),
                ..Default::default()
            })
            .collect();
        o
    }

    #[test]
    fn only_dependents_with_every_owner_gone_are_collected() {
        let objects = [
            owned("gone", &[("ReplicaSet", "dead")]),
            owned("kept", &[("ReplicaSet", "alive")]),
            owned("half", &[("ReplicaSet", "dead"), ("ReplicaSet", "alive")]),
            owned("unknown-kind", &[("Widget", "dead")]),
            owned("free", &[]),
        ];
        let exists = |_: &str, r: &OwnerReference| match r.kind.as_str() {
            "ReplicaSet" => Some(r.uid == "alive"),
            _ => None,
        };
        let got: Vec<String> = orphans(objects.iter(), &exists)
            .into_iter()
            .map(|o| o.key.name)
            .collect();
        assert_eq!(got, vec!["gone"]);
    }
}
