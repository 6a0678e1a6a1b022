//! Reads what the OCI runtime leaves in cgroups: whether a container was OOM-killed, and
//! whether any cgroup of a pod is left behind. runc creates and limits the cgroups; this module
//! handles both v1 (including hybrid hosts) and v2 layouts.

use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    /// One controller per hierarchy (also hybrid hosts with an unnamed v2 mount).
    V1,
    /// The unified hierarchy.
    V2,
}

pub fn mode() -> CgroupMode {
    if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
        CgroupMode::V2
    } else {
        CgroupMode::V1
    }
}

/// Every directory that `cgroups_path` (as given to runc) names on this host.
pub fn dirs(cgroups_path: &str) -> Vec<PathBuf> {
    let rel = cgroups_path.trim_start_matches('/');
    match mode() {
        CgroupMode::V2 => vec![Path::new(CGROUP_ROOT).join(rel)],
        CgroupMode::V1 => std::fs::read_dir(CGROUP_ROOT)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path().join(rel))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Those of [`dirs`] that exist.
pub fn existing(cgroups_path: &str) -> Vec<PathBuf> {
    dirs(cgroups_path)
        .into_iter()
        .filter(|p| p.is_dir())
        .collect()
}

/// Whether the kernel OOM-killed a process in this cgroup (read before the runtime deletes it).
pub fn oom_killed(cgroups_path: &str) -> bool {
    let rel = cgroups_path.trim_start_matches('/');
    let file = match mode() {
        CgroupMode::V2 => Path::new(CGROUP_ROOT).join(rel).join("memory.events"),
        CgroupMode::V1 => Path::new(CGROUP_ROOT)
            .join("memory")
            .join(rel)
            .join("memory.oom_control"),
    };
    std::fs::read_to_string(file)
        .map(|s| parse_oom_kill(&s) > 0)
        .unwrap_or(false)
}

fn parse_oom_kill(s: &str) -> u64 {
    s.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|n| n.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

/// Removes the (empty) cgroup directories of `cgroups_path` in every hierarchy; the kernel
/// refuses to remove one that still has processes, which is reported.
pub fn remove(cgroups_path: &str) -> Result<(), String> {
    let mut errors = Vec::new();
    for d in existing(cgroups_path) {
        if let Err(e) = remove_tree(&d) {
            errors.push(format!("{}: {e}", d.display()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Cgroup directories are removed bottom-up with rmdir (their files are virtual).
fn remove_tree(d: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(d)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        }
    }
    std::fs::remove_dir(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_counter() {
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            2
        );
        assert_eq!(
            parse_oom_kill("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            1
        );
        assert_eq!(parse_oom_kill("oom_kill_disable 0\n"), 0);
    }
}
