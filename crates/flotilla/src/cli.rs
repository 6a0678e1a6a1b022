//! The subcommands. Errors are anyhow here (a binary); library errors keep their codes in the
//! message (`... (NOT_FOUND)`).

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use flotilla_api::manifest::{self, ManifestObject};
use flotilla_api::pb::admin::AddLearnerRequest;
use flotilla_api::pb::api::{DeleteRequest, EventType, ObjectKey, WatchRequest};
use flotilla_api::validation;
use flotilla_client::{Client, ClientConfig};

use crate::output;

pub struct Conn {
    pub servers: Vec<String>,
    pub timeout: Duration,
}

impl Conn {
    async fn client(&self) -> anyhow::Result<Client> {
        let mut c = ClientConfig::new(
            self.servers
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        );
        c.request_timeout = self.timeout;
        Ok(Client::connect(c).await?)
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum StatusFormat {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Members, roles, terms, log and applied indexes, lag, and the leader.
    Status {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: StatusFormat,
    },
    /// Add a server as a non-voting learner; returns once it has caught up.
    AddLearner {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        raft_addr: String,
        #[arg(long)]
        api_addr: String,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a voter or learner from the cluster.
    Remove { id: u64 },
    /// Build a snapshot now on the server the CLI is connected to.
    Snapshot,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Yaml,
    Json,
    Wide,
    Name,
}

#[derive(Args)]
pub struct GetArgs {
    /// The resource type (configmap, configmaps, cm).
    resource: String,
    name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// All namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[arg(short = 'l', long)]
    selector: Option<String>,
    #[arg(short = 'o', long = "output", value_enum)]
    output: Option<OutputFormat>,
    /// After listing, watch for changes.
    #[arg(short = 'w', long)]
    watch: bool,
    /// Serve from the contacted server's local state (may be behind; the revision says how far).
    #[arg(long)]
    stale: bool,
}

#[derive(Args)]
pub struct DeleteArgs {
    resource: String,
    name: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
}

pub async fn server(config: &Path, data_dir: Option<&Path>) -> anyhow::Result<()> {
    let cfg = flotilla_server::ServerConfig::load(config)?;
    let dir = cfg.resolve_data_dir(data_dir);
    let handle = flotilla_server::start(cfg, dir).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = term.recv() => tracing::info!("terminated; shutting down"),
        _ = handle.stopped() => tracing::error!("a listener failed; shutting down"),
    }
    handle.shutdown().await;
    Ok(())
}

pub async fn cluster(conn: &Conn, cmd: ClusterCommand) -> anyhow::Result<()> {
    let mut c = conn.client().await?;
    match cmd {
        ClusterCommand::Status { output } => {
            let st = c.cluster_status().await?;
            match output {
                StatusFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&output::status_json(&st))?
                ),
                StatusFormat::Table => print!("{}", output::status_table(&st)),
            }
        }
        ClusterCommand::AddLearner {
            id,
            raft_addr,
            api_addr,
        } => {
            let r = c
                .add_learner(AddLearnerRequest {
                    id,
                    raft_address: raft_addr,
                    api_address: api_addr,
                })
                .await?;
            println!("server {id} added as a learner (log index {})", r.log_index);
        }
        ClusterCommand::Promote { id } => {
            let r = c.promote(id).await?;
            println!("server {id} promoted to voter (log index {})", r.log_index);
        }
        ClusterCommand::Remove { id } => {
            let r = c.remove(id).await?;
            println!("server {id} removed (log index {})", r.log_index);
        }
        ClusterCommand::Snapshot => {
            let i = c.snapshot().await?;
            println!("snapshot of {} taken up to log index {i}", c.server());
        }
    }
    Ok(())
}

/// Read and validate every document of every file before writing anything.
fn read_manifests(files: &[String]) -> anyhow::Result<Vec<ManifestObject>> {
    let mut all = Vec::new();
    for f in files {
        let (name, text) = if f == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading standard input")?;
            ("<stdin>".to_string(), s)
        } else {
            let s = std::fs::read_to_string(f).with_context(|| format!("cannot read {f}"))?;
            (f.clone(), s)
        };
        all.extend(manifest::parse_manifests(&name, &text)?);
    }
    if all.is_empty() {
        bail!("no objects found in {}", files.join(", "));
    }
    Ok(all)
}

pub async fn apply(conn: &Conn, files: &[String]) -> anyhow::Result<()> {
    let objects = read_manifests(files)?;
    let mut c = conn.client().await?;
    for m in objects {
        let what = output::name_of(&m.object);
        let (outcome, _) = c
            .apply(m.object)
            .await
            .with_context(|| format!("applying {what}"))?;
        println!("{what} {outcome}");
    }
    Ok(())
}

fn kind_of(resource: &str) -> anyhow::Result<&'static str> {
    validation::resolve_kind(resource).ok_or_else(|| {
        let known: Vec<String> = validation::KINDS
            .iter()
            .map(|(k, _, _)| format!("{}s", k.to_ascii_lowercase()))
            .collect();
        anyhow!(
            "the server doesn't have a resource type {resource:?} (known: {})",
            known.join(", ")
        )
    })
}

/// The namespace a request for `kind` uses: none for cluster-scoped kinds.
fn ns_for(kind: &str, ns: &str) -> String {
    match validation::kind_info(kind) {
        Some((_, false)) => String::new(),
        _ => ns.to_string(),
    }
}

pub async fn get(conn: &Conn, a: GetArgs) -> anyhow::Result<()> {
    let kind = kind_of(&a.resource)?;
    let ns = if a.all_namespaces {
        String::new()
    } else {
        ns_for(kind, &a.namespace)
    };
    let selector = a.selector.clone().unwrap_or_default();
    let mut c = conn.client().await?;
    let (objects, revision) = match &a.name {
        Some(name) => {
            let key = ObjectKey {
                kind: kind.into(),
                namespace: ns_for(kind, &a.namespace),
                name: name.clone(),
            };
            let (o, rev) = c.get(key, a.stale).await?;
            (vec![o], rev)
        }
        None => c.list(kind, &ns, &selector, a.stale).await?,
    };
    if a.stale {
        eprintln!("(stale read from {} at revision {revision})", c.server());
    }
    let single = a.name.is_some();
    match a.output {
        Some(OutputFormat::Json) => println!(
            "{}",
            serde_json::to_string_pretty(&output::objects_json(&objects, single, revision))?
        ),
        Some(OutputFormat::Yaml) => print!(
            "{}",
            serde_yaml_ng::to_string(&output::objects_json(&objects, single, revision))?
        ),
        Some(OutputFormat::Name) => objects
            .iter()
            .for_each(|o| println!("{}", output::name_of(o))),
        None | Some(OutputFormat::Wide) => {
            if objects.is_empty() && !a.watch {
                if a.all_namespaces {
                    eprintln!("No resources found");
                } else {
                    eprintln!("No resources found in {} namespace.", a.namespace);
                }
            } else {
                print!("{}", output::table(&objects, a.all_namespaces, true));
            }
        }
    }
    if !a.watch {
        return Ok(());
    }
    let req = WatchRequest {
        kind: kind.into(),
        namespace: ns,
        label_selector: selector,
        start_revision: revision,
        name: a.name.clone().unwrap_or_default(),
    };
    let mut stream = c.watch(req).await?;
    while let Some(ev) = stream
        .message()
        .await
        .map_err(|s| flotilla_api::ApiError::from_status(&s))?
    {
        if ev.r#type == EventType::Bookmark as i32 {
            continue;
        }
        let Some(o) = ev.object else { continue };
        match a.output {
            Some(OutputFormat::Json) => println!(
                "{}",
                serde_json::to_string_pretty(&manifest::object_to_value(&o))?
            ),
            Some(OutputFormat::Yaml) => print!(
                "---\n{}",
                serde_yaml_ng::to_string(&manifest::object_to_value(&o))?
            ),
            Some(OutputFormat::Name) => println!("{}", output::name_of(&o)),
            None | Some(OutputFormat::Wide) => {
                print!("{}", output::table(&[o], a.all_namespaces, false))
            }
        }
    }
    Ok(())
}

pub async fn delete(conn: &Conn, a: DeleteArgs) -> anyhow::Result<()> {
    let kind = kind_of(&a.resource)?;
    let mut c = conn.client().await?;
    let key = ObjectKey {
        kind: kind.into(),
        namespace: ns_for(kind, &a.namespace),
        name: a.name.clone(),
    };
    let o = c
        .delete(DeleteRequest {
            key: Some(key),
            expected_resource_version: None,
            expected_uid: None,
        })
        .await?;
    if o.meta().deletion_timestamp_ms.is_some() && !o.meta().finalizers.is_empty() {
        println!(
            "{} marked for deletion (waiting on finalizers: {})",
            output::name_of(&o),
            o.meta().finalizers.join(", ")
        );
    } else {
        let what = output::name_of(&o);
        let (resource, name) = what.split_once('/').unwrap_or((&what, ""));
        println!("{resource} \"{name}\" deleted");
    }
    Ok(())
}
