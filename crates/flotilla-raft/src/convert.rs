//! Conversions between openraft's types and their protobuf forms (on disk and on the wire).
//! Decoding never panics: a missing field is a [`ConvertError`] naming it.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_api::pb::raft as pb;
use openraft::vote::RaftLeaderId;
use openraft::EntryPayload;

use crate::types::{Entry, LeaderId, LogId, Membership, SnapshotMeta, StoredMembership, Vote};

#[derive(Debug, thiserror::Error)]
#[error("malformed {message}: missing or invalid field {field}")]
pub struct ConvertError {
    pub message: &'static str,
    pub field: &'static str,
}

fn missing(message: &'static str, field: &'static str) -> ConvertError {
    ConvertError { message, field }
}

pub fn leader_id_to_pb(l: &LeaderId) -> pb::LeaderId {
    pb::LeaderId {
        term: l.term,
        node_id: l.node_id,
    }
}

pub fn leader_id_from_pb(l: &pb::LeaderId) -> LeaderId {
    LeaderId::new(l.term, l.node_id)
}

pub fn log_id_to_pb(l: &LogId) -> pb::LogId {
    pb::LogId {
        leader_id: Some(leader_id_to_pb(&l.leader_id)),
        index: l.index,
    }
}

pub fn log_id_from_pb(l: &pb::LogId) -> Result<LogId, ConvertError> {
    let leader = l.leader_id.as_ref().ok_or(missing("LogId", "leader_id"))?;
    Ok(LogId::new(leader_id_from_pb(leader), l.index))
}

pub fn opt_log_id_from_pb(l: Option<&pb::LogId>) -> Result<Option<LogId>, ConvertError> {
    l.map(log_id_from_pb).transpose()
}

pub fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote {
        leader_id: Some(leader_id_to_pb(&v.leader_id)),
        committed: v.committed,
    }
}

pub fn vote_from_pb(v: Option<&pb::Vote>) -> Result<Vote, ConvertError> {
    let v = v.ok_or(missing("Vote", "vote"))?;
    let l = v.leader_id.as_ref().ok_or(missing("Vote", "leader_id"))?;
    let leader = leader_id_from_pb(l);
    Ok(if v.committed {
        Vote::new_committed(leader.term, leader.node_id)
    } else {
        Vote::new(leader.term, leader.node_id)
    })
}

pub fn membership_to_pb(m: &Membership) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|c| pb::NodeIdSet {
                ids: c.iter().copied().collect(),
            })
            .collect(),
        nodes: m.nodes().map(|(id, n)| (*id, n.clone())).collect(),
    }
}

pub fn membership_from_pb(m: &pb::Membership) -> Result<Membership, ConvertError> {
    let configs: Vec<BTreeSet<u64>> = m
        .configs
        .iter()
        .map(|c| c.ids.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, pb::RaftNode> = m.nodes.clone();
    Membership::new(configs, nodes)
        .map_err(|_| missing("Membership", "nodes (a voter has no node entry)"))
}

pub fn stored_membership_to_pb(m: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: m.log_id().as_ref().map(log_id_to_pb),
        membership: Some(membership_to_pb(m.membership())),
    }
}

pub fn stored_membership_from_pb(
    m: Option<&pb::StoredMembership>,
) -> Result<StoredMembership, ConvertError> {
    let Some(m) = m else {
        return Ok(StoredMembership::default());
    };
    let membership = match &m.membership {
        Some(x) => membership_from_pb(x)?,
        None => Membership::default(),
    };
    Ok(StoredMembership::new(
        opt_log_id_from_pb(m.log_id.as_ref())?,
        membership,
    ))
}

pub fn entry_to_pb(e: &Entry) -> pb::Entry {
    let payload = match &e.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(c) => pb::entry::Payload::Normal(c.0.clone()),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry {
        log_id: Some(log_id_to_pb(&e.log_id)),
        payload: Some(payload),
    }
}

pub fn entry_from_pb(e: pb::Entry) -> Result<Entry, ConvertError> {
    let log_id = log_id_from_pb(e.log_id.as_ref().ok_or(missing("Entry", "log_id"))?)?;
    let payload = match e.payload.ok_or(missing("Entry", "payload"))? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Normal(c) => EntryPayload::Normal(crate::types::EncodedCommand(c)),
        pb::entry::Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(&m)?),
    };
    Ok(Entry { log_id, payload })
}

pub fn snapshot_meta_to_pb(m: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: m.last_log_id.as_ref().map(log_id_to_pb),
        last_membership: Some(stored_membership_to_pb(&m.last_membership)),
    }
}

pub fn snapshot_meta_from_pb(m: &pb::SnapshotMeta) -> Result<SnapshotMeta, ConvertError> {
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_pb(m.last_log_id.as_ref())?,
        last_membership: stored_membership_from_pb(m.last_membership.as_ref())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::pb::api;

    #[test]
    fn entries_round_trip() {
        let nodes: BTreeMap<u64, pb::RaftNode> = [(
            1,
            pb::RaftNode {
                raft_address: "a".into(),
                api_address: "b".into(),
            },
        )]
        .into();
        let m = Membership::new(vec![[1].into()], nodes).unwrap();
        let lid = LogId::new(LeaderId::new(3, 1), 7);
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Membership(m),
            EntryPayload::Normal(crate::types::EncodedCommand::encode(&pb::Command {
                timestamp_ms: 5,
                writes: vec![api::Write::default()],
            })),
        ] {
            let e = Entry {
                log_id: lid,
                payload,
            };
            let back = entry_from_pb(entry_to_pb(&e)).unwrap();
            assert_eq!(format!("{e:?}"), format!("{back:?}"));
        }
    }

    #[test]
    fn missing_fields_are_errors_not_panics() {
        assert!(entry_from_pb(pb::Entry::default()).is_err());
        assert!(vote_from_pb(Some(&pb::Vote::default())).is_err());
        assert!(vote_from_pb(None).is_err());
        let v = Vote::new_committed(4, 2);
        assert_eq!(vote_from_pb(Some(&vote_to_pb(&v))).unwrap(), v);
    }
}
