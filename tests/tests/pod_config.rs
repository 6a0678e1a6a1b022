//! Proves a pod's configuration reaches its containers, with real processes (three servers, a
//! `flotilla agent`, runc, the local registry): env from a ConfigMap (`configMapKeyRef`,
//! `envFrom` with a prefix), from a Secret and from the pod's fields, with `$(VAR)` expansion
//! in the command; configMap and secret volumes (items, modes, read-only); an emptyDir shared
//! by two containers; a hostPath created on the host. A pod naming a ConfigMap that does not
//! exist waits with `CreateContainerConfigError` and starts once it is created. Deleting the
//! pod removes its volumes.

use std::time::{Duration, Instant};

use flotilla_tests::agent::{main_state, run, running, wait_for, Agent};
use flotilla_tests::{cli, node_tests_possible, Cluster, Opts, Registry};

fn exec(servers: &str, pod: &str, container: &str, script: &str) -> String {
    let (code, out, err) = run(&[
        "--server", servers, "exec", pod, "-c", container, "--", "sh", "-c", script,
    ]);
    assert_eq!(code, Some(0), "exec in {pod}/{container}: {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_and_volumes_come_from_configmaps_secrets_and_the_node() {
    if !node_tests_possible("pod_config") {
        return;
    }
    let registry = Registry::start();
    let cluster = Cluster::start(
        3,
        Opts {
            extra_limits: vec!["heartbeat_period_ms = 500".into()],
            ..Default::default()
        },
    );
    cluster.wait_leader(Duration::from_secs(20)).await;
    let servers = cluster.api_addrs().join(",");
    let dir = tempfile::tempdir().unwrap();
    let (ok, token, err) = cli(&["--server", &servers, "token", "create"], None);
    assert!(ok, "{err}");
    let agent = Agent::start(&servers, Some(token.trim()), dir.path(), &registry.addr);
    let image = registry.image("busybox:test");
    let apply = |text: &str| {
        let (ok, out, err) = cli(&["--server", &servers, "apply", "-f", "-"], Some(text));
        assert!(ok, "apply: {err}{out}");
    };
    let mut c = cluster.client().await;
    let host = dir.path().join("host-dir");

    apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-config\ndata:\n  MODE: fast\n  app.conf: |\n    listen 80\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: app-secret\nstringData:\n  password: hunter2\n",
    );
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: configured
spec:
  nodeName: n1
  terminationGracePeriodSeconds: 3
  volumes:
  - name: cfg
    configMap:
      name: app-config
      items:
      - key: app.conf
        path: conf/app.conf
  - name: pw
    secret:
      secretName: app-secret
      defaultMode: 0400
  - name: shared
    emptyDir: {{}}
  - name: host
    hostPath:
      path: {host}
      type: DirectoryOrCreate
  containers:
  - name: writer
    image: {image}
    command: ["sh", "-c", "echo hi > /shared/x; echo $(MODE) > /host/mode; exec sleep 3600"]
    envFrom:
    - prefix: CFG_
      configMapRef:
        name: app-config
    env:
    - name: MODE
      valueFrom:
        configMapKeyRef:
          name: app-config
          key: MODE
    - name: PASSWORD
      valueFrom:
        secretKeyRef:
          name: app-secret
          key: password
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: GREETING
      value: "hello $(POD_NAME)"
    volumeMounts:
    - name: shared
      mountPath: /shared
    - name: host
      mountPath: /host
    - name: cfg
      mountPath: /etc/app
    - name: pw
      mountPath: /etc/pw
  - name: reader
    image: {image}
    command: ["sh", "-c", "exec sleep 3600"]
    volumeMounts:
    - name: shared
      mountPath: /data
"#,
        host = host.display()
    );
    apply(&pod);
    let (uid, _) = wait_for(&mut c, "configured", "Running", &agent, |s| {
        s.phase == "Running"
            && s.container_statuses.len() == 2
            && s.container_statuses
                .iter()
                .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
    })
    .await;

    let out = exec(
        &servers,
        "configured",
        "writer",
        "echo $MODE $CFG_MODE $PASSWORD $POD_NAME; echo $GREETING",
    );
    assert_eq!(out, "fast fast hunter2 configured\nhello configured\n");
    let out = exec(
        &servers,
        "configured",
        "writer",
        "cat /etc/app/conf/app.conf /etc/pw/password; echo; stat -L -c %a /etc/pw/password; touch /etc/app/new 2>/dev/null || echo read-only",
    );
    assert_eq!(out, "listen 80\nhunter2\n400\nread-only\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, _) = run(&[
            "--server",
            &servers,
            "exec",
            "configured",
            "-c",
            "reader",
            "--",
            "cat",
            "/data/x",
        ]);
        if code == Some(0) {
            assert_eq!(out, "hi\n", "the emptyDir is shared");
            break;
        }
        assert!(Instant::now() < deadline, "the reader never saw /data/x");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        std::fs::read_to_string(host.join("mode")).unwrap(),
        "fast\n",
        "the hostPath was created and written through"
    );

    // A ConfigMap that does not exist yet: CreateContainerConfigError, then it starts.
    let waiting = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: waits\nspec:\n  nodeName: n1\n  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"echo $LATE; exec sleep 3600\"]\n    env:\n    - name: LATE\n      valueFrom:\n        configMapKeyRef:\n          name: late-config\n          key: v\n"
    );
    apply(&waiting);
    let (_, st) = wait_for(&mut c, "waits", "waiting on its ConfigMap", &agent, |s| {
        main_state(s)
            .waiting
            .is_some_and(|w| w.reason == "CreateContainerConfigError")
    })
    .await;
    let w = main_state(&st).waiting.unwrap();
    assert_eq!(w.message, "configmap \"late-config\" not found");
    apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: late-config\ndata:\n  v: arrived\n");
    wait_for(&mut c, "waits", "Running", &agent, running).await;
    let (ok, out, err) = cli(&["--server", &servers, "logs", "waits"], None);
    assert!(ok, "{err}");
    assert_eq!(out, "arrived\n");

    // Deleting the pod removes its volumes (the hostPath stays: it belongs to the host).
    let (ok, _, err) = cli(&["--server", &servers, "delete", "pod", "configured"], None);
    assert!(ok, "{err}");
    let pod_dir = agent.dir.join("pods").join(&uid);
    let deadline = Instant::now() + Duration::from_secs(60);
    while pod_dir.exists() {
        assert!(
            Instant::now() < deadline,
            "{} left behind\n{}",
            pod_dir.display(),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(host.join("mode").exists());
}
