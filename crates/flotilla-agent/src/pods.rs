//! The pod sync loop: make the containers on this node match the pods the assignment stream
//! says are bound to it, restart exited containers per `restartPolicy` with Kubernetes'
//! exponential backoff (`CrashLoopBackOff`), and report pod and container status. Containers
//! are named `<pod uid>_<container>_<restart count>`, so an agent that restarts finds the
//! containers it already runs (re-adoption) instead of starting them twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::pb::api::object::Body;
use flotilla_api::pb::api::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Object, ObjectMeta, Pod, PodCondition, PodStatus,
};
use flotilla_api::pb::node::ImageRecord;
use flotilla_runtime::bundle::{merge_env, resolve_args, ContainerConfig, Resources};
use flotilla_runtime::{netns, Containers, ImageStore, PullPolicy, RuntimeConfig};
use futures::StreamExt;
use tokio::sync::{mpsc, Mutex, Notify};

use crate::probe::{self, ContainerProbes, ProbeAction, ProbeKind};
use crate::session::ServerLink;
use crate::volumes::{self, Fetched};

/// The pods the control plane bound to this node, kept by the assignment stream.
#[derive(Default)]
pub struct Desired {
    pub pods: BTreeMap<String, Object>,
    /// Whether a full set has been received since start: nothing is removed before that.
    pub synced: bool,
    /// Where the assignment stream stands, to resume it without losing a pod's event.
    pub position: flotilla_api::resume::ResumePoint,
}

pub type SharedDesired = Arc<Mutex<Desired>>;

#[derive(Clone, Debug)]
pub struct PodsConfig {
    pub data_dir: PathBuf,
    pub runtime: PathBuf,
    pub shim_program: PathBuf,
    pub insecure_registries: Vec<String>,
    pub sync_period_ms: u64,
    pub crash_backoff_initial_ms: u64,
    pub crash_backoff_max_ms: u64,
    /// A container that ran this long resets its backoff (Kubernetes: 10 min).
    pub backoff_reset_ms: u64,
    /// Pods synced at once (pulls are serialised by the image store).
    pub pod_workers: usize,
    /// How often configMap and secret volumes are re-read (Kubernetes: about a minute).
    pub volume_refresh_ms: u64,
    /// Bound on one request for the ConfigMaps and Secrets a pod refers to.
    pub objects_timeout_ms: u64,
    pub image_gc: ImageGc,
}

/// When unused images are removed (Kubernetes' image GC policy, simplified: above the
/// threshold, every image unused for `min_age_ms` goes, not only enough to get below it).
#[derive(Clone, Debug)]
pub struct ImageGc {
    /// Runs only when the images' file system is at least this full; 0: always.
    pub high_percent: u8,
    pub min_age_ms: u64,
    pub period_ms: u64,
}

impl Default for ImageGc {
    fn default() -> Self {
        ImageGc {
            high_percent: 85,
            min_age_ms: 120_000,
            period_ms: 300_000,
        }
    }
}

impl PodsConfig {
    pub fn new(data_dir: PathBuf, runtime: PathBuf, shim_program: PathBuf) -> Self {
        PodsConfig {
            data_dir,
            runtime,
            shim_program,
            insecure_registries: Vec::new(),
            sync_period_ms: 500,
            crash_backoff_initial_ms: 10_000,
            crash_backoff_max_ms: 300_000,
            backoff_reset_ms: 600_000,
            volume_refresh_ms: 60_000,
            pod_workers: 8,
            objects_timeout_ms: 5_000,
            image_gc: ImageGc::default(),
        }
    }
}

struct Ctr {
    spec: Container,
    restart_count: i32,
    /// The runtime id of the current container, if one exists.
    id: Option<String>,
    image_id: String,
    started_at: String,
    started_ms: i64,
    waiting: Option<(String, String)>,
    terminated: Option<ContainerStateTerminated>,
    last_terminated: Option<ContainerStateTerminated>,
    not_before_ms: i64,
    crashes: u32,
    /// The probes of the running instance, if the container has any.
    probes: Option<ContainerProbes>,
    /// Probes of this instance in flight.
    probing: HashSet<ProbeKind>,
    /// A failed liveness or startup probe had the instance stopped.
    killed_by_probe: bool,
}

impl Ctr {
    /// The instance is running (again) since `started_ms`: its probes start over.
    fn probes_start(&mut self, started_ms: i64) {
        let p = ContainerProbes::for_container(&self.spec, started_ms);
        self.probes = (!p.is_empty()).then_some(p);
        self.probing.clear();
        self.killed_by_probe = false;
    }

    fn probes_stop(&mut self) {
        self.probes = None;
        self.probing.clear();
    }

    /// Ready as Kubernetes means it: running, started, and its readiness probe passing.
    fn ready(&self) -> bool {
        self.id.is_some()
            && self.waiting.is_none()
            && self.terminated.is_none()
            && self.probes.as_ref().is_none_or(|p| p.ready())
    }
}

/// One probe attempt's outcome, sent back to the sync loop by the task that ran it.
struct ProbeResult {
    uid: String,
    container_id: String,
    kind: ProbeKind,
    outcome: Result<(), String>,
}

/// Probe results waiting for the sync loop.
const PROBE_QUEUE: usize = 1024;
/// Bytes of an exec probe's output kept for its failure message.
const PROBE_OUTPUT_BYTES: usize = 512;

struct PodRun {
    pod: Object,
    netns: PathBuf,
    /// `<data>/pods/<uid>`: the pod's volumes.
    dir: PathBuf,
    /// Prepared before the first container starts.
    volumes: Option<HashMap<String, volumes::Prepared>>,
    next_volume_refresh_ms: i64,
    ctrs: Vec<Ctr>,
    start_time: String,
    last_report: Option<PodStatus>,
}

pub struct PodManager {
    cfg: PodsConfig,
    images: ImageStore,
    containers: Containers,
    pods: HashMap<String, PodRun>,
    desired: SharedDesired,
    changed: Arc<Notify>,
    status_tx: mpsc::Sender<Report>,
    server: ServerLink,
    /// Pods whose containers are being stopped.
    terminating: HashMap<String, tokio::task::JoinHandle<()>>,
    /// Pods marked for deletion and stopped here, with when the server was last told so.
    stopped: HashMap<String, Option<i64>>,
    probe_tx: mpsc::Sender<ProbeResult>,
    probe_rx: mpsc::Receiver<ProbeResult>,
    /// When each image was last wanted by a pod here (images found at start count from then).
    image_last_used: HashMap<String, i64>,
    next_image_gc_ms: i64,
}

/// What the pod manager tells the session to send.
pub enum Report {
    /// A pod's new status.
    Status(Object),
    /// A pod marked for deletion is stopped and cleaned up: the server may remove it.
    Finished(Object),
    /// Something happened to a pod, for an Event.
    Event(flotilla_api::pb::agent::PodEvent),
}

/// Queues an Event about `pod` (dropped when the queue is full: Events are best effort).
fn event(tx: &mpsc::Sender<Report>, pod: &Object, warning: bool, reason: &str, message: String) {
    let m = pod.meta();
    let _ = tx.try_send(Report::Event(flotilla_api::pb::agent::PodEvent {
        pod_name: m.name.clone(),
        namespace: m.namespace.clone(),
        pod_uid: m.uid.clone(),
        r#type: if warning { "Warning" } else { "Normal" }.into(),
        reason: reason.into(),
        message,
        count: 1,
    }));
}

/// How often a stopped pod is reported again while the server still has it.
const FINISHED_RESEND_MS: i64 = 5_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn container_id(uid: &str, name: &str, restart: i32) -> String {
    format!("{uid}_{name}_{restart}")
}

fn pod_spec(o: &Object) -> Option<&flotilla_api::pb::api::PodSpec> {
    match &o.body {
        Some(Body::Pod(p)) => p.spec.as_ref(),
        _ => None,
    }
}

/// Milli-CPU and bytes from Kubernetes quantities (unparseable ones were refused by the API).
fn resources(c: &Container) -> Resources {
    let q = |m: Option<&BTreeMap<String, String>>, k: &str| {
        m.and_then(|m| m.get(k))
            .and_then(|v| flotilla_api::quantity::Quantity::parse(v).ok())
    };
    let req = c.resources.as_ref().map(|r| &r.requests);
    let lim = c.resources.as_ref().map(|r| &r.limits);
    Resources::from_kubernetes(
        q(req, "cpu").map(|x| x.millis_ceil().max(0) as u64),
        q(lim, "cpu").map(|x| x.millis_ceil().max(0) as u64),
        q(lim, "memory").map(|x| x.units_ceil().max(0) as i64),
        Some(4096),
    )
}

/// The uid and gid a container runs as: the container's securityContext, else the pod's, else
/// the image's `USER` (numeric `uid[:gid]` or `root`). Kubernetes' runAsNonRoot is enforced.
pub fn run_as(
    pod: Option<&flotilla_api::pb::api::PodSecurityContext>,
    ctr: Option<&flotilla_api::pb::api::SecurityContext>,
    image_user: &str,
) -> Result<(u32, u32), String> {
    let parse_image = || -> Result<(u32, u32), String> {
        match image_user {
            "" | "root" | "0" => Ok((0, 0)),
            u => {
                let (a, b) = u.split_once(':').unwrap_or((u, ""));
                let uid = a.parse::<u32>().map_err(|_| {
                    format!("the image's user {u:?} is not numeric: set securityContext.runAsUser")
                })?;
                let gid = if b.is_empty() {
                    uid
                } else {
                    b.parse::<u32>().map_err(|_| {
                        format!(
                            "the image's group in {u:?} is not numeric: set securityContext.runAsGroup"
                        )
                    })?
                };
                Ok((uid, gid))
            }
        }
    };
    let range =
        |v: i64, what: &str| u32::try_from(v).map_err(|_| format!("{what} {v} is out of range"));
    let explicit_uid = ctr
        .and_then(|c| c.run_as_user)
        .or(pod.and_then(|p| p.run_as_user));
    let explicit_gid = ctr
        .and_then(|c| c.run_as_group)
        .or(pod.and_then(|p| p.run_as_group));
    // An explicit runAsUser makes the image's USER irrelevant, named or not.
    let image = match explicit_uid {
        Some(_) => parse_image().unwrap_or((0, 0)),
        None => parse_image()?,
    };
    let uid = match explicit_uid {
        Some(u) => range(u, "runAsUser")?,
        None => image.0,
    };
    let gid = match explicit_gid {
        Some(g) => range(g, "runAsGroup")?,
        None => image.1,
    };
    let non_root = ctr
        .and_then(|c| c.run_as_non_root)
        .or(pod.and_then(|p| p.run_as_non_root))
        .unwrap_or(false);
    if non_root && uid == 0 {
        return Err("container has runAsNonRoot and image will run as root".into());
    }
    Ok((uid, gid))
}

impl PodManager {
    pub fn open(
        cfg: PodsConfig,
        desired: SharedDesired,
        changed: Arc<Notify>,
        status_tx: mpsc::Sender<Report>,
        server: ServerLink,
    ) -> Result<Self, flotilla_runtime::RuntimeError> {
        let images = ImageStore::open(
            cfg.data_dir.join("images"),
            &flotilla_runtime::RegistryConfig {
                insecure: cfg.insecure_registries.clone(),
                ..Default::default()
            },
        )?;
        let mut rc = RuntimeConfig::new(cfg.data_dir.join("runtime"), cfg.shim_program.clone());
        rc.runtime_binary = cfg.runtime.clone();
        let containers = Containers::open(rc)?;
        let (probe_tx, probe_rx) = mpsc::channel(PROBE_QUEUE);
        Ok(PodManager {
            cfg,
            images,
            containers,
            pods: HashMap::new(),
            desired,
            changed,
            status_tx,
            server,
            terminating: HashMap::new(),
            stopped: HashMap::new(),
            probe_tx,
            probe_rx,
            image_last_used: HashMap::new(),
            next_image_gc_ms: 0,
        })
    }

    pub async fn run(mut self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            self.sync().await;
            self.image_gc().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(self.cfg.sync_period_ms)) => {}
            }
        }
    }

    async fn sync(&mut self) {
        let (desired, synced) = {
            let d = self.desired.lock().await;
            (d.pods.clone(), d.synced)
        };
        if !synced {
            return;
        }
        self.probe_results();
        let done: Vec<String> = self
            .terminating
            .iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in done {
            self.terminating.remove(&uid);
            self.stopped.insert(uid, None);
        }
        self.stopped.retain(|uid, _| desired.contains_key(uid));
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !desired.contains_key(*uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(run) = self.pods.remove(&uid) {
                self.spawn_teardown(&uid, run);
            }
        }
        self.remove_orphans(&desired).await;
        let mut batch: Vec<(String, PodRun)> = Vec::new();
        // Listed once per pass, and only when a pod is new here.
        let mut existing: Option<Vec<flotilla_runtime::runc::ContainerState>> = None;
        for (uid, pod) in desired {
            if pod.meta().deletion_timestamp_ms.is_some() {
                self.terminate(&uid, &pod).await;
                continue;
            }
            let run = match self.pods.remove(&uid) {
                Some(r) => r,
                None => {
                    if existing.is_none() {
                        existing = Some(self.containers.runtime().list().await.unwrap_or_default());
                    }
                    let known = existing.as_deref().unwrap_or_default();
                    match self.setup(&uid, pod.clone(), known).await {
                        Ok(run) => run,
                        Err(e) => {
                            tracing::warn!(pod = %pod.meta().name, "cannot set up the pod: {e}");
                            continue;
                        }
                    }
                }
            };
            batch.push((uid, run));
        }
        // Pods are independent: up to `pod_workers` of them are synced at once, so one slow
        // pull or start does not hold up the others.
        let this = &*self;
        let done: Vec<(String, PodRun)> = futures::stream::iter(batch)
            .map(|(uid, mut run)| async move {
                this.sync_pod(&uid, &mut run).await;
                (uid, run)
            })
            .buffer_unordered(self.cfg.pod_workers.max(1))
            .collect()
            .await;
        for (uid, run) in done {
            self.pods.insert(uid, run);
        }
    }

    /// Removes images no pod here has wanted for `min_age_ms`, when the disk is full enough.
    async fn image_gc(&mut self) {
        let now = now_ms();
        let start = *self.image_last_used.entry(String::new()).or_insert(now);
        let in_use: HashSet<String> = {
            let d = self.desired.lock().await;
            if !d.synced {
                return;
            }
            d.pods
                .values()
                .filter_map(pod_spec)
                .flat_map(|s| s.containers.iter().chain(&s.init_containers))
                // As the store names them: `busybox` is `docker.io/library/busybox:latest`.
                .map(|c| {
                    flotilla_runtime::image::parse_reference(&c.image)
                        .map(|r| r.whole())
                        .unwrap_or_else(|_| c.image.clone())
                })
                .collect()
        };
        for image in &in_use {
            self.image_last_used.insert(image.clone(), now);
        }
        if now < self.next_image_gc_ms {
            return;
        }
        self.next_image_gc_ms = now + self.cfg.image_gc.period_ms as i64;
        let gc = &self.cfg.image_gc;
        if gc.high_percent > 0 {
            match disk_used_percent(&self.cfg.data_dir.join("images")) {
                Some(p) if p >= u64::from(gc.high_percent) => {
                    tracing::info!("images' disk is {p}% full: collecting unused images");
                }
                Some(_) => return,
                None => return,
            }
        }
        let min_age = gc.min_age_ms as i64;
        let Ok(records) = self.images.list() else {
            return;
        };
        let keep: HashSet<String> = records
            .into_iter()
            .map(|r| r.reference)
            .filter(|r| {
                let last = self.image_last_used.get(r).copied().unwrap_or(start);
                in_use.contains(r) || now - last < min_age
            })
            .chain(in_use.iter().cloned())
            .collect();
        match self.images.gc(&keep).await {
            Ok(r) if r.images > 0 => tracing::info!(
                images = r.images,
                blobs = r.blobs,
                layers = r.layers,
                "image GC removed unused images"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("image GC: {e}"),
        }
    }

    /// Containers in our runtime state that belong to no desired pod (after an agent restart,
    /// pods deleted meanwhile): removed.
    async fn remove_orphans(&self, desired: &BTreeMap<String, Object>) {
        let Ok(list) = self.containers.runtime().list().await else {
            return;
        };
        for c in list {
            let uid = c.id.split('_').next().unwrap_or_default();
            if !desired.contains_key(uid) && !self.terminating.contains_key(uid) {
                tracing::info!(container = %c.id, "removing a container of a pod no longer here");
                let _ = self.containers.stop(&c.id, Duration::from_secs(2)).await;
                let _ = self.containers.remove(&c.id).await;
            }
        }
        // Volumes and network namespaces of pods that went while the agent was down.
        for sub in ["pods", "netns"] {
            let Ok(entries) = std::fs::read_dir(self.cfg.data_dir.join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                let uid = e.file_name().to_string_lossy().into_owned();
                if desired.contains_key(&uid)
                    || self.pods.contains_key(&uid)
                    || self.terminating.contains_key(&uid)
                {
                    continue;
                }
                tracing::info!(pod_uid = %uid, "removing the {sub} entry of a pod no longer here");
                if sub == "pods" {
                    volumes::remove_pod_dir(&e.path());
                } else {
                    let _ = netns::remove(&e.path());
                }
            }
        }
    }

    /// Creates the pod's network namespace (or finds it) and adopts running containers.
    async fn setup(
        &self,
        uid: &str,
        pod: Object,
        existing: &[flotilla_runtime::runc::ContainerState],
    ) -> Result<PodRun, String> {
        let spec = pod_spec(&pod).cloned().unwrap_or_default();
        let ns = self.cfg.data_dir.join("netns").join(uid);
        if !flotilla_runtime::rootfs::is_mounted(&ns) {
            netns::create(&ns).map_err(|e| e.to_string())?;
        }
        let mut ctrs = Vec::new();
        for c in spec.containers {
            let prefix = format!("{uid}_{}_", c.name);
            // The newest container of this name, if the agent ran it before a restart.
            let adopted = existing
                .iter()
                .filter_map(|s| {
                    s.id.strip_prefix(&prefix)
                        .and_then(|n| n.parse::<i32>().ok())
                        .map(|n| (n, s.id.clone()))
                })
                .max();
            let (restart_count, id) = match adopted {
                Some((n, id)) => (n, Some(id)),
                None => (0, None),
            };
            if let Some(id) = &id {
                tracing::info!(container = %id, "adopted a running container");
            }
            ctrs.push(Ctr {
                spec: c,
                restart_count,
                id,
                image_id: String::new(),
                started_at: String::new(),
                started_ms: now_ms(),
                waiting: Some(("ContainerCreating".into(), String::new())),
                terminated: None,
                last_terminated: None,
                not_before_ms: 0,
                crashes: 0,
                probes: None,
                probing: HashSet::new(),
                killed_by_probe: false,
            });
        }
        Ok(PodRun {
            pod,
            netns: ns,
            dir: self.cfg.data_dir.join("pods").join(uid),
            volumes: None,
            next_volume_refresh_ms: 0,
            ctrs,
            start_time: rfc3339(now_ms()),
            last_report: None,
        })
    }

    /// Stops the pod's containers in a task of its own (a grace period must not hold up the
    /// other pods) and removes everything the pod had on the node.
    fn spawn_teardown(&mut self, uid: &str, run: PodRun) {
        // The grace period of the deletion, else the pod's.
        let grace = run
            .pod
            .meta()
            .deletion_grace_period_seconds
            .or(pod_spec(&run.pod).and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .clamp(0, 3600) as u64;
        for c in run.ctrs.iter().filter(|c| c.id.is_some()) {
            event(
                &self.status_tx,
                &run.pod,
                false,
                "Killing",
                format!("Stopping container {}", c.spec.name),
            );
        }
        let containers = self.containers.clone();
        let changed = self.changed.clone();
        let uid_owned = uid.to_string();
        let task = async move {
            let uid = uid_owned;
            // All containers get their grace period at once, as Kubernetes does.
            let stops = run.ctrs.iter().filter_map(|c| c.id.as_deref()).map(|id| {
                let containers = &containers;
                async move {
                    if let Err(e) = containers.stop(id, Duration::from_secs(grace)).await {
                        tracing::warn!(container = %id, "stop: {e}");
                    }
                    if let Err(e) = containers.remove(id).await {
                        tracing::warn!(container = %id, "remove: {e}");
                    }
                }
            });
            futures::future::join_all(stops).await;
            containers.remove_logs(&format!("{uid}_"));
            volumes::remove_pod_dir(&run.dir);
            let _ = netns::remove(&run.netns);
            let _ = flotilla_runtime::cgroup::remove(&format!("/flotilla/{uid}"));
            tracing::info!(pod = %run.pod.meta().name, "pod removed from the node");
            changed.notify_one();
        };
        self.terminating.insert(uid.to_string(), tokio::spawn(task));
    }

    /// A pod marked for deletion: stop it here, then tell the server it may remove it.
    async fn terminate(&mut self, uid: &str, pod: &Object) {
        if self.terminating.contains_key(uid) {
            return;
        }
        if let Some(mut run) = self.pods.remove(uid) {
            run.pod = pod.clone();
            self.spawn_teardown(uid, run);
            return;
        }
        if !self.stopped.contains_key(uid) {
            // Not known here, as after an agent restart: adopt what is left, then tear it down.
            let existing = self.containers.runtime().list().await.unwrap_or_default();
            match self.setup(uid, pod.clone(), &existing).await {
                Ok(run) => self.spawn_teardown(uid, run),
                Err(e) => tracing::warn!(pod = %pod.meta().name, "cannot clean up: {e}"),
            }
            return;
        }
        let now = now_ms();
        let due = self
            .stopped
            .get(uid)
            .is_some_and(|sent| sent.is_none_or(|t| now >= t + FINISHED_RESEND_MS));
        if due {
            let report = Object {
                api_version: "v1".into(),
                kind: "Pod".into(),
                metadata: Some(ObjectMeta {
                    name: pod.meta().name.clone(),
                    namespace: pod.meta().namespace.clone(),
                    uid: uid.to_string(),
                    ..Default::default()
                }),
                body: None,
            };
            if self.status_tx.try_send(Report::Finished(report)).is_ok() {
                self.stopped.insert(uid.to_string(), Some(now));
            }
        }
    }

    async fn sync_pod(&self, uid: &str, run: &mut PodRun) {
        let policy = pod_spec(&run.pod)
            .map(|s| s.restart_policy.clone())
            .unwrap_or_default();
        for i in 0..run.ctrs.len() {
            let before = (run.ctrs[i].waiting.clone(), run.ctrs[i].id.clone());
            self.sync_container(uid, run, i, &policy).await;
            self.container_events(run, i, before);
        }
        self.start_probes(uid, run);
        self.refresh_volumes(run).await;
        let mut status = pod_status(run, &policy);
        // A condition keeps its lastTransitionTime until its status changes.
        let now = rfc3339(now_ms());
        for cond in status.conditions.iter_mut() {
            let before = run
                .last_report
                .as_ref()
                .and_then(|r| r.conditions.iter().find(|c| c.r#type == cond.r#type));
            cond.last_transition_time = match before {
                Some(b) if b.status == cond.status => b.last_transition_time.clone(),
                _ => now.clone(),
            };
        }
        if run.last_report.as_ref() != Some(&status) {
            let report = Object {
                api_version: "v1".into(),
                kind: "Pod".into(),
                metadata: Some(ObjectMeta {
                    name: run.pod.meta().name.clone(),
                    namespace: run.pod.meta().namespace.clone(),
                    uid: run.pod.meta().uid.clone(),
                    ..Default::default()
                }),
                body: Some(Body::Pod(Pod {
                    spec: None,
                    status: Some(status.clone()),
                })),
            };
            if self.status_tx.try_send(Report::Status(report)).is_ok() {
                run.last_report = Some(status);
            }
        }
    }

    async fn sync_container(&self, uid: &str, run: &mut PodRun, i: usize, policy: &str) {
        let now = now_ms();
        if let Some(id) = run.ctrs[i].id.clone() {
            // Seen running before: only the shim's exit record can change that, and reading
            // it costs no runtime process (a sync visits every container).
            if !run.ctrs[i].started_at.is_empty() {
                match self.containers.exited(&id) {
                    Ok(None) => return,
                    Ok(Some(_)) => {}
                    Err(e) => {
                        tracing::warn!(container = %id, "exit record: {e}");
                        return;
                    }
                }
            }
            let st = match self.containers.status(&id).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(container = %id, "status: {e}");
                    return;
                }
            };
            let c = &mut run.ctrs[i];
            match st.exit {
                None if st.status == "running" => {
                    if c.started_at.is_empty() {
                        c.started_at = rfc3339(now);
                        c.probes_start(now);
                    }
                    c.waiting = None;
                    c.terminated = None;
                    return;
                }
                None if st.status == "created" => {
                    let _ = self.containers.start(&id).await;
                    return;
                }
                None if st.status != "unknown" => return,
                None => {
                    // The runtime lost it (host reboot): start a new one.
                    c.id = None;
                }
                Some(exit) => {
                    c.probes_stop();
                    let reason = if st.oom_killed {
                        "OOMKilled"
                    } else if exit.exit_code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    };
                    let term = ContainerStateTerminated {
                        exit_code: exit.exit_code,
                        signal: exit.signal,
                        reason: reason.into(),
                        message: String::new(),
                        started_at: rfc3339(exit.started_unix_ms),
                        finished_at: rfc3339(exit.finished_unix_ms),
                        container_id: format!("runc://{id}"),
                    };
                    let ran_ms = exit.finished_unix_ms - exit.started_unix_ms;
                    if ran_ms >= self.cfg.backoff_reset_ms as i64 {
                        c.crashes = 0;
                    }
                    let restart = match policy {
                        "Never" => false,
                        "OnFailure" => exit.exit_code != 0,
                        _ => true,
                    };
                    if restart {
                        let delay = if c.crashes == 0 {
                            0
                        } else {
                            (self.cfg.crash_backoff_initial_ms << (c.crashes - 1).min(16))
                                .min(self.cfg.crash_backoff_max_ms)
                        };
                        c.crashes += 1;
                        c.not_before_ms = now + delay as i64;
                        c.last_terminated = Some(term);
                        c.terminated = None;
                        c.started_at.clear();
                        if delay > 0 {
                            c.waiting = Some((
                                "CrashLoopBackOff".into(),
                                format!(
                                    "back-off {}s restarting failed container={} pod={}",
                                    delay / 1000,
                                    c.spec.name,
                                    run.pod.meta().name
                                ),
                            ));
                        }
                        // The previous instance's log stays for `logs --previous`.
                        let _ = self.containers.remove_keep_logs(&id).await;
                        if c.restart_count >= 1 {
                            self.containers.remove_logs(&container_id(
                                uid,
                                &c.spec.name,
                                c.restart_count - 1,
                            ));
                        }
                        c.id = None;
                        c.restart_count += 1;
                    } else {
                        c.terminated = Some(term);
                        c.waiting = None;
                        return;
                    }
                }
            }
        }
        let c = &run.ctrs[i];
        if c.id.is_some() || c.terminated.is_some() || now < c.not_before_ms {
            return;
        }
        self.start_container(uid, run, i).await;
    }

    /// Events for what the last sync did to container `i`: a new error (pull, config, start,
    /// crash back-off, volume) once per change, and a start.
    fn container_events(
        &self,
        run: &PodRun,
        i: usize,
        (waiting_before, id_before): (Option<(String, String)>, Option<String>),
    ) {
        let c = &run.ctrs[i];
        let name = &c.spec.name;
        if c.waiting != waiting_before {
            if let Some((reason, msg)) = &c.waiting {
                let ev = match reason.as_str() {
                    "ErrImagePull" => Some((
                        "Failed",
                        format!("Failed to pull image {:?}: {msg}", c.spec.image),
                    )),
                    "ImagePullBackOff" => Some((
                        "BackOff",
                        format!("Back-off pulling image {:?}", c.spec.image),
                    )),
                    "CrashLoopBackOff" => Some((
                        "BackOff",
                        format!(
                            "Back-off restarting failed container {name} in pod {}",
                            run.pod.meta().name
                        ),
                    )),
                    "ContainerCreating" if !msg.is_empty() => Some(("FailedMount", msg.clone())),
                    "ContainerCreating" => None,
                    _ => Some(("Failed", format!("Error: {msg}"))),
                };
                if let Some((r, m)) = ev {
                    event(&self.status_tx, &run.pod, true, r, m);
                }
            }
        }
        if c.id.is_some() && c.id != id_before && c.waiting.is_none() && c.terminated.is_none() {
            event(
                &self.status_tx,
                &run.pod,
                false,
                "Started",
                format!("Started container {name}"),
            );
        }
    }

    /// Applies finished probe attempts: readiness changes the container's Ready; a failed
    /// liveness or startup probe stops the instance, which is then restarted per the pod's
    /// restartPolicy (as the kubelet does).
    fn probe_results(&mut self) {
        let now = now_ms();
        while let Ok(r) = self.probe_rx.try_recv() {
            let Some(run) = self.pods.get_mut(&r.uid) else {
                continue;
            };
            let pod_grace = pod_spec(&run.pod)
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30);
            let pod_name = run.pod.meta().name.clone();
            let pod = &run.pod;
            let Some(c) = run
                .ctrs
                .iter_mut()
                .find(|c| c.id.as_deref() == Some(r.container_id.as_str()))
            else {
                continue;
            };
            c.probing.remove(&r.kind);
            let Some(probes) = c.probes.as_mut() else {
                continue;
            };
            if let Err(msg) = &r.outcome {
                tracing::info!(pod = %pod_name, container = %c.spec.name, "{} probe failed: {msg}", r.kind);
                event(
                    &self.status_tx,
                    pod,
                    true,
                    "Unhealthy",
                    format!("{} probe failed: {msg}", r.kind.as_str()),
                );
            }
            if let Some(v) = probes.record(r.kind, r.outcome.is_ok(), now) {
                tracing::info!(pod = %pod_name, container = %c.spec.name, "{} probe verdict: {v}", r.kind);
            }
            if let (Some(kind), false) = (probes.failed(), c.killed_by_probe) {
                c.killed_by_probe = true;
                let grace = c
                    .spec
                    .liveness_probe
                    .as_ref()
                    .filter(|_| kind == ProbeKind::Liveness)
                    .or(c.spec.startup_probe.as_ref())
                    .and_then(|p| p.termination_grace_period_seconds)
                    .unwrap_or(pod_grace)
                    .clamp(0, 3600) as u64;
                tracing::warn!(pod = %pod_name, container = %c.spec.name, "container failed its {kind} probe and will be restarted");
                event(
                    &self.status_tx,
                    pod,
                    false,
                    "Killing",
                    format!(
                        "Container {} failed {} probe, will be restarted",
                        c.spec.name,
                        kind.as_str().to_lowercase()
                    ),
                );
                let containers = self.containers.clone();
                let id = r.container_id.clone();
                tokio::spawn(async move {
                    if let Err(e) = containers.stop(&id, Duration::from_secs(grace)).await {
                        tracing::warn!(container = %id, "stop after a failed probe: {e}");
                    }
                });
            }
        }
    }

    /// Starts the probes that are due, each in a task of its own bounded by its timeout.
    fn start_probes(&self, uid: &str, run: &mut PodRun) {
        let now = now_ms();
        for c in run.ctrs.iter_mut() {
            let (Some(id), Some(probes)) = (c.id.clone(), c.probes.as_ref()) else {
                continue;
            };
            if c.killed_by_probe || c.terminated.is_some() {
                continue;
            }
            for kind in probes.due(now) {
                if !c.probing.insert(kind) {
                    continue;
                }
                let Some(spec) = (match kind {
                    ProbeKind::Liveness => c.spec.liveness_probe.clone(),
                    ProbeKind::Readiness => c.spec.readiness_probe.clone(),
                    ProbeKind::Startup => c.spec.startup_probe.clone(),
                }) else {
                    continue;
                };
                let timeout = probes
                    .tracker(kind)
                    .map(|t| t.timeout())
                    .unwrap_or(Duration::from_secs(1));
                let containers = self.containers.clone();
                let netns = run.netns.clone();
                let ports = c.spec.ports.clone();
                let tx = self.probe_tx.clone();
                let changed = self.changed.clone();
                let uid = uid.to_string();
                let id = id.clone();
                tokio::spawn(async move {
                    let outcome = run_probe(&containers, &netns, &id, &spec, &ports, timeout).await;
                    let r = ProbeResult {
                        uid,
                        container_id: id,
                        kind,
                        outcome,
                    };
                    if tx.send(r).await.is_ok() {
                        changed.notify_one();
                    }
                });
            }
        }
    }

    /// The ConfigMaps and Secrets the pod refers to, from the connected server.
    async fn referenced(&self, pod: &Object) -> Result<Fetched, String> {
        let refs = pod_spec(pod)
            .map(|s| flotilla_api::refs::pod_references(&pod.meta().namespace, s))
            .unwrap_or_default();
        if refs.is_empty() {
            return Ok(Fetched::default());
        }
        let (objects, _missing) = self
            .server
            .get_objects(refs, self.cfg.objects_timeout_ms)
            .await
            .map_err(|e| format!("cannot read the ConfigMaps and Secrets the pod uses: {e}"))?;
        Ok(Fetched::new(objects))
    }

    /// Re-reads configMap and secret volumes now and then, so updates reach running pods.
    async fn refresh_volumes(&self, run: &mut PodRun) {
        let has_projected = pod_spec(&run.pod).is_some_and(|s| {
            s.volumes
                .iter()
                .any(|v| v.config_map.is_some() || v.secret.is_some())
        });
        if run.volumes.is_none() || !has_projected || now_ms() < run.next_volume_refresh_ms {
            return;
        }
        run.next_volume_refresh_ms = now_ms() + self.cfg.volume_refresh_ms as i64;
        let vols = pod_spec(&run.pod)
            .map(|s| s.volumes.clone())
            .unwrap_or_default();
        match self.referenced(&run.pod).await {
            Ok(f) => {
                if let Err(e) = volumes::prepare(&run.dir, &vols, &f) {
                    tracing::warn!(pod = %run.pod.meta().name, "volume refresh: {e}");
                }
            }
            Err(e) => tracing::debug!(pod = %run.pod.meta().name, "volume refresh: {e}"),
        }
    }

    async fn start_container(&self, uid: &str, run: &mut PodRun, i: usize) {
        let spec = run.ctrs[i].spec.clone();
        let policy = match PullPolicy::parse(&spec.image_pull_policy, &spec.image) {
            Ok(p) => p,
            Err(e) => {
                run.ctrs[i].waiting = Some(("InvalidImageName".into(), e.to_string()));
                return;
            }
        };
        let image: ImageRecord = match self.images.ensure(&spec.image, policy).await {
            Ok(r) => r,
            Err(e) => {
                let c = &mut run.ctrs[i];
                // Kubernetes shows ErrImagePull, then ImagePullBackOff while it waits.
                let reason = if c.waiting.as_ref().is_some_and(|w| w.0 == "ErrImagePull") {
                    "ImagePullBackOff"
                } else {
                    e.reason()
                };
                c.waiting = Some((reason.into(), e.to_string()));
                c.crashes += 1;
                let delay = (self.cfg.crash_backoff_initial_ms << (c.crashes - 1).min(16))
                    .min(self.cfg.crash_backoff_max_ms);
                c.not_before_ms = now_ms() + delay as i64;
                return;
            }
        };
        let img_cfg = image.config.clone().unwrap_or_default();
        let fetched = match self.referenced(&run.pod).await {
            Ok(f) => f,
            Err(msg) => {
                run.ctrs[i].waiting = Some(("CreateContainerConfigError".into(), msg));
                return;
            }
        };
        if run.volumes.is_none() {
            let vols = pod_spec(&run.pod)
                .map(|s| s.volumes.clone())
                .unwrap_or_default();
            match volumes::prepare(&run.dir, &vols, &fetched) {
                Ok(v) => {
                    run.volumes = Some(v);
                    run.next_volume_refresh_ms = now_ms() + self.cfg.volume_refresh_ms as i64;
                }
                Err(msg) => {
                    run.ctrs[i].waiting = Some(("ContainerCreating".into(), msg));
                    return;
                }
            }
        }
        let env = match volumes::resolve_env(&run.pod, &spec, &fetched) {
            Ok(e) => e,
            Err(msg) => {
                run.ctrs[i].waiting = Some(("CreateContainerConfigError".into(), msg));
                return;
            }
        };
        let mounts = match volumes::mounts(&spec, run.volumes.as_ref().unwrap_or(&HashMap::new())) {
            Ok(m) => m,
            Err(msg) => {
                run.ctrs[i].waiting = Some(("CreateContainerConfigError".into(), msg));
                return;
            }
        };
        // Kubernetes expands $(VAR) in command and args with the container's env.
        let vars: HashMap<String, String> = env.iter().cloned().collect();
        let command: Vec<String> = spec
            .command
            .iter()
            .map(|a| volumes::expand(a, &vars))
            .collect();
        let args: Vec<String> = spec
            .args
            .iter()
            .map(|a| volumes::expand(a, &vars))
            .collect();
        let id = container_id(uid, &spec.name, run.ctrs[i].restart_count);
        let pod_sc = pod_spec(&run.pod).and_then(|s| s.security_context);
        let (run_uid, run_gid) = match run_as(
            pod_sc.as_ref(),
            spec.security_context.as_ref(),
            &img_cfg.user,
        ) {
            Ok(x) => x,
            Err(msg) => {
                run.ctrs[i].waiting = Some(("CreateContainerConfigError".into(), msg));
                return;
            }
        };
        let readonly_rootfs = spec
            .security_context
            .as_ref()
            .and_then(|c| c.read_only_root_filesystem)
            .unwrap_or(false);
        let cfg = ContainerConfig {
            id: id.clone(),
            args: resolve_args(&img_cfg, &command, &args),
            env: merge_env(&img_cfg.env, &env),
            cwd: if spec.working_dir.is_empty() {
                img_cfg.working_dir.clone()
            } else {
                spec.working_dir.clone()
            },
            uid: run_uid,
            gid: run_gid,
            hostname: run.pod.meta().name.chars().take(63).collect(),
            netns: Some(run.netns.clone()),
            mounts,
            resources: resources(&spec),
            cgroups_path: format!("/flotilla/{uid}/{}", spec.name),
            readonly_rootfs,
        };
        let c = &mut run.ctrs[i];
        // A leftover of this id (a failed earlier attempt) goes first.
        let _ = self.containers.remove(&id).await;
        match self.containers.create(&cfg, &image, &self.images).await {
            Ok(_) => match self.containers.start(&id).await {
                Ok(()) => {
                    let now = now_ms();
                    c.id = Some(id);
                    c.image_id = image.manifest_digest.clone();
                    c.started_at = rfc3339(now);
                    c.started_ms = now;
                    c.waiting = None;
                    c.probes_start(now);
                }
                Err(e) => {
                    c.waiting = Some(("RunContainerError".into(), e.to_string()));
                    let _ = self.containers.remove(&id).await;
                }
            },
            Err(e) => {
                c.waiting = Some((e.reason().into(), e.to_string()));
            }
        }
    }
}

fn pod_status(run: &PodRun, policy: &str) -> PodStatus {
    let mut statuses = Vec::new();
    let (mut running, mut succeeded, mut failed, mut ready_count) = (0, 0, 0, 0);
    for c in &run.ctrs {
        let state = if let Some(t) = &c.terminated {
            if t.exit_code == 0 {
                succeeded += 1;
            } else {
                failed += 1;
            }
            ContainerState {
                terminated: Some(t.clone()),
                ..Default::default()
            }
        } else if let Some((reason, message)) = &c.waiting {
            ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: reason.clone(),
                    message: message.clone(),
                }),
                ..Default::default()
            }
        } else if c.id.is_some() {
            running += 1;
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: c.started_at.clone(),
                }),
                ..Default::default()
            }
        } else {
            ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                }),
                ..Default::default()
            }
        };
        let is_running = state.running.is_some();
        let ready = is_running && c.ready();
        if ready {
            ready_count += 1;
        }
        statuses.push(ContainerStatus {
            name: c.spec.name.clone(),
            state: Some(state),
            last_state: c.last_terminated.clone().map(|t| ContainerState {
                terminated: Some(t),
                ..Default::default()
            }),
            ready,
            restart_count: c.restart_count,
            image: c.spec.image.clone(),
            image_id: c.image_id.clone(),
            container_id: c
                .id
                .as_ref()
                .map(|i| format!("runc://{i}"))
                .unwrap_or_default(),
            started: Some(is_running && c.probes.as_ref().is_none_or(|p| p.started())),
        });
    }
    let n = run.ctrs.len();
    let phase = if n > 0 && succeeded == n && policy != "Always" {
        "Succeeded"
    } else if n > 0 && succeeded + failed == n && failed > 0 && policy == "Never" {
        "Failed"
    } else if running > 0 || succeeded + failed > 0 {
        "Running"
    } else {
        "Pending"
    };
    let all_ready = n > 0 && ready_count == n;
    let cond = |t: &str, ok: bool| PodCondition {
        r#type: t.into(),
        status: if ok { "True" } else { "False" }.into(),
        last_probe_time: String::new(),
        last_transition_time: String::new(),
        reason: if ok || t == "PodScheduled" || t == "Initialized" {
            String::new()
        } else {
            "ContainersNotReady".into()
        },
        message: String::new(),
    };
    PodStatus {
        phase: phase.into(),
        conditions: vec![
            cond("PodScheduled", true),
            cond("Initialized", true),
            cond("ContainersReady", all_ready),
            cond("Ready", all_ready),
        ],
        host_ip: String::new(),
        pod_ip: String::new(),
        start_time: run.start_time.clone(),
        container_statuses: statuses,
        qos_class: String::new(),
        ..Default::default()
    }
}

/// How full the file system holding `path` is, in percent.
fn disk_used_percent(path: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let total = st.blocks() as u64;
    let avail = st.blocks_available() as u64;
    if total == 0 {
        return None;
    }
    Some((total - avail.min(total)) * 100 / total)
}

/// One probe attempt: the exec command's exit status, or a TCP/HTTP check from inside the
/// pod's network namespace, bounded by `timeout`.
async fn run_probe(
    containers: &Containers,
    netns: &std::path::Path,
    id: &str,
    spec: &flotilla_api::pb::api::Probe,
    ports: &[flotilla_api::pb::api::ContainerPort],
    timeout: Duration,
) -> Result<(), String> {
    match probe::probe_action(spec)? {
        ProbeAction::Exec(a) => {
            let mut cmd = containers
                .exec_command(id, &a.command)
                .map_err(|e| e.to_string())?;
            let out = tokio::time::timeout(timeout, cmd.output())
                .await
                .map_err(|_| {
                    format!(
                        "command {:?} timed out after {}s",
                        a.command,
                        timeout.as_secs_f64()
                    )
                })?
                .map_err(|e| format!("command {:?}: {e}", a.command))?;
            if out.status.success() {
                return Ok(());
            }
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let text: String = text.trim().chars().take(PROBE_OUTPUT_BYTES).collect();
            Err(format!(
                "command {:?} exited with {}: {text}",
                a.command,
                out.status.code().unwrap_or(-1)
            ))
        }
        ProbeAction::HttpGet(a) => {
            let port = probe::resolve_port(&a.port, ports)?;
            probe::http_check(netns, a, port, timeout).await
        }
        ProbeAction::TcpSocket(a) => {
            let port = probe::resolve_port(&a.port, ports)?;
            let host = probe::parse_host(&a.host)?;
            probe::tcp_check(netns, host, port, timeout).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::pb::api::{PodSecurityContext, SecurityContext};

    #[test]
    fn run_as_follows_container_then_pod_then_image() {
        assert_eq!(run_as(None, None, ""), Ok((0, 0)));
        assert_eq!(run_as(None, None, "1000:2000"), Ok((1000, 2000)));
        assert_eq!(run_as(None, None, "42"), Ok((42, 42)));
        assert!(run_as(None, None, "nginx")
            .unwrap_err()
            .contains("runAsUser"));
        let pod = PodSecurityContext {
            run_as_user: Some(7),
            run_as_group: Some(8),
            ..Default::default()
        };
        let ctr = SecurityContext {
            run_as_user: Some(9),
            ..Default::default()
        };
        assert_eq!(run_as(Some(&pod), None, "nginx"), Ok((7, 8)));
        assert_eq!(run_as(Some(&pod), Some(&ctr), ""), Ok((9, 8)));
        let strict = SecurityContext {
            run_as_non_root: Some(true),
            ..Default::default()
        };
        assert!(run_as(None, Some(&strict), "")
            .unwrap_err()
            .contains("runAsNonRoot"));
        assert_eq!(run_as(None, Some(&strict), "1000"), Ok((1000, 1000)));
        let bad = SecurityContext {
            run_as_user: Some(-1),
            ..Default::default()
        };
        assert!(run_as(None, Some(&bad), "").is_err());
    }
}
