//! Proves the kubectl-style verbs beyond apply/get through the real CLI against a real
//! three-server cluster: `-f` with directories and `-R`, `create` (refuses what exists),
//! `label` and `annotate` (set, refuse to overwrite without --overwrite, remove), `delete` by
//! label selector and by manifest, `delete --wait` waiting out finalizers, `explain` from
//! the schema, shell completion, and the CLI
//! config file with named clusters replacing `--server`.

use std::time::Duration;

use flotilla_tests::{cli, cli_env, Cluster, Opts};

fn cli_without_env(args: &[&str], stdin: Option<&str>, unset: &[&str]) -> (bool, String, String) {
    cli_env(args, stdin, &[], unset)
}

fn cm(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  k: v\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_verbs_and_config_file() {
    let cluster = Cluster::start(3, Opts::default());
    cluster.wait_leader(Duration::from_secs(20)).await;
    let servers = cluster.api_addrs().join(",");
    let s = ["--server", servers.as_str()];
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.yaml"), cm("a")).unwrap();
    std::fs::write(dir.join("sub/b.yml"), cm("b")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
    let d = dir.display().to_string();
    let a_file = dir.join("a.yaml").display().to_string();

    // A directory without -R: its own manifests only; with -R: the tree.
    let (ok, out, err) = cli(&[s[0], s[1], "create", "-f", &d], None);
    assert!(ok, "{err}");
    assert_eq!(out, "configmap/a created\n");
    let (ok, out, err) = cli(&[s[0], s[1], "apply", "-R", "-f", &d], None);
    assert!(ok, "{err}");
    assert_eq!(out, "configmap/a unchanged\nconfigmap/b created\n");
    let (ok, _, err) = cli(&[s[0], s[1], "create", "-f", &a_file], None);
    assert!(!ok && err.contains("already exists"), "{err}");

    // label / annotate.
    let (ok, out, err) = cli(&[s[0], s[1], "label", "cm", "a", "tier=web"], None);
    assert!(ok, "{err}");
    assert_eq!(out, "configmap/a labeled\n");
    let (ok, _, err) = cli(&[s[0], s[1], "label", "cm", "a", "tier=db"], None);
    assert!(
        !ok && err.contains("already has a value (web), and --overwrite is false"),
        "{err}"
    );
    let (ok, _, err) = cli(
        &[s[0], s[1], "label", "cm", "a", "tier=db", "--overwrite"],
        None,
    );
    assert!(ok, "{err}");
    let (_, out, _) = cli(
        &[s[0], s[1], "get", "cm", "-l", "tier=db", "-o", "name"],
        None,
    );
    assert_eq!(out, "configmap/a\n");
    let (ok, _, err) = cli(&[s[0], s[1], "label", "cm", "a", "tier-"], None);
    assert!(ok, "{err}");
    let (_, out, _) = cli(&[s[0], s[1], "get", "cm", "-l", "tier", "-o", "name"], None);
    assert_eq!(out, "");
    let (ok, out, err) = cli(&[s[0], s[1], "annotate", "cm", "b", "note=hello"], None);
    assert!(ok, "{err}");
    assert_eq!(out, "configmap/b annotated\n");
    let (_, out, _) = cli(&[s[0], s[1], "get", "cm", "b", "-o", "json"], None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["metadata"]["annotations"]["note"], "hello");

    // delete by label selector, then by manifest.
    cli(&[s[0], s[1], "label", "cm", "b", "app=x"], None);
    let (ok, out, err) = cli(&[s[0], s[1], "delete", "cm", "-l", "app=x"], None);
    assert!(ok, "{err}");
    assert_eq!(out, "configmap \"b\" deleted\n");
    let (ok, out, err) = cli(&[s[0], s[1], "delete", "-f", &a_file], None);
    assert!(ok, "{err}");
    assert_eq!(out, "configmap \"a\" deleted\n");
    let (_, out, _) = cli(&[s[0], s[1], "get", "cm", "-o", "name"], None);
    assert_eq!(out, "");

    // delete --wait (the default) waits while finalizers hold the object; --wait=false not.
    let held = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\n";
    let (ok, _, err) = cli(&[s[0], s[1], "apply", "-f", "-"], Some(held));
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&[s[0], s[1], "delete", "cm", "held", "--wait=false"], None);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "configmap/held marked for deletion (waiting on finalizers: example.com/hold)\n"
    );
    let args: Vec<String> = [s[0], s[1], "delete", "cm", "held"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    let waiter = std::thread::spawn(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&a, None)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiter.is_finished(),
        "delete returned while the finalizer still held the object"
    );
    let mut c = cluster.client().await;
    let key = flotilla_api::pb::api::ObjectKey {
        kind: "ConfigMap".into(),
        namespace: "default".into(),
        name: "held".into(),
    };
    let (mut o, _) = c.get(key, false).await.unwrap();
    o.meta_mut().finalizers.clear();
    c.update(o).await.unwrap();
    let (ok, out, err) = waiter.join().unwrap();
    assert!(ok, "{err}");
    assert!(out.ends_with("configmap \"held\" deleted\n"), "{out}");

    // explain and completion need no server.
    let (ok, out, err) = cli(&["explain", "deployment.spec.strategy"], None);
    assert!(ok, "{err}");
    assert!(
        out.contains("FIELD: strategy <DeploymentStrategy>") && out.contains("rollingUpdate"),
        "{out}"
    );
    let (ok, _, err) = cli(&["explain", "pods.spec.bogus"], None);
    assert!(!ok && err.contains("\"bogus\" does not exist"), "{err}");
    let (ok, out, _) = cli(&["completion", "bash"], None);
    assert!(ok && out.contains("_flotilla"), "{out}");

    // The config file: a named cluster replaces --server; its credentials stay when its
    // servers change, and are never printed.
    let conf = tmp.path().join("flotilla-config").display().to_string();
    let unset = ["FLOTILLA_SERVER"];
    let (ok, _, err) = cli_without_env(
        &[
            "--config",
            &conf,
            "config",
            "set-cluster",
            "bare",
            "--servers",
            &servers,
        ],
        None,
        &unset,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli_without_env(&["--config", &conf, "get", "cm"], None, &unset);
    assert!(
        !ok && err.contains("no client certificate") && err.contains("admin.conf"),
        "a cluster without credentials is refused before any connection: {err}"
    );
    std::fs::copy(flotilla_tests::admin_config_path(), &conf).unwrap();
    let (ok, out, err) = cli_without_env(
        &[
            "--config",
            &conf,
            "config",
            "set-cluster",
            "test",
            "--servers",
            &servers,
        ],
        None,
        &unset,
    );
    assert!(ok, "{err}");
    assert!(out.contains("cluster \"test\" set"), "{out}");
    let (ok, out, err) = cli_without_env(
        &["--config", &conf, "apply", "-f", "-"],
        Some(&cm("via-config")),
        &unset,
    );
    assert!(ok, "{err}");
    assert_eq!(out, "configmap/via-config created\n");
    let (ok, out, _) = cli_without_env(&["--config", &conf, "config", "view"], None, &unset);
    assert!(ok && out.contains("current-cluster: test"), "{out}");
    assert!(
        out.contains("client-key-data: REDACTED") && !out.contains("BEGIN"),
        "{out}"
    );
    let (ok, _, err) = cli_without_env(
        &["--config", &conf, "config", "use-cluster", "nope"],
        None,
        &unset,
    );
    assert!(!ok && err.contains("no cluster named \"nope\""), "{err}");
    let missing = tmp.path().join("missing").display().to_string();
    let (ok, _, err) = cli_without_env(&["--config", &missing, "get", "cm"], None, &unset);
    assert!(!ok && err.contains("cannot read config"), "{err}");
}
