//! The per-container shim (conmon's role). The agent starts one per container; it runs
//! `runtime create`, becomes the subreaper that the container's init is reparented to, copies
//! the container's stdout and stderr into a rotated log file in the CRI format
//! (`<RFC 3339 time> <stream> <F|P> <text>`), and writes the exit status (`exit.pb`) when init
//! ends. It outlives agent restarts, so an agent that comes back finds its containers running,
//! their logs still flowing and their exit codes recorded.
//!
//! Handshake: the shim prints one line on stdout, `ok <pid>` or `error: <message>`, then
//! detaches from the caller's stdio.

use flotilla_api::pb::node::ContainerExit;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use prost::Message;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::error::{Result, RuntimeError};
use crate::image::{now_ms, write_atomic};

/// Lines longer than this are split into partial (`P`) records, as the CRI does.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// How long the shim waits for the log pipes to drain after init exits.
const LOG_DRAIN_MS: u64 = 5_000;

pub const EXIT_FILE: &str = "exit.pb";
pub const PID_FILE: &str = "init.pid";
pub const RUNTIME_LOG: &str = "runtime.log";

#[derive(Clone, Debug)]
pub struct ShimArgs {
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub log_path: PathBuf,
    pub max_log_bytes: u64,
    pub max_log_files: u32,
}

impl ShimArgs {
    /// The shim's command-line arguments (after the program's own subcommand).
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--runtime".into(),
            self.runtime.display().to_string(),
            "--runtime-root".into(),
            self.runtime_root.display().to_string(),
            "--id".into(),
            self.id.clone(),
            "--bundle".into(),
            self.bundle.display().to_string(),
            "--log".into(),
            self.log_path.display().to_string(),
            "--max-log-bytes".into(),
            self.max_log_bytes.to_string(),
            "--max-log-files".into(),
            self.max_log_files.to_string(),
        ]
    }
}

/// Runs the shim; returns the process exit code.
pub fn run(args: &ShimArgs) -> i32 {
    match create(args) {
        Ok((pid, out_r, err_r)) => {
            println!("ok {pid}");
            let _ = std::io::stdout().flush();
            detach_stdio();
            supervise(args, pid, out_r, err_r);
            0
        }
        Err(e) => {
            println!("error: {e}");
            let _ = std::io::stdout().flush();
            1
        }
    }
}

fn create(a: &ShimArgs) -> Result<(i32, OwnedFd, OwnedFd)> {
    // The container's init is reparented to us when `runtime create` exits.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(RuntimeError::Shim {
            id: a.id.clone(),
            message: format!(
                "PR_SET_CHILD_SUBREAPER: {}",
                std::io::Error::last_os_error()
            ),
        });
    }
    let (out_r, out_w) = nix::unistd::pipe().map_err(RuntimeError::sys("pipe", &a.bundle))?;
    let (err_r, err_w) = nix::unistd::pipe().map_err(RuntimeError::sys("pipe", &a.bundle))?;
    let runtime_log = a.bundle.join(RUNTIME_LOG);
    let pid_file = a.bundle.join(PID_FILE);
    let status = Command::new(&a.runtime)
        .arg("--root")
        .arg(&a.runtime_root)
        .arg("--log")
        .arg(&runtime_log)
        .args(["--log-format", "json", "create", "--bundle"])
        .arg(&a.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&a.id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .status()
        .map_err(|e| RuntimeError::Shim {
            id: a.id.clone(),
            message: format!("cannot run {}: {e}", a.runtime.display()),
        })?;
    if !status.success() {
        let log = fs::read_to_string(&runtime_log).unwrap_or_default();
        let message = crate::runc::last_log_error(&log)
            .unwrap_or_else(|| format!("{} create exited with {status}", a.runtime.display()));
        return Err(RuntimeError::Runtime {
            runtime: a.runtime.display().to_string(),
            command: "create".into(),
            id: a.id.clone(),
            message,
        });
    }
    let pid = fs::read_to_string(&pid_file)
        .map_err(RuntimeError::io("read pid file", &pid_file))?
        .trim()
        .parse::<i32>()
        .map_err(|e| RuntimeError::Shim {
            id: a.id.clone(),
            message: format!("bad pid file {}: {e}", pid_file.display()),
        })?;
    Ok((pid, out_r, err_r))
}

fn detach_stdio() {
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto the standard descriptors; `null` stays open until after the calls.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
}

fn supervise(a: &ShimArgs, pid: i32, out_r: OwnedFd, err_r: OwnedFd) {
    let started = now_ms();
    let writer = Arc::new(Mutex::new(LogWriter::open(
        &a.log_path,
        a.max_log_bytes,
        a.max_log_files,
    )));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let mut copiers = Vec::new();
    for (fd, stream) in [(out_r, "stdout"), (err_r, "stderr")] {
        let w = writer.clone();
        let tx = done_tx.clone();
        copiers.push(std::thread::spawn(move || {
            copy_stream(File::from(fd), stream, &w);
            let _ = tx.send(());
        }));
    }
    drop(done_tx);
    let mut exit = ContainerExit {
        started_unix_ms: started,
        ..Default::default()
    };
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => {
                exit.exit_code = code;
                break;
            }
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == pid => {
                exit.signal = sig as i32;
                exit.exit_code = 128 + sig as i32;
                break;
            }
            Ok(_) => continue, // another reparented process
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => {
                // No children left without seeing init: it was reaped elsewhere.
                exit.exit_code = 255;
                break;
            }
        }
    }
    exit.finished_unix_ms = now_ms();
    // Drain what the container wrote before it ended (bounded: a leaked pipe must not hang us).
    let deadline = std::time::Instant::now() + Duration::from_millis(LOG_DRAIN_MS);
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let _ = write_atomic(&a.bundle.join(EXIT_FILE), &exit.encode_to_vec());
}

/// Reads the exit record a shim wrote, if any.
pub fn read_exit(bundle: &Path) -> Result<Option<ContainerExit>> {
    let path = bundle.join(EXIT_FILE);
    match fs::read(&path) {
        Ok(b) => {
            ContainerExit::decode(b.as_slice())
                .map(Some)
                .map_err(|e| RuntimeError::CorruptRecord {
                    path,
                    reason: e.to_string(),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::io("read exit record", &path)(e)),
    }
}

fn copy_stream(mut src: File, stream: &str, w: &Mutex<LogWriter>) {
    let mut buf = vec![0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        loop {
            let window = &pending[..pending.len().min(MAX_LINE_BYTES)];
            if let Some(pos) = window.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                write_record(w, stream, 'F', &line[..line.len() - 1]);
            } else if pending.len() >= MAX_LINE_BYTES {
                let part: Vec<u8> = pending.drain(..MAX_LINE_BYTES).collect();
                write_record(w, stream, 'P', &part);
            } else {
                break;
            }
        }
    }
    if !pending.is_empty() {
        write_record(w, stream, 'F', &pending);
    }
}

fn write_record(w: &Mutex<LogWriter>, stream: &str, tag: char, text: &[u8]) {
    let ts = humantime::format_rfc3339_nanos(SystemTime::now());
    let mut rec = format!("{ts} {stream} {tag} ").into_bytes();
    rec.extend_from_slice(text);
    rec.push(b'\n');
    if let Ok(mut w) = w.lock() {
        w.write(&rec);
    }
}

/// An append-only log file rotated by size: `log`, `log.1` (newest old) ... `log.N`.
struct LogWriter {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    max_files: u32,
}

impl LogWriter {
    fn open(path: &Path, max_bytes: u64, max_files: u32) -> Self {
        let file = OpenOptions::new().create(true).append(true).open(path).ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes: max_bytes.max(1024),
            max_files: max_files.max(1),
        }
    }

    fn write(&mut self, rec: &[u8]) {
        if self.size > 0 && self.size + rec.len() as u64 > self.max_bytes {
            self.rotate();
        }
        if let Some(f) = self.file.as_mut() {
            if f.write_all(rec).is_ok() {
                self.size += rec.len() as u64;
            }
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        let _ = fs::remove_file(name(self.max_files));
        for i in (1..self.max_files).rev() {
            let _ = fs::rename(name(i), name(i + 1));
        }
        let _ = fs::rename(&self.path, name(1));
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.size = 0;
    }
}

/// The log files of a container, oldest first (what `logs` reads).
pub fn log_files(path: &Path, max_files: u32) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..=max_files)
        .rev()
        .map(|i| PathBuf::from(format!("{}.{i}", path.display())))
        .filter(|p| p.exists())
        .collect();
    if path.exists() {
        out.push(path.to_path_buf());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        let mut w = LogWriter::open(&p, 1024, 2);
        for i in 0..100 {
            w.write(format!("{i:0>99}\n").as_bytes());
        }
        let files = log_files(&p, 2);
        assert_eq!(files.len(), 3);
        assert!(!PathBuf::from(format!("{}.3", p.display())).exists());
        let last = fs::read_to_string(files.last().unwrap()).unwrap();
        assert!(last.ends_with(&format!("{:0>99}\n", 99)));
        for f in &files {
            assert!(fs::metadata(f).unwrap().len() <= 1024);
        }
    }

    #[test]
    fn lines_become_cri_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        let w = Mutex::new(LogWriter::open(&p, 1 << 20, 1));
        let src = dir.path().join("src");
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        fs::write(&src, format!("one\ntwo\n{long}\ntail")).unwrap();
        copy_stream(File::open(&src).unwrap(), "stdout", &w);
        let text = fs::read_to_string(&p).unwrap();
        let recs: Vec<Vec<&str>> = text.lines().map(|l| l.splitn(4, ' ').collect()).collect();
        assert_eq!(recs.len(), 5);
        assert_eq!((recs[0][1], recs[0][2], recs[0][3]), ("stdout", "F", "one"));
        assert_eq!(recs[2][2], "P");
        assert_eq!(recs[3][3].len(), 10);
        assert_eq!(recs[4][3], "tail");
        assert!(humantime::parse_rfc3339(recs[0][0]).is_ok());
    }
}
