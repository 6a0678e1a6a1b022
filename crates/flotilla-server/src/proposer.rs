//! Write coalescing. Every write request on a server goes through one queue; a single task
//! takes as many queued requests as fit into one Raft entry (or one forwarded batch) and
//! proposes them together. Under load this turns many small entries into few large ones, which
//! divides the per-entry costs (log append, replication, apply transaction, forwarding call)
//! among all the writes in them. A lone write goes out at once: nothing waits for a batch to
//! fill.
//!
//! Writes in one entry share its revision, so one entry never holds two writes to the same
//! object: a request touching a key already in the batch waits for the next one. The writes
//! of different requests stay independent (each has its own result), as in a `Batch` call.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::pb::api::object_service_client::ObjectServiceClient;
use flotilla_api::pb::api::{write::Op, BatchRequest, Write, WriteResult};
use flotilla_api::pb::raft::Command;
use flotilla_api::{ApiError, ErrorCode};
use openraft::errors::{ClientWriteError, RaftError};
use prost::Message;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::node::Node;
use crate::FORWARDED_HEADER;

/// What one request gets back: a result per write, and the revision they were committed at.
pub type Outcome = Result<(Vec<WriteResult>, u64), ApiError>;

struct Pending {
    writes: Vec<Write>,
    keys: Vec<String>,
    bytes: usize,
    forwarded: bool,
    reply: oneshot::Sender<Outcome>,
}

/// The handle request handlers submit writes through.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

/// The store key a write touches.
pub fn write_key(w: &Write) -> Option<String> {
    match w.op.as_ref()? {
        Op::Create(o) | Op::Update(o) | Op::UpdateStatus(o) => {
            Some(flotilla_api::keys::object_key(&o.key()))
        }
        Op::Delete(d) => d.key.as_ref().map(flotilla_api::keys::object_key),
        Op::Bind(b) => Some(flotilla_api::keys::object_key(
            &flotilla_api::pb::api::ObjectKey {
                kind: "Pod".into(),
                namespace: b.namespace.clone(),
                name: b.name.clone(),
            },
        )),
    }
}

impl Proposer {
    /// Start the coalescing task on `tasks`; it stops when the node shuts down.
    pub fn start(node: Arc<Node>, tasks: &TaskTracker) -> Proposer {
        let (tx, rx) = mpsc::channel(node.limits.proposal_queue_len.max(1));
        let t2 = tasks.clone();
        tasks.spawn(run(node, rx, t2));
        Proposer { tx }
    }

    /// Propose `writes` (already checked by the API layer, keys distinct) and wait for their
    /// results. `forwarded`: another server sent them, so they must not be forwarded again.
    pub async fn submit(&self, writes: Vec<Write>, forwarded: bool) -> Outcome {
        let keys = writes.iter().filter_map(write_key).collect();
        let bytes = writes.iter().map(|w| w.encoded_len()).sum();
        let (reply, rx) = oneshot::channel();
        let p = Pending {
            writes,
            keys,
            bytes,
            forwarded,
            reply,
        };
        self.tx
            .send(p)
            .await
            .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
        rx.await
            .map_err(|_| ApiError::unavailable("the server stopped before the write finished"))?
    }
}

/// A batch being filled: which keys it touches, how many writes and bytes it holds.
struct Batch {
    items: Vec<Pending>,
    keys: HashSet<String>,
    writes: usize,
    bytes: usize,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            items: Vec::new(),
            keys: HashSet::new(),
            writes: 0,
            bytes: 0,
        }
    }

    /// Whether `p` may join: the first request always does; later ones only within the limits
    /// and touching no key already in the batch.
    fn admits(&self, p: &Pending, max_writes: usize, max_bytes: usize) -> bool {
        self.items.is_empty()
            || (self.writes + p.writes.len() <= max_writes
                && self.bytes + p.bytes <= max_bytes
                && !p.keys.iter().any(|k| self.keys.contains(k)))
    }

    fn add(&mut self, p: Pending) {
        self.writes += p.writes.len();
        self.bytes += p.bytes;
        self.keys.extend(p.keys.iter().cloned());
        self.items.push(p);
    }

    fn full(&self, max_writes: usize, max_bytes: usize) -> bool {
        self.writes >= max_writes || self.bytes >= max_bytes
    }
}

async fn run(node: Arc<Node>, mut rx: mpsc::Receiver<Pending>, tasks: TaskTracker) {
    let max_writes = node.limits.max_batch_writes.max(1);
    // Leave room for the envelope of a forwarded batch.
    let max_bytes = node
        .limits
        .max_request_bytes
        .saturating_sub(64 * 1024)
        .max(1);
    let max_deferred = max_writes;
    let inflight = Arc::new(Semaphore::new(node.limits.max_inflight_proposals.max(1)));
    let mut deferred: VecDeque<Pending> = VecDeque::new();
    loop {
        if deferred.is_empty() {
            let first = tokio::select! {
                _ = node.shutdown.cancelled() => break,
                p = rx.recv() => match p { Some(p) => p, None => break },
            };
            deferred.push_back(first);
        }
        // Waiting for a free slot is what lets a batch grow: requests queue meanwhile.
        let permit = tokio::select! {
            _ = node.shutdown.cancelled() => break,
            p = inflight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let mut batch = Batch::new();
        let mut next = VecDeque::new();
        while let Some(p) = deferred.pop_front() {
            if !batch.full(max_writes, max_bytes) && batch.admits(&p, max_writes, max_bytes) {
                batch.add(p);
            } else {
                next.push_back(p);
            }
        }
        while !batch.full(max_writes, max_bytes) && next.len() < max_deferred {
            match rx.try_recv() {
                Ok(p) if batch.admits(&p, max_writes, max_bytes) => batch.add(p),
                Ok(p) => next.push_back(p),
                Err(_) => break,
            }
        }
        deferred = next;
        node.metrics
            .proposal_batch_writes
            .observe(batch.writes as f64);
        tasks.spawn(propose(node.clone(), batch.items, permit));
    }
    let gone = || ApiError::unavailable("the server is shutting down");
    for p in deferred {
        let _ = p.reply.send(Err(gone()));
    }
    rx.close();
    while let Ok(p) = rx.try_recv() {
        let _ = p.reply.send(Err(gone()));
    }
}

/// Propose one batch: as one Raft entry when this server leads, else as one forwarded `Batch`
/// call to the leader. Each request gets its own slice of the results.
async fn propose(node: Arc<Node>, items: Vec<Pending>, _permit: OwnedSemaphorePermit) {
    let leader = node.wait_leader().await;
    let (local, remote): (Vec<Pending>, Vec<Pending>) = match &leader {
        Some((id, _)) if *id == node.id => (items, Vec::new()),
        _ => (Vec::new(), items),
    };
    if !local.is_empty() {
        let out = propose_local(&node, &local).await;
        reply_all(local, out);
        return;
    }
    let (remote, refused): (Vec<Pending>, Vec<Pending>) =
        remote.into_iter().partition(|p| !p.forwarded);
    let Some((id, addr)) = leader else {
        let e = crate::api::no_leader(node.limits.leader_wait_ms);
        reply_all(remote.into_iter().chain(refused).collect(), Err(e));
        return;
    };
    if !refused.is_empty() {
        reply_all(
            refused,
            Err(ApiError::not_leader(Some(id), Some(addr.clone()))),
        );
    }
    if remote.is_empty() {
        return;
    }
    if addr.is_empty() {
        reply_all(remote, Err(ApiError::not_leader(Some(id), None)));
        return;
    }
    let out = forward(&node, id, &addr, &remote).await;
    reply_all(remote, out);
}

fn all_writes(items: &[Pending]) -> Vec<Write> {
    items
        .iter()
        .flat_map(|p| p.writes.iter().cloned())
        .collect()
}

/// Hand each request its slice of the results, or the batch's error.
fn reply_all(items: Vec<Pending>, out: Outcome) {
    match out {
        Ok((results, revision)) => {
            let mut results = results.into_iter();
            for p in items {
                let mine: Vec<WriteResult> = results.by_ref().take(p.writes.len()).collect();
                let o = if mine.len() == p.writes.len() {
                    Ok((mine, revision))
                } else {
                    Err(ApiError::internal(
                        "the state machine returned fewer results than writes",
                    ))
                };
                let _ = p.reply.send(o);
            }
        }
        Err(e) => {
            for p in items {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
    }
}

async fn propose_local(node: &Node, items: &[Pending]) -> Outcome {
    let cmd = Command {
        timestamp_ms: crate::now_ms(),
        writes: all_writes(items),
    };
    let started = Instant::now();
    let timeout = Duration::from_millis(node.limits.write_timeout_ms);
    let encoded = flotilla_raft::types::EncodedCommand::encode(&cmd);
    let res = tokio::time::timeout(timeout, node.raft.client_write(encoded)).await;
    node.metrics
        .write_latency
        .observe(started.elapsed().as_secs_f64());
    match res {
        Err(_) => Err(ApiError::new(
            ErrorCode::Timeout,
            format!(
                "the write was not committed within {} ms (write_timeout_ms); it may still be applied",
                timeout.as_millis()
            ),
        )),
        Ok(Ok(resp)) => Ok((resp.data.results, resp.log_id.index)),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            let addr = f.leader_node.as_ref().map(|n| n.api_address.clone());
            Err(ApiError::not_leader(f.leader_id, addr))
        }
        Ok(Err(e)) => Err(ApiError::unavailable(format!(
            "the write was not accepted: {e}"
        ))),
    }
}

async fn forward(node: &Node, id: u64, addr: &str, items: &[Pending]) -> Outcome {
    let channel = node.channel(addr)?;
    let mut client = ObjectServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(node.limits.max_request_bytes);
    let mut req = tonic::Request::new(BatchRequest {
        writes: all_writes(items),
    });
    req.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    req.set_timeout(Duration::from_millis(node.limits.write_timeout_ms + 1000));
    match client.batch(req).await {
        Ok(r) => {
            let r = r.into_inner();
            Ok((r.results, r.revision))
        }
        Err(s) => {
            let e = ApiError::from_status(&s);
            if e.code() == ErrorCode::Unavailable && flotilla_api::error::is_connect_error(&s) {
                // Nothing reached the leader: safe to retry once another is known.
                node.wait_leader_change(id).await;
                let mut nl = ApiError::not_leader(Some(id), Some(addr.to_string()));
                nl.message = format!("{}; forwarding to it failed: {}", nl.message, e.message);
                Err(nl)
            } else {
                Err(e)
            }
        }
    }
}

/// Refuse a batch that writes one object twice: its writes would share a revision.
pub fn check_distinct_keys(writes: &[Write]) -> Result<(), ApiError> {
    let mut seen = std::collections::HashMap::new();
    for (i, w) in writes.iter().enumerate() {
        let Some(k) = write_key(w) else { continue };
        if let Some(j) = seen.get(&k) {
            let key = flotilla_api::keys::parse_object_key(&k)
                .map(|k| k.to_string())
                .unwrap_or_default();
            return Err(ApiError::invalid(
                format!("writes[{i}]"),
                format!("{key} is also written by writes[{j}]; one batch writes each object at most once"),
            ));
        }
        seen.insert(k, i);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::pb::api::{ConfigMap, Object, ObjectMeta};

    fn create(name: &str) -> Write {
        Write {
            op: Some(Op::Create(Object {
                kind: "ConfigMap".into(),
                api_version: "v1".into(),
                metadata: Some(ObjectMeta {
                    name: name.into(),
                    namespace: "default".into(),
                    ..Default::default()
                }),
                body: Some(flotilla_api::pb::api::object::Body::ConfigMap(
                    ConfigMap::default(),
                )),
            })),
            fence: None,
        }
    }

    fn pending(writes: Vec<Write>) -> Pending {
        let (reply, _rx) = oneshot::channel();
        Pending {
            keys: writes.iter().filter_map(write_key).collect(),
            bytes: writes.iter().map(|w| w.encoded_len()).sum(),
            writes,
            forwarded: false,
            reply,
        }
    }

    #[test]
    fn a_batch_never_holds_one_key_twice_and_respects_its_limits() {
        let mut b = Batch::new();
        let a = pending(vec![create("a")]);
        assert!(b.admits(&a, 3, 1 << 20));
        b.add(a);
        assert!(!b.admits(&pending(vec![create("a")]), 3, 1 << 20));
        assert!(b.admits(&pending(vec![create("b"), create("c")]), 3, 1 << 20));
        assert!(!b.admits(
            &pending(vec![create("b"), create("c"), create("d")]),
            3,
            1 << 20
        ));
        assert!(!b.admits(&pending(vec![create("e")]), 3, 1));
        // The first request is always admitted, whatever its size.
        assert!(Batch::new().admits(&pending(vec![create("x"), create("y")]), 1, 1));
    }

    #[test]
    fn results_are_sliced_per_request() {
        let (r1, mut rx1) = oneshot::channel();
        let (r2, mut rx2) = oneshot::channel();
        let items = vec![
            Pending {
                writes: vec![create("a"), create("b")],
                keys: vec![],
                bytes: 0,
                forwarded: false,
                reply: r1,
            },
            Pending {
                writes: vec![create("c")],
                keys: vec![],
                bytes: 0,
                forwarded: false,
                reply: r2,
            },
        ];
        let res = |n: &str| WriteResult {
            result: Some(flotilla_api::pb::api::write_result::Result::Error(
                ApiError::invalid(n, "x"),
            )),
        };
        reply_all(items, Ok((vec![res("1"), res("2"), res("3")], 7)));
        let (a, rev) = rx1.try_recv().unwrap().unwrap();
        assert_eq!((a.len(), rev), (2, 7));
        let (b, _) = rx2.try_recv().unwrap().unwrap();
        assert_eq!(b, vec![res("3")]);
    }

    #[test]
    fn duplicate_keys_in_one_batch_are_refused() {
        assert!(check_distinct_keys(&[create("a"), create("b")]).is_ok());
        let e = check_distinct_keys(&[create("a"), create("b"), create("a")]).unwrap_err();
        assert_eq!(e.field, "writes[2]");
        assert!(e.message.contains("writes[0]"), "{}", e.message);
    }
}
