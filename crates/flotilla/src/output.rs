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

/// `configmap/name`, as `-o name` prints.
pub fn name_of(o: &Object) -> String {
    format!("{}/{}", o.kind.to_ascii_lowercase(), o.meta().name)
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

/// NAME DATA AGE for config maps (NAMESPACE first with -A).
pub fn table(objects: &[Object], with_namespace: bool, header: bool) -> String {
    let mut headers = vec![];
    if with_namespace {
        headers.push("NAMESPACE");
    }
    headers.extend(["NAME", "DATA", "AGE"]);
    let mut t = new_table(headers);
    let now = now_ms();
    for o in objects {
        let m = o.meta();
        let data = match &o.body {
            Some(Body::ConfigMap(c)) => c.data.len() + c.binary_data.len(),
            None => 0,
        };
        let mut row = vec![];
        if with_namespace {
            row.push(m.namespace.clone());
        }
        row.extend([
            m.name.clone(),
            data.to_string(),
            age(m.creation_timestamp_ms, now),
        ]);
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
