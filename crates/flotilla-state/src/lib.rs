//! flotilla-state owns the meaning of a committed command: how a batch of writes changes the
//! objects, which preconditions hold, and which watch events result.
//!
//! Apply is deterministic: every server applies the same entry to the same state and gets the
//! same bytes. It must never do I/O, read a clock, draw randomness or consult local
//! configuration; the storage it writes through is the [`ObjectTable`] trait (redb in
//! `flotilla-raft`, a `BTreeMap` in tests).

use std::collections::BTreeMap;

use flotilla_api::pb::api::{
    object::Body, write::Op, write_result, ApiError, DeleteRequest, ErrorCode, EventType, Fence,
    Object, WatchEvent, WriteResult,
};
use flotilla_api::pb::raft::Command;
use flotilla_api::{keys, validation};

/// Where apply reads and writes objects. Keys come from [`keys::object_key`].
pub trait ObjectTable {
    type Error;
    fn get(&self, key: &str) -> Result<Option<Object>, Self::Error>;
    fn put(&mut self, key: &str, object: &Object) -> Result<(), Self::Error>;
    fn remove(&mut self, key: &str) -> Result<(), Self::Error>;
    /// Up to `limit` keys that start with `prefix`, in order.
    fn keys_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<String>, Self::Error>;
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
    fn keys_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<String>, Self::Error> {
        Ok(self
            .range(prefix.to_string()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .take(limit)
            .cloned()
            .collect())
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
    // The verdict on the current run of writes that carry the same fence.
    let mut fenced: Option<(&Fence, Result<(), ApiError>)> = None;
    for (position, w) in cmd.writes.iter().enumerate() {
        match &w.fence {
            None => fenced = None,
            Some(f) => {
                if fenced.as_ref().is_none_or(|(g, _)| *g != f) {
                    fenced = Some((f, check_fence(table, f)?));
                }
                if let Some((_, Err(e))) = &fenced {
                    out.results.push(WriteResult {
                        result: Some(write_result::Result::Error(e.clone())),
                    });
                    continue;
                }
            }
        }
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
            Some(Op::UpdateStatus(o)) => update_status(table, revision, o, &mut out.events)?,
            Some(Op::Delete(d)) => delete(table, revision, cmd.timestamp_ms, d, &mut out.events)?,
            Some(Op::Bind(b)) => bind(table, revision, cmd.timestamp_ms, b, &mut out.events)?,
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

/// Whether `f`'s lease is still at `f.epoch` (its leaseTransitions): only the current holder's
/// writes apply, whatever the clocks of the servers say.
fn check_fence<T: ObjectTable>(table: &T, f: &Fence) -> Result<Result<(), ApiError>, T::Error> {
    let key = keys::object_key(&flotilla_api::pb::api::ObjectKey {
        kind: "Lease".into(),
        namespace: f.lease_namespace.clone(),
        name: f.lease_name.clone(),
    });
    let fenced = |why: String| {
        Ok(Err(ApiError::new(
            ErrorCode::Fenced,
            format!(
                "write fenced: lease {}/{} {why}; the write carries epoch {}",
                f.lease_namespace, f.lease_name, f.epoch
            ),
        )))
    };
    let Some(lease) = table.get(&key)? else {
        return fenced("does not exist".into());
    };
    let spec = match &lease.body {
        Some(flotilla_api::pb::api::object::Body::Lease(l)) => l.spec.clone().unwrap_or_default(),
        _ => return fenced("is not a Lease".into()),
    };
    let epoch = i64::from(spec.lease_transitions.unwrap_or(0));
    if epoch != f.epoch {
        return fenced(format!(
            "is at epoch {epoch}, held by {:?}",
            spec.holder_identity.unwrap_or_default()
        ));
    }
    Ok(Ok(()))
}

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
    if let Err(e) = ensure_namespace(table, revision, now_ms, obj, events)? {
        return Ok(Err(e));
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
    m.deletion_grace_period_seconds = None;
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
    let (key, k, stored) = match load_for_update(table, obj)? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
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
    if let (Some(Body::Pod(old)), Some(Body::Pod(new))) = (&stored.body, &obj.body) {
        let was = old
            .spec
            .as_ref()
            .map(|s| s.node_name.as_str())
            .unwrap_or("");
        let now = new
            .spec
            .as_ref()
            .map(|s| s.node_name.as_str())
            .unwrap_or("");
        if !was.is_empty() && was != now {
            return Ok(Err(ApiError::invalid(
                "spec.nodeName",
                format!("{key} is bound to node {was:?}; a bound pod never moves (delete it and create another)"),
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
    m.deletion_grace_period_seconds = sm.deletion_grace_period_seconds;
    m.generation = sm.generation + i64::from(body_changed);
    m.resource_version = revision;
    let contents_remain =
        o.kind == NAMESPACE_KIND && !namespace_contents(table, &o.meta().name, 1)?.is_empty();
    let m = o.meta();
    // A pod still inside its grace period waits for its node, finalizers or not.
    let grace_pending = m.deletion_grace_period_seconds.unwrap_or(0) > 0;
    if m.deletion_timestamp_ms.is_some()
        && m.finalizers.is_empty()
        && !contents_remain
        && !grace_pending
    {
        // The last finalizer is gone from an object marked for deletion: it goes now (a
        // namespace only once it is empty too).
        table.remove(&k)?;
        event(events, EventType::Deleted, &o, revision);
        finish_namespace_if_empty(table, revision, &o, events)?;
        return Ok(Ok(o));
    }
    table.put(&k, &o)?;
    event(events, EventType::Modified, &o, revision);
    Ok(Ok(o))
}

/// What an update (of the object or of its status) starts from: the write checked, the stored
/// object found, and a nonzero resourceVersion matching the stored one.
#[allow(clippy::type_complexity)]
fn load_for_update<T: ObjectTable>(
    table: &T,
    obj: &Object,
) -> Result<Result<(flotilla_api::pb::api::ObjectKey, String, Object), ApiError>, T::Error> {
    if let Err(e) = validation::validate_object(obj) {
        return Ok(Err(e));
    }
    let key = obj.key();
    let k = keys::object_key(&key);
    let Some(stored) = table.get(&k)? else {
        return Ok(Err(ApiError::not_found(&key)));
    };
    if let Err(e) = check_resource_version(&key, obj, &stored) {
        return Ok(Err(e));
    }
    Ok(Ok((key, k, stored)))
}

/// A nonzero resourceVersion in a write is a precondition on the stored object's.
fn check_resource_version(
    key: &flotilla_api::pb::api::ObjectKey,
    obj: &Object,
    stored: &Object,
) -> Result<(), ApiError> {
    let want_rv = obj.meta().resource_version;
    if want_rv != 0 && want_rv != stored.meta().resource_version {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "{key}: the object has been modified (resourceVersion {} is not the current {}); read it again and retry",
                want_rv,
                stored.meta().resource_version
            ),
        ));
    }
    Ok(())
}

/// The status subresource: only the status changes; spec, metadata and generation stay.
fn update_status<T: ObjectTable>(
    table: &mut T,
    revision: u64,
    obj: &Object,
    events: &mut Vec<WatchEvent>,
) -> WriteOutcome<T::Error> {
    let (_, k, stored) = match load_for_update(table, obj)? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    let mut o = stored.clone();
    flotilla_api::kinds::keep_status(&mut o.body, &obj.body);
    if o.body == stored.body {
        return Ok(Ok(stored));
    }
    o.meta_mut().resource_version = revision;
    table.put(&k, &o)?;
    event(events, EventType::Modified, &o, revision);
    Ok(Ok(o))
}

/// Held by an object whose deletion waits for its dependents to be deleted.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// Held by an object whose dependents must be released (not deleted) before it goes.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// Kubernetes' pods/binding: the one way an unbound pod gets its node, never a second time.
fn bind<T: ObjectTable>(
    table: &mut T,
    revision: u64,
    now_ms: i64,
    b: &flotilla_api::pb::api::Binding,
    events: &mut Vec<WatchEvent>,
) -> WriteOutcome<T::Error> {
    let key = flotilla_api::pb::api::ObjectKey {
        kind: "Pod".into(),
        namespace: b.namespace.clone(),
        name: b.name.clone(),
    };
    if b.node_name.is_empty() {
        return Ok(Err(ApiError::invalid("bind.nodeName", "must be set")));
    }
    let k = keys::object_key(&key);
    let Some(mut o) = table.get(&k)? else {
        return Ok(Err(ApiError::not_found(&key)));
    };
    let conflict = |why: String| {
        Ok(Err(ApiError::new(
            ErrorCode::Conflict,
            format!("{key}: {why}"),
        )))
    };
    if !b.uid.is_empty() && b.uid != o.meta().uid {
        return conflict(format!(
            "uid is {}, the binding is for {}",
            o.meta().uid,
            b.uid
        ));
    }
    if o.meta().deletion_timestamp_ms.is_some() {
        return conflict("is being deleted".into());
    }
    let Some(Body::Pod(pod)) = &mut o.body else {
        return Ok(Err(ApiError::internal(format!("{key} has no pod body"))));
    };
    let spec = pod.spec.get_or_insert_with(Default::default);
    if !spec.node_name.is_empty() {
        return conflict(format!("is already bound to node {:?}", spec.node_name));
    }
    spec.node_name = b.node_name.clone();
    let status = pod.status.get_or_insert_with(Default::default);
    let now = flotilla_api::manifest::format_timestamp_ms(now_ms);
    status.conditions.retain(|c| c.r#type != "PodScheduled");
    status.conditions.push(flotilla_api::pb::api::PodCondition {
        r#type: "PodScheduled".into(),
        status: "True".into(),
        last_transition_time: now,
        ..Default::default()
    });
    o.meta_mut().resource_version = revision;
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
    let Some(o) = table.get(&k)? else {
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
    if o.kind == "Namespace" {
        return delete_namespace(table, revision, now_ms, &k, o, events).map(Ok);
    }
    if let Some(grace) = pod_grace(&o, req.grace_period_seconds) {
        return mark_terminating(table, revision, now_ms, &k, o, grace, events).map(Ok);
    }
    let mut o = o;
    match req.propagation_policy.as_str() {
        "" | "Background" => {}
        "Foreground" | "Orphan" => {
            // The garbage collector finishes the deletion: it removes the finalizer once the
            // dependents are gone (Foreground) or released (Orphan).
            let f = if req.propagation_policy == "Foreground" {
                FOREGROUND_FINALIZER
            } else {
                ORPHAN_FINALIZER
            };
            let m = o.meta_mut();
            if m.deletion_timestamp_ms.is_none() && !m.finalizers.iter().any(|x| x == f) {
                m.finalizers.push(f.to_string());
            }
        }
        other => {
            return Ok(Err(ApiError::invalid(
                "propagationPolicy",
                format!("must be Background, Foreground or Orphan, got {other:?}"),
            )))
        }
    }
    remove_or_mark(table, revision, now_ms, &k, o, events).map(Ok)
}

/// The grace period a pod's deletion gets, or None to delete it at once: as Kubernetes, only
/// a pod bound to a node and not finished waits for that node to stop it.
fn pod_grace(o: &Object, requested: Option<i64>) -> Option<i64> {
    let Some(flotilla_api::pb::api::object::Body::Pod(p)) = &o.body else {
        return None;
    };
    let spec = p.spec.as_ref()?;
    let phase = p.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
    if spec.node_name.is_empty() || phase == "Succeeded" || phase == "Failed" {
        return None;
    }
    let grace = requested
        .or(spec.termination_grace_period_seconds)
        .unwrap_or(30);
    (grace > 0).then_some(grace)
}

/// Marks a pod terminating: `deletionTimestamp` = now + grace. A later delete may only
/// shorten the grace period, as in Kubernetes.
fn mark_terminating<T: ObjectTable>(
    table: &mut T,
    revision: u64,
    now_ms: i64,
    k: &str,
    mut o: Object,
    grace: i64,
    events: &mut Vec<WatchEvent>,
) -> Result<Object, T::Error> {
    let m = o.meta_mut();
    if m.deletion_grace_period_seconds
        .is_some_and(|current| current <= grace)
    {
        return Ok(o);
    }
    m.deletion_grace_period_seconds = Some(grace);
    m.deletion_timestamp_ms = Some(now_ms.saturating_add(grace.saturating_mul(1000)));
    m.resource_version = revision;
    table.put(k, &o)?;
    event(events, EventType::Modified, &o, revision);
    Ok(o)
}

/// Remove `o` (stored at `k`) now, or only mark it for deletion while finalizers remain. The
/// last object of a terminating namespace takes the namespace with it.
fn remove_or_mark<T: ObjectTable>(
    table: &mut T,
    revision: u64,
    now_ms: i64,
    k: &str,
    mut o: Object,
    events: &mut Vec<WatchEvent>,
) -> Result<Object, T::Error> {
    let m = o.meta_mut();
    if !m.finalizers.is_empty() {
        if m.deletion_timestamp_ms.is_some() && m.deletion_grace_period_seconds.unwrap_or(0) == 0 {
            return Ok(o);
        }
        // Marked now, or a terminating pod whose grace ends now: finalizers decide from here.
        if m.deletion_grace_period_seconds.is_some() {
            m.deletion_grace_period_seconds = Some(0);
        }
        m.deletion_timestamp_ms = Some(now_ms);
        m.resource_version = revision;
        table.put(k, &o)?;
        event(events, EventType::Modified, &o, revision);
        return Ok(o);
    }
    m.resource_version = revision;
    table.remove(k)?;
    event(events, EventType::Deleted, &o, revision);
    finish_namespace_if_empty(table, revision, &o, events)?;
    Ok(o)
}

const NAMESPACE_KIND: &str = "Namespace";

fn namespace_key(name: &str) -> String {
    keys::object_key(&flotilla_api::pb::api::ObjectKey {
        kind: NAMESPACE_KIND.into(),
        namespace: String::new(),
        name: name.into(),
    })
}

fn set_namespace_phase(ns: &mut Object, phase: &str) {
    if let Some(Body::Namespace(n)) = &mut ns.body {
        n.status.get_or_insert_with(Default::default).phase = phase.into();
    }
}

/// A namespaced object may only be created in a namespace that exists and is not being
/// deleted. `default` is created on first use, as Kubernetes' API server creates it at start.
fn ensure_namespace<T: ObjectTable>(
    table: &mut T,
    revision: u64,
    now_ms: i64,
    obj: &Object,
    events: &mut Vec<WatchEvent>,
) -> WriteOutcome<T::Error> {
    let ns = &obj.meta().namespace;
    if ns.is_empty() {
        return Ok(Ok(Object::default()));
    }
    let nk = namespace_key(ns);
    match table.get(&nk)? {
        Some(n) if n.meta().deletion_timestamp_ms.is_some() => Ok(Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        ))),
        Some(n) => Ok(Ok(n)),
        None if ns == "default" => {
            let mut n = Object {
                api_version: "v1".into(),
                kind: NAMESPACE_KIND.into(),
                metadata: Some(flotilla_api::pb::api::ObjectMeta {
                    name: ns.clone(),
                    uid: format!("{revision:016x}-namespace-default"),
                    resource_version: revision,
                    generation: 1,
                    creation_timestamp_ms: now_ms,
                    ..Default::default()
                }),
                body: Some(Body::Namespace(Default::default())),
            };
            set_namespace_phase(&mut n, "Active");
            table.put(&nk, &n)?;
            event(events, EventType::Added, &n, revision);
            Ok(Ok(n))
        }
        None => Ok(Err(ApiError::not_found(format!("namespace {ns:?}")))),
    }
}

/// Keys of every object in namespace `ns`, of all namespaced kinds.
fn namespace_contents<T: ObjectTable>(
    table: &T,
    ns: &str,
    limit: usize,
) -> Result<Vec<String>, T::Error> {
    let mut out = Vec::new();
    for (kind, _, namespaced) in validation::KINDS {
        if *namespaced && out.len() < limit {
            out.extend(table.keys_with_prefix(&keys::list_prefix(kind, ns), limit - out.len())?);
        }
    }
    Ok(out)
}

/// Deleting a namespace deletes everything in it, in the same revision: the namespace turns
/// `Terminating`, its objects go (or are marked, while they have finalizers), and the
/// namespace itself goes once it is empty and has no finalizers of its own.
fn delete_namespace<T: ObjectTable>(
    table: &mut T,
    revision: u64,
    now_ms: i64,
    k: &str,
    mut ns: Object,
    events: &mut Vec<WatchEvent>,
) -> Result<Object, T::Error> {
    let name = ns.meta().name.clone();
    if ns.meta().deletion_timestamp_ms.is_none() {
        ns.meta_mut().deletion_timestamp_ms = Some(now_ms);
        ns.meta_mut().resource_version = revision;
        set_namespace_phase(&mut ns, "Terminating");
        table.put(k, &ns)?;
        event(events, EventType::Modified, &ns, revision);
    }
    for key in namespace_contents(table, &name, usize::MAX)? {
        if let Some(o) = table.get(&key)? {
            remove_or_mark(table, revision, now_ms, &key, o, events)?;
        }
    }
    Ok(table.get(k)?.unwrap_or(ns))
}

/// After `gone` was removed: if its namespace is terminating, empty and free of finalizers,
/// the namespace is removed too.
fn finish_namespace_if_empty<T: ObjectTable>(
    table: &mut T,
    revision: u64,
    gone: &Object,
    events: &mut Vec<WatchEvent>,
) -> Result<(), T::Error> {
    let name = if gone.kind == NAMESPACE_KIND {
        return Ok(());
    } else {
        &gone.meta().namespace
    };
    if name.is_empty() {
        return Ok(());
    }
    let nk = namespace_key(name);
    let Some(mut ns) = table.get(&nk)? else {
        return Ok(());
    };
    let m = ns.meta();
    if m.deletion_timestamp_ms.is_none() || !m.finalizers.is_empty() {
        return Ok(());
    }
    if !namespace_contents(table, name, 1)?.is_empty() {
        return Ok(());
    }
    ns.meta_mut().resource_version = revision;
    table.remove(&nk)?;
    event(events, EventType::Deleted, &ns, revision);
    Ok(())
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
                .map(|op| Write {
                    op: Some(op),
                    fence: None,
                })
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
        // Namespace `default` (created on first use), then a and b.
        assert_eq!(a.events.len(), 3);
        assert_eq!(a.events[0].object.as_ref().unwrap().kind, "Namespace");
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
                grace_period_seconds: None,
                propagation_policy: String::new(),
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
        assert_eq!(
            t.keys().cloned().collect::<Vec<_>>(),
            vec![namespace_key("default")]
        );
    }

    #[test]
    fn a_pod_is_bound_once_and_never_moves() {
        use flotilla_api::pb::api::{Binding, Pod, PodSpec};
        let mut t = BTreeMap::new();
        let mut p = cm("p", &[]);
        p.kind = "Pod".into();
        p.body = Some(Body::Pod(Pod {
            spec: Some(PodSpec {
                containers: vec![flotilla_api::pb::api::Container {
                    name: "c".into(),
                    image: "busybox:1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }));
        let r = apply_command(&mut t, 1, &cmd(vec![Op::Create(p)])).unwrap();
        let uid = ok(&r.results[0]).meta().uid.clone();
        let bind = |node: &str, uid: &str| {
            Op::Bind(Binding {
                namespace: "default".into(),
                name: "p".into(),
                uid: uid.into(),
                node_name: node.into(),
            })
        };
        let r = apply_command(&mut t, 2, &cmd(vec![bind("n1", "other-uid")])).unwrap();
        assert_eq!(err(&r.results[0]), ErrorCode::Conflict);
        let r = apply_command(&mut t, 3, &cmd(vec![bind("n1", &uid)])).unwrap();
        let bound = ok(&r.results[0]).clone();
        let Some(Body::Pod(bp)) = &bound.body else {
            panic!()
        };
        assert_eq!(bp.spec.as_ref().unwrap().node_name, "n1");
        let cond = &bp.status.as_ref().unwrap().conditions[0];
        assert_eq!(
            (cond.r#type.as_str(), cond.status.as_str()),
            ("PodScheduled", "True")
        );
        assert_eq!(bound.meta().resource_version, 3);
        assert_eq!(r.events.len(), 1);
        // Twice: refused, whoever asks.
        let r = apply_command(&mut t, 4, &cmd(vec![bind("n2", &uid)])).unwrap();
        assert_eq!(err(&r.results[0]), ErrorCode::Conflict);
        // Nor may an update move it.
        let mut moved = bound.clone();
        if let Some(Body::Pod(mp)) = &mut moved.body {
            mp.spec.as_mut().unwrap().node_name = "n2".into();
        }
        let r = apply_command(&mut t, 5, &cmd(vec![Op::Update(moved)])).unwrap();
        assert_eq!(err(&r.results[0]), ErrorCode::InvalidArgument);
    }

    #[test]
    fn pods_on_a_node_are_deleted_gracefully() {
        use flotilla_api::pb::api::{Pod, PodSpec, PodStatus};
        let pod = |name: &str, node: &str, phase: &str| {
            let mut o = cm(name, &[]);
            o.kind = "Pod".into();
            o.body = Some(Body::Pod(Pod {
                spec: Some(PodSpec {
                    node_name: node.into(),
                    termination_grace_period_seconds: Some(30),
                    containers: vec![flotilla_api::pb::api::Container {
                        name: "c".into(),
                        image: "busybox:1".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                status: Some(PodStatus {
                    phase: phase.into(),
                    ..Default::default()
                }),
            }));
            o
        };
        let pkey = |name: &str| ObjectKey {
            kind: "Pod".into(),
            namespace: "default".into(),
            name: name.into(),
        };
        let del = |name: &str, grace: Option<i64>| {
            Op::Delete(DeleteRequest {
                key: Some(pkey(name)),
                expected_resource_version: None,
                expected_uid: None,
                grace_period_seconds: grace,
                propagation_policy: String::new(),
            })
        };
        let mut t = BTreeMap::new();
        let mut create = vec![
            Op::Create(pod("bound", "n1", "")),
            Op::Create(pod("unbound", "", "")),
        ];
        create.push(Op::Create(pod("other", "n1", "")));
        apply_command(&mut t, 1, &cmd(create)).unwrap();
        // Status is written through the status subresource; a finished pod goes at once.
        let mut done = pod("done", "n1", "Succeeded");
        let r = apply_command(&mut t, 2, &cmd(vec![Op::Create(done.clone())])).unwrap();
        ok(&r.results[0]);
        done.meta_mut().uid = t
            .get(&keys::object_key(&pkey("done")))
            .unwrap()
            .meta()
            .uid
            .clone();
        apply_command(&mut t, 3, &cmd(vec![Op::UpdateStatus(done)])).unwrap();

        let r = apply_command(
            &mut t,
            4,
            &cmd(vec![
                del("bound", None),
                del("unbound", None),
                del("done", None),
            ]),
        )
        .unwrap();
        let marked = ok(&r.results[0]).meta().clone();
        assert_eq!(marked.deletion_grace_period_seconds, Some(30));
        assert_eq!(marked.deletion_timestamp_ms, Some(1000 + 30_000));
        assert!(t.contains_key(&keys::object_key(&pkey("bound"))));
        assert!(!t.contains_key(&keys::object_key(&pkey("unbound"))));
        assert!(!t.contains_key(&keys::object_key(&pkey("done"))));

        // Status writes and updates while terminating keep it; a longer grace is ignored; a
        // shorter one applies; grace 0 (the node's confirmation, or --force) removes it.
        let r = apply_command(&mut t, 5, &cmd(vec![del("bound", Some(60))])).unwrap();
        assert!(r.events.is_empty());
        let mut labelled = t.get(&keys::object_key(&pkey("bound"))).unwrap().clone();
        labelled.meta_mut().labels.insert("x".into(), "y".into());
        apply_command(&mut t, 6, &cmd(vec![Op::Update(labelled)])).unwrap();
        assert!(t.contains_key(&keys::object_key(&pkey("bound"))));
        let r = apply_command(&mut t, 7, &cmd(vec![del("bound", Some(5))])).unwrap();
        assert_eq!(
            ok(&r.results[0]).meta().deletion_grace_period_seconds,
            Some(5)
        );
        let r = apply_command(
            &mut t,
            8,
            &cmd(vec![del("bound", Some(0)), del("other", Some(0))]),
        )
        .unwrap();
        assert_eq!(r.events.len(), 2);
        assert!(r
            .events
            .iter()
            .all(|e| e.r#type == EventType::Deleted as i32));
    }

    #[test]
    fn fenced_writes_apply_only_at_the_current_epoch() {
        use flotilla_api::pb::api::{Lease, LeaseSpec, Write};
        let lease = |holder: &str, epoch: i32| {
            let mut o = cm("scheduler", &[]);
            o.kind = "Lease".into();
            o.api_version = "coordination.k8s.io/v1".into();
            o.body = Some(Body::Lease(Lease {
                spec: Some(LeaseSpec {
                    holder_identity: Some(holder.into()),
                    lease_duration_seconds: Some(10),
                    lease_transitions: Some(epoch),
                    ..Default::default()
                }),
            }));
            o
        };
        let fence = |epoch: i64| Fence {
            lease_namespace: "default".into(),
            lease_name: "scheduler".into(),
            epoch,
        };
        let fenced = |op: Op, epoch: i64| Write {
            op: Some(op),
            fence: Some(fence(epoch)),
        };
        let mut t = BTreeMap::new();
        // No lease yet: every fenced write fails.
        let r = apply_command(
            &mut t,
            1,
            &Command {
                timestamp_ms: 1000,
                writes: vec![fenced(Op::Create(cm("early", &[])), 0)],
            },
        )
        .unwrap();
        assert_eq!(err(&r.results[0]), ErrorCode::Fenced);
        apply_command(&mut t, 2, &cmd(vec![Op::Create(lease("server-1", 1))])).unwrap();
        // Epoch 1 holds; an old epoch's run fails whole, and an unfenced write beside it applies.
        let r = apply_command(
            &mut t,
            3,
            &Command {
                timestamp_ms: 1000,
                writes: vec![
                    fenced(Op::Create(cm("a", &[])), 1),
                    fenced(Op::Create(cm("b", &[])), 1),
                    fenced(Op::Create(cm("stale-1", &[])), 0),
                    fenced(Op::Create(cm("stale-2", &[])), 0),
                    Write {
                        op: Some(Op::Create(cm("plain", &[]))),
                        fence: None,
                    },
                ],
            },
        )
        .unwrap();
        ok(&r.results[0]);
        ok(&r.results[1]);
        assert_eq!(err(&r.results[2]), ErrorCode::Fenced);
        assert_eq!(err(&r.results[3]), ErrorCode::Fenced);
        ok(&r.results[4]);
        let msg = match &r.results[2].result {
            Some(write_result::Result::Error(e)) => e.message.clone(),
            _ => String::new(),
        };
        assert!(
            msg.contains("epoch 1, held by \"server-1\"") && msg.contains("carries epoch 0"),
            "{msg}"
        );
        // Another server takes the lease (epoch 2): the deposed holder's epoch-1 writes fail,
        // even in the same command right after the takeover.
        let mut taken = t
            .get(&keys::object_key(&ObjectKey {
                kind: "Lease".into(),
                namespace: "default".into(),
                name: "scheduler".into(),
            }))
            .unwrap()
            .clone();
        taken.body = lease("server-2", 2).body;
        let r = apply_command(
            &mut t,
            4,
            &Command {
                timestamp_ms: 1000,
                writes: vec![
                    Write {
                        op: Some(Op::Update(taken)),
                        fence: None,
                    },
                    fenced(Op::Create(cm("late", &[])), 1),
                    fenced(Op::Create(cm("new-leader", &[])), 2),
                ],
            },
        )
        .unwrap();
        ok(&r.results[0]);
        assert_eq!(err(&r.results[1]), ErrorCode::Fenced);
        ok(&r.results[2]);
        assert!(!t.contains_key(&keys::object_key(&key("late"))));
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

        // A status write changes only status: the spec it carries is ignored, generation stays.
        let mut s = deployment(99, "other:9");
        if let Some(Body::Deployment(d)) = &mut s.body {
            d.status = Some(DeploymentStatus {
                ready_replicas: 3,
                ..Default::default()
            });
        }
        let r = apply_command(&mut t, 5, &cmd(vec![Op::UpdateStatus(s.clone())])).unwrap();
        let stored = ok(&r.results[0]);
        assert_eq!(
            (stored.meta().generation, stored.meta().resource_version),
            (2, 5)
        );
        let Some(Body::Deployment(d)) = &stored.body else {
            panic!()
        };
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3));
        assert_eq!(d.status.as_ref().unwrap().ready_replicas, 3);
        assert_eq!(r.events.len(), 1);
        // With a stale resourceVersion it is a conflict.
        s.meta_mut().resource_version = 4;
        let r = apply_command(&mut t, 6, &cmd(vec![Op::UpdateStatus(s)])).unwrap();
        assert_eq!(err(&r.results[0]), ErrorCode::Conflict);
    }

    fn namespace(name: &str) -> Object {
        Object {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            metadata: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            body: Some(Body::Namespace(Default::default())),
        }
    }

    fn in_ns(mut o: Object, ns: &str) -> Object {
        o.meta_mut().namespace = ns.into();
        o
    }

    fn del(kind: &str, ns: &str, name: &str) -> Op {
        Op::Delete(DeleteRequest {
            key: Some(ObjectKey {
                kind: kind.into(),
                namespace: ns.into(),
                name: name.into(),
            }),
            ..Default::default()
        })
    }

    #[test]
    fn namespaces_must_exist_and_take_their_objects_with_them() {
        let mut t = BTreeMap::new();
        // A missing namespace is refused; `default` appears on first use.
        let r = apply_command(
            &mut t,
            1,
            &cmd(vec![Op::Create(in_ns(cm("a", &[]), "team"))]),
        )
        .unwrap();
        assert_eq!(err(&r.results[0]), ErrorCode::NotFound);
        let r = apply_command(&mut t, 2, &cmd(vec![Op::Create(cm("a", &[]))])).unwrap();
        ok(&r.results[0]);
        assert!(t.contains_key(&namespace_key("default")));
        assert_eq!(
            r.events.len(),
            2,
            "ADDED namespace default, ADDED the config map"
        );

        apply_command(&mut t, 3, &cmd(vec![Op::Create(namespace("team"))])).unwrap();
        let mut held = in_ns(cm("held", &[]), "team");
        held.meta_mut().finalizers = vec!["example.com/hold".into()];
        let r = apply_command(
            &mut t,
            4,
            &cmd(vec![
                Op::Create(in_ns(cm("x", &[]), "team")),
                Op::Create(held.clone()),
            ]),
        )
        .unwrap();
        assert!(r
            .results
            .iter()
            .all(|w| matches!(w.result, Some(write_result::Result::Object(_)))));

        // Deleting the namespace: x goes, held is marked, the namespace is Terminating.
        let r = apply_command(&mut t, 5, &cmd(vec![del("Namespace", "", "team")])).unwrap();
        ok(&r.results[0]);
        let ns = t.get(&namespace_key("team")).unwrap().clone();
        let Some(Body::Namespace(n)) = &ns.body else {
            panic!()
        };
        assert_eq!(n.status.as_ref().unwrap().phase, "Terminating");
        assert!(!t.contains_key(&keys::object_key(&in_ns(cm("x", &[]), "team").key())));
        assert!(t[&keys::object_key(&held.key())]
            .meta()
            .deletion_timestamp_ms
            .is_some());
        // Nothing new may be created in it.
        let r = apply_command(
            &mut t,
            6,
            &cmd(vec![Op::Create(in_ns(cm("y", &[]), "team"))]),
        )
        .unwrap();
        assert_eq!(err(&r.results[0]), ErrorCode::Forbidden);

        // Releasing the last finalizer removes the object and then the empty namespace.
        let mut released = t[&keys::object_key(&held.key())].clone();
        released.meta_mut().finalizers.clear();
        let r = apply_command(&mut t, 7, &cmd(vec![Op::Update(released)])).unwrap();
        ok(&r.results[0]);
        assert!(!t.contains_key(&namespace_key("team")));
        let kinds: Vec<(i32, &str)> = r
            .events
            .iter()
            .map(|e| (e.r#type, e.object.as_ref().unwrap().kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (EventType::Deleted as i32, "ConfigMap"),
                (EventType::Deleted as i32, "Namespace")
            ]
        );
    }
}
