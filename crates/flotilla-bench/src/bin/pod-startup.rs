//! pod-startup: how long a pod takes from create to Running on one agent with its image
//! already on the node (issue 4's benchmark; Kubernetes' SLO is p99 ≤ 5 s). It starts three
//! servers, Debian's `docker-registry` on loopback, and one `flotilla agent` with runc, creates
//! `--pods` pods bound to the agent's node at `--rate` pods per second (0: all at once), and
//! takes each pod's latency from just before its create call to the first watch event that shows
//! it Running. Needs root, runc, docker-registry and skopeo. Everything it starts is stopped.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use flotilla_api::pb::api::object::Body;
use flotilla_api::pb::api::{EventType, WatchRequest};
use flotilla_tests::{cli, flotilla_bin, Cluster, Opts, Registry};

#[derive(Parser)]
#[command(about = "Pod startup latency on one agent, image cached")]
struct Args {
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Pods created per second; 0 creates them all at once.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Give up waiting for pods to run after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

struct Agent {
    child: Child,
    dir: std::path::PathBuf,
}

fn runc_ids(dir: &std::path::Path) -> Vec<String> {
    Command::new("runc")
        .arg("--root")
        .arg(dir.join("runtime/runc"))
        .args(["list", "-q"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for id in runc_ids(&self.dir) {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(self.dir.join("runtime/runc"))
                .args(["delete", "--force", &id])
                .output();
        }
        for m in flotilla_runtime::rootfs::mounts_under(&self.dir) {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
    }
}

fn manifest(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    bench: pod-startup\nspec:\n  nodeName: bench-node\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: main\n    image: {image}\n    imagePullPolicy: IfNotPresent\n    command: [\"sleep\", \"3600\"]\n"
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !nix::unistd::Uid::effective().is_root() {
        bail!("pod-startup needs root (runc, mounts, cgroups)");
    }
    let registry = Registry::start();
    let cluster = Cluster::start(3, Opts::default());
    cluster.wait_leader(Duration::from_secs(20)).await;
    let servers = cluster.api_addrs().join(",");
    let (ok, token, err) = cli(&["--server", &servers, "token", "create"], None);
    if !ok {
        bail!("token create: {err}");
    }
    let dir = tempfile::tempdir()?;
    let log = std::fs::File::create(dir.path().join("agent.log"))?;
    let agent = Agent {
        child: Command::new(flotilla_bin())
            .args(["agent", "--join", &servers, "--token", token.trim()])
            .args([
                "--name",
                "bench-node",
                "--insecure-registry",
                &registry.addr,
            ])
            .arg("--data-dir")
            .arg(dir.path().join("node"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start the agent")?,
        dir: dir.path().join("node"),
    };
    let image = registry.image("busybox:test");
    let mut c = cluster.client().await;
    let api = |e: flotilla_api::ApiError| anyhow::anyhow!("{e}");

    // Pods seen Running, from a watch started before the first create.
    let from = c.list("Pod", "default", "", false).await.map_err(api)?.1;
    let mut stream = c
        .watch(WatchRequest {
            kind: "Pod".into(),
            namespace: "default".into(),
            start_revision: from,
            ..Default::default()
        })
        .await
        .map_err(api)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    tokio::spawn(async move {
        while let Ok(Some(ev)) = stream.message().await {
            if ev.r#type == EventType::Bookmark as i32 {
                continue;
            }
            let Some(o) = ev.object else { continue };
            let running = match &o.body {
                Some(Body::Pod(p)) => p.status.as_ref().is_some_and(|s| {
                    s.phase == "Running"
                        && s.container_statuses
                            .iter()
                            .all(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
                }),
                _ => false,
            };
            if running && tx.send((o.meta().name.clone(), Instant::now())).is_err() {
                return;
            }
        }
    });
    let create = |name: String| {
        flotilla_api::manifest::parse_manifests("bench", &manifest(&name, &image))
            .map(|mut v| v.remove(0).object)
    };

    // Warm-up: the image is pulled once, so the runs measure startup with it cached.
    c.create(create("warm-up".into())?).await.map_err(api)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some((n, _))) if n == "warm-up" => break,
            _ if Instant::now() > deadline => bail!("the warm-up pod never ran"),
            _ => {}
        }
    }

    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut running: HashMap<String, Instant> = HashMap::new();
    let t_start = Instant::now();
    for i in 0..args.pods {
        if args.rate > 0.0 {
            let due = t_start + Duration::from_secs_f64(i as f64 / args.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let name = format!("bench-{i:04}");
        let obj = create(name.clone())?;
        let t0 = Instant::now();
        c.create(obj).await.map_err(api)?;
        created.insert(name, t0);
        while let Ok((n, t)) = rx.try_recv() {
            running.entry(n).or_insert(t);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    while created.keys().any(|n| !running.contains_key(n)) {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some((n, t))) => {
                running.entry(n).or_insert(t);
            }
            _ if Instant::now() > deadline => break,
            _ => {}
        }
    }
    let mut lat: Vec<f64> = created
        .iter()
        .filter_map(|(n, t0)| {
            running
                .get(n)
                .map(|t| t.duration_since(*t0).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let missing = created.len() - lat.len();
    println!("| pods | rate (pods/s) | p50 ms | p90 ms | p99 ms | max ms | never Running |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
        args.pods,
        if args.rate > 0.0 {
            format!("{}", args.rate)
        } else {
            "all at once".into()
        },
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(f64::NAN),
        missing
    );

    // Tear down: delete the pods so the agent stops its containers itself (bounded wait).
    let _ = cli(
        &[
            "--server",
            &servers,
            "delete",
            "pods",
            "-l",
            "bench=pod-startup",
            "--wait=false",
        ],
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !runc_ids(&agent.dir).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(agent);
    drop(cluster);
    drop(registry);
    Ok(())
}
