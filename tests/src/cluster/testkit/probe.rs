//! Verdicts watched as they change: a [`Prober`] opens new TCP connections from one pod to
//! one address back to back and records each attempt with when it started, so that a
//! test can say when a verdict switched after a change, that it never switched back, or
//! that a flow never passed at all. [`Cluster::wait_identity`] watches the identity every
//! node's datapath holds for an address. [`Latencies`] collects how long changes took and
//! prints their percentiles.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cluster::Cluster;
use crate::topology::Netns;

/// How long an attempt waits for the handshake. Between namespaces of one machine an
/// allowed handshake takes well under a millisecond (and completes in the kernel even
/// while the prober's thread waits for a CPU); a dropped SYN is retried only after 1 s.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(60);
/// Pause between attempts.
const PAUSE: Duration = Duration::from_millis(5);
/// Attempts in a row with the new verdict before a switch counts as done.
const SETTLED: usize = 4;

/// One connection attempt.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    pub started: Instant,
    pub passed: bool,
}

/// Connection attempts from a pod to `ip:port` on a thread of their own, until dropped.
pub struct Prober {
    pub what: String,
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    /// Starts probing TCP `ip:port` from `from`; `what` names the flow in messages.
    pub fn tcp(from: &Netns, ip: IpAddr, port: u16, what: &str) -> Result<Self> {
        let handle = File::open(from.path())
            .with_context(|| format!("opening network namespace {}", from.name()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let thread = std::thread::Builder::new()
            .name(format!("prober {what}"))
            .spawn({
                let (stop, attempts) = (stop.clone(), attempts.clone());
                move || {
                    nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("the prober enters its pod's namespace");
                    let target = SocketAddr::new(ip, port);
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let passed = TcpStream::connect_timeout(&target, ATTEMPT_TIMEOUT).is_ok();
                        attempts
                            .lock()
                            .expect("attempts lock")
                            .push(Attempt { started, passed });
                        std::thread::sleep(PAUSE);
                    }
                }
            })
            .context("starting a prober thread")?;
        Ok(Self {
            what: what.to_string(),
            stop,
            attempts,
            thread: Some(thread),
        })
    }

    /// Every attempt so far.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().expect("attempts lock").clone()
    }

    /// Attempts started at or after `since`.
    pub fn since(&self, since: Instant) -> Vec<Attempt> {
        self.attempts()
            .into_iter()
            .filter(|attempt| attempt.started >= since)
            .collect()
    }

    /// Attempts that passed, of every attempt so far.
    pub fn passed(&self) -> (usize, usize) {
        let attempts = self.attempts();
        (
            attempts.iter().filter(|attempt| attempt.passed).count(),
            attempts.len(),
        )
    }

    /// Waits (`within`) until the attempts started after `changed` have switched to
    /// `passes` for good, and returns when the switch happened: the start of the first
    /// attempt with the new verdict, counted from `changed`. Fails if the verdict does
    /// not switch, or switches back (an attempt with the old verdict after one with the
    /// new: the datapath must go from one verdict to the other once).
    pub fn wait_switch(
        &self,
        changed: Instant,
        passes: bool,
        within: Duration,
    ) -> Result<Duration> {
        let deadline = changed + within;
        loop {
            let attempts = self.since(changed);
            if let Some(first) = attempts.iter().position(|attempt| attempt.passed == passes) {
                if let Some(back) = attempts[first..]
                    .iter()
                    .find(|attempt| attempt.passed != passes)
                {
                    bail!(
                        "{}: switched to {} {:?} after the change, then back at {:?}",
                        self.what,
                        verdict(passes),
                        attempts[first].started - changed,
                        back.started - changed
                    );
                }
                if attempts.len() - first >= SETTLED {
                    return Ok(attempts[first].started - changed);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: still not {} {within:?} after the change ({} attempts since)",
                    self.what,
                    verdict(passes),
                    attempts.len()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Fails unless every attempt so far (at least one) had verdict `passes`.
    pub fn check_all(&self, passes: bool) -> Result<usize> {
        let attempts = self.attempts();
        let wrong = attempts
            .iter()
            .filter(|attempt| attempt.passed != passes)
            .count();
        if attempts.is_empty() {
            bail!("{}: no attempt ran", self.what);
        }
        if wrong > 0 {
            let first = attempts
                .iter()
                .position(|attempt| attempt.passed != passes)
                .unwrap_or_default();
            bail!(
                "{}: {wrong} of {} attempts were {} (first: attempt {first}), every one must be {}",
                self.what,
                attempts.len(),
                verdict(!passes),
                verdict(passes)
            );
        }
        Ok(attempts.len())
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn verdict(passes: bool) -> &'static str {
    if passes { "allowed" } else { "denied" }
}

impl Cluster {
    /// Waits (`within`) until every node's agent enforces `zone` for `ip` (None: `ip` has
    /// no identity), polling the live slot of the pinned ENDPOINTS maps; returns when the
    /// last of them did, counted from `since`.
    pub fn wait_identity(
        &self,
        ip: IpAddr,
        zone: Option<u32>,
        since: Instant,
        within: Duration,
    ) -> Result<Duration> {
        let mut pending: Vec<usize> = (0..self.nodes.len()).collect();
        let mut last = Duration::ZERO;
        let deadline = since + within;
        loop {
            pending.retain(|&node| {
                let enforced = self.nodes[node].agent().endpoint(ip).map(|slot| slot.zone);
                if enforced == zone {
                    last = since.elapsed();
                    false
                } else {
                    true
                }
            });
            if pending.is_empty() {
                return Ok(last);
            }
            if Instant::now() > deadline {
                let now: Vec<String> = pending
                    .iter()
                    .map(|&node| {
                        format!("node-{node}: {:?}", self.nodes[node].agent().endpoint(ip))
                    })
                    .collect();
                bail!(
                    "{ip} does not have zone {zone:?} on every node {within:?} after the change: {}",
                    now.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Whether a UDP datagram from port `local_port` of `from` to an echo server at
/// `ip:port` comes back (three tries of 300 ms, from one socket: one flow).
pub fn udp_flow(from: &Netns, local_port: u16, ip: IpAddr, port: u16) -> bool {
    from.enter(|| -> std::io::Result<bool> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, local_port))?;
        socket.set_read_timeout(Some(Duration::from_millis(300)))?;
        socket.connect((ip, port))?;
        let mut buffer = [0u8; 16];
        Ok((0..3).any(|_| socket.send(b"zonewall").is_ok() && socket.recv(&mut buffer).is_ok()))
    })
    .expect("entering the pod")
    .unwrap_or(false)
}

/// How long changes took to be enforced, by kind of change.
#[derive(Debug, Default)]
pub struct Latencies {
    samples: BTreeMap<String, Vec<Duration>>,
}

impl Latencies {
    pub fn record(&mut self, kind: &str, took: Duration) {
        self.samples.entry(kind.to_string()).or_default().push(took);
    }

    /// The samples of `kind`.
    pub fn of(&self, kind: &str) -> &[Duration] {
        self.samples
            .get(kind)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// One line per kind: samples, p50, p99 and the largest (nearest rank).
    pub fn report(&self) -> String {
        let mut lines = Vec::new();
        for (kind, samples) in &self.samples {
            let mut sorted = samples.clone();
            sorted.sort();
            lines.push(format!(
                "{kind:<44} n={:<3} p50={:>7.1} ms  p99={:>7.1} ms  max={:>7.1} ms",
                sorted.len(),
                millis(percentile(&sorted, 50.0)),
                millis(percentile(&sorted, 99.0)),
                millis(sorted.last().copied().unwrap_or_default()),
            ));
        }
        lines.join("\n")
    }
}

/// The nearest-rank `p`-th percentile of `sorted` (zero when empty).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 50.0), Duration::from_millis(5));
        assert_eq!(percentile(&sorted, 99.0), Duration::from_millis(10));
        assert_eq!(percentile(&sorted[..1], 50.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
