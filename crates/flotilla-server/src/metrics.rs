//! Prometheus text metrics. Raft figures are read from openraft's metrics at scrape time;
//! write latency is observed on the write path.

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::node::Node;

pub struct Metrics {
    registry: Registry,
    term: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    last_log_index: Gauge,
    log_entries: Gauge,
    snapshot_index: Gauge,
    snapshots_installed: Gauge,
    log_flushes: Gauge,
    log_entries_appended: Gauge,
    is_leader: Gauge,
    watchers: Gauge,
    /// Seconds from proposal to commit-and-apply, on the leader.
    pub write_latency: Histogram,
    /// Writes per proposal (one Raft entry, or one forwarded batch) after coalescing.
    pub proposal_batch_writes: Histogram,
    /// Writes refused because the lease epoch they carried was no longer current.
    pub fenced_writes: Counter,
    /// Pods this server's scheduler bound (acknowledged bindings).
    pub pods_bound: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("flotilla");
        let m = Metrics {
            term: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            log_entries: Gauge::default(),
            snapshot_index: Gauge::default(),
            snapshots_installed: Gauge::default(),
            log_flushes: Gauge::default(),
            log_entries_appended: Gauge::default(),
            is_leader: Gauge::default(),
            watchers: Gauge::default(),
            write_latency: Histogram::new(exponential_buckets(0.0002, 2.0, 18)),
            proposal_batch_writes: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            fenced_writes: Counter::default(),
            pods_bound: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "fenced_writes",
            "Writes refused because their lease epoch was stale (a deposed leader's writes)",
            m.fenced_writes.clone(),
        );
        registry.register(
            "scheduler_pods_bound",
            "Pods bound to a node by this server's scheduler",
            m.pods_bound.clone(),
        );
        registry.register("raft_term", "Current Raft term", m.term.clone());
        registry.register(
            "raft_commit_index",
            "Highest log index known committed",
            m.commit_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Highest log index applied to the state machine",
            m.applied_index.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Highest log index stored",
            m.last_log_index.clone(),
        );
        registry.register(
            "raft_log_entries",
            "Entries kept in the log (not yet purged)",
            m.log_entries.clone(),
        );
        registry.register(
            "raft_snapshot_index",
            "Last log index covered by a snapshot",
            m.snapshot_index.clone(),
        );
        registry.register(
            "raft_snapshots_installed",
            "Snapshots received from a leader and installed since this server started",
            m.snapshots_installed.clone(),
        );
        registry.register(
            "proposal_batch_writes",
            "Writes per proposal after coalescing concurrent requests",
            m.proposal_batch_writes.clone(),
        );
        registry.register(
            "raft_log_flushes",
            "Durable log flushes (fsync'd appends) since this server started",
            m.log_flushes.clone(),
        );
        registry.register(
            "raft_log_entries_appended",
            "Log entries appended since this server started; over flushes: entries per fsync",
            m.log_entries_appended.clone(),
        );
        registry.register("raft_is_leader", "1 on the leader", m.is_leader.clone());
        registry.register(
            "watchers",
            "Watch streams open on this server",
            m.watchers.clone(),
        );
        registry.register(
            "write_latency_seconds",
            "Proposal to applied, on the leader",
            m.write_latency.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn render(&self, node: &Node) -> String {
        let m = node.raft.metrics().borrow_watched().clone();
        self.term.set(m.current_term as i64);
        self.commit_index
            .set(m.cluster_committed.map(|l| l.index).unwrap_or(0) as i64);
        self.applied_index
            .set(m.last_applied.map(|l| l.index).unwrap_or(0) as i64);
        self.last_log_index
            .set(m.last_log_index.unwrap_or(0) as i64);
        self.snapshot_index
            .set(m.snapshot.map(|l| l.index).unwrap_or(0) as i64);
        self.is_leader
            .set(i64::from(m.current_leader == Some(node.id)));
        self.log_entries
            .set(node.log.entry_count().unwrap_or(0) as i64);
        self.watchers.set(node.reader.watcher_count() as i64);
        let (flushes, appended) = node.log.append_stats();
        self.log_flushes.set(flushes as i64);
        self.log_entries_appended.set(appended as i64);
        self.snapshots_installed
            .set(node.reader.snapshots_installed() as i64);
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            return format!("# metrics encoding failed: {e}\n");
        }
        out
    }
}

async fn metrics_handler(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let body = node.metrics.render(&node);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(node)
}
