//! Cluster identity on the servers. The leader creates the cluster CA once, as the Secret
//! `flotilla-system/cluster-ca`, together with the namespaces the node machinery uses; every
//! server then reads it from its own state. Join tokens are Secrets
//! `flotilla-system/join-token-<id>` that keep only a hash of the token's secret, as kubeadm
//! keeps bootstrap tokens in `kube-system`; a revoked token stays (marked) until it expires, so
//! a refusal can say "revoked" rather than "unknown".

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::pb::api::object::Body;
use flotilla_api::pb::api::object_service_server::ObjectService;
use flotilla_api::pb::api::{
    write::Op, BatchRequest, Namespace, Object, ObjectKey, ObjectMeta, Secret, Write,
};
use flotilla_identity::CertKey;
use tokio_util::task::TaskTracker;

use crate::api::ObjectApi;
use crate::node::Node;

pub const SYSTEM_NAMESPACE: &str = "flotilla-system";
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
pub const CA_SECRET: &str = "cluster-ca";
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const TOKEN_SECRET_PREFIX: &str = "join-token-";
pub const TOKEN_SECRET_TYPE: &str = "flotilla.io/join-token";
pub const TOKEN_ID_KEY: &str = "token-id";
pub const TOKEN_HASH_KEY: &str = "token-secret-sha256";
pub const TOKEN_EXPIRATION_KEY: &str = "expiration";
pub const TOKEN_REVOKED_KEY: &str = "revoked";
pub const TOKEN_DESCRIPTION_KEY: &str = "description";

const BOOTSTRAP_POLL_MS: u64 = 500;

pub fn ca_key() -> ObjectKey {
    ObjectKey {
        kind: "Secret".into(),
        namespace: SYSTEM_NAMESPACE.into(),
        name: CA_SECRET.into(),
    }
}

pub fn token_key(id: &str) -> ObjectKey {
    ObjectKey {
        kind: "Secret".into(),
        namespace: SYSTEM_NAMESPACE.into(),
        name: format!("{TOKEN_SECRET_PREFIX}{id}"),
    }
}

/// The CA certificate and key held in a `cluster-ca` Secret.
pub fn ca_from_object(o: &Object) -> Option<CertKey> {
    let Some(Body::Secret(s)) = &o.body else {
        return None;
    };
    let text = |k: &str| {
        s.data
            .get(k)
            .and_then(|v| String::from_utf8(v.to_vec()).ok())
    };
    Some(CertKey {
        cert_pem: text(CA_CERT_KEY)?,
        key_pem: text(CA_KEY_KEY)?,
    })
}

/// The CA from this server's own state, once the leader has created it.
pub fn load_ca(node: &Node) -> Option<CertKey> {
    let (obj, _) = node.reader.get(&ca_key()).ok()?;
    ca_from_object(obj.as_ref()?)
}

fn namespace(name: &str) -> Object {
    Object {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        body: Some(Body::Namespace(Namespace::default())),
    }
}

fn ca_secret(ca: &CertKey) -> Object {
    let mut data = std::collections::BTreeMap::new();
    data.insert(CA_CERT_KEY.to_string(), ca.cert_pem.clone().into_bytes());
    data.insert(CA_KEY_KEY.to_string(), ca.key_pem.clone().into_bytes());
    Object {
        api_version: "v1".into(),
        kind: "Secret".into(),
        metadata: Some(ObjectMeta {
            name: CA_SECRET.into(),
            namespace: SYSTEM_NAMESPACE.into(),
            ..Default::default()
        }),
        body: Some(Body::Secret(Secret {
            data,
            r#type: "flotilla.io/cluster-ca".into(),
            immutable: true,
            ..Default::default()
        })),
    }
}

/// Until the CA exists: the leader creates what is missing of the system namespaces and the CA.
pub fn start(node: Arc<Node>, api: Arc<ObjectApi>, tasks: &TaskTracker) {
    tasks.spawn(async move {
        loop {
            if load_ca(&node).is_some() {
                return;
            }
            if node.is_leader() {
                if let Err(e) = bootstrap(&node, &api).await {
                    tracing::warn!("creating the cluster CA: {e}");
                }
            }
            tokio::select! {
                _ = node.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(BOOTSTRAP_POLL_MS)) => {}
            }
        }
    });
}

async fn bootstrap(node: &Node, api: &ObjectApi) -> Result<(), String> {
    let exists = |k: ObjectKey| {
        node.reader
            .get(&k)
            .map(|(o, _)| o.is_some())
            .unwrap_or(false)
    };
    let mut writes = Vec::new();
    for ns in [SYSTEM_NAMESPACE, NODE_LEASE_NAMESPACE] {
        if !exists(ObjectKey {
            kind: "Namespace".into(),
            namespace: String::new(),
            name: ns.into(),
        }) {
            writes.push(Write {
                op: Some(Op::Create(namespace(ns))),
                fence: None,
            });
        }
    }
    // The CA every server derived from the cluster secret, kept in the store for the join flow.
    let ca = node.tls.ca.clone();
    writes.push(Write {
        op: Some(Op::Create(ca_secret(&ca))),
        fence: None,
    });
    let resp = api
        .batch(tonic::Request::new(BatchRequest { writes }))
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    // Another leader may have won the race: an AlreadyExists result is fine.
    for r in resp.results {
        if let Some(flotilla_api::pb::api::write_result::Result::Error(e)) = r.result {
            if e.code != flotilla_api::ErrorCode::AlreadyExists as i32 {
                return Err(e.message);
            }
        }
    }
    tracing::info!(
        "created the cluster CA ({})",
        flotilla_identity::ca_hash(&ca.cert_pem).unwrap_or_default()
    );
    Ok(())
}

/// Why a join token is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown(String),
    WrongSecret(String),
    Expired(String, String),
    Revoked(String),
}

impl std::fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenRefusal::Unknown(id) => write!(f, "join token {id:?} does not exist"),
            TokenRefusal::WrongSecret(id) => write!(f, "join token {id:?}: the secret is wrong"),
            TokenRefusal::Expired(id, at) => write!(f, "join token {id:?} expired at {at}"),
            TokenRefusal::Revoked(id) => write!(f, "join token {id:?} was revoked"),
        }
    }
}

/// Checks a presented token against its stored Secret at `now_ms` (pure: no clock, no I/O).
pub fn check_token(
    stored: Option<&Object>,
    id: &str,
    secret: &str,
    now_ms: i64,
) -> Result<(), TokenRefusal> {
    let Some(Body::Secret(s)) = stored.and_then(|o| o.body.as_ref()) else {
        return Err(TokenRefusal::Unknown(id.into()));
    };
    let get = |k: &str| {
        s.data
            .get(k)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    if s.r#type != TOKEN_SECRET_TYPE || get(TOKEN_ID_KEY) != id {
        return Err(TokenRefusal::Unknown(id.into()));
    }
    if !flotilla_identity::constant_time_eq(
        &get(TOKEN_HASH_KEY),
        &flotilla_identity::hash_secret(secret),
    ) {
        return Err(TokenRefusal::WrongSecret(id.into()));
    }
    if get(TOKEN_REVOKED_KEY) == "true" {
        return Err(TokenRefusal::Revoked(id.into()));
    }
    let exp = get(TOKEN_EXPIRATION_KEY);
    if !exp.is_empty() {
        let at = humantime::parse_rfc3339_weak(&exp)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        if now_ms >= at {
            return Err(TokenRefusal::Expired(id.into(), exp));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(hash: &str, exp: &str, revoked: bool) -> Object {
        let mut data = std::collections::BTreeMap::new();
        for (k, v) in [
            (TOKEN_ID_KEY, "abcdef"),
            (TOKEN_HASH_KEY, hash),
            (TOKEN_EXPIRATION_KEY, exp),
            (TOKEN_REVOKED_KEY, if revoked { "true" } else { "false" }),
        ] {
            data.insert(k.to_string(), v.as_bytes().to_vec());
        }
        Object {
            kind: "Secret".into(),
            body: Some(Body::Secret(Secret {
                data,
                r#type: TOKEN_SECRET_TYPE.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn token_refusals_say_why() {
        let h = flotilla_identity::hash_secret("0123456789abcdef");
        // 2023-11-14T22:13:20Z is 1_700_000_000_000 ms.
        let now = 1_700_000_000_000;
        let ok = token(&h, "2023-11-14T23:00:00Z", false);
        assert_eq!(
            check_token(Some(&ok), "abcdef", "0123456789abcdef", now),
            Ok(())
        );
        assert_eq!(
            check_token(
                Some(&token(&h, "", false)),
                "abcdef",
                "0123456789abcdef",
                now
            ),
            Ok(())
        );
        assert!(matches!(
            check_token(None, "abcdef", "x", now),
            Err(TokenRefusal::Unknown(_))
        ));
        assert!(matches!(
            check_token(Some(&ok), "abcdef", "wrongwrongwrong0", now),
            Err(TokenRefusal::WrongSecret(_))
        ));
        assert!(matches!(
            check_token(
                Some(&token(&h, "2023-11-14T22:00:00Z", false)),
                "abcdef",
                "0123456789abcdef",
                now
            ),
            Err(TokenRefusal::Expired(..))
        ));
        assert!(matches!(
            check_token(
                Some(&token(&h, "", true)),
                "abcdef",
                "0123456789abcdef",
                now
            ),
            Err(TokenRefusal::Revoked(_))
        ));
    }
}
