//! The client side of the Raft transport: one lazily connected tonic channel per peer, every
//! RPC bounded by openraft's deadline, snapshots streamed in bounded chunks.

use std::future::Future;
use std::time::Duration;

use flotilla_api::pb::raft as pb;
use flotilla_api::pb::raft::raft_service_client::RaftServiceClient;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};
use tonic::transport::{Channel, Endpoint};

use crate::convert;
use crate::types::{Snapshot, SnapshotData, TypeConfig, Vote};

/// Transport limits, shared by the client and the service side.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub connect_timeout_ms: u64,
    /// Largest Raft message accepted or sent (append batches, snapshot chunks).
    pub max_message_bytes: usize,
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot a follower accepts.
    pub max_snapshot_bytes: u64,
    /// Mutual TLS to the other servers; None only in tests of this crate.
    pub client_tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            connect_timeout_ms: 1000,
            max_message_bytes: 256 * 1024 * 1024,
            snapshot_chunk_bytes: 1024 * 1024,
            max_snapshot_bytes: 8 * 1024 * 1024 * 1024,
            client_tls: None,
        }
    }
}

/// Creates one [`Peer`] per target.
#[derive(Clone, Default)]
pub struct Network {
    pub config: TransportConfig,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &pb::RaftNode) -> Peer {
        Peer::new(target, &node.raft_address, &self.config)
    }
}

/// A connection to one peer. The channel reconnects by itself; a bad address is reported on
/// every call rather than panicking.
pub struct Peer {
    target: u64,
    client: Result<RaftServiceClient<Channel>, String>,
}

fn unreachable(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e.to_string())))
}

fn network(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
}

fn status_error(target: u64, s: tonic::Status) -> RPCError<TypeConfig> {
    let msg = format!("raft rpc to server {target}: {}: {}", s.code(), s.message());
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            unreachable(msg)
        }
        _ => network(msg),
    }
}

impl Peer {
    pub fn new(target: u64, addr: &str, config: &TransportConfig) -> Peer {
        let scheme = if config.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let client = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .and_then(|e| match &config.client_tls {
                Some(t) => e.tls_config(t.clone()),
                None => Ok(e),
            })
            .map(|e| {
                let ch = e
                    .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
                    .tcp_nodelay(true)
                    .connect_lazy();
                RaftServiceClient::new(ch)
                    .max_decoding_message_size(config.max_message_bytes)
                    .max_encoding_message_size(config.max_message_bytes)
            })
            .map_err(|e| format!("server {target} has an invalid raft address {addr:?}: {e}"));
        Peer { target, client }
    }

    fn client(&self) -> Result<RaftServiceClient<Channel>, RPCError<TypeConfig>> {
        self.client.clone().map_err(unreachable)
    }

    fn request<T>(msg: T, option: &RPCOption) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(option.hard_ttl());
        r
    }

    async fn vote_rpc(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
        pre: bool,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = pb::VoteRequest {
            vote: Some(convert::vote_to_pb(&rpc.vote)),
            last_log_id: rpc.last_log_id.as_ref().map(convert::log_id_to_pb),
            leadership_transfer: rpc.leadership_transfer,
        };
        let mut c = self.client()?;
        let req = Self::request(req, &option);
        let resp = if pre {
            c.pre_vote(req).await
        } else {
            c.vote(req).await
        }
        .map_err(|s| status_error(self.target, s))?
        .into_inner();
        let vote = convert::vote_from_pb(resp.vote.as_ref()).map_err(network)?;
        let last = convert::opt_log_id_from_pb(resp.last_log_id.as_ref()).map_err(network)?;
        Ok(VoteResponse::new(vote, last, resp.vote_granted))
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = pb::AppendEntriesRequest {
            vote: Some(convert::vote_to_pb(&rpc.vote)),
            prev_log_id: rpc.prev_log_id.as_ref().map(convert::log_id_to_pb),
            entries: rpc.entries.iter().map(convert::entry_to_pb).collect(),
            leader_commit: rpc.leader_commit.as_ref().map(convert::log_id_to_pb),
        };
        let resp = self
            .client()?
            .append_entries(Self::request(req, &option))
            .await
            .map_err(|s| status_error(self.target, s))?
            .into_inner();
        if let Some(v) = resp.rejected_by.as_ref() {
            return Ok(AppendEntriesResponse::HigherVote(
                convert::vote_from_pb(Some(v)).map_err(network)?,
            ));
        }
        if resp.conflict {
            return Ok(AppendEntriesResponse::Conflict);
        }
        if resp.partial {
            let l = convert::opt_log_id_from_pb(resp.partial_success.as_ref()).map_err(network)?;
            return Ok(AppendEntriesResponse::PartialSuccess(l));
        }
        Ok(AppendEntriesResponse::Success)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_rpc(rpc, option, false).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_rpc(rpc, option, true).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let chunk = option
            .snapshot_chunk_size()
            .unwrap_or(1024 * 1024)
            .max(64 * 1024);
        let header = pb::SnapshotChunk {
            payload: Some(pb::snapshot_chunk::Payload::Header(pb::SnapshotHeader {
                vote: Some(convert::vote_to_pb(&vote)),
                meta: Some(convert::snapshot_meta_to_pb(&snapshot.meta)),
                total_bytes: snapshot.snapshot.len() as u64,
            })),
        };
        let data = snapshot.snapshot;
        let chunks = (0..data.len())
            .step_by(chunk)
            .map(move |start| pb::SnapshotChunk {
                payload: Some(pb::snapshot_chunk::Payload::Data(
                    data[start..(start + chunk).min(data.len())].to_vec(),
                )),
            });
        let stream = futures::stream::iter(std::iter::once(header).chain(chunks));
        let mut client = self.client().map_err(|e| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::new(&other)),
        })?;
        let target = self.target;
        let send = async move { client.install_snapshot(stream).await };
        let resp = tokio::select! {
            r = send => r.map_err(|s| match status_error(target, s) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => StreamingError::Network(NetworkError::new(&other)),
            })?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let v = convert::vote_from_pb(resp.into_inner().vote.as_ref())
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        Ok(SnapshotResponse { vote: v })
    }
}
