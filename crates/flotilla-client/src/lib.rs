//! flotilla-client owns talking to a cluster from outside: connecting to any of several
//! servers (moving on when one is down, or to the leader a server names), paging through lists,
//! and kubectl's `apply` semantics (create, or update only what changed).
//!
//! It must never retry a write whose outcome is unknown (the request reached a server and the
//! connection then failed): that is reported to the caller as is.

use std::time::Duration;

use flotilla_api::pb::admin::cluster_service_client::ClusterServiceClient;
use flotilla_api::pb::admin::{
    AddLearnerRequest, ClusterStatus, MembershipResponse, PromoteRequest, RemoveRequest,
    SnapshotRequest, StatusRequest,
};
use flotilla_api::pb::api::object_service_client::ObjectServiceClient;
use flotilla_api::pb::api::{
    BatchRequest, BatchResponse, CreateRequest, DeleteRequest, GetRequest, ListRequest, Object,
    ObjectKey, UpdateRequest, WatchEvent, WatchRequest, Write,
};
use flotilla_api::{ApiError, ErrorCode};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub mod configfile;

/// Credentials for the servers' mutual TLS: the cluster CA and a client certificate, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsFiles { .. }")
    }
}

/// The name every server certificate carries, whatever address it is dialled at.
pub const SERVER_NAME: &str = "flotilla-server";

/// The connection settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub servers: Vec<String>,
    /// Required: servers accept mutual TLS only.
    pub tls: Option<TlsFiles>,
    pub connect_timeout: Duration,
    /// Per request; watches are not bounded by it.
    pub request_timeout: Duration,
    pub max_message_bytes: usize,
}

impl ClientConfig {
    pub fn new(servers: Vec<String>) -> Self {
        ClientConfig {
            servers,
            tls: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            max_message_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What `apply` did, as kubectl reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

impl std::fmt::Display for ApplyOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Configured => "configured",
            ApplyOutcome::Unchanged => "unchanged",
        })
    }
}

/// tonic's client TLS from PEM credentials, checking the server's name as `SERVER_NAME`.
pub fn client_tls(tls: &TlsFiles) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .domain_name(SERVER_NAME)
}

/// Attempts `apply` makes when another writer changes the object in between.
const APPLY_CONFLICT_RETRIES: usize = 5;

/// Per-call settings handed to each attempt.
#[derive(Clone, Copy)]
struct Opts {
    timeout: Duration,
    max_message_bytes: usize,
}

impl Opts {
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }

    fn objects(&self, ch: Channel) -> ObjectServiceClient<Channel> {
        ObjectServiceClient::new(ch)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
    }

    fn cluster(&self, ch: Channel) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::new(ch)
    }
}

pub struct Client {
    config: ClientConfig,
    /// Index into `config.servers` of the connected server.
    current: usize,
    channel: Option<Channel>,
}

impl Client {
    /// Connect to the first reachable server of the list.
    pub async fn connect(config: ClientConfig) -> Result<Client, ApiError> {
        if config.servers.is_empty() {
            return Err(ApiError::invalid(
                "server",
                "no server address given (use --server or FLOTILLA_SERVER)",
            ));
        }
        if config.tls.is_none() {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "no client certificate: Flotilla servers accept mutual TLS only; use \
                 --config <data-dir>/admin.conf (written by the server that bootstrapped the \
                 cluster) or a config file with the cluster's credentials",
            ));
        }
        let mut c = Client {
            config,
            current: 0,
            channel: None,
        };
        c.ensure_connected().await?;
        Ok(c)
    }

    /// The address of the server in use.
    pub fn server(&self) -> &str {
        &self.config.servers[self.current]
    }

    async fn connect_to(&self, addr: &str) -> Result<Channel, ApiError> {
        let host = addr
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let tls =
            self.config.tls.as_ref().ok_or_else(|| {
                ApiError::new(ErrorCode::Unauthenticated, "no client certificate")
            })?;
        Endpoint::from_shared(format!("https://{host}"))
            .map_err(|e| {
                ApiError::invalid("server", format!("{addr:?} is not a valid address: {e}"))
            })?
            .tls_config(client_tls(tls))
            .map_err(|e| ApiError::invalid("tls", format!("client TLS settings: {e}")))?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| ApiError::unavailable(format!("cannot connect to {addr}: {e}")))
    }

    /// Connect to the current server or, failing that, each of the others in turn.
    async fn ensure_connected(&mut self) -> Result<Channel, ApiError> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let n = self.config.servers.len();
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (self.current + i) % n;
            let addr = self.config.servers[idx].clone();
            match self.connect_to(&addr).await {
                Ok(ch) => {
                    self.current = idx;
                    self.channel = Some(ch.clone());
                    return Ok(ch);
                }
                Err(e) => errors.push(e.message),
            }
        }
        Err(ApiError::unavailable(format!(
            "no server reachable: {}",
            errors.join("; ")
        )))
    }

    /// Drop the connection; the next call connects to the next server.
    fn rotate(&mut self) {
        self.channel = None;
        self.current = (self.current + 1) % self.config.servers.len();
    }

    fn use_leader(&mut self, e: &ApiError) -> bool {
        if e.code() != ErrorCode::NotLeader || e.leader_address.is_empty() {
            return false;
        }
        let addr = e.leader_address.clone();
        let idx = match self.config.servers.iter().position(|s| *s == addr) {
            Some(i) => i,
            None => {
                self.config.servers.push(addr);
                self.config.servers.len() - 1
            }
        };
        if idx == self.current {
            return false;
        }
        self.current = idx;
        self.channel = None;
        true
    }

    /// Run a call. `idempotent` calls (reads) move to another server after any transport
    /// failure; writes only when the connection could not be made at all, or when a server
    /// names the leader (it refused before proposing).
    async fn call<T, F, Fut>(&mut self, idempotent: bool, mut f: F) -> Result<T, ApiError>
    where
        F: FnMut(Channel, Opts) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let attempts = self.config.servers.len() + 2;
        let mut last = None;
        for _ in 0..attempts {
            let ch = self.ensure_connected().await?;
            let opts = Opts {
                timeout: self.config.request_timeout,
                max_message_bytes: self.config.max_message_bytes,
            };
            match f(ch, opts).await {
                Ok(v) => return Ok(v),
                Err(s) => {
                    let e = ApiError::from_status(&s);
                    if self.use_leader(&e) {
                        last = Some(e);
                        continue;
                    }
                    // NOT_LEADER without an address: that server knows no leader and proposed
                    // nothing, so another server may be asked, writes too.
                    if (idempotent && e.code() == ErrorCode::Unavailable)
                        || flotilla_api::error::is_connect_error(&s)
                        || (e.code() == ErrorCode::NotLeader && e.leader_address.is_empty())
                    {
                        self.rotate();
                        last = Some(e);
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ApiError::unavailable("no server answered")))
    }

    /// Record an Event against `involved`, as Kubernetes components do: a repeat of the same
    /// type, reason and message for the same object bumps `count` and `lastTimestamp` of one
    /// Event instead of adding another. `event_type` is `Normal` or `Warning`.
    pub async fn record_event(
        &mut self,
        involved: &Object,
        event_type: &str,
        reason: &str,
        message: &str,
        component: &str,
    ) -> Result<Object, ApiError> {
        use flotilla_api::events;
        let now = flotilla_api::manifest::format_timestamp_ms(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        );
        let by = events::Reporter {
            component,
            host: "",
        };
        let first = events::new_event(
            events::reference(involved),
            event_type,
            reason,
            message,
            &by,
            &now,
        );
        let key = first.key();
        let name = key.name.clone();
        for _ in 0..APPLY_CONFLICT_RETRIES {
            match self.get(key.clone(), false).await {
                Ok((ev, _)) => match self.update(events::repeat(ev, 1, &now)).await {
                    Err(e) if e.code() == ErrorCode::Conflict => continue,
                    other => return other,
                },
                Err(e) if e.code() == ErrorCode::NotFound => {
                    match self.create(first.clone()).await {
                        Err(e) if e.code() == ErrorCode::AlreadyExists => continue,
                        other => return other,
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::new(
            ErrorCode::Conflict,
            format!("event {name}: kept changing; not recorded"),
        ))
    }

    pub async fn create(&mut self, object: Object) -> Result<Object, ApiError> {
        let req = CreateRequest {
            object: Some(object),
        };
        let r = self
            .call(false, |ch, opts: Opts| {
                let r = opts.request(req.clone());
                let mut c = opts.objects(ch);
                async move { c.create(r).await }
            })
            .await?;
        r.into_inner()
            .object
            .ok_or_else(|| ApiError::internal("server returned no object"))
    }

    pub async fn update(&mut self, object: Object) -> Result<Object, ApiError> {
        self.put(object, false).await
    }

    /// The status subresource: only `object`'s status is written.
    pub async fn update_status(&mut self, object: Object) -> Result<Object, ApiError> {
        self.put(object, true).await
    }

    async fn put(&mut self, object: Object, status: bool) -> Result<Object, ApiError> {
        let req = UpdateRequest {
            object: Some(object),
        };
        let r = self
            .call(false, |ch, opts: Opts| {
                let r = opts.request(req.clone());
                let mut c = opts.objects(ch);
                async move {
                    if status {
                        c.update_status(r).await
                    } else {
                        c.update(r).await
                    }
                }
            })
            .await?;
        r.into_inner()
            .object
            .ok_or_else(|| ApiError::internal("server returned no object"))
    }

    pub async fn delete(&mut self, req: DeleteRequest) -> Result<Object, ApiError> {
        let r = self
            .call(false, |ch, opts: Opts| {
                let r = opts.request(req.clone());
                let mut c = opts.objects(ch);
                async move { c.delete(r).await }
            })
            .await?;
        r.into_inner()
            .object
            .ok_or_else(|| ApiError::internal("server returned no object"))
    }

    pub async fn batch(&mut self, writes: Vec<Write>) -> Result<BatchResponse, ApiError> {
        let req = BatchRequest { writes };
        let r = self
            .call(false, |ch, opts: Opts| {
                let r = opts.request(req.clone());
                let mut c = opts.objects(ch);
                async move { c.batch(r).await }
            })
            .await?;
        Ok(r.into_inner())
    }

    /// Get one object and the revision the answer reflects.
    pub async fn get(&mut self, key: ObjectKey, stale: bool) -> Result<(Object, u64), ApiError> {
        let req = GetRequest {
            key: Some(key),
            stale,
        };
        let r = self
            .call(true, |ch, opts: Opts| {
                let r = opts.request(req.clone());
                let mut c = opts.objects(ch);
                async move { c.get(r).await }
            })
            .await?
            .into_inner();
        Ok((
            r.object
                .ok_or_else(|| ApiError::internal("server returned no object"))?,
            r.revision,
        ))
    }

    /// Every matching object (following continue tokens) and the revision of the first page.
    pub async fn list(
        &mut self,
        kind: &str,
        namespace: &str,
        selector: &str,
        stale: bool,
    ) -> Result<(Vec<Object>, u64), ApiError> {
        self.list_fields(kind, namespace, selector, "", stale).await
    }

    /// [`Client::list`] with a field selector too (`spec.nodeName=n1`).
    pub async fn list_fields(
        &mut self,
        kind: &str,
        namespace: &str,
        selector: &str,
        fields: &str,
        stale: bool,
    ) -> Result<(Vec<Object>, u64), ApiError> {
        let mut items = Vec::new();
        let mut token = String::new();
        let mut revision = None;
        loop {
            let req = ListRequest {
                kind: kind.to_string(),
                namespace: namespace.to_string(),
                label_selector: selector.to_string(),
                limit: 500,
                continue_token: token.clone(),
                stale,
                field_selector: fields.to_string(),
            };
            let page = self
                .call(true, |ch, opts: Opts| {
                    let r = opts.request(req.clone());
                    let mut c = opts.objects(ch);
                    async move { c.list(r).await }
                })
                .await?
                .into_inner();
            revision.get_or_insert(page.revision);
            items.extend(page.items);
            if page.continue_token.is_empty() {
                return Ok((items, revision.unwrap_or(0)));
            }
            token = page.continue_token;
        }
    }

    /// Open a watch; events arrive on the returned stream until it ends or errors.
    pub async fn watch(
        &mut self,
        req: WatchRequest,
    ) -> Result<tonic::Streaming<WatchEvent>, ApiError> {
        let r = self
            .call(true, |ch, opts: Opts| {
                let r = tonic::Request::new(req.clone());
                let mut c = opts.objects(ch);
                async move { c.watch(r).await }
            })
            .await?;
        Ok(r.into_inner())
    }

    /// A container's log as chunks of text (kubectl logs); with `follow` it ends when the
    /// container does.
    pub async fn logs(
        &mut self,
        req: flotilla_api::pb::api::LogsRequest,
    ) -> Result<tonic::Streaming<flotilla_api::pb::api::OutputChunk>, ApiError> {
        let r = self
            .call(true, |ch, _opts: Opts| {
                let r = tonic::Request::new(req.clone());
                async move {
                    flotilla_api::pb::api::pod_service_client::PodServiceClient::new(ch)
                        .logs(r)
                        .await
                }
            })
            .await?;
        Ok(r.into_inner())
    }

    /// Runs a command in a container (kubectl exec, without stdin): its stdout and stderr,
    /// then a last chunk with the exit code. Not retried: the command may have run.
    pub async fn exec(
        &mut self,
        req: flotilla_api::pb::api::ExecRequest,
    ) -> Result<tonic::Streaming<flotilla_api::pb::api::OutputChunk>, ApiError> {
        let r = self
            .call(false, |ch, _opts: Opts| {
                let r = tonic::Request::new(req.clone());
                async move {
                    flotilla_api::pb::api::pod_service_client::PodServiceClient::new(ch)
                        .exec(r)
                        .await
                }
            })
            .await?;
        Ok(r.into_inner())
    }

    /// kubectl apply: create when absent, update when the user's fields differ, else nothing.
    pub async fn apply(&mut self, object: Object) -> Result<(ApplyOutcome, Object), ApiError> {
        for _ in 0..APPLY_CONFLICT_RETRIES {
            match self.get(object.key(), false).await {
                Err(e) if e.code() == ErrorCode::NotFound => {
                    match self.create(object.clone()).await {
                        Ok(o) => return Ok((ApplyOutcome::Created, o)),
                        Err(e) if e.code() == ErrorCode::AlreadyExists => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
                Ok((current, _)) => {
                    let (cm, om) = (current.meta(), object.meta());
                    // Status is the controllers' and never part of a manifest's intent.
                    if flotilla_api::kinds::without_status(&current.body)
                        == flotilla_api::kinds::without_status(&object.body)
                        && cm.labels == om.labels
                        && cm.annotations == om.annotations
                        && cm.finalizers == om.finalizers
                        && cm.owner_references == om.owner_references
                    {
                        return Ok((ApplyOutcome::Unchanged, current));
                    }
                    let mut next = object.clone();
                    next.meta_mut().resource_version = cm.resource_version;
                    match self.update(next).await {
                        Ok(o) => return Ok((ApplyOutcome::Configured, o)),
                        Err(e) if e.code() == ErrorCode::Conflict => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Err(ApiError::new(
            ErrorCode::Conflict,
            format!("{}: kept changing under apply; try again", object.key()),
        ))
    }

    pub async fn cluster_status(&mut self) -> Result<ClusterStatus, ApiError> {
        let r = self
            .call(true, |ch, opts: Opts| {
                let r = opts.request(StatusRequest {});
                let mut c = opts.cluster(ch);
                async move { c.status(r).await }
            })
            .await?;
        Ok(r.into_inner())
    }

    pub async fn add_learner(
        &mut self,
        req: AddLearnerRequest,
    ) -> Result<MembershipResponse, ApiError> {
        let r = self
            .call(false, |ch, opts: Opts| {
                let r = opts.request(req.clone());
                let mut c = opts.cluster(ch);
                async move { c.add_learner(r).await }
            })
            .await?;
        Ok(r.into_inner())
    }

    pub async fn promote(&mut self, id: u64) -> Result<MembershipResponse, ApiError> {
        let r = self
            .call(false, |ch, opts: Opts| {
                let r = opts.request(PromoteRequest { id });
                let mut c = opts.cluster(ch);
                async move { c.promote(r).await }
            })
            .await?;
        Ok(r.into_inner())
    }

    pub async fn remove(&mut self, id: u64) -> Result<MembershipResponse, ApiError> {
        let r = self
            .call(false, |ch, opts: Opts| {
                let r = opts.request(RemoveRequest { id });
                let mut c = opts.cluster(ch);
                async move { c.remove(r).await }
            })
            .await?;
        Ok(r.into_inner())
    }

    /// Snapshot on the connected server.
    pub async fn snapshot(&mut self) -> Result<u64, ApiError> {
        let r = self
            .call(false, |ch, opts: Opts| {
                let r = opts.request(SnapshotRequest {});
                let mut c = opts.cluster(ch);
                async move { c.snapshot(r).await }
            })
            .await?;
        Ok(r.into_inner().last_included_index)
    }
}
