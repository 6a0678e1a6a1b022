//! The session: one mutual-TLS QUIC connection to one server at a time. Register the Node,
//! then heartbeat at the period the server asks for. Any failure moves on to the next server
//! after a jittered exponential backoff, so agents do not stampede a server that restarts.

use std::net::SocketAddr;
use std::time::Duration;

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_api::pb::agent::{
    agent_request, agent_response, AgentErrorCode, AgentRequest, AgentResponse, GetObjectsRequest,
    Heartbeat, PodStatusReport, RegisterRequest, WatchAssignmentsRequest,
};
use flotilla_api::pb::api::{EventType, Object};
use tokio::sync::{mpsc, Notify};

use crate::join::Identity;
use crate::pods::SharedDesired;
use crate::{backoff_ms, nodeinfo, AgentConfig, AgentError};

/// What the session shares with the pod manager.
pub struct Links {
    pub desired: SharedDesired,
    pub changed: Arc<Notify>,
    pub status_rx: mpsc::Receiver<crate::pods::Report>,
    /// The latest report of every pod, re-sent on each new session.
    pub latest: BTreeMap<String, Object>,
    pub server: ServerLink,
}

/// The connection of the current session, if there is one, for requests the pod manager makes
/// (ConfigMaps and Secrets its pods refer to).
#[derive(Clone, Default)]
pub struct ServerLink(Arc<std::sync::Mutex<Option<quinn::Connection>>>);

impl ServerLink {
    fn set(&self, conn: Option<quinn::Connection>) {
        if let Ok(mut g) = self.0.lock() {
            *g = conn;
        }
    }

    /// ConfigMaps and Secrets by key from the connected server: the objects found and the keys
    /// that do not exist there.
    pub async fn get_objects(
        &self,
        keys: Vec<flotilla_api::ObjectKey>,
        timeout_ms: u64,
    ) -> Result<(Vec<Object>, Vec<flotilla_api::ObjectKey>), String> {
        let conn = self
            .0
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .ok_or("not connected to any server")?;
        let ask = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let req = AgentRequest {
                kind: Some(agent_request::Kind::GetObjects(GetObjectsRequest { keys })),
            };
            flotilla_quic::write_frame(&mut send, &req)
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            match flotilla_quic::read_frame::<AgentResponse>(&mut recv).await {
                Ok(Some(AgentResponse {
                    kind: Some(agent_response::Kind::Objects(o)),
                })) => Ok((o.objects, o.missing)),
                Ok(Some(AgentResponse {
                    kind: Some(agent_response::Kind::Error(e)),
                })) => Err(e.message),
                Ok(_) => Err("the server ended the stream without an answer".to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        tokio::time::timeout(Duration::from_millis(timeout_ms), ask)
            .await
            .map_err(|_| format!("no answer within {timeout_ms} ms"))?
    }
}

/// How the session ended.
enum Ended {
    Shutdown,
    /// The session had been established; start the backoff from scratch.
    AfterRegister(String),
    Failed(String),
}

pub async fn run(
    cfg: &AgentConfig,
    id: &Identity,
    links: &mut Links,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), AgentError> {
    let alpn = [flotilla_quic::ALPN];
    let tls = flotilla_identity::client_tls_config(&id.ca_pem, Some(&id.node), &alpn)?;
    let mut attempt: u32 = 0;
    // Start at a random server so a fleet of agents spreads over the servers.
    let mut next = {
        use rand::Rng;
        rand::rng().random_range(0..cfg.servers.len().max(1))
    };
    loop {
        let Some(addr) = cfg.servers.get(next % cfg.servers.len().max(1)).copied() else {
            return Err(AgentError::Unreachable("no servers given".into()));
        };
        next += 1;
        match session(cfg, addr, tls.clone(), links, &shutdown).await {
            Ended::Shutdown => return Ok(()),
            Ended::AfterRegister(why) => {
                tracing::warn!(%addr, "session ended: {why}");
                attempt = 0;
            }
            Ended::Failed(why) => {
                tracing::warn!(%addr, "cannot open a session: {why}");
                attempt = attempt.saturating_add(1);
            }
        }
        let wait = backoff_ms(attempt, cfg.backoff_min_ms, cfg.backoff_max_ms);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
    }
}

async fn session(
    cfg: &AgentConfig,
    addr: SocketAddr,
    tls: flotilla_identity::rustls::ClientConfig,
    links: &mut Links,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Ended {
    let (ep, conn) = match &cfg.shared_endpoint {
        Some(ep) => {
            let qc = match flotilla_quic::client_config(tls) {
                Ok(c) => c,
                Err(e) => return Ended::Failed(e.to_string()),
            };
            match flotilla_quic::connect_with(ep, qc, addr, cfg.connect_timeout_ms).await {
                Ok(c) => (None, c),
                Err(e) => return Ended::Failed(e.to_string()),
            }
        }
        None => {
            let ep = match flotilla_quic::client_endpoint(addr, tls) {
                Ok(ep) => ep,
                Err(e) => return Ended::Failed(e.to_string()),
            };
            match flotilla_quic::connect(&ep, addr, cfg.connect_timeout_ms).await {
                Ok(c) => (Some(ep), c),
                Err(e) => return Ended::Failed(e.to_string()),
            }
        }
    };
    let ended = registered(cfg, addr, &conn, links, shutdown).await;
    links.server.set(None);
    conn.close(0u32.into(), b"agent session ended");
    if let Some(ep) = ep {
        let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
    }
    ended
}

async fn registered(
    cfg: &AgentConfig,
    addr: SocketAddr,
    conn: &quinn::Connection,
    links: &mut Links,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Ended {
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return Ended::Failed(e.to_string()),
    };
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let node = nodeinfo::node_object(cfg, nodeinfo::local_ip_towards(addr), &now);
    let register = AgentRequest {
        kind: Some(agent_request::Kind::Register(RegisterRequest {
            node: Some(node),
        })),
    };
    if let Err(e) = flotilla_quic::write_frame(&mut send, &register).await {
        return Ended::Failed(e.to_string());
    }
    let mut period_ms = match reply(&mut recv, 15_000).await {
        Ok(p) => p,
        Err(e) => return Ended::Failed(e),
    };
    tracing::info!(%addr, node = %cfg.name, heartbeat_ms = period_ms, "session established");
    links.server.set(Some(conn.clone()));
    let desired = links.desired.clone();
    let changed = links.changed.clone();
    let heartbeats = async {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                _ = tokio::time::sleep(Duration::from_millis(period_ms)) => {}
            }
            let hb = AgentRequest {
                kind: Some(agent_request::Kind::Heartbeat(Heartbeat {})),
            };
            if let Err(e) = flotilla_quic::write_frame(&mut send, &hb).await {
                return Ended::AfterRegister(e.to_string());
            }
            match reply(&mut recv, period_ms.saturating_mul(2).max(5_000)).await {
                Ok(p) => period_ms = p,
                Err(e) => return Ended::AfterRegister(e),
            }
        }
    };
    let containers = match flotilla_runtime::Containers::open({
        let mut rc = flotilla_runtime::RuntimeConfig::new(
            cfg.data_dir.join("runtime"),
            cfg.shim_program.clone(),
        );
        rc.runtime_binary = cfg.runtime.clone();
        rc
    }) {
        Ok(c) => std::sync::Arc::new(c),
        Err(e) => return Ended::Failed(e.to_string()),
    };
    // Streams the server opens: logs and exec.
    let served = async {
        loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    let c = containers.clone();
                    tokio::spawn(async move { crate::streams::serve(&c, send, recv).await });
                }
                Err(e) => return e.to_string(),
            }
        }
    };
    tokio::select! {
        e = heartbeats => e,
        e = served => Ended::AfterRegister(e),
        e = assignments(conn, &desired, &changed) => Ended::AfterRegister(e),
        e = statuses(conn, &mut links.status_rx, &mut links.latest, &desired) => Ended::AfterRegister(e),
    }
}

/// Keeps `desired` equal to the pods bound to this node: a full set, then changes; resumes
/// from the last revision on a new stream, and starts over from a full set when the server no
/// longer holds that revision. Returns why it stopped.
async fn assignments(
    conn: &quinn::Connection,
    desired: &SharedDesired,
    changed: &Notify,
) -> String {
    loop {
        // A bind batch puts many pods in one revision and the stream can break inside it.
        let mut resume = {
            let d = desired.lock().await;
            d.synced.then(|| d.position.resume())
        };
        let from = resume.map(|r| r.start_revision).unwrap_or(0);
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return e.to_string(),
        };
        let req = AgentRequest {
            kind: Some(agent_request::Kind::WatchAssignments(
                WatchAssignmentsRequest {
                    from_revision: from,
                },
            )),
        };
        if let Err(e) = flotilla_quic::write_frame(&mut send, &req).await {
            return e.to_string();
        }
        let mut snapshot: Vec<Object> = Vec::new();
        loop {
            let frame = match flotilla_quic::read_frame::<AgentResponse>(&mut recv).await {
                Ok(Some(f)) => f,
                Ok(None) => return "the server ended the assignment stream".into(),
                Err(e) => return e.to_string(),
            };
            match frame.kind {
                Some(agent_response::Kind::Assignments(a)) if a.snapshot => {
                    snapshot.extend(a.pods);
                    if !a.more {
                        let mut d = desired.lock().await;
                        d.pods = std::mem::take(&mut snapshot)
                            .into_iter()
                            .map(|p| (p.meta().uid.clone(), p))
                            .collect();
                        d.synced = true;
                        d.position = flotilla_api::resume::ResumePoint::at(a.revision);
                        drop(d);
                        changed.notify_one();
                    }
                }
                Some(agent_response::Kind::Assignments(a)) => {
                    let mut d = desired.lock().await;
                    if a.events.is_empty() {
                        d.position.bookmark(a.revision);
                    }
                    let mut any = false;
                    for ev in a.events {
                        if resume
                            .as_mut()
                            .is_some_and(|r| r.already_delivered(ev.revision))
                        {
                            continue;
                        }
                        d.position.event(ev.revision);
                        any = true;
                        let Some(pod) = ev.object else { continue };
                        let uid = pod.meta().uid.clone();
                        if ev.r#type == EventType::Deleted as i32 {
                            d.pods.remove(&uid);
                        } else {
                            d.pods.insert(uid, pod);
                        }
                    }
                    drop(d);
                    if any {
                        changed.notify_one();
                    }
                }
                Some(agent_response::Kind::Error(e))
                    if e.code == AgentErrorCode::Compacted as i32 =>
                {
                    tracing::warn!("assignments: {}; resyncing", e.message);
                    desired.lock().await.synced = false;
                    break;
                }
                Some(agent_response::Kind::Error(e)) => {
                    return format!("assignments: {}", e.message)
                }
                _ => return "unexpected frame on the assignment stream".into(),
            }
        }
    }
}

/// Events sent in one status report; more in one burst are dropped (Events are best effort).
const MAX_EVENTS_PER_REPORT: usize = 256;

/// Sends pod status reports, coalesced (the latest per pod), and all latest ones again at the
/// start of every session so nothing reported while disconnected is lost.
async fn statuses(
    conn: &quinn::Connection,
    rx: &mut mpsc::Receiver<crate::pods::Report>,
    latest: &mut BTreeMap<String, Object>,
    desired: &SharedDesired,
) -> String {
    use crate::pods::Report;
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    let mut pending: Vec<Report> = {
        let d = desired.lock().await;
        latest.retain(|uid, _| d.pods.contains_key(uid));
        latest.values().cloned().map(Report::Status).collect()
    };
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(o) => pending.push(o),
                None => return "the pod manager stopped".into(),
            }
        }
        while let Ok(o) = rx.try_recv() {
            pending.push(o);
        }
        let mut by_uid: BTreeMap<String, Object> = BTreeMap::new();
        let mut finished: BTreeMap<String, Object> = BTreeMap::new();
        let mut events: Vec<flotilla_api::pb::agent::PodEvent> = Vec::new();
        for r in pending.drain(..) {
            match r {
                Report::Event(e) => {
                    // Repeats within one report go as one, counted.
                    let full = events.len() >= MAX_EVENTS_PER_REPORT;
                    let same = events.iter_mut().find(|x| {
                        x.pod_uid == e.pod_uid
                            && x.r#type == e.r#type
                            && x.reason == e.reason
                            && x.message == e.message
                    });
                    match same {
                        Some(x) => x.count = x.count.saturating_add(e.count.max(1)),
                        None if !full => events.push(e),
                        None => {}
                    }
                }
                Report::Status(o) => {
                    latest.insert(o.meta().uid.clone(), o.clone());
                    by_uid.insert(o.meta().uid.clone(), o);
                }
                Report::Finished(o) => {
                    latest.remove(&o.meta().uid);
                    by_uid.remove(&o.meta().uid);
                    finished.insert(o.meta().uid.clone(), o);
                }
            }
        }
        let req = AgentRequest {
            kind: Some(agent_request::Kind::PodStatus(PodStatusReport {
                pods: by_uid.into_values().collect(),
                finished: finished.into_values().collect(),
                events,
            })),
        };
        if let Err(e) = flotilla_quic::write_frame(&mut send, &req).await {
            return e.to_string();
        }
        match flotilla_quic::read_frame::<AgentResponse>(&mut recv).await {
            Ok(Some(AgentResponse {
                kind: Some(agent_response::Kind::StatusAck(_)),
            })) => {}
            Ok(Some(AgentResponse {
                kind: Some(agent_response::Kind::Error(e)),
            })) => return format!("status: {}", e.message),
            Ok(_) => return "the server ended the status stream".into(),
            Err(e) => return e.to_string(),
        }
    }
}

/// The next session response: the heartbeat period in ms, or why there is none.
async fn reply(recv: &mut quinn::RecvStream, timeout_ms: u64) -> Result<u64, String> {
    let frame = tokio::time::timeout(
        Duration::from_millis(timeout_ms),
        flotilla_quic::read_frame::<AgentResponse>(recv),
    )
    .await
    .map_err(|_| format!("no answer within {timeout_ms} ms"))?
    .map_err(|e| e.to_string())?;
    match frame.and_then(|f| f.kind) {
        Some(agent_response::Kind::Session(s)) => Ok(u64::from(s.heartbeat_period_ms).max(100)),
        Some(agent_response::Kind::Error(e)) => Err(format!(
            "{}: {}",
            AgentErrorCode::try_from(e.code)
                .map(|c| c.as_str_name())
                .unwrap_or("UNKNOWN"),
            e.message
        )),
        Some(other) => Err(format!("unexpected answer {other:?}")),
        None => Err("the server closed the session".into()),
    }
}
