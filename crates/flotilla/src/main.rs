//! The one Flotilla binary: `flotilla server` runs a control-plane server; every other
//! subcommand is the kubectl-style CLI talking to a cluster over gRPC.

// glibc malloc showed up as ~25 % of server CPU under write load (fragmentation and
// trimming); mimalloc keeps per-thread free lists and returns memory lazily.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
use flotilla_client::configfile as clientconfig;
mod output;
mod token;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Flotilla: a container orchestrator with an embedded Raft control plane"
)]
struct Cli {
    /// Server client-API addresses, comma-separated (any server will do). Without it: the
    /// current cluster of the config file, else 127.0.0.1:7101-7103.
    #[arg(long, global = true, env = "FLOTILLA_SERVER", value_delimiter = ',')]
    server: Vec<String>,
    /// The CLI config file (named clusters, their credentials, the current one); default
    /// ~/.flotilla/config, else the admin.conf a local cluster-configs server wrote under
    /// ./data/local-three or ./data/local-five.
    #[arg(long = "config", env = "FLOTILLA_CONFIG")]
    config: Option<PathBuf>,
    /// Per-request timeout in seconds.
    #[arg(long, global = true, default_value_t = 30)]
    timeout_secs: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a control-plane server.
    Server {
        #[arg(long)]
        config: PathBuf,
        /// Overrides the config's data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Raft membership and status.
    Cluster {
        #[command(subcommand)]
        command: cli::ClusterCommand,
    },
    /// Create or update objects from manifests (YAML with several documents, or JSON).
    Apply(cli::FileArgs),
    /// Create objects from manifests; an object that exists is an error.
    Create(cli::FileArgs),
    /// Show objects.
    Get(cli::GetArgs),
    /// Delete objects by name, by label selector, or as described by manifests.
    Delete(cli::DeleteArgs),
    /// Show an object in detail, with the Events recorded against it.
    Describe(cli::DescribeArgs),
    /// Edit an object in $KUBE_EDITOR / $EDITOR (default vi) and write it back.
    Edit(cli::DescribeArgs),
    /// Set (key=value) or remove (key-) labels.
    Label(cli::MetaArgs),
    /// Set (key=value) or remove (key-) annotations.
    Annotate(cli::MetaArgs),
    /// Set the replicas of a Deployment, ReplicaSet or StatefulSet.
    Scale(workload::ScaleArgs),
    /// Manage a Deployment's rollout: status, history, undo, pause, resume, restart.
    Rollout {
        #[command(subcommand)]
        command: workload::RolloutCommand,
    },
    /// Mark a node unschedulable: new pods go elsewhere, running ones stay.
    Cordon(workload::NodeArgs),
    /// Mark a node schedulable again.
    Uncordon(workload::NodeArgs),
    /// Cordon a node and evict its pods (not DaemonSets'), waiting until they are gone.
    Drain(workload::DrainArgs),
    /// Describe a kind's fields, or a field's: `explain deployment.spec.strategy`.
    Explain {
        /// RESOURCE[.field[.field...]]
        path: String,
    },
    /// The CLI config file: named clusters and the current one.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script: `flotilla completion bash > /etc/bash_completion.d/flotilla`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a container's log.
    Logs(cli::LogsArgs),
    /// Run a command in a container: `flotilla exec POD [-c C] -- CMD ARGS...`.
    Exec(cli::ExecArgs),
    /// Join tokens for agents: create, list, revoke.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Run a node agent: join with a token, register the Node, heartbeat over QUIC.
    Agent(AgentArgs),
    /// The per-container shim the node agent starts (not for direct use).
    #[command(hide = true)]
    RuntimeShim(ShimArgs),
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Servers' addresses (the API addresses; agents use their UDP twins), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    join: Vec<String>,
    /// Join token from `flotilla token create`; needed only until the agent has joined.
    #[arg(long, env = "FLOTILLA_TOKEN")]
    token: Option<String>,
    #[arg(long)]
    data_dir: PathBuf,
    /// Node name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Node labels, k=v,k2=v2.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// OCI runtime binary (runc, crun, or a path).
    #[arg(long, default_value = "runc")]
    runtime: PathBuf,
    /// Registries (host:port) to pull from over plain HTTP, e.g. a loopback test registry.
    #[arg(long = "insecure-registry", value_delimiter = ',')]
    insecure_registries: Vec<String>,
    /// First delay of a crashing container's restart backoff (Kubernetes: 10 s).
    #[arg(long, default_value_t = 10_000, hide = true)]
    crash_backoff_initial_ms: u64,
    /// Image garbage collection runs when the images' file system is at least this full
    /// (percent; Kubernetes' imageGCHighThresholdPercent). 0: at every pass.
    #[arg(long, default_value_t = 85)]
    image_gc_high_percent: u8,
    /// An image unused for less than this is kept (Kubernetes' imageMinimumGCAge, 2 min).
    #[arg(long, default_value_t = 120)]
    image_gc_min_age_secs: u64,
    /// How often image garbage collection checks (Kubernetes: every 5 min).
    #[arg(long, default_value_t = 300_000, hide = true)]
    image_gc_period_ms: u64,
}

#[derive(clap::Args)]
struct ShimArgs {
    #[arg(long)]
    runtime: PathBuf,
    #[arg(long)]
    runtime_root: PathBuf,
    #[arg(long)]
    id: String,
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long)]
    log: PathBuf,
    #[arg(long)]
    max_log_bytes: u64,
    #[arg(long)]
    max_log_files: u32,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the config file.
    View,
    /// Add or change a named cluster (the first one becomes current).
    SetCluster {
        name: String,
        /// Client API addresses, comma-separated.
        #[arg(long = "servers", value_delimiter = ',', required = true)]
        servers: Vec<String>,
    },
    /// Make a named cluster the current one.
    UseCluster { name: String },
}

/// Which servers the CLI talks to: --server / FLOTILLA_SERVER, else the config file's current
/// cluster, else the local three-node cluster.
/// The admin config a server of `cluster-configs/three-node` or `five-node` wrote (the first
/// that exists under the current directory), used when there is no ~/.flotilla/config, so the
/// local clusters work with no setup.
fn local_admin_conf() -> Option<PathBuf> {
    ["local-three", "local-five"]
        .iter()
        .flat_map(|c| (1..=5).map(move |i| format!("data/{c}/server-{i}/admin.conf")))
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn resolve_servers(flag: Vec<String>, config: &clientconfig::ClientConfig) -> Vec<String> {
    if !flag.is_empty() {
        return flag;
    }
    config.current_servers().unwrap_or_else(|| {
        ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
            .map(String::from)
            .to_vec()
    })
}

fn config_command(
    path: &std::path::Path,
    mut c: clientconfig::ClientConfig,
    cmd: ConfigCommand,
) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::View => print!("{}", serde_yaml_ng::to_string(&c.redacted())?),
        ConfigCommand::SetCluster { name, servers } => {
            c.set_cluster(&name, servers);
            c.save(path)?;
            println!("cluster {name:?} set in {}", path.display());
        }
        ConfigCommand::UseCluster { name } => {
            c.use_cluster(&name)?;
            c.save(path)?;
            println!("switched to cluster {name:?}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The shim is single-threaded and reaps children itself: no async runtime, no logging.
    if let Command::RuntimeShim(a) = &cli.command {
        let code = flotilla_runtime::shim::run(&flotilla_runtime::shim::ShimArgs {
            runtime: a.runtime.clone(),
            runtime_root: a.runtime_root.clone(),
            id: a.id.clone(),
            bundle: a.bundle.clone(),
            log_path: a.log.clone(),
            max_log_bytes: a.max_log_bytes,
            max_log_files: a.max_log_files,
        });
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG").unwrap_or_else(|_| {
        let default = if matches!(cli.command, Command::Server { .. } | Command::Agent(_)) {
            "info,openraft=warn"
        } else {
            "warn"
        };
        tracing_subscriber::EnvFilter::new(default)
    });
    // Colours only on a terminal: logs redirected to files stay plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Commands that need no server connection, and the server itself, come first: a broken
    // CLI config file must not stop them.
    let command = match cli.command {
        Command::Server { config, data_dir } => {
            return cli::server(&config, data_dir.as_deref()).await
        }
        Command::Explain { path } => return cli::explain(&path),
        Command::Agent(a) => return agent(a).await,
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "flotilla",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        other => other,
    };
    // An explicitly named file must exist, except for `config` commands, which create it.
    let creating = matches!(command, Command::Config { .. });
    let (config_path, must_exist) = match &cli.config {
        Some(p) => (p.clone(), !creating),
        None => {
            let home = clientconfig::default_path();
            match (home, local_admin_conf()) {
                (Some(p), local) if p.exists() || creating || local.is_none() => (p, false),
                (_, Some(local)) => (local, false),
                _ => (PathBuf::from(".flotilla-config"), false),
            }
        }
    };
    let file = clientconfig::ClientConfig::load(&config_path, must_exist)?;
    let tls = match file.current() {
        Some(entry) => entry
            .tls()
            .map_err(|e| anyhow::anyhow!("config {}: {e}", config_path.display()))?,
        None => None,
    };
    let conn = cli::Conn {
        tls,
        servers: resolve_servers(cli.server, &file),
        timeout: std::time::Duration::from_secs(cli.timeout_secs.max(1)),
    };
    match command {
        Command::Config { command } => config_command(&config_path, file, command),
        Command::Cluster { command } => cli::cluster(&conn, command).await,
        Command::Apply(args) => cli::apply(&conn, args).await,
        Command::Create(args) => cli::create(&conn, args).await,
        Command::Get(args) => cli::get(&conn, args).await,
        Command::Delete(args) => cli::delete(&conn, args).await,
        Command::Describe(args) => cli::describe(&conn, args).await,
        Command::Edit(args) => cli::edit(&conn, args).await,
        Command::Label(args) => cli::set_metadata(&conn, args, false).await,
        Command::Annotate(args) => cli::set_metadata(&conn, args, true).await,
        Command::Token { command } => token::run(&conn, command).await,
        Command::Scale(args) => workload::scale(&conn, args).await,
        Command::Cordon(args) => workload::cordon(&conn, args, true).await,
        Command::Uncordon(args) => workload::cordon(&conn, args, false).await,
        Command::Drain(args) => workload::drain(&conn, args).await,
        Command::Rollout { command } => workload::rollout(&conn, command).await,
        Command::Logs(args) => cli::logs(&conn, args).await,
        Command::Exec(args) => {
            let code = cli::exec(&conn, args).await?;
            if code != 0 {
                std::process::exit(code.clamp(1, 255));
            }
            Ok(())
        }
        Command::Server { .. }
        | Command::Explain { .. }
        | Command::Completion { .. }
        | Command::RuntimeShim(_)
        | Command::Agent(_) => Ok(()),
    }
}

async fn agent(a: AgentArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut servers = Vec::new();
    for s in &a.join {
        let addr = tokio::net::lookup_host(s.trim())
            .await
            .with_context(|| format!("--join {s:?}"))?
            .next()
            .with_context(|| format!("--join {s:?}: no address"))?;
        servers.push(addr);
    }
    let name = match a.name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("host name")?
            .to_string_lossy()
            .to_ascii_lowercase(),
    };
    let mut cfg = flotilla_agent::AgentConfig::new(servers, a.data_dir, name);
    cfg.token = a.token;
    cfg.runtime = a.runtime;
    cfg.insecure_registries = a.insecure_registries;
    cfg.crash_backoff_initial_ms = a.crash_backoff_initial_ms;
    cfg.image_gc = flotilla_agent::pods::ImageGc {
        high_percent: a.image_gc_high_percent.min(100),
        min_age_ms: a.image_gc_min_age_secs.saturating_mul(1000),
        period_ms: a.image_gc_period_ms.max(100),
    };
    for l in &a.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--labels {l:?}: expected key=value"))?;
        flotilla_api::validation::check_label_key("--labels", k)?;
        flotilla_api::validation::check_label_value("--labels", v)?;
        cfg.labels.insert(k.to_string(), v.to_string());
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        s.cancel();
    });
    flotilla_agent::run(cfg, shutdown).await?;
    Ok(())
}
