//! Each round's mirror of the datapath into the metrics and readiness: counters, sink
//! statistics, map fill levels, attachments, and a rate-limited warning when the
//! datapath fails to track connections.

use std::time::{Duration, Instant};

use super::Agent;

/// Least time between two warnings about a growing datapath failure counter.
pub(super) const GROWTH_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Follows a datapath counter that only grows, to warn when it does without repeating
/// the warning more often than GROWTH_WARNING_EVERY.
#[derive(Default)]
pub(super) struct GrowthWatch {
    seen: Option<u64>,
    unwarned: u64,
    last_warning: Option<Instant>,
}

impl GrowthWatch {
    /// Takes the counter's current total; returns its increase since the last call and,
    /// when a warning is due, how much it grew since the last warning.
    pub(super) fn update(&mut self, total: u64, now: Instant) -> (u64, Option<u64>) {
        // The first reading counts everything since the map was created; a smaller total
        // (maps recreated) restarts the count.
        let increase = match self.seen {
            Some(seen) => total.saturating_sub(seen),
            None => total,
        };
        self.seen = Some(total);
        self.unwarned += increase;
        let due = self.unwarned > 0
            && self
                .last_warning
                .is_none_or(|last| now.duration_since(last) >= GROWTH_WARNING_EVERY);
        if !due {
            return (increase, None);
        }
        self.last_warning = Some(now);
        (increase, Some(std::mem::take(&mut self.unwarned)))
    }
}

impl Agent {
    /// Mirrors counters, sink statistics and map fill levels into the metrics.
    pub(super) fn observe(&mut self) {
        let counters = self.datapath.counters();
        if let Ok(counters) = &counters {
            self.metrics.observe(counters, &self.sinks.stats());
        }
        let (endpoints, capacity) = (
            self.datapath.endpoint_count(),
            self.datapath.endpoint_capacity(),
        );
        self.metrics
            .map_fill(firewall_common::MAP_ENDPOINTS, endpoints, capacity);
        let (entries, capacity) = self.datapath.conntrack_fill();
        self.metrics
            .map_fill(firewall_common::MAP_CONNTRACK, entries, capacity);
        let (entries, capacity) = self.datapath.policy_fill();
        self.metrics
            .map_fill(firewall_common::MAP_POLICY, entries, capacity);
        for (hook, count) in self.datapath.attached_by_hook() {
            self.metrics
                .interfaces_attached
                .get_or_create(&crate::metrics::HookLabels {
                    hook: hook.as_str().to_owned(),
                })
                .set(count as i64);
        }
        if let Some(total) = counters
            .as_ref()
            .ok()
            .and_then(|counters| counters.get(firewall_common::COUNTER_CT_INSERT_FAILED as usize))
        {
            let (increase, warn) = self
                .conntrack_insert_failures
                .update(*total, Instant::now());
            self.metrics.conntrack_insert_failures.inc_by(increase);
            if let Some(failed) = warn {
                let (entries, capacity) = self.datapath.conntrack_fill();
                tracing::warn!(
                    map = firewall_common::MAP_CONNTRACK,
                    failed,
                    total = *total,
                    entries,
                    capacity,
                    "connections could not be tracked: they passed untracked and their replies \
                     are decided as new traffic; raise --max-conntrack"
                );
            }
        }
        self.metrics.generation.set(self.generation as i64);
        self.metrics
            .state_file_errors_total(self.source.state_errors());
        let health = self.source.health();
        self.metrics.source_health(&health);
        let readiness = crate::metrics::Readiness {
            policy_enforced: self.generation != 0,
            source_synced: self.source.synced(),
            unprotected: self
                .attach_failures
                .iter()
                .map(|(name, failure)| {
                    (
                        name.clone(),
                        failure.backoff.failures(),
                        failure.error.clone(),
                    )
                })
                .collect(),
            apply_failed: self
                .pending
                .as_ref()
                .map(|pending| crate::metrics::ApplyFailure {
                    map: pending.map.map(str::to_owned),
                    error: pending.error.clone(),
                    attempts: pending.backoff.failures(),
                }),
            source_failing: health.failing,
        };
        self.metrics.set_readiness(&readiness);
        self.metrics.tick();
    }
}
