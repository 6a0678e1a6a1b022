//! The server side of the Raft transport: decodes each message (never panicking on a malformed
//! one) and hands it to the local Raft node.

use flotilla_api::pb::raft as pb;
use flotilla_api::pb::raft::raft_service_server::RaftService;
use futures::StreamExt;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{self, ConvertError};
use crate::types::{Raft, Snapshot};

pub struct RaftGrpc {
    raft: Raft,
    max_snapshot_bytes: u64,
}

impl RaftGrpc {
    pub fn new(raft: Raft, max_snapshot_bytes: u64) -> Self {
        RaftGrpc {
            raft,
            max_snapshot_bytes,
        }
    }
}

impl RaftGrpc {
    async fn vote_or_pre_vote(
        &self,
        req: pb::VoteRequest,
        pre: bool,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let req = vote_request(req)?;
        let r = if pre {
            self.raft.pre_vote(req).await
        } else {
            self.raft.vote(req).await
        }
        .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(vote_response(r)))
    }
}

fn bad(e: ConvertError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn vote_request(r: pb::VoteRequest) -> Result<VoteRequest<crate::TypeConfig>, Status> {
    Ok(VoteRequest {
        vote: convert::vote_from_pb(r.vote.as_ref()).map_err(bad)?,
        last_log_id: convert::opt_log_id_from_pb(r.last_log_id.as_ref()).map_err(bad)?,
        leadership_transfer: r.leadership_transfer,
    })
}

fn vote_response(r: openraft::raft::VoteResponse<crate::TypeConfig>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(convert::vote_to_pb(&r.vote)),
        vote_granted: r.vote_granted,
        last_log_id: r.last_log_id.as_ref().map(convert::log_id_to_pb),
    }
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.vote_or_pre_vote(request.into_inner(), false).await
    }

    async fn pre_vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.vote_or_pre_vote(request.into_inner(), true).await
    }

    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let r = request.into_inner();
        let req = AppendEntriesRequest {
            vote: convert::vote_from_pb(r.vote.as_ref()).map_err(bad)?,
            prev_log_id: convert::opt_log_id_from_pb(r.prev_log_id.as_ref()).map_err(bad)?,
            entries: r
                .entries
                .into_iter()
                .map(convert::entry_from_pb)
                .collect::<Result<_, _>>()
                .map_err(bad)?,
            leader_commit: convert::opt_log_id_from_pb(r.leader_commit.as_ref()).map_err(bad)?,
        };
        let resp = self
            .raft
            .append_entries(req)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut out = pb::AppendEntriesResponse::default();
        match resp {
            AppendEntriesResponse::Success => {}
            AppendEntriesResponse::PartialSuccess(l) => {
                out.partial = true;
                out.partial_success = l.as_ref().map(convert::log_id_to_pb);
            }
            AppendEntriesResponse::Conflict => out.conflict = true,
            AppendEntriesResponse::HigherVote(v) => out.rejected_by = Some(convert::vote_to_pb(&v)),
        }
        Ok(Response::new(out))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let Some(pb::snapshot_chunk::Payload::Header(h)) = first.payload else {
            return Err(Status::invalid_argument(
                "the first snapshot chunk must be the header",
            ));
        };
        if h.total_bytes > self.max_snapshot_bytes {
            return Err(Status::resource_exhausted(format!(
                "snapshot of {} bytes exceeds this server's max_snapshot_bytes {}",
                h.total_bytes, self.max_snapshot_bytes
            )));
        }
        let vote = convert::vote_from_pb(h.vote.as_ref()).map_err(bad)?;
        let meta = convert::snapshot_meta_from_pb(
            h.meta
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("snapshot header has no meta"))?,
        )
        .map_err(bad)?;
        let mut data = Vec::with_capacity(h.total_bytes as usize);
        while let Some(chunk) = stream.next().await {
            match chunk?.payload {
                Some(pb::snapshot_chunk::Payload::Data(d)) => {
                    if data.len() as u64 + d.len() as u64 > h.total_bytes {
                        return Err(Status::invalid_argument(
                            "snapshot stream is longer than its header says",
                        ));
                    }
                    data.extend_from_slice(&d);
                }
                _ => {
                    return Err(Status::invalid_argument(
                        "a snapshot chunk after the header must carry data",
                    ))
                }
            }
        }
        if data.len() as u64 != h.total_bytes {
            return Err(Status::invalid_argument(format!(
                "snapshot stream ended after {} of {} bytes",
                data.len(),
                h.total_bytes
            )));
        }
        let resp = self
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: data,
                },
            )
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::InstallSnapshotResponse {
            vote: Some(convert::vote_to_pb(&resp.vote)),
        }))
    }
}
