//! Proves the node runtime with real parts: images pulled with oci-client from Debian's
//! `docker-registry` on loopback (built by `cluster-configs/local-registry.sh`), layers unpacked
//! with whiteouts (gzip and zstd) onto overlayfs, bundles run by real `runc` through the
//! `flotilla runtime-shim`: output reaches the CRI log, exit codes and signals are recorded,
//! memory limits OOM-kill and are reported, a pod's containers share one network namespace,
//! graceful stop escalates to SIGKILL, a new runtime instance re-adopts running containers, and
//! removal leaves no mount, cgroup, bundle or runc state behind. Missing images and tags fail
//! with the registry's reason. Image GC removes unused images and the layers only they used.
//! Needs root, runc, docker-registry and skopeo (CI installs them).

use flotilla_runtime::bundle::{resolve_args, BindMount, ContainerConfig, Resources};
use flotilla_runtime::{
    cgroup, netns, rootfs, Containers, ImageStore, PullPolicy, RegistryConfig, RuntimeConfig,
};
use flotilla_tests::{flotilla_bin, node_tests_possible, Registry};
use std::path::Path;
use std::time::Duration;

struct Node {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    images: ImageStore,
    containers: Containers,
    cgroup_parent: String,
}

impl Node {
    fn new(registry: &Registry) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let images = ImageStore::open(
            root.join("images"),
            &RegistryConfig {
                insecure: vec![registry.addr.clone()],
                ..Default::default()
            },
        )
        .unwrap();
        let containers =
            Containers::open(RuntimeConfig::new(root.join("rt"), flotilla_bin())).unwrap();
        let cgroup_parent = format!(
            "/flotilla-test/{}",
            root.file_name().unwrap().to_string_lossy()
        );
        Node {
            _dir: dir,
            root,
            images,
            containers,
            cgroup_parent,
        }
    }

    fn config(&self, id: &str, args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            id: id.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            hostname: id.into(),
            cgroups_path: format!("{}/{id}", self.cgroup_parent),
            resources: Resources::from_kubernetes(Some(100), None, None, Some(256)),
            ..Default::default()
        }
    }

    async fn run(&self, cfg: &ContainerConfig, image: &str) -> i64 {
        let rec = self
            .images
            .ensure(image, PullPolicy::IfNotPresent)
            .await
            .unwrap();
        let pid = self
            .containers
            .create(cfg, &rec, &self.images)
            .await
            .unwrap();
        self.containers.start(&cfg.id).await.unwrap();
        pid
    }

    async fn wait_exit(&self, id: &str) -> flotilla_runtime::ContainerStatus {
        for _ in 0..200 {
            let s = self.containers.status(id).await.unwrap();
            if s.exit.is_some() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{id} did not exit within 10 s");
    }

    fn log(&self, id: &str) -> String {
        self.containers
            .log_files(id)
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect()
    }

    /// Nothing of the node's containers is left: mounts, cgroups, bundles, runc state.
    async fn assert_clean(&self) {
        assert_eq!(rootfs::mounts_under(&self.root), Vec::<String>::new());
        cgroup::remove(&self.cgroup_parent).unwrap();
        assert!(
            cgroup::existing(&self.cgroup_parent).is_empty(),
            "cgroups left behind"
        );
        let bundles: Vec<_> = std::fs::read_dir(self.root.join("rt/containers"))
            .unwrap()
            .collect();
        assert!(bundles.is_empty(), "bundles left behind: {bundles:?}");
        assert!(self.containers.runtime().list().await.unwrap().is_empty());
    }
}

async fn wait_log(node: &Node, id: &str, text: &str) {
    for _ in 0..200 {
        if node.log(id).contains(text) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} never logged {text:?}: {}", node.log(id));
}

/// A failed test must not leave containers, mounts or cgroups on the machine.
impl Drop for Node {
    fn drop(&mut self) {
        let rt = self.root.join("rt");
        if let Ok(rd) = std::fs::read_dir(rt.join("containers")) {
            for e in rd.flatten() {
                let _ = std::process::Command::new("runc")
                    .arg("--root")
                    .arg(rt.join("runc"))
                    .args(["delete", "--force"])
                    .arg(e.file_name())
                    .output();
                let _ = rootfs::unmount(&e.path().join("rootfs"));
            }
        }
        for m in rootfs::mounts_under(&self.root) {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = cgroup::remove(&self.cgroup_parent);
        // Shared by concurrent runs: removed only when empty, which rmdir checks.
        for d in cgroup::existing("/flotilla-test") {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_containers_logs_limits_and_cleanup() {
    if !node_tests_possible("node_runtime") {
        return;
    }
    let registry = Registry::start();
    let node = Node::new(&registry);

    // Pull: a record with the image's config; a second ensure is served locally.
    let busybox = registry.image("busybox:test");
    let rec = node
        .images
        .ensure(&busybox, PullPolicy::IfNotPresent)
        .await
        .unwrap();
    assert_eq!(rec.reference, busybox);
    assert_eq!(rec.diff_ids.len(), 1);
    assert_eq!(rec.config.as_ref().unwrap().cmd, vec!["sh".to_string()]);
    let again = node
        .images
        .ensure(&busybox, PullPolicy::Never)
        .await
        .unwrap();
    assert_eq!(again.manifest_digest, rec.manifest_digest);

    // Missing repository and missing tag: ErrImagePull with the registry's reason.
    for missing in [registry.image("nosuch:1"), registry.image("busybox:nope")] {
        let err = node
            .images
            .ensure(&missing, PullPolicy::IfNotPresent)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "ErrImagePull");
        let msg = err.to_string();
        assert!(
            msg.contains(&missing) && msg.to_lowercase().contains("unknown"),
            "{msg}"
        );
    }
    let err = node
        .images
        .ensure(&registry.image("nosuch:1"), PullPolicy::Never)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ErrImageNeverPull", "{err}");

    // Whiteouts and zstd: the layered image's root filesystem as overlayfs shows it.
    let layered = node
        .images
        .ensure(&registry.image("layered:latest"), PullPolicy::Always)
        .await
        .unwrap();
    assert_eq!(layered.diff_ids.len(), 3);
    let mnt = node.root.join("layered-check");
    for d in ["rootfs", "upper", "work"] {
        std::fs::create_dir_all(mnt.join(d)).unwrap();
    }
    let lower: Vec<_> = layered
        .diff_ids
        .iter()
        .map(|d| {
            node.images
                .layer_dir(&flotilla_runtime::digest::Digest::parse(d).unwrap())
        })
        .collect();
    rootfs::mount_overlay(
        &lower,
        &mnt.join("upper"),
        &mnt.join("work"),
        &mnt.join("rootfs"),
    )
    .unwrap();
    let r = mnt.join("rootfs");
    let keep = std::fs::read_to_string(r.join("data/keep.txt"));
    let removed = r.join("data/remove.txt").exists();
    let opaque: Vec<String> = std::fs::read_dir(r.join("opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    rootfs::unmount(&r).unwrap();
    assert_eq!(keep.unwrap(), "keep\n");
    assert!(!removed, "whiteout did not hide data/remove.txt");
    assert_eq!(opaque, vec!["new.txt".to_string()]);

    // Output, exit code and the image's command resolution.
    let args = resolve_args(
        rec.config.as_ref().unwrap(),
        &["sh".into(), "-c".into()],
        &["echo hello; echo oops >&2; exit 3".into()],
    );
    let mut cfg = node.config("echo", &[]);
    cfg.args = args;
    node.run(&cfg, &busybox).await;
    let s = node.wait_exit("echo").await;
    let exit = s.exit.unwrap();
    assert_eq!((exit.exit_code, exit.signal), (3, 0));
    assert!(!s.oom_killed);
    let log = node.log("echo");
    assert!(
        log.contains(" stdout F hello\n") && log.contains(" stderr F oops\n"),
        "{log}"
    );
    node.containers.remove("echo").await.unwrap();

    // A signal from outside the container: recorded as 128 + signal.
    let cfg = node.config("sleeper", &["sleep", "600"]);
    let pid = node.run(&cfg, &busybox).await;
    assert_eq!(
        node.containers.status("sleeper").await.unwrap().status,
        "running"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let exit = node.wait_exit("sleeper").await.exit.unwrap();
    assert_eq!((exit.exit_code, exit.signal), (137, 9));
    node.containers.remove("sleeper").await.unwrap();

    // Over the memory limit: OOM-killed and reported as such.
    let mut cfg = node.config(
        "hog",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=4"],
    );
    cfg.resources.memory_limit_bytes = Some(16 << 20);
    node.run(&cfg, &busybox).await;
    let s = node.wait_exit("hog").await;
    assert!(
        s.oom_killed,
        "not reported OOM-killed: {s:?} log: {}",
        node.log("hog")
    );
    assert_eq!(s.exit.unwrap().exit_code, 137);
    node.containers.remove("hog").await.unwrap();

    // One pod network namespace shared by two containers: a server and a client over lo.
    let ns = node.root.join("netns/pod-a");
    netns::create(&ns).unwrap();
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "from the pod\n").unwrap();
    let mut server = node.config("pod-a_web", &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    server.netns = Some(ns.clone());
    server.mounts.push(BindMount {
        source: www.path().to_path_buf(),
        destination: "/www".into(),
        readonly: true,
    });
    node.run(&server, &busybox).await;
    let mut client = node.config(
        "pod-a_client",
        &["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 0.2; done; exit 1"],
    );
    client.netns = Some(ns.clone());
    node.run(&client, &busybox).await;
    let s = node.wait_exit("pod-a_client").await;
    assert_eq!(
        s.exit.unwrap().exit_code,
        0,
        "client log: {}",
        node.log("pod-a_client")
    );
    assert!(node.log("pod-a_client").contains("stdout F from the pod"));

    // A fresh runtime instance (an agent restart) finds the running server again.
    let adopted =
        Containers::open(RuntimeConfig::new(node.root.join("rt"), flotilla_bin())).unwrap();
    let listed = adopted.runtime().list().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|c| c.id == "pod-a_web" && c.status == "running"),
        "{listed:?}"
    );

    // Graceful stop: a process that handles SIGTERM exits by itself; one that does not (httpd
    // as the namespace's PID 1 ignores it, as the kernel makes unhandled signals to PID 1) gets
    // SIGKILL after the grace period.
    let mut graceful = node.config(
        "pod-a_graceful",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done",
        ],
    );
    graceful.netns = Some(ns.clone());
    node.run(&graceful, &busybox).await;
    wait_log(&node, "pod-a_graceful", "ready").await;
    adopted
        .stop("pod-a_graceful", Duration::from_secs(10))
        .await
        .unwrap();
    let exit = node.wait_exit("pod-a_graceful").await.exit.unwrap();
    assert_eq!((exit.exit_code, exit.signal), (0, 0), "{exit:?}");
    adopted
        .stop("pod-a_web", Duration::from_millis(500))
        .await
        .unwrap();
    let exit = node.wait_exit("pod-a_web").await.exit.unwrap();
    assert_eq!(exit.signal, 9, "{exit:?}");
    let mut stubborn = node.config(
        "pod-a_stubborn",
        &[
            "sh",
            "-c",
            "trap '' TERM; echo ready; while true; do sleep 1; done",
        ],
    );
    stubborn.netns = Some(ns.clone());
    node.run(&stubborn, &busybox).await;
    wait_log(&node, "pod-a_stubborn", "ready").await;
    let t = std::time::Instant::now();
    adopted
        .stop("pod-a_stubborn", Duration::from_millis(500))
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(500));
    let exit = node.wait_exit("pod-a_stubborn").await.exit.unwrap();
    assert_eq!(exit.signal, 9, "{exit:?}");

    for id in [
        "pod-a_web",
        "pod-a_client",
        "pod-a_graceful",
        "pod-a_stubborn",
    ] {
        adopted.remove(id).await.unwrap();
    }
    netns::remove(&ns).unwrap();
    assert!(!Path::new(&ns).exists());
    node.assert_clean().await;

    // Image GC: keeping busybox removes the layered image and the layers only it used; the
    // shared busybox layer stays.
    let report = node
        .images
        .gc(&[busybox.clone()].into_iter().collect())
        .await
        .unwrap();
    assert_eq!(report.images, 1, "{report:?}");
    assert_eq!(report.layers, 2, "{report:?}");
    node.images
        .ensure(&busybox, PullPolicy::Never)
        .await
        .unwrap();
    let gone = node
        .images
        .ensure(&registry.image("layered:latest"), PullPolicy::Never)
        .await
        .unwrap_err();
    assert_eq!(gone.reason(), "ErrImageNeverPull");
}
