//! The cluster admin API: status of every member, membership changes (forwarded to the
//! leader), and snapshots on demand.

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::pb::admin::cluster_service_client::ClusterServiceClient;
use flotilla_api::pb::admin::cluster_service_server::ClusterService;
use flotilla_api::pb::admin::{
    AddLearnerRequest, ClusterStatus, LocalStatusRequest, MemberStatus, MembershipResponse,
    PromoteRequest, RemoveRequest, Role, SetFailpointRequest, SetFailpointResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest,
};
use flotilla_api::pb::raft::RaftNode;
use flotilla_api::{ApiError, ErrorCode};
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::FORWARDED_HEADER;

/// How long the leader waits for each member's own status.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_millis(700);
/// Bound on a membership change (a learner catching up included).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ClusterApi {
    node: Arc<Node>,
}

fn role(state: ServerState) -> Role {
    match state {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Learner => Role::Learner,
        ServerState::Candidate => Role::Candidate,
        ServerState::Shutdown => Role::Unreachable,
    }
}

impl ClusterApi {
    pub fn new(node: Arc<Node>) -> Self {
        ClusterApi { node }
    }

    fn local_status(&self) -> MemberStatus {
        let m = self.node.raft.metrics().borrow_watched().clone();
        let me = self
            .node
            .members()
            .get(&self.node.id)
            .cloned()
            .unwrap_or_default();
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.node.id);
        MemberStatus {
            id: self.node.id,
            api_address: me.api_address,
            raft_address: me.raft_address,
            role: role(m.state) as i32,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            lag: 0,
            voter,
            matched_index: m.last_log_index.unwrap_or(0),
        }
    }

    fn client(
        &self,
        addr: &str,
    ) -> Result<ClusterServiceClient<tonic::transport::Channel>, ApiError> {
        Ok(ClusterServiceClient::new(self.node.channel(addr)?))
    }

    /// Status as the leader sees it: membership, replication progress, and each member's own
    /// term and applied index (asked with a short timeout; silent members show UNREACHABLE).
    async fn leader_status(&self) -> ClusterStatus {
        let m = self.node.raft.metrics().borrow_watched().clone();
        let leader_last = m.last_log_index.unwrap_or(0);
        let replication = m.replication.clone().unwrap_or_default();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let membership_committed = membership.get_joint_config().len() == 1
            && m.membership_config.log_id().as_ref().map(|l| l.index)
                <= m.last_applied.as_ref().map(|l| l.index);
        let mut members = Vec::new();
        let mut asks = Vec::new();
        for (id, n) in membership.nodes() {
            let (id, n) = (*id, n.clone());
            if id == self.node.id {
                members.push(self.local_status());
                continue;
            }
            let client = self.client(&n.api_address);
            asks.push(async move {
                let st = match client {
                    Ok(mut c) => {
                        let mut req = Request::new(LocalStatusRequest {});
                        req.set_timeout(MEMBER_STATUS_TIMEOUT);
                        tokio::time::timeout(MEMBER_STATUS_TIMEOUT, c.local_status(req))
                            .await
                            .ok()
                            .and_then(|r| r.ok())
                            .map(|r| r.into_inner())
                    }
                    Err(_) => None,
                };
                (id, n, st)
            });
        }
        for (id, n, st) in futures::future::join_all(asks).await {
            let matched = replication
                .get(&id)
                .cloned()
                .flatten()
                .map(|l| l.index)
                .unwrap_or(0);
            let mut s = st.unwrap_or(MemberStatus {
                id,
                role: Role::Unreachable as i32,
                ..Default::default()
            });
            s.api_address = n.api_address.clone();
            s.raft_address = n.raft_address.clone();
            s.voter = voters.contains(&id);
            s.matched_index = matched;
            s.lag = leader_last.saturating_sub(matched);
            members.push(s);
        }
        members.sort_by_key(|s| s.id);
        ClusterStatus {
            leader_id: self.node.id,
            members,
            cluster_id: self.node.cluster_id.clone(),
            roles: crate::election::holders(&self.node),
            membership_committed,
        }
    }

    /// Run `op` on the leader: here if this server leads, else forwarded once.
    async fn on_leader<T, F, Fut, G, GFut>(
        &self,
        request_forwarded: bool,
        local: F,
        forward: G,
    ) -> Result<T, Status>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
        G: FnOnce(ClusterServiceClient<tonic::transport::Channel>) -> GFut,
        GFut: std::future::Future<Output = Result<T, Status>>,
    {
        match self.node.wait_leader().await {
            Some((id, _)) if id == self.node.id => local().await,
            Some((id, addr)) if !request_forwarded && !addr.is_empty() => {
                forward(self.client(&addr)?).await.map_err(|s| {
                    let e = ApiError::from_status(&s);
                    if e.code() == ErrorCode::Unavailable {
                        ApiError::not_leader(Some(id), Some(addr.clone())).to_status()
                    } else {
                        s
                    }
                })
            }
            Some((id, addr)) => Err(ApiError::not_leader(Some(id), Some(addr)).to_status()),
            None => Err(ApiError::unavailable(
                "no leader is elected; membership cannot change without a quorum",
            )
            .to_status()),
        }
    }

    async fn change(
        &self,
        change: ChangeMembers<u64, RaftNode>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let r = tokio::time::timeout(
            MEMBERSHIP_TIMEOUT,
            self.node.raft.change_membership(change, false),
        )
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::Timeout,
                "membership change did not finish in time; check cluster status",
            )
        })?;
        let resp = r.map_err(write_error)?;
        Ok(Response::new(MembershipResponse {
            log_index: resp.log_id.index,
            status: Some(self.leader_status().await),
        }))
    }
}

fn write_error(e: RaftError<crate::node::TC, ClientWriteError<crate::node::TC>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ApiError::not_leader(f.leader_id, f.leader_node.map(|n| n.api_address)).to_status()
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => ApiError::new(
            ErrorCode::InvalidArgument,
            format!("membership change refused: {c}"),
        )
        .to_status(),
        other => ApiError::unavailable(other.to_string()).to_status(),
    }
}

fn fwd<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    r
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        let f = request.metadata().contains_key(FORWARDED_HEADER);
        if self.node.is_leader() {
            return Ok(Response::new(self.leader_status().await));
        }
        if !f {
            if let Some((id, addr)) = self.node.wait_leader().await {
                if id == self.node.id {
                    return Ok(Response::new(self.leader_status().await));
                }
                if let Ok(mut c) = self.client(&addr) {
                    let mut req = fwd(StatusRequest {});
                    req.set_timeout(Duration::from_secs(3));
                    if let Ok(r) = c.status(req).await {
                        return Ok(r);
                    }
                }
            }
        }
        // No reachable leader: this server's own view, with leader 0.
        let mut local = self.local_status();
        local.lag = 0;
        Ok(Response::new(ClusterStatus {
            leader_id: self.node.leader().map(|(id, _)| id).unwrap_or(0),
            members: vec![local],
            cluster_id: self.node.cluster_id.clone(),
            roles: crate::election::holders(&self.node),
            membership_committed: false,
        }))
    }

    async fn local_status(
        &self,
        _request: Request<LocalStatusRequest>,
    ) -> Result<Response<MemberStatus>, Status> {
        Ok(Response::new(self.local_status()))
    }

    async fn add_learner(
        &self,
        request: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let f = request.metadata().contains_key(FORWARDED_HEADER);
        let req = request.into_inner();
        if req.id == 0 {
            return Err(ApiError::invalid("id", "must be a positive server id").into());
        }
        for (field, a) in [
            ("raft_address", &req.raft_address),
            ("api_address", &req.api_address),
        ] {
            a.parse::<std::net::SocketAddr>().map_err(|e| {
                ApiError::invalid(field, format!("{a:?} is not an IP:port address: {e}"))
            })?;
        }
        let r2 = req.clone();
        self.on_leader(
            f,
            || async move {
                let node = RaftNode {
                    raft_address: req.raft_address,
                    api_address: req.api_address,
                };
                let r = tokio::time::timeout(
                    MEMBERSHIP_TIMEOUT,
                    self.node.raft.add_learner(req.id, node, true),
                )
                .await
                .map_err(|_| {
                    ApiError::new(
                        ErrorCode::Timeout,
                        "the learner did not catch up in time; it stays a learner",
                    )
                })?
                .map_err(write_error)?;
                Ok(Response::new(MembershipResponse {
                    log_index: r.log_id.index,
                    status: Some(self.leader_status().await),
                }))
            },
            |mut c| async move { c.add_learner(fwd(r2)).await },
        )
        .await
    }

    async fn promote(
        &self,
        request: Request<PromoteRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let f = request.metadata().contains_key(FORWARDED_HEADER);
        let id = request.into_inner().id;
        self.on_leader(
            f,
            || async move {
                if !self.node.members().contains_key(&id) {
                    return Err(ApiError::not_found(format!(
                        "server {id} (add it as a learner first)"
                    ))
                    .to_status());
                }
                self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
                    .await
            },
            |mut c| async move { c.promote(fwd(PromoteRequest { id })).await },
        )
        .await
    }

    async fn remove(
        &self,
        request: Request<RemoveRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let f = request.metadata().contains_key(FORWARDED_HEADER);
        let id = request.into_inner().id;
        self.on_leader(
            f,
            || async move {
                let m = self.node.raft.metrics().borrow_watched().clone();
                let membership = m.membership_config.membership().clone();
                if !membership.nodes().any(|(n, _)| *n == id) {
                    return Err(ApiError::not_found(format!("server {id}")).to_status());
                }
                if membership.voter_ids().any(|v| v == id) {
                    self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
                        .await
                } else {
                    self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                        .await
                }
            },
            |mut c| async move { c.remove(fwd(RemoveRequest { id })).await },
        )
        .await
    }

    async fn set_failpoint(
        &self,
        request: Request<SetFailpointRequest>,
    ) -> Result<Response<SetFailpointResponse>, Status> {
        use flotilla_raft::failpoints::{self, FailpointError};
        let r = request.into_inner();
        failpoints::set(&r.name, &r.action).map_err(|e| {
            let code = match e {
                FailpointError::NotBuilt => ErrorCode::Forbidden,
                FailpointError::Unknown { .. } | FailpointError::BadAction { .. } => {
                    ErrorCode::InvalidArgument
                }
            };
            ApiError::new(code, e.to_string()).to_status()
        })?;
        tracing::warn!(failpoint = %r.name, action = %r.action, "failpoint set");
        Ok(Response::new(SetFailpointResponse {}))
    }

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotResponse>, Status> {
        let applied = self
            .node
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        self.node
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let mut rx = self.node.raft.metrics();
        let done = tokio::time::timeout(SNAPSHOT_TIMEOUT, async {
            loop {
                let s = rx
                    .borrow_and_update()
                    .snapshot
                    .map(|l| l.index)
                    .unwrap_or(0);
                if s >= applied {
                    return s;
                }
                if rx.changed().await.is_err() {
                    return s;
                }
            }
        })
        .await
        .map_err(|_| ApiError::new(ErrorCode::Timeout, "the snapshot did not finish in time"))?;
        Ok(Response::new(SnapshotResponse {
            last_included_index: done,
        }))
    }
}
