//! Watch streams. A watch first replays the history after its start revision, then follows the
//! applied-entry feed. Every applied entry passes through the feed in order, so tracking the
//! last revision handled gives no gap and no duplicate; a watcher that falls behind the bounded
//! feed re-reads history from where it was. Idle watchers get bookmarks.

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::pb::api::{ErrorCode, EventType, WatchEvent, WatchRequest};
use flotilla_api::selector::Selector;
use flotilla_api::ApiError;
use flotilla_raft::state_machine::HistoryError;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::node::Node;

/// Events read from history per step while catching up.
const HISTORY_PAGE_EVENTS: usize = 1000;

struct Filter {
    kind: String,
    namespace: String,
    name: String,
    selector: Selector,
    /// A Pod watch for one node's pods (an agent's): only the entry's index for that node is
    /// looked at, not every event.
    node: Option<String>,
}

impl Filter {
    fn matches(&self, ev: &WatchEvent) -> bool {
        let Some(o) = ev.object.as_ref() else {
            return false;
        };
        let m = o.meta();
        o.kind == self.kind
            && (self.namespace.is_empty() || m.namespace == self.namespace)
            && (self.name.is_empty() || m.name == self.name)
            && self.selector.matches_object(o)
    }
}

pub fn start(
    node: Arc<Node>,
    req: WatchRequest,
) -> Result<ReceiverStream<Result<WatchEvent, Status>>, ApiError> {
    if req.kind.is_empty() {
        return Err(ApiError::invalid("kind", "must be set"));
    }
    let selector = Selector::parse(&req.label_selector)?.with_fields(&req.field_selector)?;
    let node_name = match req.kind.as_str() {
        "Pod" => selector
            .fields()
            .required_value("spec.nodeName")
            .map(String::from),
        _ => None,
    };
    let filter = Filter {
        kind: req.kind.clone(),
        namespace: req.namespace.clone(),
        name: req.name.clone(),
        selector,
        node: node_name,
    };
    let permit = node.watchers.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(format!(
            "this server already serves {} watches (max_watchers); try another server",
            node.limits.max_watchers
        ))
    })?;
    let (tx, rx) = mpsc::channel(node.limits.watch_queue_len.max(1));
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(e) = run(&node, &filter, req.start_revision, &tx).await {
            let _ = tx.send(Err(e.to_status())).await;
        }
    });
    Ok(ReceiverStream::new(rx))
}

type Tx = mpsc::Sender<Result<WatchEvent, Status>>;

/// Closed: the client went away.
struct Closed;

async fn send(tx: &Tx, ev: WatchEvent) -> Result<(), Closed> {
    tx.send(Ok(ev)).await.map_err(|_| Closed)
}

/// Replay history after `last`; returns the revision through which everything was sent.
async fn catch_up(
    node: &Node,
    filter: &Filter,
    mut last: u64,
    tx: &Tx,
) -> Result<Result<u64, Closed>, ApiError> {
    loop {
        let reader = node.reader.clone();
        let from = last;
        let page =
            tokio::task::spawn_blocking(move || reader.history_after(from, HISTORY_PAGE_EVENTS))
                .await
                .map_err(ApiError::internal)?;
        let page = match page {
            Ok(p) => p,
            Err(HistoryError::Compacted { requested, oldest }) => {
                return Err(ApiError::new(
                    ErrorCode::Compacted,
                    format!("watch from revision {requested}: compacted; the oldest revision still held is {oldest}; list again and watch from its revision"),
                ))
            }
            Err(HistoryError::Io(e)) => return Err(ApiError::internal(e)),
        };
        for ev in page.events {
            let rev = ev.revision;
            if filter.matches(&ev) && send(tx, ev).await.is_err() {
                return Ok(Err(Closed));
            }
            last = last.max(rev);
        }
        if !page.more {
            return Ok(Ok(last.max(page.revision)));
        }
    }
}

async fn run(node: &Node, filter: &Filter, start_revision: u64, tx: &Tx) -> Result<(), ApiError> {
    // Subscribe before reading history so nothing applied in between is missed.
    let mut feed = node.reader.subscribe();
    let start = if start_revision == 0 {
        node.reader.revision()
    } else {
        start_revision
    };
    let mut last = match catch_up(node, filter, start, tx).await? {
        Ok(l) => l,
        Err(Closed) => return Ok(()),
    };
    let period = Duration::from_millis(node.limits.watch_progress_interval_ms.max(10));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut sent_since_tick = false;
    let mut live_sent = 0u64;
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return Err(ApiError::unavailable("server shutting down; resume the watch on another server")),
            _ = tx.closed() => return Ok(()),
            r = feed.recv() => match r {
                Ok(batch) => {
                    if batch.revision <= last {
                        continue;
                    }
                    if batch.reset {
                        // Replaced by a snapshot: carry on from its history if that reaches
                        // back to `last` (otherwise catch_up answers COMPACTED).
                        last = match catch_up(node, filter, last, tx).await? {
                            Ok(l) => l,
                            Err(Closed) => return Ok(()),
                        };
                        sent_since_tick = true;
                        continue;
                    }
                    // Only events that can match: an index lookup for a node's pods.
                    let candidates: Box<dyn Iterator<Item = &WatchEvent> + Send> = match &filter.node {
                        Some(n) => Box::new(
                            batch.pod_events_on_node(n).iter().filter_map(|&i| batch.events.get(i)),
                        ),
                        None => Box::new(batch.events.iter()),
                    };
                    for ev in candidates {
                        if filter.matches(ev) {
                            live_sent += 1;
                            if live_sent == crate::planted::DROPPED_WATCH_EVENT
                                && crate::planted::active("drop-watch-event")
                            {
                                continue;
                            }
                            if send(tx, ev.clone()).await.is_err() {
                                return Ok(());
                            }
                            sent_since_tick = true;
                        }
                    }
                    last = batch.revision;
                }
                Err(RecvError::Lagged(_)) => {
                    last = match catch_up(node, filter, last, tx).await? {
                        Ok(l) => l,
                        Err(Closed) => return Ok(()),
                    };
                    sent_since_tick = true;
                }
                Err(RecvError::Closed) => return Err(ApiError::unavailable("server shutting down")),
            },
            _ = ticker.tick() => {
                if !sent_since_tick {
                    let bm = WatchEvent { r#type: EventType::Bookmark as i32, object: None, revision: last };
                    if send(tx, bm).await.is_err() {
                        return Ok(());
                    }
                }
                sent_since_tick = false;
            }
        }
    }
}
