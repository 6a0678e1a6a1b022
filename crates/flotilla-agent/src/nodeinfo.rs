//! What the agent reports about its machine in the Node object: capacity, addresses and
//! system information, read from /proc, uname and the OCI runtime.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use flotilla_api::pb::api::object::Body;
use flotilla_api::pb::api::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Object, ObjectMeta,
};

use crate::AgentConfig;

/// Kubernetes' default pod capacity of a node.
pub const MAX_PODS: u32 = 110;

/// Kubernetes' name for this machine's architecture.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// MemTotal from /proc/meminfo, as a quantity in Ki.
fn memory_ki() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total(&text)
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The runtime's version as the Node shows it (`runc://1.1.5+ds1`).
pub fn runtime_version(runtime: &Path) -> String {
    let out = std::process::Command::new(runtime)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success());
    let name = runtime
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "runtime".into());
    let version = out
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().last().map(str::to_string))
        })
        .unwrap_or_else(|| "unknown".into());
    format!("{name}://{version}")
}

/// The local address this machine uses to reach `server` (no packet is sent).
pub fn local_ip_towards(server: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse().ok()?
    } else {
        "0.0.0.0:0".parse().ok()?
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(server).ok()?;
    Some(s.local_addr().ok()?.ip())
}

/// The Node this agent registers, as of `now` (RFC 3339).
pub fn node_object(cfg: &AgentConfig, internal_ip: Option<IpAddr>, now: &str) -> Object {
    let mut labels: BTreeMap<String, String> = cfg.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), cfg.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), architecture().into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_string(), cpus.to_string());
    if let Some(ki) = memory_ki() {
        capacity.insert("memory".to_string(), format!("{ki}Ki"));
    }
    capacity.insert("pods".to_string(), MAX_PODS.to_string());
    let mut addresses = Vec::new();
    if let Some(ip) = internal_ip {
        addresses.push(NodeAddress {
            r#type: "InternalIP".into(),
            address: ip.to_string(),
        });
    }
    addresses.push(NodeAddress {
        r#type: "Hostname".into(),
        address: cfg.name.clone(),
    });
    let uname = nix::sys::utsname::uname().ok();
    Object {
        api_version: "v1".into(),
        kind: "Node".into(),
        metadata: Some(ObjectMeta {
            name: cfg.name.clone(),
            labels,
            ..Default::default()
        }),
        body: Some(Body::Node(Node {
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: capacity.clone(),
                capacity,
                conditions: vec![NodeCondition {
                    r#type: "Ready".into(),
                    status: "True".into(),
                    last_heartbeat_time: now.into(),
                    last_transition_time: now.into(),
                    reason: "AgentReady".into(),
                    message: "flotilla agent is posting ready status".into(),
                }],
                addresses,
                node_info: Some(NodeSystemInfo {
                    machine_id: read_trim("/etc/machine-id"),
                    boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
                    kernel_version: uname
                        .as_ref()
                        .map(|u| u.release().to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    os_image: os_image(),
                    container_runtime_version: runtime_version(&cfg.runtime),
                    kubelet_version: format!("flotilla-agent/{}", env!("CARGO_PKG_VERSION")),
                    operating_system: "linux".into(),
                    architecture: architecture().into(),
                }),
            }),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        assert_eq!(
            parse_meminfo_total("MemTotal:       24563716 kB\nMemFree: 1 kB\n"),
            Some(24563716)
        );
        assert_eq!(parse_meminfo_total("nothing"), None);
    }

    #[test]
    fn node_has_capacity_labels_and_ready() {
        let mut cfg = AgentConfig::new(vec![], "/tmp".into(), "n1".into());
        cfg.labels.insert("zone".into(), "a".into());
        let o = node_object(
            &cfg,
            Some("10.0.0.2".parse().unwrap()),
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(o.meta().labels["kubernetes.io/hostname"], "n1");
        assert_eq!(o.meta().labels["zone"], "a");
        let Some(Body::Node(n)) = &o.body else {
            panic!()
        };
        let st = n.status.as_ref().unwrap();
        assert_eq!(st.capacity["pods"], "110");
        assert!(st.capacity.contains_key("cpu"));
        assert_eq!(st.conditions[0].status, "True");
        assert_eq!(st.addresses[0].address, "10.0.0.2");
    }
}
