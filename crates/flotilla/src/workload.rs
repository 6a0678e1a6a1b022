//! Workload verbs as kubectl has them: `scale` and `rollout status|history|undo|pause|resume|
//! restart`. They read and write objects through the API; the controllers do the rest.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::Subcommand;
use flotilla_api::pb::api::{object::Body, Object, ObjectKey};
use flotilla_client::Client;
use flotilla_controllers::deployment::{revision_of, strip_hash};

use crate::cli::Conn;
use crate::output;

/// `TYPE NAME` or `TYPE/NAME`.
#[derive(clap::Args, Clone)]
pub struct Target {
    /// deployment/NAME, or the type with the name after it.
    target: String,
    name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
}

impl Target {
    fn key(&self) -> anyhow::Result<ObjectKey> {
        let (resource, name) = match (self.target.split_once('/'), &self.name) {
            (Some((r, n)), None) => (r.to_string(), n.to_string()),
            (None, Some(n)) => (self.target.clone(), n.clone()),
            _ => bail!("name the object as TYPE/NAME or TYPE NAME, e.g. deployment/web"),
        };
        let kind = flotilla_api::validation::resolve_kind(&resource)
            .ok_or_else(|| anyhow!("the server doesn't have a resource type {resource:?}"))?;
        Ok(ObjectKey {
            kind: kind.into(),
            namespace: self.namespace.clone(),
            name,
        })
    }
}

#[derive(clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    target: Target,
    /// The new number of replicas.
    #[arg(long)]
    replicas: i32,
    /// Only if the current count is this (a precondition).
    #[arg(long)]
    current_replicas: Option<i32>,
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Wait for a Deployment's rollout to finish, printing its progress.
    Status {
        #[command(flatten)]
        target: Target,
        /// Give up after this many seconds (0: wait as long as it takes).
        #[arg(long, default_value_t = 0)]
        timeout_secs: u64,
    },
    /// The revisions of a Deployment (its ReplicaSets).
    History {
        #[command(flatten)]
        target: Target,
        /// Show this revision's pod template.
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Go back to the previous revision, or to --to-revision.
    Undo {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
    /// Stop rolling out template changes until resumed.
    Pause {
        #[command(flatten)]
        target: Target,
    },
    Resume {
        #[command(flatten)]
        target: Target,
    },
    /// Replace every pod, by stamping the template with the time.
    Restart {
        #[command(flatten)]
        target: Target,
    },
}

/// Read, change and write back `key`, retrying on a conflicting write. `change` returns
/// false when there is nothing to write.
async fn modify(
    c: &mut Client,
    key: &ObjectKey,
    mut change: impl FnMut(&mut Object) -> anyhow::Result<bool>,
) -> anyhow::Result<(Object, bool)> {
    for _ in 0..10 {
        let (mut o, _) = c.get(key.clone(), false).await?;
        if !change(&mut o)? {
            return Ok((o, false));
        }
        match c.update(o).await {
            Ok(o) => return Ok((o, true)),
            Err(e) if e.code() == flotilla_api::ErrorCode::Conflict => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("{key} kept changing; try again")
}

pub async fn scale(conn: &Conn, a: ScaleArgs) -> anyhow::Result<()> {
    if a.replicas < 0 {
        bail!("--replicas must be 0 or more, got {}", a.replicas);
    }
    let key = a.target.key()?;
    let mut c = conn.client().await?;
    let (o, _) = modify(&mut c, &key, |o| {
        let replicas = match &mut o.body {
            Some(Body::Deployment(d)) => &mut d.spec.get_or_insert_with(Default::default).replicas,
            Some(Body::ReplicaSet(r)) => &mut r.spec.get_or_insert_with(Default::default).replicas,
            Some(Body::StatefulSet(s)) => &mut s.spec.get_or_insert_with(Default::default).replicas,
            _ => bail!("{} cannot be scaled", key.kind),
        };
        if let Some(want) = a.current_replicas {
            let now = replicas.unwrap_or(1);
            if now != want {
                bail!("expected the current replicas to be {want}, they are {now}");
            }
        }
        *replicas = Some(a.replicas);
        Ok(true)
    })
    .await?;
    println!("{} scaled", output::name_of(&o));
    Ok(())
}

fn deployment_parts(
    o: &Object,
) -> anyhow::Result<(
    &flotilla_api::pb::api::DeploymentSpec,
    flotilla_api::pb::api::DeploymentStatus,
)> {
    match &o.body {
        Some(Body::Deployment(d)) => Ok((
            d.spec
                .as_ref()
                .ok_or_else(|| anyhow!("the deployment has no spec"))?,
            d.status.clone().unwrap_or_default(),
        )),
        _ => bail!(
            "rollout works on deployments; {} is a {}",
            o.meta().name,
            o.kind
        ),
    }
}

/// kubectl's rollout status wording: the message and whether the rollout is done.
pub fn rollout_progress(o: &Object) -> anyhow::Result<(String, bool)> {
    let (spec, st) = deployment_parts(o)?;
    let name = &o.meta().name;
    let want = spec.replicas.unwrap_or(1);
    if st.observed_generation < o.meta().generation {
        return Ok((
            "Waiting for deployment spec update to be observed...".into(),
            false,
        ));
    }
    if st
        .conditions
        .iter()
        .any(|c| c.r#type == "Progressing" && c.reason == "ProgressDeadlineExceeded")
    {
        bail!("deployment {name:?} exceeded its progress deadline");
    }
    let msg = if st.updated_replicas < want {
        format!(
            "Waiting for deployment {name:?} rollout to finish: {} out of {want} new replicas have been updated...",
            st.updated_replicas
        )
    } else if st.replicas > st.updated_replicas {
        format!(
            "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
            st.replicas - st.updated_replicas
        )
    } else if st.available_replicas < st.updated_replicas {
        format!(
            "Waiting for deployment {name:?} rollout to finish: {} of {} updated replicas are available...",
            st.available_replicas, st.updated_replicas
        )
    } else {
        return Ok((format!("deployment {name:?} successfully rolled out"), true));
    };
    Ok((msg, false))
}

/// The ReplicaSets `d` controls, oldest revision first.
async fn revisions(c: &mut Client, d: &Object) -> anyhow::Result<Vec<Object>> {
    let (items, _) = c.list("ReplicaSet", &d.meta().namespace, "", false).await?;
    let mut owned: Vec<Object> = items
        .into_iter()
        .filter(|rs| {
            rs.meta()
                .owner_references
                .iter()
                .any(|r| r.controller && r.uid == d.meta().uid)
        })
        .collect();
    owned.sort_by_key(revision_of);
    Ok(owned)
}

fn template_of(rs: &Object) -> Option<flotilla_api::pb::api::PodTemplateSpec> {
    match &rs.body {
        Some(Body::ReplicaSet(r)) => r.spec.as_ref().and_then(|s| s.template.clone()),
        _ => None,
    }
}

pub async fn rollout(conn: &Conn, cmd: RolloutCommand) -> anyhow::Result<()> {
    let mut c = conn.client().await?;
    match cmd {
        RolloutCommand::Status {
            target,
            timeout_secs,
        } => {
            let key = target.key()?;
            let deadline =
                (timeout_secs > 0).then(|| Instant::now() + Duration::from_secs(timeout_secs));
            let mut last = String::new();
            loop {
                let (o, _) = c.get(key.clone(), false).await?;
                let (msg, done) = rollout_progress(&o)?;
                if msg != last {
                    println!("{msg}");
                    last = msg;
                }
                if done {
                    return Ok(());
                }
                if deadline.is_some_and(|d| Instant::now() > d) {
                    bail!("timed out waiting for the rollout to finish");
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        RolloutCommand::History { target, revision } => {
            let key = target.key()?;
            let (d, _) = c.get(key.clone(), false).await?;
            deployment_parts(&d)?;
            let sets = revisions(&mut c, &d).await?;
            if let Some(n) = revision {
                let rs = sets
                    .iter()
                    .find(|rs| revision_of(rs) == n)
                    .ok_or_else(|| anyhow!("unable to find the specified revision {n}"))?;
                let t = template_of(rs).unwrap_or_default();
                println!("{} with revision #{n}", output::name_of(&d));
                println!("{}", output::template_text(&t));
                return Ok(());
            }
            println!("{}", output::name_of(&d));
            println!("{}", output::history_table(&sets));
            Ok(())
        }
        RolloutCommand::Undo {
            target,
            to_revision,
        } => {
            let key = target.key()?;
            let (d, _) = c.get(key.clone(), false).await?;
            deployment_parts(&d)?;
            let sets = revisions(&mut c, &d).await?;
            let current = sets.iter().map(revision_of).max().unwrap_or(0);
            let wanted = if to_revision > 0 {
                sets.iter().find(|rs| revision_of(rs) == to_revision)
            } else {
                sets.iter().rev().find(|rs| revision_of(rs) < current)
            };
            let Some(rs) = wanted else {
                if to_revision > 0 {
                    bail!("unable to find specified revision {to_revision} in history");
                }
                bail!("no rollout history found for {}", output::name_of(&d));
            };
            let template = template_of(rs)
                .map(|t| strip_hash(&t))
                .ok_or_else(|| anyhow!("revision {} has no pod template", revision_of(rs)))?;
            let (o, changed) = modify(&mut c, &key, |o| {
                let Some(Body::Deployment(x)) = &mut o.body else {
                    bail!("not a deployment");
                };
                let spec = x.spec.get_or_insert_with(Default::default);
                if spec.template.as_ref() == Some(&template) {
                    return Ok(false);
                }
                spec.template = Some(template.clone());
                Ok(true)
            })
            .await?;
            if changed {
                println!("{} rolled back", output::name_of(&o));
            } else {
                println!(
                    "{} skipped rollback (current template already matches revision {})",
                    output::name_of(&o),
                    revision_of(rs)
                );
            }
            Ok(())
        }
        RolloutCommand::Pause { target } => set_paused(&mut c, &target, true).await,
        RolloutCommand::Resume { target } => set_paused(&mut c, &target, false).await,
        RolloutCommand::Restart { target } => {
            let key = target.key()?;
            let now = flotilla_api::manifest::format_timestamp_ms(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
            );
            let (o, _) = modify(&mut c, &key, |o| {
                let Some(Body::Deployment(x)) = &mut o.body else {
                    bail!("only deployments can be restarted");
                };
                let t = x
                    .spec
                    .get_or_insert_with(Default::default)
                    .template
                    .get_or_insert_with(Default::default);
                t.metadata
                    .get_or_insert_with(Default::default)
                    .annotations
                    .insert("kubectl.kubernetes.io/restartedAt".into(), now.clone());
                Ok(true)
            })
            .await?;
            println!("{} restarted", output::name_of(&o));
            Ok(())
        }
    }
}

async fn set_paused(c: &mut Client, target: &Target, pause: bool) -> anyhow::Result<()> {
    let key = target.key()?;
    let (o, changed) = modify(c, &key, |o| {
        let Some(Body::Deployment(x)) = &mut o.body else {
            bail!("only deployments can be paused or resumed");
        };
        let spec = x.spec.get_or_insert_with(Default::default);
        if spec.paused == pause {
            return Ok(false);
        }
        spec.paused = pause;
        Ok(true)
    })
    .await?;
    let verb = if pause { "paused" } else { "resumed" };
    if changed {
        println!("{} {verb}", output::name_of(&o));
    } else {
        println!("{} is already {verb}", output::name_of(&o));
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct NodeArgs {
    /// The node's name.
    node: String,
}

#[derive(clap::Args)]
pub struct DrainArgs {
    node: String,
    /// Go on although the node runs DaemonSet pods (they are left alone: their controller
    /// would put them back).
    #[arg(long)]
    ignore_daemonsets: bool,
    /// Also delete pods no controller will re-create.
    #[arg(long)]
    force: bool,
    /// Give each pod this long to stop (default: its own terminationGracePeriodSeconds).
    #[arg(long)]
    grace_period: Option<i64>,
    /// Give up waiting for the pods to go after this many seconds (0: wait as long as it takes).
    #[arg(long, default_value_t = 0)]
    timeout_secs: u64,
}

async fn set_unschedulable(c: &mut Client, node: &str, on: bool) -> anyhow::Result<()> {
    let key = ObjectKey {
        kind: "Node".into(),
        namespace: String::new(),
        name: node.into(),
    };
    let (_, changed) = modify(c, &key, |o| {
        let Some(Body::Node(n)) = &mut o.body else {
            bail!("{node} is not a node");
        };
        let spec = n.spec.get_or_insert_with(Default::default);
        if spec.unschedulable == on {
            return Ok(false);
        }
        spec.unschedulable = on;
        Ok(true)
    })
    .await?;
    let verb = if on { "cordoned" } else { "uncordoned" };
    if changed {
        println!("node/{node} {verb}");
    } else {
        println!("node/{node} already {verb}");
    }
    Ok(())
}

pub async fn cordon(conn: &Conn, a: NodeArgs, on: bool) -> anyhow::Result<()> {
    let mut c = conn.client().await?;
    set_unschedulable(&mut c, &a.node, on).await
}

fn controller_kind(o: &Object) -> Option<&str> {
    o.meta()
        .owner_references
        .iter()
        .find(|r| r.controller)
        .map(|r| r.kind.as_str())
}

/// kubectl drain: cordon, then evict every pod but DaemonSets', waiting until they are gone.
pub async fn drain(conn: &Conn, a: DrainArgs) -> anyhow::Result<()> {
    let mut c = conn.client().await?;
    set_unschedulable(&mut c, &a.node, true).await?;
    let field = format!("spec.nodeName={}", a.node);
    let (pods, _) = c.list_fields("Pod", "", "", &field, false).await?;
    let finished = |o: &Object| {
        matches!(
            &o.body,
            Some(Body::Pod(p)) if p.status.as_ref().is_some_and(|s| s.phase == "Succeeded" || s.phase == "Failed")
        )
    };
    let daemon: Vec<&Object> = pods
        .iter()
        .filter(|p| controller_kind(p) == Some("DaemonSet"))
        .collect();
    let unmanaged: Vec<&Object> = pods
        .iter()
        .filter(|p| controller_kind(p).is_none() && !finished(p))
        .collect();
    let mut problems = Vec::new();
    if !daemon.is_empty() && !a.ignore_daemonsets {
        problems.push(format!(
            "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): {}",
            names(&daemon)
        ));
    }
    if !unmanaged.is_empty() && !a.force {
        problems.push(format!(
            "cannot delete Pods that declare no controller (use --force to override): {}",
            names(&unmanaged)
        ));
    }
    if !problems.is_empty() {
        bail!("unable to drain node {:?}: {}", a.node, problems.join("; "));
    }
    if !daemon.is_empty() {
        println!(
            "Warning: ignoring DaemonSet-managed Pods: {}",
            names(&daemon)
        );
    }
    let evict: Vec<&Object> = pods
        .iter()
        .filter(|p| controller_kind(p) != Some("DaemonSet"))
        .collect();
    for p in &evict {
        let m = p.meta();
        println!("evicting pod {}/{}", m.namespace, m.name);
        let r = c
            .delete(flotilla_api::pb::api::DeleteRequest {
                key: Some(p.key()),
                expected_resource_version: None,
                expected_uid: Some(m.uid.clone()),
                grace_period_seconds: a.grace_period,
                propagation_policy: String::new(),
            })
            .await;
        match r {
            Ok(_) => {}
            Err(e) if e.code() == flotilla_api::ErrorCode::NotFound => {}
            Err(e) if e.code() == flotilla_api::ErrorCode::Conflict => {}
            Err(e) => return Err(e.into()),
        }
    }
    let deadline =
        (a.timeout_secs > 0).then(|| Instant::now() + Duration::from_secs(a.timeout_secs));
    let mut waiting: Vec<(ObjectKey, String)> = evict
        .iter()
        .map(|p| (p.key(), p.meta().uid.clone()))
        .collect();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for (key, uid) in waiting {
            match c.get(key.clone(), false).await {
                Ok((o, _)) if o.meta().uid == uid => still.push((key, uid)),
                Ok(_) => println!("pod/{} evicted", key.name),
                Err(e) if e.code() == flotilla_api::ErrorCode::NotFound => {
                    println!("pod/{} evicted", key.name)
                }
                Err(e) => return Err(e.into()),
            }
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            bail!(
                "drain did not complete within {} s: {} pods still terminating",
                a.timeout_secs,
                waiting.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("node/{} drained", a.node);
    Ok(())
}

fn names(pods: &[&Object]) -> String {
    pods.iter()
        .map(|p| format!("{}/{}", p.meta().namespace, p.meta().name))
        .collect::<Vec<_>>()
        .join(", ")
}
