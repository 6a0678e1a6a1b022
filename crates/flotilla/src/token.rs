//! `flotilla token create|list|revoke`: join tokens for agents, kept as Secrets in
//! `flotilla-system` that hold only a hash of the token's secret.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail};
use clap::Subcommand;
use flotilla_api::pb::api::object::Body;
use flotilla_api::pb::api::{Object, ObjectMeta, Secret};
use flotilla_identity::JoinToken;
use flotilla_server::identity::{
    ca_from_object, ca_key, token_key, SYSTEM_NAMESPACE, TOKEN_DESCRIPTION_KEY,
    TOKEN_EXPIRATION_KEY, TOKEN_HASH_KEY, TOKEN_ID_KEY, TOKEN_REVOKED_KEY, TOKEN_SECRET_PREFIX,
    TOKEN_SECRET_TYPE,
};

use crate::cli::Conn;

const TOKEN_LABEL: &str = "flotilla.io/join-token";
/// How long `token create` waits for a just-started cluster to create its CA.
const CA_WAIT_SECS: u64 = 30;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Print a new join token for `flotilla agent --token`.
    Create {
        /// Lifetime, e.g. 1h, 30m, 24h; 0 for a token that never expires.
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// The join tokens (their ids; the secrets are not stored).
    List,
    /// Refuse a token from now on.
    Revoke {
        /// The token's id (the six characters before the dot) or the whole token.
        token: String,
    },
}

pub async fn run(conn: &Conn, cmd: TokenCommand) -> anyhow::Result<()> {
    let mut c = conn.client().await?;
    match cmd {
        TokenCommand::Create { ttl, description } => {
            let ttl = if ttl == "0" {
                None
            } else {
                Some(humantime::parse_duration(&ttl).map_err(|e| anyhow!("--ttl {ttl:?}: {e}"))?)
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(CA_WAIT_SECS);
            let ca = loop {
                match c.get(ca_key(), false).await {
                    Ok((o, _)) => {
                        break ca_from_object(&o)
                            .ok_or_else(|| anyhow!("the cluster CA secret is malformed"))?
                    }
                    Err(e)
                        if e.code() == flotilla_api::ErrorCode::NotFound
                            && std::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(300)).await
                    }
                    Err(e) if e.code() == flotilla_api::ErrorCode::NotFound => {
                        bail!("the cluster has no CA yet (the leader creates it at bootstrap); try again")
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let hash = flotilla_identity::ca_hash(&ca.cert_pem)?;
            let token = JoinToken::generate(&hash);
            let expiration = ttl
                .map(|d| humantime::format_rfc3339_seconds(SystemTime::now() + d).to_string())
                .unwrap_or_default();
            let mut data = BTreeMap::new();
            for (k, v) in [
                (TOKEN_ID_KEY, token.id.clone()),
                (TOKEN_HASH_KEY, token.secret_hash()),
                (TOKEN_EXPIRATION_KEY, expiration),
                (TOKEN_REVOKED_KEY, "false".into()),
                (TOKEN_DESCRIPTION_KEY, description),
            ] {
                data.insert(k.to_string(), v.into_bytes());
            }
            let mut labels = BTreeMap::new();
            labels.insert(TOKEN_LABEL.to_string(), "true".to_string());
            c.create(Object {
                api_version: "v1".into(),
                kind: "Secret".into(),
                metadata: Some(ObjectMeta {
                    name: format!("{TOKEN_SECRET_PREFIX}{}", token.id),
                    namespace: SYSTEM_NAMESPACE.into(),
                    labels,
                    ..Default::default()
                }),
                body: Some(Body::Secret(Secret {
                    data,
                    r#type: TOKEN_SECRET_TYPE.into(),
                    ..Default::default()
                })),
            })
            .await?;
            println!("{token}");
        }
        TokenCommand::List => {
            let (items, _) = c
                .list(
                    "Secret",
                    SYSTEM_NAMESPACE,
                    &format!("{TOKEN_LABEL}=true"),
                    false,
                )
                .await?;
            let mut rows = Vec::new();
            let now = SystemTime::now();
            for o in &items {
                let Some(Body::Secret(s)) = &o.body else {
                    continue;
                };
                let get = |k: &str| {
                    s.data
                        .get(k)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                let exp = get(TOKEN_EXPIRATION_KEY);
                let at = humantime::parse_rfc3339_weak(&exp).ok();
                let ttl = match at {
                    None => "<forever>".to_string(),
                    Some(t) => match t.duration_since(now) {
                        Ok(d) => crate::output::age(0, d.as_millis() as i64),
                        Err(_) => "<expired>".to_string(),
                    },
                };
                let status = if get(TOKEN_REVOKED_KEY) == "true" {
                    "revoked"
                } else if at.is_some_and(|t| t <= now) {
                    "expired"
                } else {
                    "valid"
                };
                rows.push(vec![
                    get(TOKEN_ID_KEY),
                    ttl,
                    if exp.is_empty() {
                        "<never>".into()
                    } else {
                        exp
                    },
                    status.to_string(),
                    get(TOKEN_DESCRIPTION_KEY),
                ]);
            }
            if items.is_empty() {
                println!("No join tokens.");
            } else {
                print!(
                    "{}",
                    crate::output::simple_table(
                        &["TOKEN-ID", "TTL", "EXPIRES", "STATUS", "DESCRIPTION"],
                        rows
                    )
                );
            }
        }
        TokenCommand::Revoke { token } => {
            let id = match JoinToken::parse(&token) {
                Ok(t) => t.id,
                Err(_) => token.clone(),
            };
            for _ in 0..5 {
                let (mut o, _) = c.get(token_key(&id), false).await.map_err(|e| {
                    if e.code() == flotilla_api::ErrorCode::NotFound {
                        anyhow!("join token {id:?} does not exist")
                    } else {
                        e.into()
                    }
                })?;
                let Some(Body::Secret(s)) = &mut o.body else {
                    bail!("join token {id:?} is malformed");
                };
                s.data.insert(TOKEN_REVOKED_KEY.into(), b"true".to_vec());
                match c.update(o).await {
                    Ok(_) => {
                        println!("join token {id} revoked");
                        return Ok(());
                    }
                    Err(e) if e.code() == flotilla_api::ErrorCode::Conflict => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            bail!("join token {id:?} kept changing; try again");
        }
    }
    Ok(())
}
