//! flotilla-jepsen: Flotilla's own fault-injection harness (Jepsen cannot be installed here).
//!
//! It owns the test network (one namespace per server and per agent, a bridge), the servers' and
//! agents' processes for one run (and the containers the agents leave), the nemeses, the
//! workloads' clients, the checkers and the run's result directory. It must never send traffic
//! outside the namespaces it creates, never leave them or a container behind (also after a
//! failure or Ctrl-C), and never call an uncertain write "failed".
//!
//! Exit codes: 0 valid, 1 invalid, 2 unknown (a checker gave up), 3 harness failure.

mod agents;
mod checker;
mod cluster;
mod delay;
mod fence;
mod history;
mod nemesis;
mod net;
mod report;
mod schedule;
mod stop;
mod watch;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rand::rngs::StdRng;
use rand::SeedableRng;

use checker::{Validity, Verdict};
use cluster::{Clients, Db, DbOpts};
use history::{Op, Outcome, Recorder};
use nemesis::Nemesis;
use net::Net;
use stop::Stop;
use workload::{Kind, Workload};

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("setup: {0}")]
    Setup(String),
    #[error("command failed: {0}")]
    Command(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("interrupted (Ctrl-C)")]
    Interrupted,
}

impl HarnessError {
    pub fn io(path: &Path, source: std::io::Error) -> HarnessError {
        HarnessError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Parser)]
#[command(
    name = "flotilla-jepsen",
    about = "Fault-injection tests of a real Flotilla cluster"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one test: build a cluster in network namespaces, run the workload under the
    /// nemeses, check the history, tear everything down.
    Test(Box<TestArgs>),
    /// Check a stored register history again (`history.jsonl` of a run), key by key.
    Check {
        /// A run's result directory.
        dir: PathBuf,
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
}

#[derive(Args, Clone)]
struct TestArgs {
    #[arg(long, value_enum)]
    workload: Kind,
    /// Comma-separated nemeses; empty for none.
    #[arg(long, value_enum, value_delimiter = ',')]
    nemesis: Vec<Nemesis>,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    nodes: u64,
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Operations per second across all clients (a target, not a promise); default 100, and
    /// 0.5 for the schedule workload (each operation rescales a Deployment).
    #[arg(long)]
    rate: Option<f64>,
    /// Agents (worker nodes running pods with runc) for the schedule workload.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    agents: u64,
    /// Concurrent clients; default two per server.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Registers (keys) for the register workload.
    #[arg(long, default_value_t = 3)]
    keys: u64,
    /// Log entries between snapshots: low, so snapshots happen under faults.
    #[arg(long, default_value_t = 200)]
    snapshot_threshold: u64,
    /// Client request timeout in ms; a write that times out is `info`.
    #[arg(long, default_value_t = 3000)]
    request_timeout_ms: u64,
    /// Quiet time between faults, in ms (min,max).
    #[arg(long, value_delimiter = ',', default_value = "2000,5000")]
    interval_ms: Vec<u64>,
    /// Let faults of different families (processes and disks; the network; clocks) overlap,
    /// each family on a schedule of its own.
    #[arg(long)]
    overlap: bool,
    /// How long a fault is held, in ms (min,max).
    #[arg(long, value_delimiter = ',', default_value = "3000,8000")]
    hold_ms: Vec<u64>,
    /// Switch on a planted bug in the servers (`stale-read`, `drop-watch-event`,
    /// `ack-before-fsync`); needs
    /// flotilla built with `--features planted-bugs`. The harness's self-test: the run must
    /// come out invalid.
    #[arg(long)]
    planted_bug: Option<String>,
    /// The flotilla binary; default: next to this one.
    #[arg(long)]
    flotilla: Option<PathBuf>,
    /// Result directory; default target/jepsen/<time>-<workload>-seed<seed>.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Test(args) => ExitCode::from(test(*args)),
        Cmd::Check { dir, timeout_s } => ExitCode::from(recheck(&dir, timeout_s)),
    }
}

fn recheck(dir: &Path, timeout_s: u64) -> u8 {
    let path = dir.join("history.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return 3;
        }
    };
    let mut ops = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match serde_json::from_str::<Op>(line) {
            Ok(o) => ops.push(o),
            Err(e) => {
                eprintln!("{}:{}: {e}", path.display(), i + 1);
                return 3;
            }
        }
    }
    let keys: std::collections::BTreeSet<String> = ops.iter().map(|o| o.key.clone()).collect();
    let mut worst = Validity::Valid;
    for k in keys {
        let mine: Vec<Op> = ops.iter().filter(|o| o.key == k).cloned().collect();
        let explain = dir.join(format!("linearizability-{k}.html"));
        let v = checker::check_register(&mine, Duration::from_secs(timeout_s), Some(&explain));
        println!("{k}: {:?} ({} operations)", v.valid, mine.len());
        worst = worst.max(v.valid);
    }
    match worst {
        Validity::Valid => 0,
        Validity::Invalid => 1,
        Validity::Unknown => 2,
    }
}

fn test(args: TestArgs) -> u8 {
    let out = args.out.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from("target/jepsen")
            .join(format!("{secs}-{:?}-seed{}", args.workload, args.seed).to_lowercase())
    });
    let result = run(&args, &out);
    let (code, verdict) = match result {
        Ok(v) => (
            match v.valid {
                Validity::Valid => 0,
                Validity::Invalid => 1,
                Validity::Unknown => 2,
            },
            serde_json::to_value(&v).unwrap_or_default(),
        ),
        Err(e) => {
            eprintln!("flotilla-jepsen: harness failure: {e}");
            (
                3,
                serde_json::json!({ "valid": "harness-failure", "error": e.to_string() }),
            )
        }
    };
    if std::fs::create_dir_all(&out).is_ok() {
        let path = out.join("verdict.json");
        let text = serde_json::to_string_pretty(&verdict).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("flotilla-jepsen: {}: {e}", path.display());
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&verdict).unwrap_or_default()
    );
    println!("results: {}", out.display());
    code
}

fn flotilla_bin(args: &TestArgs) -> Result<PathBuf, HarnessError> {
    let p = match &args.flotilla {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| HarnessError::Setup(format!("current_exe: {e}")))?
            .with_file_name("flotilla"),
    };
    if !p.exists() {
        return Err(HarnessError::Setup(format!(
            "{} is missing: build it with `cargo build -p flotilla` or pass --flotilla PATH",
            p.display()
        )));
    }
    p.canonicalize().map_err(|e| HarnessError::io(&p, e))
}

/// Build everything, run, check, and tear down (the guards' Drop does it on every path).
fn run(args: &TestArgs, out: &Path) -> Result<Verdict, HarnessError> {
    std::fs::create_dir_all(out).map_err(|e| HarnessError::io(out, e))?;
    let bin = flotilla_bin(args)?;
    let ids: Vec<u64> = (1..=args.nodes).collect();
    let scheduling = args.workload == Kind::Schedule;
    Net::remove_stale();
    let net = Arc::new(Net::create(
        &net::run_prefix(),
        &ids,
        if scheduling { args.agents } else { 0 },
    )?);
    let data = tempfile::Builder::new()
        .prefix("flotilla-jepsen-")
        .tempdir()
        .map_err(|e| HarnessError::Setup(format!("temporary data dir: {e}")))?;
    let registry = if scheduling {
        Some(agents::Registry::start(
            &net,
            &data.path().join("registry"),
        )?)
    } else {
        None
    };
    // Faster role failover (3 s leases) and heartbeats, so the scheduler and controllers move
    // between servers several times in a run.
    let extra_limits = if scheduling {
        [
            "heartbeat_period_ms = 1000",
            "role_lease_duration_ms = 3000",
            "role_retry_ms = 500",
        ]
        .map(String::from)
        .to_vec()
    } else {
        Vec::new()
    };
    let db = Db::new(
        &net,
        &bin,
        out,
        data.path(),
        DbOpts {
            snapshot_logs_since_last: args.snapshot_threshold,
            request_timeout: Duration::from_millis(args.request_timeout_ms),
            planted_bug: args.planted_bug.clone(),
            fake_clock: args.nemesis.contains(&Nemesis::Clock),
            fsync_faults: args.nemesis.contains(&Nemesis::Fsync),
            extra_limits,
        },
    )?;
    let agents = scheduling.then(|| {
        Arc::new(tokio::sync::Mutex::new(agents::Agents::new(
            &net,
            &bin,
            out,
            data.path(),
        )))
    });
    // Every socket from here on is opened in the clients' namespace.
    net.enter_client_ns()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| HarnessError::Setup(format!("tokio runtime: {e}")))?;
    let db = Arc::new(tokio::sync::Mutex::new(db));
    let result = rt.block_on(run_async(
        args,
        out,
        db.clone(),
        net.clone(),
        agents.clone(),
    ));
    // Reverse of start-up: agents and their containers, servers, the registry, then the
    // network (Net's Drop), then the data.
    rt.block_on(async {
        if let Some(a) = &agents {
            a.lock().await.cleanup();
        }
        db.lock().await.kill_all()
    });
    drop(rt);
    drop(registry);
    result
}

async fn run_async(
    args: &TestArgs,
    out: &Path,
    db: Arc<tokio::sync::Mutex<Db>>,
    net: Arc<Net>,
    agents: Option<Arc<tokio::sync::Mutex<agents::Agents>>>,
) -> Result<Verdict, HarnessError> {
    let rec = Recorder::new();
    db.lock().await.start_all()?;
    db.lock()
        .await
        .wait_converged(Duration::from_secs(60))
        .await?;
    if let Some(a) = &agents {
        let (token, join) = {
            let g = db.lock().await;
            (g.join_token(&net)?, g.api_addrs().join(","))
        };
        a.lock().await.start_all(&join, &token)?;
        let want = a.lock().await.ids().len();
        wait_nodes_ready(&*db.lock().await, want).await?;
    }
    let workload = Arc::new(Workload::new(args.workload, args.keys));
    let start_rev = workload.setup(&*db.lock().await).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = Stop(stop_rx);
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let tx = stop_tx.clone();
        let limit = Duration::from_secs(args.time_limit);
        let flag = interrupted.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(limit) => {}
                _ = tokio::signal::ctrl_c() => flag.store(true, std::sync::atomic::Ordering::SeqCst),
            }
            let _ = tx.send(true);
        });
    }

    let clients = db.lock().await.clients();
    let (final_tx, final_rx) = tokio::sync::watch::channel(None);
    let mut watchers = Vec::new();
    if args.workload == Kind::Watch {
        for w in 0..args.nodes as usize {
            watchers.push(tokio::spawn(watch::watcher(
                w,
                (1..=args.nodes).collect(),
                clients.clone(),
                start_rev,
                final_rx.clone(),
                Duration::from_secs(60),
                args.seed.wrapping_mul(7919).wrapping_add(w as u64),
            )));
        }
    }
    let sampler = agents
        .clone()
        .map(|a| tokio::spawn(schedule::sample(a, stop.clone())));
    let default_concurrency = if args.workload == Kind::Schedule {
        2
    } else {
        2 * ids_len(args)
    };
    let concurrency = args.concurrency.unwrap_or(default_concurrency).max(1);
    let default_rate = if args.workload == Kind::Schedule {
        0.5
    } else {
        100.0
    };
    let rate = args.rate.unwrap_or(default_rate);
    let interval = Duration::from_secs_f64(concurrency as f64 / rate.max(0.01));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let node = (w as u64 % args.nodes) + 1;
        let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(w as u64);
        tasks.push(tokio::spawn(worker(
            w,
            concurrency,
            node,
            clients.clone(),
            workload.clone(),
            rec.clone(),
            stop.clone(),
            interval,
            seed,
            Duration::from_millis(args.request_timeout_ms + 2000),
        )));
    }
    let schedule = nemesis::Schedule {
        nemeses: dedup(&args.nemesis),
        agents: agents.clone(),
        interval_ms: pair(&args.interval_ms, (2000, 5000)),
        hold_ms: pair(&args.hold_ms, (3000, 8000)),
        overlap: args.overlap,
    };
    let nem = tokio::spawn(nemesis::run(
        schedule,
        db.clone(),
        net.clone(),
        rec.clone(),
        StdRng::seed_from_u64(args.seed),
        stop.clone(),
    ));
    // Servers and agents that exit on their own are a finding: record them and start them
    // again.
    let watchdog = {
        let db = db.clone();
        let rec = rec.clone();
        let stop = stop.clone();
        let agents = agents.clone();
        tokio::spawn(async move {
            let mut exits = Vec::new();
            loop {
                if let Some(a) = &agents {
                    let mut g = a.lock().await;
                    for (k, status) in g.exited() {
                        rec.fault(
                            "crash",
                            "start",
                            vec![k],
                            history::FaultStatus::Installed,
                            format!("agent a{k} exited on its own: {status}"),
                        );
                        exits.push((100 + k, format!("agent a{k}: {status}")));
                        let _ = g.start(k);
                    }
                }
                let crashed = db.lock().await.crashed();
                for (id, status) in crashed {
                    rec.fault(
                        "crash",
                        "start",
                        vec![id],
                        history::FaultStatus::Installed,
                        format!("server n{id} exited on its own: {status}"),
                    );
                    exits.push((id, status));
                    let _ = db.lock().await.start(id);
                }
                if stop.sleep(Duration::from_millis(500)).await {
                    return exits;
                }
            }
        })
    };
    for t in tasks {
        let _ = t.await;
    }
    let _ = nem.await;
    let exits = watchdog.await.unwrap_or_default();
    if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(HarnessError::Interrupted);
    }
    nemesis::heal_all(&db, &net, &rec).await;
    let recovered = db
        .lock()
        .await
        .wait_converged(Duration::from_secs(60))
        .await;

    let mut verdict = {
        let g = db.lock().await;
        let recorded = rec.take();
        let v = if let (Some(a), Some(s)) = (&agents, sampler) {
            let samples = s.await.unwrap_or_default();
            let nodes = workload
                .initial_nodes
                .lock()
                .map(|n| n.clone())
                .unwrap_or_default();
            schedule::check(&g, &clients, a, samples, start_rev, nodes).await
        } else if args.workload == Kind::Watch {
            check_watch(
                &g,
                &clients,
                start_rev,
                watchers,
                &final_tx,
                &recorded.ops,
                out,
            )
            .await?
        } else {
            workload.check(&g, &recorded.ops, out).await
        };
        report::write_histories(out, &recorded.ops, &recorded.faults)
            .map_err(|e| HarnessError::io(out, e))?;
        let mut v = v;
        add_summary(&mut v, &recorded.ops, args);
        let vj = serde_json::to_value(&v).unwrap_or_default();
        let title = format!(
            "{:?} under {} (seed {}, {} nodes, {} s)",
            args.workload,
            if args.nemesis.is_empty() {
                "no faults".to_string()
            } else {
                args.nemesis
                    .iter()
                    .map(|n| n.name())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            args.seed,
            args.nodes,
            args.time_limit
        );
        report::write_timeline(
            &out.join("index.html"),
            &title,
            &vj,
            &recorded.ops,
            &recorded.faults,
            concurrency,
        )
        .map_err(|e| HarnessError::io(out, e))?;
        v
    };
    if let Err(e) = recovered {
        verdict.valid = verdict.valid.max(Validity::Invalid);
        verdict.details["not_recovered"] = serde_json::json!(e.to_string());
    }
    if !exits.is_empty() {
        verdict.valid = verdict.valid.max(Validity::Invalid);
        verdict.details["server_exits"] = serde_json::json!(exits);
    }
    Ok(verdict)
}

/// Let the watchers catch up to the revision after healing, read the committed history back
/// from every server, and compare.
async fn check_watch(
    db: &Db,
    clients: &Clients,
    start_rev: u64,
    watchers: Vec<tokio::task::JoinHandle<watch::WatcherLog>>,
    final_tx: &tokio::sync::watch::Sender<Option<u64>>,
    ops: &[Op],
    out: &Path,
) -> Result<Verdict, HarnessError> {
    let mut final_rev = None;
    for _ in 0..30 {
        if let Ok(mut c) = db.any_client().await {
            if let Ok((_, rev)) = c.list("ConfigMap", "default", watch::SELECTOR, false).await {
                final_rev = Some(rev);
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let Some(final_rev) = final_rev else {
        return Ok(Verdict {
            valid: Validity::Unknown,
            checker: "watch".into(),
            details: serde_json::json!({ "error": "no linearizable list succeeded after healing" }),
        });
    };
    let _ = final_tx.send(Some(final_rev));
    let mut logs = Vec::new();
    for w in watchers {
        match tokio::time::timeout(Duration::from_secs(90), w).await {
            Ok(Ok(l)) => logs.push(l),
            _ => return Err(HarnessError::Setup("a watcher task did not finish".into())),
        }
    }
    let mut reference = std::collections::BTreeMap::new();
    for id in &db.ids {
        reference.insert(
            *id,
            watch::read_history(clients, *id, start_rev, final_rev).await,
        );
    }
    let path = out.join("watchers.json");
    let text = serde_json::to_string(&logs).unwrap_or_default();
    std::fs::write(&path, text).map_err(|e| HarnessError::io(&path, e))?;
    Ok(watch::check(&reference, &logs, ops, final_rev))
}

/// Wait until `want` Nodes report Ready (the agents have joined).
async fn wait_nodes_ready(db: &Db, want: usize) -> Result<(), HarnessError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match db.any_client().await {
            Ok(mut c) => match c.list("Node", "", "", false).await {
                Ok((nodes, _)) => {
                    let ready = nodes.iter().filter(|n| node_ready(n)).count();
                    if ready >= want {
                        return Ok(());
                    }
                    last = format!("{ready} of {want} nodes Ready");
                }
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(HarnessError::Setup(format!(
        "the agents did not join within 120 s: {last} (see a<k>/agent.log)"
    )))
}

fn node_ready(o: &flotilla_api::pb::api::Object) -> bool {
    match &o.body {
        Some(flotilla_api::pb::api::object::Body::Node(n)) => n.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == "True")
        }),
        _ => false,
    }
}

fn ids_len(args: &TestArgs) -> usize {
    args.nodes as usize
}

fn dedup(n: &[Nemesis]) -> Vec<Nemesis> {
    let mut v = n.to_vec();
    v.sort();
    v.dedup();
    v
}

fn pair(v: &[u64], default: (u64, u64)) -> (u64, u64) {
    match v {
        [a, b] if a <= b => (*a, *b),
        [a] => (*a, *a),
        _ => default,
    }
}

fn add_summary(v: &mut Verdict, ops: &[Op], args: &TestArgs) {
    let n = |o: Outcome| ops.iter().filter(|x| x.outcome == o).count();
    v.details["run"] = serde_json::json!({
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "nemesis": args.nemesis.iter().map(|n| n.name()).collect::<Vec<_>>(),
        "overlap": args.overlap,
        "nodes": args.nodes,
        "time_limit_s": args.time_limit,
        "seed": args.seed,
        "planted_bug": args.planted_bug,
        "operations": ops.len(),
        "ok": n(Outcome::Ok),
        "fail": n(Outcome::Fail),
        "info": n(Outcome::Info),
    });
}

/// One client slot: a logical process bound to one server. After an `info` outcome the
/// process may still have a request in flight, so a new process id takes over, as in Jepsen.
#[allow(clippy::too_many_arguments)]
async fn worker(
    slot: usize,
    concurrency: usize,
    node: u64,
    clients: Clients,
    workload: Arc<Workload>,
    rec: Recorder,
    stop: Stop,
    interval: Duration,
    seed: u64,
    op_timeout: Duration,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = slot as u32;
    let mut client = None;
    while !stop.is_set() {
        let c = match &mut client {
            Some(c) => c,
            None => {
                match tokio::time::timeout(Duration::from_secs(2), clients.client(node)).await {
                    Ok(Ok(c)) => client.insert(c),
                    _ => {
                        if stop.sleep(Duration::from_millis(200)).await {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        let plan = workload.plan(process, &mut rng);
        let call_ns = rec.now_ns();
        let done = match tokio::time::timeout(op_timeout, workload.invoke(c, process, &plan)).await
        {
            Ok(d) => d,
            Err(_) => workload::Done::info(format!("no answer within {op_timeout:?}")),
        };
        let return_ns = rec.now_ns();
        let info = done.outcome == Outcome::Info;
        rec.op(Op {
            process,
            f: plan.f.to_string(),
            key: workload.key_name(plan.key),
            value: plan.value,
            outcome: done.outcome,
            result: done.result,
            node,
            call_ns,
            return_ns,
            error: done.error,
        });
        if info {
            process += concurrency as u32;
            client = None;
        }
        if stop.sleep(interval).await {
            break;
        }
    }
}
