//! flotilla-bench: write throughput and latency of a local three-server Flotilla cluster with
//! fsync on, side by side with a three-member etcd cluster on the same machine, plus the
//! disk's raw fsync rate as the physical bound. Results go to stdout as a markdown table.
//!
//! It starts real processes on 127.0.0.1 only, runs each load for a bounded time, and stops
//! everything it started.

// glibc malloc showed up as ~25 % of server CPU under write load (fragmentation and
// trimming); mimalloc keeps per-thread free lists and returns memory lazily.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use flotilla_api::pb::api::object_service_client::ObjectServiceClient;
use flotilla_api::pb::api::CreateRequest;
use flotilla_tests::{configmap, Cluster, Opts};
use tonic::transport::Channel;

mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}
use etcdpb::kv_client::KvClient;

#[derive(Parser)]
#[command(about = "Flotilla vs etcd write benchmark (three servers each, loopback, fsync on)")]
struct Args {
    /// Seconds of load per system and concurrency.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    clients: Vec<usize>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// The etcd binary (Debian: apt-get install -y etcd-server).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: String,
    /// Skip etcd (when it is not installed); the table then says so.
    #[arg(long)]
    no_etcd: bool,
}

/// Connections shared by the clients of one run.
const MAX_CONNECTIONS: usize = 16;

struct Run {
    system: &'static str,
    clients: usize,
    writes: usize,
    errors: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Run `clients` loops of `op` for `dur`; collect per-write latency in microseconds.
async fn drive<F, Fut>(system: &'static str, clients: usize, dur: Duration, op: F) -> Run
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                if op(c, i).await {
                    lat.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Run {
        system,
        clients,
        writes: all.len(),
        errors,
        secs,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
    }
}

/// Synchronous 4 KiB writes, each followed by fdatasync, for two seconds.
fn raw_fsync_rate(dir: &std::path::Path) -> anyhow::Result<f64> {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = vec![0xA5u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&block)?;
        f.sync_data()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

async fn bench_flotilla(args: &Args) -> anyhow::Result<Vec<Run>> {
    // Server defaults where they matter for throughput (snapshot interval as etcd's).
    let opts = Opts {
        snapshot_logs_since_last: 100_000,
        ..Opts::default()
    };
    let cluster = Cluster::start(3, opts);
    cluster.wait_leader(Duration::from_secs(30)).await;
    let mut channels = Vec::new();
    for (i, addr) in cluster
        .api_addrs()
        .iter()
        .cycle()
        .take(MAX_CONNECTIONS)
        .enumerate()
    {
        // Servers speak mutual TLS only (etcd below runs without TLS: its default).
        let ch = Channel::from_shared(format!("https://{addr}"))?
            .tls_config(flotilla_client::client_tls(&flotilla_tests::admin().0))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to flotilla server {i} at {addr}"))?;
        channels.push(ch);
    }
    let value = "v".repeat(args.value_bytes);
    let mut runs = Vec::new();
    for &clients in &args.clients {
        let chans = channels.clone();
        let value = value.clone();
        let run = drive(
            "flotilla",
            clients,
            Duration::from_secs(args.seconds),
            move |c, i| {
                let mut client = ObjectServiceClient::new(chans[c % chans.len()].clone());
                let obj = configmap(&format!("b{clients}-{c}-{i}"), &[("v", value.as_str())]);
                async move {
                    client
                        .create(CreateRequest { object: Some(obj) })
                        .await
                        .is_ok()
                }
            },
        )
        .await;
        runs.push(run);
    }
    drop(cluster);
    Ok(runs)
}

struct Etcd {
    children: Vec<Child>,
    _dir: tempfile::TempDir,
    endpoints: Vec<String>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_etcd(bin: &str) -> anyhow::Result<Etcd> {
    let dir = tempfile::tempdir()?;
    let mut peers = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        peers.push(free_port()?);
        clients.push(free_port()?);
    }
    let initial: Vec<String> = (0..3)
        .map(|i| format!("e{i}=http://127.0.0.1:{}", peers[i]))
        .collect();
    let mut children = Vec::new();
    for i in 0..3 {
        let log = std::fs::File::create(dir.path().join(format!("etcd-{i}.log")))?;
        let child = Command::new(bin)
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(dir.path().join(format!("e{i}")))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", clients[i]),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", clients[i]),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", peers[i]),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", peers[i]),
            ])
            .args(["--initial-cluster", &initial.join(",")])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "flotilla-bench",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {bin} (apt-get install -y etcd-server)"))?;
        children.push(child);
    }
    Ok(Etcd {
        children,
        _dir: dir,
        endpoints: clients
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect(),
    })
}

async fn bench_etcd(args: &Args) -> anyhow::Result<Vec<Run>> {
    let etcd = start_etcd(&args.etcd)?;
    // Wait (bounded) until the cluster takes a write.
    let deadline = Instant::now() + Duration::from_secs(30);
    let put = |key: &str, value: &str| etcdpb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    };
    loop {
        if let Ok(ch) = Channel::from_shared(etcd.endpoints[0].clone())?
            .connect()
            .await
        {
            if KvClient::new(ch)
                .put(put("/bench/ready", "1"))
                .await
                .is_ok()
            {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("etcd did not become writable within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut kvs = Vec::new();
    for ep in etcd.endpoints.iter().cycle().take(MAX_CONNECTIONS) {
        kvs.push(KvClient::new(
            Channel::from_shared(ep.clone())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        ));
    }
    let value = "v".repeat(args.value_bytes);
    let mut runs = Vec::new();
    for &clients in &args.clients {
        let kvs = kvs.clone();
        let value = value.clone();
        let run = drive(
            "etcd 3.4",
            clients,
            Duration::from_secs(args.seconds),
            move |c, i| {
                let mut kv = kvs[c % kvs.len()].clone();
                let req = put(&format!("/bench/{clients}/{c}/{i}"), &value);
                async move { kv.put(req).await.is_ok() }
            },
        )
        .await;
        runs.push(run);
    }
    drop(etcd);
    Ok(runs)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let probe_dir = tempfile::tempdir()?;
    let fsync = raw_fsync_rate(probe_dir.path())?;
    let mut runs = bench_flotilla(&args).await?;
    let etcd_ran = if args.no_etcd {
        false
    } else {
        runs.extend(bench_etcd(&args).await?);
        true
    };
    println!("raw fsync rate of the disk (4 KiB write + fdatasync, one thread): {fsync:.0}/s\n");
    println!("| system | clients | writes/s | p50 ms | p99 ms | writes | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &runs {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {} |",
            r.system,
            r.clients,
            r.writes as f64 / r.secs,
            r.p50_ms,
            r.p99_ms,
            r.writes,
            r.errors
        );
    }
    if !etcd_ran {
        println!("\netcd was not run (--no-etcd)");
    }
    Ok(())
}
