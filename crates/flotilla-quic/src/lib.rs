//! The agent transport: QUIC endpoints (quinn) configured with the cluster's TLS, and the
//! framing every agent stream uses: a 4-byte big-endian length, then one protobuf message, with
//! a hard upper bound on the length. Servers and agents both use it.
//!
//! It must never interpret the messages it carries or decide who may send them.

use prost::Message;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// ALPN of the agent protocol; a peer speaking anything else is refused by the handshake.
pub const ALPN: &[u8] = b"flotilla-agent/1";
/// Upper bound of one frame (a full assignment set is sent as several frames).
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

const KEEP_ALIVE_MS: u64 = 2_000;
const IDLE_TIMEOUT_MS: u32 = 10_000;
const MAX_STREAMS_PER_CONNECTION: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME_BYTES}")]
    FrameTooLarge(usize),
    #[error("malformed frame: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("stream closed in the middle of a frame")]
    Truncated,
    #[error("read: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("connect to {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("connect to {addr}: no answer within {timeout_ms} ms")]
    ConnectTimeout { addr: SocketAddr, timeout_ms: u64 },
    #[error("open stream: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("endpoint {addr}: {source}")]
    Endpoint {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
}

pub type Result<T> = std::result::Result<T, QuicError>;

pub async fn write_frame<M: Message>(send: &mut quinn::SendStream, m: &M) -> Result<()> {
    let len = m.encoded_len();
    if len > MAX_FRAME_BYTES {
        return Err(QuicError::FrameTooLarge(len));
    }
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    m.encode(&mut buf)
        .map_err(|_| QuicError::FrameTooLarge(len))?;
    send.write_all(&buf).await?;
    Ok(())
}

/// The next frame, or None when the peer finished the stream between frames.
pub async fn read_frame<M: Message + Default>(recv: &mut quinn::RecvStream) -> Result<Option<M>> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(QuicError::Truncated),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(QuicError::FrameTooLarge(len));
    }
    let mut buf = vec![0u8; len];
    match recv.read_exact(&mut buf).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(QuicError::Truncated),
        Err(e) => return Err(e.into()),
    }
    Ok(Some(M::decode(buf.as_slice())?))
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_MS)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        IDLE_TIMEOUT_MS,
    ))));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS_PER_CONNECTION));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    Arc::new(t)
}

/// A server endpoint bound to UDP `addr` that accepts nothing until [`server_config`] is set
/// on it (`set_server_config`): binding first lets a taken port fail start-up cleanly.
pub fn bind_server(addr: SocketAddr) -> Result<quinn::Endpoint> {
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|source| QuicError::Endpoint { addr, source })?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| QuicError::Endpoint { addr, source })
}

/// The server side of the agent protocol with `tls`.
pub fn server_config(tls: rustls::ServerConfig) -> Result<quinn::ServerConfig> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// A client endpoint for reaching `target`'s address family.
pub fn client_endpoint(target: SocketAddr, tls: rustls::ClientConfig) -> Result<quinn::Endpoint> {
    let bind: SocketAddr = if target.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport());
    let mut ep = quinn::Endpoint::client(bind)
        .map_err(|source| QuicError::Endpoint { addr: bind, source })?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// A client configuration for [`connect_with`]: many identities can then share one endpoint
/// (one UDP socket), as simulated nodes in a benchmark do.
pub fn client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// [`connect`] with its own client configuration on a shared endpoint.
pub async fn connect_with(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    timeout_ms: u64,
) -> Result<quinn::Connection> {
    let connecting = ep
        .connect_with(cfg, addr, flotilla_identity::SERVER_NAME)
        .map_err(|e| QuicError::Connect {
            addr,
            message: e.to_string(),
        })?;
    match tokio::time::timeout(Duration::from_millis(timeout_ms), connecting).await {
        Err(_) => Err(QuicError::ConnectTimeout { addr, timeout_ms }),
        Ok(Err(e)) => Err(QuicError::Connect {
            addr,
            message: e.to_string(),
        }),
        Ok(Ok(c)) => Ok(c),
    }
}

/// Connects to a server (verified as `flotilla_identity::SERVER_NAME`), bounded by `timeout_ms`.
pub async fn connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    timeout_ms: u64,
) -> Result<quinn::Connection> {
    let connecting = ep
        .connect(addr, flotilla_identity::SERVER_NAME)
        .map_err(|e| QuicError::Connect {
            addr,
            message: e.to_string(),
        })?;
    match tokio::time::timeout(Duration::from_millis(timeout_ms), connecting).await {
        Err(_) => Err(QuicError::ConnectTimeout { addr, timeout_ms }),
        Ok(Err(e)) => Err(QuicError::Connect {
            addr,
            message: e.to_string(),
        }),
        Ok(Ok(c)) => Ok(c),
    }
}

/// The common name of the client certificate the peer presented, if any.
pub fn peer_common_name(conn: &quinn::Connection) -> Option<String> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    flotilla_identity::common_name(certs.first()?.as_ref())
}
