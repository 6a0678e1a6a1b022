//! Proves the role elections through the log with three real servers: the scheduler and
//! controller-manager Leases appear in `flotilla-system` with a server as holder (shown by
//! `get leases`); SIGKILL of the scheduler's holder lets another server take the Lease after it
//! expires, with the epoch (`leaseTransitions`) bumped; a write fenced with the old epoch is
//! then refused, one with the new epoch applies.

use std::time::{Duration, Instant};

use flotilla_api::pb::api::{object::Body, write::Op, write_result, Fence, Write};
use flotilla_api::{ErrorCode, ObjectKey};
use flotilla_tests::{cli, configmap, Cluster, Opts};

fn key(role: &str) -> ObjectKey {
    ObjectKey {
        kind: "Lease".into(),
        namespace: "flotilla-system".into(),
        name: role.into(),
    }
}

async fn holder(c: &mut flotilla_client::Client, role: &str) -> Option<(String, i64)> {
    let (o, _) = c.get(key(role), false).await.ok()?;
    match o.body {
        Some(Body::Lease(l)) => {
            let s = l.spec?;
            Some((s.holder_identity?, i64::from(s.lease_transitions?)))
        }
        _ => None,
    }
}

fn fenced(name: &str, epoch: i64) -> Write {
    Write {
        op: Some(Op::Create(configmap(name, &[]))),
        fence: Some(Fence {
            lease_namespace: "flotilla-system".into(),
            lease_name: "scheduler".into(),
            epoch,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_leases_fail_over_with_a_new_epoch() {
    let mut cluster = Cluster::start(
        3,
        Opts {
            extra_limits: vec![
                "role_lease_duration_ms = 3000".into(),
                "role_retry_ms = 300".into(),
            ],
            ..Default::default()
        },
    );
    cluster.wait_leader(Duration::from_secs(20)).await;
    let mut c = cluster.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (first, epoch) = loop {
        let s = holder(&mut c, "scheduler").await;
        let m = holder(&mut c, "controller-manager").await;
        if let (Some(s), Some(_)) = (s, m) {
            break s;
        }
        assert!(Instant::now() < deadline, "the role leases never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(first.starts_with("server-"), "{first}");
    let servers = cluster.api_addrs().join(",");
    let (ok, out, err) = cli(
        &[
            "--server",
            &servers,
            "get",
            "leases",
            "-n",
            "flotilla-system",
        ],
        None,
    );
    assert!(
        ok && out.contains("scheduler")
            && out.contains("controller-manager")
            && out.contains(&first),
        "{out}{err}"
    );

    let victim: u64 = first.trim_start_matches("server-").parse().unwrap();
    let killed_at = Instant::now();
    cluster.kill(victim);
    let others: Vec<String> = cluster
        .running()
        .iter()
        .map(|id| cluster.servers[id].api.clone())
        .collect();
    let mut c = flotilla_tests::connect(others).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (next, next_epoch) = loop {
        if let Some((h, e)) = holder(&mut c, "scheduler").await {
            if h != first {
                break (h, e);
            }
        }
        assert!(Instant::now() < deadline, "nobody took the scheduler lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "scheduler lease: {first} (epoch {epoch}) -> {next} (epoch {next_epoch}) {} ms after SIGKILL",
        killed_at.elapsed().as_millis()
    );
    assert_eq!(next_epoch, epoch + 1);

    // The deposed holder's epoch no longer writes; the new one does.
    let r = c.batch(vec![fenced("old-epoch", epoch)]).await.unwrap();
    assert!(
        matches!(&r.results[0].result, Some(write_result::Result::Error(e)) if e.code() == ErrorCode::Fenced)
    );
    let r = c
        .batch(vec![fenced("new-epoch", next_epoch)])
        .await
        .unwrap();
    assert!(matches!(
        &r.results[0].result,
        Some(write_result::Result::Object(_))
    ));
}
