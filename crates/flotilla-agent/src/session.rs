//! The session: one mutual-TLS QUIC connection to one server at a time. Register the Node,
//! then heartbeat at the period the server asks for. Any failure moves on to the next server
//! after a jittered exponential backoff, so agents do not stampede a server that restarts.

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_api::pb::agent::{
    agent_request, agent_response, AgentErrorCode, AgentRequest, AgentResponse, Heartbeat,
    RegisterRequest,
};

use crate::join::Identity;
use crate::{backoff_ms, nodeinfo, AgentConfig, AgentError};

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
        match session(cfg, addr, tls.clone(), &shutdown).await {
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
    shutdown: &tokio_util::sync::CancellationToken,
) -> Ended {
    let ep = match flotilla_quic::client_endpoint(addr, tls) {
        Ok(ep) => ep,
        Err(e) => return Ended::Failed(e.to_string()),
    };
    let conn = match flotilla_quic::connect(&ep, addr, cfg.connect_timeout_ms).await {
        Ok(c) => c,
        Err(e) => return Ended::Failed(e.to_string()),
    };
    let ended = registered(cfg, addr, &conn, shutdown).await;
    conn.close(0u32.into(), b"agent session ended");
    let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
    ended
}

async fn registered(
    cfg: &AgentConfig,
    addr: SocketAddr,
    conn: &quinn::Connection,
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
