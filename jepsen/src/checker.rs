//! Checkers: pure functions from a recorded history to a verdict. No I/O here except writing
//! porcupine's explanation page when a register history is not linearizable.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use porcupine_rs::{CheckResult, Model, Operation};
use serde::Serialize;

use crate::history::{Op, Outcome};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    Valid,
    Unknown,
    Invalid,
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    pub valid: Validity,
    pub checker: String,
    /// What the checker found, as JSON (counts, lost elements, the first anomalies).
    pub details: serde_json::Value,
}

// ---------------------------------------------------------------------------------------------
// Register: read / write / compare-and-set, linearizable per key.

/// A compare-and-set register whose value starts at 0. Values written are unique in a run, so a
/// failed compare-and-set means the value differed at some point of the call.
#[derive(Clone, Debug)]
pub struct CasRegister;

#[derive(Clone, Debug)]
pub enum RegisterOp {
    /// A read that returned this value.
    Read(u64),
    /// A write; `Info` writes may or may not have happened.
    Write(u64),
    Cas {
        from: u64,
        to: u64,
        outcome: Outcome,
    },
}

#[derive(Clone, Debug)]
pub struct Keyed {
    pub key: String,
    pub op: RegisterOp,
}

impl Model for CasRegister {
    type State = u64;
    type Op = Keyed;
    type Metadata = ();

    fn partition_operations(history: &[Operation<Self>]) -> Vec<Vec<Operation<Self>>> {
        let mut by_key: BTreeMap<&str, Vec<Operation<Self>>> = BTreeMap::new();
        for o in history {
            by_key.entry(o.op.key.as_str()).or_default().push(o.clone());
        }
        by_key.into_values().collect()
    }

    fn init() -> u64 {
        0
    }

    fn step(state: &u64, op: &Keyed) -> (bool, u64) {
        match &op.op {
            RegisterOp::Read(v) => (v == state, *state),
            RegisterOp::Write(v) => (true, *v),
            RegisterOp::Cas { from, to, outcome } => match outcome {
                Outcome::Ok => (from == state, *to),
                Outcome::Fail => (from != state, *state),
                // Unknown: if it took effect, it did so while the value was `from`.
                Outcome::Info => {
                    if from == state {
                        (true, *to)
                    } else {
                        (true, *state)
                    }
                }
            },
        }
    }

    fn describe_operation(op: &Keyed) -> String {
        match &op.op {
            RegisterOp::Read(v) => format!("{} read -> {v}", op.key),
            RegisterOp::Write(v) => format!("{} write {v}", op.key),
            RegisterOp::Cas { from, to, outcome } => {
                format!("{} cas {from}->{to} {outcome:?}", op.key)
            }
        }
    }
}

/// The porcupine history of a register run. Reads that did not succeed change nothing and are
/// left out; writes that may have happened stay pending to the end of the history.
pub fn register_history(ops: &[Op]) -> Result<Vec<Operation<CasRegister>>, String> {
    let end = ops.iter().map(|o| o.return_ns).max().unwrap_or(0) + 1;
    let mut out = Vec::new();
    for o in ops {
        let num = |v: &serde_json::Value| {
            v.as_u64()
                .ok_or_else(|| format!("op {} {}: value {v} is not a number", o.f, o.key))
        };
        let op = match (o.f.as_str(), o.outcome) {
            ("read", Outcome::Ok) => RegisterOp::Read(num(&o.result)?),
            ("read", _) => continue,
            ("write", Outcome::Fail) => continue,
            ("write", _) => RegisterOp::Write(num(&o.value)?),
            // Failed at its read: a read of that value, or nothing at all.
            ("cas", Outcome::Fail) if o.result.get("read").is_some() => {
                RegisterOp::Read(num(&o.result["read"])?)
            }
            ("cas", Outcome::Fail)
                if o.result.as_str() == Some(crate::workload::CAS_NOT_ATTEMPTED) =>
            {
                continue
            }
            ("cas", outcome) => {
                let pair = o
                    .value
                    .as_array()
                    .filter(|a| a.len() == 2)
                    .ok_or_else(|| format!("cas on {}: value is not [from, to]", o.key))?;
                RegisterOp::Cas {
                    from: num(&pair[0])?,
                    to: num(&pair[1])?,
                    outcome,
                }
            }
            (f, _) => return Err(format!("unknown register op {f:?}")),
        };
        out.push(Operation {
            client_id: Some(o.process),
            call_time: o.call_ns,
            return_time: if o.outcome == Outcome::Info {
                end
            } else {
                o.return_ns
            },
            op: Keyed {
                key: o.key.clone(),
                op,
            },
            metadata: None,
        });
    }
    Ok(out)
}

/// Check a register history for linearizability. On `Invalid` porcupine's page explaining the
/// longest linearizable prefix is written to `explain` if given.
pub fn check_register(ops: &[Op], timeout: Duration, explain: Option<&std::path::Path>) -> Verdict {
    let history = match register_history(ops) {
        Ok(h) => h,
        Err(e) => {
            return Verdict {
                valid: Validity::Invalid,
                checker: "linearizable-register".into(),
                details: serde_json::json!({ "malformed_history": e }),
            }
        }
    };
    let count = |pred: &dyn Fn(&Op) -> bool| ops.iter().filter(|o| pred(o)).count();
    // Without the explanation first: porcupine-rs 0.3 reports a search that ran out of time as
    // Illegal when asked for the explanation too (a killed partition counts as failed).
    let result = porcupine_rs::check_operations_timeout(&history, timeout);
    let valid = match result {
        CheckResult::Ok => Validity::Valid,
        CheckResult::Illegal => Validity::Invalid,
        CheckResult::Unknown => Validity::Unknown,
    };
    let mut page = None;
    if valid == Validity::Invalid {
        if let Some(p) = explain {
            let (_, info) = porcupine_rs::check_operations_info_timeout(&history, timeout);
            if porcupine_rs::visualize_path(&info, p).is_ok() {
                page = Some(p.display().to_string());
            }
        }
    }
    Verdict {
        valid,
        checker: "linearizable-register".into(),
        details: serde_json::json!({
            "operations_checked": history.len(),
            "ok": count(&|o| o.outcome == Outcome::Ok),
            "fail": count(&|o| o.outcome == Outcome::Fail),
            "info": count(&|o| o.outcome == Outcome::Info),
            "keys": history.iter().map(|o| o.op.key.clone()).collect::<BTreeSet<_>>(),
            "timeout_s": timeout.as_secs(),
            "explanation": page,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Set: unique adds, then a final read after healing.

/// What a final read of the set returned, per server (`stale` local reads) and linearizably.
#[derive(Debug, Default, Clone)]
pub struct FinalReads {
    pub linearizable: Option<BTreeSet<u64>>,
    pub per_node: BTreeMap<u64, BTreeSet<u64>>,
}

/// No acknowledged add may be missing from the final read; nothing that was never added may
/// appear; every server must hold the same set once the cluster has converged.
pub fn check_set(ops: &[Op], reads: &FinalReads) -> Verdict {
    let mut acked = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    let mut attempted = BTreeSet::new();
    for o in ops.iter().filter(|o| o.f == "add") {
        let Some(e) = o.value.as_u64() else { continue };
        attempted.insert(e);
        match o.outcome {
            Outcome::Ok => {
                acked.insert(e);
            }
            Outcome::Info => {
                unknown.insert(e);
            }
            Outcome::Fail => {}
        }
    }
    let Some(read) = &reads.linearizable else {
        return Verdict {
            valid: Validity::Unknown,
            checker: "set".into(),
            details: serde_json::json!({ "error": "no final read succeeded" }),
        };
    };
    let lost: Vec<u64> = acked.difference(read).copied().collect();
    let unexpected: Vec<u64> = read.difference(&attempted).copied().collect();
    let failed_but_present: Vec<u64> = read
        .iter()
        .filter(|e| attempted.contains(e) && !acked.contains(e) && !unknown.contains(e))
        .copied()
        .collect();
    let recovered = read.intersection(&unknown).count();
    let divergent: BTreeMap<u64, usize> = reads
        .per_node
        .iter()
        .filter(|(_, s)| *s != read)
        .map(|(n, s)| (*n, s.symmetric_difference(read).count()))
        .collect();
    let valid = if lost.is_empty()
        && unexpected.is_empty()
        && failed_but_present.is_empty()
        && divergent.is_empty()
    {
        Validity::Valid
    } else {
        Validity::Invalid
    };
    let first = |v: &[u64]| v.iter().take(20).copied().collect::<Vec<_>>();
    Verdict {
        valid,
        checker: "set".into(),
        details: serde_json::json!({
            "attempted": attempted.len(),
            "acknowledged": acked.len(),
            "unknown": unknown.len(),
            "unknown_present": recovered,
            "final_size": read.len(),
            "lost": lost.len(),
            "lost_first": first(&lost),
            "unexpected": unexpected.len(),
            "unexpected_first": first(&unexpected),
            "failed_but_present": first(&failed_but_present),
            "divergent_servers": divergent,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        p: u32,
        f: &str,
        value: serde_json::Value,
        result: serde_json::Value,
        outcome: Outcome,
        call: i64,
        ret: i64,
    ) -> Op {
        Op {
            process: p,
            f: f.into(),
            key: "k".into(),
            value,
            outcome,
            result,
            node: 1,
            call_ns: call,
            return_ns: ret,
            error: String::new(),
        }
    }

    use serde_json::{json, Value};

    #[test]
    fn register_accepts_a_linearizable_history() {
        let h = vec![
            op(0, "write", json!(1), Value::Null, Outcome::Ok, 0, 10),
            op(1, "read", Value::Null, json!(1), Outcome::Ok, 5, 20),
            op(2, "cas", json!([1, 2]), Value::Null, Outcome::Ok, 21, 30),
            op(0, "read", Value::Null, json!(2), Outcome::Ok, 31, 40),
        ];
        assert_eq!(
            check_register(&h, Duration::from_secs(5), None).valid,
            Validity::Valid
        );
    }

    #[test]
    fn register_rejects_a_stale_read() {
        // The write of 2 completed before the read began, yet the read saw 1.
        let h = vec![
            op(0, "write", json!(1), Value::Null, Outcome::Ok, 0, 10),
            op(0, "write", json!(2), Value::Null, Outcome::Ok, 11, 20),
            op(1, "read", Value::Null, json!(1), Outcome::Ok, 21, 30),
        ];
        assert_eq!(
            check_register(&h, Duration::from_secs(5), None).valid,
            Validity::Invalid
        );
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        let seen = vec![
            op(0, "write", json!(7), Value::Null, Outcome::Info, 0, 10),
            op(1, "read", Value::Null, json!(7), Outcome::Ok, 50, 60),
        ];
        assert_eq!(
            check_register(&seen, Duration::from_secs(5), None).valid,
            Validity::Valid
        );
        let unseen = vec![
            op(0, "write", json!(7), Value::Null, Outcome::Info, 0, 10),
            op(1, "read", Value::Null, json!(0), Outcome::Ok, 50, 60),
        ];
        assert_eq!(
            check_register(&unseen, Duration::from_secs(5), None).valid,
            Validity::Valid
        );
        // A failed write must not be seen.
        let failed = vec![
            op(0, "write", json!(7), Value::Null, Outcome::Fail, 0, 10),
            op(1, "read", Value::Null, json!(7), Outcome::Ok, 50, 60),
        ];
        assert_eq!(
            check_register(&failed, Duration::from_secs(5), None).valid,
            Validity::Invalid
        );
    }

    #[test]
    fn a_search_that_runs_out_of_time_is_unknown_not_invalid() {
        // Twenty unknown writes make the search long; a 1 ms budget cannot finish it. The
        // history is linearizable (none of the unknown writes happened before the read).
        let mut h = vec![op(0, "write", json!(1), Value::Null, Outcome::Ok, 0, 10)];
        for i in 0..20 {
            let t = 20 + 10 * i as i64;
            h.push(op(
                1,
                "write",
                json!(100 + i),
                Value::Null,
                Outcome::Info,
                t,
                t + 1,
            ));
        }
        h.push(op(
            2,
            "read",
            Value::Null,
            json!(1),
            Outcome::Ok,
            1000,
            1010,
        ));
        let v = check_register(&h, Duration::from_millis(1), None);
        assert_eq!(v.valid, Validity::Unknown, "{}", v.details);
    }

    #[test]
    fn a_cas_that_failed_at_its_read_is_that_read() {
        let seen_other = vec![
            op(0, "write", json!(1), Value::Null, Outcome::Ok, 0, 10),
            op(
                1,
                "cas",
                json!([5, 6]),
                json!({ "read": 1 }),
                Outcome::Fail,
                20,
                30,
            ),
        ];
        assert_eq!(
            check_register(&seen_other, Duration::from_secs(5), None).valid,
            Validity::Valid
        );
        let stale = vec![
            op(0, "write", json!(1), Value::Null, Outcome::Ok, 0, 10),
            op(
                1,
                "cas",
                json!([5, 6]),
                json!({ "read": 0 }),
                Outcome::Fail,
                20,
                30,
            ),
        ];
        assert_eq!(
            check_register(&stale, Duration::from_secs(5), None).valid,
            Validity::Invalid
        );
        let not_tried = vec![op(
            1,
            "cas",
            json!([5, 6]),
            json!(crate::workload::CAS_NOT_ATTEMPTED),
            Outcome::Fail,
            20,
            30,
        )];
        assert_eq!(
            check_register(&not_tried, Duration::from_secs(5), None).valid,
            Validity::Valid
        );
    }

    #[test]
    fn a_failed_cas_needs_another_value() {
        let h = vec![op(
            0,
            "cas",
            json!([0, 3]),
            Value::Null,
            Outcome::Fail,
            0,
            10,
        )];
        assert_eq!(
            check_register(&h, Duration::from_secs(5), None).valid,
            Validity::Invalid
        );
    }

    fn add(e: u64, outcome: Outcome) -> Op {
        op(0, "add", json!(e), Value::Null, outcome, 0, 1)
    }

    #[test]
    fn set_finds_lost_and_unexpected_elements() {
        let ops = vec![
            add(1, Outcome::Ok),
            add(2, Outcome::Ok),
            add(3, Outcome::Info),
            add(4, Outcome::Fail),
        ];
        let good = FinalReads {
            linearizable: Some([1, 2, 3].into()),
            per_node: [(1, [1, 2, 3].into())].into(),
        };
        assert_eq!(check_set(&ops, &good).valid, Validity::Valid);
        let lost = FinalReads {
            linearizable: Some([1].into()),
            per_node: BTreeMap::new(),
        };
        let v = check_set(&ops, &lost);
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(v.details["lost_first"], json!([2]));
        let failed_present = FinalReads {
            linearizable: Some([1, 2, 4].into()),
            per_node: BTreeMap::new(),
        };
        assert_eq!(check_set(&ops, &failed_present).valid, Validity::Invalid);
        let divergent = FinalReads {
            linearizable: Some([1, 2].into()),
            per_node: [(2, [1].into())].into(),
        };
        assert_eq!(check_set(&ops, &divergent).valid, Validity::Invalid);
        let none = FinalReads::default();
        assert_eq!(check_set(&ops, &none).valid, Validity::Unknown);
    }
}
