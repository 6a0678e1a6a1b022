//! Proves the client API and the Raft transport speak mutual TLS only, with three real
//! servers: the bootstrapping server writes `<data-dir>/admin.conf` (mode 0600) and
//! `flotilla --config <data-dir>/admin.conf get nodes` works with it at once; a plain-TCP
//! client, a client whose certificate comes from another CA, and a client with no config are
//! refused; a node's certificate from the cluster CA is refused on the API (agents speak
//! QUIC) and an admin's on the Raft port (servers only).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use flotilla_api::pb::api::object_service_client::ObjectServiceClient;
use flotilla_api::pb::api::GetRequest;
use flotilla_api::pb::raft::raft_service_client::RaftServiceClient;
use flotilla_api::{ApiError, ErrorCode};
use flotilla_client::TlsFiles;
use flotilla_tests::{cli_env, cm_key, test_cluster_id, Cluster, Opts, TEST_SECRET};
use tonic::transport::Endpoint;

async fn tls_channel(addr: &str, tls: &TlsFiles) -> Result<tonic::transport::Channel, String> {
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(flotilla_client::client_tls(tls))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

fn get() -> GetRequest {
    GetRequest {
        key: Some(cm_key("nope")),
        stale: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_raft_accept_only_mutual_tls_from_the_cluster_ca() {
    let cluster = Cluster::start(3, Opts::default());
    cluster.wait_leader(Duration::from_secs(20)).await;
    let s1 = &cluster.servers[&1];

    // admin.conf, written by the bootstrapping server, works as is.
    let admin_conf = s1.data_dir.join("admin.conf");
    let mode = std::fs::metadata(&admin_conf).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin.conf holds a private key");
    let conf = admin_conf.display().to_string();
    let (ok, out, err) = cli_env(
        &["--config", &conf, "get", "nodes"],
        None,
        &[],
        &["FLOTILLA_SERVER"],
    );
    assert!(ok, "get nodes with admin.conf: {err}");
    assert!(
        out.contains("No resources found")
            || err.contains("No resources found")
            || out.contains("NAME"),
        "{out}{err}"
    );
    let (ok, out, err) = cli_env(
        &["--config", &conf, "create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: via-admin-conf\n"),
        &[],
        &["FLOTILLA_SERVER"],
    );
    assert!(
        ok && out.contains("configmap/via-admin-conf created"),
        "{out}{err}"
    );

    // No credentials at all: refused before connecting, saying what to do.
    let empty = cluster.dir.path().join("empty.conf").display().to_string();
    std::fs::write(&empty, "clusters: []\n").unwrap();
    let (ok, _, err) = cli_env(
        &["--config", &empty, "--server", &s1.api, "get", "cm"],
        None,
        &[],
        &[],
    );
    assert!(!ok && err.contains("admin.conf"), "{err}");

    // Plain TCP (h2c): no answer from the API.
    let plain = async {
        let mut c = ObjectServiceClient::connect(format!("http://{}", s1.api))
            .await
            .map_err(|e| e.to_string())?;
        c.get(get()).await.map(|_| ()).map_err(|e| e.to_string())
    };
    let r = tokio::time::timeout(Duration::from_secs(10), plain).await;
    assert!(
        !matches!(r, Ok(Ok(()))),
        "a plain-TCP client was served: {r:?}"
    );

    // A certificate from another CA: the handshake fails.
    let other_ca = flotilla_identity::derive_ca("another-cluster", TEST_SECRET).unwrap();
    let other_admin =
        flotilla_identity::issue_client_cert(&other_ca, flotilla_identity::ADMIN_CN, 1).unwrap();
    let ours = flotilla_identity::derive_ca(&test_cluster_id(), TEST_SECRET).unwrap();
    let foreign = TlsFiles {
        ca_pem: ours.cert_pem.clone(),
        cert_pem: other_admin.cert_pem,
        key_pem: other_admin.key_pem,
    };
    let r = async {
        let ch = tls_channel(&s1.api, &foreign).await?;
        ObjectServiceClient::new(ch)
            .get(get())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    .await;
    assert!(r.is_err(), "a certificate from another CA was accepted");

    // A node's certificate from our CA: authenticated, but not allowed on the API.
    let node = flotilla_identity::issue_client_cert(&ours, "system:node:n9", 1).unwrap();
    let node_tls = TlsFiles {
        ca_pem: ours.cert_pem.clone(),
        cert_pem: node.cert_pem,
        key_pem: node.key_pem,
    };
    let ch = tls_channel(&s1.api, &node_tls).await.unwrap();
    let e = ApiError::from_status(&ObjectServiceClient::new(ch).get(get()).await.unwrap_err());
    assert_eq!(e.code(), ErrorCode::Unauthenticated, "{e}");
    assert!(e.message.contains("node certificate"), "{e}");

    // The admin's certificate on the Raft port: servers only.
    let admin = &flotilla_tests::admin().0;
    let ch = tls_channel(&s1.raft, admin).await.unwrap();
    let st = RaftServiceClient::new(ch)
        .vote(flotilla_api::pb::raft::VoteRequest::default())
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
    assert!(st.message().contains("servers only"), "{st:?}");

    // The cluster still works for the right client.
    let mut c = cluster.client().await;
    let (o, _) = c.get(cm_key("via-admin-conf"), false).await.unwrap();
    assert_eq!(o.metadata.unwrap().name, "via-admin-conf");
}
