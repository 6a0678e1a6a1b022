//! Event expiry: the leader deletes Events whose last occurrence is older than
//! `event_ttl_ms` (Kubernetes keeps them an hour), a bounded batch per round, each delete
//! conditional on the resourceVersion it saw so a recurrence recorded meanwhile survives.

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::pb::api::{object::Body, write::Op, DeleteRequest, Object, Write};
use flotilla_api::selector::Selector;
use tokio_util::task::TaskTracker;

use crate::node::Node;
use crate::proposer::Proposer;

/// When an Event last happened (its lastTimestamp, else when it was created), in ms.
pub fn last_seen_ms(o: &Object) -> i64 {
    let t = match &o.body {
        Some(Body::Event(e)) => humantime::parse_rfc3339_weak(&e.last_timestamp).ok(),
        _ => None,
    };
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(o.meta().creation_timestamp_ms)
}

/// The expired ones among `events` at `now_ms`, as conditional deletes (pure: no clock).
pub fn expired(events: &[Object], now_ms: i64, ttl_ms: u64) -> Vec<Write> {
    events
        .iter()
        .filter(|o| now_ms.saturating_sub(last_seen_ms(o)) > ttl_ms as i64)
        .map(|o| Write {
            op: Some(Op::Delete(DeleteRequest {
                key: Some(o.key()),
                expected_resource_version: Some(o.meta().resource_version),
                expected_uid: None,
                grace_period_seconds: None,
                propagation_policy: String::new(),
            })),
            fence: None,
        })
        .collect()
}

pub fn start(node: Arc<Node>, proposer: Proposer, tasks: &TaskTracker) {
    tasks.spawn(async move {
        let period = Duration::from_millis(node.limits.event_gc_interval_ms.max(100));
        loop {
            tokio::select! {
                _ = node.shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            if !node.is_leader() {
                continue;
            }
            if let Err(e) = round(&node, &proposer).await {
                tracing::warn!("event expiry: {e}");
            }
        }
    });
}

async fn round(node: &Node, proposer: &Proposer) -> Result<(), flotilla_api::ApiError> {
    let page = node
        .reader
        .list(
            "Event",
            "",
            &Selector::default(),
            node.limits.max_list_page,
            None,
        )
        .map_err(flotilla_api::ApiError::internal)?;
    let mut deletes = expired(&page.items, crate::now_ms(), node.limits.event_ttl_ms);
    deletes.truncate(node.limits.event_gc_batch);
    if deletes.is_empty() {
        return Ok(());
    }
    let n = deletes.len();
    for chunk in deletes.chunks(node.limits.max_batch_writes.max(1)) {
        proposer.submit(chunk.to_vec(), false).await?;
    }
    tracing::info!(expired = n, "deleted expired events");
    Ok(())
}

/// The write recording one occurrence of an Event series as `component`: a new Event, or the
/// existing one (as this server reads it) counted once more.
pub fn record(
    node: &Node,
    component: &str,
    involved: flotilla_api::pb::api::ObjectReference,
    event_type: &str,
    reason: &str,
    message: &str,
) -> Write {
    use flotilla_api::events;
    let now = flotilla_api::manifest::format_timestamp_ms(crate::now_ms());
    let by = events::Reporter {
        component,
        host: "",
    };
    let first = events::new_event(involved, event_type, reason, message, &by, &now);
    let existing = node.reader.get(&first.key()).ok().and_then(|(o, _)| o);
    Write {
        op: Some(match existing {
            Some(e) => Op::Update(events::repeat(e, 1, &now)),
            None => Op::Create(first),
        }),
        fence: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_events_past_their_ttl_expire() {
        let ev = |name: &str, last: &str, created: i64| {
            let text = format!("apiVersion: v1\nkind: Event\nmetadata: {{name: {name}}}\ninvolvedObject: {{kind: Pod, name: p}}\nlastTimestamp: \"{last}\"\n");
            let mut o = flotilla_api::manifest::parse_manifests("e", &text)
                .unwrap()
                .remove(0)
                .object;
            o.meta_mut().creation_timestamp_ms = created;
            o.meta_mut().resource_version = 7;
            o
        };
        // 2023-11-14T22:13:20Z is 1_700_000_000_000 ms.
        let now = 1_700_000_000_000;
        let events = [
            ev("old", "2023-11-14T20:00:00Z", 0),
            ev("fresh", "2023-11-14T22:00:00Z", 0),
            ev("no-last", "", now - 10_000),
        ];
        let w = expired(&events, now, 3_600_000);
        assert_eq!(w.len(), 1);
        let Some(Op::Delete(d)) = &w[0].op else {
            panic!()
        };
        assert_eq!(d.key.as_ref().unwrap().name, "old");
        assert_eq!(d.expected_resource_version, Some(7));
    }
}
