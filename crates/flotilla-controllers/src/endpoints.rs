//! Endpoints: for each Service with a selector, the addresses of the pods it selects (ready
//! ones, and the others as not ready) with the Service's ports resolved against each pod's
//! containers (a named `targetPort` finds the container port of that name). Until pods get
//! addresses of their own, a pod is reached at its node's InternalIP.

use std::collections::BTreeMap;

use flotilla_api::pb::api::{
    object::Body, EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Object, ObjectMeta,
    ObjectReference,
};

use crate::common::{controller_ref, is_ready, Action, Reconciled};

fn service_parts(svc: &Object) -> Option<flotilla_api::pb::api::ServiceSpec> {
    match &svc.body {
        Some(Body::Service(s)) => s.spec.clone(),
        _ => None,
    }
}

/// Whether `svc` selects `pod` (same namespace, every selector label matching).
pub fn selects(svc: &Object, pod: &Object) -> bool {
    let Some(spec) = service_parts(svc) else {
        return false;
    };
    !spec.selector.is_empty()
        && svc.meta().namespace == pod.meta().namespace
        && spec
            .selector
            .iter()
            .all(|(k, v)| pod.meta().labels.get(k) == Some(v))
}

fn resolve_ports(spec: &flotilla_api::pb::api::ServiceSpec, pod: &Object) -> Vec<EndpointPort> {
    let containers = match &pod.body {
        Some(Body::Pod(p)) => p
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for sp in &spec.ports {
        let target = if sp.target_port.is_empty() {
            sp.port.to_string()
        } else {
            sp.target_port.clone()
        };
        let port = match target.parse::<i32>() {
            Ok(n) => Some(n),
            Err(_) => containers
                .iter()
                .flat_map(|c| c.ports.iter())
                .find(|p| p.name == target)
                .map(|p| p.container_port),
        };
        // A named port the pod does not have: the pod does not serve this port.
        let Some(port) = port else { continue };
        out.push(EndpointPort {
            name: sp.name.clone(),
            port,
            protocol: if sp.protocol.is_empty() {
                "TCP".into()
            } else {
                sp.protocol.clone()
            },
            app_protocol: sp.app_protocol.clone(),
        });
    }
    out
}

/// Pods with the same resolved ports share a subset: (name, port, protocol) of each.
type PortsKey = Vec<(String, i32, String)>;

/// The Endpoints a Service should have. `pods`: the namespace's pods; `node_ip`: a node's
/// InternalIP by name; `existing`: the Endpoints object now stored, if any.
pub fn reconcile(
    svc: &Object,
    pods: &[&Object],
    node_ip: &dyn Fn(&str) -> Option<String>,
    existing: Option<&Object>,
) -> Reconciled {
    let mut out = Reconciled::default();
    let Some(spec) = service_parts(svc) else {
        return out;
    };
    // Without a selector the Endpoints are the user's to write.
    if spec.selector.is_empty() || svc.meta().deletion_timestamp_ms.is_some() {
        return out;
    }
    let mut groups: BTreeMap<PortsKey, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    let mut ports_of: BTreeMap<PortsKey, Vec<EndpointPort>> = BTreeMap::new();
    for p in pods.iter().filter(|p| selects(svc, p)) {
        let Some(Body::Pod(pod)) = &p.body else {
            continue;
        };
        let ps = pod.spec.clone().unwrap_or_default();
        let st = pod.status.clone().unwrap_or_default();
        if matches!(st.phase.as_str(), "Succeeded" | "Failed") || ps.node_name.is_empty() {
            continue;
        }
        let ip = if !st.pod_ip.is_empty() {
            Some(st.pod_ip.clone())
        } else if !st.host_ip.is_empty() {
            Some(st.host_ip.clone())
        } else {
            node_ip(&ps.node_name)
        };
        let Some(ip) = ip else { continue };
        let ports = resolve_ports(&spec, p);
        if ports.is_empty() && !spec.ports.is_empty() {
            continue;
        }
        let key: PortsKey = ports
            .iter()
            .map(|p| (p.name.clone(), p.port, p.protocol.clone()))
            .collect();
        ports_of.insert(key.clone(), ports);
        let address = EndpointAddress {
            ip,
            hostname: ps.hostname.clone(),
            node_name: Some(ps.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: "Pod".into(),
                namespace: p.meta().namespace.clone(),
                name: p.meta().name.clone(),
                uid: p.meta().uid.clone(),
                ..Default::default()
            }),
        };
        let ready = spec.publish_not_ready_addresses
            || (is_ready(p) && p.meta().deletion_timestamp_ms.is_none());
        let g = groups.entry(key).or_default();
        if ready {
            g.0.push(address);
        } else {
            g.1.push(address);
        }
    }
    let subsets: Vec<EndpointSubset> = groups
        .into_iter()
        .map(|(key, (mut ready, mut not_ready))| {
            let by_name = |a: &EndpointAddress| {
                a.target_ref
                    .as_ref()
                    .map(|r| r.name.clone())
                    .unwrap_or_default()
            };
            ready.sort_by_key(by_name);
            not_ready.sort_by_key(by_name);
            EndpointSubset {
                addresses: ready,
                not_ready_addresses: not_ready,
                ports: ports_of.remove(&key).unwrap_or_default(),
            }
        })
        .collect();
    let body = Some(Body::Endpoints(Endpoints { subsets }));
    match existing {
        Some(e) if e.body == body => {}
        Some(e) => {
            let mut o = e.clone();
            o.body = body;
            out.actions.push(Action::Update(o));
        }
        None => out.actions.push(Action::Create(Object {
            api_version: "v1".into(),
            kind: "Endpoints".into(),
            metadata: Some(ObjectMeta {
                name: svc.meta().name.clone(),
                namespace: svc.meta().namespace.clone(),
                labels: svc.meta().labels.clone(),
                owner_references: vec![controller_ref(svc)],
                ..Default::default()
            }),
            body,
        })),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Object {
        flotilla_api::manifest::parse_manifests("t", y)
            .unwrap()
            .remove(0)
            .object
    }

    fn pod(name: &str, ready: bool, labels: &str) -> Object {
        parse(&format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec:\n  nodeName: n1\n  containers: [{{name: c, image: x, ports: [{{name: web, containerPort: 8080}}]}}]\nstatus:\n  phase: Running\n  conditions: [{{type: Ready, status: \"{}\"}}]\n", if ready { "True" } else { "False" }))
    }

    #[test]
    fn ready_and_not_ready_pods_with_named_ports_resolved() {
        let svc = parse("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: web}]\n");
        let a = pod("a", true, "app: web");
        let b = pod("b", false, "app: web");
        let other = pod("c", true, "app: db");
        let ip = |n: &str| (n == "n1").then(|| "10.0.0.1".to_string());
        let r = reconcile(&svc, &[&a, &b, &other], &ip, None);
        let Some(Action::Create(e)) = r.actions.first() else {
            panic!("{r:?}")
        };
        let Some(Body::Endpoints(ep)) = &e.body else {
            panic!()
        };
        let s = &ep.subsets[0];
        assert_eq!(s.addresses.len(), 1);
        assert_eq!(s.addresses[0].ip, "10.0.0.1");
        assert_eq!(s.addresses[0].target_ref.as_ref().unwrap().name, "a");
        assert_eq!(
            s.not_ready_addresses[0].target_ref.as_ref().unwrap().name,
            "b"
        );
        assert_eq!(s.ports[0].port, 8080);
        assert_eq!(s.ports[0].name, "http");
        // Already as it should be: nothing to write.
        let r2 = reconcile(&svc, &[&a, &b, &other], &ip, Some(e));
        assert!(r2.actions.is_empty());
        // No selector: hands off.
        let manual = parse("apiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec:\n  ports: [{port: 5432}]\n");
        assert!(reconcile(&manual, &[&a], &ip, None).actions.is_empty());
    }
}
