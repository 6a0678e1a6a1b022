//! Store keys. Objects are ordered by (kind, namespace, name) so a list of one kind, or of one
//! kind in one namespace, is a contiguous key range.

use crate::pb::api::ObjectKey;

const SEP: char = '\u{0}';

/// The byte key of an object: `kind \0 namespace \0 name`. NUL never occurs in a valid name.
pub fn object_key(key: &ObjectKey) -> String {
    format!("{}{SEP}{}{SEP}{}", key.kind, key.namespace, key.name)
}

/// The key prefix of every object of `kind` (in `namespace` when it is not empty).
pub fn list_prefix(kind: &str, namespace: &str) -> String {
    if namespace.is_empty() {
        format!("{kind}{SEP}")
    } else {
        format!("{kind}{SEP}{namespace}{SEP}")
    }
}

/// Split a stored key back into its parts; `None` for a key not made by [`object_key`].
pub fn parse_object_key(key: &str) -> Option<ObjectKey> {
    let mut parts = key.splitn(3, SEP);
    Some(ObjectKey {
        kind: parts.next()?.to_string(),
        namespace: parts.next()?.to_string(),
        name: parts.next()?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_prefixes_nest() {
        let k = ObjectKey {
            kind: "ConfigMap".into(),
            namespace: "default".into(),
            name: "a".into(),
        };
        let s = object_key(&k);
        assert_eq!(parse_object_key(&s), Some(k));
        assert!(s.starts_with(&list_prefix("ConfigMap", "default")));
        assert!(s.starts_with(&list_prefix("ConfigMap", "")));
        assert!(!s.starts_with(&list_prefix("ConfigMap", "def")));
    }
}
