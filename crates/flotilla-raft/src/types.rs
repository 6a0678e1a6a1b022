//! The openraft type configuration: application data is an encoded protobuf `Command`, members
//! are `RaftNode`s carrying both the Raft and the client API address.

use flotilla_api::pb::raft as pb;
use prost::Message;

/// A `Command` as its protobuf bytes. Encoded once by the proposer and decoded once by each
/// state machine; the log store and the transport only copy (or share) the bytes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct EncodedCommand(pub bytes::Bytes);

impl EncodedCommand {
    pub fn encode(cmd: &pb::Command) -> EncodedCommand {
        EncodedCommand(cmd.encode_to_vec().into())
    }

    pub fn decode(&self) -> Result<pb::Command, prost::DecodeError> {
        pb::Command::decode(self.0.clone())
    }
}

impl std::fmt::Debug for EncodedCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedCommand({} bytes)", self.0.len())
    }
}

impl std::fmt::Display for EncodedCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "command of {} bytes", self.0.len())
    }
}

openraft::declare_raft_types!(
    /// Flotilla's Raft types.
    pub TypeConfig:
        D = EncodedCommand,
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
