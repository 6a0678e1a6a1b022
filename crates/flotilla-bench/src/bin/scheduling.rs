//! scheduling: the scheduler's throughput against a real three-server cluster (issue 5's
//! benchmark). `--nodes` hollow nodes (as kubemark's) join with a token and keep real agent
//! sessions — mutual-TLS QUIC, registration, heartbeats that renew their Leases, the
//! assignment stream — through `flotilla-agent`'s own session code, but run no containers.
//! Then `--pods` pods are created in batches by `--clients` concurrent clients; a watch
//! started before the first create takes each pod's time from just before its create call
//! to the first event that shows it bound. Last, the server holding the scheduler Lease is
//! SIGKILLed with pods waiting, and the time until binding resumes is measured. Everything it
//! starts is stopped.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use flotilla_api::pb::api::object::Body;
use flotilla_api::pb::api::{write::Op, EventType, Object, WatchRequest, Write};
use flotilla_tests::{cli, Cluster, Opts};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "Scheduling throughput with hollow nodes")]
struct Args {
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    #[arg(long, default_value_t = 150_000)]
    pods: usize,
    /// Concurrent clients creating pods, 1000 per batch.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Hollow nodes joining at once.
    #[arg(long, default_value_t = 64)]
    join_concurrency: usize,
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// Pods created after the scheduler's holder is killed.
    #[arg(long, default_value_t = 2000)]
    failover_pods: usize,
    /// The role Leases' duration (the servers' `role_lease_duration_ms`): how long a dead
    /// scheduler holds its role before another server takes it.
    #[arg(long, default_value_t = 15_000)]
    role_lease_ms: u64,
    /// Hold the scheduler's Lease (as a client, at a new epoch) while the pods are created,
    /// then free it: measures how fast a new holder drains a queue of `--pods`, without the
    /// creates competing for the same cores and log.
    #[arg(long)]
    queued: bool,
}

fn scheduler_lease_key() -> flotilla_api::ObjectKey {
    flotilla_api::ObjectKey {
        kind: "Lease".into(),
        namespace: "flotilla-system".into(),
        name: "scheduler".into(),
    }
}

/// Set the scheduler Lease's holder through the API, as a contender would: conditional on the
/// resourceVersion read, taking it at a new epoch (so no server's fenced binds apply while
/// the bench holds it). An empty holder frees it for the servers to take at once.
async fn set_scheduler_holder(
    c: &mut flotilla_client::Client,
    holder: &str,
    duration_s: i32,
) -> anyhow::Result<()> {
    for _ in 0..20 {
        let (mut o, _) = c
            .get(scheduler_lease_key(), false)
            .await
            .map_err(|e| anyhow::anyhow!("reading the scheduler Lease: {e}"))?;
        if let Some(Body::Lease(l)) = &mut o.body {
            let spec = l.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(holder.to_string());
            spec.lease_duration_seconds = Some(duration_s);
            spec.renew_time =
                Some(humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string());
            if !holder.is_empty() {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        match c.update(o).await {
            Ok(_) => return Ok(()),
            // A server renewed it meanwhile: read again.
            Err(e) if e.code == flotilla_api::ErrorCode::Conflict as i32 => continue,
            Err(e) => bail!("writing the scheduler Lease: {e}"),
        }
    }
    bail!("the scheduler Lease kept changing under the bench")
}

const BATCH: usize = 1000;

fn pod(name: &str) -> Object {
    let text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{bench: scheduling}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}\n"
    );
    let mut o = flotilla_api::manifest::parse_manifests("bench", &text)
        .expect("bench pod")
        .remove(0)
        .object;
    flotilla_api::kinds::apply_defaults(&mut o);
    o
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A hollow node: the agent's join and session, with nothing running its pods.
async fn hollow(
    name: String,
    servers: Vec<SocketAddr>,
    token: String,
    dir: std::path::PathBuf,
    join: Arc<tokio::sync::Semaphore>,
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut cfg = flotilla_agent::AgentConfig::new(servers, dir, name.clone());
    // One UDP socket for all hollow nodes: an endpoint each costs megabytes of buffers.
    cfg.shared_endpoint = Some(endpoint);
    cfg.token = Some(token);
    // No runtime: the Node reports "runtime://unknown" and nothing is ever run.
    cfg.runtime = std::path::PathBuf::from("/nonexistent/hollow-runtime");
    cfg.join_rounds = 20;
    let id = {
        let _permit = join.acquire().await?;
        flotilla_agent::join::ensure_identity(&cfg, &shutdown)
            .await
            .with_context(|| format!("{name} joining"))?
    };
    let (_status_tx, status_rx) = tokio::sync::mpsc::channel(1);
    let mut links = flotilla_agent::session::Links {
        desired: Arc::new(Mutex::new(flotilla_agent::pods::Desired::default())),
        changed: Arc::new(tokio::sync::Notify::new()),
        status_rx,
        latest: Default::default(),
        server: Default::default(),
    };
    flotilla_agent::session::run(&cfg, &id, &mut links, shutdown)
        .await
        .with_context(|| format!("{name} session"))?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cluster = Cluster::start(
        3,
        Opts {
            extra_limits: vec![
                "max_agent_connections = 20000".into(),
                // The hollow nodes' Leases are renewed through their heartbeats, as real ones.
                "heartbeat_period_ms = 5000".into(),
                format!("role_lease_duration_ms = {}", args.role_lease_ms),
                format!(
                    "role_retry_ms = {}",
                    (args.role_lease_ms / 6).clamp(100, 2000)
                ),
            ],
            ..Default::default()
        },
    );
    cluster.wait_leader(Duration::from_secs(20)).await;
    let servers = cluster.api_addrs();
    let (ok, token, err) = cli(
        &[
            "--server",
            &servers.join(","),
            "token",
            "create",
            "--ttl",
            "2h",
        ],
        None,
    );
    if !ok {
        bail!("token create: {err}");
    }
    let token = token.trim().to_string();
    let agent_addrs: Vec<SocketAddr> = servers
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let join = Arc::new(tokio::sync::Semaphore::new(args.join_concurrency.max(1)));
    let endpoint = quinn::Endpoint::client("0.0.0.0:0".parse()?)?;
    let t_join = Instant::now();
    let mut agents = tokio::task::JoinSet::new();
    for i in 0..args.nodes {
        agents.spawn(hollow(
            format!("hollow-{i:05}"),
            agent_addrs.clone(),
            token.clone(),
            dir.path().join(format!("hollow-{i:05}")),
            join.clone(),
            endpoint.clone(),
            shutdown.clone(),
        ));
    }
    let mut c = cluster.client().await;
    let api = |e: flotilla_api::ApiError| anyhow::anyhow!("{e}");
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    loop {
        let (nodes, _) = c.list("Node", "", "", false).await.map_err(api)?;
        eprint!("\r{} of {} nodes registered", nodes.len(), args.nodes);
        if nodes.len() >= args.nodes {
            break;
        }
        if let Some(Ok(Err(e))) = agents.try_join_next() {
            bail!("a hollow node failed: {e:#}");
        }
        if Instant::now() > deadline {
            bail!("only {} nodes registered", nodes.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(" in {:.1} s", t_join.elapsed().as_secs_f64());

    if args.queued {
        set_scheduler_holder(&mut c, "bench-hold", 3600).await?;
        eprintln!("scheduler Lease held by the bench while the pods are created");
    }

    // Bound pods, from a watch started before the first create.
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
            let bound = match &o.body {
                Some(Body::Pod(p)) => p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty()),
                _ => false,
            };
            if bound && tx.send((o.meta().name.clone(), Instant::now())).is_err() {
                return;
            }
        }
    });

    // Create: `clients` tasks, each sending batches of 1000.
    let created: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t_create = Instant::now();
    let mut creators = tokio::task::JoinSet::new();
    for _ in 0..args.clients.max(1) {
        let (created, next) = (created.clone(), next.clone());
        let mut c = cluster.client().await;
        let total = args.pods;
        creators.spawn(async move {
            loop {
                let start = next.fetch_add(BATCH, std::sync::atomic::Ordering::SeqCst);
                if start >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let names: Vec<String> = (start..(start + BATCH).min(total))
                    .map(|i| format!("p-{i:06}"))
                    .collect();
                let writes = names
                    .iter()
                    .map(|n| Write {
                        op: Some(Op::Create(pod(n))),
                        fence: None,
                    })
                    .collect();
                let t0 = Instant::now();
                if let Ok(mut m) = created.lock() {
                    for n in &names {
                        m.insert(n.clone(), t0);
                    }
                }
                let r = c.batch(writes).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                if let Some(e) = r.results.iter().find_map(|r| match &r.result {
                    Some(flotilla_api::pb::api::write_result::Result::Error(e)) => Some(e),
                    _ => None,
                }) {
                    bail!("create refused: {}", e.message);
                }
            }
        });
    }
    while let Some(r) = creators.join_next().await {
        r??;
    }
    let create_s = t_create.elapsed().as_secs_f64();
    let t_release = Instant::now();
    if args.queued {
        set_scheduler_holder(&mut c, "", 1).await?;
    }
    let mut bound: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    while bound.len() < args.pods {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some((n, t))) => {
                bound.entry(n).or_insert(t);
            }
            _ if Instant::now() > deadline => break,
            _ => {}
        }
        if bound.len().is_multiple_of(10_000) {
            eprint!("\r{} of {} pods bound", bound.len(), args.pods);
        }
    }
    eprintln!();
    let first_bound = bound.values().min().copied();
    let created = created.lock().map(|m| m.clone()).unwrap_or_default();
    let last_bound = bound.values().max().copied().unwrap_or(t_create);
    // Queued: from the first bind (a server took the freed Lease) to the last.
    let total_s = match (args.queued, first_bound) {
        (true, Some(f)) => last_bound.duration_since(f).as_secs_f64(),
        _ => last_bound.duration_since(t_create).as_secs_f64(),
    };
    let mut lat: Vec<f64> = created
        .iter()
        .filter_map(|(n, t0)| {
            bound
                .get(n)
                .map(|t| t.duration_since(*t0).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));

    // Failover: kill the scheduler's holder with pods waiting.
    let holder = {
        let (o, _) = c.get(scheduler_lease_key(), false).await.map_err(api)?;
        match o.body {
            Some(Body::Lease(l)) => l.spec.and_then(|s| s.holder_identity).and_then(|h| {
                h.strip_prefix("server-")
                    .and_then(|n| n.parse::<u64>().ok())
            }),
            _ => None,
        }
    };
    let mut failover = None;
    if let Some(h) = holder {
        cluster.kill(h);
        let t_kill = Instant::now();
        let survivors: Vec<String> = cluster
            .running()
            .iter()
            .map(|id| cluster.servers[id].api.clone())
            .collect();
        let mut c2 = flotilla_tests::connect(survivors).await;
        // A watch on the survivors (the first one may have been served by the killed server).
        let from = c2
            .list("Pod", "default", "bench=none", false)
            .await
            .map_err(api)?
            .1;
        let mut stream = c2
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
                let Some(o) = ev.object else { continue };
                let bound = match &o.body {
                    Some(Body::Pod(p)) => p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty()),
                    _ => false,
                };
                if bound && tx.send((o.meta().name.clone(), Instant::now())).is_err() {
                    return;
                }
            }
        });
        let names: Vec<String> = (0..args.failover_pods)
            .map(|i| format!("after-kill-{i:05}"))
            .collect();
        for chunk in names.chunks(BATCH) {
            let writes = chunk
                .iter()
                .map(|n| Write {
                    op: Some(Op::Create(pod(n))),
                    fence: None,
                })
                .collect();
            c2.batch(writes).await.map_err(api)?;
        }
        let mut first = None;
        let mut last = None;
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while n < names.len() && Instant::now() < deadline {
            if let Ok(Some((name, t))) =
                tokio::time::timeout(Duration::from_secs(1), rx.recv()).await
            {
                if name.starts_with("after-kill-") {
                    first.get_or_insert(t);
                    last = Some(t);
                    n += 1;
                }
            }
        }
        failover = Some((
            h,
            first.map(|t| t.duration_since(t_kill).as_secs_f64() * 1000.0),
            n,
            last.map(|t| t.duration_since(t_kill).as_secs_f64() * 1000.0),
        ));
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while agents.join_next().await.is_some() {}
    })
    .await;

    println!("| nodes | pods | bound | pods bound/s | create calls s | p50 ms | p99 ms | max ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} |",
        args.nodes,
        args.pods,
        bound.len(),
        bound.len() as f64 / total_s.max(1e-9),
        create_s,
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    if args.queued {
        println!(
            "\nqueued: the pods waited with the Lease held by the bench (latencies above include that wait); freed, the first pod was bound {} ms later; the rate is from the first bind to the last ({:.1} s)",
            first_bound
                .map(|f| format!("{:.0}", f.duration_since(t_release).as_secs_f64() * 1000.0))
                .unwrap_or("(never)".into()),
            total_s
        );
    }
    match failover {
        Some((h, first, n, all)) => println!(
            "\nscheduler holder server-{h} SIGKILLed, then {} pods created: first bound {} ms after the kill, {n} bound after {} ms",
            args.failover_pods,
            first.map(|f| format!("{f:.0}")).unwrap_or("(never)".into()),
            all.map(|f| format!("{f:.0}")).unwrap_or("(never)".into())
        ),
        None => println!("\nno scheduler holder found; failover not measured"),
    }
    Ok(())
}
