//! Proves that elections end: the leader of a three-server cluster is SIGKILLed and restarted
//! over and over (200 times unless FLOTILLA_LEADER_KILLS says otherwise), and every kill is
//! followed by a new leader within a bound; the cluster still takes writes throughout.

use std::time::{Duration, Instant};

use flotilla_api::pb::admin::Role;
use flotilla_tests::{configmap, Cluster, Opts};

const NEW_LEADER_BOUND: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_leader_kill_ends_with_a_new_leader() {
    let kills: usize = std::env::var("FLOTILLA_LEADER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let opts = Opts {
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        ..Opts::default()
    };
    let mut cluster = Cluster::start(3, opts);
    let mut leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let mut worst = Duration::ZERO;
    let mut total = Duration::ZERO;
    for round in 0..kills {
        cluster.kill(leader);
        let t0 = Instant::now();
        let next = cluster.wait_leader(NEW_LEADER_BOUND).await;
        let took = t0.elapsed();
        assert_ne!(next, leader);
        assert!(
            took < NEW_LEADER_BOUND,
            "round {round}: new leader after {took:?}"
        );
        worst = worst.max(took);
        total += took;
        cluster.start_server(leader);
        // Wait for the restarted server to rejoin as a follower before the next kill, so the
        // cluster always has a quorum to elect from.
        cluster
            .wait_role(leader, Role::Follower, Duration::from_secs(20))
            .await;
        if round % 25 == 0 {
            let mut c = cluster.client().await;
            c.create(configmap(&format!("round-{round}"), &[]))
                .await
                .unwrap();
        }
        leader = next;
    }
    eprintln!(
        "{kills} leader kills: worst time to a new leader {worst:?}, mean {:?}",
        total / kills.max(1) as u32
    );
}
