//! Kubernetes-style Events as objects: one Event per series (the involved object, type, reason
//! and message), named after it, so a repeat bumps `count` and `lastTimestamp` of the same
//! object instead of adding another. The client and the servers record Events with these.

use crate::pb::api::{object::Body, Event, EventSource, Object, ObjectMeta, ObjectReference};

/// Who reports an Event.
#[derive(Clone, Debug, Default)]
pub struct Reporter<'a> {
    pub component: &'a str,
    /// The node, for agents (Kubernetes' `source.host`).
    pub host: &'a str,
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The Event's name and namespace for this series.
pub fn series_key(
    involved: &ObjectReference,
    event_type: &str,
    reason: &str,
    message: &str,
) -> crate::ObjectKey {
    let series = format!(
        "{}/{}/{}/{}/{event_type}/{reason}/{message}",
        involved.kind, involved.namespace, involved.name, involved.uid
    );
    crate::ObjectKey {
        kind: "Event".into(),
        namespace: if involved.namespace.is_empty() {
            "default".into()
        } else {
            involved.namespace.clone()
        },
        name: format!("{}.{:016x}", involved.name, fnv1a64(series.as_bytes())),
    }
}

/// A reference to `o` for `involvedObject`.
pub fn reference(o: &Object) -> ObjectReference {
    let m = o.meta();
    ObjectReference {
        kind: o.kind.clone(),
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        uid: m.uid.clone(),
        api_version: o.api_version.clone(),
        resource_version: m.resource_version.to_string(),
        field_path: String::new(),
    }
}

/// The first Event of a series, at `now` (RFC 3339).
pub fn new_event(
    involved: ObjectReference,
    event_type: &str,
    reason: &str,
    message: &str,
    by: &Reporter<'_>,
    now: &str,
) -> Object {
    let key = series_key(&involved, event_type, reason, message);
    Object {
        api_version: "v1".into(),
        kind: "Event".into(),
        metadata: Some(ObjectMeta {
            name: key.name,
            namespace: key.namespace,
            ..Default::default()
        }),
        body: Some(Body::Event(Event {
            involved_object: Some(involved),
            reason: reason.into(),
            message: message.into(),
            source: Some(EventSource {
                component: by.component.into(),
                host: by.host.into(),
            }),
            first_timestamp: now.into(),
            last_timestamp: now.into(),
            count: 1,
            r#type: event_type.into(),
            reporting_component: by.component.into(),
            reporting_instance: by.host.into(),
        })),
    }
}

/// A repeat of the series `existing` is: `count` up by `times`, `lastTimestamp` now.
pub fn repeat(mut existing: Object, times: i32, now: &str) -> Object {
    if let Some(Body::Event(e)) = &mut existing.body {
        e.count = e.count.saturating_add(times.max(1));
        e.last_timestamp = now.into();
    }
    existing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_has_one_name_and_repeats_count() {
        let r = ObjectReference {
            kind: "Pod".into(),
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
            ..Default::default()
        };
        let by = Reporter {
            component: "flotilla-agent",
            host: "n1",
        };
        let a = new_event(r.clone(), "Warning", "Unhealthy", "x", &by, "t1");
        let b = new_event(r.clone(), "Warning", "Unhealthy", "x", &by, "t2");
        let c = new_event(r, "Warning", "Unhealthy", "y", &by, "t1");
        assert_eq!(a.meta().name, b.meta().name);
        assert_ne!(a.meta().name, c.meta().name);
        assert_eq!(a.meta().namespace, "ns");
        let a = repeat(a, 2, "t3");
        let Some(Body::Event(e)) = &a.body else {
            panic!("not an event")
        };
        assert_eq!((e.count, e.last_timestamp.as_str()), (3, "t3"));
        assert_eq!(e.source.as_ref().unwrap().host, "n1");
    }
}
