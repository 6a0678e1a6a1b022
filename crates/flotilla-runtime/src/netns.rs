//! Pod network namespaces: one per pod, kept alive by a bind mount at a path so every container
//! of the pod joins it (runc's `namespaces[].path`) and it outlives container restarts.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::path::Path;

use crate::error::{Result, RuntimeError};

/// Creates a new network namespace with `lo` up, bound at `path`.
pub fn create(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(RuntimeError::io("create netns directory", dir))?;
    }
    std::fs::File::create(path).map_err(RuntimeError::io("create netns file", path))?;
    let target = path.to_path_buf();
    // unshare changes only the calling thread: do it on a thread of its own that then ends.
    let res = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(RuntimeError::sys("unshare netns", &target))?;
        mount(
            Some(Path::new("/proc/thread-self/ns/net")),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(RuntimeError::sys("bind netns", &target))?;
        loopback_up().map_err(|source| RuntimeError::Io {
            op: "bring up lo in",
            path: target.clone(),
            source,
        })
    })
    .join()
    .unwrap_or_else(|_| {
        Err(RuntimeError::InvalidConfig(format!(
            "netns thread for {} panicked",
            path.display()
        )))
    });
    if res.is_err() {
        let _ = remove(path);
    }
    res
}

/// Unbinds and removes the namespace file; the namespace goes when its last process does.
pub fn remove(path: &Path) -> Result<()> {
    if crate::rootfs::is_mounted(path) {
        umount2(path, MntFlags::MNT_DETACH).map_err(RuntimeError::sys("unbind netns", path))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::io("remove netns file", path)(e)),
    }
}

fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq whose name is NUL-terminated; the fd is
    // closed on every path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        if rc == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}
