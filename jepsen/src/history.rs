//! The history of a run: every client operation with its call and return time, and every
//! nemesis operation. Written as JSON lines; the checkers read only this.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// How an operation ended, in Jepsen's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It took effect (a write) or observed the value (a read).
    Ok,
    /// It certainly did not take effect.
    Fail,
    /// Unknown: it may or may not have taken effect (timeout, lost connection, crash).
    Info,
}

/// One client operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op {
    pub process: u32,
    /// What was asked: `read`, `write`, `cas`, `add`.
    pub f: String,
    pub key: String,
    /// The argument (`write`: the value; `cas`: [from, to]; `add`: the element).
    pub value: serde_json::Value,
    pub outcome: Outcome,
    /// What came back: the value read.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub result: serde_json::Value,
    /// The server the client was bound to.
    pub node: u64,
    pub call_ns: i64,
    pub return_ns: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// A nemesis operation's status, recorded as the issue asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultStatus {
    Installed,
    Skipped,
    Indeterminate,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fault {
    pub nemesis: String,
    /// `start` or `stop` (healing).
    pub action: String,
    pub targets: Vec<u64>,
    pub status: FaultStatus,
    pub detail: String,
    pub time_ns: i64,
}

/// The shared recorder: a clock that starts with the run and the two histories.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<Recorded>>,
}

#[derive(Default)]
pub struct Recorded {
    pub ops: Vec<Op>,
    pub faults: Vec<Fault>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(Recorded::default())),
        }
    }

    pub fn now_ns(&self) -> i64 {
        self.start.elapsed().as_nanos() as i64
    }

    pub fn op(&self, op: Op) {
        if let Ok(mut g) = self.inner.lock() {
            g.ops.push(op);
        }
    }

    pub fn fault(
        &self,
        nemesis: &str,
        action: &str,
        targets: Vec<u64>,
        status: FaultStatus,
        detail: impl Into<String>,
    ) {
        let f = Fault {
            nemesis: nemesis.to_string(),
            action: action.to_string(),
            targets,
            status,
            detail: detail.into(),
            time_ns: self.now_ns(),
        };
        if let Ok(mut g) = self.inner.lock() {
            g.faults.push(f);
        }
    }

    /// Everything recorded, operations in the order they returned.
    pub fn take(&self) -> Recorded {
        match self.inner.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(_) => Recorded::default(),
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// Write `items` as JSON lines.
pub fn write_jsonl<T: Serialize>(path: &std::path::Path, items: &[T]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in items {
        serde_json::to_writer(&mut f, i)?;
        f.write_all(b"\n")?;
    }
    f.flush()
}
