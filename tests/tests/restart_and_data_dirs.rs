//! Proves that acknowledged state survives a full stop (some servers SIGTERMed, one SIGKILLed)
//! and restart from disk with identical resourceVersions, and that a server refuses to start on
//! a corrupted data file or on a data directory of another cluster, naming the file and reason.

use std::time::Duration;

use flotilla_tests::{cm_key, configmap, run_server_expect_exit, Cluster, Opts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_keeps_every_object_and_bad_data_dirs_are_refused() {
    let mut cluster = Cluster::start(3, Opts::default());
    cluster.wait_leader(Duration::from_secs(20)).await;
    let mut c = cluster.client().await;
    let mut written = Vec::new();
    for i in 0..50 {
        let o = c
            .create(configmap(&format!("cm-{i}"), &[("i", &i.to_string())]))
            .await
            .unwrap();
        written.push(o);
    }

    cluster.stop(1);
    cluster.stop(2);
    cluster.kill(3);
    for id in [1, 2, 3] {
        cluster.start_server(id);
    }
    cluster.wait_leader(Duration::from_secs(30)).await;
    let mut c = cluster.client().await;
    for o in &written {
        let (got, _) = c.get(cm_key(&o.meta().name), false).await.unwrap();
        assert_eq!(got, *o, "object changed across restart");
    }
    // Every server has every object locally too.
    let last = written.last().unwrap().meta().resource_version;
    cluster
        .wait_applied(&[1, 2, 3], last, Duration::from_secs(20))
        .await;
    for id in [1, 2, 3] {
        let mut one = cluster.client_of(id).await;
        let (items, _) = one.list("ConfigMap", "default", "", true).await.unwrap();
        assert_eq!(items.len(), written.len(), "server {id}");
    }

    // A data directory of another cluster: same dir, different cluster_id.
    cluster.stop(3);
    let s3 = &cluster.servers[&3];
    let other = std::fs::read_to_string(&s3.config)
        .unwrap()
        .replace(&cluster.cluster_id, "some-other-cluster");
    let other_cfg = cluster.dir.path().join("other.toml");
    std::fs::write(&other_cfg, other).unwrap();
    let (code, err) = run_server_expect_exit(
        &["server", "--config", other_cfg.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("belongs to cluster") && err.contains("some-other-cluster"),
        "{err}"
    );

    // A corrupted state file: the server refuses and names it.
    let state = s3.data_dir.join("state.redb");
    let mut bytes = std::fs::read(&state).unwrap();
    for b in bytes.iter_mut().take(4096) {
        *b = 0x5A;
    }
    std::fs::write(&state, &bytes).unwrap();
    let cfg = s3.config.to_str().unwrap().to_string();
    let (code, err) =
        run_server_expect_exit(&["server", "--config", &cfg], Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&state.display().to_string()) && err.contains("corrupt"),
        "{err}"
    );

    // A corrupted log file likewise.
    let log = s3.data_dir.join("raft-log.redb");
    let mut bytes = std::fs::read(&log).unwrap();
    let n = bytes.len();
    bytes.truncate(n / 2);
    std::fs::write(&log, &bytes).unwrap();
    let (code, err) =
        run_server_expect_exit(&["server", "--config", &cfg], Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("raft-log.redb"), "{err}");
}
