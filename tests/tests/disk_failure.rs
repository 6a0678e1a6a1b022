//! Proves that a server whose disk stops syncing stops too, and that nothing acknowledged is
//! lost: with libfiu (Debian `fiu-utils`) making fsync and fdatasync fail on one of three
//! servers, that server exits non-zero naming the failed write instead of serving on with a
//! dead Raft; the other two keep acknowledging writes; restarted with a working disk, it
//! catches up and holds every acknowledged write.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_tests::{configmap, Cluster, Opts};

const FIU_LIBS: [&str; 2] = [
    "/usr/lib/fiu/fiu_run_preload.so",
    "/usr/lib/fiu/fiu_posix_preload.so",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_fsync_fails_stops_and_loses_nothing() {
    let have_fiu =
        FIU_LIBS.iter().all(|l| Path::new(l).exists()) && Path::new("/usr/bin/fiu-ctrl").exists();
    if !have_fiu {
        let reason = "disk_failure: needs libfiu (apt-get install -y fiu-utils)";
        if std::env::var("FLOTILLA_REQUIRE_NODE_TESTS").as_deref() == Ok("1") {
            panic!("{reason}");
        }
        eprintln!("SKIPPED {reason}");
        return;
    }
    let mut cluster = Cluster::new(Opts::default());
    for id in 1..=3 {
        cluster.add_server(id);
    }
    for id in 1..=3 {
        cluster.write_config(id, &[1, 2, 3]);
    }
    let fifo = cluster.dir.path().join("fiu");
    cluster.servers.get_mut(&3).unwrap().env = vec![
        ("LD_PRELOAD".into(), FIU_LIBS.join(" ")),
        ("FIU_CTRL_FIFO".into(), fifo.display().to_string()),
    ];
    for id in 1..=3 {
        cluster.start_server(id);
    }
    cluster.wait_leader(Duration::from_secs(20)).await;
    let mut c = cluster.client().await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let o = c
            .create(configmap(&format!("before-{i}"), &[]))
            .await
            .unwrap();
        acked.push((o.meta().name.clone(), o.meta().resource_version));
    }

    let pid = cluster.pid(3).expect("server 3 runs").to_string();
    let out = Command::new("timeout")
        .args(["10", "fiu-ctrl", "-f"])
        .arg(&fifo)
        .args(["-c", "enable name=posix/io/sync/*", &pid])
        .output()
        .expect("run fiu-ctrl");
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("rror"),
        "fiu-ctrl: {out:?}"
    );

    // Writes go on; server 3 fails its next fsync and stops.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    let status = loop {
        if let Some(st) = cluster.exited(3) {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "server 3 kept running with failing fsyncs\n{}",
            cluster.log_tails()
        );
        if let Ok(o) = c.create(configmap(&format!("during-{i}"), &[])).await {
            acked.push((o.meta().name.clone(), o.meta().resource_version));
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "server 3 exited with {status}");
    let log = std::fs::read_to_string(&cluster.servers[&3].log).unwrap();
    assert!(
        log.contains("Raft stopped on a fatal error") && log.contains("raft-log.redb"),
        "server 3's log does not say why it stopped:\n{}",
        cluster.log_tails()
    );

    // The other two still make progress.
    for j in 0..20 {
        let o = c
            .create(configmap(&format!("after-{j}"), &[]))
            .await
            .unwrap();
        acked.push((o.meta().name.clone(), o.meta().resource_version));
    }

    // Back with a working disk, it catches up and holds everything acknowledged.
    cluster.servers.get_mut(&3).unwrap().env.clear();
    cluster.start_server(3);
    let max_rv = acked.iter().map(|(_, rv)| *rv).max().unwrap();
    cluster
        .wait_applied(&[1, 2, 3], max_rv, Duration::from_secs(30))
        .await;
    let mut on3 = cluster.client_of(3).await;
    let (items, _) = on3.list("ConfigMap", "default", "", true).await.unwrap();
    for (name, rv) in &acked {
        assert!(
            items
                .iter()
                .any(|o| &o.meta().name == name && o.meta().resource_version == *rv),
            "server 3 lost acknowledged {name} at {rv}"
        );
    }
}
