//! Proves, on a real three-server cluster: the CLI's apply/get/delete for ConfigMaps
//! (created → unchanged, `get -o yaml | apply -f -` changes nothing, -o json carries
//! resourceVersion), writes through a follower, and each API error of issue 2 point 9 with its
//! stable code: NOT_FOUND, CONFLICT, TOO_LARGE naming the limit, INVALID_ARGUMENT naming the
//! field, and NOT_LEADER with the leader's address from a follower that may not forward.

use std::time::Duration;

use flotilla_api::pb::api::object_service_client::ObjectServiceClient;
use flotilla_api::pb::api::{CreateRequest, GetRequest};
use flotilla_api::{ApiError, ErrorCode};
use flotilla_tests::{cli, cm_key, configmap, Cluster, Opts};

const MANIFEST: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: game\n  labels: {app: demo}\ndata:\n  lives: \"3\"\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ui\ndata:\n  color: blue\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_cli_and_error_codes() {
    let cluster = Cluster::start(3, Opts::default());
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let servers = cluster.api_addrs().join(",");
    let s = ["--server", servers.as_str()];

    // apply twice: created, then unchanged.
    let (ok, out, err) = cli(&[s[0], s[1], "apply", "-f", "-"], Some(MANIFEST));
    assert!(ok, "{err}");
    assert_eq!(out, "configmap/game created\nconfigmap/ui created\n");
    let (ok, out, _) = cli(&[s[0], s[1], "apply", "-f", "-"], Some(MANIFEST));
    assert!(ok);
    assert_eq!(out, "configmap/game unchanged\nconfigmap/ui unchanged\n");

    // -o json has metadata.resourceVersion; get -o yaml piped back to apply changes nothing.
    let (ok, out, _) = cli(
        &[s[0], s[1], "get", "configmap", "game", "-o", "json"],
        None,
    );
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rv = v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(rv.parse::<u64>().unwrap() > 0);
    assert_eq!(v["data"]["lives"], "3");
    let (ok, yaml, _) = cli(
        &[s[0], s[1], "get", "configmap", "game", "-o", "yaml"],
        None,
    );
    assert!(ok);
    let (ok, out, err) = cli(&[s[0], s[1], "apply", "-f", "-"], Some(&yaml));
    assert!(ok, "{err}");
    assert_eq!(out, "configmap/game unchanged\n");
    let (_, out, _) = cli(&[s[0], s[1], "get", "cm", "game", "-o", "json"], None);
    let v2: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v2["metadata"]["resourceVersion"], rv.as_str());
    assert_eq!(v2["metadata"]["generation"], 1);

    // A changed manifest is "configured" and bumps generation.
    let changed = MANIFEST.replace("lives: \"3\"", "lives: \"4\"");
    let (_, out, _) = cli(&[s[0], s[1], "apply", "-f", "-"], Some(&changed));
    assert_eq!(out, "configmap/game configured\nconfigmap/ui unchanged\n");

    // Table, label selector, delete, then NOT_FOUND with a non-zero exit.
    let (_, out, _) = cli(&[s[0], s[1], "get", "configmaps", "-l", "app=demo"], None);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("DATA") && lines[0].contains("AGE"),
        "{out}"
    );
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[1].starts_with("game "));
    let (ok, out, _) = cli(&[s[0], s[1], "delete", "configmap", "ui"], None);
    assert!(ok);
    assert_eq!(out, "configmap \"ui\" deleted\n");
    let (ok, _, err) = cli(&[s[0], s[1], "get", "configmap", "ui"], None);
    assert!(!ok);
    assert!(err.contains("not found (NOT_FOUND)"), "{err}");

    // A bad manifest is refused before anything is written, naming file, document and field.
    let bad =
        format!("{MANIFEST}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Not_Valid\n");
    let (ok, _, err) = cli(&[s[0], s[1], "apply", "-f", "-"], Some(&bad));
    assert!(!ok);
    assert!(
        err.contains("<stdin>: document 2: metadata.name: invalid value \"Not_Valid\""),
        "{err}"
    );

    // Writes through a follower are forwarded to the leader without the client noticing.
    let follower = *cluster.servers.keys().find(|id| **id != leader).unwrap();
    let mut fc = cluster.client_of(follower).await;
    let o = fc
        .create(configmap("via-follower", &[("a", "b")]))
        .await
        .unwrap();
    assert!(o.meta().resource_version > 0);
    assert!(!o.meta().uid.is_empty());
    let (got, _) = fc.get(cm_key("via-follower"), false).await.unwrap();
    assert_eq!(got.meta().resource_version, o.meta().resource_version);

    // CONFLICT: an update with a stale resourceVersion.
    let mut stale = configmap("via-follower", &[("a", "c")]);
    stale.meta_mut().resource_version = 1;
    let e = fc.update(stale).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict, "{e}");
    assert_eq!(e.code_name(), "CONFLICT");

    // ALREADY_EXISTS.
    let e = fc.create(configmap("via-follower", &[])).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists);

    // TOO_LARGE names the limit.
    let big = "x".repeat(5 * 1024 * 1024);
    let e = fc
        .create(configmap("huge", &[("blob", big.as_str())]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::TooLarge, "{e}");
    assert!(
        e.message.contains("4194304 bytes (max_object_bytes)"),
        "{}",
        e.message
    );

    // INVALID_ARGUMENT names the field.
    let mut bad = configmap("x", &[]);
    bad.meta_mut().name = "Bad_Name".into();
    let e = fc.create(bad).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert_eq!(e.field, "metadata.name");
    let mut bad = configmap("x", &[]);
    bad.api_version = "v2".into();
    let e = fc.create(bad).await.unwrap_err();
    assert_eq!(e.field, "apiVersion", "{e}");

    // NOT_LEADER with the leader's address: a follower asked not to forward. On this shared
    // two-core machine an election may happen in between; then ask again (bounded).
    let mut checked = false;
    for _ in 0..5 {
        let leader_now = cluster.wait_leader(Duration::from_secs(20)).await;
        let follower_now = *cluster
            .servers
            .keys()
            .find(|id| **id != leader_now)
            .unwrap();
        let mut raw = ObjectServiceClient::new(
            flotilla_tests::channel(&cluster.servers[&follower_now].api)
                .await
                .unwrap(),
        );
        let mut req = tonic::Request::new(CreateRequest {
            object: Some(configmap("nl", &[])),
        });
        req.metadata_mut()
            .insert("x-flotilla-forwarded", "1".parse().unwrap());
        let e = ApiError::from_status(&raw.create(req).await.unwrap_err());
        if cluster.wait_leader(Duration::from_secs(20)).await != leader_now {
            continue;
        }
        assert_eq!(e.code(), ErrorCode::NotLeader, "{e}");
        assert_eq!(e.leader_address, cluster.servers[&leader_now].api);
        assert_eq!(e.leader_id, leader_now);
        checked = true;
        break;
    }
    assert!(checked, "leadership kept moving");
    let mut raw = ObjectServiceClient::new(
        flotilla_tests::channel(&cluster.servers[&follower].api)
            .await
            .unwrap(),
    );

    // A request with a missing field is INVALID_ARGUMENT naming it.
    let e = ApiError::from_status(
        &raw.get(GetRequest {
            key: None,
            stale: false,
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(
        (e.code(), e.field.as_str()),
        (ErrorCode::InvalidArgument, "key")
    );

    // Stale reads are labelled with their revision and catch up.
    let (obj, rev) = fc.get(cm_key("game"), true).await.unwrap();
    assert!(rev >= obj.meta().resource_version);

    // The metrics endpoint exposes the Raft figures (of the leader as of now, after a write
    // it proposed).
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    cluster
        .client_of(leader)
        .await
        .create(configmap("metrics-probe", &[]))
        .await
        .unwrap();
    let text = cluster.metrics_text(leader).await;
    for name in [
        "flotilla_raft_term",
        "flotilla_raft_commit_index",
        "flotilla_raft_applied_index",
        "flotilla_raft_log_entries",
        "flotilla_write_latency_seconds_bucket",
        "flotilla_watchers",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    assert_eq!(
        cluster.metric(leader, "flotilla_raft_is_leader").await,
        Some(1.0)
    );
    assert!(
        cluster
            .metric(leader, "flotilla_write_latency_seconds_count")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );

    // cluster status -o json: leader_id and members with id, address, role.
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let (ok, out, _) = cli(&[s[0], s[1], "cluster", "status", "-o", "json"], None);
    assert!(ok);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["leader_id"], leader);
    let members = st["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        assert!(m["id"].is_u64() && m["address"].is_string());
        let want = if m["id"] == leader {
            "leader"
        } else {
            "follower"
        };
        assert_eq!(m["role"], want, "{out}");
    }
}
