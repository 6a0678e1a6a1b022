//! The dispatcher: the QUIC endpoint agents connect to (DESIGN.md §2.5). Every server runs one,
//! on the UDP twin of its API address unless `agent_addr` says otherwise, once the cluster CA
//! exists. Streams: `get_ca` (discovery, no authentication), `join` (a token and a CSR for a
//! client certificate, over a server-verified connection), and the session (`register`, then
//! heartbeats; mutual TLS, the certificate must name the node). Heartbeats are collected and
//! renew the nodes' Leases in `kube-node-lease` in one batch per `node_lease_batch_ms`, never
//! one log entry each.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::pb::agent::{
    agent_request, agent_response, AgentError, AgentErrorCode, AgentRequest, AgentResponse,
    Assignments, GetCaResponse, GetObjectsRequest, JoinResponse, Objects, PodStatusReport,
    RegisterRequest, SessionResponse, StatusAck,
};
use flotilla_api::pb::api::object::Body;
use flotilla_api::pb::api::object_service_server::ObjectService;
use flotilla_api::pb::api::{
    write::Op, BatchRequest, GetRequest, Lease, LeaseSpec, Object, ObjectKey, ObjectMeta, Write,
};
use flotilla_api::pb::api::{EventType, WatchRequest};
use flotilla_api::selector::Selector;
use flotilla_api::ErrorCode;
use flotilla_identity::{CertKey, NODE_CN_PREFIX};
use flotilla_quic::{read_frame, write_frame};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::api::ObjectApi;
use crate::identity::{self, NODE_LEASE_NAMESPACE};
use crate::node::Node;

const CA_POLL_MS: u64 = 250;
/// Node leases last this long without renewal (Kubernetes' default is 40 s).
const NODE_LEASE_DURATION_S: i32 = 40;
/// Pods per frame of a full assignment set.
const ASSIGNMENT_CHUNK_PODS: usize = 200;
/// Time to wait for the first frame of a stream.
const FIRST_FRAME_MS: u64 = 10_000;
/// Events taken from one status report (the agent caps them too).
const MAX_EVENTS_PER_REPORT: usize = 256;
/// Keys in one GetObjects request.
const MAX_OBJECT_KEYS: usize = 256;

/// Live agent connections on this server: node name → (connection id, connection).
pub type AgentConnections = Arc<Mutex<HashMap<String, (usize, quinn::Connection)>>>;

/// Annotation on a node's Lease naming the API address of the server its agent is connected
/// to, so any server can route `logs` and `exec` to it.
pub const AGENT_SERVER_ANNOTATION: &str = "flotilla.io/agent-server";

/// A node's Lease as renewed at `renewed_ms` through the agent session on `server`.
fn node_lease(name: &str, server: &str, renewed_ms: i64) -> Object {
    let mut annotations = std::collections::BTreeMap::new();
    annotations.insert(AGENT_SERVER_ANNOTATION.to_string(), server.to_string());
    Object {
        api_version: "coordination.k8s.io/v1".into(),
        kind: "Lease".into(),
        metadata: Some(ObjectMeta {
            name: name.to_string(),
            namespace: NODE_LEASE_NAMESPACE.into(),
            annotations,
            ..Default::default()
        }),
        body: Some(Body::Lease(Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(name.to_string()),
                lease_duration_seconds: Some(NODE_LEASE_DURATION_S),
                renew_time: Some(rfc3339_ms(renewed_ms)),
                ..Default::default()
            }),
        })),
    }
}

struct Dispatcher {
    node: Arc<Node>,
    api: Arc<ObjectApi>,
    ca: CertKey,
    /// Nodes heard from since the last lease batch, with the time they were heard.
    heard: Mutex<HashMap<String, i64>>,
}

type Reply = Result<AgentResponse, AgentError>;

fn err(code: AgentErrorCode, message: impl Into<String>) -> AgentError {
    AgentError {
        code: code as i32,
        message: message.into(),
    }
}

fn rfc3339_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_micros(t).to_string()
}

/// Binds the agent endpoint now (so a taken port fails start-up); it serves once the CA exists.
pub fn bind(addr: SocketAddr) -> Result<quinn::Endpoint, flotilla_quic::QuicError> {
    flotilla_quic::bind_server(addr)
}

pub fn start(node: Arc<Node>, api: Arc<ObjectApi>, endpoint: quinn::Endpoint, tasks: &TaskTracker) {
    let tracker = tasks.clone();
    tasks.spawn(async move {
        let ca = loop {
            if let Some(ca) = identity::load_ca(&node) {
                break ca;
            }
            tokio::select! {
                _ = node.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(CA_POLL_MS)) => {}
            }
        };
        let addr = endpoint
            .local_addr()
            .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        match server_config(&ca, addr) {
            Ok(cfg) => {
                endpoint.set_server_config(Some(cfg));
            }
            Err(e) => {
                tracing::error!("agent endpoint on {addr}: {e}; stopping the server");
                node.shutdown.cancel();
                return;
            }
        }
        tracing::info!(%addr, "agent endpoint (QUIC) listening");
        let d = Arc::new(Dispatcher {
            node: node.clone(),
            api,
            ca,
            heard: Mutex::new(HashMap::new()),
        });
        tracker.spawn(lease_batches(d.clone()));
        let slots = Arc::new(Semaphore::new(node.limits.max_agent_connections.max(1)));
        loop {
            let incoming = tokio::select! {
                _ = node.shutdown.cancelled() => break,
                i = endpoint.accept() => match i { Some(i) => i, None => break },
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                incoming.refuse();
                continue;
            };
            let d = d.clone();
            tracker.spawn(async move {
                let _permit = permit;
                match incoming.await {
                    Ok(conn) => d.connection(conn).await,
                    Err(e) => tracing::debug!("agent handshake failed: {e}"),
                }
            });
        }
        endpoint.close(0u32.into(), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    });
}

fn server_config(ca: &CertKey, addr: SocketAddr) -> Result<quinn::ServerConfig, String> {
    let names = vec![addr.ip().to_string(), "localhost".to_string()];
    let cert = flotilla_identity::issue_server_cert(ca, &names, 365).map_err(|e| e.to_string())?;
    let tls =
        flotilla_identity::server_tls_config(&ca.cert_pem, &cert, false, &[flotilla_quic::ALPN])
            .map_err(|e| e.to_string())?;
    flotilla_quic::server_config(tls).map_err(|e| e.to_string())
}

impl Dispatcher {
    async fn connection(self: Arc<Self>, conn: quinn::Connection) {
        let peer = flotilla_quic::peer_common_name(&conn);
        loop {
            let (send, recv) = tokio::select! {
                _ = self.node.shutdown.cancelled() => return,
                s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => return },
            };
            let d = self.clone();
            let peer = peer.clone();
            let conn = conn.clone();
            tokio::spawn(async move {
                if let Err(e) = d.stream(peer, &conn, send, recv).await {
                    tracing::debug!("agent stream: {e}");
                }
            });
        }
    }

    async fn stream(
        &self,
        peer: Option<String>,
        conn: &quinn::Connection,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> Result<(), flotilla_quic::QuicError> {
        let first = tokio::time::timeout(
            Duration::from_millis(FIRST_FRAME_MS),
            read_frame::<AgentRequest>(&mut recv),
        )
        .await;
        let Ok(Some(req)) = first.unwrap_or(Ok(None)) else {
            return Ok(());
        };
        let reply = match req.kind {
            Some(agent_request::Kind::GetCa(_)) => Ok(AgentResponse {
                kind: Some(agent_response::Kind::Ca(GetCaResponse {
                    ca_cert_pem: self.ca.cert_pem.clone(),
                })),
            }),
            Some(agent_request::Kind::Join(j)) => self.join(j).await,
            Some(agent_request::Kind::Register(r)) => {
                return self.session(peer, conn, r, send, recv).await;
            }
            Some(agent_request::Kind::WatchAssignments(w)) => {
                return self.assignments(peer, w.from_revision, send).await;
            }
            Some(agent_request::Kind::PodStatus(first)) => {
                return self.status(peer, first, send, recv).await;
            }
            Some(agent_request::Kind::GetObjects(g)) => self.objects(peer.as_deref(), g),
            _ => Err(err(
                AgentErrorCode::Invalid,
                "the first frame must be get_ca, join or register",
            )),
        };
        let resp = reply.unwrap_or_else(|e| AgentResponse {
            kind: Some(agent_response::Kind::Error(e)),
        });
        write_frame(&mut send, &resp).await?;
        let _ = send.finish();
        Ok(())
    }

    async fn join(&self, j: flotilla_api::pb::agent::JoinRequest) -> Reply {
        flotilla_api::validation::check_dns1123_subdomain("node_name", &j.node_name)
            .map_err(|e| err(AgentErrorCode::Invalid, e.to_string()))?;
        // A linearizable read: a token revoked a moment ago must already be refused.
        let stored = self
            .api
            .get(tonic::Request::new(GetRequest {
                key: Some(identity::token_key(&j.token_id)),
                stale: false,
            }))
            .await;
        let stored = match stored {
            Ok(r) => r.into_inner().object,
            Err(s) => {
                let e = flotilla_api::ApiError::from_status(&s);
                if e.code() != ErrorCode::NotFound {
                    return Err(err(AgentErrorCode::Unavailable, e.to_string()));
                }
                None
            }
        };
        identity::check_token(
            stored.as_ref(),
            &j.token_id,
            &j.token_secret,
            crate::now_ms(),
        )
        .map_err(|r| err(AgentErrorCode::TokenRefused, r.to_string()))?;
        let cn = format!("{NODE_CN_PREFIX}{}", j.node_name);
        let cert =
            flotilla_identity::sign_csr(&self.ca, &j.csr_pem, &cn, self.node.limits.node_cert_days)
                .map_err(|e| err(AgentErrorCode::Invalid, e.to_string()))?;
        tracing::info!(node = %j.node_name, token = %j.token_id, "node joined");
        Ok(AgentResponse {
            kind: Some(agent_response::Kind::Join(JoinResponse { cert_pem: cert })),
        })
    }

    fn session_reply(&self) -> AgentResponse {
        AgentResponse {
            kind: Some(agent_response::Kind::Session(SessionResponse {
                heartbeat_period_ms: self.node.limits.heartbeat_period_ms as u32,
                server_id: self.node.id,
            })),
        }
    }

    async fn session(
        &self,
        peer: Option<String>,
        conn: &quinn::Connection,
        r: RegisterRequest,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> Result<(), flotilla_quic::QuicError> {
        let name = match self.register(peer, r).await {
            Ok(n) => n,
            Err(e) => {
                let resp = AgentResponse {
                    kind: Some(agent_response::Kind::Error(e)),
                };
                write_frame(&mut send, &resp).await?;
                let _ = send.finish();
                return Ok(());
            }
        };
        self.heard(&name);
        let conn_id = conn.stable_id();
        if let Ok(mut a) = self.node.agents.lock() {
            a.insert(name.clone(), (conn_id, conn.clone()));
        }
        let res = self.heartbeats(&name, &mut send, &mut recv).await;
        if let Ok(mut a) = self.node.agents.lock() {
            if a.get(&name).is_some_and(|(id, _)| *id == conn_id) {
                a.remove(&name);
            }
        }
        res
    }

    async fn heartbeats(
        &self,
        name: &str,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
    ) -> Result<(), flotilla_quic::QuicError> {
        write_frame(send, &self.session_reply()).await?;
        loop {
            let frame = tokio::select! {
                _ = self.node.shutdown.cancelled() => return Ok(()),
                f = read_frame::<AgentRequest>(recv) => f?,
            };
            match frame.and_then(|f| f.kind) {
                Some(agent_request::Kind::Heartbeat(_)) => {
                    self.heard(name);
                    write_frame(send, &self.session_reply()).await?;
                }
                None => return Ok(()),
                Some(_) => {
                    let resp = AgentResponse {
                        kind: Some(agent_response::Kind::Error(err(
                            AgentErrorCode::Invalid,
                            "a session carries heartbeats only",
                        ))),
                    };
                    write_frame(send, &resp).await?;
                    return Ok(());
                }
            }
        }
    }

    /// The node a mutual-TLS peer is, from its certificate.
    fn node_of(peer: Option<&str>) -> Result<String, AgentError> {
        peer.and_then(|p| p.strip_prefix(NODE_CN_PREFIX))
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                err(
                    AgentErrorCode::Unauthenticated,
                    "this stream needs a node's client certificate",
                )
            })
    }

    /// The ConfigMaps and Secrets the peer asks for, from this server's state; each must be
    /// referenced by a pod bound to the peer's node.
    fn objects(&self, peer: Option<&str>, req: GetObjectsRequest) -> Reply {
        let name = Self::node_of(peer)?;
        if req.keys.len() > MAX_OBJECT_KEYS {
            return Err(err(
                AgentErrorCode::Invalid,
                format!(
                    "{} keys asked for; at most {MAX_OBJECT_KEYS} per request",
                    req.keys.len()
                ),
            ));
        }
        let unavailable = |e: std::io::Error| err(AgentErrorCode::Unavailable, e.to_string());
        let selector = Selector::default()
            .with_fields(&format!("spec.nodeName={name}"))
            .map_err(|e| err(AgentErrorCode::Invalid, e.to_string()))?;
        let mut allowed = std::collections::BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .node
                .reader
                .list(
                    "Pod",
                    "",
                    &selector,
                    self.node.limits.max_list_page.max(1),
                    after.as_deref(),
                )
                .map_err(|e| err(AgentErrorCode::Unavailable, e.to_string()))?;
            for p in &page.items {
                if let Some(Body::Pod(pod)) = &p.body {
                    if let Some(spec) = &pod.spec {
                        for k in flotilla_api::refs::pod_references(&p.meta().namespace, spec) {
                            allowed.insert((k.kind, k.namespace, k.name));
                        }
                    }
                }
            }
            match page.next_key {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        let mut out = Objects {
            revision: self.node.reader.revision(),
            ..Default::default()
        };
        for k in req.keys {
            if !allowed.contains(&(k.kind.clone(), k.namespace.clone(), k.name.clone())) {
                return Err(err(
                    AgentErrorCode::Unauthenticated,
                    format!(
                        "node {name} may not read {} {}/{}: no pod bound to it refers to it",
                        k.kind, k.namespace, k.name
                    ),
                ));
            }
            match self.node.reader.get(&k).map_err(unavailable)?.0 {
                Some(o) => out.objects.push(o),
                None => out.missing.push(k),
            }
        }
        Ok(AgentResponse {
            kind: Some(agent_response::Kind::Objects(out)),
        })
    }

    /// The pods bound to the peer's node: the full set at a revision (when asked from 0), then
    /// every change after it, from this server's own state.
    async fn assignments(
        &self,
        peer: Option<String>,
        from_revision: u64,
        mut send: quinn::SendStream,
    ) -> Result<(), flotilla_quic::QuicError> {
        let fail = |e: AgentError| AgentResponse {
            kind: Some(agent_response::Kind::Error(e)),
        };
        let name = match Self::node_of(peer.as_deref()) {
            Ok(n) => n,
            Err(e) => return write_frame(&mut send, &fail(e)).await,
        };
        let fields = format!("spec.nodeName={name}");
        let mut from = from_revision;
        if from == 0 {
            let selector = match Selector::default().with_fields(&fields) {
                Ok(s) => s,
                Err(e) => {
                    return write_frame(
                        &mut send,
                        &fail(err(AgentErrorCode::Invalid, e.to_string())),
                    )
                    .await
                }
            };
            let mut pods = Vec::new();
            let mut after: Option<String> = None;
            let mut revision = None;
            loop {
                let page = match self.node.reader.list(
                    "Pod",
                    "",
                    &selector,
                    self.node.limits.max_list_page.max(1),
                    after.as_deref(),
                ) {
                    Ok(p) => p,
                    Err(e) => {
                        return write_frame(
                            &mut send,
                            &fail(err(AgentErrorCode::Unavailable, e.to_string())),
                        )
                        .await
                    }
                };
                // Later pages may be newer; the watch replays from the first page's revision
                // and the agent applies events as upserts, so nothing is missed.
                revision.get_or_insert(page.revision);
                pods.extend(page.items);
                match page.next_key {
                    Some(k) => after = Some(k),
                    None => break,
                }
            }
            let revision = revision.unwrap_or(0);
            let mut chunks: Vec<Vec<Object>> = pods
                .chunks(ASSIGNMENT_CHUNK_PODS)
                .map(|c| c.to_vec())
                .collect();
            if chunks.is_empty() {
                chunks.push(Vec::new());
            }
            let n = chunks.len();
            for (i, pods) in chunks.into_iter().enumerate() {
                let frame = AgentResponse {
                    kind: Some(agent_response::Kind::Assignments(Assignments {
                        snapshot: true,
                        more: i + 1 < n,
                        revision,
                        pods,
                        events: Vec::new(),
                    })),
                };
                write_frame(&mut send, &frame).await?;
            }
            from = revision;
        }
        let mut events = match crate::watch::start(
            self.node.clone(),
            WatchRequest {
                kind: "Pod".into(),
                field_selector: fields,
                start_revision: from,
                ..Default::default()
            },
        ) {
            Ok(s) => s,
            Err(e) => {
                return write_frame(
                    &mut send,
                    &fail(err(AgentErrorCode::Unavailable, e.to_string())),
                )
                .await
            }
        };
        use tokio_stream::StreamExt;
        loop {
            let ev = tokio::select! {
                _ = self.node.shutdown.cancelled() => return Ok(()),
                _ = send.stopped() => return Ok(()),
                ev = events.next() => ev,
            };
            let frame = match ev {
                None => return Ok(()),
                Some(Ok(ev)) => {
                    let revision = ev.revision;
                    let events = if ev.r#type == EventType::Bookmark as i32 {
                        Vec::new()
                    } else {
                        vec![ev]
                    };
                    AgentResponse {
                        kind: Some(agent_response::Kind::Assignments(Assignments {
                            revision,
                            events,
                            ..Default::default()
                        })),
                    }
                }
                Some(Err(status)) => {
                    let e = flotilla_api::ApiError::from_status(&status);
                    let code = if e.code() == ErrorCode::Compacted {
                        AgentErrorCode::Compacted
                    } else {
                        AgentErrorCode::Unavailable
                    };
                    return write_frame(&mut send, &fail(err(code, e.to_string()))).await;
                }
            };
            write_frame(&mut send, &frame).await?;
        }
    }

    /// Pod status reports from the peer's node, written through the status subresource. A
    /// node may report only pods bound to it.
    async fn status(
        &self,
        peer: Option<String>,
        first: PodStatusReport,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> Result<(), flotilla_quic::QuicError> {
        let name = match Self::node_of(peer.as_deref()) {
            Ok(n) => n,
            Err(e) => {
                let resp = AgentResponse {
                    kind: Some(agent_response::Kind::Error(e)),
                };
                return write_frame(&mut send, &resp).await;
            }
        };
        let mut report = first;
        loop {
            let written = self.write_status(&name, report).await;
            let resp = match written {
                Ok(n) => AgentResponse {
                    kind: Some(agent_response::Kind::StatusAck(StatusAck { written: n })),
                },
                Err(e) => AgentResponse {
                    kind: Some(agent_response::Kind::Error(e)),
                },
            };
            write_frame(&mut send, &resp).await?;
            let next = tokio::select! {
                _ = self.node.shutdown.cancelled() => return Ok(()),
                f = read_frame::<AgentRequest>(&mut recv) => f?,
            };
            match next.and_then(|f| f.kind) {
                Some(agent_request::Kind::PodStatus(r)) => report = r,
                _ => return Ok(()),
            }
        }
    }

    async fn write_status(&self, node: &str, report: PodStatusReport) -> Result<u32, AgentError> {
        let mut writes = Vec::new();
        for mut pod in report.pods {
            if pod.kind != "Pod" {
                continue;
            }
            let key = pod.key();
            let stored = self.node.reader.get(&key).ok().and_then(|(o, _)| o);
            let Some(stored) = stored else { continue };
            let bound = match &stored.body {
                Some(Body::Pod(p)) => p.spec.as_ref().is_some_and(|s| s.node_name == node),
                _ => false,
            };
            // Only pods bound to this node, and the same pod (not a namesake created since).
            if !bound || stored.meta().uid != pod.meta().uid {
                continue;
            }
            pod.metadata = stored.metadata.clone();
            pod.meta_mut().resource_version = 0;
            if let (Some(Body::Pod(new)), Some(Body::Pod(old))) = (&mut pod.body, &stored.body) {
                new.spec = old.spec.clone();
            }
            writes.push(Write {
                op: Some(Op::UpdateStatus(pod)),
                fence: None,
            });
        }
        // Pods the node has stopped after their deletion began: removed now (the same pod
        // only, and only one marked for deletion and bound to this node).
        for pod in report.finished {
            let key = pod.key();
            let Some(stored) = self.node.reader.get(&key).ok().and_then(|(o, _)| o) else {
                continue;
            };
            let bound = match &stored.body {
                Some(Body::Pod(p)) => p.spec.as_ref().is_some_and(|s| s.node_name == node),
                _ => false,
            };
            if !bound
                || stored.meta().uid != pod.meta().uid
                || stored.meta().deletion_timestamp_ms.is_none()
            {
                continue;
            }
            writes.push(Write {
                op: Some(Op::Delete(flotilla_api::pb::api::DeleteRequest {
                    key: Some(key),
                    expected_resource_version: None,
                    expected_uid: Some(stored.meta().uid.clone()),
                    grace_period_seconds: Some(0),
                    propagation_policy: String::new(),
                })),
                fence: None,
            });
        }
        writes.extend(self.event_writes(node, report.events));
        let mut written = 0u32;
        for chunk in writes.chunks(self.node.limits.max_batch_writes.max(1)) {
            let r = self
                .api
                .batch(tonic::Request::new(BatchRequest {
                    writes: chunk.to_vec(),
                }))
                .await
                .map_err(|s| err(AgentErrorCode::Unavailable, s.message().to_string()))?;
            written += r
                .into_inner()
                .results
                .iter()
                .filter(|r| {
                    matches!(
                        r.result,
                        Some(flotilla_api::pb::api::write_result::Result::Object(_))
                    )
                })
                .count() as u32;
        }
        Ok(written)
    }

    /// Events from the node about pods bound to it, as writes: a new series is created, a
    /// known one (read from this server's state) gets its count raised. A write that loses a
    /// race (already exists, changed meanwhile) is dropped: Events are best effort, as in
    /// Kubernetes.
    fn event_writes(
        &self,
        node: &str,
        events: Vec<flotilla_api::pb::agent::PodEvent>,
    ) -> Vec<Write> {
        use flotilla_api::events;
        let now = flotilla_api::manifest::format_timestamp_ms(crate::now_ms());
        let by = events::Reporter {
            component: "flotilla-agent",
            host: node,
        };
        let mut series: std::collections::BTreeMap<String, (Object, i32)> = Default::default();
        for ev in events.into_iter().take(MAX_EVENTS_PER_REPORT) {
            let key = ObjectKey {
                kind: "Pod".into(),
                namespace: ev.namespace.clone(),
                name: ev.pod_name.clone(),
            };
            let Some(pod) = self.node.reader.get(&key).ok().and_then(|(o, _)| o) else {
                continue;
            };
            let bound = match &pod.body {
                Some(Body::Pod(p)) => p.spec.as_ref().is_some_and(|s| s.node_name == node),
                _ => false,
            };
            if !bound || pod.meta().uid != ev.pod_uid {
                continue;
            }
            let first = events::new_event(
                events::reference(&pod),
                &ev.r#type,
                &ev.reason,
                &ev.message,
                &by,
                &now,
            );
            let entry = series
                .entry(first.meta().name.clone())
                .or_insert((first, 0));
            entry.1 = entry.1.saturating_add(ev.count.max(1));
        }
        series
            .into_values()
            .map(|(first, count)| {
                let existing = self.node.reader.get(&first.key()).ok().and_then(|(o, _)| o);
                let op = match existing {
                    Some(e) => Op::Update(events::repeat(e, count, &now)),
                    None if count > 1 => Op::Create(events::repeat(first, count - 1, &now)),
                    None => Op::Create(first),
                };
                Write {
                    op: Some(op),
                    fence: None,
                }
            })
            .collect()
    }

    fn heard(&self, name: &str) {
        if let Ok(mut h) = self.heard.lock() {
            h.insert(name.to_string(), crate::now_ms());
        }
    }

    /// Creates or refreshes the Node (status only, once it exists: spec and labels then belong
    /// to the cluster's users) and makes sure its Lease exists.
    async fn register(
        &self,
        peer: Option<String>,
        r: RegisterRequest,
    ) -> Result<String, AgentError> {
        let mut obj = r
            .node
            .ok_or_else(|| err(AgentErrorCode::Invalid, "register without a node"))?;
        if obj.kind != "Node" || !matches!(obj.body, Some(Body::Node(_))) {
            return Err(err(
                AgentErrorCode::Invalid,
                "register carries a Node object",
            ));
        }
        let name = obj.meta().name.clone();
        let want = format!("{NODE_CN_PREFIX}{name}");
        if peer.as_deref() != Some(want.as_str()) {
            return Err(err(
                AgentErrorCode::Unauthenticated,
                format!(
                    "registering node {name:?} needs a client certificate for {want:?}, got {}",
                    peer.map_or("none".to_string(), |p| format!("{p:?}"))
                ),
            ));
        }
        let api_err = |s: tonic::Status| {
            let e = flotilla_api::ApiError::from_status(&s);
            let code = if e.code() == ErrorCode::InvalidArgument {
                AgentErrorCode::Invalid
            } else {
                AgentErrorCode::Unavailable
            };
            err(code, e.to_string())
        };
        let key = ObjectKey {
            kind: "Node".into(),
            namespace: String::new(),
            name: name.clone(),
        };
        let existing = match self
            .api
            .get(tonic::Request::new(GetRequest {
                key: Some(key),
                stale: false,
            }))
            .await
        {
            Ok(r) => r.into_inner().object,
            Err(s) if flotilla_api::ApiError::from_status(&s).code() == ErrorCode::NotFound => None,
            Err(s) => return Err(api_err(s)),
        };
        let lease = node_lease(&name, &self.node.api_addr, crate::now_ms());
        let mut writes = vec![Write {
            op: Some(Op::Update(lease.clone())),
            fence: None,
        }];
        // A create stores no status (the status subresource rule): a new Node gets it in a
        // second write.
        let mut status_write = None;
        match existing {
            None => {
                obj.meta_mut().resource_version = 0;
                status_write = Some(obj.clone());
                writes.push(Write {
                    op: Some(Op::Create(obj)),
                    fence: None,
                });
            }
            Some(stored) => {
                obj.metadata = stored.metadata.clone();
                obj.meta_mut().resource_version = 0;
                writes.push(Write {
                    op: Some(Op::UpdateStatus(obj)),
                    fence: None,
                });
            }
        }
        let mut results = self
            .api
            .batch(tonic::Request::new(BatchRequest {
                writes: writes.clone(),
            }))
            .await
            .map_err(api_err)?
            .into_inner()
            .results;
        // The Lease may not exist yet: create it instead of updating.
        if let Some(flotilla_api::pb::api::write_result::Result::Error(e)) =
            results.first().and_then(|r| r.result.clone())
        {
            if e.code == ErrorCode::NotFound as i32 {
                let r = self
                    .api
                    .batch(tonic::Request::new(BatchRequest {
                        writes: vec![Write {
                            op: Some(Op::Create(lease)),
                            fence: None,
                        }],
                    }))
                    .await
                    .map_err(api_err)?
                    .into_inner();
                results[0] = r.results.into_iter().next().unwrap_or_default();
            }
        }
        if let Some(obj) = status_write {
            let r = self
                .api
                .batch(tonic::Request::new(BatchRequest {
                    writes: vec![Write {
                        op: Some(Op::UpdateStatus(obj)),
                        fence: None,
                    }],
                }))
                .await
                .map_err(api_err)?
                .into_inner();
            results.extend(r.results);
        }
        for r in results {
            if let Some(flotilla_api::pb::api::write_result::Result::Error(e)) = r.result {
                if e.code != ErrorCode::AlreadyExists as i32 {
                    return Err(err(AgentErrorCode::Invalid, e.message));
                }
            }
        }
        tracing::info!(node = %name, "node registered");
        Ok(name)
    }
}

/// Renews the Leases of every node heard since the last round, in one batch.
async fn lease_batches(d: Arc<Dispatcher>) {
    let period = Duration::from_millis(d.node.limits.node_lease_batch_ms.max(50));
    loop {
        tokio::select! {
            _ = d.node.shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let heard: Vec<(String, i64)> = match d.heard.lock() {
            Ok(mut h) => h.drain().collect(),
            Err(_) => return,
        };
        for chunk in heard.chunks(d.node.limits.max_batch_writes.max(1)) {
            let writes = chunk
                .iter()
                .map(|(name, at)| Write {
                    op: Some(Op::Update(node_lease(name, &d.node.api_addr, *at))),
                    fence: None,
                })
                .collect();
            if let Err(s) = d
                .api
                .batch(tonic::Request::new(BatchRequest { writes }))
                .await
            {
                tracing::warn!("renewing node leases: {}", s.message());
            }
        }
    }
}
