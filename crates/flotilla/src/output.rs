//! Output formats as kubectl prints them: tables, names, JSON/YAML objects and lists.

use comfy_table::presets::NOTHING;
use comfy_table::{CellAlignment, Table};
use flotilla_api::manifest;
use flotilla_api::pb::admin::{ClusterStatus, Role};
use flotilla_api::pb::api::{object::Body, Object};
use serde_json::{json, Value};

/// kubectl's short ages: 45s, 12m, 5h, 3d.
pub fn age(created_ms: i64, now_ms: i64) -> String {
    let s = ((now_ms - created_ms).max(0) / 1000) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
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
        _ => vec![],
    }
}

fn kind_cells(o: &Object) -> Vec<String> {
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
        None => vec![],
    }
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
pub fn table(objects: &[Object], with_namespace: bool, header: bool) -> String {
    let kind = objects.first().map(|o| o.kind.as_str()).unwrap_or("");
    let mut headers = vec![];
    if with_namespace {
        headers.push("NAMESPACE");
    }
    headers.push("NAME");
    headers.extend(kind_columns(kind));
    headers.push("AGE");
    let mut t = new_table(headers);
    let now = now_ms();
    for o in objects {
        let m = o.meta();
        let mut row = vec![];
        if with_namespace {
            row.push(m.namespace.clone());
        }
        row.push(m.name.clone());
        row.extend(kind_cells(o));
        row.push(age(m.creation_timestamp_ms, now));
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
    })
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
    format!(
        "cluster {}, leader {leader}\n{}",
        st.cluster_id,
        render(&t, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_like_kubectl() {
        assert_eq!(age(0, 45_000), "45s");
        assert_eq!(age(0, 600_000), "10m");
        assert_eq!(age(0, 5 * 3_600_000), "5h");
        assert_eq!(age(0, 3 * 86_400_000), "3d");
    }
}
