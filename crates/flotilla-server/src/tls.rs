//! Mutual TLS for the client API and the Raft transport. Every server derives the same cluster
//! CA from the cluster's id and secret (`flotilla_identity::derive_ca`), issues itself a
//! certificate at start-up, and accepts only peers with certificates from that CA: other
//! servers on the Raft port, and clients (the admin CLI, other servers forwarding) on the API,
//! where node certificates are refused (agents speak QUIC). Plain TCP is refused everywhere.
//! A bootstrapping server writes `<data-dir>/admin.conf` for the CLI, as k3s writes k3s.yaml.

use std::path::Path;

use flotilla_client::configfile::{ClientConfig as ConfigFile, ClusterEntry};
use flotilla_identity::{CertKey, ADMIN_CN, NODE_CN_PREFIX, SERVER_NAME};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::ServerConfig;

/// Days the admin certificate in admin.conf is valid.
pub const ADMIN_CERT_DAYS: i64 = 365;
/// Days a server's own certificate is valid; it is issued anew at every start.
const SERVER_CERT_DAYS: i64 = 365;

/// The CA and this server's certificate.
#[derive(Clone)]
pub struct ServerTls {
    pub ca: CertKey,
    pub cert: CertKey,
}

impl ServerTls {
    pub fn new(config: &ServerConfig) -> Result<ServerTls, String> {
        let ca = flotilla_identity::derive_ca(&config.cluster_id, config.secret())
            .map_err(|e| format!("cluster CA: {e}"))?;
        let mut names = vec!["localhost".to_string()];
        for a in [
            Some(&config.api_addr),
            Some(&config.raft_addr),
            config.agent_addr.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if let Ok(sa) = a.parse::<std::net::SocketAddr>() {
                let ip = sa.ip().to_string();
                if !names.contains(&ip) {
                    names.push(ip);
                }
            }
        }
        let cert = flotilla_identity::issue_server_cert(&ca, &names, SERVER_CERT_DAYS)
            .map_err(|e| format!("server certificate: {e}"))?;
        Ok(ServerTls { ca, cert })
    }

    /// Our certificate; clients must present one from the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert.cert_pem, &self.cert.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca.cert_pem))
    }

    /// For calls to other servers: our certificate as the client's, theirs checked by name.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca.cert_pem))
            .identity(Identity::from_pem(&self.cert.cert_pem, &self.cert.key_pem))
            .domain_name(SERVER_NAME)
    }
}

/// The common name of the client certificate a request came with.
pub fn peer_cn<T>(req: &tonic::Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    flotilla_identity::common_name(certs.first()?.as_ref())
}

/// The Raft port serves other servers only.
#[allow(clippy::result_large_err)]
pub fn servers_only(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    match peer_cn(&req).as_deref() {
        Some(SERVER_NAME) => Ok(req),
        other => Err(flotilla_api::ApiError::new(
            flotilla_api::ErrorCode::Unauthenticated,
            format!(
                "the Raft transport serves servers only; the client certificate is {}",
                other.map_or("missing".to_string(), |cn| format!("{cn:?}"))
            ),
        )
        .to_status()),
    }
}

/// The client API serves any certificate from the CA but a node's (agents speak QUIC).
#[allow(clippy::result_large_err)]
pub fn api_clients(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    match peer_cn(&req) {
        Some(cn) if !cn.starts_with(NODE_CN_PREFIX) => Ok(req),
        Some(cn) => Err(flotilla_api::ApiError::new(
            flotilla_api::ErrorCode::Unauthenticated,
            format!("{cn:?} is a node certificate: nodes speak the agent protocol, not the API"),
        )
        .to_status()),
        None => Err(flotilla_api::ApiError::new(
            flotilla_api::ErrorCode::Unauthenticated,
            "the API needs a client certificate from the cluster CA",
        )
        .to_status()),
    }
}

/// Writes `<data-dir>/admin.conf` (mode 0600) if it is not there: the cluster's servers, the
/// CA and an admin client certificate, so `flotilla --config <data-dir>/admin.conf` works.
pub fn write_admin_conf(
    dir: &Path,
    config: &ServerConfig,
    tls: &ServerTls,
) -> Result<bool, String> {
    let path = dir.join("admin.conf");
    if path.exists() {
        return Ok(false);
    }
    let servers: Vec<String> = if config.initial_members.is_empty() {
        vec![config.api_addr.clone()]
    } else {
        config
            .initial_members
            .iter()
            .map(|m| m.api_addr.clone())
            .collect()
    };
    let admin = flotilla_identity::issue_client_cert(&tls.ca, ADMIN_CN, ADMIN_CERT_DAYS)
        .map_err(|e| format!("admin certificate: {e}"))?;
    let file = ConfigFile {
        current_cluster: config.cluster_id.clone(),
        clusters: vec![ClusterEntry::with_credentials(
            &config.cluster_id,
            servers,
            &tls.ca.cert_pem,
            &admin.cert_pem,
            &admin.key_pem,
        )],
    };
    file.save(&path).map_err(|e| e.to_string())?;
    Ok(true)
}
