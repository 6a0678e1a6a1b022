//! Network delay where the kernel has no `sch_netem` (this machine class): an nftables rule in
//! each server's namespace hands the packets it receives from the test network to an NFQUEUE,
//! and a thread of the harness, entered into that namespace, accepts each one only after its
//! delay (a base plus a random jitter, so packets may be reordered, as with netem's jitter).
//! The rule carries `bypass`, so if the thread is gone packets pass rather than drop; healing
//! removes the rule first and then releases whatever is still held.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::net::Net;
use crate::HarnessError;

/// The queue number in every server namespace (queues are per network namespace).
pub const QUEUE: u16 = 7;
/// Packets held at once per server before the kernel passes new ones (fail-open).
const MAX_HELD: u32 = 8192;

/// Delay threads, one per server; [`Delayer::stop`] releases everything.
pub struct Delayer {
    stop: Arc<AtomicBool>,
    threads: Vec<(u64, JoinHandle<Result<u64, String>>)>,
}

/// A held packet, released at `at` (the heap is a min-heap on `at`).
struct Held {
    at: Instant,
    msg: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.at.cmp(&self.at)
    }
}

impl Delayer {
    /// Start delaying what servers `ids` receive by `delay` plus up to `jitter`. The queues
    /// are bound before the caller adds the nftables rules.
    pub fn start(
        net: &Net,
        ids: &[u64],
        delay: Duration,
        jitter: Duration,
        seed: u64,
    ) -> Result<Delayer, HarnessError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut d = Delayer {
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for id in ids {
            let path = format!("/run/netns/{}", net.node_ns(*id));
            let f = std::fs::File::open(&path)
                .map_err(|e| HarnessError::io(std::path::Path::new(&path), e))?;
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
            let stop = stop.clone();
            let rng = StdRng::seed_from_u64(seed.wrapping_add(*id));
            let t = std::thread::Builder::new()
                .name(format!("delay-n{id}"))
                .spawn(move || {
                    // This thread alone moves into the server's namespace.
                    let q = nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("setns: {e}"))
                        .and_then(|()| open_queue());
                    let q = match q {
                        Ok(q) => {
                            let _ = ready_tx.send(Ok(()));
                            q
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.clone()));
                            return Err(e);
                        }
                    };
                    run(q, delay, jitter, rng, &stop)
                })
                .map_err(|e| HarnessError::Setup(format!("delay thread: {e}")))?;
            d.threads.push((*id, t));
            match ready_rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    d.stop();
                    return Err(HarnessError::Setup(format!("NFQUEUE in n{id}: {e}")));
                }
                Err(_) => {
                    d.stop();
                    return Err(HarnessError::Setup(format!(
                        "NFQUEUE in n{id}: not bound within 5 s"
                    )));
                }
            }
        }
        Ok(d)
    }

    /// Release every held packet and end the threads; the packets delayed per server (or the
    /// error that ended its thread).
    pub fn stop(&mut self) -> Vec<(u64, Result<u64, String>)> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .drain(..)
            .map(|(id, t)| {
                (
                    id,
                    t.join()
                        .unwrap_or_else(|_| Err("delay thread panicked".into())),
                )
            })
            .collect()
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn open_queue() -> Result<nfq::Queue, String> {
    let mut q = nfq::Queue::open().map_err(|e| format!("open: {e}"))?;
    q.bind(QUEUE).map_err(|e| format!("bind {QUEUE}: {e}"))?;
    // Only the verdict matters: copy no payload. A full queue passes packets (fail-open).
    q.set_copy_range(QUEUE, 0)
        .map_err(|e| format!("copy range: {e}"))?;
    q.set_queue_max_len(QUEUE, MAX_HELD)
        .map_err(|e| format!("max len: {e}"))?;
    q.set_fail_open(QUEUE, true)
        .map_err(|e| format!("fail open: {e}"))?;
    q.set_nonblocking(true);
    Ok(q)
}

fn run(
    mut q: nfq::Queue,
    delay: Duration,
    jitter: Duration,
    mut rng: StdRng,
    stop: &AtomicBool,
) -> Result<u64, String> {
    let mut held: BinaryHeap<Held> = BinaryHeap::new();
    let mut count = 0u64;
    let jitter_us = jitter.as_micros() as u64;
    while !stop.load(Ordering::SeqCst) {
        let mut got = false;
        // Bounded: at most this many packets taken per pass before releasing due ones.
        for _ in 0..256 {
            match q.recv() {
                Ok(msg) => {
                    got = true;
                    count += 1;
                    let extra = if jitter_us > 0 {
                        Duration::from_micros(rng.random_range(0..=jitter_us))
                    } else {
                        Duration::ZERO
                    };
                    held.push(Held {
                        at: Instant::now() + delay + extra,
                        msg,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
        let now = Instant::now();
        while held.peek().is_some_and(|h| h.at <= now) {
            if let Some(mut h) = held.pop() {
                h.msg.set_verdict(nfq::Verdict::Accept);
                q.verdict(h.msg).map_err(|e| format!("verdict: {e}"))?;
            }
        }
        if !got {
            let next = held
                .peek()
                .map(|h| h.at.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(1));
            std::thread::sleep(next.min(Duration::from_millis(1)));
        }
    }
    for mut h in held.drain() {
        h.msg.set_verdict(nfq::Verdict::Accept);
        let _ = q.verdict(h.msg);
    }
    let _ = q.unbind(QUEUE);
    Ok(count)
}
