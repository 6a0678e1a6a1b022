//! The scheduler's loop: every server keeps the placement picture (`flotilla-scheduler`'s
//! `Cluster`) warm from its own state, and the one holding the `scheduler` Lease decides and
//! writes. Bindings go out in batches (up to `max_batch_writes` per log entry, up to
//! `scheduler_binds_in_flight` committing while the next is decided), each batch fenced with
//! the Lease's epoch, so a deposed scheduler's late batch is refused whole by the
//! state machine; a pod that fits nowhere gets `PodScheduled=False` with the reason and a
//! `FailedScheduling` Event.
//!
//! It must never bind without a fence, nor trust a decision whose bind was not acknowledged.

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::pb::api::object_service_server::ObjectService;
use flotilla_api::pb::api::{
    object::Body, write::Op, write_result, BatchRequest, Binding, PodCondition, PodStatus, Write,
};
use flotilla_api::ErrorCode;
use flotilla_scheduler::{Cluster, Placement, Unplaced};
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use crate::api::ObjectApi;
use crate::election::{fence, Elections};
use crate::informer::{Change, Informer};
use crate::node::Node;

pub const ROLE: &str = "scheduler";
const COMPONENT: &str = "default-scheduler";
/// Changes taken from the feed before deciding again.
const FEED_BATCH: usize = 20_000;
/// After a failed bind, decide again this soon if no change of the cluster comes first.
const BIND_RETRY: Duration = Duration::from_millis(200);

pub fn start(node: Arc<Node>, api: Arc<ObjectApi>, elections: Elections, tasks: &TaskTracker) {
    tasks.spawn(async move { run(node, api, elections).await });
}

fn feed(cluster: &mut Cluster, changes: Vec<Change>) {
    for c in changes {
        match c {
            Change::Reset => *cluster = Cluster::new(),
            Change::Upsert(o) if o.kind == "Node" => cluster.apply_node(&o),
            Change::Upsert(o) => cluster.apply_pod(&o),
            Change::Delete(o) if o.kind == "Node" => cluster.delete_node(&o.meta().name),
            Change::Delete(o) => {
                let m = o.meta();
                cluster.delete_pod(&format!("{}/{}", m.namespace, m.name));
            }
        }
    }
}

async fn run(node: Arc<Node>, api: Arc<ObjectApi>, elections: Elections) {
    let mut informer = Informer::new(node.clone(), &["Node", "Pod"]);
    let mut cluster = Cluster::new();
    let mut epoch_rx = elections
        .roles
        .iter()
        .find(|(r, _)| *r == ROLE)
        .map(|(_, rx)| rx.clone());
    let retry = Duration::from_millis(node.limits.unschedulable_retry_ms.max(100));
    let mut retry_tick = tokio::time::interval(retry);
    let mut deposed: Option<i64> = None;
    // After a failed bind: when to decide again if no change comes first.
    let mut retry_soon: Option<tokio::time::Instant> = None;
    retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bind batches committing while the next ones are decided: a decision counts as placed at
    // once (assumed), so later batches never reuse room an earlier one took.
    let mut binding: JoinSet<(i64, Vec<(String, BindOutcome)>)> = JoinSet::new();
    let in_flight = node.limits.scheduler_binds_in_flight.max(1);
    loop {
        let role_changed = async {
            match epoch_rx.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        // Set when a bind came back failed: take in the feed before deciding again.
        let mut hold_off = false;
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            r = informer.next(FEED_BATCH) => match r {
                Ok(changes) => feed(&mut cluster, changes),
                Err(e) => {
                    tracing::warn!("scheduler feed: {e}; relisting");
                    informer = Informer::new(node.clone(), &["Node", "Pod"]);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
            Some(done) = binding.join_next(), if !binding.is_empty() => {
                let Ok((epoch, outcomes)) = done else {
                    // A bind task cannot panic short of a bug; its pods stay assumed until
                    // their watch events or a relist correct the picture.
                    continue;
                };
                let b = settle(&node, &mut cluster, outcomes);
                if b.fenced {
                    if deposed != Some(epoch) {
                        tracing::warn!(
                            epoch,
                            "scheduler: bindings refused by fencing; another server holds the role now"
                        );
                    }
                    deposed = Some(epoch);
                }
                if b.failed {
                    // The picture is stale or the store is struggling.
                    retry_soon = Some(tokio::time::Instant::now() + BIND_RETRY);
                    hold_off = true;
                }
            },
            _ = retry_tick.tick() => cluster.retry_unschedulable(),
            _ = async { tokio::time::sleep_until(retry_soon.unwrap_or_else(tokio::time::Instant::now)).await },
                if retry_soon.is_some() => retry_soon = None,
            _ = role_changed => {}
        }
        if hold_off {
            continue;
        }
        let Some(held) = elections.held(ROLE) else {
            continue;
        };
        let epoch = held.epoch;
        // Refused by fencing at this epoch: someone else holds the role now, whatever the
        // election loop has not noticed yet. Wait for it to say so.
        if deposed == Some(epoch) {
            continue;
        }
        // The previous holder's last bindings are older than our taking the role: decide only
        // once this server has applied that far, or a lagging follower places pods on nodes
        // it does not know are full.
        if informer.revision() < held.since {
            informer.wake_at(held.since);
            continue;
        }
        let batch = node
            .limits
            .scheduler_bind_batch
            .min(node.limits.max_batch_writes)
            .max(1);
        while binding.len() < in_flight
            && cluster.pending_count() > 0
            && elections.epoch(ROLE) == Some(epoch)
        {
            let (placed, unplaced) = cluster.next_batch(batch);
            if !placed.is_empty() {
                let api = api.clone();
                binding.spawn(async move { (epoch, bind(&api, placed, epoch).await) });
            }
            let report: Vec<Unplaced> = unplaced.into_iter().filter(|u| u.report).collect();
            if !report.is_empty() {
                explain(&node, &api, report, epoch).await;
            }
            if node.shutdown.is_cancelled() {
                return;
            }
        }
    }
}

/// What became of one pod's bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BindOutcome {
    Bound,
    /// Refused by fencing: another server holds the role.
    Fenced,
    /// Refused on the pod's own merits (gone, bound already, another uid): our copy is stale.
    Refused,
    /// Not answered (the batch failed or timed out): unknown, decided again.
    Lost,
}

/// How a batch of bindings went.
#[derive(Default)]
struct Bound {
    fenced: bool,
    /// Some were not bound.
    failed: bool,
}

/// Take the outcomes of one bind batch into the picture.
fn settle(node: &Node, cluster: &mut Cluster, outcomes: Vec<(String, BindOutcome)>) -> Bound {
    let mut out = Bound::default();
    let mut bound = 0u64;
    for (key, o) in outcomes {
        match o {
            BindOutcome::Bound => bound += 1,
            BindOutcome::Fenced => {
                out.fenced = true;
                out.failed = true;
                cluster.bind_failed(&key);
            }
            BindOutcome::Refused => {
                out.failed = true;
                cluster.bind_refused(&key);
            }
            BindOutcome::Lost => {
                out.failed = true;
                cluster.bind_failed(&key);
            }
        }
    }
    node.metrics.pods_bound.inc_by(bound);
    out
}

/// Bind the placements in one fenced batch; the outcome of each, by pod key.
async fn bind(api: &ObjectApi, placed: Vec<Placement>, epoch: i64) -> Vec<(String, BindOutcome)> {
    let f = fence(ROLE, epoch);
    let writes: Vec<Write> = placed
        .iter()
        .map(|p| Write {
            op: Some(Op::Bind(Binding {
                namespace: p.pod.namespace.clone(),
                name: p.pod.name.clone(),
                uid: p.pod.uid.clone(),
                node_name: p.node.clone(),
            })),
            fence: Some(f.clone()),
        })
        .collect();
    let keys: Vec<String> = placed.iter().map(|p| p.pod.key()).collect();
    match api
        .batch(tonic::Request::new(BatchRequest { writes }))
        .await
    {
        Ok(r) => {
            let mut results = r.into_inner().results.into_iter();
            keys.into_iter()
                .map(|key| {
                    let o = match results.next().and_then(|r| r.result) {
                        Some(write_result::Result::Object(_)) => BindOutcome::Bound,
                        Some(write_result::Result::Error(e))
                            if e.code == ErrorCode::Fenced as i32 =>
                        {
                            BindOutcome::Fenced
                        }
                        Some(write_result::Result::Error(e)) => {
                            tracing::debug!(pod = %key, "bind refused: {}", e.message);
                            BindOutcome::Refused
                        }
                        None => BindOutcome::Lost,
                    };
                    (key, o)
                })
                .collect()
        }
        Err(s) => {
            tracing::warn!(pods = keys.len(), "bind batch failed: {}", s.message());
            // The loop retries after BIND_RETRY, taking in the feed meanwhile.
            keys.into_iter().map(|k| (k, BindOutcome::Lost)).collect()
        }
    }
}

/// `PodScheduled=False` on each pod that fits nowhere and a `FailedScheduling` Event, fenced.
async fn explain(node: &Node, api: &ObjectApi, unplaced: Vec<Unplaced>, epoch: i64) {
    let f = fence(ROLE, epoch);
    let now = flotilla_api::manifest::format_timestamp_ms(crate::now_ms());
    let by = flotilla_api::events::Reporter {
        component: COMPONENT,
        host: "",
    };
    for chunk in unplaced.chunks(250) {
        let mut writes = Vec::with_capacity(chunk.len() * 2);
        for u in chunk {
            let message = u.error.to_string();
            let key = flotilla_api::pb::api::ObjectKey {
                kind: "Pod".into(),
                namespace: u.pod.namespace.clone(),
                name: u.pod.name.clone(),
            };
            // The stored pod, so the status write keeps the rest and is conditional on it.
            let Ok((Some(mut pod), _)) = node.reader.get(&key) else {
                continue;
            };
            if pod.meta().uid != u.pod.uid {
                continue;
            }
            if let Some(Body::Pod(p)) = &mut pod.body {
                let status = p.status.get_or_insert_with(PodStatus::default);
                if status.phase.is_empty() {
                    status.phase = "Pending".into();
                }
                status.conditions.retain(|c| c.r#type != "PodScheduled");
                status.conditions.push(PodCondition {
                    r#type: "PodScheduled".into(),
                    status: "False".into(),
                    reason: "Unschedulable".into(),
                    message: message.clone(),
                    last_transition_time: now.clone(),
                    ..Default::default()
                });
            }
            let involved = flotilla_api::pb::api::ObjectReference {
                kind: "Pod".into(),
                namespace: u.pod.namespace.clone(),
                name: u.pod.name.clone(),
                uid: u.pod.uid.clone(),
                api_version: "v1".into(),
                ..Default::default()
            };
            let event = flotilla_api::events::new_event(
                involved,
                "Warning",
                "FailedScheduling",
                &message,
                &by,
                &now,
            );
            writes.push(Write {
                op: Some(Op::UpdateStatus(pod)),
                fence: Some(f.clone()),
            });
            writes.push(Write {
                op: Some(Op::Create(event)),
                fence: Some(f.clone()),
            });
        }
        if let Err(s) = api
            .batch(tonic::Request::new(BatchRequest { writes }))
            .await
        {
            tracing::debug!("recording unschedulable pods: {}", s.message());
        }
    }
}
