//! Container probes (liveness, readiness, startup) for the node agent.
//!
//! This module owns two things, kept apart so the scheduling rules are testable without a clock
//! or a network:
//!
//! - [`ProbeTracker`] / [`ContainerProbes`]: the pure state machine of one container's probes,
//!   following the kubelet (`pkg/kubelet/prober/worker.go`): when each probe is due, how
//!   consecutive results turn into a verdict, and how a startup probe gates the other two.
//!   Times are passed in as Unix milliseconds; nothing here sleeps or reads the clock.
//! - The network actions ([`tcp_check`], [`http_check`]), run inside the pod's network
//!   namespace. The agent lives in the host namespace, so each check connects from a short-lived
//!   thread that has entered the pod's namespace; the socket keeps that namespace after the
//!   thread ends and is then driven from the async runtime as usual.
//!
//! Exec probes run a command in the container; that belongs with the runtime, not here
//! ([`probe_action`] tells the caller which kind a probe is).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_api::pb::api::{
    Container, ContainerPort, ExecAction, HttpGetAction, Probe, TcpSocketAction,
};
use hyper::header::{HeaderName, HeaderValue, ACCEPT, CONNECTION, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;

/// Sent unless the probe sets its own `User-Agent` (the kubelet sends `kube-probe/<version>`).
pub const USER_AGENT_VALUE: &str = "flotilla-probe/1.0";

// Kubernetes' API defaults, applied again here so a probe that skipped defaulting (0 or
// negative) still behaves sanely instead of probing in a tight loop or never flipping.
const DEFAULT_TIMEOUT_SECONDS: i32 = 1;
const DEFAULT_PERIOD_SECONDS: i32 = 10;
const DEFAULT_SUCCESS_THRESHOLD: i32 = 1;
const DEFAULT_FAILURE_THRESHOLD: i32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }
}

impl std::fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn or_default(v: i32, default: i32) -> i32 {
    if v > 0 {
        v
    } else {
        default
    }
}

/// The probing state of one probe of one container instance. A restarted container gets a new
/// tracker (the kubelet resets its worker when the container ID changes).
#[derive(Clone, Debug)]
pub struct ProbeTracker {
    kind: ProbeKind,
    timeout: Duration,
    period_ms: i64,
    /// `started_at + initialDelaySeconds`: the first slot; later slots are `period_ms` apart.
    first_due_ms: i64,
    next_due_ms: i64,
    success_threshold: u32,
    failure_threshold: u32,
    /// `Some(true)`: success (alive / ready / started); `Some(false)`: failure; `None`: unknown.
    verdict: Option<bool>,
    /// The last result and how many times in a row it came.
    last: Option<bool>,
    run: u32,
    /// No more probing for this container instance: liveness or startup failed (it is to be
    /// restarted), or startup succeeded (it has started for good).
    on_hold: bool,
}

impl ProbeTracker {
    /// `started_at_ms`: when the container (this instance of it) started running.
    pub fn new(kind: ProbeKind, probe: &Probe, started_at_ms: i64) -> Self {
        let delay_ms = i64::from(probe.initial_delay_seconds.max(0)) * 1000;
        let first_due_ms = started_at_ms.saturating_add(delay_ms);
        ProbeTracker {
            kind,
            timeout: Duration::from_secs(u64::from(
                or_default(probe.timeout_seconds, DEFAULT_TIMEOUT_SECONDS).unsigned_abs(),
            )),
            period_ms: i64::from(or_default(probe.period_seconds, DEFAULT_PERIOD_SECONDS)) * 1000,
            first_due_ms,
            next_due_ms: first_due_ms,
            success_threshold: or_default(probe.success_threshold, DEFAULT_SUCCESS_THRESHOLD)
                .unsigned_abs(),
            failure_threshold: or_default(probe.failure_threshold, DEFAULT_FAILURE_THRESHOLD)
                .unsigned_abs(),
            // The kubelet's initial values: not ready until proven, alive until proven otherwise,
            // startup unknown (neither started nor failed).
            verdict: match kind {
                ProbeKind::Readiness => Some(false),
                ProbeKind::Liveness => Some(true),
                ProbeKind::Startup => None,
            },
            last: None,
            run: 0,
            on_hold: false,
        }
    }

    pub fn kind(&self) -> ProbeKind {
        self.kind
    }

    /// How long one attempt may take (`timeoutSeconds`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a probe should run now: from `initialDelaySeconds` after the start, then every
    /// `periodSeconds`; never once the tracker is on hold.
    pub fn due(&self, now_ms: i64) -> bool {
        !self.on_hold && now_ms >= self.next_due_ms
    }

    /// When the next probe is due, for the caller's timer; `None` once on hold.
    pub fn next_due_ms(&self) -> Option<i64> {
        (!self.on_hold).then_some(self.next_due_ms)
    }

    /// The current verdict: `Some(true)` alive / ready / started, `Some(false)` failed / not
    /// ready, `None` not yet known (startup only).
    pub fn verdict(&self) -> Option<bool> {
        self.verdict
    }

    /// Whether probing has stopped for this container instance (see [`ProbeTracker::due`]).
    pub fn on_hold(&self) -> bool {
        self.on_hold
    }

    /// Records one attempt's result, finished at `now_ms`. Returns the new verdict when it
    /// changes: after `successThreshold` successes or `failureThreshold` failures in a row.
    pub fn record(&mut self, success: bool, now_ms: i64) -> Option<bool> {
        if self.on_hold {
            return None;
        }
        self.schedule_after(now_ms);
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let threshold = if success {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < threshold {
            return None;
        }
        let changed = self.verdict != Some(success);
        self.verdict = Some(success);
        match (self.kind, success) {
            // The container will be restarted; probe nothing more until the new instance (as
            // the kubelet's `onHold`).
            (ProbeKind::Liveness | ProbeKind::Startup, false) => {
                self.on_hold = true;
                self.run = 0;
            }
            // Started is for good: the kubelet stops running a startup probe once it passed.
            (ProbeKind::Startup, true) => self.on_hold = true,
            _ => {}
        }
        changed.then_some(success)
    }

    /// Moves the next slot past `now_ms`. Slots stay anchored at the first one (like the
    /// kubelet's ticker), so probe durations do not drift the schedule; slots missed by a slow
    /// attempt are skipped rather than run in a burst.
    fn schedule_after(&mut self, now_ms: i64) {
        if now_ms < self.first_due_ms {
            return;
        }
        let slots = (now_ms - self.first_due_ms) / self.period_ms + 1;
        self.next_due_ms = self
            .first_due_ms
            .saturating_add(slots.saturating_mul(self.period_ms));
    }
}

/// All probes of one container instance, with the startup probe gating the other two (as in
/// the kubelet: until the startup probe has succeeded once, liveness and readiness do not run,
/// the container is alive and not ready).
#[derive(Clone, Debug, Default)]
pub struct ContainerProbes {
    pub liveness: Option<ProbeTracker>,
    pub readiness: Option<ProbeTracker>,
    pub startup: Option<ProbeTracker>,
}

impl ContainerProbes {
    pub fn new(
        liveness: Option<&Probe>,
        readiness: Option<&Probe>,
        startup: Option<&Probe>,
        started_at_ms: i64,
    ) -> Self {
        let mk = |kind, p: Option<&Probe>| p.map(|p| ProbeTracker::new(kind, p, started_at_ms));
        ContainerProbes {
            liveness: mk(ProbeKind::Liveness, liveness),
            readiness: mk(ProbeKind::Readiness, readiness),
            startup: mk(ProbeKind::Startup, startup),
        }
    }

    /// The probes of `container`, for an instance that started running at `started_at_ms`.
    pub fn for_container(container: &Container, started_at_ms: i64) -> Self {
        Self::new(
            container.liveness_probe.as_ref(),
            container.readiness_probe.as_ref(),
            container.startup_probe.as_ref(),
            started_at_ms,
        )
    }

    pub fn is_empty(&self) -> bool {
        self.liveness.is_none() && self.readiness.is_none() && self.startup.is_none()
    }

    pub fn tracker(&self, kind: ProbeKind) -> Option<&ProbeTracker> {
        match kind {
            ProbeKind::Liveness => self.liveness.as_ref(),
            ProbeKind::Readiness => self.readiness.as_ref(),
            ProbeKind::Startup => self.startup.as_ref(),
        }
    }

    fn tracker_mut(&mut self, kind: ProbeKind) -> Option<&mut ProbeTracker> {
        match kind {
            ProbeKind::Liveness => self.liveness.as_mut(),
            ProbeKind::Readiness => self.readiness.as_mut(),
            ProbeKind::Startup => self.startup.as_mut(),
        }
    }

    /// `ContainerStatus.started`: no startup probe, or it has succeeded.
    pub fn started(&self) -> bool {
        self.startup
            .as_ref()
            .is_none_or(|t| t.verdict() == Some(true))
    }

    /// `ContainerStatus.ready` (for a running container): started, and no readiness probe or
    /// it currently succeeds.
    pub fn ready(&self) -> bool {
        self.started()
            && self
                .readiness
                .as_ref()
                .is_none_or(|t| t.verdict() == Some(true))
    }

    /// The probe whose failure means the container must be killed and restarted (subject to
    /// the pod's restartPolicy), if any.
    pub fn failed(&self) -> Option<ProbeKind> {
        [&self.startup, &self.liveness]
            .into_iter()
            .flatten()
            .find(|t| t.verdict() == Some(false))
            .map(|t| t.kind())
    }

    /// The probes that are allowed to run at all right now (the startup gate).
    fn active(&self) -> impl Iterator<Item = &ProbeTracker> {
        let started = self.started();
        [&self.startup, &self.liveness, &self.readiness]
            .into_iter()
            .flatten()
            .filter(move |t| (t.kind() == ProbeKind::Startup) != started)
    }

    /// The probes to run now.
    pub fn due(&self, now_ms: i64) -> Vec<ProbeKind> {
        if self.failed().is_some() {
            return Vec::new();
        }
        self.active()
            .filter(|t| t.due(now_ms))
            .map(|t| t.kind())
            .collect()
    }

    /// The earliest time a probe will be due, for the caller's timer; `None` when nothing more
    /// will run for this container instance.
    pub fn next_due_ms(&self) -> Option<i64> {
        if self.failed().is_some() {
            return None;
        }
        self.active().filter_map(|t| t.next_due_ms()).min()
    }

    /// Records a result of `kind`'s probe; returns that probe's new verdict when it changes.
    pub fn record(&mut self, kind: ProbeKind, success: bool, now_ms: i64) -> Option<bool> {
        self.tracker_mut(kind)?.record(success, now_ms)
    }
}

/// What a probe does; exactly one is expected (validation enforces it; the first wins here).
#[derive(Clone, Copy, Debug)]
pub enum ProbeAction<'a> {
    Exec(&'a ExecAction),
    HttpGet(&'a HttpGetAction),
    TcpSocket(&'a TcpSocketAction),
}

pub fn probe_action(probe: &Probe) -> Result<ProbeAction<'_>, String> {
    if let Some(a) = &probe.exec {
        Ok(ProbeAction::Exec(a))
    } else if let Some(a) = &probe.http_get {
        Ok(ProbeAction::HttpGet(a))
    } else if let Some(a) = &probe.tcp_socket {
        Ok(ProbeAction::TcpSocket(a))
    } else {
        Err("probe has no handler (exec, httpGet or tcpSocket)".to_string())
    }
}

/// Resolves a probe's IntOrString port: a number, or the name of one of the container's ports.
pub fn resolve_port(port: &str, ports: &[ContainerPort]) -> Result<u16, String> {
    let port = port.trim();
    if port.is_empty() {
        return Err("probe has no port".to_string());
    }
    if let Ok(n) = port.parse::<i64>() {
        return u16::try_from(n)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("probe port {n} is out of range 1-65535"));
    }
    let named = ports
        .iter()
        .find(|p| p.name == port)
        .ok_or_else(|| format!("no container port named {port:?}"))?;
    u16::try_from(named.container_port)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| {
            format!(
                "container port {port:?} is {}, out of range 1-65535",
                named.container_port
            )
        })
}

/// Parses a probe's `host`: empty means the pod itself (`None`); otherwise an IP address (or
/// `localhost`). Host names are not resolved: the agent has no resolver inside the pod's
/// namespace, and resolving from the host's could give a different answer.
pub fn parse_host(host: &str) -> Result<Option<IpAddr>, String> {
    let host = host.trim();
    if host.is_empty() {
        return Ok(None);
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().map(Some).map_err(|_| {
        format!("probe host {host:?} is not an IP address (host names are not resolved)")
    })
}

/// Where a probe without a host connects: the pod's own loopback, seen from inside its
/// namespace. (The kubelet uses the pod IP; loopback also reaches servers bound to 0.0.0.0.)
fn target(host: Option<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(host.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)), port)
}

/// Connects to `addr` from inside the network namespace bound at `netns`, within `timeout`.
///
/// setns(2) changes only the calling thread's namespace, so it happens on a fresh OS thread of
/// its own (never a runtime worker or blocking-pool thread, which would stay in the pod's
/// namespace afterwards). A socket keeps the namespace it was created in, so the connected
/// stream is handed back and the thread ends.
async fn connect_in_netns(
    netns: &Path,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<std::net::TcpStream, String> {
    // connect_timeout rejects a zero duration.
    let timeout = timeout.max(Duration::from_millis(1));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let path: PathBuf = netns.to_path_buf();
    std::thread::Builder::new()
        .name("probe-netns".into())
        .spawn(move || {
            // If the receiver timed out and went away, the stream is just dropped (closed).
            let _ = tx.send(connect_from(&path, addr, timeout));
        })
        .map_err(|e| format!("start probe thread: {e}"))?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(res)) => res,
        Ok(Err(_)) => Err(format!(
            "dial tcp {addr}: probe thread ended without an answer"
        )),
        Err(_) => Err(format!("dial tcp {addr}: timed out after {timeout:?}")),
    }
}

/// Runs on the dedicated thread: enter the namespace, then connect.
fn connect_from(
    netns: &Path,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<std::net::TcpStream, String> {
    let ns = std::fs::File::open(netns)
        .map_err(|e| format!("open network namespace {}: {e}", netns.display()))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("enter network namespace {}: {e}", netns.display()))?;
    std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("dial tcp {addr}: {e}"))
}

/// A TCP socket probe: succeeds if a connection to `host` (default: the pod's loopback) and
/// `port` opens within `timeout`, from inside the pod's network namespace. The connection is
/// closed straight away, as the kubelet does.
pub async fn tcp_check(
    netns: &Path,
    host: Option<IpAddr>,
    port: u16,
    timeout: Duration,
) -> Result<(), String> {
    connect_in_netns(netns, target(host, port), timeout)
        .await
        .map(drop)
}

/// An HTTP GET probe from inside the pod's network namespace: succeeds on a status in
/// 200..=399 (redirects are not followed; a 3xx counts as success, as in the kubelet when the
/// redirect leaves the host). Connect, request and response head together are bounded by
/// `timeout`; the body is not read.
pub async fn http_check(
    netns: &Path,
    action: &HttpGetAction,
    port: u16,
    timeout: Duration,
) -> Result<(), String> {
    let scheme = action.scheme.trim();
    if scheme.eq_ignore_ascii_case("https") {
        return Err("HTTPS probes are not supported yet".to_string());
    }
    if !scheme.is_empty() && !scheme.eq_ignore_ascii_case("http") {
        return Err(format!("unsupported probe scheme {scheme:?}"));
    }
    let addr = target(parse_host(&action.host)?, port);
    let path = if action.path.starts_with('/') {
        action.path.clone()
    } else {
        format!("/{}", action.path)
    };
    let url = format!("http://{addr}{path}");
    let req = build_request(action, &path, addr).map_err(|e| format!("Get {url:?}: {e}"))?;
    match tokio::time::timeout(timeout, send(netns, addr, req, timeout)).await {
        Ok(Ok(status)) if (200..=399).contains(&status) => Ok(()),
        Ok(Ok(status)) => Err(format!("HTTP probe failed with statuscode: {status}")),
        Ok(Err(e)) => Err(format!("Get {url:?}: {e}")),
        Err(_) => Err(format!(
            "Get {url:?}: timed out after {timeout:?} awaiting headers"
        )),
    }
}

fn build_request(
    action: &HttpGetAction,
    path: &str,
    addr: SocketAddr,
) -> Result<hyper::Request<String>, String> {
    let uri: hyper::Uri = path
        .parse()
        .map_err(|e| format!("invalid path {path:?}: {e}"))?;
    let mut req = hyper::Request::get(uri)
        .body(String::new())
        .map_err(|e| format!("build request: {e}"))?;
    let headers = req.headers_mut();
    // Defaults first; a probe header of the same name replaces the default (a `Host` header
    // sets the request's host, as in the kubelet). Other headers may repeat.
    let host = HeaderValue::from_str(&addr.to_string()).map_err(|e| format!("host: {e}"))?;
    headers.insert(HOST, host);
    headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    let mut replaced = Vec::new();
    for h in &action.http_headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|e| format!("invalid header name {:?}: {e}", h.name))?;
        let value = HeaderValue::from_str(&h.value)
            .map_err(|e| format!("invalid value for header {:?}: {e}", h.name))?;
        if !replaced.contains(&name) {
            headers.remove(&name);
            replaced.push(name.clone());
        }
        headers.append(name, value);
    }
    Ok(req)
}

/// Connects in the namespace and sends `req` over HTTP/1.1; returns the response status.
async fn send(
    netns: &Path,
    addr: SocketAddr,
    req: hyper::Request<String>,
    timeout: Duration,
) -> Result<u16, String> {
    let stream = connect_in_netns(netns, addr, timeout).await?;
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("set socket non-blocking: {e}"))?;
    let stream =
        tokio::net::TcpStream::from_std(stream).map_err(|e| format!("register socket: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // Drive the connection in place rather than in a spawned task, so nothing outlives the
    // check (the caller's timeout drops both).
    let response = sender.send_request(req);
    tokio::pin!(conn, response);
    let res = tokio::select! {
        biased;
        res = &mut response => res,
        done = &mut conn => match done {
            Err(e) => return Err(e.to_string()),
            // The connection ended; the response (or why there is none) is ready now.
            Ok(()) => response.await,
        },
    };
    res.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::pb::api::HttpHeader;

    fn probe(delay: i32, period: i32, success: i32, failure: i32) -> Probe {
        Probe {
            tcp_socket: Some(TcpSocketAction {
                port: "80".into(),
                host: String::new(),
            }),
            initial_delay_seconds: delay,
            timeout_seconds: 1,
            period_seconds: period,
            success_threshold: success,
            failure_threshold: failure,
            ..Default::default()
        }
    }

    #[test]
    fn probe_initial_delay_and_period() {
        let t0 = 1_000_000;
        let mut t = ProbeTracker::new(ProbeKind::Liveness, &probe(5, 10, 1, 3), t0);
        assert!(!t.due(t0));
        assert!(!t.due(t0 + 4_999));
        assert!(t.due(t0 + 5_000));
        assert_eq!(t.next_due_ms(), Some(t0 + 5_000));
        // A probe that ran a little late and took a while does not drift the schedule.
        assert_eq!(t.record(true, t0 + 5_300), None);
        assert!(!t.due(t0 + 14_999));
        assert!(t.due(t0 + 15_000));
        // A probe finishing exactly on a slot moves to the next one.
        t.record(true, t0 + 15_000);
        assert_eq!(t.next_due_ms(), Some(t0 + 25_000));
        // Missed slots are skipped, not run in a burst.
        t.record(true, t0 + 47_000);
        assert_eq!(t.next_due_ms(), Some(t0 + 55_000));
    }

    #[test]
    fn probe_zero_fields_get_kubernetes_defaults() {
        let t = ProbeTracker::new(ProbeKind::Readiness, &probe(0, 0, 0, 0), 0);
        assert!(t.due(0));
        assert_eq!(t.timeout(), Duration::from_secs(1));
        let mut t = t;
        t.record(true, 0);
        assert_eq!(t.next_due_ms(), Some(10_000));
        assert_eq!(t.verdict(), Some(true)); // success threshold 1
        assert_eq!(t.record(false, 10_000), None);
        assert_eq!(t.record(false, 20_000), None);
        assert_eq!(t.record(false, 30_000), Some(false)); // failure threshold 3
        let neg = ProbeTracker::new(ProbeKind::Liveness, &probe(-5, -1, -1, -1), 0);
        assert!(neg.due(0));
        assert_eq!(neg.timeout(), Duration::from_secs(1));
    }

    #[test]
    fn probe_liveness_failure_threshold_then_hold() {
        let mut t = ProbeTracker::new(ProbeKind::Liveness, &probe(0, 1, 1, 3), 0);
        assert_eq!(t.verdict(), Some(true), "alive until proven otherwise");
        assert_eq!(t.record(false, 0), None);
        assert_eq!(t.record(false, 1_000), None);
        // A success in between restarts the count.
        assert_eq!(t.record(true, 2_000), None);
        assert_eq!(t.record(false, 3_000), None);
        assert_eq!(t.record(false, 4_000), None);
        assert_eq!(t.record(false, 5_000), Some(false));
        assert_eq!(t.verdict(), Some(false));
        // To be restarted: no more probing of this instance.
        assert!(t.on_hold());
        assert!(!t.due(100_000));
        assert_eq!(t.next_due_ms(), None);
        assert_eq!(t.record(true, 100_000), None);
        assert_eq!(t.verdict(), Some(false));
    }

    #[test]
    fn probe_readiness_success_and_failure_thresholds() {
        let mut t = ProbeTracker::new(ProbeKind::Readiness, &probe(0, 1, 2, 2), 0);
        assert_eq!(t.verdict(), Some(false), "not ready until proven");
        // Failures while already not ready change nothing.
        assert_eq!(t.record(false, 0), None);
        assert_eq!(t.record(false, 1_000), None);
        assert_eq!(t.record(true, 2_000), None);
        assert_eq!(t.record(true, 3_000), Some(true));
        assert_eq!(t.record(true, 4_000), None);
        assert_eq!(t.record(false, 5_000), None);
        assert_eq!(t.record(true, 6_000), None); // resets the failure run
        assert_eq!(t.record(false, 7_000), None);
        assert_eq!(t.record(false, 8_000), Some(false));
        // Readiness keeps probing after a failure.
        assert!(!t.on_hold());
        assert!(t.due(9_000));
        assert_eq!(t.record(true, 9_000), None);
        assert_eq!(t.record(true, 10_000), Some(true));
    }

    #[test]
    fn probe_startup_gates_liveness_and_readiness() {
        let live = probe(0, 1, 1, 1);
        let ready = probe(0, 1, 1, 1);
        let start = probe(2, 1, 1, 3);
        let mut c = ContainerProbes::new(Some(&live), Some(&ready), Some(&start), 0);
        assert!(!c.started());
        assert!(!c.ready());
        assert_eq!(c.failed(), None);
        assert_eq!(c.startup.as_ref().and_then(|t| t.verdict()), None);
        // Liveness and readiness would be due at 0, but the startup probe gates them.
        assert_eq!(c.due(0), Vec::<ProbeKind>::new());
        assert_eq!(c.next_due_ms(), Some(2_000));
        assert_eq!(c.due(2_000), vec![ProbeKind::Startup]);
        assert_eq!(c.record(ProbeKind::Startup, false, 2_000), None);
        assert_eq!(c.record(ProbeKind::Startup, true, 3_000), Some(true));
        assert!(c.started());
        assert!(!c.ready(), "ready needs the readiness probe now");
        // Startup stops; the others start (their initial delay has long passed).
        assert_eq!(
            c.due(3_000),
            vec![ProbeKind::Liveness, ProbeKind::Readiness]
        );
        assert_eq!(c.record(ProbeKind::Readiness, true, 3_000), Some(true));
        assert!(c.ready());
        assert_eq!(c.record(ProbeKind::Liveness, false, 3_000), Some(false));
        assert_eq!(c.failed(), Some(ProbeKind::Liveness));
        assert_eq!(c.due(10_000), Vec::<ProbeKind>::new());
        assert_eq!(c.next_due_ms(), None);
    }

    #[test]
    fn probe_startup_failure_demands_restart() {
        let start = probe(0, 1, 1, 2);
        let mut c = ContainerProbes::new(None, None, Some(&start), 0);
        assert_eq!(c.record(ProbeKind::Startup, false, 0), None);
        assert_eq!(c.record(ProbeKind::Startup, false, 1_000), Some(false));
        assert_eq!(c.failed(), Some(ProbeKind::Startup));
        assert!(!c.started());
        assert_eq!(c.next_due_ms(), None);
    }

    #[test]
    fn probe_none_means_started_and_ready() {
        let c = ContainerProbes::new(None, None, None, 0);
        assert!(c.is_empty());
        assert!(c.started());
        assert!(c.ready());
        assert_eq!(c.failed(), None);
        assert_eq!(c.next_due_ms(), None);
        let container = Container {
            readiness_probe: Some(probe(0, 1, 1, 1)),
            ..Default::default()
        };
        let c = ContainerProbes::for_container(&container, 0);
        assert!(c.started());
        assert!(!c.ready());
        assert_eq!(c.due(0), vec![ProbeKind::Readiness]);
    }

    #[test]
    fn probe_action_kinds() {
        assert!(matches!(
            probe_action(&probe(0, 1, 1, 1)),
            Ok(ProbeAction::TcpSocket(_))
        ));
        assert!(probe_action(&Probe::default()).is_err());
    }

    fn port(name: &str, n: i32) -> ContainerPort {
        ContainerPort {
            name: name.into(),
            container_port: n,
            ..Default::default()
        }
    }

    #[test]
    fn probe_resolve_port() {
        let ports = [
            port("http", 8080),
            port("metrics", 9090),
            port("bad", 70000),
        ];
        assert_eq!(resolve_port("80", &ports), Ok(80));
        assert_eq!(resolve_port(" 65535 ", &ports), Ok(65535));
        assert_eq!(resolve_port("http", &ports), Ok(8080));
        assert_eq!(
            resolve_port("metrics", &[]).unwrap_err(),
            "no container port named \"metrics\""
        );
        assert!(resolve_port("0", &ports)
            .unwrap_err()
            .contains("out of range"));
        assert!(resolve_port("-1", &ports)
            .unwrap_err()
            .contains("out of range"));
        assert!(resolve_port("65536", &ports)
            .unwrap_err()
            .contains("out of range"));
        assert!(resolve_port("bad", &ports).unwrap_err().contains("70000"));
        assert_eq!(resolve_port("", &ports).unwrap_err(), "probe has no port");
        assert!(
            resolve_port("HTTP", &ports).is_err(),
            "names are case-sensitive"
        );
    }

    #[test]
    fn probe_parse_host() {
        assert_eq!(parse_host(""), Ok(None));
        assert_eq!(
            parse_host("localhost"),
            Ok(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)))
        );
        assert_eq!(
            parse_host("10.1.2.3"),
            Ok(Some("10.1.2.3".parse().unwrap()))
        );
        assert_eq!(parse_host("[::1]"), Ok(Some("::1".parse().unwrap())));
        assert_eq!(parse_host("::1"), Ok(Some("::1".parse().unwrap())));
        assert!(parse_host("example.com").unwrap_err().contains("not an IP"));
    }

    #[test]
    fn probe_request_headers() {
        let action = HttpGetAction {
            path: "/healthz?x=1".into(),
            http_headers: vec![
                HttpHeader {
                    name: "Host".into(),
                    value: "svc.local".into(),
                },
                HttpHeader {
                    name: "X-A".into(),
                    value: "1".into(),
                },
                HttpHeader {
                    name: "x-a".into(),
                    value: "2".into(),
                },
            ],
            ..Default::default()
        };
        let req = build_request(&action, "/healthz?x=1", "127.0.0.1:80".parse().unwrap()).unwrap();
        assert_eq!(req.uri(), "/healthz?x=1");
        let h = req.headers();
        assert_eq!(h.get(HOST).unwrap(), "svc.local");
        assert_eq!(h.get(USER_AGENT).unwrap(), USER_AGENT_VALUE);
        assert_eq!(h.get_all("x-a").iter().count(), 2);
        assert!(build_request(&action, "/a b", "127.0.0.1:80".parse().unwrap()).is_err());
    }

    #[tokio::test]
    async fn probe_https_and_missing_netns_fail_clearly() {
        let https = HttpGetAction {
            scheme: "HTTPS".into(),
            ..Default::default()
        };
        let err = http_check(
            Path::new("/nonexistent"),
            &https,
            443,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert_eq!(err, "HTTPS probes are not supported yet");
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-netns");
        let err = tcp_check(&missing, None, 80, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.contains("open network namespace"), "{err}");
    }

    mod netns_server {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        /// Removes the test namespace even if an assertion fails.
        pub struct NsGuard(pub PathBuf);

        impl Drop for NsGuard {
            fn drop(&mut self) {
                let _ = flotilla_runtime::netns::remove(&self.0);
            }
        }

        /// A tiny HTTP server listening on 127.0.0.1 inside a network namespace.
        pub struct Server {
            pub port: u16,
            pub requests: Arc<Mutex<Vec<String>>>,
            stop: Arc<AtomicBool>,
            thread: Option<std::thread::JoinHandle<()>>,
        }

        impl Server {
            pub fn start(netns: &Path) -> Server {
                let netns = netns.to_path_buf();
                let requests = Arc::new(Mutex::new(Vec::new()));
                let stop = Arc::new(AtomicBool::new(false));
                let (tx, rx) = std::sync::mpsc::channel();
                let (reqs, stopping) = (requests.clone(), stop.clone());
                let thread = std::thread::spawn(move || {
                    let ns = std::fs::File::open(&netns).unwrap();
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                    listener.set_nonblocking(true).unwrap();
                    tx.send(listener.local_addr().unwrap().port()).unwrap();
                    // Connections that are never answered, kept open until the end.
                    let mut hung = Vec::new();
                    while !stopping.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((s, _)) => {
                                if let Some(s) = serve(s, &reqs) {
                                    hung.push(s);
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(5))
                            }
                            Err(e) => panic!("accept: {e}"),
                        }
                    }
                });
                let port = rx.recv_timeout(Duration::from_secs(10)).unwrap();
                Server {
                    port,
                    requests,
                    stop,
                    thread: Some(thread),
                }
            }
        }

        impl Drop for Server {
            fn drop(&mut self) {
                self.stop.store(true, Ordering::Relaxed);
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
        }

        /// Answers by path: /healthz 200, /redirect 302, /fail 500, /hang never.
        fn serve(mut s: TcpStream, reqs: &Mutex<Vec<String>>) -> Option<TcpStream> {
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let req = String::from_utf8_lossy(&buf).into_owned();
            let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
            reqs.lock().unwrap().push(req);
            let status = match path.as_str() {
                "/healthz" => "200 OK",
                "/redirect" => "302 Found\r\nLocation: http://elsewhere/",
                "/fail" => "500 Internal Server Error",
                "/hang" => return Some(s),
                _ => "404 Not Found",
            };
            let body = "probe-test\n";
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            None
        }
    }

    #[tokio::test]
    async fn probe_checks_inside_a_network_namespace() {
        use netns_server::{NsGuard, Server};
        if !nix::unistd::geteuid().is_root() {
            println!("SKIPPED probe_checks_inside_a_network_namespace: needs root to create a network namespace");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ns = dir.path().join("netns").join("pod");
        if let Err(e) = flotilla_runtime::netns::create(&ns) {
            println!("SKIPPED probe_checks_inside_a_network_namespace: cannot create a network namespace: {e}");
            return;
        }
        let _guard = NsGuard(ns.clone());
        let server = Server::start(&ns);
        let t = Duration::from_secs(2);

        // TCP: open port in the pod's namespace.
        tcp_check(&ns, None, server.port, t).await.unwrap();
        tcp_check(&ns, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), server.port, t)
            .await
            .unwrap();
        // A port listening in the host's namespace is closed in the pod's: the check really
        // runs inside the namespace.
        let host_listener = loop {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            if l.local_addr().unwrap().port() != server.port {
                break l;
            }
        };
        let closed = host_listener.local_addr().unwrap().port();
        let err = tcp_check(&ns, None, closed, t).await.unwrap_err();
        assert!(err.contains("refused"), "{err}");

        // HTTP.
        let get = |path: &str| HttpGetAction {
            path: path.into(),
            port: server.port.to_string(),
            scheme: "HTTP".into(),
            http_headers: vec![HttpHeader {
                name: "X-Probe-Test".into(),
                value: "yes".into(),
            }],
            ..Default::default()
        };
        http_check(&ns, &get("/healthz"), server.port, t)
            .await
            .unwrap();
        let seen = server.requests.lock().unwrap().last().cloned().unwrap();
        let lower = seen.to_ascii_lowercase();
        assert!(seen.starts_with("GET /healthz HTTP/1.1\r\n"), "{seen}");
        assert!(
            lower.contains(&format!("host: 127.0.0.1:{}\r\n", server.port)),
            "{seen}"
        );
        assert!(
            lower.contains("user-agent: flotilla-probe/1.0\r\n"),
            "{seen}"
        );
        assert!(lower.contains("x-probe-test: yes\r\n"), "{seen}");
        // No leading slash: still a valid request.
        http_check(&ns, &get("healthz"), server.port, t)
            .await
            .unwrap();
        http_check(&ns, &get("/redirect"), server.port, t)
            .await
            .unwrap();
        let err = http_check(&ns, &get("/fail"), server.port, t)
            .await
            .unwrap_err();
        assert_eq!(err, "HTTP probe failed with statuscode: 500");
        let err = http_check(&ns, &get("/missing"), server.port, t)
            .await
            .unwrap_err();
        assert!(err.contains("404"), "{err}");
        let err = http_check(&ns, &get("/healthz"), closed, t)
            .await
            .unwrap_err();
        assert!(err.contains("refused"), "{err}");
        // A server that never answers is bounded by the timeout.
        let started = std::time::Instant::now();
        let err = http_check(&ns, &get("/hang"), server.port, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        drop(host_listener);
    }
}
