//! What every controller shares: the writes it asks for, owner references, and how a pod
//! counts (active, ready, available).

use flotilla_api::pb::api::{object::Body, Object, ObjectKey, ObjectReference, OwnerReference};

/// One write a reconcile asks for. Updates carry the resourceVersion they were computed from
/// (a precondition); deletes carry the uid.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create(Object),
    Update(Object),
    UpdateStatus(Object),
    Delete {
        key: ObjectKey,
        uid: String,
    },
    /// A Kubernetes-style Event about `involved`.
    Event {
        involved: ObjectReference,
        event_type: &'static str,
        reason: &'static str,
        message: String,
    },
}

/// What a reconcile decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reconciled {
    pub actions: Vec<Action>,
    /// Look again after this many ms even if nothing changes (a pod becoming available after
    /// minReadySeconds, a deadline).
    pub requeue_after_ms: Option<i64>,
}

impl Reconciled {
    pub fn requeue(&mut self, after_ms: i64) {
        let after_ms = after_ms.max(1);
        self.requeue_after_ms = Some(self.requeue_after_ms.map_or(after_ms, |r| r.min(after_ms)));
    }

    pub fn event(
        &mut self,
        o: &Object,
        event_type: &'static str,
        reason: &'static str,
        message: String,
    ) {
        self.actions.push(Action::Event {
            involved: flotilla_api::events::reference(o),
            event_type,
            reason,
            message,
        });
    }
}

/// The controller reference (ownerReference with `controller: true`), if any.
pub fn controller_of(o: &Object) -> Option<&OwnerReference> {
    o.meta().owner_references.iter().find(|r| r.controller)
}

/// A controller reference to `owner`, as its dependents carry it.
pub fn controller_ref(owner: &Object) -> OwnerReference {
    OwnerReference {
        api_version: owner.api_version.clone(),
        kind: owner.kind.clone(),
        name: owner.meta().name.clone(),
        uid: owner.meta().uid.clone(),
        controller: true,
        block_owner_deletion: true,
    }
}

pub fn key_of(o: &Object) -> ObjectKey {
    o.key()
}

/// RFC 3339 to ms since the epoch.
pub fn parse_time_ms(t: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(t).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

pub fn format_time(ms: i64) -> String {
    flotilla_api::manifest::format_timestamp_ms(ms)
}

fn pod(o: &Object) -> Option<&flotilla_api::pb::api::Pod> {
    match &o.body {
        Some(Body::Pod(p)) => Some(p),
        _ => None,
    }
}

pub fn phase(o: &Object) -> &str {
    pod(o)
        .and_then(|p| p.status.as_ref())
        .map(|s| s.phase.as_str())
        .unwrap_or("")
}

/// Not finished and not being deleted: it counts toward a controller's replicas.
pub fn is_active(o: &Object) -> bool {
    o.meta().deletion_timestamp_ms.is_none() && !matches!(phase(o), "Succeeded" | "Failed")
}

/// Since when the pod has been Ready (ms), if it is.
pub fn ready_since_ms(o: &Object) -> Option<i64> {
    let st = pod(o)?.status.as_ref()?;
    let c = st
        .conditions
        .iter()
        .find(|c| c.r#type == "Ready" && c.status == "True")?;
    Some(parse_time_ms(&c.last_transition_time).unwrap_or(0))
}

pub fn is_ready(o: &Object) -> bool {
    ready_since_ms(o).is_some()
}

/// Ready for at least `min_ready_seconds` at `now_ms`; otherwise when it will be, if ready.
pub fn availability(o: &Object, min_ready_seconds: i32, now_ms: i64) -> Result<(), Option<i64>> {
    let Some(since) = ready_since_ms(o) else {
        return Err(None);
    };
    let at = since.saturating_add(i64::from(min_ready_seconds.max(0)) * 1000);
    if min_ready_seconds <= 0 || now_ms >= at {
        Ok(())
    } else {
        Err(Some(at))
    }
}

/// Counts over a set of pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodCounts {
    pub active: i32,
    pub ready: i32,
    pub available: i32,
    /// The earliest time (ms) a ready pod becomes available, if any is waiting.
    pub next_available_ms: Option<i64>,
}

pub fn count_pods<'a>(
    pods: impl IntoIterator<Item = &'a Object>,
    min_ready_seconds: i32,
    now_ms: i64,
) -> PodCounts {
    let mut c = PodCounts::default();
    for p in pods.into_iter().filter(|p| is_active(p)) {
        c.active += 1;
        if is_ready(p) {
            c.ready += 1;
        }
        match availability(p, min_ready_seconds, now_ms) {
            Ok(()) => c.available += 1,
            Err(Some(at)) => {
                c.next_available_ms = Some(c.next_available_ms.map_or(at, |n: i64| n.min(at)))
            }
            Err(None) => {}
        }
    }
    c
}

/// A count or a percentage of `total` (Kubernetes' IntOrString), rounded up or down.
pub fn int_or_percent(v: &str, total: i32, round_up: bool, default: &str) -> i32 {
    let v = if v.is_empty() { default } else { v };
    match v.strip_suffix('%') {
        Some(p) => {
            let p: i64 = p.trim().parse().unwrap_or(0);
            let x = i64::from(total) * p;
            let r = if round_up { (x + 99) / 100 } else { x / 100 };
            r.clamp(0, i64::from(i32::MAX)) as i32
        }
        None => v.trim().parse().unwrap_or(0),
    }
}

/// Kubernetes' safe alphabet for generated name suffixes and hashes (no vowels, no look-alike
/// characters).
pub const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A 32-bit FNV-1a hash written in the safe alphabet.
pub fn safe_hash(bytes: &[u8]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let mut out = String::new();
    let n = SAFE_ALPHABET.len() as u32;
    for _ in 0..10 {
        out.push(SAFE_ALPHABET[(h % n) as usize] as char);
        h /= n;
        if h == 0 {
            break;
        }
    }
    out
}
