//! Garbage collection through ownerReferences: a dependent whose owners are all gone goes too
//! (Kubernetes' background propagation; the caller confirms each owner's absence with a
//! linearizable read before deleting, because a cache may not have seen an owner yet), and the
//! Foreground and Orphan deletions an owner's finalizer asks for.

use flotilla_api::pb::api::{Object, ObjectKey, OwnerReference};

use crate::common::Action;

pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
pub const ORPHAN_FINALIZER: &str = "orphan";

/// The writes that move an owner's Foreground or Orphan deletion on, given the objects that
/// refer to it: Foreground deletes them and, once none is left, drops the finalizer (the owner
/// then goes); Orphan removes their reference to it, then drops the finalizer.
pub fn finalize(owner: &Object, dependents: &[&Object]) -> Vec<Action> {
    let m = owner.meta();
    if m.deletion_timestamp_ms.is_none() {
        return Vec::new();
    }
    let uid = &m.uid;
    let refers = |d: &&&Object| d.meta().owner_references.iter().any(|r| &r.uid == uid);
    let mut out = Vec::new();
    let release = |out: &mut Vec<Action>, f: &str| {
        let mut o = owner.clone();
        o.meta_mut().finalizers.retain(|x| x != f);
        out.push(Action::Update(o));
    };
    if m.finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
        let mut any = false;
        for d in dependents.iter().filter(refers) {
            any = true;
            let mut o = (*d).clone();
            o.meta_mut().owner_references.retain(|r| &r.uid != uid);
            out.push(Action::Update(o));
        }
        if !any {
            release(&mut out, ORPHAN_FINALIZER);
        }
        return out;
    }
    if m.finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
        let left: Vec<&&Object> = dependents.iter().filter(refers).collect();
        for d in left
            .iter()
            .filter(|d| d.meta().deletion_timestamp_ms.is_none())
        {
            out.push(Action::Delete {
                key: d.key(),
                uid: d.meta().uid.clone(),
            });
        }
        if left.is_empty() {
            release(&mut out, FOREGROUND_FINALIZER);
        }
    }
    out
}

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
    fn foreground_deletes_dependents_first_and_orphan_releases_them() {
        let mut owner = owned("owner", &[]);
        owner.meta_mut().uid = "o-uid".into();
        owner.meta_mut().deletion_timestamp_ms = Some(1);
        owner.meta_mut().finalizers = vec![FOREGROUND_FINALIZER.into()];
        let dep = owned("dep", &[("ConfigMap", "o-uid")]);
        let out = finalize(&owner, &[&dep]);
        assert!(matches!(&out[..], [Action::Delete { key, .. }] if key.name == "dep"));
        let out = finalize(&owner, &[]);
        let [Action::Update(o)] = &out[..] else {
            panic!("{out:?}")
        };
        assert!(o.meta().finalizers.is_empty());

        owner.meta_mut().finalizers = vec![ORPHAN_FINALIZER.into()];
        let out = finalize(&owner, &[&dep]);
        let [Action::Update(d)] = &out[..] else {
            panic!("{out:?}")
        };
        assert!(d.meta().owner_references.is_empty());
        let out = finalize(&owner, &[]);
        assert!(matches!(&out[..], [Action::Update(o)] if o.meta().finalizers.is_empty()));
        // Not being deleted: nothing to do.
        owner.meta_mut().deletion_timestamp_ms = None;
        assert!(finalize(&owner, &[&dep]).is_empty());
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
