//! What the watchers, the status writer and the source share: the cache, the wake-up of
//! the debouncer, and how each kind's requests fare.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use super::cache::{Cache, Kind};
use super::retry::{Failure, Request};
use crate::source::policy_source::{RequestFailures, SourceHealth};

/// State shared by the watchers, the status writer and the source.
pub(crate) struct Shared {
    pub(crate) cache: Mutex<Cache>,
    /// Woken by the watchers on every change; the debouncer turns wake-ups into
    /// `changes()` notifications.
    pub(super) wake: Notify,
    /// How each kind's requests fare.
    health: Mutex<BTreeMap<Kind, KindHealth>>,
    /// The first failure of each run of failures, for `poll` to report once.
    problems: Mutex<Vec<String>>,
}

/// How one kind's requests fare.
#[derive(Default)]
struct KindHealth {
    /// The last failure of the current run of failures, and how many there were.
    failing: Option<(Failure, u32)>,
    /// Failed requests so far, by request and reason.
    failures: BTreeMap<(Request, &'static str), u64>,
    /// The wait chosen after the last failure; zero once a request succeeds.
    retry_in: Duration,
}

impl Shared {
    pub(super) fn new() -> Self {
        Self {
            cache: Mutex::new(Cache::default()),
            wake: Notify::new(),
            // Every kind from the start: each one's retry wait is exported, zero or not.
            health: Mutex::new(
                Kind::ALL
                    .into_iter()
                    .map(|kind| (kind, KindHealth::default()))
                    .collect(),
            ),
            problems: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// The first failures of the runs of failures since the last call.
    pub(super) fn take_problems(&self) -> Vec<String> {
        std::mem::take(&mut *self.problems.lock().expect("problems lock"))
    }

    /// Records a failed request, retried after `retry_in`; the first of a run of failures
    /// reaches the run loop.
    pub(super) fn failed(&self, kind: Kind, failure: &Failure, attempts: u32, retry_in: Duration) {
        let mut health = self.health.lock().expect("health lock");
        let entry = health.entry(kind).or_default();
        if entry.failing.is_none() {
            self.problems.lock().expect("problems lock").push(format!(
                "{}: {} failed: {}",
                kind.as_str(),
                failure.request.as_str(),
                failure.cause
            ));
        }
        entry.failing = Some((failure.clone(), attempts));
        *entry
            .failures
            .entry((failure.request, failure.reason))
            .or_default() += 1;
        entry.retry_in = retry_in;
    }

    pub(super) fn recovered(&self, kind: Kind) {
        if let Some(entry) = self.health.lock().expect("health lock").get_mut(&kind) {
            entry.failing = None;
            entry.retry_in = Duration::ZERO;
        }
    }

    pub(super) fn health(&self) -> SourceHealth {
        let health = self.health.lock().expect("health lock");
        let mut report = SourceHealth::default();
        for (kind, entry) in health.iter() {
            if let Some((failure, attempts)) = &entry.failing {
                let times = match attempts {
                    1 => "once".to_string(),
                    many => format!("{many} times in a row"),
                };
                report.failing.push(format!(
                    "{}: {} failed: {} (failed {times}, retrying with backoff)",
                    kind.as_str(),
                    failure.request.as_str(),
                    failure.cause,
                ));
            }
            for ((request, reason), total) in &entry.failures {
                report.failures.push(RequestFailures {
                    kind: kind.as_str(),
                    request: request.as_str(),
                    reason,
                    total: *total,
                });
            }
            report.retry_backoff.push((kind.as_str(), entry.retry_in));
        }
        report
    }
}
