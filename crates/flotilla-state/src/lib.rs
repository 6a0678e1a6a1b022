//! flotilla-state owns the meaning of a committed command: how a batch of writes changes the
//! objects, which preconditions hold, and which watch events result.
//!
//! Apply is deterministic: every server applies the same entry to the same state and gets the
//! same bytes. It must never do I/O, read a clock, draw randomness or consult local
//! configuration; the storage it writes through is the [`ObjectTable`] trait (redb in
//! `flotilla-raft`, a `BTreeMap` in tests).

use std::collections::BTreeMap;

use flotilla_api::pb::api::{
    object::Body, write::Op, write_result, ApiError, DeleteRequest, ErrorCode, EventType, Object,
    WatchEvent, WriteResult,
};
use flotilla_api::pb::raft::Command;
use flotilla_api::{keys, validation};

/// Where apply reads and writes objects. Keys come from [`keys::object_key`].
pub trait ObjectTable {
    type Error;
    fn get(&self, key: &str) -> Result<Option<Object>, Self::Error>;
    fn put(&mut self, key: &str, object: &Object) -> Result<(), Self::Error>;
    fn remove(&mut self, key: &str) -> Result<(), Self::Error>;
}

/// An in-memory table, for tests and tools.
impl ObjectTable for BTreeMap<String, Object> {
    type Error = std::convert::Infallible;
    fn get(&self, key: &str) -> Result<Option<Object>, Self::Error> {
        Ok(BTreeMap::get(self, key).cloned())
    }
    fn put(&mut self, key: &str, object: &Object) -> Result<(), Self::Error> {
        self.insert(key.to_string(), object.clone());
        Ok(())
    }
    fn remove(&mut self, key: &str) -> Result<(), Self::Error> {
        BTreeMap::remove(self, key);
        Ok(())
    }
}

/// The outcome of one applied command.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// One per write, in order.
    pub results: Vec<WriteResult>,
    /// The watch events, in order, all at the command's revision.
    pub events: Vec<WatchEvent>,
}

/// Apply `cmd`, committed at log index `revision`. Writes are independent: one failing its
/// precondition does not stop the others. Only storage errors abort (and then nothing of the
/// caller's transaction may be committed).
pub fn apply_command<T: ObjectTable>(
    table: &mut T,
    revision: u64,
    cmd: &Command,
) -> Result<Applied, T::Error> {
    let mut out = Applied::default();
    for (position, w) in cmd.writes.iter().enumerate() {
        let r = match &w.op {
            Some(Op::Create(o)) => create(
                table,
                revision,
                position,
                cmd.timestamp_ms,
                o,
                &mut out.events,
            )?,
            Some(Op::Update(o)) => update(table, revision, cmd.timestamp_ms, o, &mut out.events)?,
            Some(Op::Delete(d)) => delete(table, revision, cmd.timestamp_ms, d, &mut out.events)?,
            None => Err(ApiError::invalid("writes[].op", "empty write")),
        };
        out.results.push(WriteResult {
            result: Some(match r {
                Ok(o) => write_result::Result::Object(o),
                Err(e) => write_result::Result::Error(e),
            }),
        });
    }
    Ok(out)
}

type WriteOutcome<E> = Result<Result<Object, ApiError>, E>;

fn event(events: &mut Vec<WatchEvent>, t: EventType, object: &Object, revision: u64) {
    events.push(WatchEvent {
        r#type: t as i32,
        object: Some(object.clone()),
        revision,
    });
}

fn create<T: ObjectTable>(
    table: &mut T,
    revision: u64,
    position: usize,
    now_ms: i64,
    obj: &Object,
    events: &mut Vec<WatchEvent>,
) -> WriteOutcome<T::Error> {
    if let Err(e) = validation::validate_object(obj) {
        return Ok(Err(e));
    }
    let key = obj.key();
    let k = keys::object_key(&key);
    if table.get(&k)?.is_some() {
        return Ok(Err(ApiError::new(
            ErrorCode::AlreadyExists,
            format!("{key} already exists"),
        )));
    }
    let mut o = obj.clone();
    // Status belongs to the controllers: a create starts without one.
    o.body = flotilla_api::kinds::without_status(&o.body);
    let m = o.meta_mut();
    if m.uid.is_empty() {
        // The proposer stamps a random uid; this fallback keeps apply deterministic regardless.
        m.uid = format!("{revision:016x}-{position:08x}");
    }
    m.resource_version = revision;
    m.generation = 1;
    m.creation_timestamp_ms = now_ms;
    m.deletion_timestamp_ms = None;
    table.put(&k, &o)?;
    event(events, EventType::Added, &o, revision);
    Ok(Ok(o))
}

/// True when `a` and `b` differ in what a user can change (body, labels, annotations,
/// finalizers, owner references), ignoring server-owned metadata.
fn user_fields_differ(a: &Object, b: &Object) -> bool {
    let (ma, mb) = (a.meta(), b.meta());
    a.body != b.body
        || ma.labels != mb.labels
        || ma.annotations != mb.annotations
        || ma.finalizers != mb.finalizers
        || ma.owner_references != mb.owner_references
}

fn update<T: ObjectTable>(
    table: &mut T,
    revision: u64,
    now_ms: i64,
    obj: &Object,
    events: &mut Vec<WatchEvent>,
) -> WriteOutcome<T::Error> {
    let _ = now_ms;
    if let Err(e) = validation::validate_object(obj) {
        return Ok(Err(e));
    }
    let key = obj.key();
    let k = keys::object_key(&key);
    let Some(stored) = table.get(&k)? else {
        return Ok(Err(ApiError::not_found(&key)));
    };
    let want_rv = obj.meta().resource_version;
    if want_rv != 0 && want_rv != stored.meta().resource_version {
        return Ok(Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "{key}: the object has been modified (resourceVersion {} is not the current {}); read it again and retry",
                want_rv,
                stored.meta().resource_version
            ),
        )));
    }
    if let (Some(Body::ConfigMap(old)), Some(Body::ConfigMap(new))) = (&stored.body, &obj.body) {
        if old.immutable
            && (old.data != new.data || old.binary_data != new.binary_data || !new.immutable)
        {
            return Ok(Err(ApiError::invalid(
                "data",
                format!("{key} is immutable; delete and recreate it to change it"),
            )));
        }
    }
    // The status subresource: a write of the object never changes its status.
    let mut o = obj.clone();
    flotilla_api::kinds::keep_status(&mut o.body, &stored.body);
    if !user_fields_differ(&stored, &o) {
        return Ok(Ok(stored));
    }
    let sm = stored.meta();
    // generation counts changes of the desired state (spec), never of status or metadata.
    let body_changed = stored.body != o.body;
    let m = o.meta_mut();
    m.uid = sm.uid.clone();
    m.creation_timestamp_ms = sm.creation_timestamp_ms;
    m.deletion_timestamp_ms = sm.deletion_timestamp_ms;
    m.generation = sm.generation + i64::from(body_changed);
    m.resource_version = revision;
    if m.deletion_timestamp_ms.is_some() && m.finalizers.is_empty() {
        // The last finalizer is gone from an object marked for deletion: it goes now.
        table.remove(&k)?;
        event(events, EventType::Deleted, &o, revision);
        return Ok(Ok(o));
    }
    table.put(&k, &o)?;
    event(events, EventType::Modified, &o, revision);
    Ok(Ok(o))
}

fn delete<T: ObjectTable>(
    table: &mut T,
    revision: u64,
    now_ms: i64,
    req: &DeleteRequest,
    events: &mut Vec<WatchEvent>,
) -> WriteOutcome<T::Error> {
    let Some(key) = req.key.as_ref() else {
        return Ok(Err(ApiError::invalid("key", "must be set")));
    };
    let k = keys::object_key(key);
    let Some(mut o) = table.get(&k)? else {
        return Ok(Err(ApiError::not_found(key)));
    };
    if let Some(rv) = req.expected_resource_version {
        if rv != o.meta().resource_version {
            return Ok(Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "{key}: precondition failed: resourceVersion is {}, expected {rv}",
                    o.meta().resource_version
                ),
            )));
        }
    }
    if let Some(uid) = &req.expected_uid {
        if *uid != o.meta().uid {
            return Ok(Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "{key}: precondition failed: uid is {}, expected {uid}",
                    o.meta().uid
                ),
            )));
        }
    }
    let m = o.meta_mut();
    if !m.finalizers.is_empty() {
        if m.deletion_timestamp_ms.is_some() {
            return Ok(Ok(o));
        }
        m.deletion_timestamp_ms = Some(now_ms);
        m.resource_version = revision;
        table.put(&k, &o)?;
        event(events, EventType::Modified, &o, revision);
        return Ok(Ok(o));
    }
    m.resource_version = revision;
    table.remove(&k)?;
    event(events, EventType::Deleted, &o, revision);
    Ok(Ok(o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::pb::api::{ConfigMap, ObjectKey, ObjectMeta, Write};

    fn cm(name: &str, data: &[(&str, &str)]) -> Object {
        Object {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-{name}"),
                ..Default::default()
            }),
            body: Some(Body::ConfigMap(ConfigMap {
                data: data
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            })),
        }
    }

    fn cmd(writes: Vec<Op>) -> Command {
        Command {
            timestamp_ms: 1000,
            writes: writes
                .into_iter()
                .map(|op| Write { op: Some(op) })
                .collect(),
        }
    }

    fn ok(r: &WriteResult) -> &Object {
        match &r.result {
            Some(write_result::Result::Object(o)) => o,
            other => panic!("expected an object, got {other:?}"),
        }
    }

    fn err(r: &WriteResult) -> ErrorCode {
        match &r.result {
            Some(write_result::Result::Error(e)) => e.code(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            kind: "ConfigMap".into(),
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn create_stamps_revision_and_rejects_duplicates_independently() {
        let mut t = BTreeMap::new();
        let a = apply_command(
            &mut t,
            5,
            &cmd(vec![
                Op::Create(cm("a", &[])),
                Op::Create(cm("a", &[])),
                Op::Create(cm("b", &[])),
            ]),
        )
        .unwrap();
        assert_eq!(ok(&a.results[0]).meta().resource_version, 5);
        assert_eq!(ok(&a.results[0]).meta().generation, 1);
        assert_eq!(ok(&a.results[0]).meta().creation_timestamp_ms, 1000);
        assert_eq!(err(&a.results[1]), ErrorCode::AlreadyExists);
        assert_eq!(ok(&a.results[2]).meta().name, "b");
        assert_eq!(a.events.len(), 2);
        assert!(a
            .events
            .iter()
            .all(|e| e.revision == 5 && e.r#type == EventType::Added as i32));
    }

    #[test]
    fn update_checks_resource_version_and_bumps_generation_on_body_change_only() {
        let mut t = BTreeMap::new();
        apply_command(&mut t, 1, &cmd(vec![Op::Create(cm("a", &[("k", "1")]))])).unwrap();
        let mut stale = cm("a", &[("k", "2")]);
        stale.meta_mut().resource_version = 99;
        let r = apply_command(&mut t, 2, &cmd(vec![Op::Update(stale)])).unwrap();
        assert_eq!(err(&r.results[0]), ErrorCode::Conflict);
        assert!(r.events.is_empty());

        let mut good = cm("a", &[("k", "2")]);
        good.meta_mut().resource_version = 1;
        let r = apply_command(&mut t, 3, &cmd(vec![Op::Update(good)])).unwrap();
        let o = ok(&r.results[0]);
        assert_eq!(
            (
                o.meta().resource_version,
                o.meta().generation,
                o.meta().uid.as_str()
            ),
            (3, 2, "uid-a")
        );

        let mut labelled = cm("a", &[("k", "2")]);
        labelled.meta_mut().labels.insert("x".into(), "y".into());
        let r = apply_command(&mut t, 4, &cmd(vec![Op::Update(labelled.clone())])).unwrap();
        assert_eq!(
            ok(&r.results[0]).meta().generation,
            2,
            "metadata-only change keeps generation"
        );

        let r = apply_command(&mut t, 5, &cmd(vec![Op::Update(labelled)])).unwrap();
        assert_eq!(
            ok(&r.results[0]).meta().resource_version,
            4,
            "a no-op update changes nothing"
        );
        assert!(r.events.is_empty());

        let r = apply_command(&mut t, 6, &cmd(vec![Op::Update(cm("missing", &[]))])).unwrap();
        assert_eq!(err(&r.results[0]), ErrorCode::NotFound);
    }

    #[test]
    fn delete_with_preconditions_and_finalizers() {
        let mut t = BTreeMap::new();
        let mut f = cm("f", &[]);
        f.meta_mut().finalizers.push("example.com/hold".into());
        apply_command(
            &mut t,
            1,
            &cmd(vec![Op::Create(cm("a", &[])), Op::Create(f)]),
        )
        .unwrap();
        let del = |name: &str, rv: Option<u64>| {
            Op::Delete(DeleteRequest {
                key: Some(key(name)),
                expected_resource_version: rv,
                expected_uid: None,
            })
        };
        let r = apply_command(&mut t, 2, &cmd(vec![del("a", Some(7)), del("nope", None)])).unwrap();
        assert_eq!(err(&r.results[0]), ErrorCode::Conflict);
        assert_eq!(err(&r.results[1]), ErrorCode::NotFound);

        let r = apply_command(&mut t, 3, &cmd(vec![del("a", Some(1)), del("f", None)])).unwrap();
        assert_eq!(r.events[0].r#type, EventType::Deleted as i32);
        assert_eq!(
            r.events[0].object.as_ref().unwrap().meta().resource_version,
            3
        );
        assert_eq!(r.events[1].r#type, EventType::Modified as i32);
        let marked = ok(&r.results[1]).clone();
        assert_eq!(marked.meta().deletion_timestamp_ms, Some(1000));
        assert!(t.contains_key(&keys::object_key(&key("f"))));

        let mut released = marked;
        released.meta_mut().finalizers.clear();
        let r = apply_command(&mut t, 4, &cmd(vec![Op::Update(released)])).unwrap();
        assert_eq!(r.events[0].r#type, EventType::Deleted as i32);
        assert!(t.is_empty());
    }

    #[test]
    fn apply_is_deterministic() {
        let c = cmd(vec![
            Op::Create(cm("a", &[("x", "1")])),
            Op::Create(cm("b", &[])),
        ]);
        let (mut t1, mut t2) = (BTreeMap::new(), BTreeMap::new());
        assert_eq!(
            apply_command(&mut t1, 9, &c).unwrap(),
            apply_command(&mut t2, 9, &c).unwrap()
        );
        assert_eq!(t1, t2);
    }

    #[test]
    fn immutable_configmap_refuses_data_change() {
        let mut t = BTreeMap::new();
        let mut o = cm("i", &[("k", "1")]);
        if let Some(Body::ConfigMap(c)) = &mut o.body {
            c.immutable = true;
        }
        apply_command(&mut t, 1, &cmd(vec![Op::Create(o.clone())])).unwrap();
        if let Some(Body::ConfigMap(c)) = &mut o.body {
            c.data.insert("k".into(), "2".into());
        }
        let r = apply_command(&mut t, 2, &cmd(vec![Op::Update(o)])).unwrap();
        assert_eq!(err(&r.results[0]), ErrorCode::InvalidArgument);
    }

    fn deployment(replicas: i32, image: &str) -> Object {
        let text = format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers: [{{name: c, image: {image}}}]\n");
        flotilla_api::manifest::parse_manifests("d", &text)
            .unwrap()
            .remove(0)
            .object
    }

    #[test]
    fn spec_writes_keep_status_and_generation_counts_spec_changes_only() {
        use flotilla_api::pb::api::DeploymentStatus;
        let mut t = BTreeMap::new();
        let r = apply_command(&mut t, 1, &cmd(vec![Op::Create(deployment(2, "nginx:1"))])).unwrap();
        assert_eq!(ok(&r.results[0]).meta().generation, 1);

        // Metadata only (a label): no generation bump.
        let mut o = deployment(2, "nginx:1");
        o.meta_mut().labels.insert("team".into(), "a".into());
        let r = apply_command(&mut t, 2, &cmd(vec![Op::Update(o)])).unwrap();
        assert_eq!(ok(&r.results[0]).meta().generation, 1);

        // A status carried by a spec write is ignored: status is not the writer's to change.
        let mut o = deployment(2, "nginx:1");
        o.meta_mut().labels.insert("team".into(), "a".into());
        if let Some(Body::Deployment(d)) = &mut o.body {
            d.status = Some(DeploymentStatus {
                ready_replicas: 7,
                ..Default::default()
            });
        }
        let r = apply_command(&mut t, 3, &cmd(vec![Op::Update(o)])).unwrap();
        let stored = ok(&r.results[0]);
        assert_eq!(
            stored.meta().resource_version,
            2,
            "unchanged: nothing written"
        );
        let Some(Body::Deployment(d)) = &stored.body else {
            panic!()
        };
        assert_eq!(d.status, None);

        // A spec change bumps generation.
        let mut o = deployment(3, "nginx:2");
        o.meta_mut().labels.insert("team".into(), "a".into());
        let r = apply_command(&mut t, 4, &cmd(vec![Op::Update(o)])).unwrap();
        assert_eq!(ok(&r.results[0]).meta().generation, 2);
    }
}
