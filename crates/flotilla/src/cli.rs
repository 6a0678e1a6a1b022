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
    /// The current cluster's credentials from the config file.
    pub tls: Option<flotilla_client::TlsFiles>,
}

impl Conn {
    pub async fn client(&self) -> anyhow::Result<Client> {
        let mut c = ClientConfig::new(
            self.servers
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        );
        c.request_timeout = self.timeout;
        c.tls = self.tls.clone();
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
    /// Field selector: spec.nodeName=NODE, status.phase!=Running, metadata.name=N ...
    #[arg(long = "field-selector")]
    field_selector: Option<String>,
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
    /// The resource type, then names (omit with -f).
    resource: Option<String>,
    names: Vec<String>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Delete the objects these manifests describe.
    #[arg(short = 'f', long = "filename")]
    files: Vec<String>,
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Delete every object of the type matching this label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Wait until objects held by finalizers are really gone (as kubectl; --wait=false
    /// returns once deletion has begun).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long = "wait-timeout-secs", default_value_t = 300)]
    wait_timeout_secs: u64,
    /// Seconds a pod's node has to stop it; -1 uses the pod's terminationGracePeriodSeconds,
    /// 0 (only with --force) removes the object at once.
    #[arg(long = "grace-period", default_value_t = -1, allow_negative_numbers = true)]
    grace_period: i64,
    /// Remove the objects at once, without waiting for their nodes to stop them.
    #[arg(long)]
    force: bool,
    /// Give pods a grace period of 1 second (as --grace-period=1).
    #[arg(long)]
    now: bool,
    /// What happens to the objects these own: background (deleted after them), foreground
    /// (deleted before them; they wait) or orphan (kept, their owner reference removed).
    #[arg(long, value_enum, default_value = "background")]
    cascade: Cascade,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Cascade {
    Background,
    Foreground,
    Orphan,
}

#[derive(Args)]
pub struct DescribeArgs {
    resource: String,
    name: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
}

#[derive(Args)]
pub struct MetaArgs {
    /// The resource type.
    resource: String,
    name: String,
    /// key=value to set, key- to remove.
    #[arg(required = true)]
    changes: Vec<String>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Allow replacing a value that is already set.
    #[arg(long)]
    overwrite: bool,
}

/// How long a server whose Raft failed fatally drains before it exits anyway.
const FATAL_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(3);

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
        e = handle.raft_failed() => {
            // As etcd does on a failed fsync: stop rather than serve from a disk that may not
            // hold what was acknowledged; a supervisor restarts the server, which recovers
            // from what is durable.
            tracing::error!(error = %e, "Raft stopped on a fatal error; shutting down");
            // Bounded: requests still waiting on the dead Raft would hold an orderly drain for
            // their whole timeout (22 s seen under jepsen's fsync nemesis), and a server that
            // cannot write has nothing to finish; what is durable is on disk already.
            if tokio::time::timeout(FATAL_SHUTDOWN, handle.shutdown()).await.is_err() {
                tracing::warn!(
                    "orderly shutdown did not finish within {FATAL_SHUTDOWN:?}; exiting anyway"
                );
            }
            anyhow::bail!("Raft stopped on a fatal error (a failed disk write or fsync?): {e}");
        }
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

/// What `-f` names: files, `-` for standard input, and directories (their .yaml, .yml and
/// .json files; with `-R` also those of every directory below), in name order.
fn expand_paths(files: &[String], recursive: bool) -> anyhow::Result<Vec<String>> {
    fn walk(dir: &Path, recursive: bool, out: &mut Vec<String>) -> anyhow::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read directory {}", dir.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot read directory {}", dir.display()))?;
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                if recursive {
                    walk(&p, recursive, out)?;
                }
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| ["yaml", "yml", "json"].contains(&x))
            {
                out.push(p.display().to_string());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for f in files {
        let p = Path::new(f);
        if f != "-" && p.is_dir() {
            walk(p, recursive, &mut out)?;
        } else {
            out.push(f.clone());
        }
    }
    Ok(out)
}

/// Read and validate every document of every file before writing anything.
pub fn read_manifests(files: &[String], recursive: bool) -> anyhow::Result<Vec<ManifestObject>> {
    let files = expand_paths(files, recursive)?;
    let mut all = Vec::new();
    for f in &files {
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

#[derive(Args)]
pub struct FileArgs {
    /// A file, a directory, or - for standard input. May be repeated.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Also the files of every directory below a directory given with -f.
    #[arg(short = 'R', long)]
    recursive: bool,
}

/// kubectl create -f: every object must be new.
pub async fn create(conn: &Conn, a: FileArgs) -> anyhow::Result<()> {
    let objects = read_manifests(&a.files, a.recursive)?;
    let mut c = conn.client().await?;
    for m in objects {
        let what = output::name_of(&m.object);
        c.create(m.object)
            .await
            .with_context(|| format!("creating {what}"))?;
        println!("{what} created");
    }
    Ok(())
}

pub async fn apply(conn: &Conn, a: FileArgs) -> anyhow::Result<()> {
    let objects = read_manifests(&a.files, a.recursive)?;
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

/// The key of object `name` of the resource type a user typed (`deploy`, `cm`, ...).
fn key_of(resource: &str, name: &str, namespace: &str) -> anyhow::Result<ObjectKey> {
    let kind = kind_of(resource)?;
    Ok(ObjectKey {
        kind: kind.into(),
        namespace: ns_for(kind, namespace),
        name: name.to_string(),
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
        None => {
            let fields = a.field_selector.clone().unwrap_or_default();
            c.list_fields(kind, &ns, &selector, &fields, a.stale)
                .await?
        }
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
                print!(
                    "{}",
                    output::table(
                        &objects,
                        a.all_namespaces,
                        true,
                        a.output == Some(OutputFormat::Wide)
                    )
                );
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
        field_selector: a.field_selector.clone().unwrap_or_default(),
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
                print!(
                    "{}",
                    output::table(
                        &[o],
                        a.all_namespaces,
                        false,
                        a.output == Some(OutputFormat::Wide)
                    )
                )
            }
        }
    }
    Ok(())
}

pub async fn delete(conn: &Conn, a: DeleteArgs) -> anyhow::Result<()> {
    let grace = match (a.grace_period, a.force, a.now) {
        (_, true, true) => bail!("--now and --force are mutually exclusive"),
        (0, false, _) => {
            bail!(
                "--grace-period=0 removes objects before their node has stopped them: add --force"
            )
        }
        (g, true, _) if g > 0 => Some(g),
        (_, true, _) => {
            eprintln!("Warning: Immediate deletion does not wait for confirmation that the running resource has been terminated. The resource may continue to run on the node indefinitely.");
            Some(0)
        }
        (_, false, true) => Some(1),
        (g, false, false) if g > 0 => Some(g),
        _ => None,
    };
    let mut c = conn.client().await?;
    let mut keys = Vec::new();
    if !a.files.is_empty() {
        if a.resource.is_some() || a.selector.is_some() {
            bail!("give either -f FILE or a resource type with names or -l, not both");
        }
        for m in read_manifests(&a.files, a.recursive)? {
            keys.push(m.object.key());
        }
    } else {
        let Some(resource) = &a.resource else {
            bail!("give a resource type and names, a resource type and -l SELECTOR, or -f FILE");
        };
        let kind = kind_of(resource)?;
        let ns = ns_for(kind, &a.namespace);
        if let Some(sel) = &a.selector {
            if !a.names.is_empty() {
                bail!("names and -l cannot be combined");
            }
            let (objects, _) = c.list(kind, &ns, sel, false).await?;
            if objects.is_empty() {
                eprintln!("No resources found");
            }
            keys.extend(objects.iter().map(|o| o.key()));
        } else {
            if a.names.is_empty() {
                bail!("give at least one name, or -l SELECTOR");
            }
            keys.extend(a.names.iter().map(|n| ObjectKey {
                kind: kind.into(),
                namespace: ns.clone(),
                name: n.clone(),
            }));
        }
    }
    for key in keys {
        let o = c
            .delete(DeleteRequest {
                key: Some(key),
                expected_resource_version: None,
                expected_uid: None,
                grace_period_seconds: grace,
                propagation_policy: match a.cascade {
                    Cascade::Background => "Background",
                    Cascade::Foreground => "Foreground",
                    Cascade::Orphan => "Orphan",
                }
                .into(),
            })
            .await?;
        let what = output::name_of(&o);
        if o.meta().deletion_grace_period_seconds.unwrap_or(0) > 0 {
            // A pod its node is stopping: gone once the node has stopped it (as kubectl).
            let (resource, name) = what.split_once('/').unwrap_or((&what, ""));
            println!("{resource} \"{name}\" deleted");
            if a.wait {
                wait_gone(&mut c, &o, Duration::from_secs(a.wait_timeout_secs)).await?;
            }
        } else if o.meta().deletion_timestamp_ms.is_some() && !o.meta().finalizers.is_empty() {
            println!(
                "{what} marked for deletion (waiting on finalizers: {})",
                o.meta().finalizers.join(", ")
            );
            if a.wait {
                wait_gone(&mut c, &o, Duration::from_secs(a.wait_timeout_secs)).await?;
                let (resource, name) = what.split_once('/').unwrap_or((&what, ""));
                println!("{resource} \"{name}\" deleted");
            }
        } else {
            let (resource, name) = what.split_once('/').unwrap_or((&what, ""));
            println!("{resource} \"{name}\" deleted");
        }
    }
    Ok(())
}

/// Watch `o` from its revision until it is deleted, bounded by `limit`.
async fn wait_gone(
    c: &mut Client,
    o: &flotilla_api::pb::api::Object,
    limit: Duration,
) -> anyhow::Result<()> {
    let m = o.meta();
    let req = WatchRequest {
        kind: o.kind.clone(),
        namespace: m.namespace.clone(),
        label_selector: String::new(),
        start_revision: m.resource_version,
        name: m.name.clone(),
        field_selector: String::new(),
    };
    let wait = async {
        let mut stream = c.watch(req).await?;
        while let Some(ev) = stream
            .message()
            .await
            .map_err(|s| flotilla_api::ApiError::from_status(&s))?
        {
            if ev.r#type == EventType::Deleted as i32 {
                return Ok::<_, anyhow::Error>(());
            }
        }
        bail!("the watch ended before {} was deleted", output::name_of(o))
    };
    tokio::time::timeout(limit, wait).await.map_err(|_| {
        anyhow!(
            "timed out after {} s waiting for {} to be deleted ({})",
            limit.as_secs(),
            output::name_of(o),
            if m.finalizers.is_empty() {
                "its node has not confirmed that it stopped".to_string()
            } else {
                format!("finalizers: {}", m.finalizers.join(", "))
            }
        )
    })?
}

/// kubectl label / annotate: `key=value` sets, `key-` removes; an existing different value
/// needs --overwrite.
pub async fn set_metadata(conn: &Conn, a: MetaArgs, annotations: bool) -> anyhow::Result<()> {
    let key = key_of(&a.resource, &a.name, &a.namespace)?;
    let mut c = conn.client().await?;
    let what = if annotations { "annotated" } else { "labeled" };
    for _ in 0..5 {
        let (mut o, _) = c.get(key.clone(), false).await?;
        let before = o.clone();
        let map = if annotations {
            &mut o.meta_mut().annotations
        } else {
            &mut o.meta_mut().labels
        };
        for ch in &a.changes {
            if let Some(k) = ch.strip_suffix('-') {
                map.remove(k);
                continue;
            }
            let Some((k, v)) = ch.split_once('=') else {
                bail!("{ch:?}: expected key=value or key-");
            };
            if let Some(old) = map.get(k) {
                if old != v && !a.overwrite {
                    bail!("'{k}' already has a value ({old}), and --overwrite is false");
                }
            }
            map.insert(k.to_string(), v.to_string());
        }
        let name = output::name_of(&o);
        if o == before {
            println!("{name} not {what}");
            return Ok(());
        }
        match c.update(o).await {
            Ok(_) => {
                println!("{name} {what}");
                return Ok(());
            }
            Err(e) if e.code() == flotilla_api::ErrorCode::Conflict => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("{key} kept changing; try again")
}

/// kubectl describe: the object, then the Events recorded against it, oldest first.
pub async fn describe(conn: &Conn, a: DescribeArgs) -> anyhow::Result<()> {
    let key = key_of(&a.resource, &a.name, &a.namespace)?;
    let kind = key.kind.clone();
    let mut c = conn.client().await?;
    let (o, _) = c.get(key, false).await?;
    let fields = format!("involvedObject.kind={kind},involvedObject.name={}", a.name);
    let (mut events, _) = c
        .list_fields("Event", &o.meta().namespace, "", &fields, false)
        .await?;
    events.sort_by_key(|e| match &e.body {
        Some(flotilla_api::pb::api::object::Body::Event(ev)) => ev.last_timestamp.clone(),
        _ => String::new(),
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    print!("{}", output::describe(&o, &events, now));
    Ok(())
}

/// kubectl edit: the object as YAML in `$KUBE_EDITOR`, `$EDITOR` or `vi`, written back with
/// the resourceVersion it was read at (a concurrent change is a conflict, not overwritten).
pub async fn edit(conn: &Conn, a: DescribeArgs) -> anyhow::Result<()> {
    let key = key_of(&a.resource, &a.name, &a.namespace)?;
    let mut c = conn.client().await?;
    let (o, _) = c.get(key.clone(), false).await?;
    let original = serde_yaml_ng::to_string(&manifest::object_to_value(&o))?;
    let path = std::env::temp_dir().join(format!(
        "flotilla-edit-{}-{}.yaml",
        std::process::id(),
        a.name
    ));
    let header = "# Edit the object below; lines starting with '#' are ignored.\n# Saving an empty file cancels the edit.\n";
    std::fs::write(&path, format!("{header}{original}"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    let editor = std::env::var("KUBE_EDITOR")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    // Through sh, so an editor given with arguments ("code --wait") works.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status()
        .with_context(|| format!("cannot run editor {editor:?}"))?;
    if !status.success() {
        bail!(
            "editor {editor:?} failed ({status}); the edit is in {}",
            path.display()
        );
    }
    let edited = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let body: String = edited
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    if body.trim().is_empty() || body == original {
        let _ = std::fs::remove_file(&path);
        println!("Edit cancelled, no changes made.");
        return Ok(());
    }
    let mut objs = manifest::parse_manifests(&path.display().to_string(), &body)
        .with_context(|| format!("the edit is kept in {}", path.display()))?;
    if objs.len() != 1 {
        bail!(
            "the edited file must hold exactly one object; the edit is in {}",
            path.display()
        );
    }
    let mut next = objs.remove(0).object;
    if next.key() != key {
        bail!(
            "the edit changed which object this is ({} → {}); kind, name and namespace cannot be edited",
            key,
            next.key()
        );
    }
    next.meta_mut().resource_version = o.meta().resource_version;
    let done = c
        .update(next)
        .await
        .with_context(|| format!("the edit is kept in {}", path.display()))?;
    let _ = std::fs::remove_file(&path);
    println!("{} edited", output::name_of(&done));
    Ok(())
}

/// kubectl explain: a kind's fields (or a field's), with their types, from the schema.
pub fn explain(path: &str) -> anyhow::Result<()> {
    let (resource, fields) = path.split_once('.').unwrap_or((path, ""));
    let kind = kind_of(resource)?;
    let text = flotilla_api::schema::explain(kind, fields).map_err(|e| anyhow!(e))?;
    print!("{text}");
    Ok(())
}

#[derive(Args)]
pub struct LogsArgs {
    pub pod: String,
    #[arg(short = 'c', long, default_value = "")]
    pub container: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Keep printing new lines until the container ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The last N lines only.
    #[arg(long)]
    pub tail: Option<i64>,
    /// The previous, terminated instance of the container.
    #[arg(short = 'p', long)]
    pub previous: bool,
}

#[derive(Args)]
pub struct ExecArgs {
    pub pod: String,
    #[arg(short = 'c', long, default_value = "")]
    pub container: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub async fn logs(conn: &Conn, a: LogsArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let mut c = conn.client().await?;
    let mut s = c
        .logs(flotilla_api::pb::api::LogsRequest {
            namespace: a.namespace,
            pod: a.pod,
            container: a.container,
            follow: a.follow,
            tail_lines: a.tail,
            previous: a.previous,
        })
        .await?;
    let mut out = std::io::stdout();
    while let Some(chunk) = s
        .message()
        .await
        .map_err(|e| flotilla_api::ApiError::from_status(&e))?
    {
        out.write_all(&chunk.data)?;
        out.flush()?;
    }
    Ok(())
}

/// Runs the command; returns its exit code for the CLI to exit with.
pub async fn exec(conn: &Conn, a: ExecArgs) -> anyhow::Result<i32> {
    use std::io::Write;
    let mut c = conn.client().await?;
    let mut s = c
        .exec(flotilla_api::pb::api::ExecRequest {
            namespace: a.namespace,
            pod: a.pod,
            container: a.container,
            command: a.command,
        })
        .await?;
    let mut code = None;
    while let Some(chunk) = s
        .message()
        .await
        .map_err(|e| flotilla_api::ApiError::from_status(&e))?
    {
        if chunk.stream == 2 {
            std::io::stderr().write_all(&chunk.data)?;
        } else {
            std::io::stdout().write_all(&chunk.data)?;
            std::io::stdout().flush()?;
        }
        if let Some(c) = chunk.exit_code {
            code = Some(c);
        }
    }
    code.ok_or_else(|| anyhow!("the connection to the container ended before the command did"))
}
