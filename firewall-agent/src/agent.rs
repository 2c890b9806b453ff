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
use crate::datapath::{Datapath, MapSizes, Tuning};
use crate::flows::{Dispatcher, Enricher, Record, decode};
use crate::policy::{self, compiled::CompiledPolicy, compiled::EndpointKind};
use crate::source::{FileSource, Outcome, PolicySource, SourceUpdate};

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
        let report = self.datapath.sync(compiled, &self.tuning, is_local)?;
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
        let compiled = match policy::compile(&set) {
            Ok(compiled) => compiled,
            Err(error) => {
                tracing::error!(source = %source_name, error = %error, "policy rejected; the last good policy stays enforced");
                self.source.outcome(Outcome::Rejected(&error));
                let changed = changed_objects(&self.last_objects, &object_digests(&set));
                self.policy_change("rejected", changed, Some(error.to_string()));
                return Ok(false);
            }
        };
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
        let previous_generation = self.generation;
        let applied = match self.apply(&compiled) {
            Ok(()) => {
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
                tracing::error!(%error, "policy could not be written to the datapath; the previous policy stays enforced");
                self.source.outcome(Outcome::Failed(error.to_string()));
                self.policy_change("failed", changed, Some(error.to_string()));
                false
            }
        };
        drop(compiled);
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

    /// Attaches to new matching interfaces and lets go of vanished ones.
    fn scan_interfaces(&mut self) -> Result<bool, AgentError> {
        let wanted: Vec<(String, u32)> = crate::datapath::interfaces()
            .into_iter()
            .filter(|(name, _)| self.globs.is_match(name))
            .collect();
        let mut changed = false;
        for (name, index) in &wanted {
            if !self.datapath.is_attached(name, *index) {
                match self.datapath.attach(name, *index) {
                    Ok(()) => {
                        self.enricher.name_interface(*index, name);
                        changed = true;
                    }
                    // A veth can vanish between listing and attaching; retried next scan.
                    Err(error) => tracing::warn!(%error, "attach failed"),
                }
            }
        }
        let before = self.datapath.attached().count();
        self.datapath.prune(&wanted);
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
        if let Ok(counters) = self.datapath.counters() {
            self.metrics.observe(&counters, &self.sinks.stats());
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
        self.metrics.generation.set(self.generation as i64);
        self.metrics
            .state_file_errors_total(self.source.state_errors());
        self.metrics.ready.store(
            self.generation != 0 && self.source.synced(),
            std::sync::atomic::Ordering::Relaxed,
        );
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
    let mut datapath = Datapath::load(&args.bpffs, MapSizes::default())?;
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
        args,
    };
    // Policy before interfaces: a newly attached interface is enforced from its first packet.
    agent.reload()?;
    agent.scan_interfaces()?;
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
        tokio::spawn(crate::metrics::serve(listener, agent.metrics.clone()));
        tracing::info!(%address, "metrics, /healthz and /readyz served");
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
            _ = wait_for_changes(&changes) => {
                if agent.reload()? && agent.generation != 0 {
                    agent.write_ready_file()?;
                }
            }
            _ = poll.tick() => {
                let policy_changed = agent.reload()?;
                let interfaces_changed = agent.scan_interfaces()?;
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

    fn set(yaml: &str) -> crate::policy::PolicySet {
        crate::policy::parse(yaml).expect("a valid test input")
    }

    const ZONES: &str = "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: a}\nspec: {networks: [\"10.1.0.0/16\"]}\n---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: b}\nspec: {networks: [\"10.2.0.0/16\"]}\n";

    fn policy(name: &str, port: u16) -> String {
        format!(
            "---\napiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {{name: {name}}}\nspec: {{from: [a], to: [b], ports: [{{protocol: TCP, port: {port}}}], action: Allow}}\n"
        )
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
