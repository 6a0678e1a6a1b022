//! Streams the server opens on the agent's connection: `logs` (from the CRI-format files the
//! container shims write, optionally following them) and `exec` (a command run in a container
//! through the runtime, its output streamed back with the exit code).

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use flotilla_api::pb::agent::{
    server_request, server_stream_frame, AgentError, AgentErrorCode, ContainerExecRequest,
    ContainerLogsRequest, ServerRequest, ServerStreamFrame,
};
use flotilla_api::pb::api::OutputChunk;
use flotilla_runtime::Containers;
use tokio::io::AsyncReadExt;

/// How often a followed log is polled for new lines.
const FOLLOW_POLL_MS: u64 = 250;
/// Bytes read from a log file per step.
const READ_CHUNK: usize = 64 * 1024;

type Send = quinn::SendStream;

async fn frame(send: &mut Send, f: server_stream_frame::Kind) -> bool {
    flotilla_quic::write_frame(send, &ServerStreamFrame { kind: Some(f) })
        .await
        .is_ok()
}

async fn fail(send: &mut Send, message: String) {
    let _ = frame(
        send,
        server_stream_frame::Kind::Error(AgentError {
            code: AgentErrorCode::Invalid as i32,
            message,
        }),
    )
    .await;
}

async fn out(send: &mut Send, stream: i32, data: Vec<u8>, exit_code: Option<i32>) -> bool {
    frame(
        send,
        server_stream_frame::Kind::Chunk(OutputChunk {
            stream,
            data,
            exit_code,
        }),
    )
    .await
}

/// Serves one server-opened stream.
pub async fn serve(containers: &Containers, mut send: Send, mut recv: quinn::RecvStream) {
    let req = match flotilla_quic::read_frame::<ServerRequest>(&mut recv).await {
        Ok(Some(r)) => r,
        _ => return,
    };
    match req.kind {
        Some(server_request::Kind::Logs(l)) => logs(containers, l, &mut send).await,
        Some(server_request::Kind::Exec(e)) => exec(containers, e, &mut send).await,
        None => fail(&mut send, "empty request".into()).await,
    }
    let _ = send.finish();
}

/// `<uid>_<container>_<n>` ids with logs, newest last.
fn instances(containers: &Containers, uid: &str, container: &str) -> Vec<(u32, String)> {
    let prefix = format!("{uid}_{container}_");
    let mut v: Vec<(u32, String)> = containers
        .logged_ids(&prefix)
        .into_iter()
        .filter_map(|id| {
            id.strip_prefix(&prefix)
                .and_then(|n| n.parse().ok())
                .map(|n| (n, id.clone()))
        })
        .collect();
    v.sort();
    v
}

/// The text of CRI log records: `<time> <stream> <F|P> <text>`; P (partial) adds no newline.
pub fn cri_text(records: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len());
    for line in records.split(|&b| b == b'\n') {
        let mut parts = line.splitn(4, |&b| b == b' ');
        let (Some(_ts), Some(_stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        out.extend_from_slice(parts.next().unwrap_or_default());
        if tag != b"P" {
            out.push(b'\n');
        }
    }
    out
}

async fn logs(containers: &Containers, r: ContainerLogsRequest, send: &mut Send) {
    let inst = instances(containers, &r.pod_uid, &r.container);
    let chosen = if r.previous {
        if inst.len() < 2 {
            return fail(
                send,
                format!("previous terminated container {:?} not found", r.container),
            )
            .await;
        }
        inst[inst.len() - 2].1.clone()
    } else {
        match inst.last() {
            Some((_, id)) => id.clone(),
            None => {
                return fail(
                    send,
                    format!("container {:?} has no logs on this node yet", r.container),
                )
                .await
            }
        }
    };
    let files: Vec<PathBuf> = containers.log_files(&chosen);
    // Whole records, oldest first; the tail is cut on whole lines.
    let mut all = Vec::new();
    for f in &files {
        if let Ok(b) = std::fs::read(f) {
            all.extend_from_slice(&b);
        }
    }
    let mut end_offset = files
        .last()
        .and_then(|f| std::fs::metadata(f).ok())
        .map_or(0, |m| m.len());
    let mut text = cri_text(&all);
    if let Some(n) = r.tail_lines {
        let n = n.max(0) as usize;
        let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
        text = lines[lines.len().saturating_sub(n)..].concat();
    }
    for chunk in text.chunks(READ_CHUNK) {
        if !out(send, 1, chunk.to_vec(), None).await {
            return;
        }
    }
    if !r.follow || r.previous {
        return;
    }
    let path = containers.log_path(&chosen);
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let running = containers
            .status(&chosen)
            .await
            .map(|s| s.exit.is_none() && s.status != "unknown")
            .unwrap_or(false);
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        if len < end_offset {
            end_offset = 0; // rotated: the live file starts again
        }
        let mut got = Vec::new();
        if len > end_offset {
            if let Ok(mut f) = std::fs::File::open(&path) {
                if f.seek(SeekFrom::Start(end_offset)).is_ok() {
                    let mut buf = vec![0u8; READ_CHUNK];
                    while let Ok(n) = f.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                        end_offset += n as u64;
                    }
                }
            }
        }
        if !got.is_empty() {
            carry.extend_from_slice(&got);
            // Only whole records; the rest waits for its newline.
            if let Some(pos) = carry.iter().rposition(|&b| b == b'\n') {
                let whole: Vec<u8> = carry.drain(..=pos).collect();
                if !out(send, 1, cri_text(&whole), None).await {
                    return;
                }
            }
        } else if !running {
            return;
        }
        tokio::select! {
            _ = send.stopped() => return,
            _ = tokio::time::sleep(Duration::from_millis(FOLLOW_POLL_MS)) => {}
        }
    }
}

async fn exec(containers: &Containers, r: ContainerExecRequest, send: &mut Send) {
    let inst = instances(containers, &r.pod_uid, &r.container);
    let Some((_, id)) = inst.last().cloned() else {
        return fail(
            send,
            format!("container {:?} is not running on this node", r.container),
        )
        .await;
    };
    match containers.status(&id).await {
        Ok(s) if s.status == "running" => {}
        _ => return fail(send, format!("container {:?} is not running", r.container)).await,
    }
    let mut cmd = match containers.exec_command(&id, &r.command) {
        Ok(c) => c,
        Err(e) => return fail(send, e.to_string()).await,
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(send, format!("cannot run the runtime: {e}")).await,
    };
    let (Some(mut so), Some(mut se)) = (child.stdout.take(), child.stderr.take()) else {
        return fail(send, "no output pipes".into()).await;
    };
    let (mut bo, mut be) = (vec![0u8; READ_CHUNK], vec![0u8; READ_CHUNK]);
    let (mut o_open, mut e_open) = (true, true);
    while o_open || e_open {
        tokio::select! {
            n = so.read(&mut bo), if o_open => match n {
                Ok(0) | Err(_) => o_open = false,
                Ok(n) => if !out(send, 1, bo[..n].to_vec(), None).await { return },
            },
            n = se.read(&mut be), if e_open => match n {
                Ok(0) | Err(_) => e_open = false,
                Ok(n) => if !out(send, 2, be[..n].to_vec(), None).await { return },
            },
            _ = send.stopped() => return,
        }
    }
    let code = match child.wait().await {
        Ok(st) => st.code().unwrap_or(128 + 9),
        Err(_) => 255,
    };
    let _ = out(send, 1, Vec::new(), Some(code)).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn cri_records_become_text() {
        let rec = b"2026-01-01T00:00:00Z stdout F hello\n2026-01-01T00:00:00Z stderr P par\n2026-01-01T00:00:00Z stderr F tial\n";
        assert_eq!(super::cri_text(rec), b"hello\npartial\n");
    }
}
