//! Nemeses: faults scheduled from the seed, each one started, held, then healed, and each step
//! recorded as installed, skipped (not possible here, with the reason) or indeterminate (tried,
//! outcome unclear).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use crate::agents::Agents;
use crate::cluster::Db;
use crate::history::{FaultStatus, Recorder};
use crate::net::Net;
use crate::stop::Stop;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Nemesis {
    /// SIGKILL the leader, a random member, a majority or all (a power cut), and restart them
    /// when healing.
    Kill,
    /// SIGSTOP the leader, a random member, a majority or all; SIGCONT when healing.
    Pause,
    /// nftables partitions: random halves, isolated leader, a bridge node, a majority ring
    /// (five nodes), one-way.
    Partition,
    /// Drop a share of the packets between servers (nftables' random numbers).
    Loss,
    /// `tc netem` delay; recorded as skipped where the kernel has no netem.
    Netem,
    /// Wall-clock skew of up to ±120 s on some servers through libfaketime (the monotonic clock
    /// stays true); skipped, with the reason, where Debian's `faketime` is not installed.
    Clock,
    /// Membership: remove one server (two of five: 5 → 3) and wipe its data; when healing add
    /// it back empty as a learner, let it catch up (by snapshot) and promote it (3 → 5).
    Member,
    /// Arm a crash failpoint on the leader or a random member: before or after the log's
    /// fsync, before or after an apply's commit, while building or installing a snapshot; when
    /// healing, restart it if it crashed there, or disarm it. Needs flotilla built with
    /// `--features failpoints`; skipped, with the reason, otherwise.
    Failpoint,
    /// Make fsync and fdatasync fail (libfiu) on the leader or a random member; the server
    /// must stop rather than go on; when healing, fsync works again and it is restarted.
    /// Skipped, with the reason, where Debian's `fiu-utils` is not installed.
    Fsync,
    /// Slow followers: every apply on them sleeps (the `apply-before-commit` failpoint armed
    /// with a delay), as on a slow disk, so they fall seconds behind the leader while serving
    /// reads, watches and roles; disarmed when healing. Needs a `failpoints` build; skipped,
    /// with the reason, otherwise.
    Slow,
    /// SIGKILL one agent (schedule workload), its containers left running as on a node whose
    /// agent crashed; restarted when healing, it must adopt them, not start them twice.
    AgentKill,
}

impl Nemesis {
    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::Partition => "partition",
            Nemesis::Loss => "loss",
            Nemesis::Netem => "netem",
            Nemesis::Member => "member",
            Nemesis::Clock => "clock",
            Nemesis::Failpoint => "failpoint",
            Nemesis::Fsync => "fsync",
            Nemesis::Slow => "slow",
            Nemesis::AgentKill => "agent-kill",
        }
    }
}

/// What was installed and must be undone.
enum Active {
    Killed(Vec<u64>),
    Paused(Vec<u64>),
    Network,
    Netem(Vec<u64>),
    Removed(Vec<u64>),
    Skewed(Vec<u64>),
    /// A server armed to crash (its exit is the nemesis's, not a finding), and with what.
    Armed(u64, Arming),
    /// Servers whose applies sleep.
    Slowed(Vec<u64>),
    /// Agents killed.
    AgentsKilled(Vec<u64>),
    /// Servers whose incoming packets the harness delays (NFQUEUE).
    Delayed(Vec<u64>, crate::delay::Delayer),
}

/// The failpoint the slow nemesis arms with a delay.
const SLOW_POINT: &str = "apply-before-commit";

#[derive(Clone, Copy)]
enum Arming {
    /// A crash failpoint.
    Failpoint(&'static str),
    /// Failing fsyncs (libfiu).
    Fsync,
}

/// libfiu's failure points for fsync and fdatasync.
const FIU_SYNC: &str = "name=posix/io/sync/*";

pub struct Schedule {
    pub nemeses: Vec<Nemesis>,
    /// The agents, for the schedule workload.
    pub agents: Option<Arc<Mutex<Agents>>>,
    /// Quiet time between faults and how long each is held, in ms.
    pub interval_ms: (u64, u64),
    pub hold_ms: (u64, u64),
    /// Let faults of different families overlap (one schedule per family).
    pub overlap: bool,
}

/// Faults of different families touch different things (processes and disks; the network's
/// nftables rules; the clock files), so they can be held at the same time.
fn family(n: Nemesis) -> u8 {
    match n {
        Nemesis::Partition | Nemesis::Loss | Nemesis::Netem => 1,
        Nemesis::Clock => 2,
        _ => 0,
    }
}

/// Run faults until `stop` fires, healing each. With `overlap`, one schedule per family runs
/// at the same time, each with its own generator drawn from `rng`.
pub async fn run(
    schedule: Schedule,
    db: Arc<Mutex<Db>>,
    net: Arc<Net>,
    rec: Recorder,
    mut rng: StdRng,
    stop: Stop,
) {
    if schedule.nemeses.is_empty() {
        stop.wait().await;
        return;
    }
    let mut groups: BTreeMap<u8, Vec<Nemesis>> = BTreeMap::new();
    for n in &schedule.nemeses {
        let f = if schedule.overlap { family(*n) } else { 0 };
        groups.entry(f).or_default().push(*n);
    }
    let loops = groups.into_values().map(|nemeses| {
        let seed: u64 = rng.random();
        one_schedule(
            nemeses,
            &schedule,
            &db,
            &net,
            &rec,
            StdRng::seed_from_u64(seed),
            stop.clone(),
        )
    });
    futures::future::join_all(loops).await;
}

async fn one_schedule(
    nemeses: Vec<Nemesis>,
    schedule: &Schedule,
    db: &Mutex<Db>,
    net: &Net,
    rec: &Recorder,
    mut rng: StdRng,
    stop: Stop,
) {
    loop {
        let quiet = rng.random_range(schedule.interval_ms.0..=schedule.interval_ms.1);
        if stop.sleep(Duration::from_millis(quiet)).await {
            break;
        }
        let Some(n) = nemeses.choose(&mut rng).copied() else {
            break;
        };
        let agents = schedule.agents.as_deref();
        let active = start(n, db, agents, rec, net, &mut rng).await;
        let hold = rng.random_range(schedule.hold_ms.0..=schedule.hold_ms.1);
        let stopping = stop.sleep(Duration::from_millis(hold)).await;
        if let Some(a) = active {
            heal(n, a, db, agents, net, rec).await;
        }
        if stopping {
            break;
        }
    }
}

/// Targets for a process fault: the leader, one random member, a majority, or all.
async fn process_targets(db: &Mutex<Db>, rng: &mut StdRng) -> (String, Vec<u64>) {
    let g = db.lock().await;
    let mut ids = g.ids.clone();
    match rng.random_range(0..4) {
        0 => match g.leader().await {
            Some(l) => ("leader".into(), vec![l]),
            None => (
                "random (no leader answered)".into(),
                vec![*ids.choose(rng).unwrap_or(&1)],
            ),
        },
        1 => ("random".into(), vec![*ids.choose(rng).unwrap_or(&1)]),
        // Every server at once, as a power cut: only what was fsync'd survives.
        3 => ("all".into(), ids),
        _ => {
            ids.shuffle(rng);
            let m = ids.len() / 2 + 1;
            ids.truncate(m);
            ids.sort();
            ("majority".into(), ids)
        }
    }
}

/// Kill or pause the leader, a random server, a majority or all; returns the servers it reached.
async fn signal_targets(
    n: Nemesis,
    db: &Mutex<Db>,
    rec: &Recorder,
    rng: &mut StdRng,
    signal: &str,
    act: impl Fn(&mut Db, u64) -> bool,
) -> Vec<u64> {
    let (what, targets) = process_targets(db, rng).await;
    let mut g = db.lock().await;
    let hit: Vec<u64> = targets.into_iter().filter(|t| act(&mut g, *t)).collect();
    let status = if hit.is_empty() {
        FaultStatus::Skipped
    } else {
        FaultStatus::Installed
    };
    rec.fault(
        n.name(),
        "start",
        hit.clone(),
        status,
        format!("{signal} {what}"),
    );
    hit
}

async fn start(
    n: Nemesis,
    db: &Mutex<Db>,
    agents: Option<&Mutex<Agents>>,
    rec: &Recorder,
    net: &Net,
    rng: &mut StdRng,
) -> Option<Active> {
    match n {
        Nemesis::AgentKill => {
            let Some(agents) = agents else {
                rec.fault(
                    n.name(),
                    "start",
                    vec![],
                    FaultStatus::Skipped,
                    "no agents: only the schedule workload has them",
                );
                return None;
            };
            let mut g = agents.lock().await;
            let ids = g.ids();
            let k = *ids.choose(rng)?;
            if g.kill(k) {
                rec.fault(
                    n.name(),
                    "start",
                    vec![k],
                    FaultStatus::Installed,
                    format!("SIGKILL agent a{k}"),
                );
                Some(Active::AgentsKilled(vec![k]))
            } else {
                rec.fault(
                    n.name(),
                    "start",
                    vec![k],
                    FaultStatus::Skipped,
                    format!("agent a{k} was not running"),
                );
                None
            }
        }
        Nemesis::Kill => {
            let hit = signal_targets(n, db, rec, rng, "SIGKILL", |g, t| g.kill(t)).await;
            Some(Active::Killed(hit))
        }
        Nemesis::Pause => {
            let hit = signal_targets(n, db, rec, rng, "SIGSTOP", |g, t| g.pause(t, true)).await;
            Some(Active::Paused(hit))
        }
        Nemesis::Partition => {
            let ids = db.lock().await.ids.clone();
            let leader = db.lock().await.leader().await;
            let (what, grudge) = partition_plan(&ids, leader, rng);
            match net.partition(&grudge) {
                Ok(()) => {
                    rec.fault(
                        n.name(),
                        "start",
                        grudge.keys().copied().collect(),
                        FaultStatus::Installed,
                        format!("{what}: {}", describe(&grudge)),
                    );
                }
                Err(e) => {
                    rec.fault(
                        n.name(),
                        "start",
                        Vec::new(),
                        FaultStatus::Indeterminate,
                        format!("{what}: {e}"),
                    );
                }
            }
            Some(Active::Network)
        }
        Nemesis::Loss => {
            let pct = rng.random_range(5..=30);
            match net.loss(pct) {
                Ok(()) => rec.fault(
                    n.name(),
                    "start",
                    net.nodes.clone(),
                    FaultStatus::Installed,
                    format!("drop {pct}% of server-to-server packets"),
                ),
                Err(e) => rec.fault(
                    n.name(),
                    "start",
                    Vec::new(),
                    FaultStatus::Indeterminate,
                    e.to_string(),
                ),
            }
            Some(Active::Network)
        }
        Nemesis::Clock => {
            if crate::cluster::libfaketime().is_none() {
                rec.fault(
                    n.name(),
                    "start",
                    Vec::new(),
                    FaultStatus::Skipped,
                    "libfaketime is not installed (apt-get install -y faketime)",
                );
                return None;
            }
            let g = db.lock().await;
            let mut ids = g.ids.clone();
            ids.shuffle(rng);
            let k = rng.random_range(1..=ids.len());
            let mut skewed = Vec::new();
            let mut what = Vec::new();
            for id in ids.into_iter().take(k) {
                // Within the five minutes of slack certificates are issued with.
                let secs = rng.random_range(1..=120) * if rng.random_bool(0.5) { 1 } else { -1 };
                match g.set_clock_offset(id, secs) {
                    Ok(()) => {
                        skewed.push(id);
                        what.push(format!("n{id} {secs:+}s"));
                    }
                    Err(e) => rec.fault(n.name(), "start", vec![id], FaultStatus::Indeterminate, e),
                }
            }
            skewed.sort();
            rec.fault(
                n.name(),
                "start",
                skewed.clone(),
                FaultStatus::Installed,
                what.join(", "),
            );
            Some(Active::Skewed(skewed))
        }
        Nemesis::Member => {
            let mut g = db.lock().await;
            let lost = g.settle_lost_removals().await;
            if !lost.is_empty() {
                rec.fault(
                    n.name(),
                    "start",
                    lost.clone(),
                    FaultStatus::Installed,
                    "an earlier removal whose answer was lost had happened: stopped and wiped",
                );
                return Some(Active::Removed(lost));
            }
            // A server an earlier heal could not add back is still out: add it back before
            // removing anyone else, or the cluster shrinks below three voters (seed 213 ran
            // on two, then one).
            let left_out: Vec<u64> = g.removed.iter().copied().collect();
            if !left_out.is_empty() {
                for id in left_out {
                    match g.add_member(id).await {
                        Ok(()) => rec.fault(
                            n.name(),
                            "start",
                            vec![id],
                            FaultStatus::Installed,
                            "an earlier re-add had failed: added back empty, caught up, promoted (nobody removed this time)",
                        ),
                        Err(e) => rec.fault(n.name(), "start", vec![id], FaultStatus::Indeterminate, e),
                    }
                }
                return None;
            }
            let mut ids: Vec<u64> = g
                .ids
                .iter()
                .copied()
                .filter(|i| !g.removed.contains(i))
                .collect();
            ids.shuffle(rng);
            // Keep at least three voters: one of three, one or two of five.
            let k = if ids.len() >= 5 {
                rng.random_range(1..=2)
            } else {
                1
            };
            let mut removed = Vec::new();
            for id in ids.into_iter().take(k) {
                match g.remove_member(id).await {
                    Ok(()) => removed.push(id),
                    Err(e) => {
                        rec.fault(n.name(), "start", vec![id], FaultStatus::Indeterminate, e);
                        break;
                    }
                }
            }
            if !removed.is_empty() {
                let n_left = g.ids.len() - g.removed.len();
                rec.fault(
                    n.name(),
                    "start",
                    removed.clone(),
                    FaultStatus::Installed,
                    format!("removed and wiped; {n_left} members left"),
                );
            }
            Some(Active::Removed(removed))
        }
        Nemesis::Fsync => {
            let mut g = db.lock().await;
            let target = leader_or_random(&g, rng).await;
            if crate::cluster::libfiu().is_none() {
                rec.fault(
                    n.name(),
                    "start",
                    vec![target],
                    FaultStatus::Skipped,
                    "libfiu is not installed (apt-get install -y fiu-utils)",
                );
                return None;
            }
            g.armed.insert(target);
            match g.fiu(target, &format!("enable {FIU_SYNC}")).await {
                Ok(()) => rec.fault(
                    n.name(),
                    "start",
                    vec![target],
                    FaultStatus::Installed,
                    "fsync and fdatasync fail",
                ),
                Err(e) => rec.fault(
                    n.name(),
                    "start",
                    vec![target],
                    FaultStatus::Indeterminate,
                    e,
                ),
            }
            Some(Active::Armed(target, Arming::Fsync))
        }
        Nemesis::Slow => {
            let g = db.lock().await;
            let leader = g.leader().await;
            let followers: Vec<u64> = g
                .ids
                .iter()
                .copied()
                .filter(|i| Some(*i) != leader && !g.removed.contains(i))
                .collect();
            let delay_ms = rng.random_range(100..=800);
            let action = format!("sleep({delay_ms})");
            let mut slowed = Vec::new();
            let mut errors = Vec::new();
            for id in &followers {
                match g.set_failpoint(*id, SLOW_POINT, &action).await {
                    Ok(()) => slowed.push(*id),
                    Err(e) if e.contains("without failpoints") => {
                        rec.fault(
                            n.name(),
                            "start",
                            followers.clone(),
                            FaultStatus::Skipped,
                            e,
                        );
                        return None;
                    }
                    Err(e) => errors.push(format!("n{id}: {e}")),
                }
            }
            let (status, detail) = if errors.is_empty() {
                (
                    FaultStatus::Installed,
                    format!("every apply sleeps {delay_ms} ms on the followers"),
                )
            } else {
                (
                    FaultStatus::Indeterminate,
                    format!("every apply sleeps {delay_ms} ms: {}", errors.join("; ")),
                )
            };
            rec.fault(n.name(), "start", followers.clone(), status, detail);
            // Heal all of them: one whose arming failed may be armed anyway.
            Some(Active::Slowed(followers))
        }
        Nemesis::Failpoint => {
            let mut g = db.lock().await;
            let target = leader_or_random(&g, rng).await;
            let names = flotilla_raft::failpoints::NAMES;
            let name = *names.choose(rng).unwrap_or(&names[0]);
            // Armed before the call: the crash may come before the answer does.
            g.armed.insert(target);
            match g.set_failpoint(target, name, "crash").await {
                Ok(()) => {
                    rec.fault(
                        n.name(),
                        "start",
                        vec![target],
                        FaultStatus::Installed,
                        format!("{name} armed: crash when reached"),
                    );
                    Some(Active::Armed(target, Arming::Failpoint(name)))
                }
                Err(e) if e.contains("without failpoints") => {
                    g.armed.remove(&target);
                    rec.fault(n.name(), "start", vec![target], FaultStatus::Skipped, e);
                    None
                }
                Err(e) => {
                    rec.fault(
                        n.name(),
                        "start",
                        vec![target],
                        FaultStatus::Indeterminate,
                        format!("{name}: {e}"),
                    );
                    Some(Active::Armed(target, Arming::Failpoint(name)))
                }
            }
        }
        Nemesis::Netem => {
            let delay = rng.random_range(20..=200);
            let mut done = Vec::new();
            for id in &net.nodes {
                let ns = net.node_ns(*id);
                match crate::net::run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &ns,
                        "tc",
                        "qdisc",
                        "add",
                        "dev",
                        "eth0",
                        "root",
                        "netem",
                        "delay",
                        &format!("{delay}ms"),
                        &format!("{}ms", delay / 4),
                    ],
                ) {
                    Ok(_) => done.push(*id),
                    Err(e) if done.is_empty() => {
                        // No sch_netem in this kernel: the same delay through NFQUEUE.
                        return delay_in_userspace(
                            n,
                            net,
                            rec,
                            delay,
                            rng.random(),
                            &e.to_string(),
                        );
                    }
                    Err(e) => {
                        rec.fault(
                            n.name(),
                            "start",
                            Vec::new(),
                            FaultStatus::Indeterminate,
                            format!("tc netem failed on n{id}: {e}"),
                        );
                        break;
                    }
                }
            }
            if !done.is_empty() {
                rec.fault(
                    n.name(),
                    "start",
                    done.clone(),
                    FaultStatus::Installed,
                    format!("delay {delay}ms ± {}ms", delay / 4),
                );
            }
            Some(Active::Netem(done))
        }
    }
}

async fn heal(
    n: Nemesis,
    a: Active,
    db: &Mutex<Db>,
    agents: Option<&Mutex<Agents>>,
    net: &Net,
    rec: &Recorder,
) {
    match a {
        Active::AgentsKilled(ids) => {
            let mut errors = Vec::new();
            if let Some(agents) = agents {
                let mut g = agents.lock().await;
                for k in &ids {
                    if let Err(e) = g.start(*k) {
                        errors.push(e.to_string());
                    }
                }
            }
            healed(rec, n, ids, &errors, "agent restarted");
        }
        Active::Killed(ids) => {
            let mut g = db.lock().await;
            let mut started = Vec::new();
            let mut errors = Vec::new();
            for id in ids {
                match g.start(id) {
                    Ok(()) => started.push(id),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            healed(rec, n, started, &errors, "restart");
        }
        Active::Paused(ids) => {
            let mut g = db.lock().await;
            let resumed: Vec<u64> = ids.into_iter().filter(|id| g.pause(*id, false)).collect();
            rec.fault(n.name(), "stop", resumed, FaultStatus::Installed, "SIGCONT");
        }
        Active::Network => match net.heal() {
            Ok(()) => rec.fault(
                n.name(),
                "stop",
                net.nodes.clone(),
                FaultStatus::Installed,
                "rules removed",
            ),
            Err(e) => rec.fault(
                n.name(),
                "stop",
                Vec::new(),
                FaultStatus::Indeterminate,
                e.to_string(),
            ),
        },
        Active::Skewed(ids) => {
            let g = db.lock().await;
            let errors: Vec<String> = ids
                .iter()
                .filter_map(|id| g.set_clock_offset(*id, 0).err())
                .collect();
            healed(rec, n, ids, &errors, "clocks true again");
        }
        Active::Removed(ids) => {
            let mut g = db.lock().await;
            for id in ids {
                match g.add_member(id).await {
                    Ok(()) => rec.fault(
                        n.name(),
                        "stop",
                        vec![id],
                        FaultStatus::Installed,
                        "added back empty, caught up, promoted",
                    ),
                    Err(e) => rec.fault(n.name(), "stop", vec![id], FaultStatus::Indeterminate, e),
                }
            }
        }
        Active::Slowed(ids) => {
            let g = db.lock().await;
            let mut errors = Vec::new();
            for id in &ids {
                // A server that is down (killed since) has nothing armed any more.
                if g.is_running(*id) {
                    if let Err(e) = g.set_failpoint(*id, SLOW_POINT, "off").await {
                        errors.push(format!("n{id}: {e}"));
                    }
                }
            }
            healed(rec, n, ids, &errors, "applies at full speed again");
        }
        Active::Armed(id, arming) => {
            let mut g = db.lock().await;
            let what = match arming {
                Arming::Failpoint(name) => name.to_string(),
                Arming::Fsync => "failing fsync".to_string(),
            };
            // Disarm first: a server that has not stopped yet must not stop afterwards.
            let disarmed = match arming {
                Arming::Failpoint(name) => g.set_failpoint(id, name, "off").await,
                Arming::Fsync => g.fiu(id, &format!("disable {FIU_SYNC}")).await,
            };
            let mut exited = g.exited(id);
            if matches!(arming, Arming::Fsync) {
                // A server whose fsync failed shuts down in an orderly way: give it time.
                for _ in 0..100 {
                    if exited.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    exited = g.exited(id);
                }
            }
            let result = match (exited, disarmed) {
                (Some(status), _) => g
                    .start(id)
                    .map(|()| format!("{what}: n{id} stopped ({status}); restarted"))
                    .map_err(|e| e.to_string()),
                (None, Ok(())) => Ok(match arming {
                    Arming::Failpoint(_) => format!("{what}: not reached; disarmed"),
                    Arming::Fsync => format!(
                        "{what}: n{id} still running; fsync works again (it must have stopped if an fsync failed)"
                    ),
                }),
                (None, Err(e)) => {
                    // Whether it is still armed is unknown; a restart clears it.
                    g.kill(id);
                    g.start(id)
                        .map(|()| format!("{what}: disarm failed ({e}); restarted"))
                        .map_err(|e| e.to_string())
                }
            };
            g.armed.remove(&id);
            let errors: Vec<String> = result.as_ref().err().cloned().into_iter().collect();
            let what = result.unwrap_or_else(|_| format!("{what}: restart failed"));
            healed(rec, n, vec![id], &errors, &what);
        }
        Active::Delayed(ids, mut d) => {
            // Rules first, so nothing new is queued; then release what is held.
            let mut errors: Vec<String> = net
                .unqueue(&ids)
                .err()
                .map(|e| e.to_string())
                .into_iter()
                .collect();
            let mut delayed = 0;
            for (id, r) in d.stop() {
                match r {
                    Ok(c) => delayed += c,
                    Err(e) => errors.push(format!("n{id}: {e}")),
                }
            }
            healed(
                rec,
                n,
                ids,
                &errors,
                &format!("delay removed ({delayed} packets were delayed)"),
            );
        }
        Active::Netem(ids) => {
            for id in &ids {
                let ns = net.node_ns(*id);
                let _ = crate::net::run(
                    "ip",
                    &[
                        "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
                    ],
                );
            }
            if !ids.is_empty() {
                rec.fault(
                    n.name(),
                    "stop",
                    ids,
                    FaultStatus::Installed,
                    "qdisc removed",
                );
            }
        }
    }
}

/// Delay what every server receives by `delay_ms` plus up to a quarter of it, in the harness
/// (NFQUEUE), where `tc netem` is missing.
fn delay_in_userspace(
    n: Nemesis,
    net: &Net,
    rec: &Recorder,
    delay_ms: u64,
    seed: u64,
    netem_error: &str,
) -> Option<Active> {
    let ids = net.nodes.clone();
    let delay = Duration::from_millis(delay_ms);
    let jitter = Duration::from_millis(delay_ms / 4);
    let d = match crate::delay::Delayer::start(net, &ids, delay, jitter, seed) {
        Ok(d) => d,
        Err(e) => {
            rec.fault(
                n.name(),
                "start",
                ids,
                FaultStatus::Skipped,
                format!("tc netem is not available ({netem_error}) and NFQUEUE failed: {e}"),
            );
            return None;
        }
    };
    if let Err(e) = net.queue(&ids, crate::delay::QUEUE) {
        rec.fault(
            n.name(),
            "start",
            ids.clone(),
            FaultStatus::Indeterminate,
            e.to_string(),
        );
        return Some(Active::Delayed(ids, d));
    }
    rec.fault(
        n.name(),
        "start",
        ids.clone(),
        FaultStatus::Installed,
        format!(
            "delay {delay_ms}ms + up to {}ms through NFQUEUE (no sch_netem here)",
            delay_ms / 4
        ),
    );
    Some(Active::Delayed(ids, d))
}

/// The leader (half the time, when one answers) or a random server.
async fn leader_or_random(g: &Db, rng: &mut StdRng) -> u64 {
    let leader = if rng.random_bool(0.5) {
        g.leader().await
    } else {
        None
    };
    match leader {
        Some(l) => l,
        None => *g.ids.choose(rng).unwrap_or(&1),
    }
}

/// Record a heal: installed when every target healed, indeterminate (with the errors) if not.
fn healed(rec: &Recorder, n: Nemesis, targets: Vec<u64>, errors: &[String], what: &str) {
    let (status, detail) = if errors.is_empty() {
        (FaultStatus::Installed, what.to_string())
    } else {
        (
            FaultStatus::Indeterminate,
            format!("{what}: {}", errors.join("; ")),
        )
    };
    rec.fault(n.name(), "stop", targets, status, detail);
}

/// Undo every fault that may still be in place (end of run, or after a failure).
pub async fn heal_all(db: &Mutex<Db>, net: &Net, rec: &Recorder) {
    let _ = net.heal();
    let mut g = db.lock().await;
    if g.opts.fake_clock {
        for id in g.ids.clone() {
            let _ = g.set_clock_offset(id, 0);
        }
    }
    for id in g.paused() {
        g.pause(id, false);
    }
    let lost = g.settle_lost_removals().await;
    if !lost.is_empty() {
        rec.fault(
            "heal",
            "stop",
            lost,
            FaultStatus::Installed,
            "removals whose answer was lost had happened: wiped, to be added back",
        );
    }
    for id in g.removed.clone() {
        if let Err(e) = g.add_member(id).await {
            rec.fault("heal", "stop", vec![id], FaultStatus::Indeterminate, e);
        }
    }
    for id in g.stopped() {
        if let Err(e) = g.start(id) {
            rec.fault(
                "heal",
                "stop",
                vec![id],
                FaultStatus::Indeterminate,
                e.to_string(),
            );
        }
    }
    rec.fault(
        "heal",
        "stop",
        g.ids.clone(),
        FaultStatus::Installed,
        "all faults removed",
    );
}

/// Which node drops traffic from which: the shapes Jepsen uses.
fn partition_plan(
    ids: &[u64],
    leader: Option<u64>,
    rng: &mut StdRng,
) -> (String, BTreeMap<u64, BTreeSet<u64>>) {
    let all: BTreeSet<u64> = ids.iter().copied().collect();
    // Each node's visible set → drop from everything else.
    let from_visible = |vis: &BTreeMap<u64, BTreeSet<u64>>| {
        vis.iter()
            .map(|(n, v)| (*n, all.difference(v).copied().filter(|p| p != n).collect()))
            .collect::<BTreeMap<u64, BTreeSet<u64>>>()
    };
    let mut shuffled = ids.to_vec();
    shuffled.shuffle(rng);
    let shape = rng.random_range(0..5);
    match shape {
        0 => {
            let cut = shuffled.len() / 2;
            let (a, b) = shuffled.split_at(cut);
            let a: BTreeSet<u64> = a.iter().copied().collect();
            let b: BTreeSet<u64> = b.iter().copied().collect();
            let vis = ids
                .iter()
                .map(|n| (*n, if a.contains(n) { a.clone() } else { b.clone() }))
                .collect();
            ("random halves".into(), from_visible(&vis))
        }
        1 => {
            let l = leader.unwrap_or(shuffled[0]);
            let rest: BTreeSet<u64> = all.iter().copied().filter(|n| *n != l).collect();
            let vis = ids
                .iter()
                .map(|n| (*n, if *n == l { [l].into() } else { rest.clone() }))
                .collect();
            ("isolated leader".into(), from_visible(&vis))
        }
        2 => {
            // A bridge node sees both halves; the halves do not see each other.
            let bridge = shuffled[0];
            let rest = &shuffled[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            let mut a: BTreeSet<u64> = a.iter().copied().collect();
            let mut b: BTreeSet<u64> = b.iter().copied().collect();
            a.insert(bridge);
            b.insert(bridge);
            let vis = ids
                .iter()
                .map(|n| {
                    (
                        *n,
                        if *n == bridge {
                            all.clone()
                        } else if a.contains(n) {
                            a.clone()
                        } else {
                            b.clone()
                        },
                    )
                })
                .collect();
            ("bridge".into(), from_visible(&vis))
        }
        3 if ids.len() >= 5 => {
            // Every node sees a majority (itself and its ring neighbours), no two the same one.
            let n = shuffled.len();
            let vis = (0..n)
                .map(|i| {
                    let v: BTreeSet<u64> = [
                        shuffled[(i + n - 1) % n],
                        shuffled[i],
                        shuffled[(i + 1) % n],
                    ]
                    .into();
                    (shuffled[i], v)
                })
                .collect();
            ("majority ring".into(), from_visible(&vis))
        }
        _ => {
            // One-way: one node hears nobody, but everyone hears it.
            let deaf = leader
                .filter(|_| rng.random_bool(0.5))
                .unwrap_or(shuffled[0]);
            let others: BTreeSet<u64> = all.iter().copied().filter(|n| *n != deaf).collect();
            (
                "one-way (a node that cannot hear)".into(),
                [(deaf, others)].into(),
            )
        }
    }
}

fn describe(g: &BTreeMap<u64, BTreeSet<u64>>) -> String {
    g.iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| format!("n{n} drops {:?}", v))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_shape_cuts_something_and_keeps_nodes_known() {
        for n in [3u64, 5] {
            let ids: Vec<u64> = (1..=n).collect();
            for seed in 0..50 {
                let mut rng = StdRng::seed_from_u64(seed);
                let (what, g) = partition_plan(&ids, Some(1), &mut rng);
                assert!(g.values().any(|v| !v.is_empty()), "{what} cuts nothing");
                for (node, peers) in &g {
                    assert!(ids.contains(node));
                    assert!(!peers.contains(node), "{what}: n{node} drops itself");
                }
                if what == "majority ring" {
                    // Each node still hears a majority (itself plus two neighbours).
                    for peers in g.values() {
                        assert_eq!(peers.len(), n as usize - 3);
                    }
                }
            }
        }
    }

    #[test]
    fn the_schedule_is_a_function_of_the_seed() {
        let ids = [1, 2, 3, 4, 5];
        let plan = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..10)
                .map(|_| partition_plan(&ids, None, &mut rng).1)
                .collect::<Vec<_>>()
        };
        assert_eq!(plan(7), plan(7));
    }
}
