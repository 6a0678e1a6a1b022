//! The watch workload's watchers and its checker. Watchers follow the workload's objects from a
//! start revision, restart at random and resume from the last revision they saw on another
//! server. After the run the committed history is read back from every server and each
//! watcher's stream is compared with it, as etcd's watch guarantees ask: ordered, unique,
//! atomic (all events of a revision), reliable (exactly the committed history), resumable and
//! bookmarkable (progress never runs ahead of events still to come).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_api::pb::api::{object::Body, EventType, WatchEvent, WatchRequest};
use flotilla_api::ErrorCode;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use flotilla_api::resume::ResumePoint;

use crate::checker::{Validity, Verdict};
use crate::cluster::Clients;
use crate::history::{Op, Outcome};

pub const SELECTOR: &str = "flotilla-jepsen=watch";
/// Marks a history read refused because the server's history starts later (not a fault).
const COMPACTED: &str = "compacted";

/// One event as the checker compares it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Ev {
    pub revision: u64,
    /// ADDED, MODIFIED, DELETED.
    pub kind: String,
    pub key: String,
    pub value: Option<u64>,
}

/// A stretch of one watcher's stream: events after `from`, complete through `to` (events of a
/// later revision may follow, partly delivered). A compacted resume starts a new segment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Segment {
    pub from: u64,
    pub to: u64,
    pub events: Vec<Ev>,
    /// Bookmark revisions in arrival order, each with the number of events before it.
    pub bookmarks: Vec<(u64, usize)>,
    /// Servers this segment was read from, in order (resumes move between them).
    pub servers: Vec<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct WatcherLog {
    pub watcher: usize,
    pub segments: Vec<Segment>,
    pub resumes: usize,
    pub errors: Vec<String>,
}

pub fn to_ev(e: &WatchEvent) -> Option<Ev> {
    let kind = match EventType::try_from(e.r#type).ok()? {
        EventType::Added => "ADDED",
        EventType::Modified => "MODIFIED",
        EventType::Deleted => "DELETED",
        _ => return None,
    };
    let o = e.object.as_ref()?;
    let value = match &o.body {
        Some(Body::ConfigMap(cm)) => cm.data.get("value").and_then(|v| v.parse().ok()),
        _ => None,
    };
    Some(Ev {
        revision: e.revision,
        kind: kind.into(),
        key: o
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
        value,
    })
}

fn request(from: u64) -> WatchRequest {
    WatchRequest {
        kind: "ConfigMap".into(),
        namespace: "default".into(),
        label_selector: SELECTOR.into(),
        start_revision: from,
        name: String::new(),
        field_selector: String::new(),
    }
}

/// Follow the workload's objects from `from`, restarting at random, until `final_rev` names the
/// revision to catch up to (after healing), then until it is reached (bounded by `catch_up`).
#[allow(clippy::too_many_arguments)]
pub async fn watcher(
    id: usize,
    servers: Vec<u64>,
    clients: Clients,
    from: u64,
    final_rev: tokio::sync::watch::Receiver<Option<u64>>,
    catch_up: Duration,
    seed: u64,
) -> WatcherLog {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = WatcherLog {
        watcher: id,
        ..Default::default()
    };
    let mut seg = Segment {
        from,
        to: from,
        ..Default::default()
    };
    let mut server = servers[id % servers.len()];
    let mut pos = ResumePoint::at(from);
    let mut deadline: Option<tokio::time::Instant> = None;
    // Bounded: at most this many stream (re)starts.
    for _attempt in 0..10_000 {
        let target = *final_rev.borrow();
        if let Some(t) = target {
            if pos.complete_through() >= t {
                break;
            }
            let d = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + catch_up);
            if tokio::time::Instant::now() > d {
                log.errors
                    .push(format!("catch-up to revision {t} timed out at {}", seg.to));
                break;
            }
        }
        if seg.servers.last() != Some(&server) {
            seg.servers.push(server);
        }
        let mut resume = pos.resume();
        let stream = match tokio::time::timeout(Duration::from_secs(3), async {
            let mut c = clients.client(server).await?;
            c.watch(request(resume.start_revision)).await
        })
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if e.code() == ErrorCode::Compacted => {
                log.errors.push(format!("n{server}: {e}"));
                log.segments.push(std::mem::take(&mut seg));
                // Start again from now: the checker treats segments separately.
                seg = Segment::default();
                pos = ResumePoint::at(0);
                server = servers[rng.random_range(0..servers.len())];
                continue;
            }
            other => {
                if let Ok(Err(e)) = other {
                    log.errors.push(format!("n{server}: {e}"));
                }
                server = servers[rng.random_range(0..servers.len())];
                // Watchers go on after the workload stops, until the final catch-up.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // Read until a random restart, an error, or the end.
        let restart_after = rng.random_range(20..400usize);
        let mut n = 0usize;
        let mut stream = stream;
        loop {
            let next = tokio::select! {
                m = stream.next() => m,
                _ = tokio::time::sleep(Duration::from_secs(10)) => None,
            };
            match next {
                Some(Ok(ev)) => {
                    if ev.r#type == EventType::Bookmark as i32 {
                        if seg.from == 0 && seg.events.is_empty() && seg.bookmarks.is_empty() {
                            seg.from = ev.revision;
                        }
                        seg.bookmarks.push((ev.revision, seg.events.len()));
                        pos.bookmark(ev.revision);
                    } else if resume.already_delivered(ev.revision) {
                        continue;
                    } else if let Some(e) = to_ev(&ev) {
                        if seg.from == 0 && seg.events.is_empty() && seg.bookmarks.is_empty() {
                            // A segment started after compaction begins where its stream did.
                            seg.from = e.revision - 1;
                        }
                        pos.event(e.revision);
                        seg.events.push(e);
                        n += 1;
                    }
                    seg.to = pos.complete_through();
                    let target = *final_rev.borrow();
                    if target.is_some_and(|t| seg.to >= t) {
                        break;
                    }
                    if n >= restart_after && target.is_none() {
                        log.resumes += 1;
                        server = servers[rng.random_range(0..servers.len())];
                        break;
                    }
                }
                Some(Err(s)) => {
                    log.errors
                        .push(format!("n{server}: stream: {}", s.message()));
                    server = servers[rng.random_range(0..servers.len())];
                    break;
                }
                None => {
                    server = servers[rng.random_range(0..servers.len())];
                    break;
                }
            }
        }
    }
    log.segments.push(seg);
    log
}

/// The committed history of the workload's objects after `from` up to `to`, read with a fresh
/// watch from one server.
pub async fn read_history(
    clients: &Clients,
    server: u64,
    from: u64,
    to: u64,
) -> Result<Vec<Ev>, String> {
    let events = read_events(clients, server, request(from), to).await?;
    Ok(events.iter().filter_map(to_ev).collect())
}

/// Every event `req` matches through revision `to`, read with a fresh watch from one server
/// (bounded: 60 s). Err starting with `compacted` when the server's history starts later.
pub async fn read_events(
    clients: &Clients,
    server: u64,
    req: WatchRequest,
    to: u64,
) -> Result<Vec<WatchEvent>, String> {
    let mut c = clients.client(server).await.map_err(|e| e.to_string())?;
    let mut s = match c.watch(req).await {
        Ok(s) => s,
        // A server that restarted from, or was sent, a snapshot holds history only from it.
        Err(e) if e.code() == ErrorCode::Compacted => return Err(format!("{COMPACTED}: {e}")),
        Err(e) => return Err(e.to_string()),
    };
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = tokio::time::timeout_at(deadline, s.next())
            .await
            .map_err(|_| {
                format!("n{server}: no event or bookmark reached revision {to} within 60 s")
            })?;
        match m {
            Some(Ok(ev)) => {
                if ev.revision > to {
                    return Ok(out);
                }
                let done = ev.revision == to && ev.r#type == EventType::Bookmark as i32;
                if ev.r#type != EventType::Bookmark as i32 {
                    out.push(ev);
                }
                if done {
                    return Ok(out);
                }
            }
            Some(Err(e)) => {
                let e = flotilla_api::ApiError::from_status(&e);
                if e.code() == ErrorCode::Compacted {
                    return Err(format!("{COMPACTED}: {e}"));
                }
                return Err(e.to_string());
            }
            None => return Err(format!("n{server}: stream ended before revision {to}")),
        }
    }
}

/// Compare each watcher with the reference history and with the acknowledged writes.
pub fn check(
    reference: &BTreeMap<u64, Result<Vec<Ev>, String>>,
    watchers: &[WatcherLog],
    ops: &[Op],
    final_rev: u64,
) -> Verdict {
    let mut anomalies: BTreeMap<&'static str, Vec<serde_json::Value>> = BTreeMap::new();
    let mut add = |kind: &'static str, v: serde_json::Value| {
        let e = anomalies.entry(kind).or_default();
        if e.len() < 20 {
            e.push(v);
        }
    };
    let mut unknown = Vec::new();
    // The servers must agree on the history.
    let histories: Vec<(&u64, &Vec<Ev>)> = reference
        .iter()
        .filter_map(|(n, r)| r.as_ref().ok().map(|h| (n, h)))
        .collect();
    let mut compacted = Vec::new();
    for (n, r) in reference {
        match r {
            Err(e) if e.starts_with(COMPACTED) => compacted.push(format!("n{n}: {e}")),
            Err(e) => unknown.push(format!("history from n{n}: {e}")),
            Ok(_) => {}
        }
    }
    let Some((_, reference_history)) = histories.first().copied() else {
        return Verdict {
            valid: Validity::Unknown,
            checker: "watch".into(),
            details: serde_json::json!({ "error": "no server returned the history", "why": unknown }),
        };
    };
    for (n, h) in &histories[1..] {
        if *h != reference_history {
            add(
                "servers_disagree",
                serde_json::json!({ "server": n, "first_difference": first_difference(reference_history, h) }),
            );
        }
    }
    // The reference itself is ordered with no duplicate event per (revision, key).
    let mut seen = BTreeSet::new();
    let mut last = 0;
    for e in reference_history {
        if e.revision < last {
            add("history_out_of_order", serde_json::json!(e));
        }
        last = e.revision;
        if !seen.insert((e.revision, e.key.clone())) {
            add("history_duplicate", serde_json::json!(e));
        }
    }
    // Every acknowledged write is in the history at the revision it was acknowledged with.
    let by_rev_key: BTreeMap<(u64, &str), &Ev> = reference_history
        .iter()
        .map(|e| ((e.revision, e.key.as_str()), e))
        .collect();
    let mut acked = 0usize;
    let mut attempted_values = BTreeSet::new();
    for o in ops {
        for (key, value, rev) in acknowledged(o) {
            if let Some(v) = value {
                attempted_values.insert(v);
            }
            if o.outcome != Outcome::Ok {
                continue;
            }
            let Some(rev) = rev else { continue };
            acked += 1;
            match by_rev_key.get(&(rev, key.as_str())) {
                Some(e) if value.is_none() || e.value == value => {}
                Some(e) => add(
                    "acknowledged_write_differs",
                    serde_json::json!({ "op": o, "event": e }),
                ),
                None => add(
                    "acknowledged_write_missing",
                    serde_json::json!({ "op": o, "revision": rev }),
                ),
            }
        }
    }
    // Nothing in the history that nobody wrote.
    for e in reference_history {
        if e.kind != "DELETED" {
            if let Some(v) = e.value {
                if !attempted_values.contains(&v) {
                    add("history_has_unwritten_value", serde_json::json!(e));
                }
            }
        }
    }
    // Each watcher segment is exactly the history between its bounds.
    let mut events_checked = 0usize;
    let mut bookmarks = 0usize;
    for w in watchers {
        for (i, s) in w.segments.iter().enumerate() {
            let expect: Vec<&Ev> = reference_history
                .iter()
                .filter(|e| e.revision > s.from && e.revision <= s.to)
                .collect();
            // Events past `to` belong to a revision not yet complete when the segment ended.
            let got: Vec<&Ev> = s.events.iter().filter(|e| e.revision <= s.to).collect();
            events_checked += got.len();
            if got != expect {
                add(
                    "watch_differs_from_history",
                    serde_json::json!({
                        "watcher": w.watcher, "segment": i, "from": s.from, "to": s.to,
                        "servers": s.servers,
                        "first_difference": first_difference(
                            &expect.iter().map(|e| (*e).clone()).collect::<Vec<_>>(), &s.events),
                        "expected_events": expect.len(), "got_events": got.len(),
                    }),
                );
            }
            let mut prev = 0;
            for e in &s.events {
                if e.revision < prev {
                    add(
                        "watch_out_of_order",
                        serde_json::json!({ "watcher": w.watcher, "event": e }),
                    );
                }
                prev = e.revision;
            }
            // Bookmarkable: a bookmark at B promises nothing at or below B is still to come.
            let mut last_bm = 0;
            for (b, at) in &s.bookmarks {
                bookmarks += 1;
                if *b < last_bm {
                    add(
                        "bookmark_went_back",
                        serde_json::json!({ "watcher": w.watcher, "bookmark": b, "after": last_bm }),
                    );
                }
                last_bm = *b;
                if let Some(e) = s.events[*at..].iter().find(|e| e.revision <= *b) {
                    add(
                        "event_after_its_bookmark",
                        serde_json::json!({ "watcher": w.watcher, "bookmark": b, "event": e }),
                    );
                }
            }
        }
        if w.segments.last().is_some_and(|s| s.to < final_rev) {
            unknown.push(format!(
                "watcher {} did not reach revision {final_rev}",
                w.watcher
            ));
        }
    }
    let valid = if !anomalies.is_empty() {
        Validity::Invalid
    } else if !unknown.is_empty() {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    Verdict {
        valid,
        checker: "watch".into(),
        details: serde_json::json!({
            "history_events": reference_history.len(),
            "final_revision": final_rev,
            "servers_read": histories.len(),
            "servers_with_shorter_history": compacted,
            "acknowledged_writes": acked,
            "watchers": watchers.len(),
            "segments": watchers.iter().map(|w| w.segments.len()).sum::<usize>(),
            "resumes": watchers.iter().map(|w| w.resumes).sum::<usize>(),
            "watch_errors": watchers.iter().map(|w| w.errors.len()).sum::<usize>(),
            "events_checked": events_checked,
            "bookmarks": bookmarks,
            "anomalies": anomalies,
            "unknown": unknown,
        }),
    }
}

/// (key, value written, revision acknowledged) for each write an op made.
fn acknowledged(o: &Op) -> Vec<(String, Option<u64>, Option<u64>)> {
    match o.f.as_str() {
        "write" => vec![(o.key.clone(), o.value.as_u64(), o.result.as_u64())],
        "batch" => {
            // value: [[key, v], ...]; result: {revision, applied: [bool, ...]}.
            let pairs = o.value.as_array().cloned().unwrap_or_default();
            let rev = o.result["revision"].as_u64();
            pairs
                .iter()
                .enumerate()
                .map(|(i, kv)| {
                    let applied = o.result["applied"][i].as_bool().unwrap_or(false);
                    (
                        format!("jepsen-watch-{}", kv[0].as_u64().unwrap_or(0)),
                        kv[1].as_u64(),
                        rev.filter(|_| applied),
                    )
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

fn first_difference(a: &[Ev], b: &[Ev]) -> serde_json::Value {
    let i = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    serde_json::json!({ "index": i, "expected": a.get(i), "got": b.get(i) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(revision: u64, key: &str, value: u64) -> Ev {
        Ev {
            revision,
            kind: "MODIFIED".into(),
            key: key.into(),
            value: Some(value),
        }
    }

    fn write(key: &str, value: u64, rev: u64) -> Op {
        Op {
            process: 0,
            f: "write".into(),
            key: key.into(),
            value: serde_json::json!(value),
            outcome: Outcome::Ok,
            result: serde_json::json!(rev),
            node: 1,
            call_ns: 0,
            return_ns: 1,
            error: String::new(),
        }
    }

    fn history() -> Vec<Ev> {
        vec![ev(5, "a", 1), ev(6, "b", 2), ev(6, "c", 3), ev(9, "a", 4)]
    }

    fn one_watcher(
        events: Vec<Ev>,
        from: u64,
        to: u64,
        bookmarks: Vec<(u64, usize)>,
    ) -> Vec<WatcherLog> {
        vec![WatcherLog {
            watcher: 0,
            segments: vec![Segment {
                from,
                to,
                events,
                bookmarks,
                servers: vec![1],
            }],
            ..Default::default()
        }]
    }

    fn ops() -> Vec<Op> {
        vec![
            write("a", 1, 5),
            write("b", 2, 6),
            write("c", 3, 6),
            write("a", 4, 9),
        ]
    }

    fn reference() -> BTreeMap<u64, Result<Vec<Ev>, String>> {
        [(1, Ok(history())), (2, Ok(history()))].into()
    }

    #[test]
    fn an_exact_stream_is_valid() {
        let w = one_watcher(history(), 0, 9, vec![(6, 3), (9, 4)]);
        let v = check(&reference(), &w, &ops(), 9);
        assert_eq!(v.valid, Validity::Valid, "{}", v.details);
        // A segment that starts later sees only what follows its start.
        let w = one_watcher(history()[1..].to_vec(), 5, 9, vec![]);
        assert_eq!(check(&reference(), &w, &ops(), 9).valid, Validity::Valid);
    }

    #[test]
    fn a_dropped_event_or_half_a_revision_is_caught() {
        let mut h = history();
        h.remove(2); // the second event of revision 6
        let v = check(&reference(), &one_watcher(h, 0, 9, vec![]), &ops(), 9);
        assert_eq!(v.valid, Validity::Invalid);
        assert!(v.details["anomalies"]["watch_differs_from_history"].is_array());
    }

    #[test]
    fn duplicates_reordering_and_early_bookmarks_are_caught() {
        let mut dup = history();
        dup.insert(1, ev(5, "a", 1));
        assert_eq!(
            check(&reference(), &one_watcher(dup, 0, 9, vec![]), &ops(), 9).valid,
            Validity::Invalid
        );
        let mut swapped = history();
        swapped.swap(0, 3);
        assert_eq!(
            check(&reference(), &one_watcher(swapped, 0, 9, vec![]), &ops(), 9).valid,
            Validity::Invalid
        );
        // A bookmark at 6 before the events of revision 6 arrived.
        let v = check(
            &reference(),
            &one_watcher(history(), 0, 9, vec![(6, 1)]),
            &ops(),
            9,
        );
        assert!(
            v.details["anomalies"]["event_after_its_bookmark"].is_array(),
            "{}",
            v.details
        );
    }

    #[test]
    fn a_lost_acknowledged_write_or_disagreeing_servers_are_caught() {
        let mut more = ops();
        more.push(write("b", 7, 12));
        let v = check(
            &reference(),
            &one_watcher(history(), 0, 9, vec![]),
            &more,
            9,
        );
        assert!(v.details["anomalies"]["acknowledged_write_missing"].is_array());
        let mut r = reference();
        r.insert(3, Ok(history()[..3].to_vec()));
        let v = check(&r, &one_watcher(history(), 0, 9, vec![]), &ops(), 9);
        assert!(v.details["anomalies"]["servers_disagree"].is_array());
    }
}
