//! The standalone agent's run loop: load and pin the datapath, enforce the policy file,
//! follow its changes and the pod interfaces, and write the flow log. Nothing it does on
//! exit opens the firewall: programs stay attached through pinned links.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use globset::{Glob, GlobSet, GlobSetBuilder};
use tokio::io::unix::AsyncFd;

use crate::config::RunArgs;
use crate::datapath::{Datapath, Tuning, binding::Bindings};
use crate::flows::{Dispatcher, Enricher, Record, decode};
use crate::policy::{self, compiled::CompiledPolicy, compiled::EndpointKind};
use crate::source::{FileSource, Outcome, PolicySource, SourceUpdate};

mod first_packet;

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Datapath(#[from] crate::datapath::DatapathError),
    #[error(transparent)]
    Sink(#[from] crate::flows::SinkError),
    #[error(transparent)]
    Kube(#[from] crate::source::kube::KubeError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

struct Agent {
    args: RunArgs,
    tuning: Tuning,
    datapath: Datapath,
    globs: GlobSet,
    source: Box<dyn PolicySource>,
    enricher: Enricher,
    sinks: Dispatcher,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// A digest of every zone and policy last applied, to name what a new input changes
    /// (the input itself is not kept: it holds every pod).
    last_objects: ObjectDigests,
    /// When freed heap memory was last handed back to the system.
    last_trim: Option<Instant>,
    node_name: Option<String>,
    generation: u32,
    /// Which pod interface each pod address is bound to (anti-spoofing), as last found.
    bindings: Bindings,
    /// What was read of the pod namespaces for the bindings.
    discovery: crate::datapath::binding::Discovery,
    /// Matching interfaces the programs could not be attached to, by name.
    attach_failures: BTreeMap<String, AttachFailure>,
    /// A valid policy the datapath refused (e.g. a full map), retried with backoff until
    /// it is written or a newer input replaces it.
    pending: Option<PendingApply>,
    /// Maps `zonewall_map_full` currently reports as full.
    full_maps: Vec<&'static str>,
    conntrack_insert_failures: GrowthWatch,
}

/// First delay of a retry (a failed attach or policy write); it doubles up to RETRY_MAX.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Exponential backoff: the first retry `first` after a failure, each further one twice
/// as late, never later than `max`.
#[derive(Clone, Debug)]
struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            failures: 0,
        }
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    fn failed(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.failures = self.failures.saturating_add(1);
        self.first.saturating_mul(factor).min(self.max)
    }

    fn failures(&self) -> u32 {
        self.failures
    }
}

/// An interface left unprotected by a failed attach.
struct AttachFailure {
    ifindex: u32,
    backoff: Backoff,
    next_attempt: Instant,
    error: String,
}

/// A compiled policy the datapath refused, kept to be written again.
struct PendingApply {
    compiled: CompiledPolicy,
    objects: ObjectDigests,
    changed: Vec<String>,
    backoff: Backoff,
    next_attempt: Instant,
    error: String,
    map: Option<&'static str>,
}

/// Least time between two warnings about a growing datapath failure counter.
const GROWTH_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Follows a datapath counter that only grows, to warn when it does without repeating
/// the warning more often than GROWTH_WARNING_EVERY.
#[derive(Default)]
struct GrowthWatch {
    seen: Option<u64>,
    unwarned: u64,
    last_warning: Option<Instant>,
}

impl GrowthWatch {
    /// Takes the counter's current total; returns its increase since the last call and,
    /// when a warning is due, how much it grew since the last warning.
    fn update(&mut self, total: u64, now: Instant) -> (u64, Option<u64>) {
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

fn glob_set(globs: &[String]) -> Result<GlobSet, AgentError> {
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        let glob = glob.trim();
        if glob.is_empty() {
            continue;
        }
        builder.add(
            Glob::new(glob)
                .map_err(|error| AgentError::Config(format!("--interfaces {glob:?}: {error}")))?,
        );
    }
    builder
        .build()
        .map_err(|error| AgentError::Config(format!("--interfaces: {error}")))
}

fn default_node_name() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
}

/// Whether `name` is still an interface of this namespace with index `index`.
fn interface_exists(name: &str, index: u32) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok_and(|current| current == index)
}

/// Resolves at `deadline`; never without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}

/// Writes `content` to `path` atomically (temporary file + rename).
fn write_atomically(path: &Path, content: &str) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, content)?;
    std::fs::rename(&temporary, path)
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
    fn reload(&mut self) -> Result<bool, AgentError> {
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
    fn retry_due(&self) -> Option<Instant> {
        self.pending.as_ref().map(|pending| pending.next_attempt)
    }

    /// Writes the policy waiting for a retry, if it is due; true when it is enforced now.
    fn retry_apply(&mut self) -> bool {
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

    /// The pod interfaces of this node: (name, index) of interfaces matching the globs.
    /// `None` when the listing failed (e.g. out of file descriptors): that must not read as
    /// "every pod interface is gone", or a scan would detach them all.
    fn pod_interfaces(&self) -> Option<Vec<(String, u32)>> {
        let listed = match nix::net::if_::if_nameindex() {
            Ok(listed) => listed,
            Err(errno) => {
                tracing::warn!(%errno, "cannot list interfaces; attachments left as they are until the next scan");
                return None;
            }
        };
        let wanted = listed
            .iter()
            .filter_map(|interface| {
                Some((
                    interface.name().to_str().ok()?.to_owned(),
                    interface.index(),
                ))
            })
            .filter(|(name, _)| self.globs.is_match(name))
            .collect();
        Some(wanted)
    }

    /// Finds which pod interface each pod address is on and, when that changed, binds the
    /// addresses anew (in place: bindings are not policy). Before a policy is enforced the
    /// bindings are only remembered; the first sync writes them.
    fn refresh_bindings(&mut self, interfaces: &[(String, u32)]) {
        let indexes = interfaces.iter().map(|(_, index)| *index).collect();
        let bindings = match self.discovery.discover(&indexes) {
            Ok(bindings) => bindings,
            Err(error) => {
                tracing::warn!(%error, "cannot find the pod interfaces' addresses; bindings unchanged");
                return;
            }
        };
        if bindings == self.bindings {
            return;
        }
        self.bindings = bindings;
        if self.generation == 0 {
            return;
        }
        match self.datapath.rebind(&self.bindings) {
            Ok(0) => {}
            Ok(changed) => {
                tracing::info!(
                    changed,
                    bound = self.bindings.len(),
                    "pod addresses bound to their interfaces"
                )
            }
            Err(error) => {
                tracing::error!(%error, "binding pod addresses to their interfaces failed; retried next scan")
            }
        }
    }

    /// Attaches to new matching interfaces and lets go of vanished ones.
    fn scan_interfaces(&mut self) -> Result<bool, AgentError> {
        let Some(wanted) = self.pod_interfaces() else {
            return Ok(false);
        };
        self.refresh_bindings(&wanted);
        let mut changed = false;
        let now = Instant::now();
        for (name, index) in &wanted {
            if self.datapath.is_attached(name, *index) {
                continue;
            }
            let waiting = self
                .attach_failures
                .get(name)
                .is_some_and(|failure| failure.ifindex == *index && now < failure.next_attempt);
            if waiting {
                continue;
            }
            match self.datapath.attach(name, *index) {
                Ok(_) => {
                    if let Some(failure) = self.attach_failures.remove(name) {
                        tracing::info!(
                            interface = %name,
                            ifindex = index,
                            failed_attempts = failure.backoff.failures(),
                            "attached after earlier failures; the interface is protected now"
                        );
                    }
                    self.enricher.name_interface(*index, name);
                    changed = true;
                }
                // A veth can vanish between listing and attaching: nothing left to protect.
                Err(error) if !interface_exists(name, *index) => {
                    tracing::debug!(interface = %name, %error, "interface vanished while attaching");
                    self.attach_failures.remove(name);
                }
                Err(error) => {
                    let mut failure = match self.attach_failures.remove(name) {
                        Some(failure) if failure.ifindex == *index => failure,
                        _ => AttachFailure {
                            ifindex: *index,
                            backoff: Backoff::new(RETRY_FIRST, RETRY_MAX),
                            next_attempt: now,
                            error: String::new(),
                        },
                    };
                    let retry_in = failure.backoff.failed();
                    failure.next_attempt = now + retry_in;
                    failure.error = error.to_string();
                    self.metrics
                        .attach_failures
                        .get_or_create(&crate::metrics::InterfaceLabels {
                            interface: name.clone(),
                        })
                        .inc();
                    tracing::error!(
                        interface = %name,
                        ifindex = index,
                        attempt = failure.backoff.failures(),
                        retry_in_ms = retry_in.as_millis() as u64,
                        %error,
                        "attach failed: the interface is NOT protected"
                    );
                    self.attach_failures.insert(name.clone(), failure);
                }
            }
        }
        // An interface that is gone (or no longer matched) is no longer unprotected.
        let metrics = &self.metrics;
        self.attach_failures.retain(|name, failure| {
            let kept = wanted
                .iter()
                .any(|(wanted_name, index)| wanted_name == name && *index == failure.ifindex);
            if !kept {
                metrics
                    .attach_failures
                    .remove(&crate::metrics::InterfaceLabels {
                        interface: name.clone(),
                    });
            }
            kept
        });
        let before = self.datapath.attached().count();
        // Listed again under the lock the CNI plugin takes: an interface it attached
        // after the listing above is not taken for a vanished one.
        let _lock = self.datapath.lock_links();
        if let Some(current) = self.pod_interfaces() {
            self.datapath.prune(&current);
        }
        Ok(changed || before != self.datapath.attached().count())
    }

    fn write_ready_file(&self) -> Result<(), AgentError> {
        let Some(path) = &self.args.ready_file else {
            return Ok(());
        };
        let interfaces: Vec<&str> = self.datapath.attached().collect();
        let content = serde_json::json!({
            "generation": self.generation,
            "interfaces": interfaces,
        })
        .to_string();
        write_atomically(path, &content).map_err(|source| AgentError::Io {
            what: format!("writing ready file {}", path.display()),
            source,
        })
    }

    fn drain_events(&mut self, ring: &mut RingBuf<MapData>) -> Result<usize, AgentError> {
        let mut drained = 0;
        while let Some(item) = ring.next() {
            drained += 1;
            let Some(event) = decode(&item) else {
                tracing::warn!(size = item.len(), "flow event of unexpected size skipped");
                continue;
            };
            let record = self.enricher.event(&event);
            self.metrics.record_flow(&record);
            self.write_record(Record::Flow(record));
        }
        Ok(drained)
    }

    fn expire(&mut self) -> Result<(), AgentError> {
        let now = crate::datapath::monotonic_ns();
        let ended = match self.datapath.expire_conntrack(now) {
            Ok(ended) => ended,
            Err(error) => {
                tracing::warn!(%error, "conntrack ageing failed; retried next round");
                return Ok(());
            }
        };
        for (key, value) in &ended {
            let record = self.enricher.expired(key, value);
            self.metrics.record_flow(&record);
            self.write_record(Record::Flow(record));
        }
        Ok(())
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

    /// Mirrors counters, sink statistics and map fill levels into the metrics.
    fn observe(&mut self) {
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

    /// Hands one record to the sinks (never blocks; each sink counts what it loses).
    fn write_record(&mut self, record: Record) {
        self.sinks.send(std::sync::Arc::new(record));
    }
}

/// `Kind/name` of every zone and policy, with a digest of its content.
type ObjectDigests = BTreeMap<String, crate::policy::documents::Digest>;

fn object_digests(set: &crate::policy::PolicySet) -> ObjectDigests {
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
fn changed_objects(old: &ObjectDigests, new: &ObjectDigests) -> Vec<String> {
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

/// Resolves when the source announces a change; never for polled-only sources.
async fn wait_for_changes(changes: &Option<std::sync::Arc<tokio::sync::Notify>>) {
    match changes {
        Some(notify) => notify.notified().await,
        None => std::future::pending().await,
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    args.validate().map_err(AgentError::Config)?;
    let globs = glob_set(&args.interfaces)?;
    let node_name = args.node_name.clone().or_else(default_node_name);
    // Standalone with --config; otherwise the cluster's API server.
    let state = crate::source::StateDir::open(&args.state_dir);
    let source: Box<dyn PolicySource> = match &args.config {
        Some(path) => Box::new(FileSource::watched(path).remembering(state)),
        None => Box::new(
            crate::source::kube::KubeSource::start(args.kube_options(node_name.as_deref()))
                .await?
                .remember_in(state),
        ),
    };
    let sinks = Dispatcher::start(
        args.sink_specs()?,
        node_name.clone().unwrap_or_else(|| "-".into()),
    )?;
    let mut datapath = Datapath::load(&args.bpffs, args.map_sizes())?;
    datapath.set_attach_mode(args.attach_mode);
    // For the CNI plugin, which attaches these programs before a pod starts.
    datapath.pin_programs()?;
    let previous = datapath.config()?;
    if previous.ready != 0 {
        tracing::info!(
            generation = previous.generation,
            "adopting pinned state: the previous policy stays enforced until the source is applied"
        );
    }
    let ring = datapath
        .take_flow_events()
        .ok_or_else(|| AgentError::Config("flow event ring buffer already taken".into()))?;
    let mut agent = Agent {
        tuning: args.tuning(),
        datapath,
        globs,
        source,
        enricher: Enricher::new(node_name.clone()),
        sinks,
        metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
        last_objects: ObjectDigests::new(),
        last_trim: None,
        node_name,
        generation: previous.generation,
        attach_failures: BTreeMap::new(),
        pending: None,
        full_maps: Vec::new(),
        conntrack_insert_failures: GrowthWatch::default(),
        args,
        bindings: Bindings::default(),
        discovery: Default::default(),
    };
    // Bindings before the policy, so the first sync keeps pod addresses bound (a restart
    // must not unbind them); policy before interfaces: a newly attached interface is
    // enforced from its first packet.
    let interfaces = agent.pod_interfaces().unwrap_or_default();
    agent.refresh_bindings(&interfaces);
    agent.reload()?;
    // Subscribed before the first scan: an interface created after it is announced.
    let mut first_packet = first_packet::FirstPacket::start(&agent.args.first_packet)?;
    agent.scan_interfaces()?;
    agent.sync_uplinks(&mut first_packet);
    if agent.generation != 0 {
        agent.write_ready_file()?;
    }

    // SAFETY: the ring buffer owns its file descriptor; it stays open and unchanged for
    // as long as the RingBuf (moved into the AsyncFd) lives.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|error| AgentError::Io {
            what: "watching the flow event ring buffer".into(),
            source: std::io::Error::other(error.to_string()),
        })?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| AgentError::Io {
        what: "installing the SIGTERM handler".into(),
        source,
    })?;
    let mut poll = tokio::time::interval(Duration::from_millis(agent.args.poll_ms));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expiry = tokio::time::interval(Duration::from_millis(agent.args.ct_gc_interval_ms));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_clock_sync = Instant::now();
    let changes = agent.source.changes();
    if let Some(address) = agent.args.metrics_address {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| AgentError::Io {
                what: format!("binding the metrics address {address}"),
                source,
            })?;
        let limits = agent.args.metrics_limits();
        tokio::spawn(crate::metrics::serve(
            listener,
            agent.metrics.clone(),
            limits,
        ));
        if address.ip().is_unspecified() {
            // Not refused (a node may need it), but the endpoint then answers on every
            // address of the host, the ones facing outside included.
            tracing::warn!(%address, "metrics served on every address of this host; bind the node's own address (e.g. [$(HOST_IP)]:9965) or 127.0.0.1 instead");
        }
        tracing::info!(%address, max_connections = limits.max_connections, "metrics, /healthz and /readyz served");
    }
    agent.observe();
    tracing::info!(
        source = %agent.source.describe(),
        bpffs = %agent.args.bpffs.display(),
        interfaces = ?agent.args.interfaces,
        "zonewall agent running"
    );
    // After a drain, the next one waits at least this long: events then arrive in batches
    // instead of waking the agent one by one (a wake-up costs more than encoding a
    // record). The ring holds far more than this many milliseconds of events at any rate
    // the encoder keeps up with.
    const DRAIN_PAUSE: Duration = Duration::from_millis(2);
    let mut next_drain = tokio::time::Instant::now();
    loop {
        let rescan_at = first_packet.rescan_at();
        tokio::select! {
            guard = async {
                tokio::time::sleep_until(next_drain).await;
                ring.readable_mut().await
            } => {
                let mut guard = guard.map_err(|source| AgentError::Io { what: "ring buffer".into(), source })?;
                agent.drain_events(guard.get_inner_mut())?;
                guard.clear_ready();
                next_drain = tokio::time::Instant::now() + DRAIN_PAUSE;
            }
            _ = sleep_until(agent.retry_due()) => {
                if agent.retry_apply() && agent.generation != 0 {
                    agent.write_ready_file()?;
                }
                agent.observe();
            }
            _ = wait_for_changes(&changes) => {
                if agent.reload()? && agent.generation != 0 {
                    agent.write_ready_file()?;
                }
            }
            events = first_packet.next() => {
                if agent.on_link_events(&mut first_packet, events) && agent.generation != 0 {
                    agent.write_ready_file()?;
                }
            }
            _ = sleep_until(rescan_at) => {
                first_packet.rescanned();
                agent.sync_uplinks(&mut first_packet);
                if agent.scan_interfaces()? && agent.generation != 0 {
                    agent.write_ready_file()?;
                }
                agent.observe();
            }
            _ = poll.tick() => {
                first_packet.rescanned();
                let policy_changed = agent.reload()?;
                let interfaces_changed = agent.scan_interfaces()?;
                agent.sync_uplinks(&mut first_packet);
                agent.observe();
                if (policy_changed || interfaces_changed) && agent.generation != 0 {
                    agent.write_ready_file()?;
                }
            }
            _ = expiry.tick() => {
                agent.expire()?;
                agent.drain_events(ring.get_mut())?;
                if last_clock_sync.elapsed() > Duration::from_secs(60) {
                    agent.enricher.resync_clock();
                    last_clock_sync = Instant::now();
                }
            }
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: stopping; enforcement stays in place (pinned)");
                break;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("SIGINT: stopping; enforcement stays in place (pinned)");
                break;
            }
        }
    }
    agent.drain_events(ring.get_mut())?;
    let counters = agent.datapath.counters()?;
    let summary: BTreeMap<&str, u64> = firewall_common::COUNTER_NAMES
        .iter()
        .copied()
        .zip(counters)
        .filter(|(_, value)| *value != 0)
        .collect();
    tracing::info!(?summary, "counters at exit");
    agent.sinks.shutdown(Duration::from_secs(3));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(yaml: &str) -> crate::policy::Validated {
        crate::policy::parse(yaml).expect("a valid test input")
    }

    const ZONES: &str = "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: a}\nspec: {networks: [\"10.1.0.0/16\"]}\n---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: b}\nspec: {networks: [\"10.2.0.0/16\"]}\n";

    fn policy(name: &str, port: u16) -> String {
        format!(
            "---\napiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {{name: {name}}}\nspec: {{from: [a], to: [b], ports: [{{protocol: TCP, port: {port}}}], action: Allow}}\n"
        )
    }

    #[test]
    fn backoff_doubles_from_the_first_delay_up_to_the_cap() {
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        assert_eq!(backoff.failures(), 0);
        let delays: Vec<u64> = (0..12)
            .map(|_| backoff.failed().as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
            ]
        );
        assert_eq!(backoff.failures(), 12);
        // Far past any shift width it stays at the cap instead of overflowing.
        for _ in 0..100 {
            assert_eq!(backoff.failed(), RETRY_MAX);
        }
    }

    #[test]
    fn growth_watch_warns_once_per_period_with_what_grew() {
        let start = Instant::now();
        let mut watch = GrowthWatch::default();
        assert_eq!(watch.update(0, start), (0, None));
        assert_eq!(watch.update(0, start), (0, None));
        // Growth warns at once...
        assert_eq!(watch.update(5, start), (5, Some(5)));
        // ...further growth within the period is counted but not warned about...
        let soon = start + Duration::from_secs(1);
        assert_eq!(watch.update(7, soon), (2, None));
        assert_eq!(watch.update(8, soon), (1, None));
        // ...until the period passed: then the warning carries all of it.
        let later = start + GROWTH_WARNING_EVERY;
        assert_eq!(watch.update(8, later), (0, Some(3)));
        assert_eq!(watch.update(8, later + GROWTH_WARNING_EVERY), (0, None));
        // Maps recreated: a smaller total is a new start, not a negative increase.
        assert_eq!(watch.update(2, later + GROWTH_WARNING_EVERY * 2), (0, None));
        assert_eq!(
            watch.update(4, later + GROWTH_WARNING_EVERY * 3),
            (2, Some(2))
        );
        // A first reading counts what the pinned counter already holds.
        let mut restarted = GrowthWatch::default();
        assert_eq!(restarted.update(9, start), (9, Some(9)));
    }

    #[test]
    fn changed_objects_names_added_removed_and_edited_zones_and_policies() {
        let first = object_digests(&set(&format!(
            "{ZONES}{}{}",
            policy("web", 443),
            policy("db", 5432)
        )));
        assert_eq!(
            changed_objects(&ObjectDigests::new(), &first),
            ["Zone/a", "Zone/b", "ZonePolicy/db", "ZonePolicy/web"]
        );
        assert!(changed_objects(&first, &first).is_empty());
        let second = object_digests(&set(&format!(
            "{}{}{}",
            ZONES.replace("10.2.0.0/16", "10.3.0.0/16"),
            policy("web", 8443),
            policy("dns", 53)
        )));
        assert_eq!(
            changed_objects(&first, &second),
            [
                "Zone/b",
                "ZonePolicy/db",
                "ZonePolicy/dns",
                "ZonePolicy/web"
            ]
        );
        // Pods are not named: they change with every rollout.
        let with_pod = object_digests(&set(&format!(
            "{ZONES}{}{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: n}}\nstatus: {{podIP: 10.1.0.5}}\n",
            policy("web", 443),
            policy("db", 5432)
        )));
        assert!(changed_objects(&first, &with_pod).is_empty());
    }
}
