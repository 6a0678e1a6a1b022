//! Container root filesystems: the image's unpacked layers as overlayfs lower directories and
//! a per-container upper directory, so layers are shared and never written.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::path::{Path, PathBuf};

use crate::error::{Result, RuntimeError};

/// The kernel copies at most one page of mount options.
const MAX_MOUNT_OPTIONS_BYTES: usize = 4000;

/// Mounts `lower` (bottom layer first) under `upper`/`work` at `target`.
pub fn mount_overlay(lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    if lower.is_empty() {
        return Err(RuntimeError::InvalidConfig(
            "an image with no layers".into(),
        ));
    }
    // overlayfs lists the top layer first.
    let lowerdir = lower
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let opts = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    if opts.len() > MAX_MOUNT_OPTIONS_BYTES || opts.contains(',') && lowerdir.contains(',') {
        return Err(RuntimeError::InvalidConfig(format!(
            "overlay options for {} are {} bytes (limit {MAX_MOUNT_OPTIONS_BYTES}) or contain a comma",
            target.display(),
            opts.len()
        )));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(RuntimeError::sys("mount overlay", target))
}

/// Unmounts `target` if it is mounted (lazily, so a process still inside cannot block removal).
pub fn unmount(target: &Path) -> Result<()> {
    if !is_mounted(target) {
        return Ok(());
    }
    umount2(target, MntFlags::MNT_DETACH).map_err(RuntimeError::sys("unmount", target))
}

/// Whether `target` is a mount point, from /proc/self/mountinfo.
pub fn is_mounted(target: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = target.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want)
}

/// Mount points at or under `prefix`; tests use it to prove nothing is left behind.
pub fn mounts_under(prefix: &Path) -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let p = prefix.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| m.starts_with(&p))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }
}
