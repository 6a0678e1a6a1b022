//! Cluster identity: the cluster CA (derived from the cluster's id and secret, the same on
//! every server, and kept in the replicated store), the certificates it issues to servers,
//! agents and the CLI, the join tokens that pin the CA's hash (as kubeadm, k3s and Swarm do), and the rustls
//! configurations built from them.
//!
//! It must never do network or file I/O or read the store: callers hand it PEM text and get
//! PEM text or rustls configs back.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The rustls version the configurations are built with, for callers that hold them.
pub use rustls;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The DNS name every server certificate carries; agents and the CLI connect with it whatever
/// address they dial, so certificates need not list every address a server is reached by.
pub const SERVER_NAME: &str = "flotilla-server";
/// Prefix of an agent certificate's common name, as Kubernetes' `system:node:<name>`.
pub const NODE_CN_PREFIX: &str = "system:node:";
pub const ADMIN_CN: &str = "flotilla-admin";

/// The shortest cluster secret accepted (`openssl rand -hex 32` gives 64).
pub const MIN_SECRET_BYTES: usize = 16;
const TOKEN_PREFIX: &str = "FLT1";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate generation: {0}")]
    Generate(String),
    #[error("invalid PEM for {what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    #[error("malformed join token: {0} (expected FLT1::sha256:<64 hex>::<id>.<secret>)")]
    Token(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

pub type Result<T> = std::result::Result<T, IdentityError>;

fn gen(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Generate(e.to_string())
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that are behind the issuer's.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days);
}

/// The cluster CA derived from the cluster's id and secret: every server of the cluster
/// computes the same CA (an Ed25519 key from SHA-256 of both, fixed validity and serial;
/// Ed25519 signatures are deterministic), so the servers trust each other over mutual TLS
/// before the replicated store exists, with no PKI step. Whoever knows the secret can issue
/// certificates: keep it as secret as a CA key.
pub fn derive_ca(cluster_id: &str, secret: &str) -> Result<CertKey> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(IdentityError::Generate(format!(
            "the cluster secret must be at least {MIN_SECRET_BYTES} bytes"
        )));
    }
    let digest = |label: &str| {
        let mut h = Sha256::new();
        for part in ["flotilla-cluster-ca-v1", label, cluster_id, secret] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.finalize()
    };
    let seed = digest("ed25519-seed");
    // RFC 8410 PKCS#8 v1 for an Ed25519 private key: a fixed prefix, then the 32-byte seed.
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pkcs8.extend_from_slice(&seed);
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8);
    let key = KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519).map_err(gen)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("flotilla-ca@{cluster_id}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // A positive 16-byte serial from the same inputs.
    let mut serial = digest("serial")[..16].to_vec();
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.not_before = time::macros::datetime!(2025-01-01 0:00 UTC);
    params.not_after = time::macros::datetime!(2125-01-01 0:00 UTC);
    let cert = params.self_signed(&key).map_err(gen)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issuer(ca: &CertKey) -> Result<Issuer<'static, KeyPair>> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(|e| IdentityError::Pem {
        what: "CA key",
        reason: e.to_string(),
    })?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(|e| IdentityError::Pem {
        what: "CA certificate",
        reason: e.to_string(),
    })
}

/// The pin a join token carries: `sha256:<hex>` of the CA certificate's DER.
pub fn ca_hash(ca_cert_pem: &str) -> Result<String> {
    let der = first_cert_der(ca_cert_pem, "CA certificate")?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(der.as_ref()))
    ))
}

fn first_cert_der(pem: &str, what: &'static str) -> Result<CertificateDer<'static>> {
    certs_der(pem, what)?
        .into_iter()
        .next()
        .ok_or(IdentityError::Pem {
            what,
            reason: "no CERTIFICATE block".into(),
        })
}

fn certs_der(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem {
            what,
            reason: e.to_string(),
        })
}

fn key_der(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| IdentityError::Pem {
        what,
        reason: e.to_string(),
    })
}

/// A serving certificate for a server: `SERVER_NAME` plus the given DNS names and IPs.
pub fn issue_server_cert(ca: &CertKey, names: &[String], days: i64) -> Result<CertKey> {
    let key = KeyPair::generate().map_err(gen)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, SERVER_NAME);
    params.distinguished_name = dn;
    let mut sans = vec![SanType::DnsName(SERVER_NAME.try_into().map_err(gen)?)];
    for n in names {
        match n.parse::<std::net::IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) => sans.push(SanType::DnsName(n.clone().try_into().map_err(gen)?)),
        }
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Servers are also clients of each other (the Raft transport).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer(ca)?).map_err(gen)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A client certificate with the given common name (the admin CLI's, for instance).
pub fn issue_client_cert(ca: &CertKey, common_name: &str, days: i64) -> Result<CertKey> {
    let key = KeyPair::generate().map_err(gen)?;
    let params = client_params(common_name, days)?;
    let cert = params.signed_by(&key, &issuer(ca)?).map_err(gen)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn client_params(common_name: &str, days: i64) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, days);
    Ok(params)
}

/// A key pair and a CSR for it (the agent keeps the key; the CSR goes to a server).
pub fn new_csr(common_name: &str) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(gen)?;
    let params = client_params(common_name, 1)?;
    let csr = params.serialize_request(&key).map_err(gen)?;
    Ok((csr.pem().map_err(gen)?, key.serialize_pem()))
}

/// Signs the public key of `csr_pem` as a client certificate for `common_name`. Everything
/// else the CSR asks for (subject, names, usages) is ignored: the server decides.
pub fn sign_csr(ca: &CertKey, csr_pem: &str, common_name: &str, days: i64) -> Result<String> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| IdentityError::Csr(e.to_string()))?;
    let params = client_params(common_name, days)?;
    let cert = params
        .signed_by(&csr.public_key, &issuer(ca)?)
        .map_err(gen)?;
    Ok(cert.pem())
}

/// The subject common name of a DER certificate (a peer's identity).
pub fn common_name(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// A join token: the CA pin, a public id and a secret (kubeadm's `[a-z0-9]{6}.[a-z0-9]{16}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: String,
    pub id: String,
    pub secret: String,
}

impl JoinToken {
    pub fn generate(ca_hash: &str) -> JoinToken {
        JoinToken {
            ca_hash: ca_hash.to_string(),
            id: random_lower_alnum(6),
            secret: random_lower_alnum(16),
        }
    }

    pub fn parse(s: &str) -> Result<JoinToken> {
        let bad = || IdentityError::Token("wrong shape".into());
        let mut parts = s.trim().split("::");
        let (Some(prefix), Some(hash), Some(cred), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if prefix != TOKEN_PREFIX {
            return Err(IdentityError::Token(format!("unknown prefix {prefix:?}")));
        }
        let hex_part = hash
            .strip_prefix("sha256:")
            .ok_or_else(|| IdentityError::Token("the CA hash is not sha256:".into()))?;
        if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IdentityError::Token(
                "the CA hash is not 64 hex digits".into(),
            ));
        }
        let (id, secret) = cred.split_once('.').ok_or_else(bad)?;
        let ok = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        };
        if !ok(id, 6) || !ok(secret, 16) {
            return Err(IdentityError::Token(
                "the credential is not <6 of [a-z0-9]>.<16 of [a-z0-9]>".into(),
            ));
        }
        Ok(JoinToken {
            ca_hash: hash.to_ascii_lowercase(),
            id: id.into(),
            secret: secret.into(),
        })
    }

    /// What the store keeps instead of the secret.
    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}::{}::{}.{}",
            self.ca_hash, self.id, self.secret
        )
    }
}

pub fn hash_secret(secret: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

/// Compares two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn random_lower_alnum(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_der(ca_pem, "CA certificate")? {
        roots
            .add(c)
            .map_err(|e| IdentityError::Tls(format!("CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Server side: our certificate; client certificates from the CA are verified when presented
/// and, if `require_client_cert`, demanded.
pub fn server_tls_config(
    ca_pem: &str,
    server: &CertKey,
    require_client_cert: bool,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| IdentityError::Tls(e.to_string()))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca_pem)?),
        provider(),
    );
    let verifier = if require_client_cert {
        verifier
    } else {
        verifier.allow_unauthenticated()
    }
    .build()
    .map_err(|e| IdentityError::Tls(e.to_string()))?;
    let mut cfg = builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs_der(&server.cert_pem, "server certificate")?,
            key_der(&server.key_pem, "server key")?,
        )
        .map_err(|e| IdentityError::Tls(e.to_string()))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Client side: trust only the cluster CA; present `client` if given.
pub fn client_tls_config(
    ca_pem: &str,
    client: Option<&CertKey>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca_pem)?);
    let mut cfg = match client {
        Some(c) => builder
            .with_client_auth_cert(
                certs_der(&c.cert_pem, "client certificate")?,
                key_der(&c.key_pem, "client key")?,
            )
            .map_err(|e| IdentityError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Discovery only: a client that accepts any server certificate, used to fetch the CA
/// certificate before the agent trusts anything. The caller must check what it fetched against
/// the token's pin (`ca_hash`) and reconnect with [`client_tls_config`]; nothing secret is sent
/// on a discovery connection.
pub fn discovery_tls_config(alpn: &[&[u8]]) -> Result<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider())))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_malformed_ones_are_named() {
        let ca = derive_ca("t", "0123456789abcdef-t").unwrap();
        let hash = ca_hash(&ca.cert_pem).unwrap();
        let t = JoinToken::generate(&hash);
        assert_eq!(JoinToken::parse(&t.to_string()).unwrap(), t);
        for bad in [
            "",
            "abc",
            "FLT2::sha256:00::abcdef.0123456789abcdef",
            &format!("FLT1::{hash}::ABCDEF.0123456789abcdef"),
            &format!("FLT1::{hash}::abcdef.short"),
            "FLT1::md5:00::abcdef.0123456789abcdef",
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(constant_time_eq(&t.secret_hash(), &hash_secret(&t.secret)));
        assert!(!constant_time_eq(&t.secret_hash(), &hash_secret("x")));
    }

    #[test]
    fn derived_ca_is_the_same_everywhere_and_usable() {
        let a = derive_ca("c1", "0123456789abcdef-secret").unwrap();
        let b = derive_ca("c1", "0123456789abcdef-secret").unwrap();
        assert_eq!(a, b, "every server must derive the same CA");
        assert_ne!(
            derive_ca("c1", "0123456789abcdef-other").unwrap().cert_pem,
            a.cert_pem
        );
        assert_ne!(
            derive_ca("c2", "0123456789abcdef-secret").unwrap().cert_pem,
            a.cert_pem
        );
        assert!(derive_ca("c1", "short").is_err());
        // It issues certificates that rustls accepts on both sides.
        let server = issue_server_cert(&a, &["127.0.0.1".into()], 1).unwrap();
        let client = issue_client_cert(&a, ADMIN_CN, 1).unwrap();
        server_tls_config(&a.cert_pem, &server, true, &[]).unwrap();
        client_tls_config(&a.cert_pem, Some(&client), &[]).unwrap();
    }

    #[test]
    fn csr_is_signed_with_the_name_the_server_chooses() {
        let ca = derive_ca("t", "0123456789abcdef-t").unwrap();
        let (csr, _key) = new_csr("system:node:evil").unwrap();
        let cert = sign_csr(&ca, &csr, "system:node:n1", 30).unwrap();
        let der = first_cert_der(&cert, "c").unwrap();
        assert_eq!(common_name(der.as_ref()).unwrap(), "system:node:n1");
        assert!(sign_csr(&ca, "garbage", "x", 1).is_err());
        // Configs build from what was issued.
        let server = issue_server_cert(&ca, &["127.0.0.1".into()], 30).unwrap();
        server_tls_config(&ca.cert_pem, &server, true, &[b"x"]).unwrap();
        let admin = issue_client_cert(&ca, ADMIN_CN, 30).unwrap();
        client_tls_config(&ca.cert_pem, Some(&admin), &[b"x"]).unwrap();
        discovery_tls_config(&[b"x"]).unwrap();
    }
}
