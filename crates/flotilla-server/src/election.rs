//! Elections for the roles that change the store on their own (`scheduler`,
//! `controller-manager`), through Lease objects in `flotilla-system` (DESIGN.md §2.4). A server
//! takes a role's Lease when it is absent or expired with a write conditional on the
//! resourceVersion it read, bumping `leaseTransitions` (the epoch), and renews it by writing.
//! What a holder writes carries `fence = (lease, epoch)`, which the state machine checks: clocks
//! decide only when a lease looks expired (liveness), never whose writes apply (safety).
//!
//! It must never let a role act on an epoch it has not seen committed, nor before its picture
//! of the cluster has reached the revision that gave it the epoch (the previous holder's last
//! writes are older than that; a follower that lags would decide without them).

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::pb::api::object::Body;
use flotilla_api::pb::api::object_service_server::ObjectService;
use flotilla_api::pb::api::{
    CreateRequest, Fence, GetRequest, Lease, LeaseSpec, Object, ObjectKey, ObjectMeta,
    UpdateRequest,
};
use flotilla_api::ErrorCode;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::api::ObjectApi;
use crate::identity::SYSTEM_NAMESPACE;
use crate::node::Node;

/// The elected roles.
pub const ROLES: [&str; 2] = ["scheduler", "controller-manager"];

/// What a server should do about a role's Lease, decided from what it read (pure: no clock).
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// No Lease: create it, epoch 1.
    Create,
    /// Ours: write a new renewTime.
    Renew { epoch: i64 },
    /// Expired and someone else's: take it (epoch + 1).
    Take { epoch: i64 },
    /// Held by `holder` until it expires.
    Wait { holder: String },
    /// Ours, but we lead Raft: give it up so a follower takes it at once.
    Release { epoch: i64 },
}

fn time_ms(t: &Option<String>) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(t.as_deref()?).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

/// `raft_leader`: this server leads Raft and others could hold the role. Roles then stay on
/// followers (the leader releases them and takes them only when nobody else has for a whole
/// extra lease duration), so losing the Raft leader never also loses a role holder: scheduling
/// and reconciliation resume as soon as a new Raft leader is elected.
pub fn decide(lease: Option<&Object>, me: &str, now_ms: i64, raft_leader: bool) -> Action {
    let Some(o) = lease else {
        return if raft_leader {
            Action::Wait {
                holder: String::new(),
            }
        } else {
            Action::Create
        };
    };
    let spec = match &o.body {
        Some(Body::Lease(l)) => l.spec.clone().unwrap_or_default(),
        _ => LeaseSpec::default(),
    };
    let epoch = i64::from(spec.lease_transitions.unwrap_or(0));
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return if raft_leader {
            Action::Release { epoch }
        } else {
            Action::Renew { epoch }
        };
    }
    let duration_ms = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0)) * 1000;
    let renewed = time_ms(&spec.renew_time).unwrap_or(0);
    // A Raft leader waits one more lease duration: a follower should take it first.
    let patience = if raft_leader {
        2 * duration_ms
    } else {
        duration_ms
    };
    let free = holder.is_empty() && !raft_leader;
    if free || now_ms > renewed.saturating_add(patience) {
        Action::Take { epoch: epoch + 1 }
    } else {
        Action::Wait { holder }
    }
}

fn rfc3339_micros(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_micros(t).to_string()
}

fn lease_key(role: &str) -> ObjectKey {
    ObjectKey {
        kind: "Lease".into(),
        namespace: SYSTEM_NAMESPACE.into(),
        name: role.into(),
    }
}

/// Who holds each role, from this server's state.
pub fn holders(node: &Node) -> Vec<flotilla_api::pb::admin::RoleHolder> {
    let now = crate::now_ms();
    ROLES
        .iter()
        .map(|role| {
            let lease = node.reader.get(&lease_key(role)).ok().and_then(|(o, _)| o);
            let spec = match lease.as_ref().and_then(|o| o.body.as_ref()) {
                Some(Body::Lease(l)) => l.spec.clone().unwrap_or_default(),
                _ => LeaseSpec::default(),
            };
            let duration_s = spec.lease_duration_seconds.unwrap_or(0);
            let renewed = time_ms(&spec.renew_time).unwrap_or(0);
            flotilla_api::pb::admin::RoleHolder {
                role: role.to_string(),
                holder: spec.holder_identity.clone().unwrap_or_default(),
                epoch: i64::from(spec.lease_transitions.unwrap_or(0)),
                renew_time: spec.renew_time.clone().unwrap_or_default(),
                lease_duration_seconds: duration_s,
                expired: lease.is_some()
                    && now > renewed.saturating_add(i64::from(duration_s.max(0)) * 1000),
            }
        })
        .collect()
}

/// The fence a holder of `role` at `epoch` puts on its writes.
pub fn fence(role: &str, epoch: i64) -> Fence {
    Fence {
        lease_namespace: SYSTEM_NAMESPACE.into(),
        lease_name: role.into(),
        epoch,
    }
}

/// A role this server holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub epoch: i64,
    /// The revision of the write that gave this server the epoch: a role acts only once its
    /// own view of the store has applied this far.
    pub since: u64,
}

impl Held {
    /// After a successful create, take or renew at `epoch` committed at `revision`: a renewal
    /// keeps the revision the epoch was acquired at.
    pub fn after_write(prev: Option<Held>, epoch: i64, revision: u64) -> Held {
        match prev {
            Some(h) if h.epoch == epoch => h,
            _ => Held {
                epoch,
                since: revision,
            },
        }
    }
}

/// Per role, whether this server holds it and at which epoch (None: not the holder).
#[derive(Clone)]
pub struct Elections {
    pub roles: Vec<(&'static str, watch::Receiver<Option<Held>>)>,
}

impl Elections {
    pub fn epoch(&self, role: &str) -> Option<i64> {
        self.held(role).map(|h| h.epoch)
    }

    pub fn held(&self, role: &str) -> Option<Held> {
        self.roles
            .iter()
            .find(|(r, _)| *r == role)
            .and_then(|(_, rx)| *rx.borrow())
    }
}

/// One loop per role: every `role_retry_ms`, read the Lease and create, renew or take it.
pub fn start(node: Arc<Node>, api: Arc<ObjectApi>, tasks: &TaskTracker) -> Elections {
    let mut roles = Vec::new();
    for role in ROLES {
        let (tx, rx) = watch::channel(None);
        roles.push((role, rx));
        let node = node.clone();
        let api = api.clone();
        tasks.spawn(async move { run(node, api, role, tx).await });
    }
    Elections { roles }
}

async fn run(
    node: Arc<Node>,
    api: Arc<ObjectApi>,
    role: &'static str,
    tx: watch::Sender<Option<Held>>,
) {
    let me = format!("server-{}", node.id);
    let duration_s = (node.limits.role_lease_duration_ms / 1000).max(1) as i32;
    let retry = Duration::from_millis(node.limits.role_retry_ms.max(50));
    // When our last renewal was committed; past the lease's duration we stop acting as holder
    // even if the write is merely slow (the fence would refuse us anyway).
    let mut held_since_ms: Option<i64> = None;
    loop {
        match step(&node, &api, role, &me, duration_s).await {
            Ok(Some((epoch, revision))) => {
                let prev = *tx.borrow();
                let held = Held::after_write(prev, epoch, revision);
                if prev != Some(held) {
                    tracing::info!(role, epoch, since = held.since, "holding the role's lease");
                }
                held_since_ms = Some(crate::now_ms());
                tx.send_replace(Some(held));
            }
            Ok(None) => {
                held_since_ms = None;
                tx.send_replace(None);
            }
            Err(e) => {
                tracing::debug!(role, "lease: {e}");
                let stale = held_since_ms.is_none_or(|t| {
                    crate::now_ms() - t > node.limits.role_lease_duration_ms as i64
                });
                if stale {
                    tx.send_replace(None);
                }
            }
        }
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// One round: the epoch this server holds the role at after it, if any, and the revision of
/// the write that said so.
async fn step(
    node: &Node,
    api: &ObjectApi,
    role: &str,
    me: &str,
    duration_s: i32,
) -> Result<Option<(i64, u64)>, String> {
    let current = match api
        .get(tonic::Request::new(GetRequest {
            key: Some(lease_key(role)),
            stale: false,
        }))
        .await
    {
        Ok(r) => r.into_inner().object,
        Err(s) => {
            let e = flotilla_api::ApiError::from_status(&s);
            if e.code() == ErrorCode::NotFound {
                None
            } else {
                return Err(e.to_string());
            }
        }
    };
    let now = crate::now_ms();
    let stamp = rfc3339_micros(now);
    let spec = |epoch: i64, acquire: Option<String>| LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(duration_s),
        acquire_time: acquire,
        renew_time: Some(stamp.clone()),
        lease_transitions: Some(epoch as i32),
    };
    let raft_leader = node.is_leader() && node.members().len() > 1;
    let (write, epoch) = match decide(current.as_ref(), me, now, raft_leader) {
        Action::Wait { .. } => return Ok(None),
        Action::Release { epoch } => {
            // Give the role up: holder cleared, epoch kept; a follower takes it (epoch + 1).
            let Some(mut o) = current else {
                return Ok(None);
            };
            if let Some(Body::Lease(l)) = &mut o.body {
                let s = l.spec.get_or_insert_with(Default::default);
                s.holder_identity = Some(String::new());
                s.lease_transitions = Some(epoch as i32);
            }
            return match api
                .update(tonic::Request::new(UpdateRequest { object: Some(o) }))
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        role,
                        epoch,
                        "released the role's lease to a follower (this server leads Raft)"
                    );
                    Ok(None)
                }
                Err(s) => Err(s.message().to_string()),
            };
        }
        Action::Create => {
            let o = Object {
                api_version: "coordination.k8s.io/v1".into(),
                kind: "Lease".into(),
                metadata: Some(ObjectMeta {
                    name: role.into(),
                    namespace: SYSTEM_NAMESPACE.into(),
                    ..Default::default()
                }),
                body: Some(Body::Lease(Lease {
                    spec: Some(spec(1, Some(stamp.clone()))),
                })),
            };
            let r = api
                .create(tonic::Request::new(CreateRequest { object: Some(o) }))
                .await;
            return match r {
                Ok(r) => Ok(Some((1, r.into_inner().revision))),
                Err(s) => Err(s.message().to_string()),
            };
        }
        Action::Renew { epoch } => {
            let acquire = match current.as_ref().and_then(|o| o.body.as_ref()) {
                Some(Body::Lease(l)) => l.spec.as_ref().and_then(|s| s.acquire_time.clone()),
                _ => None,
            };
            (spec(epoch, acquire), epoch)
        }
        Action::Take { epoch } => (spec(epoch, Some(stamp.clone())), epoch),
    };
    // Conditional on the resourceVersion read: of two servers taking it, one wins.
    let Some(mut o) = current else {
        return Ok(None);
    };
    o.body = Some(Body::Lease(Lease { spec: Some(write) }));
    match api
        .update(tonic::Request::new(UpdateRequest { object: Some(o) }))
        .await
    {
        Ok(r) => Ok(Some((epoch, r.into_inner().revision))),
        Err(s) => Err(s.message().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_ms: i64, duration_s: i32, epoch: i32) -> Object {
        Object {
            kind: "Lease".into(),
            body: Some(Body::Lease(Lease {
                spec: Some(LeaseSpec {
                    holder_identity: Some(holder.into()),
                    lease_duration_seconds: Some(duration_s),
                    renew_time: Some(rfc3339_micros(renewed_ms)),
                    lease_transitions: Some(epoch),
                    ..Default::default()
                }),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn the_raft_leader_leaves_roles_to_followers() {
        let t = 1_800_000_000_000;
        let wait = Action::Wait {
            holder: String::new(),
        };
        assert_eq!(decide(None, "server-1", t, true), wait);
        let mine = lease("server-1", t, 15, 3);
        assert_eq!(
            decide(Some(&mine), "server-1", t, true),
            Action::Release { epoch: 3 }
        );
        let released = lease("", t, 15, 3);
        assert_eq!(
            decide(Some(&released), "server-1", t + 1_000, true),
            Action::Wait {
                holder: String::new()
            }
        );
        // Nobody took it for a whole extra duration: the leader does.
        assert_eq!(
            decide(Some(&released), "server-1", t + 30_001, true),
            Action::Take { epoch: 4 }
        );
        let theirs = lease("server-2", t, 15, 3);
        assert_eq!(
            decide(Some(&theirs), "server-1", t + 15_001, true),
            Action::Wait {
                holder: "server-2".into()
            }
        );
    }

    #[test]
    fn an_epoch_is_held_since_the_write_that_acquired_it() {
        let first = Held::after_write(None, 4, 100);
        assert_eq!(
            first,
            Held {
                epoch: 4,
                since: 100
            }
        );
        // Renewals at the same epoch keep the acquisition's revision.
        assert_eq!(Held::after_write(Some(first), 4, 130), first);
        // A new epoch (taken again after losing it) starts from its own write.
        assert_eq!(
            Held::after_write(Some(first), 6, 200),
            Held {
                epoch: 6,
                since: 200
            }
        );
    }

    #[test]
    fn create_renew_wait_and_take() {
        let t = 1_800_000_000_000;
        assert_eq!(decide(None, "server-1", t, false), Action::Create);
        let mine = lease("server-1", t, 15, 3);
        assert_eq!(
            decide(Some(&mine), "server-1", t + 60_000, false),
            Action::Renew { epoch: 3 }
        );
        let theirs = lease("server-2", t, 15, 3);
        assert_eq!(
            decide(Some(&theirs), "server-1", t + 10_000, false),
            Action::Wait {
                holder: "server-2".into()
            }
        );
        assert_eq!(
            decide(Some(&theirs), "server-1", t + 15_001, false),
            Action::Take { epoch: 4 }
        );
        let released = lease("", t, 15, 3);
        assert_eq!(
            decide(Some(&released), "server-1", t, false),
            Action::Take { epoch: 4 }
        );
    }
}
