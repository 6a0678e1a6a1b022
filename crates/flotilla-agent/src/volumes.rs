//! A pod's environment and volumes from the objects it refers to: env from ConfigMaps,
//! Secrets and the pod's own fields (with Kubernetes' `$(VAR)` expansion), and the volumes
//! emptyDir, hostPath, configMap and secret under `<data>/pods/<uid>/volumes/<name>`.
//!
//! ConfigMap and Secret volumes are written as Kubernetes' atomic writer does: the files live in
//! a `..<hash>` directory, `..data` points at it and every top-level name is a symlink through
//! `..data`, so a container never sees half of an update. It must never write outside the
//! pod's directory, except creating a hostPath the pod asked to be created.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use flotilla_api::pb::api::object::Body;
use flotilla_api::pb::api::{Container, KeyToPath, Object, PodSpec, Volume};
use flotilla_runtime::bundle::BindMount;

/// The objects a pod refers to, as fetched from a server: (kind, name) → object.
#[derive(Default, Debug)]
pub struct Fetched {
    pub objects: HashMap<(String, String), Object>,
}

impl Fetched {
    pub fn new(objects: Vec<Object>) -> Self {
        Fetched {
            objects: objects
                .into_iter()
                .map(|o| ((o.kind.clone(), o.meta().name.clone()), o))
                .collect(),
        }
    }

    /// A ConfigMap's or Secret's keys and bytes; None if it does not exist.
    fn data(&self, kind: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let o = self.objects.get(&(kind.to_string(), name.to_string()))?;
        match &o.body {
            Some(Body::ConfigMap(cm)) => {
                let mut m: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                    .collect();
                for (k, v) in &cm.binary_data {
                    m.insert(k.clone(), v.clone());
                }
                Some(m)
            }
            Some(Body::Secret(s)) => Some(s.data.clone().into_iter().collect()),
            _ => None,
        }
    }
}

fn lower(kind: &str) -> &'static str {
    if kind == "Secret" {
        "secret"
    } else {
        "configmap"
    }
}

/// One key of a ConfigMap or Secret for `valueFrom`; Ok(None) when optional and absent.
fn key_value(
    f: &Fetched,
    kind: &str,
    namespace: &str,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, String> {
    let Some(data) = f.data(kind, name) else {
        if optional {
            return Ok(None);
        }
        return Err(format!("{} {name:?} not found", lower(kind)));
    };
    match data.get(key) {
        Some(v) => String::from_utf8(v.clone())
            .map(Some)
            .map_err(|_| format!("key {key} in {kind} {namespace}/{name} is not UTF-8")),
        None if optional => Ok(None),
        None => Err(format!(
            "couldn't find key {key} in {kind} {namespace}/{name}"
        )),
    }
}

/// Kubernetes' `$(VAR)` expansion: `$$` is a literal `$`, an undefined reference stays as is.
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn field_value(pod: &Object, path: &str) -> Result<String, String> {
    let m = pod.meta();
    let spec = match &pod.body {
        Some(Body::Pod(p)) => p.spec.clone().unwrap_or_default(),
        _ => PodSpec::default(),
    };
    let quoted = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "spec.nodeName" => spec.node_name.clone(),
        "spec.serviceAccountName" => spec.service_account_name.clone(),
        // No pod network yet: the pod's own loopback is all it has.
        "status.podIP" => "127.0.0.1".into(),
        "status.hostIP" => String::new(),
        _ => {
            if let Some(k) = quoted("metadata.labels['") {
                m.labels.get(&k).cloned().unwrap_or_default()
            } else if let Some(k) = quoted("metadata.annotations['") {
                m.annotations.get(&k).cloned().unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldRef fieldPath {path:?}"));
            }
        }
    })
}

/// A valid environment variable name for envFrom keys: Kubernetes skips the others.
fn env_name_ok(n: &str) -> bool {
    !n.is_empty() && !n.contains('=') && n.chars().all(|c| c.is_ascii_graphic())
}

/// The container's environment in Kubernetes' order: envFrom sources, then env (later names
/// win), each value `$(VAR)`-expanded against the variables defined before it.
pub fn resolve_env(
    pod: &Object,
    c: &Container,
    f: &Fetched,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.meta().namespace.clone();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut vars: HashMap<String, String> = HashMap::new();
    for src in &c.env_from {
        let (kind, name, optional) = if let Some(r) = &src.config_map_ref {
            ("ConfigMap", r.name.as_str(), r.optional.unwrap_or(false))
        } else if let Some(r) = &src.secret_ref {
            ("Secret", r.name.as_str(), r.optional.unwrap_or(false))
        } else {
            continue;
        };
        let Some(data) = f.data(kind, name) else {
            if optional {
                continue;
            }
            return Err(format!("{} {name:?} not found", lower(kind)));
        };
        for (k, v) in data {
            let key = format!("{}{k}", src.prefix);
            if !env_name_ok(&key) {
                continue;
            }
            let v = String::from_utf8_lossy(&v).into_owned();
            vars.insert(key.clone(), v.clone());
            out.push((key, v));
        }
    }
    for e in &c.env {
        let value = match &e.value_from {
            None => Some(expand(&e.value, &vars)),
            Some(src) => {
                if let Some(r) = &src.config_map_key_ref {
                    key_value(
                        f,
                        "ConfigMap",
                        &ns,
                        &r.name,
                        &r.key,
                        r.optional.unwrap_or(false),
                    )?
                } else if let Some(r) = &src.secret_key_ref {
                    key_value(
                        f,
                        "Secret",
                        &ns,
                        &r.name,
                        &r.key,
                        r.optional.unwrap_or(false),
                    )?
                } else if let Some(r) = &src.field_ref {
                    Some(field_value(pod, &r.field_path)?)
                } else {
                    Some(String::new())
                }
            }
        };
        if let Some(v) = value {
            vars.insert(e.name.clone(), v.clone());
            out.push((e.name.clone(), v));
        }
    }
    Ok(out)
}

/// A relative path inside a volume: no `..`, not absolute, not empty.
fn safe_relative(p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    if p.is_empty()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "path {p:?} must be relative and may not contain '..'"
        ));
    }
    Ok(path.to_path_buf())
}

fn io(op: &str, p: &Path, e: std::io::Error) -> String {
    format!("{op} {}: {e}", p.display())
}

/// The files of a configMap or secret volume: relative path → (bytes, mode).
fn projection(
    data: &BTreeMap<String, Vec<u8>>,
    items: &[KeyToPath],
    default_mode: u32,
    what: &str,
) -> Result<BTreeMap<PathBuf, (Vec<u8>, u32)>, String> {
    let mut files = BTreeMap::new();
    if items.is_empty() {
        for (k, v) in data {
            files.insert(safe_relative(k)?, (v.clone(), default_mode));
        }
    } else {
        for it in items {
            let v = data
                .get(&it.key)
                .ok_or_else(|| format!("configmap references non-existent config key: {}", it.key))
                .map_err(|e| format!("{what}: {e}"))?;
            let mode = it.mode.map(|m| m as u32 & 0o777).unwrap_or(default_mode);
            files.insert(safe_relative(&it.path)?, (v.clone(), mode));
        }
    }
    Ok(files)
}

/// Writes `files` into `dir` atomically (see the module doc); a no-op when they are unchanged.
pub fn write_atomic(dir: &Path, files: &BTreeMap<PathBuf, (Vec<u8>, u32)>) -> Result<bool, String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (p, (v, mode)) in files {
        h.update(p.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
        h.update(mode.to_be_bytes());
    }
    let digest = h.finalize();
    let version: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let version = format!("..{version}");
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    let data_link = dir.join("..data");
    if std::fs::read_link(&data_link).ok().as_deref() == Some(Path::new(&version)) {
        return Ok(false);
    }
    let vdir = dir.join(&version);
    if vdir.exists() {
        std::fs::remove_dir_all(&vdir).map_err(|e| io("remove", &vdir, e))?;
    }
    for (rel, (bytes, mode)) in files {
        let p = vdir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
        }
        std::fs::write(&p, bytes).map_err(|e| io("write", &p, e))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
            .map_err(|e| io("chmod", &p, e))?;
    }
    std::fs::create_dir_all(&vdir).map_err(|e| io("create", &vdir, e))?;
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp).map_err(|e| io("symlink", &tmp, e))?;
    std::fs::rename(&tmp, &data_link).map_err(|e| io("rename", &data_link, e))?;
    // Top-level names point through ..data; names no longer projected go.
    let top: std::collections::BTreeSet<std::ffi::OsString> = files
        .keys()
        .filter_map(|p| p.components().next())
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    for name in &top {
        let link = dir.join(name);
        let target = Path::new("..data").join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link).map_err(|e| io("symlink", &link, e))?;
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| io("read", dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let s = name.to_string_lossy();
        if s == "..data" || *s == *version {
            continue;
        }
        if s.starts_with("..") {
            let _ = std::fs::remove_dir_all(entry.path());
        } else if !top.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(true)
}

/// A prepared volume: where it is on the host and whether containers must see it read-only.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub path: PathBuf,
    pub readonly: bool,
}

/// Makes every volume of the pod exist under `pod_dir` (or on the host for hostPath), and
/// refreshes configMap and secret contents. Errors name the volume, as Kubernetes'
/// `MountVolume.SetUp failed for volume "x": ...`.
pub fn prepare(
    pod_dir: &Path,
    volumes: &[Volume],
    f: &Fetched,
) -> Result<HashMap<String, Prepared>, String> {
    let mut out = HashMap::new();
    for v in volumes {
        let fail = |e: String| format!("MountVolume.SetUp failed for volume {:?}: {e}", v.name);
        safe_relative(&v.name).map_err(fail)?;
        let dir = pod_dir.join("volumes").join(&v.name);
        let prepared = if let Some(ed) = &v.empty_dir {
            std::fs::create_dir_all(&dir).map_err(|e| fail(io("create", &dir, e)))?;
            // Kubernetes' emptyDir is world-writable, so any runAsUser can use it.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| fail(io("chmod", &dir, e)))?;
            if ed.medium == "Memory" && !flotilla_runtime::rootfs::is_mounted(&dir) {
                mount_tmpfs(&dir, &ed.size_limit).map_err(fail)?;
            }
            Prepared {
                path: dir,
                readonly: false,
            }
        } else if let Some(hp) = &v.host_path {
            Prepared {
                path: host_path(&hp.path, &hp.r#type).map_err(fail)?,
                readonly: false,
            }
        } else if let Some(cm) = &v.config_map {
            let mode = cm.default_mode.map(|m| m as u32 & 0o777).unwrap_or(0o644);
            let files = match f.data("ConfigMap", &cm.name) {
                Some(d) => projection(&d, &cm.items, mode, "configMap").map_err(fail)?,
                None if cm.optional.unwrap_or(false) => BTreeMap::new(),
                None => return Err(fail(format!("configmap {:?} not found", cm.name))),
            };
            write_atomic(&dir, &files).map_err(fail)?;
            Prepared {
                path: dir,
                readonly: true,
            }
        } else if let Some(s) = &v.secret {
            let mode = s.default_mode.map(|m| m as u32 & 0o777).unwrap_or(0o644);
            let files = match f.data("Secret", &s.secret_name) {
                Some(d) => projection(&d, &s.items, mode, "secret").map_err(fail)?,
                None if s.optional.unwrap_or(false) => BTreeMap::new(),
                None => return Err(fail(format!("secret {:?} not found", s.secret_name))),
            };
            write_atomic(&dir, &files).map_err(fail)?;
            Prepared {
                path: dir,
                readonly: true,
            }
        } else {
            return Err(fail(
                "no supported volume source (emptyDir, hostPath, configMap, secret)".into(),
            ));
        };
        out.insert(v.name.clone(), prepared);
    }
    Ok(out)
}

fn mount_tmpfs(dir: &Path, size_limit: &str) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    let mut opts = "mode=0777".to_string();
    if !size_limit.is_empty() {
        let q = flotilla_api::quantity::Quantity::parse(size_limit)
            .map_err(|e| format!("sizeLimit: {e}"))?;
        opts.push_str(&format!(",size={}", q.units_ceil().max(0)));
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| format!("mount tmpfs on {}: {e}", dir.display()))
}

/// A hostPath checked (or created) as its `type` says.
fn host_path(path: &str, kind: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::FileTypeExt;
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(format!("hostPath {path:?} is not absolute"));
    }
    let meta = std::fs::metadata(&p).ok();
    let ft = meta.as_ref().map(|m| m.file_type());
    let ok = match kind {
        "" => true,
        "DirectoryOrCreate" => {
            if ft.is_none() {
                std::fs::create_dir_all(&p).map_err(|e| io("create", &p, e))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| io("chmod", &p, e))?;
            }
            std::fs::metadata(&p).map(|m| m.is_dir()).unwrap_or(false)
        }
        "FileOrCreate" => {
            if ft.is_none() {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .map_err(|e| io("create", &p, e))?;
            }
            std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false)
        }
        "Directory" => ft.is_some_and(|t| t.is_dir()),
        "File" => ft.is_some_and(|t| t.is_file()),
        "Socket" => ft.is_some_and(|t| t.is_socket()),
        "CharDevice" => ft.is_some_and(|t| t.is_char_device()),
        "BlockDevice" => ft.is_some_and(|t| t.is_block_device()),
        other => return Err(format!("unknown hostPath type {other:?}")),
    };
    if !ok {
        return Err(format!(
            "hostPath type check failed: {path} is not a {kind}"
        ));
    }
    Ok(p)
}

/// The bind mounts of one container from its volumeMounts.
pub fn mounts(c: &Container, vols: &HashMap<String, Prepared>) -> Result<Vec<BindMount>, String> {
    let mut out = Vec::new();
    for vm in &c.volume_mounts {
        let v = vols.get(&vm.name).ok_or_else(|| {
            format!(
                "volumeMounts: volume {:?} is not a volume of the pod",
                vm.name
            )
        })?;
        let source = if vm.sub_path.is_empty() {
            v.path.clone()
        } else {
            let p = v.path.join(safe_relative(&vm.sub_path)?);
            if !p.exists() && !v.readonly {
                std::fs::create_dir_all(&p).map_err(|e| io("create subPath", &p, e))?;
            }
            // A symlink inside the volume must not lead out of it.
            let real = p.canonicalize().map_err(|e| io("subPath", &p, e))?;
            let root = v
                .path
                .canonicalize()
                .map_err(|e| io("volume", &v.path, e))?;
            if !real.starts_with(&root) {
                return Err(format!("subPath {:?} leaves the volume", vm.sub_path));
            }
            real
        };
        out.push(BindMount {
            source,
            destination: vm.mount_path.clone(),
            readonly: vm.read_only || v.readonly,
        });
    }
    Ok(out)
}

/// Unmounts what the pod mounted under its directory (memory emptyDirs) and removes it.
pub fn remove_pod_dir(pod_dir: &Path) {
    for m in flotilla_runtime::rootfs::mounts_under(pod_dir) {
        if let Err(e) = flotilla_runtime::rootfs::unmount(Path::new(&m)) {
            tracing::warn!(mount = %m, "cannot unmount: {e}");
            return;
        }
    }
    if pod_dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(pod_dir) {
            tracing::warn!(dir = %pod_dir.display(), "cannot remove the pod's directory: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::pb::api::{
        ConfigMap, ConfigMapEnvSource, ConfigMapKeySelector, ConfigMapVolumeSource,
        EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector, ObjectMeta,
        Pod, Secret, SecretKeySelector, SecretVolumeSource, VolumeMount,
    };

    fn cm(name: &str, data: &[(&str, &str)]) -> Object {
        Object {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "ns".into(),
                ..Default::default()
            }),
            body: Some(Body::ConfigMap(ConfigMap {
                data: data
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            })),
        }
    }

    fn secret(name: &str, data: &[(&str, &str)]) -> Object {
        Object {
            api_version: "v1".into(),
            kind: "Secret".into(),
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "ns".into(),
                ..Default::default()
            }),
            body: Some(Body::Secret(Secret {
                data: data
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
                ..Default::default()
            })),
        }
    }

    fn pod() -> Object {
        Object {
            api_version: "v1".into(),
            kind: "Pod".into(),
            metadata: Some(ObjectMeta {
                name: "web".into(),
                namespace: "ns".into(),
                uid: "u1".into(),
                labels: [("app".to_string(), "x".to_string())].into(),
                ..Default::default()
            }),
            body: Some(Body::Pod(Pod::default())),
        }
    }

    fn env(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.into(),
            value_from: None,
        }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let vars: HashMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$(A", &vars), "$(A");
        assert_eq!(expand("cost $5", &vars), "cost $5");
    }

    #[test]
    fn env_from_sources_then_env_with_refs() {
        let f = Fetched::new(vec![
            cm("cfg", &[("MODE", "fast"), ("bad=key", "x")]),
            secret("pw", &[("password", "hunter2")]),
        ]);
        let c = Container {
            env_from: vec![EnvFromSource {
                prefix: "CFG_".into(),
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "cfg".into(),
                    optional: None,
                }),
                secret_ref: None,
            }],
            env: vec![
                EnvVar {
                    name: "PASSWORD".into(),
                    value: String::new(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "pw".into(),
                            key: "password".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    }),
                },
                EnvVar {
                    name: "POD".into(),
                    value: String::new(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            api_version: "v1".into(),
                            field_path: "metadata.labels['app']".into(),
                        }),
                        ..Default::default()
                    }),
                },
                env("URL", "http://$(POD):$(CFG_MODE)"),
            ],
            ..Default::default()
        };
        let got = resolve_env(&pod(), &c, &f).unwrap();
        assert_eq!(
            got,
            vec![
                ("CFG_MODE".to_string(), "fast".to_string()),
                ("PASSWORD".to_string(), "hunter2".to_string()),
                ("POD".to_string(), "x".to_string()),
                ("URL".to_string(), "http://x:fast".to_string()),
            ]
        );
    }

    #[test]
    fn missing_references_fail_unless_optional() {
        let f = Fetched::new(vec![cm("cfg", &[("a", "1")])]);
        let mk = |name: &str, key: &str, optional: Option<bool>| Container {
            env: vec![EnvVar {
                name: "X".into(),
                value: String::new(),
                value_from: Some(EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: name.into(),
                        key: key.into(),
                        optional,
                    }),
                    ..Default::default()
                }),
            }],
            ..Default::default()
        };
        let e = resolve_env(&pod(), &mk("nope", "a", None), &f).unwrap_err();
        assert_eq!(e, "configmap \"nope\" not found");
        let e = resolve_env(&pod(), &mk("cfg", "b", None), &f).unwrap_err();
        assert_eq!(e, "couldn't find key b in ConfigMap ns/cfg");
        assert_eq!(
            resolve_env(&pod(), &mk("nope", "a", Some(true)), &f).unwrap(),
            vec![]
        );
    }

    #[test]
    fn volumes_are_projected_atomically_and_updated() {
        let dir = tempfile::tempdir().unwrap();
        let vols = vec![
            Volume {
                name: "cfg".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "cfg".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "pw".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: "pw".into(),
                    items: vec![KeyToPath {
                        key: "password".into(),
                        path: "creds/pass".into(),
                        mode: Some(0o400),
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "scratch".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            },
        ];
        let f = Fetched::new(vec![
            cm("cfg", &[("a.conf", "one"), ("b.conf", "two")]),
            secret("pw", &[("password", "hunter2")]),
        ]);
        let p = prepare(dir.path(), &vols, &f).unwrap();
        let cfg = &p["cfg"].path;
        assert_eq!(std::fs::read_to_string(cfg.join("a.conf")).unwrap(), "one");
        assert!(std::fs::symlink_metadata(cfg.join("a.conf"))
            .unwrap()
            .file_type()
            .is_symlink());
        let pass = p["pw"].path.join("creds/pass");
        assert_eq!(std::fs::read_to_string(&pass).unwrap(), "hunter2");
        let mode = std::fs::metadata(&pass).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        assert!(p["pw"].readonly && !p["scratch"].readonly);

        // An update replaces the contents; a key that went away disappears.
        let f2 = Fetched::new(vec![
            cm("cfg", &[("a.conf", "uno")]),
            secret("pw", &[("password", "hunter2")]),
        ]);
        prepare(dir.path(), &vols, &f2).unwrap();
        assert_eq!(std::fs::read_to_string(cfg.join("a.conf")).unwrap(), "uno");
        assert!(!cfg.join("b.conf").exists());
        let versions = std::fs::read_dir(cfg)
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                let n = n.to_string_lossy();
                n.starts_with("..") && n != "..data"
            })
            .count();
        assert_eq!(versions, 1, "old versions are removed");
        // Unchanged contents are not rewritten.
        let files = BTreeMap::from([(PathBuf::from("a.conf"), (b"uno".to_vec(), 0o644))]);
        assert!(!write_atomic(cfg, &files).unwrap());

        let missing = Fetched::new(vec![]);
        let e = prepare(dir.path(), &vols, &missing).unwrap_err();
        assert!(
            e.contains("volume \"cfg\"") && e.contains("configmap \"cfg\" not found"),
            "{e}"
        );

        let c = Container {
            volume_mounts: vec![
                VolumeMount {
                    name: "cfg".into(),
                    mount_path: "/etc/app".into(),
                    read_only: false,
                    sub_path: String::new(),
                },
                VolumeMount {
                    name: "scratch".into(),
                    mount_path: "/data".into(),
                    read_only: false,
                    sub_path: "sub".into(),
                },
            ],
            ..Default::default()
        };
        let m = mounts(&c, &p).unwrap();
        assert!(m[0].readonly, "configMap volumes are read-only");
        assert!(m[1].source.ends_with("scratch/sub") && !m[1].readonly);
        let bad = Container {
            volume_mounts: vec![VolumeMount {
                name: "scratch".into(),
                mount_path: "/x".into(),
                read_only: false,
                sub_path: "../../etc".into(),
            }],
            ..Default::default()
        };
        assert!(mounts(&bad, &p).unwrap_err().contains(".."));
        remove_pod_dir(dir.path());
        assert!(!dir.path().exists());
    }

    #[test]
    fn host_path_types_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("made");
        let ds = d.to_str().unwrap();
        assert!(host_path(ds, "Directory").is_err());
        assert_eq!(host_path(ds, "DirectoryOrCreate").unwrap(), d);
        assert!(host_path(ds, "Directory").is_ok());
        assert!(host_path(ds, "File").unwrap_err().contains("is not a File"));
        assert!(host_path("relative", "").is_err());
    }
}
