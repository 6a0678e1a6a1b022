//! Joining: discovery of the cluster CA (checked against the token's pin before anything is
//! trusted), then a CSR signed by a server over a connection verified with that CA. The
//! identity is kept under `<data-dir>/identity`; the private key never leaves the node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_api::pb::agent::{
    agent_request, agent_response, AgentErrorCode, AgentRequest, AgentResponse, GetCaRequest,
    JoinRequest,
};
use flotilla_identity::{CertKey, JoinToken};

use crate::{backoff_ms, AgentConfig, AgentError};

/// What the agent authenticates with.
#[derive(Clone, Debug)]
pub struct Identity {
    pub ca_pem: String,
    pub node: CertKey,
}

fn dir(cfg: &AgentConfig) -> PathBuf {
    cfg.data_dir.join("identity")
}

fn read(path: &Path) -> Result<Option<String>, AgentError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AgentError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), AgentError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |op, source| AgentError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    f.write_all(text.as_bytes()).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("fsync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename", e))
}

/// The stored identity, or a new one obtained with the token.
pub async fn ensure_identity(
    cfg: &AgentConfig,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Identity, AgentError> {
    let d = dir(cfg);
    if let (Some(ca), Some(cert), Some(key)) = (
        read(&d.join("ca.crt"))?,
        read(&d.join("node.crt"))?,
        read(&d.join("node.key"))?,
    ) {
        return Ok(Identity {
            ca_pem: ca,
            node: CertKey {
                cert_pem: cert,
                key_pem: key,
            },
        });
    }
    let token = cfg
        .token
        .as_deref()
        .ok_or_else(|| AgentError::NoToken(d.display().to_string()))?;
    let token = JoinToken::parse(token).map_err(|e| AgentError::Token(e.to_string()))?;
    let id = join(cfg, &token, shutdown).await?;
    std::fs::create_dir_all(&d).map_err(|source| AgentError::Io {
        op: "create",
        path: d.clone(),
        source,
    })?;
    write(&d.join("node.key"), &id.node.key_pem, 0o600)?;
    write(&d.join("node.crt"), &id.node.cert_pem, 0o644)?;
    write(&d.join("ca.crt"), &id.ca_pem, 0o644)?;
    tracing::info!(node = %cfg.name, "joined the cluster; identity in {}", d.display());
    Ok(id)
}

async fn call(conn: &quinn::Connection, req: AgentRequest) -> Result<AgentResponse, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    flotilla_quic::write_frame(&mut send, &req)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    let resp = tokio::time::timeout(
        Duration::from_secs(15),
        flotilla_quic::read_frame::<AgentResponse>(&mut recv),
    )
    .await
    .map_err(|_| "no answer within 15 s".to_string())?
    .map_err(|e| e.to_string())?;
    resp.ok_or_else(|| "the server closed the stream without answering".into())
}

enum Attempt {
    Done(Identity),
    Fatal(AgentError),
    Retry(String),
}

async fn join(
    cfg: &AgentConfig,
    token: &JoinToken,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Identity, AgentError> {
    let mut last = String::from("no servers given");
    for round in 0..cfg.join_rounds.max(1) {
        for addr in &cfg.servers {
            match join_once(cfg, token, *addr).await {
                Attempt::Done(id) => return Ok(id),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Retry(why) => {
                    tracing::warn!(%addr, "join attempt failed: {why}");
                    last = format!("{addr}: {why}");
                }
            }
        }
        let wait = backoff_ms(round, cfg.backoff_min_ms, cfg.backoff_max_ms);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
    }
    Err(AgentError::Unreachable(last))
}

async fn join_once(cfg: &AgentConfig, token: &JoinToken, addr: SocketAddr) -> Attempt {
    let alpn = [flotilla_quic::ALPN];
    // 1. Discovery: the CA, from a connection we do not trust yet; nothing secret is sent.
    let discovery = match flotilla_identity::discovery_tls_config(&alpn)
        .map_err(|e| e.to_string())
        .and_then(|tls| flotilla_quic::client_endpoint(addr, tls).map_err(|e| e.to_string()))
    {
        Ok(ep) => ep,
        Err(e) => return Attempt::Retry(e),
    };
    let conn = match flotilla_quic::connect(&discovery, addr, cfg.connect_timeout_ms).await {
        Ok(c) => c,
        Err(e) => return Attempt::Retry(e.to_string()),
    };
    let ca_pem = match call(
        &conn,
        AgentRequest {
            kind: Some(agent_request::Kind::GetCa(GetCaRequest {})),
        },
    )
    .await
    {
        Ok(AgentResponse {
            kind: Some(agent_response::Kind::Ca(c)),
        }) => c.ca_cert_pem,
        Ok(other) => return Attempt::Retry(format!("unexpected answer to get_ca: {other:?}")),
        Err(e) => return Attempt::Retry(e),
    };
    conn.close(0u32.into(), b"discovered");
    discovery.wait_idle().await;
    let actual = match flotilla_identity::ca_hash(&ca_pem) {
        Ok(h) => h,
        Err(e) => return Attempt::Retry(format!("unreadable CA: {e}")),
    };
    if actual != token.ca_hash {
        return Attempt::Fatal(AgentError::CaMismatch {
            addr,
            actual,
            expected: token.ca_hash.clone(),
        });
    }
    // 2. Join over a connection verified with the pinned CA.
    let (csr, key) = match flotilla_identity::new_csr(&format!(
        "{}{}",
        flotilla_identity::NODE_CN_PREFIX,
        cfg.name
    )) {
        Ok(x) => x,
        Err(e) => return Attempt::Fatal(e.into()),
    };
    let ep = match flotilla_identity::client_tls_config(&ca_pem, None, &alpn)
        .map_err(|e| e.to_string())
        .and_then(|tls| flotilla_quic::client_endpoint(addr, tls).map_err(|e| e.to_string()))
    {
        Ok(ep) => ep,
        Err(e) => return Attempt::Retry(e),
    };
    let conn = match flotilla_quic::connect(&ep, addr, cfg.connect_timeout_ms).await {
        Ok(c) => c,
        Err(e) => return Attempt::Retry(e.to_string()),
    };
    let resp = call(
        &conn,
        AgentRequest {
            kind: Some(agent_request::Kind::Join(JoinRequest {
                token_id: token.id.clone(),
                token_secret: token.secret.clone(),
                node_name: cfg.name.clone(),
                csr_pem: csr,
            })),
        },
    )
    .await;
    conn.close(0u32.into(), b"joined");
    ep.wait_idle().await;
    match resp {
        Ok(AgentResponse {
            kind: Some(agent_response::Kind::Join(j)),
        }) => Attempt::Done(Identity {
            ca_pem,
            node: CertKey {
                cert_pem: j.cert_pem,
                key_pem: key,
            },
        }),
        Ok(AgentResponse {
            kind: Some(agent_response::Kind::Error(e)),
        }) => {
            if e.code == AgentErrorCode::Unavailable as i32 {
                Attempt::Retry(e.message)
            } else {
                Attempt::Fatal(AgentError::Refused {
                    addr,
                    message: e.message,
                })
            }
        }
        Ok(other) => Attempt::Retry(format!("unexpected answer to join: {other:?}")),
        Err(e) => Attempt::Retry(e),
    }
}
