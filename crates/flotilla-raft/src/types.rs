//! The openraft type configuration: application data is the protobuf `Command`, members are
//! `RaftNode`s carrying both the Raft and the client API address.

use flotilla_api::pb::raft as pb;

openraft::declare_raft_types!(
    /// Flotilla's Raft types.
    pub TypeConfig:
        D = pb::Command,
        R = pb::CommandResult,
        NodeId = u64,
        Node = pb::RaftNode,
);

/// Snapshot bytes: an encoded `SnapshotData` message.
pub type SnapshotData = Vec<u8>;

pub type Raft = openraft::Raft<TypeConfig, crate::StateMachine>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = <TypeConfig as openraft::RaftTypeConfig>::Vote;
pub type LeaderId = <TypeConfig as openraft::RaftTypeConfig>::LeaderId;
pub type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
pub type Membership = openraft::Membership<u64, pb::RaftNode>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
