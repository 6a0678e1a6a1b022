//! The algorithm and the queue, on objects written as a user writes them.

use flotilla_api::manifest::parse_manifests;
use flotilla_api::pb::api::Object;

use crate::algorithm::feasible_to_find;
use crate::Cluster;

fn obj(yaml: &str) -> Object {
    let mut o = parse_manifests("test", yaml).unwrap().remove(0).object;
    flotilla_api::kinds::apply_defaults(&mut o);
    if o.meta().uid.is_empty() {
        o.meta_mut().uid = format!("uid-{}", o.meta().name);
    }
    o
}

fn node(name: &str, cpu: &str, memory: &str, extra: &str) -> Object {
    obj(&format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/hostname: {name}}}\n{extra}\nstatus:\n  allocatable: {{cpu: \"{cpu}\", memory: {memory}, pods: \"110\"}}\n"
    ))
}

fn pod(name: &str, cpu: &str, extra_spec: &str) -> Object {
    obj(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: web}}}}\nspec:\n{extra_spec}\n  containers:\n  - name: c\n    image: busybox\n    resources: {{requests: {{cpu: \"{cpu}\"}}}}\n"
    ))
}

/// (pod, node) placed and (pod, message) unplaced.
type Outcome = (Vec<(String, String)>, Vec<(String, String)>);

fn schedule_all(c: &mut Cluster) -> Outcome {
    let (ok, bad) = c.next_batch(1000);
    (
        ok.into_iter().map(|p| (p.pod.name, p.node)).collect(),
        bad.into_iter()
            .map(|u| (u.pod.name, u.error.to_string()))
            .collect(),
    )
}

#[test]
fn requests_are_checked_against_allocatable_and_the_reason_is_worded_as_kubernetes() {
    let mut c = Cluster::new();
    c.apply_node(&node("n1", "1", "1Gi", ""));
    c.apply_node(&node("n2", "2", "1Gi", ""));
    c.apply_pod(&pod("big", "1500m", ""));
    c.apply_pod(&pod("huge", "3", ""));
    let (ok, bad) = schedule_all(&mut c);
    assert_eq!(ok, vec![("big".into(), "n2".into())]);
    assert_eq!(
        bad,
        vec![(
            "huge".into(),
            "0/2 nodes are available: 2 Insufficient cpu.".into()
        )]
    );
    // The second pod sees the first one's request (assumed before the bind lands).
    c.apply_pod(&pod("more", "1", ""));
    let (ok, _) = schedule_all(&mut c);
    assert_eq!(ok, vec![("more".into(), "n1".into())]);
    assert_eq!(c.node("n2").unwrap().requested.cpu_milli, 1500);
}

#[test]
fn mixed_reasons_are_counted_per_node_and_sorted() {
    let mut c = Cluster::new();
    c.apply_node(&node(
        "n1",
        "4",
        "1Gi",
        "spec:\n  taints: [{key: dedicated, value: db, effect: NoSchedule}]",
    ));
    c.apply_node(&node("n2", "1", "1Gi", "spec: {unschedulable: true}"));
    c.apply_node(&node("n3", "1", "1Gi", ""));
    c.apply_node(&node("n4", "1", "1Gi", ""));
    c.apply_pod(&pod("p", "2", ""));
    let (_, bad) = schedule_all(&mut c);
    assert_eq!(
        bad[0].1,
        "0/4 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: db}, 1 node(s) were unschedulable."
    );
}

#[test]
fn tolerations_node_selector_and_required_node_affinity() {
    let mut c = Cluster::new();
    c.apply_node(&node(
        "tainted",
        "4",
        "1Gi",
        "spec:\n  taints: [{key: dedicated, value: db, effect: NoExecute}]",
    ));
    c.apply_node(&node("plain", "4", "1Gi", ""));
    c.apply_pod(&pod(
        "tolerant",
        "1",
        "  nodeSelector: {kubernetes.io/hostname: tainted}\n  tolerations: [{key: dedicated, operator: Equal, value: db, effect: NoExecute}]",
    ));
    c.apply_pod(&pod(
        "picky",
        "1",
        "  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms:\n        - matchExpressions: [{key: kubernetes.io/hostname, operator: NotIn, values: [plain]}]",
    ));
    let (ok, bad) = schedule_all(&mut c);
    assert_eq!(ok, vec![("tolerant".into(), "tainted".into())]);
    assert_eq!(
        bad[0].1,
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: db}."
    );
}

#[test]
fn preferred_affinity_and_prefer_no_schedule_steer_the_choice() {
    let mut c = Cluster::new();
    c.apply_node(&node(
        "soft-tainted",
        "4",
        "1Gi",
        "spec:\n  taints: [{key: spot, value: \"yes\", effect: PreferNoSchedule}]",
    ));
    c.apply_node(&node("a", "4", "1Gi", ""));
    c.apply_node(&node("b", "4", "1Gi", ""));
    c.apply_pod(&pod(
        "wants-b",
        "0",
        "  affinity:\n    nodeAffinity:\n      preferredDuringSchedulingIgnoredDuringExecution:\n      - weight: 50\n        preference:\n          matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [b]}]",
    ));
    let (ok, _) = schedule_all(&mut c);
    assert_eq!(ok[0].1, "b");
    for i in 0..4 {
        c.apply_pod(&pod(&format!("x{i}"), "0", ""));
    }
    let (ok, _) = schedule_all(&mut c);
    assert!(ok.iter().all(|(_, n)| n != "soft-tainted"), "{ok:?}");
}

#[test]
fn host_ports_conflict_on_the_same_node_only() {
    let mut c = Cluster::new();
    c.apply_node(&node("n1", "4", "1Gi", ""));
    c.apply_node(&node("n2", "4", "1Gi", ""));
    let hp = |name: &str| {
        obj(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    ports: [{{containerPort: 80, hostPort: 8080}}]\n"
        ))
    };
    for i in 0..3 {
        c.apply_pod(&hp(&format!("p{i}")));
    }
    let (ok, bad) = schedule_all(&mut c);
    let mut nodes: Vec<_> = ok.iter().map(|(_, n)| n.clone()).collect();
    nodes.sort();
    assert_eq!(nodes, vec!["n1", "n2"]);
    assert_eq!(
        bad[0].1,
        "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."
    );
}

#[test]
fn anti_affinity_by_hostname_both_ways() {
    let mut c = Cluster::new();
    for n in ["n1", "n2"] {
        c.apply_node(&node(n, "4", "1Gi", ""));
    }
    let aa = "  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - labelSelector: {matchLabels: {app: web}}\n        topologyKey: kubernetes.io/hostname";
    for i in 0..3 {
        c.apply_pod(&pod(&format!("w{i}"), "0", aa));
    }
    let (ok, bad) = schedule_all(&mut c);
    assert_eq!(ok.len(), 2);
    assert_ne!(ok[0].1, ok[1].1);
    assert_eq!(
        bad[0].1,
        "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
    );
    // A pod without terms of its own is kept away by the placed pods' terms.
    c.apply_pod(&pod("plain", "0", ""));
    let (_, bad) = schedule_all(&mut c);
    assert_eq!(
        bad[0].1,
        "0/2 nodes are available: 2 node(s) didn't satisfy existing pods anti-affinity rules."
    );
}

#[test]
fn a_pod_placed_earlier_in_the_same_batch_keeps_others_out_by_its_anti_affinity() {
    let mut c = Cluster::new();
    // n1 has more room, so least-allocated alone would put every pod there.
    c.apply_node(&node("n1", "8", "8Gi", ""));
    c.apply_node(&node("n2", "1", "8Gi", ""));
    let aa = "  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - labelSelector: {matchLabels: {app: web}}\n        topologyKey: kubernetes.io/hostname";
    c.apply_pod(&pod("a-guard", "100m", aa));
    c.apply_pod(&pod("b-plain", "100m", ""));
    c.apply_pod(&pod("c-plain", "100m", ""));
    let (ok, bad) = schedule_all(&mut c);
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(
        ok,
        vec![
            ("a-guard".into(), "n1".into()),
            ("b-plain".into(), "n2".into()),
            ("c-plain".into(), "n2".into()),
        ]
    );
}

#[test]
fn pods_of_one_owner_spread_across_nodes() {
    let mut c = Cluster::new();
    for n in ["n1", "n2", "n3"] {
        c.apply_node(&node(n, "8", "8Gi", ""));
    }
    for i in 0..6 {
        let mut p = pod(&format!("r{i}"), "100m", "");
        p.meta_mut()
            .owner_references
            .push(flotilla_api::pb::api::OwnerReference {
                kind: "ReplicaSet".into(),
                name: "rs".into(),
                uid: "rs-uid".into(),
                controller: true,
                ..Default::default()
            });
        c.apply_pod(&p);
    }
    schedule_all(&mut c);
    for n in ["n1", "n2", "n3"] {
        assert_eq!(c.node(n).unwrap().owners["rs-uid"], 2, "{n}");
    }
}

#[test]
fn unschedulable_pods_are_retried_when_a_node_fits_and_reported_once() {
    let mut c = Cluster::new();
    c.apply_node(&node("small", "1", "1Gi", ""));
    c.apply_pod(&pod("p", "2", ""));
    let (_, bad) = c.next_batch(10);
    assert!(bad[0].report);
    assert_eq!(c.unschedulable_count(), 1);
    // Nothing changed: nothing to do.
    assert!(c.next_batch(10).0.is_empty());
    c.retry_unschedulable();
    let (_, bad) = c.next_batch(10);
    assert!(!bad[0].report, "the same reason is not told twice");
    c.apply_node(&node("big", "4", "1Gi", ""));
    let (ok, _) = c.next_batch(10);
    assert_eq!(ok[0].node, "big");
}

#[test]
fn a_failed_bind_requeues_and_a_bound_pod_is_never_rescheduled() {
    let mut c = Cluster::new();
    c.apply_node(&node("n1", "4", "1Gi", ""));
    let p = pod("p", "1", "");
    c.apply_pod(&p);
    let (ok, _) = c.next_batch(10);
    assert_eq!(ok.len(), 1);
    assert_eq!(c.assumed_count(), 1);
    // A stale copy from the watch while in flight does not queue it twice.
    c.apply_pod(&p);
    assert_eq!(c.pending_count(), 0);
    c.bind_failed("default/p");
    assert_eq!(c.node("n1").unwrap().requested.cpu_milli, 0);
    let (ok, _) = c.next_batch(10);
    assert_eq!(ok.len(), 1);
    let mut bound = p.clone();
    if let Some(flotilla_api::pb::api::object::Body::Pod(x)) = &mut bound.body {
        x.spec.as_mut().unwrap().node_name = "n1".into();
    }
    c.apply_pod(&bound);
    assert_eq!(c.assumed_count(), 0);
    assert_eq!(c.node("n1").unwrap().requested.cpu_milli, 1000);
    assert!(c.next_batch(10).0.is_empty());
    c.delete_pod("default/p");
    assert_eq!(c.node("n1").unwrap().requested.cpu_milli, 0);
}

#[test]
fn a_refused_bind_waits_for_news_instead_of_being_retried_at_once() {
    let mut c = Cluster::new();
    c.apply_node(&node("n1", "2", "1Gi", ""));
    let p = pod("p", "1", "");
    c.apply_pod(&p);
    let (ok, _) = c.next_batch(10);
    assert_eq!(ok.len(), 1);
    // Deleted in the store after the decision: NotFound.
    c.bind_refused("default/p");
    assert_eq!(c.node("n1").unwrap().requested.cpu_milli, 0);
    assert_eq!(c.pending_count(), 0, "not retried before any news");
    assert!(c.next_batch(10).0.is_empty());
    // The news: the delete. Nothing is left to retry.
    c.delete_pod("default/p");
    c.retry_unschedulable();
    assert!(c.next_batch(10).0.is_empty());
    // Refused because someone else bound it: the feed's copy places it there.
    let q = pod("q", "1", "");
    c.apply_pod(&q);
    assert_eq!(c.next_batch(10).0.len(), 1);
    c.bind_refused("default/q");
    let mut bound = q.clone();
    if let Some(flotilla_api::pb::api::object::Body::Pod(x)) = &mut bound.body {
        x.spec.as_mut().unwrap().node_name = "n1".into();
    }
    c.apply_pod(&bound);
    c.retry_unschedulable();
    assert!(c.next_batch(10).0.is_empty());
    assert_eq!(c.node("n1").unwrap().requested.cpu_milli, 1000);
    // Refused because another pod now has the name: the new pod is decided at once.
    let r = pod("r", "1", "");
    c.apply_pod(&r);
    assert_eq!(c.next_batch(10).0.len(), 1);
    c.bind_refused("default/r");
    assert_eq!(c.pending_count(), 0);
    let mut again = r.clone();
    again.meta_mut().uid = "another-uid".into();
    c.apply_pod(&again);
    let (ok, _) = c.next_batch(10);
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].pod.uid, "another-uid");
}

#[test]
fn priority_then_age_orders_the_queue() {
    let mut c = Cluster::new();
    c.apply_node(&node("n1", "1", "1Gi", ""));
    let mut old = pod("old", "1", "");
    old.meta_mut().creation_timestamp_ms = 1;
    let mut new = pod("new", "1", "  priority: 10");
    new.meta_mut().creation_timestamp_ms = 2;
    c.apply_pod(&old);
    c.apply_pod(&new);
    let (ok, _) = c.next_batch(10);
    assert_eq!(ok[0].pod.name, "new");
}

#[test]
fn finished_pods_and_pods_for_other_schedulers_take_nothing() {
    let mut c = Cluster::new();
    c.apply_node(&node("n1", "1", "1Gi", ""));
    c.apply_pod(&pod("other", "1", "  schedulerName: someone-else"));
    assert_eq!(c.pending_count(), 0);
    let mut done = pod("done", "1", "  nodeName: n1");
    if let Some(flotilla_api::pb::api::object::Body::Pod(x)) = &mut done.body {
        x.status.get_or_insert_with(Default::default).phase = "Succeeded".into();
    }
    c.apply_pod(&done);
    assert_eq!(c.node("n1").unwrap().requested.cpu_milli, 0);
}

#[test]
fn large_clusters_score_a_sample() {
    assert_eq!(feasible_to_find(50), 50);
    assert_eq!(feasible_to_find(5000), 500);
    assert_eq!(feasible_to_find(100_000), 5000);
}
