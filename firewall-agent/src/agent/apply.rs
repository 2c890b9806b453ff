//! Policy inputs into the datapath: reading the source, compiling, writing the new
//! generation, recording the outcome as a policy-change record, and retrying a valid
//! policy the datapath refused (e.g. a full map) with backoff.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Agent, AgentError};
use crate::flows::Record;
use crate::policy::{self, compiled::CompiledPolicy, compiled::EndpointKind};
use crate::source::{Outcome, SourceUpdate};

/// First delay of a retry (a failed attach or policy write); it doubles up to RETRY_MAX.
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(100);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(30);

/// Exponential backoff: the first retry `first` after a failure, each further one twice
/// as late, never later than `max`.
#[derive(Clone, Debug)]
pub(super) struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(super) fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            failures: 0,
        }
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    pub(super) fn failed(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.failures = self.failures.saturating_add(1);
        self.first.saturating_mul(factor).min(self.max)
    }

    pub(super) fn failures(&self) -> u32 {
        self.failures
    }
}

/// A compiled policy the datapath refused, kept to be written again.
pub(super) struct PendingApply {
    pub(super) compiled: CompiledPolicy,
    pub(super) objects: ObjectDigests,
    pub(super) changed: Vec<String>,
    pub(super) backoff: Backoff,
    pub(super) next_attempt: Instant,
    pub(super) error: String,
    pub(super) map: Option<&'static str>,
}

impl Agent {
    fn is_local(&self) -> impl Fn(&crate::policy::compiled::Endpoint) -> bool + use<> {
        let me = self.node_name.clone();
        move |endpoint| match &endpoint.kind {
            EndpointKind::Pod { node, .. } => match (node, &me) {
                (None, _) => true,
                (Some(node), Some(me)) => node == me,
                (Some(_), None) => true,
            },
            _ => false,
        }
    }

    fn apply(&mut self, compiled: &CompiledPolicy) -> Result<(), AgentError> {
        let is_local = self.is_local();
        let report = self
            .datapath
            .sync(compiled, &self.tuning, is_local, &self.bindings)?;
        self.metrics
            .sync_seconds
            .observe(report.duration.as_secs_f64());
        self.generation = report.generation;
        self.enricher.learn(report.generation, compiled);
        for warning in &compiled.warnings {
            tracing::warn!(warning = %warning, "policy warning");
        }
        tracing::info!(
            generation = report.generation,
            zones = compiled.zones.len(),
            endpoints = compiled.endpoints.len(),
            policy_entries = report.policy_entries,
            endpoints_written = report.endpoints_written,
            endpoints_removed = report.endpoints_removed,
            took_ms = report.duration.as_secs_f64() * 1000.0,
            "policy enforced"
        );
        Ok(())
    }

    /// Looks at the source; an invalid or unavailable input leaves the last good policy.
    pub(super) fn reload(&mut self) -> Result<bool, AgentError> {
        let source_name = self.source.describe();
        let started = Instant::now();
        let set = match self.source.poll() {
            SourceUpdate::Unchanged => return Ok(false),
            SourceUpdate::Unavailable(message) => {
                tracing::error!(source = %source_name, error = %message, "policy source unavailable; the last good policy stays enforced");
                return Ok(false);
            }
            SourceUpdate::Invalid(error) => {
                tracing::error!(source = %source_name, error = %error, "policy rejected; the last good policy stays enforced");
                self.source.outcome(Outcome::Rejected(&error));
                self.policy_change("rejected", Vec::new(), Some(error.to_string()));
                return Ok(false);
            }
            SourceUpdate::Changed(set) => set,
        };
        let read = started.elapsed();
        // Sources hand over validated sets only: compiling one cannot fail.
        let compiled = policy::compile(&set);
        let compile = started.elapsed() - read;
        tracing::debug!(
            read_ms = read.as_secs_f64() * 1000.0,
            compile_ms = compile.as_secs_f64() * 1000.0,
            "policy input compiled"
        );
        let objects = object_digests(&set);
        let changed = changed_objects(&self.last_objects, &objects);
        // The input is not needed any more; freeing it before the sync lowers the peak.
        drop(set);
        if self.pending.take().is_some() {
            tracing::info!("a newer policy input replaces the one waiting for a retry");
        }
        let applied = self.apply_or_retry_later(
            compiled,
            objects,
            changed,
            Backoff::new(RETRY_FIRST, RETRY_MAX),
        );
        // Trimming hands pages back that the next compile faults in again: once after the
        // first policy (the largest allocation burst), then at most every TRIM_EVERY.
        if self
            .last_trim
            .is_none_or(|last| last.elapsed() >= TRIM_EVERY)
        {
            release_free_memory();
            self.last_trim = Some(Instant::now());
        }
        Ok(applied)
    }

    /// Writes `compiled` into the datapath and records the outcome. When the datapath
    /// refuses it (a full map, a failed write), the previous policy stays enforced and
    /// `compiled` is kept to be tried again after `backoff`'s next delay.
    fn apply_or_retry_later(
        &mut self,
        compiled: CompiledPolicy,
        objects: ObjectDigests,
        changed: Vec<String>,
        mut backoff: Backoff,
    ) -> bool {
        let source_name = self.source.describe();
        let previous_generation = self.generation;
        match self.apply(&compiled) {
            Ok(()) => {
                if backoff.failures() > 0 {
                    tracing::info!(
                        generation = self.generation,
                        failed_attempts = backoff.failures(),
                        "the policy that could not be written before is enforced now"
                    );
                }
                for map in self.full_maps.drain(..) {
                    self.metrics
                        .map_full
                        .get_or_create(&crate::metrics::MapLabels {
                            map: map.to_owned(),
                        })
                        .set(0);
                }
                self.source.outcome(Outcome::Applied {
                    generation: self.generation,
                    compiled: &compiled,
                });
                let record = self.enricher.policy_change(
                    &source_name,
                    "applied",
                    previous_generation,
                    self.generation,
                    changed,
                    None,
                    self.source.changed_by(),
                );
                self.write_record(Record::PolicyChange(record));
                self.last_objects = objects;
                true
            }
            Err(error) => {
                // E.g. a map too small for the new policy: the switch to the new slot
                // never happened, so the previous policy is still the one enforced.
                let (map, full) = match &error {
                    AgentError::Datapath(datapath) => (
                        datapath.map(),
                        matches!(datapath, crate::datapath::DatapathError::MapFull { .. }),
                    ),
                    _ => (None, false),
                };
                let retry_in = backoff.failed();
                let attempt = backoff.failures();
                self.metrics.policy_apply_failures.inc();
                if let (Some(map), true) = (map, full) {
                    self.metrics
                        .map_full
                        .get_or_create(&crate::metrics::MapLabels {
                            map: map.to_owned(),
                        })
                        .set(1);
                    if !self.full_maps.contains(&map) {
                        self.full_maps.push(map);
                    }
                }
                let retry_in_ms = retry_in.as_millis() as u64;
                match map {
                    Some(map) => {
                        tracing::error!(map = %map, attempt, retry_in_ms, %error, "policy could not be written to the datapath; the previous policy stays enforced")
                    }
                    None => {
                        tracing::error!(attempt, retry_in_ms, %error, "policy could not be written to the datapath; the previous policy stays enforced")
                    }
                }
                if attempt == 1 {
                    // Once per input: retries of the same input only log and count.
                    self.source.outcome(Outcome::Failed(error.to_string()));
                    self.policy_change("failed", changed.clone(), Some(error.to_string()));
                }
                self.pending = Some(PendingApply {
                    compiled,
                    objects,
                    changed,
                    backoff,
                    next_attempt: Instant::now() + retry_in,
                    error: error.to_string(),
                    map,
                });
                false
            }
        }
    }

    /// When the policy waiting for a retry is due, if there is one.
    pub(super) fn retry_due(&self) -> Option<Instant> {
        self.pending.as_ref().map(|pending| pending.next_attempt)
    }

    /// Writes the policy waiting for a retry, if it is due; true when it is enforced now.
    pub(super) fn retry_apply(&mut self) -> bool {
        match self.pending.take() {
            Some(pending) if pending.next_attempt <= Instant::now() => self.apply_or_retry_later(
                pending.compiled,
                pending.objects,
                pending.changed,
                pending.backoff,
            ),
            still_waiting => {
                self.pending = still_waiting;
                false
            }
        }
    }

    /// Records a rejected or failed policy input (applied ones are recorded in `reload`).
    fn policy_change(
        &mut self,
        outcome: &'static str,
        changed: Vec<String>,
        message: Option<String>,
    ) {
        if outcome != "applied" {
            self.metrics.policy_rejections.inc();
        }
        let record = self.enricher.policy_change(
            &self.source.describe(),
            outcome,
            self.generation,
            self.generation,
            changed,
            message,
            self.source.changed_by(),
        );
        self.write_record(Record::PolicyChange(record));
    }
}

/// `Kind/name` of every zone and policy, with a digest of its content.
pub(super) type ObjectDigests = BTreeMap<String, crate::policy::documents::Digest>;

pub(super) fn object_digests(set: &crate::policy::PolicySet) -> ObjectDigests {
    let mut digests = ObjectDigests::new();
    let mut add = |kind: &str, name: &str, item: &dyn std::fmt::Debug| {
        let text = format!("{item:?}");
        digests.insert(
            format!("{kind}/{name}"),
            crate::policy::documents::digest(text.as_bytes()),
        );
    };
    for zone in &set.zones {
        add("Zone", &zone.name, zone);
    }
    for policy in &set.policies {
        add("ZonePolicy", &policy.name, policy);
    }
    digests
}

/// `Kind/name` of the zones and policies that differ between two inputs (Zones first,
/// then ZonePolicies, each by name).
pub(super) fn changed_objects(old: &ObjectDigests, new: &ObjectDigests) -> Vec<String> {
    let mut changed: Vec<String> = old
        .iter()
        .filter(|(name, digest)| new.get(*name) != Some(digest))
        .map(|(name, _)| name.clone())
        .chain(new.keys().filter(|name| !old.contains_key(*name)).cloned())
        .collect();
    changed.sort_by(|left, right| {
        let kind = |name: &str| !name.starts_with("Zone/");
        (kind(left), left).cmp(&(kind(right), right))
    });
    changed.dedup();
    changed
}

/// Least time between two [`release_free_memory`] calls after applies.
const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Hands memory freed after a big compile back to the system: glibc keeps freed heap
/// pages otherwise, and the agent's resident size would stay at its peak.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free pages of the allocator's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}
