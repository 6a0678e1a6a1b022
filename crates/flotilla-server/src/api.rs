//! The object API. Any server answers: writes are checked here, then proposed on the leader
//! (forwarded when this server is not it); reads are linearizable through the leader unless the
//! caller asks for a stale local read; watches are served from local state.

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::pb::api::object_service_client::ObjectServiceClient;
use flotilla_api::pb::api::object_service_server::ObjectService;
use flotilla_api::pb::api::{
    write::Op, write_result, BatchRequest, BatchResponse, CreateRequest, DeleteRequest, GetRequest,
    ListRequest, ListResponse, Object, ObjectKey, ObjectResponse, UpdateRequest, WatchEvent,
    WatchRequest, Write,
};
use flotilla_api::pb::raft::CommandResult;
use flotilla_api::selector::Selector;
use flotilla_api::{validation, ApiError, ErrorCode};
use openraft::errors::{LinearizableReadError, RaftError};
use openraft::ReadPolicy;
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::proposer::{check_distinct_keys, Proposer};
use crate::FORWARDED_HEADER;

pub struct ObjectApi {
    node: Arc<Node>,
    proposer: Proposer,
}

/// Where a request that needs the leader goes.
enum Route {
    Local,
    Forward(u64, String),
}

/// Attempts when leadership moves under a request; each waits for the next leader.
const ROUTE_ATTEMPTS: usize = 3;

fn forwarded<T>(r: &Request<T>) -> bool {
    r.metadata().contains_key(FORWARDED_HEADER)
}

fn mark_forwarded<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    r.set_timeout(timeout);
    r
}

/// No leader to send a request to: NOT_LEADER with no address, so a client knows nothing was
/// proposed (an UNAVAILABLE write may or may not have been applied).
pub fn no_leader(leader_wait_ms: u64) -> ApiError {
    let mut e = ApiError::not_leader(None, None);
    e.message = format!(
        "no leader elected within {leader_wait_ms} ms (leader_wait_ms); the cluster may have lost its quorum; nothing was written"
    );
    e
}

impl ObjectApi {
    pub fn new(node: Arc<Node>, proposer: Proposer) -> Self {
        ObjectApi { node, proposer }
    }

    async fn route(&self, forwarded: bool) -> Result<Route, ApiError> {
        match self.node.wait_leader().await {
            Some((id, _)) if id == self.node.id => Ok(Route::Local),
            Some((id, addr)) if forwarded || addr.is_empty() => {
                Err(ApiError::not_leader(Some(id), Some(addr)))
            }
            Some((id, addr)) => Ok(Route::Forward(id, addr)),
            None => Err(no_leader(self.node.limits.leader_wait_ms)),
        }
    }

    fn client(
        &self,
        addr: &str,
    ) -> Result<ObjectServiceClient<tonic::transport::Channel>, ApiError> {
        Ok(ObjectServiceClient::new(self.node.channel(addr)?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(self.node.limits.max_request_bytes))
    }

    /// Check a write before it is proposed, and strip what the server owns.
    fn prepare(&self, index: Option<usize>, w: &mut Write) -> Result<(), ApiError> {
        let at = |field: &str| match index {
            Some(i) => format!("writes[{i}].{field}"),
            None => field.to_string(),
        };
        let relabel = |e: ApiError, prefix: &str| {
            if index.is_none() {
                return e;
            }
            let field = at(&format!("{prefix}.{}", e.field));
            let msg = e
                .message
                .strip_prefix(&format!("{}: ", e.field))
                .unwrap_or(&e.message)
                .to_string();
            let mut n = ApiError::invalid(field, msg);
            n.code = e.code;
            n
        };
        match w.op.as_mut() {
            Some(Op::Create(o)) => {
                flotilla_api::kinds::apply_defaults(o);
                validation::validate_object(o).map_err(|e| relabel(e, "create"))?;
                let m = o.meta_mut();
                m.uid = uuid::Uuid::new_v4().to_string();
                m.resource_version = 0;
                m.generation = 0;
                m.creation_timestamp_ms = 0;
                m.deletion_timestamp_ms = None;
                self.check_size(o)
            }
            Some(Op::UpdateStatus(o)) => {
                validation::validate_object(o).map_err(|e| relabel(e, "updateStatus"))?;
                self.check_size(o)
            }
            Some(Op::Update(o)) => {
                flotilla_api::kinds::apply_defaults(o);
                validation::validate_object(o).map_err(|e| relabel(e, "update"))?;
                self.check_size(o)
            }
            Some(Op::Delete(d)) => match &d.key {
                Some(k) if !k.kind.is_empty() && !k.name.is_empty() => Ok(()),
                _ => Err(ApiError::invalid(
                    at("delete.key"),
                    "kind and name must be set",
                )),
            },
            Some(Op::Bind(b)) => {
                if b.name.is_empty() || b.node_name.is_empty() {
                    return Err(ApiError::invalid(
                        at("bind"),
                        "name and nodeName must be set",
                    ));
                }
                if b.namespace.is_empty() {
                    b.namespace = "default".into();
                }
                Ok(())
            }
            None => Err(ApiError::invalid(
                at("op"),
                "a write must be a create, update, delete or bind",
            )),
        }
    }

    fn check_size(&self, o: &Object) -> Result<(), ApiError> {
        let size = o.encoded_len();
        let limit = self.node.limits.max_object_bytes;
        if size > limit {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "object {} is {size} bytes, over the limit of {limit} bytes (max_object_bytes)",
                    o.key()
                ),
            ));
        }
        Ok(())
    }

    /// A read-index round on this server, which believes it leads; afterwards local state
    /// reflects every write acknowledged before the read began.
    async fn linearize_local(&self) -> Result<(), ApiError> {
        match self
            .node
            .raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
        {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                let addr = f.leader_node.as_ref().map(|n| n.api_address.clone());
                Err(ApiError::not_leader(f.leader_id, addr))
            }
            Err(e) => Err(ApiError::unavailable(format!(
                "cannot confirm leadership for a linearizable read: {e}"
            ))),
        }
    }

    /// Run a request on the leader: `local` when this server leads, else `remote` against the
    /// leader's API. Leadership moving is retried (bounded) where that cannot apply a write
    /// twice: the leader refused before proposing (NOT_LEADER), the connection to it could not
    /// be made, or the request is `idempotent`.
    async fn on_leader<T, L, LF, R, RF>(
        &self,
        was_forwarded: bool,
        idempotent: bool,
        local: L,
        remote: R,
    ) -> Result<T, ApiError>
    where
        L: Fn() -> LF,
        LF: std::future::Future<Output = Result<T, ApiError>>,
        R: Fn(ObjectServiceClient<tonic::transport::Channel>) -> RF,
        RF: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let mut last = None;
        for attempt in 0..ROUTE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
            }
            match self.route(was_forwarded).await? {
                Route::Local => match local().await {
                    Err(e) if e.code() == ErrorCode::NotLeader && !was_forwarded => last = Some(e),
                    other => return other,
                },
                Route::Forward(id, addr) => match remote(self.client(&addr)?).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(s) => {
                        let e = ApiError::from_status(&s);
                        let unreachable = e.code() == ErrorCode::Unavailable;
                        if unreachable && (idempotent || flotilla_api::error::is_connect_error(&s))
                        {
                            let mut nl = ApiError::not_leader(Some(id), Some(addr.clone()));
                            nl.message =
                                format!("{}; forwarding to it failed: {}", nl.message, e.message);
                            last = Some(nl);
                            self.node.wait_leader_change(id).await;
                        } else if e.code() == ErrorCode::NotLeader {
                            last = Some(e);
                        } else {
                            return Err(e);
                        }
                    }
                },
            }
        }
        Err(last.unwrap_or_else(|| ApiError::unavailable("no leader")))
    }

    /// Propose through the coalescing queue. A refusal for want of leadership (nothing was
    /// proposed) is retried, bounded, once the next leader is known.
    async fn propose(
        &self,
        mut writes: Vec<Write>,
        was_forwarded: bool,
    ) -> Result<(CommandResult, u64), ApiError> {
        if crate::planted::active("skip-fencing") {
            for w in &mut writes {
                w.fence = None;
            }
        }
        let mut last = None;
        for attempt in 0..ROUTE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
            }
            match self.proposer.submit(writes.clone(), was_forwarded).await {
                Err(e) if e.code() == ErrorCode::NotLeader && !was_forwarded => last = Some(e),
                Err(e) => return Err(e),
                Ok((results, revision)) => {
                    // Counted where the request entered, so each refusal counts once.
                    if !was_forwarded {
                        let fenced = results
                            .iter()
                            .filter(|r| {
                                matches!(&r.result, Some(write_result::Result::Error(e))
                                    if e.code == ErrorCode::Fenced as i32)
                            })
                            .count();
                        if fenced > 0 {
                            self.node.metrics.fenced_writes.inc_by(fenced as u64);
                        }
                    }
                    return Ok((CommandResult { results }, revision));
                }
            }
        }
        Err(last.unwrap_or_else(|| ApiError::unavailable("no leader")))
    }

    async fn single(
        &self,
        mut w: Write,
        was_forwarded: bool,
    ) -> Result<Response<ObjectResponse>, Status> {
        self.prepare(None, &mut w)?;
        let (res, revision) = self.propose(vec![w], was_forwarded).await?;
        match res.results.into_iter().next().and_then(|r| r.result) {
            Some(write_result::Result::Object(o)) => Ok(Response::new(ObjectResponse {
                object: Some(o),
                revision,
            })),
            Some(write_result::Result::Error(e)) => Err(e.to_status()),
            None => Err(ApiError::internal("the state machine returned no result").to_status()),
        }
    }

    fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.node.limits.write_timeout_ms)
    }

    fn get_local(&self, key: &ObjectKey) -> Result<ObjectResponse, ApiError> {
        let (obj, revision) = self.node.reader.get(key).map_err(ApiError::internal)?;
        match obj {
            Some(o) => Ok(ObjectResponse {
                object: Some(o),
                revision,
            }),
            None => Err(ApiError::not_found(key)),
        }
    }

    fn list_local(
        &self,
        req: &ListRequest,
        selector: &Selector,
        after: Option<&str>,
    ) -> Result<ListResponse, ApiError> {
        let cap = self.node.limits.max_list_page;
        let limit = if req.limit == 0 {
            cap
        } else {
            (req.limit as usize).min(cap)
        };
        let page = self
            .node
            .reader
            .list(&req.kind, &req.namespace, selector, limit, after)
            .map_err(ApiError::internal)?;
        Ok(ListResponse {
            items: page.items,
            revision: page.revision,
            continue_token: page.next_key.map(hex::encode).unwrap_or_default(),
        })
    }
}

fn required_object(o: Option<Object>) -> Result<Object, ApiError> {
    o.ok_or_else(|| ApiError::invalid("object", "must be set"))
}

fn write(op: Op) -> Write {
    Write {
        op: Some(op),
        fence: None,
    }
}

#[tonic::async_trait]
impl ObjectService for ObjectApi {
    async fn create(
        &self,
        request: Request<CreateRequest>,
    ) -> Result<Response<ObjectResponse>, Status> {
        let f = forwarded(&request);
        let obj = required_object(request.into_inner().object)?;
        self.single(write(Op::Create(obj)), f).await
    }

    async fn update(
        &self,
        request: Request<UpdateRequest>,
    ) -> Result<Response<ObjectResponse>, Status> {
        let f = forwarded(&request);
        let obj = required_object(request.into_inner().object)?;
        self.single(write(Op::Update(obj)), f).await
    }

    async fn update_status(
        &self,
        request: Request<UpdateRequest>,
    ) -> Result<Response<ObjectResponse>, Status> {
        let f = forwarded(&request);
        let obj = required_object(request.into_inner().object)?;
        self.single(write(Op::UpdateStatus(obj)), f).await
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<ObjectResponse>, Status> {
        let f = forwarded(&request);
        self.single(write(Op::Delete(request.into_inner())), f)
            .await
    }

    async fn batch(
        &self,
        request: Request<BatchRequest>,
    ) -> Result<Response<BatchResponse>, Status> {
        let f = forwarded(&request);
        let mut writes = request.into_inner().writes;
        let limit = self.node.limits.max_batch_writes;
        // A forwarded batch may be several requests coalesced by the server that received
        // them, which checked each of them.
        if !f && writes.len() > limit {
            return Err(ApiError::invalid(
                "writes",
                format!(
                    "a batch holds at most {limit} writes (max_batch_writes), got {}",
                    writes.len()
                ),
            )
            .into());
        }
        if writes.is_empty() {
            return Err(ApiError::invalid("writes", "a batch needs at least one write").into());
        }
        // A forwarded batch was prepared by the server that received it.
        if !f {
            for (i, w) in writes.iter_mut().enumerate() {
                self.prepare(Some(i), w)?;
            }
        }
        check_distinct_keys(&writes)?;
        let (res, revision) = self.propose(writes, f).await?;
        Ok(Response::new(BatchResponse {
            results: res.results,
            revision,
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<ObjectResponse>, Status> {
        let f = forwarded(&request);
        let req = request.into_inner();
        let key = req
            .key
            .clone()
            .ok_or_else(|| ApiError::invalid("key", "must be set"))?;
        if key.kind.is_empty() || key.name.is_empty() {
            return Err(ApiError::invalid("key", "kind and name must be set").into());
        }
        if req.stale || crate::planted::active("stale-read") {
            return Ok(Response::new(self.get_local(&key)?));
        }
        let timeout = self.read_timeout();
        let r = self
            .on_leader(
                f,
                true,
                || async {
                    self.linearize_local().await?;
                    self.get_local(&key)
                },
                |mut c| {
                    let r = mark_forwarded(req.clone(), timeout);
                    async move { c.get(r).await }
                },
            )
            .await?;
        Ok(Response::new(r))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let f = forwarded(&request);
        let req = request.into_inner();
        if req.kind.is_empty() {
            return Err(ApiError::invalid("kind", "must be set").into());
        }
        let selector = Selector::parse(&req.label_selector)?.with_fields(&req.field_selector)?;
        let after = if req.continue_token.is_empty() {
            None
        } else {
            let key = hex::decode(&req.continue_token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::invalid("continue_token", "not a token this server issued")
                })?;
            Some(key)
        };
        if req.stale || crate::planted::active("stale-read") {
            return Ok(Response::new(self.list_local(
                &req,
                &selector,
                after.as_deref(),
            )?));
        }
        let timeout = self.read_timeout();
        let r = self
            .on_leader(
                f,
                true,
                || async {
                    self.linearize_local().await?;
                    self.list_local(&req, &selector, after.as_deref())
                },
                |mut c| {
                    let r = mark_forwarded(req.clone(), timeout);
                    async move { c.list(r).await }
                },
            )
            .await?;
        Ok(Response::new(r))
    }

    type WatchStream = ReceiverStream<Result<WatchEvent, Status>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream = crate::watch::start(self.node.clone(), request.into_inner())?;
        Ok(Response::new(stream))
    }
}
