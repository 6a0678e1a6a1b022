//! Proves the redb log store and state machine pass openraft's own storage conformance suite
//! (`openraft::testing::log::Suite`), each case on fresh files in a temporary directory.

use flotilla_raft::state_machine::StateMachineConfig;
use flotilla_raft::{LogStore, StateMachine, TypeConfig};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let io = |e: flotilla_raft::StoreError| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                e.into(),
            )
        };
        let dir = tempfile::tempdir().map_err(|e| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                e,
            )
        })?;
        let log = LogStore::open(&dir.path().join("raft-log.redb"), "suite", 0).map_err(io)?;
        let sm = StateMachine::open(
            &dir.path().join("state.redb"),
            &dir.path().join("snapshot.pb"),
            StateMachineConfig::default(),
        )
        .map_err(io)?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_passes_openraft_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RedbBuilder).await
}
