//! Output formats as kubectl prints them: tables, names, JSON/YAML objects and lists.

use comfy_table::presets::NOTHING;
use comfy_table::{CellAlignment, Table};
use flotilla_api::manifest;
use flotilla_api::pb::admin::{ClusterStatus, Role};
use flotilla_api::pb::api::{object::Body, Object};
use serde_json::{json, Value};

/// kubectl's ages (its HumanDuration): 45s, 2m5s, 12m, 5h30m, 36h, 3d4h, 200d, 2y30d.
pub fn age(created_ms: i64, now_ms: i64) -> String {
    let d = now_ms - created_ms;
    if d < -1000 {
        return "<invalid>".into();
    }
    let s = (d.max(0) / 1000) as u64;
    let (m, h) = (s / 60, s / 3600);
    let with = |big: u64, bu: &str, small: u64, su: &str| {
        if small == 0 {
            format!("{big}{bu}")
        } else {
            format!("{big}{bu}{small}{su}")
        }
    };
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        with(m, "m", s % 60, "s")
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        with(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        with(h / 24, "d", h % 24, "h")
    } else if h < 24 * 365 * 2 {
        format!("{}d", h / 24)
    } else if h < 24 * 365 * 8 {
        with(h / 24 / 365, "y", h / 24 % 365, "d")
    } else {
        format!("{}y", h / 24 / 365)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `configmap/name`, `deployment.apps/name`, as `-o name` and `apply` print.
pub fn name_of(o: &Object) -> String {
    let kind = o.kind.to_ascii_lowercase();
    match o.api_version.split_once('/') {
        Some((group, _)) => format!("{kind}.{group}/{}", o.meta().name),
        None => format!("{kind}/{}", o.meta().name),
    }
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

/// kubectl's columns for a kind (after NAMESPACE and NAME, before AGE) and one row of them.
fn kind_columns(kind: &str) -> Vec<&'static str> {
    match kind {
        "ConfigMap" => vec!["DATA"],
        "Secret" => vec!["TYPE", "DATA"],
        "Namespace" => vec!["STATUS"],
        "Pod" => vec!["READY", "STATUS", "RESTARTS"],
        "Service" => vec!["TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"],
        "Deployment" => vec!["READY", "UP-TO-DATE", "AVAILABLE"],
        "ReplicaSet" => vec!["DESIRED", "CURRENT", "READY"],
        "DaemonSet" => vec![
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE SELECTOR",
        ],
        "StatefulSet" => vec!["READY"],
        "Job" => vec!["STATUS", "COMPLETIONS", "DURATION"],
        "CronJob" => vec!["SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST SCHEDULE"],
        "Endpoints" => vec!["ENDPOINTS"],
        "Node" => vec!["STATUS", "ROLES", "AGE", "VERSION"],
        "Lease" => vec!["HOLDER"],
        "HorizontalPodAutoscaler" => vec!["REFERENCE", "TARGETS", "MINPODS", "MAXPODS", "REPLICAS"],
        _ => vec![],
    }
}

fn kind_cells(o: &Object, now: i64) -> Vec<String> {
    match &o.body {
        Some(Body::ConfigMap(c)) => vec![(c.data.len() + c.binary_data.len()).to_string()],
        // Never the values: only the type and how many keys.
        Some(Body::Secret(s)) => vec![s.r#type.clone(), s.data.len().to_string()],
        Some(Body::Namespace(n)) => {
            let phase = n.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
            vec![if phase.is_empty() {
                "Active".into()
            } else {
                phase.to_string()
            }]
        }
        Some(Body::Pod(p)) => {
            let total = p.spec.as_ref().map(|s| s.containers.len()).unwrap_or(0);
            let st = p.status.clone().unwrap_or_default();
            let ready = st.container_statuses.iter().filter(|c| c.ready).count();
            let restarts: i32 = st.container_statuses.iter().map(|c| c.restart_count).sum();
            // A waiting or terminated container's reason says more than the phase.
            let reason = st
                .container_statuses
                .iter()
                .filter_map(|c| c.state.as_ref())
                .find_map(|s| {
                    s.waiting
                        .as_ref()
                        .map(|w| w.reason.clone())
                        .or_else(|| s.terminated.as_ref().map(|t| t.reason.clone()))
                })
                .filter(|r| !r.is_empty());
            let status = if o.meta().deletion_timestamp_ms.is_some() {
                "Terminating".to_string()
            } else if let Some(r) = reason {
                r
            } else if st.phase.is_empty() {
                "Pending".into()
            } else {
                st.phase.clone()
            };
            vec![format!("{ready}/{total}"), status, restarts.to_string()]
        }
        Some(Body::Service(s)) => {
            let spec = s.spec.clone().unwrap_or_default();
            let ports: Vec<String> = spec
                .ports
                .iter()
                .map(|p| {
                    if p.node_port != 0 {
                        format!("{}:{}/{}", p.port, p.node_port, p.protocol)
                    } else {
                        format!("{}/{}", p.port, p.protocol)
                    }
                })
                .collect();
            let external = s
                .status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .map(|lb| {
                    lb.ingress
                        .iter()
                        .map(|i| i.ip.clone())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let external = if external.is_empty() {
                spec.external_ips.join(",")
            } else {
                external
            };
            vec![
                spec.r#type.clone(),
                or_none(&spec.cluster_ip),
                or_none(&external),
                or_none(&ports.join(",")),
            ]
        }
        Some(Body::Deployment(d)) => {
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let st = d.status.clone().unwrap_or_default();
            vec![
                format!("{}/{}", st.ready_replicas, want),
                st.updated_replicas.to_string(),
                st.available_replicas.to_string(),
            ]
        }
        Some(Body::ReplicaSet(r)) => {
            let want = r.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let st = r.status.clone().unwrap_or_default();
            vec![
                want.to_string(),
                st.replicas.to_string(),
                st.ready_replicas.to_string(),
            ]
        }
        Some(Body::DaemonSet(d)) => {
            let st = d.status.unwrap_or_default();
            let sel = d
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.spec.as_ref())
                .map(|p| {
                    p.node_selector
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                st.desired_number_scheduled.to_string(),
                st.current_number_scheduled.to_string(),
                st.number_ready.to_string(),
                st.updated_number_scheduled.to_string(),
                st.number_available.to_string(),
                or_none(&sel),
            ]
        }
        Some(Body::StatefulSet(x)) => {
            let want = x.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let st = x.status.clone().unwrap_or_default();
            vec![format!("{}/{}", st.ready_replicas, want)]
        }
        Some(Body::Job(j)) => {
            let st = j.status.clone().unwrap_or_default();
            let want = j.spec.as_ref().and_then(|s| s.completions).unwrap_or(1);
            let cond = |t: &str| {
                st.conditions
                    .iter()
                    .any(|c| c.r#type == t && c.status == "True")
            };
            let status = if cond("Complete") {
                "Complete"
            } else if cond("Failed") {
                "Failed"
            } else if j.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
                "Suspended"
            } else {
                "Running"
            };
            let duration = match (parse_time(&st.start_time), parse_time(&st.completion_time)) {
                (Some(a), Some(b)) => age(a, b),
                (Some(a), None) => age(a, now),
                _ => String::new(),
            };
            vec![
                status.into(),
                format!("{}/{}", st.succeeded, want),
                duration,
            ]
        }
        Some(Body::CronJob(c)) => {
            let spec = c.spec.clone().unwrap_or_default();
            let st = c.status.clone().unwrap_or_default();
            let last = parse_time(&st.last_schedule_time)
                .map(|t| age(t, now))
                .unwrap_or_else(|| "<none>".into());
            vec![
                spec.schedule.clone(),
                or_none(spec.time_zone.as_deref().unwrap_or("")),
                spec.suspend
                    .unwrap_or(false)
                    .to_string()
                    .replace("true", "True")
                    .replace("false", "False"),
                st.active.len().to_string(),
                last,
            ]
        }
        Some(Body::Endpoints(e)) => {
            let eps: Vec<String> = e
                .subsets
                .iter()
                .flat_map(|s| {
                    s.addresses.iter().flat_map(move |a| {
                        let ports: Vec<String> = if s.ports.is_empty() {
                            vec![a.ip.clone()]
                        } else {
                            s.ports
                                .iter()
                                .map(|p| format!("{}:{}", a.ip, p.port))
                                .collect()
                        };
                        ports
                    })
                })
                .collect();
            // kubectl shows the first three and a count of the rest.
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![or_none(&shown)]
        }
        Some(Body::Node(n)) => {
            let st = n.status.clone().unwrap_or_default();
            let ready = st.conditions.iter().find(|c| c.r#type == "Ready");
            let mut status = match ready.map(|c| c.status.as_str()) {
                Some("True") => "Ready".to_string(),
                Some("False") => "NotReady".to_string(),
                _ => "Unknown".to_string(),
            };
            if n.spec.as_ref().is_some_and(|s| s.unschedulable) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<&str> = o
                .meta()
                .labels
                .keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            let version = st.node_info.map(|i| i.kubelet_version).unwrap_or_default();
            let created = age(o.meta().creation_timestamp_ms, now);
            vec![status, or_none(&roles.join(",")), created, version]
        }
        Some(Body::Lease(l)) => {
            let holder = l
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default();
            vec![holder]
        }
        Some(Body::HorizontalPodAutoscaler(h)) => {
            let spec = h.spec.clone().unwrap_or_default();
            let st = h.status.clone().unwrap_or_default();
            let r = spec.scale_target_ref.clone().unwrap_or_default();
            let targets: Vec<String> = spec
                .metrics
                .iter()
                .filter_map(|m| m.resource.as_ref())
                .map(|r| {
                    let current = st
                        .current_metrics
                        .iter()
                        .filter_map(|c| c.resource.as_ref())
                        .find(|c| c.name == r.name)
                        .and_then(|c| c.current.as_ref())
                        .and_then(|c| c.average_utilization)
                        .map(|u| format!("{u}%"))
                        .unwrap_or_else(|| "<unknown>".into());
                    let target = r
                        .target
                        .as_ref()
                        .map(|t| match t.average_utilization {
                            Some(u) => format!("{u}%"),
                            None if !t.average_value.is_empty() => t.average_value.clone(),
                            None => t.value.clone(),
                        })
                        .unwrap_or_default();
                    format!("{}: {current}/{target}", r.name)
                })
                .collect();
            vec![
                format!("{}/{}", r.kind, r.name),
                or_none(&targets.join(", ")),
                spec.min_replicas.unwrap_or(1).to_string(),
                spec.max_replicas.to_string(),
                st.current_replicas.to_string(),
            ]
        }
        // Events have their own table (see `table`).
        Some(Body::Event(_)) | None => vec![],
    }
}

/// An RFC 3339 status time as milliseconds since the epoch.
fn parse_time(s: &str) -> Option<i64> {
    if s.is_empty() {
        return None;
    }
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
}

/// kubectl's event table: LAST SEEN TYPE REASON OBJECT MESSAGE.
fn events_table(objects: &[Object], with_namespace: bool, header: bool, now: i64) -> String {
    let mut headers = vec![];
    if with_namespace {
        headers.push("NAMESPACE");
    }
    headers.extend(["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]);
    let mut t = new_table(headers);
    for o in objects {
        let Some(Body::Event(e)) = &o.body else {
            continue;
        };
        let mut row = vec![];
        if with_namespace {
            row.push(o.meta().namespace.clone());
        }
        let seen = parse_time(&e.last_timestamp).unwrap_or(o.meta().creation_timestamp_ms);
        let obj = e
            .involved_object
            .as_ref()
            .map(|r| format!("{}/{}", r.kind.to_ascii_lowercase(), r.name))
            .unwrap_or_default();
        row.extend([
            age(seen, now),
            e.r#type.clone(),
            e.reason.clone(),
            obj,
            e.message.clone(),
        ]);
        t.add_row(row);
    }
    for c in t.column_iter_mut() {
        c.set_padding((0, 3));
        c.set_cell_alignment(CellAlignment::Left);
    }
    render(&t, header)
}

/// A kubectl-style table of plain rows (left-aligned, three spaces between columns).
pub fn simple_table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = new_table(headers.to_vec());
    for r in rows {
        t.add_row(r);
    }
    for c in t.column_iter_mut() {
        c.set_padding((0, 3));
        c.set_cell_alignment(CellAlignment::Left);
    }
    render(&t, true)
}

fn new_table(headers: Vec<&str>) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(headers);
    t
}

fn render(t: &Table, header: bool) -> String {
    let mut out = String::new();
    for (i, line) in t.lines().enumerate() {
        if i == 0 && !header {
            continue;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// kubectl's table for objects of one kind: NAMESPACE (with -A), NAME, the kind's columns, AGE.
pub fn table(objects: &[Object], with_namespace: bool, header: bool, wide: bool) -> String {
    table_at(objects, with_namespace, header, wide, now_ms())
}

/// `-o wide`'s extra columns, after the normal ones.
fn wide_columns(kind: &str) -> Vec<&'static str> {
    match kind {
        "Pod" => vec!["IP", "NODE"],
        "Deployment" | "ReplicaSet" | "DaemonSet" | "Job" => {
            vec!["CONTAINERS", "IMAGES", "SELECTOR"]
        }
        "StatefulSet" => vec!["CONTAINERS", "IMAGES"],
        "Service" => vec!["SELECTOR"],
        "Node" => vec![
            "INTERNAL-IP",
            "OS-IMAGE",
            "KERNEL-VERSION",
            "CONTAINER-RUNTIME",
        ],
        _ => vec![],
    }
}

fn containers_images(t: Option<&flotilla_api::pb::api::PodTemplateSpec>) -> [String; 2] {
    let cs = t
        .and_then(|t| t.spec.as_ref())
        .map(|s| s.containers.as_slice())
        .unwrap_or(&[]);
    [
        cs.iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
        cs.iter()
            .map(|c| c.image.as_str())
            .collect::<Vec<_>>()
            .join(","),
    ]
}

fn selector_text(s: Option<&flotilla_api::pb::api::LabelSelector>) -> String {
    let Some(s) = s else { return "<none>".into() };
    let mut parts = key_values(&s.match_labels);
    for e in &s.match_expressions {
        parts.push(match e.operator.as_str() {
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            op => format!(
                "{} {} ({})",
                e.key,
                op.to_ascii_lowercase(),
                e.values.join(",")
            ),
        });
    }
    or_none(&parts.join(","))
}

fn wide_cells(o: &Object) -> Vec<String> {
    let with_sel = |[c, i]: [String; 2], sel: String| vec![c, i, sel];
    match &o.body {
        Some(Body::Pod(p)) => vec![
            or_none(p.status.as_ref().map(|s| s.pod_ip.as_str()).unwrap_or("")),
            or_none(p.spec.as_ref().map(|s| s.node_name.as_str()).unwrap_or("")),
        ],
        Some(Body::Deployment(d)) => {
            let s = d.spec.as_ref();
            with_sel(
                containers_images(s.and_then(|s| s.template.as_ref())),
                selector_text(s.and_then(|s| s.selector.as_ref())),
            )
        }
        Some(Body::ReplicaSet(r)) => {
            let s = r.spec.as_ref();
            with_sel(
                containers_images(s.and_then(|s| s.template.as_ref())),
                selector_text(s.and_then(|s| s.selector.as_ref())),
            )
        }
        Some(Body::DaemonSet(d)) => {
            let s = d.spec.as_ref();
            with_sel(
                containers_images(s.and_then(|s| s.template.as_ref())),
                selector_text(s.and_then(|s| s.selector.as_ref())),
            )
        }
        Some(Body::Job(j)) => {
            let s = j.spec.as_ref();
            with_sel(
                containers_images(s.and_then(|s| s.template.as_ref())),
                selector_text(s.and_then(|s| s.selector.as_ref())),
            )
        }
        Some(Body::StatefulSet(x)) => {
            containers_images(x.spec.as_ref().and_then(|s| s.template.as_ref())).to_vec()
        }
        Some(Body::Service(sv)) => {
            vec![or_none(
                &key_values(&sv.spec.clone().unwrap_or_default().selector).join(","),
            )]
        }
        Some(Body::Node(n)) => {
            let st = n.status.clone().unwrap_or_default();
            let ip = st
                .addresses
                .iter()
                .find(|a| a.r#type == "InternalIP")
                .map(|a| a.address.clone())
                .unwrap_or_default();
            let info = st.node_info.unwrap_or_default();
            vec![
                or_none(&ip),
                or_none(&info.os_image),
                or_none(&info.kernel_version),
                or_none(&info.container_runtime_version),
            ]
        }
        _ => vec![],
    }
}

/// The table as it reads at `now` (milliseconds since the epoch): ages depend on it.
pub fn table_at(
    objects: &[Object],
    with_namespace: bool,
    header: bool,
    wide: bool,
    now: i64,
) -> String {
    let kind = objects.first().map(|o| o.kind.as_str()).unwrap_or("");
    if kind == "Event" {
        return events_table(objects, with_namespace, header, now);
    }
    // Cluster-scoped kinds have no NAMESPACE column, even with -A.
    let with_namespace = with_namespace
        && flotilla_api::validation::kind_info(kind).is_none_or(|(_, namespaced)| namespaced);
    let columns = kind_columns(kind);
    // AGE comes last unless the kind places it (nodes: ... AGE VERSION).
    let age_last = !columns.contains(&"AGE");
    let mut headers = vec![];
    if with_namespace {
        headers.push("NAMESPACE");
    }
    headers.push("NAME");
    headers.extend(columns);
    if age_last {
        headers.push("AGE");
    }
    if wide {
        headers.extend(wide_columns(kind));
    }
    let mut t = new_table(headers);
    for o in objects {
        let m = o.meta();
        let mut row = vec![];
        if with_namespace {
            row.push(m.namespace.clone());
        }
        row.push(m.name.clone());
        row.extend(kind_cells(o, now));
        if age_last {
            row.push(age(m.creation_timestamp_ms, now));
        }
        if wide {
            row.extend(wide_cells(o));
        }
        t.add_row(row);
    }
    for c in t.column_iter_mut() {
        c.set_padding((0, 3));
        c.set_cell_alignment(CellAlignment::Left);
    }
    render(&t, header)
}

pub fn objects_json(objects: &[Object], single: bool, revision: u64) -> Value {
    if single && objects.len() == 1 {
        return manifest::object_to_value(&objects[0]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": revision.to_string()},
        "items": objects.iter().map(manifest::object_to_value).collect::<Vec<_>>(),
    })
}

fn role_name(r: i32) -> &'static str {
    match Role::try_from(r).unwrap_or(Role::Unspecified) {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Learner => "learner",
        Role::Candidate => "candidate",
        Role::Unreachable => "unreachable",
        Role::Unspecified => "unknown",
    }
}

pub fn status_json(st: &ClusterStatus) -> Value {
    json!({
        "cluster_id": st.cluster_id,
        "leader_id": st.leader_id,
        "members": st.members.iter().map(|m| json!({
            "id": m.id,
            "address": m.api_address,
            "raft_address": m.raft_address,
            "role": role_name(m.role),
            "voter": m.voter,
            "term": m.term,
            "last_log_index": m.last_log_index,
            "applied_index": m.applied_index,
            "matched_index": m.matched_index,
            "lag": m.lag,
        })).collect::<Vec<_>>(),
        "roles": st.roles.iter().map(|r| json!({
            "role": r.role,
            "holder": r.holder,
            "epoch": r.epoch,
            "renew_time": r.renew_time,
            "lease_duration_seconds": r.lease_duration_seconds,
            "expired": r.expired,
        })).collect::<Vec<_>>(),
    })
}

/// `camelCase` → `Camel Case`, as kubectl describe prints field names.
fn title(key: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for (i, c) in key.chars().enumerate() {
        if i == 0 {
            out.extend(c.to_uppercase());
        } else {
            if c.is_ascii_uppercase() && prev_lower {
                out.push(' ');
            }
            out.push(c);
        }
        prev_lower = c.is_ascii_lowercase();
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

/// kubectl describe's nested "Key:  value" rendering of a JSON tree.
fn describe_tree(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match x {
                    Value::Object(inner) if inner.is_empty() => {
                        out.push_str(&format!("{pad}{}:  <none>\n", title(k)))
                    }
                    Value::Array(a) if a.is_empty() => {
                        out.push_str(&format!("{pad}{}:  <none>\n", title(k)))
                    }
                    Value::Object(_) | Value::Array(_) => {
                        out.push_str(&format!("{pad}{}:\n", title(k)));
                        describe_tree(x, indent + 2, out);
                    }
                    _ => out.push_str(&format!("{pad}{}:  {}\n", title(k), scalar(x))),
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                match x {
                    Value::Object(_) | Value::Array(_) => describe_tree(x, indent, out),
                    _ => out.push_str(&format!("{pad}{}\n", scalar(x))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn key_values(m: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    m.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// kubectl describe: the object's metadata and fields, then its recent Events. A Secret's
/// values are never shown, only their sizes.
pub fn describe(o: &Object, events: &[Object], now: i64) -> String {
    let m = o.meta();
    let mut out = String::new();
    let line = |out: &mut String, label: &str, values: Vec<String>| {
        let first = values.first().cloned().unwrap_or_else(|| "<none>".into());
        out.push_str(&format!("{:<20}{first}\n", format!("{label}:")));
        for v in values.iter().skip(1) {
            out.push_str(&format!("{:<20}{v}\n", ""));
        }
    };
    line(&mut out, "Name", vec![m.name.clone()]);
    if !m.namespace.is_empty() {
        line(&mut out, "Namespace", vec![m.namespace.clone()]);
    }
    line(&mut out, "Labels", key_values(&m.labels));
    line(&mut out, "Annotations", key_values(&m.annotations));
    line(
        &mut out,
        "CreationTimestamp",
        vec![manifest::format_timestamp_ms(m.creation_timestamp_ms)],
    );
    if let Some(d) = m.deletion_timestamp_ms {
        line(
            &mut out,
            "DeletionTimestamp",
            vec![manifest::format_timestamp_ms(d)],
        );
    }
    if !m.finalizers.is_empty() {
        line(&mut out, "Finalizers", m.finalizers.clone());
    }
    if let Some(c) = m.owner_references.iter().find(|r| r.controller) {
        line(
            &mut out,
            "Controlled By",
            vec![format!("{}/{}", c.kind, c.name)],
        );
    }
    match &o.body {
        Some(Body::Secret(sec)) => {
            out.push_str(&format!("\nType:  {}\n\nData\n====\n", sec.r#type));
            for (k, v) in &sec.data {
                out.push_str(&format!("{k}:  {} bytes\n", v.len()));
            }
        }
        _ => {
            let mut v = manifest::object_to_value(o);
            if let Value::Object(top) = &mut v {
                for k in ["apiVersion", "kind", "metadata"] {
                    top.remove(k);
                }
            }
            describe_tree(&v, 0, &mut out);
        }
    }
    if events.is_empty() {
        out.push_str("Events:             <none>\n");
        return out;
    }
    out.push_str("Events:\n");
    let mut t = new_table(vec!["Type", "Reason", "Age", "From", "Message"]);
    t.add_row(vec!["----", "------", "----", "----", "-------"]);
    for ev in events {
        let Some(Body::Event(e)) = &ev.body else {
            continue;
        };
        let seen = parse_time(&e.last_timestamp).unwrap_or(ev.meta().creation_timestamp_ms);
        let mut when = age(seen, now);
        if e.count > 1 {
            when = format!(
                "{when} (x{} over {})",
                e.count,
                age(parse_time(&e.first_timestamp).unwrap_or(seen), now)
            );
        }
        let from = e
            .source
            .as_ref()
            .map(|s| s.component.clone())
            .unwrap_or_default();
        t.add_row(vec![
            e.r#type.clone(),
            e.reason.clone(),
            when,
            from,
            e.message.clone(),
        ]);
    }
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
        c.set_cell_alignment(CellAlignment::Left);
    }
    for l in render(&t, true).lines() {
        out.push_str(&format!("  {l}\n"));
    }
    out
}

pub fn status_table(st: &ClusterStatus) -> String {
    let mut t = new_table(vec![
        "ID",
        "ADDRESS",
        "RAFT-ADDRESS",
        "ROLE",
        "VOTER",
        "TERM",
        "LAST-LOG",
        "APPLIED",
        "LAG",
    ]);
    for m in &st.members {
        t.add_row(vec![
            m.id.to_string(),
            m.api_address.clone(),
            m.raft_address.clone(),
            role_name(m.role).to_string(),
            if m.voter { "yes" } else { "no" }.to_string(),
            m.term.to_string(),
            m.last_log_index.to_string(),
            m.applied_index.to_string(),
            m.lag.to_string(),
        ]);
    }
    for c in t.column_iter_mut() {
        c.set_padding((0, 3));
    }
    let leader = if st.leader_id == 0 {
        "none".to_string()
    } else {
        st.leader_id.to_string()
    };
    let mut roles = new_table(vec!["ROLE", "HOLDER", "EPOCH", "RENEWED", "LEASE"]);
    for r in &st.roles {
        roles.add_row(vec![
            r.role.clone(),
            if r.holder.is_empty() {
                "<none>".to_string()
            } else {
                r.holder.clone()
            },
            r.epoch.to_string(),
            if r.renew_time.is_empty() {
                "<never>".to_string()
            } else {
                r.renew_time.clone()
            },
            if r.expired {
                "expired".to_string()
            } else if r.lease_duration_seconds == 0 {
                "-".to_string()
            } else {
                format!("{}s", r.lease_duration_seconds)
            },
        ]);
    }
    for c in roles.column_iter_mut() {
        c.set_padding((0, 3));
    }
    format!(
        "cluster {}, leader {leader}\n{}\n{}",
        st.cluster_id,
        render(&t, true),
        render(&roles, true)
    )
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let s = 1000;
        for (secs, want) in [
            (45, "45s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 1800, "5h30m"),
            (36 * 3600, "36h"),
            (3 * 86_400 + 4 * 3600, "3d4h"),
            (200 * 86_400, "200d"),
            ((2 * 365 + 30) * 86_400, "2y30d"),
            (9 * 365 * 86_400, "9y"),
        ] {
            assert_eq!(age(0, secs * s), want, "{secs}s");
        }
        assert_eq!(age(5000, 0), "<invalid>");
    }
}

#[cfg(test)]
mod golden {
    //! Golden tests: the table of each shipped example, with a status filled in where the
    //! kind has one, compared with `src/golden/<kind>.txt`. `FLOTILLA_UPDATE_GOLDEN=1 cargo
    //! test -p flotilla golden` rewrites the files after an intended change.
    use super::*;
    use flotilla_api::pb::api as pb;

    const NOW: i64 = 1_700_000_000_000;

    fn with_status(mut o: Object) -> Object {
        o.meta_mut().creation_timestamp_ms = NOW - 3 * 3600 * 1000;
        let running = pb::ContainerState {
            running: Some(pb::ContainerStateRunning {
                started_at: "2023-11-14T20:00:00Z".into(),
            }),
            ..Default::default()
        };
        match &mut o.body {
            Some(Body::Pod(p)) => {
                p.status = Some(pb::PodStatus {
                    phase: "Running".into(),
                    container_statuses: vec![pb::ContainerStatus {
                        name: "main".into(),
                        ready: true,
                        restart_count: 2,
                        state: Some(running),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
            }
            Some(Body::Deployment(d)) => {
                d.status = Some(pb::DeploymentStatus {
                    ready_replicas: 1,
                    updated_replicas: 2,
                    available_replicas: 1,
                    ..Default::default()
                })
            }
            Some(Body::ReplicaSet(r)) => {
                r.status = Some(pb::ReplicaSetStatus {
                    replicas: 3,
                    ready_replicas: 2,
                    ..Default::default()
                })
            }
            Some(Body::DaemonSet(d)) => {
                d.status = Some(pb::DaemonSetStatus {
                    desired_number_scheduled: 3,
                    current_number_scheduled: 3,
                    number_ready: 2,
                    updated_number_scheduled: 3,
                    number_available: 2,
                    ..Default::default()
                })
            }
            Some(Body::StatefulSet(x)) => {
                x.status = Some(pb::StatefulSetStatus {
                    ready_replicas: 1,
                    ..Default::default()
                })
            }
            Some(Body::Job(j)) => {
                j.status = Some(pb::JobStatus {
                    succeeded: 3,
                    start_time: "2023-11-14T21:00:00Z".into(),
                    completion_time: "2023-11-14T21:02:05Z".into(),
                    conditions: vec![pb::JobCondition {
                        r#type: "Complete".into(),
                        status: "True".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
            }
            Some(Body::CronJob(c)) => {
                c.status = Some(pb::CronJobStatus {
                    last_schedule_time: "2023-11-14T22:10:00Z".into(),
                    ..Default::default()
                })
            }
            Some(Body::Node(n)) => {
                n.status = Some(pb::NodeStatus {
                    conditions: vec![pb::NodeCondition {
                        r#type: "Ready".into(),
                        status: "True".into(),
                        ..Default::default()
                    }],
                    node_info: Some(pb::NodeSystemInfo {
                        kubelet_version: "flotilla-0.1.0".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }
            Some(Body::Service(s)) => {
                if let Some(spec) = &mut s.spec {
                    spec.cluster_ip = "10.96.0.10".into();
                }
            }
            Some(Body::HorizontalPodAutoscaler(h)) => {
                h.status = Some(pb::HorizontalPodAutoscalerStatus {
                    current_replicas: 2,
                    current_metrics: vec![pb::MetricStatus {
                        r#type: "Resource".into(),
                        resource: Some(pb::ResourceMetricStatus {
                            name: "cpu".into(),
                            current: Some(pb::MetricValueStatus {
                                average_utilization: Some(12),
                                ..Default::default()
                            }),
                        }),
                    }],
                    ..Default::default()
                })
            }
            Some(Body::Event(e)) => e.last_timestamp = "2023-11-14T22:12:00Z".into(),
            _ => {}
        }
        o
    }

    #[test]
    fn describe_shows_fields_and_events_but_never_secret_values() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s, labels: {a: b}}\nstringData: {password: hunter2}\n";
        let mut o = manifest::parse_manifests("s", text)
            .unwrap()
            .remove(0)
            .object;
        flotilla_api::kinds::apply_defaults(&mut o);
        let d = describe(&o, &[], NOW);
        assert!(
            d.contains("Name:               s\n") && d.contains("Labels:             a=b\n"),
            "{d}"
        );
        assert!(
            d.contains("password:  7 bytes") && !d.contains("hunter2") && !d.contains("aHVudGVyMg"),
            "{d}"
        );
        assert!(d.ends_with("Events:             <none>\n"), "{d}");
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../cluster-configs/examples/nginx-deployment.yaml"
        ))
        .unwrap();
        let dep = manifest::parse_manifests("d", &text)
            .unwrap()
            .remove(0)
            .object;
        let ev_text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../cluster-configs/examples/event.yaml"
        ))
        .unwrap();
        let ev = with_status(
            manifest::parse_manifests("e", &ev_text)
                .unwrap()
                .remove(0)
                .object,
        );
        let d = describe(&dep, &[ev], NOW);
        assert!(
            d.contains("Spec:\n  Progress Deadline Seconds:  600\n"),
            "{d}"
        );
        assert!(d.contains("        Image:  nginx:1.7.9"), "{d}");
        assert!(d.contains("Events:\n  Type    Reason"), "{d}");
        assert!(d.contains("Normal  ScalingReplicaSet  80s"), "{d}");
    }

    #[test]
    fn tables_of_every_kind_match_their_golden_files() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let examples = root.join("../../cluster-configs/examples");
        let update = std::env::var_os("FLOTILLA_UPDATE_GOLDEN").is_some();
        let mut by_kind: std::collections::BTreeMap<String, Vec<Object>> = Default::default();
        let mut files: Vec<_> = std::fs::read_dir(&examples)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for p in files {
            let text = std::fs::read_to_string(&p).unwrap();
            for m in manifest::parse_manifests(&p.display().to_string(), &text).unwrap() {
                let mut o = m.object;
                flotilla_api::kinds::apply_defaults(&mut o);
                by_kind
                    .entry(o.kind.clone())
                    .or_default()
                    .push(with_status(o));
            }
        }
        assert_eq!(by_kind.len(), flotilla_api::validation::KINDS.len());
        let mut mismatches = Vec::new();
        for (kind, objects) in &by_kind {
            let got = format!(
                "{}\n{}\n{}",
                table_at(objects, false, true, false, NOW),
                table_at(objects, true, true, false, NOW),
                table_at(objects, false, true, true, NOW)
            );
            let file = root
                .join("src/golden")
                .join(format!("{}.txt", kind.to_ascii_lowercase()));
            if update {
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&file).unwrap_or_default();
            if got != want {
                mismatches.push(format!(
                    "{kind}: {}\n--- want\n{want}--- got\n{got}",
                    file.display()
                ));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }
}

/// `rollout history`: one row per revision (a Deployment's ReplicaSets, oldest first).
pub fn history_table(sets: &[Object]) -> String {
    let mut t = new_table(vec!["REVISION", "CHANGE-CAUSE", "IMAGES"]);
    for rs in sets {
        let template = match &rs.body {
            Some(Body::ReplicaSet(r)) => r.spec.as_ref().and_then(|s| s.template.as_ref()),
            _ => None,
        };
        t.add_row(vec![
            flotilla_controllers::deployment::revision_of(rs).to_string(),
            or_none(
                rs.meta()
                    .annotations
                    .get("kubernetes.io/change-cause")
                    .map(String::as_str)
                    .unwrap_or(""),
            ),
            containers_images(template)[1].clone(),
        ]);
    }
    render(&t, true)
}

/// A pod template as `describe` prints one.
pub fn template_text(t: &flotilla_api::pb::api::PodTemplateSpec) -> String {
    let m = t.metadata.clone().unwrap_or_default();
    let mut out = String::from("Pod Template:\n");
    let pairs = |map: &std::collections::BTreeMap<String, String>| {
        if map.is_empty() {
            return "<none>".to_string();
        }
        map.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n                ")
    };
    out.push_str(&format!("  Labels:       {}\n", pairs(&m.labels)));
    out.push_str(&format!("  Annotations:  {}\n", pairs(&m.annotations)));
    out.push_str("  Containers:\n");
    for c in t
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or(&[])
    {
        out.push_str(&format!("   {}:\n    Image:      {}\n", c.name, c.image));
        for p in &c.ports {
            let proto = if p.protocol.is_empty() {
                "TCP"
            } else {
                &p.protocol
            };
            out.push_str(&format!("    Port:       {}/{proto}\n", p.container_port));
        }
    }
    out
}
