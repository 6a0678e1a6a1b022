//! OCI bundles: a container description turned into runtime-spec `config.json` with `oci-spec`.
//! Pure translation (no I/O but [`write`]), so it is tested on its own.

use flotilla_api::pb::node::ImageConfig;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Result, RuntimeError};

/// CFS period used for CPU limits, as the kubelet does.
pub const CPU_PERIOD_US: u64 = 100_000;
/// Kubernetes' minimum CPU shares.
const MIN_SHARES: u64 = 2;

/// A bind mount into the container (volumes, later `/etc/hosts` and the like).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

/// cgroup limits in the runtime's units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    pub cpu_quota_us: Option<i64>,
    pub memory_limit_bytes: Option<i64>,
    pub pids_limit: Option<i64>,
}

impl Resources {
    /// Kubernetes' translation: shares from the CPU request (or the limit when no request is
    /// given), quota from the CPU limit, memory limit as is.
    pub fn from_kubernetes(
        cpu_request_milli: Option<u64>,
        cpu_limit_milli: Option<u64>,
        memory_limit_bytes: Option<i64>,
        pids_limit: Option<i64>,
    ) -> Self {
        let shares = cpu_request_milli
            .or(cpu_limit_milli)
            .map(|m| (m * 1024 / 1000).max(MIN_SHARES))
            .unwrap_or(MIN_SHARES);
        let quota = cpu_limit_milli.map(|m| ((m * CPU_PERIOD_US / 1000).max(1000)) as i64);
        Resources {
            cpu_shares: Some(shares),
            cpu_quota_us: quota,
            memory_limit_bytes,
            pids_limit,
        }
    }
}

/// What the runtime needs to know to run one container.
#[derive(Clone, Debug, Default)]
pub struct ContainerConfig {
    /// The runtime's container id: 1-128 of `[A-Za-z0-9_.-]`.
    pub id: String,
    pub args: Vec<String>,
    /// `KEY=VALUE`, later entries win.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    /// The pod's network namespace; None gives the container one of its own.
    pub netns: Option<PathBuf>,
    pub mounts: Vec<BindMount>,
    pub resources: Resources,
    /// cgroup path given to the runtime, e.g. `/flotilla/<pod uid>/<container>`.
    pub cgroups_path: String,
    pub readonly_rootfs: bool,
}

pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidContainerId(id.to_string()))
    }
}

/// Kubernetes' rule: `command` replaces the image's ENTRYPOINT, `args` its CMD; `args` alone
/// keeps the ENTRYPOINT.
pub fn resolve_args(image: &ImageConfig, command: &[String], args: &[String]) -> Vec<String> {
    match (command.is_empty(), args.is_empty()) {
        (false, _) => command.iter().chain(args).cloned().collect(),
        (true, false) => image.entrypoint.iter().chain(args).cloned().collect(),
        (true, true) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    }
}

/// The image's environment overridden by the container's, keeping the image's order.
pub fn merge_env(image: &[String], container: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let overridden: HashSet<&str> = container.iter().map(|(k, _)| k.as_str()).collect();
    for e in image {
        let key = e.split('=').next().unwrap_or("");
        if !overridden.contains(key) {
            out.push(e.clone());
        }
    }
    let mut seen = HashSet::new();
    // Later duplicates win, as in Kubernetes.
    let mut last: Vec<&(String, String)> = Vec::new();
    for kv in container.iter().rev() {
        if seen.insert(kv.0.as_str()) {
            last.push(kv);
        }
    }
    last.reverse();
    out.extend(last.into_iter().map(|(k, v)| format!("{k}={v}")));
    out
}

/// Docker's and containerd's default capability set.
fn default_capabilities() -> HashSet<Capability> {
    use Capability::*;
    [
        Chown,
        DacOverride,
        Fsetid,
        Fowner,
        Mknod,
        NetRaw,
        Setgid,
        Setuid,
        Setfcap,
        Setpcap,
        NetBindService,
        SysChroot,
        Kill,
        AuditWrite,
    ]
    .into_iter()
    .collect()
}

fn invalid(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::InvalidConfig(e.to_string())
}

/// Builds the runtime spec for `cfg` with its root filesystem at `rootfs`.
pub fn build_spec(cfg: &ContainerConfig, rootfs: &Path) -> Result<Spec> {
    validate_id(&cfg.id)?;
    if cfg.args.is_empty() {
        return Err(RuntimeError::InvalidConfig(format!(
            "container {}: no command (the image has no ENTRYPOINT or CMD and none is given)",
            cfg.id
        )));
    }
    let caps = default_capabilities();
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(cfg.args.clone())
        .env(cfg.env.clone())
        .cwd(if cfg.cwd.is_empty() { "/" } else { &cfg.cwd })
        .user(
            UserBuilder::default()
                .uid(cfg.uid)
                .gid(cfg.gid)
                .build()
                .map_err(invalid)?,
        )
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .build()
                .map_err(invalid)?,
        )
        .no_new_privileges(false)
        .build()
        .map_err(invalid)?;

    let mut namespaces = Vec::new();
    for t in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ] {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(t)
                .build()
                .map_err(invalid)?,
        );
    }
    let mut net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
    if let Some(p) = &cfg.netns {
        net = net.path(p.clone());
    }
    namespaces.push(net.build().map_err(invalid)?);

    let mut cpu = LinuxCpuBuilder::default();
    if let Some(s) = cfg.resources.cpu_shares {
        cpu = cpu.shares(s);
    }
    if let Some(q) = cfg.resources.cpu_quota_us {
        cpu = cpu.quota(q).period(CPU_PERIOD_US);
    }
    let mut resources = LinuxResourcesBuilder::default().cpu(cpu.build().map_err(invalid)?);
    if let Some(m) = cfg.resources.memory_limit_bytes {
        // No swap beyond the limit, as the kubelet sets it.
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(m)
                .swap(m)
                .build()
                .map_err(invalid)?,
        );
    }
    if let Some(p) = cfg.resources.pids_limit {
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(p)
                .build()
                .map_err(invalid)?,
        );
    }
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build().map_err(invalid)?)
        .cgroups_path(PathBuf::from(&cfg.cgroups_path))
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .build()
        .map_err(invalid)?;

    let mut mounts: Vec<Mount> = oci_spec::runtime::get_default_mounts();
    for m in &cfg.mounts {
        if !m.destination.starts_with('/') {
            return Err(RuntimeError::InvalidConfig(format!(
                "mount destination {:?} is not absolute",
                m.destination
            )));
        }
        let mut opts = vec!["rbind".to_string(), "rprivate".to_string()];
        if m.readonly {
            opts.push("ro".into());
        }
        mounts.push(
            MountBuilder::default()
                .destination(PathBuf::from(&m.destination))
                .typ("bind")
                .source(m.source.clone())
                .options(opts)
                .build()
                .map_err(invalid)?,
        );
    }

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(rootfs.to_path_buf())
                .readonly(cfg.readonly_rootfs)
                .build()
                .map_err(invalid)?,
        )
        .process(process)
        .hostname(cfg.hostname.clone())
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(invalid)
}

/// Writes `config.json` into `bundle`.
pub fn write(spec: &Spec, bundle: &Path) -> Result<()> {
    let path = bundle.join("config.json");
    let json = serde_json::to_vec_pretty(spec).map_err(invalid)?;
    crate::image::write_atomic(&path, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn command_and_args_follow_kubernetes() {
        let img = ImageConfig {
            entrypoint: s(&["/ep"]),
            cmd: s(&["a"]),
            ..Default::default()
        };
        assert_eq!(resolve_args(&img, &[], &[]), s(&["/ep", "a"]));
        assert_eq!(resolve_args(&img, &[], &s(&["b"])), s(&["/ep", "b"]));
        assert_eq!(resolve_args(&img, &s(&["/c"]), &[]), s(&["/c"]));
        assert_eq!(resolve_args(&img, &s(&["/c"]), &s(&["d"])), s(&["/c", "d"]));
    }

    #[test]
    fn env_overrides_image_and_last_wins() {
        let env = merge_env(
            &s(&["PATH=/bin", "A=1"]),
            &[
                ("A".into(), "2".into()),
                ("B".into(), "x".into()),
                ("B".into(), "y".into()),
            ],
        );
        assert_eq!(env, s(&["PATH=/bin", "A=2", "B=y"]));
    }

    #[test]
    fn kubernetes_cpu_translation() {
        let r = Resources::from_kubernetes(Some(250), Some(500), Some(64 << 20), Some(100));
        assert_eq!(r.cpu_shares, Some(256));
        assert_eq!(r.cpu_quota_us, Some(50_000));
        let r = Resources::from_kubernetes(None, None, None, None);
        assert_eq!(r.cpu_shares, Some(2));
        assert_eq!(r.cpu_quota_us, None);
    }

    #[test]
    fn spec_has_limits_namespaces_and_mounts() {
        let cfg = ContainerConfig {
            id: "pod-1_web_0".into(),
            args: s(&["sh", "-c", "echo hi"]),
            env: s(&["A=1"]),
            cwd: "/tmp".into(),
            uid: 1000,
            gid: 1000,
            hostname: "web".into(),
            netns: Some("/run/flotilla/netns/p".into()),
            mounts: vec![BindMount {
                source: "/data".into(),
                destination: "/data".into(),
                readonly: true,
            }],
            resources: Resources::from_kubernetes(Some(100), Some(200), Some(1 << 26), Some(64)),
            cgroups_path: "/flotilla/p/web".into(),
            readonly_rootfs: false,
        };
        let spec = build_spec(&cfg, Path::new("/r")).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["process"]["user"]["uid"], 1000);
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 1 << 26);
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 20_000);
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], 64);
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        assert!(ns
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/run/flotilla/netns/p"));
        assert!(json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/data" && m["options"].to_string().contains("ro")));
        assert!(build_spec(
            &ContainerConfig {
                id: "../x".into(),
                ..cfg.clone()
            },
            Path::new("/r")
        )
        .is_err());
        assert!(build_spec(
            &ContainerConfig {
                args: vec![],
                ..cfg
            },
            Path::new("/r")
        )
        .is_err());
    }
}
