//! The node agent's run loop: load and pin the datapath, take the policy from its source
//! (a standalone YAML file with `--config`, otherwise the cluster's API server), enforce
//! it on the pod interfaces as both change, and drain the flow events into the sinks.
//! Nothing it does on exit opens the firewall: programs stay attached through pinned
//! links.
//!
//! `apply` turns policy inputs into datapath generations, `interfaces` follows the pod
//! interfaces, `observe` mirrors the datapath into the metrics every round; the flow path
//! itself is `crate::flows`.

mod apply;
mod first_packet;
mod interfaces;
mod observe;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use globset::GlobSet;
use tokio::io::unix::AsyncFd;

use self::apply::{ObjectDigests, PendingApply};
use self::interfaces::{AttachFailure, glob_set};
use self::observe::GrowthWatch;
use crate::config::RunArgs;
use crate::datapath::{Datapath, Tuning, binding::Bindings};
use crate::flows::{Dispatcher, Enricher, FlowPath, Record};
use crate::source::{FileSource, PolicySource};

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

fn default_node_name() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
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

    /// The flow path's stops after the ring buffer, as this agent holds them.
    fn flow_path(&self) -> FlowPath<'_> {
        FlowPath {
            enricher: &self.enricher,
            metrics: &self.metrics.flow,
            sinks: &self.sinks,
        }
    }

    /// End records for the conntrack entries that expired.
    fn expire(&mut self) {
        let now = crate::datapath::monotonic_ns();
        match self.datapath.expire_conntrack(now) {
            Ok(ended) => self.flow_path().expired(&ended),
            Err(error) => tracing::warn!(%error, "conntrack ageing failed; retried next round"),
        }
    }

    /// Hands one record to the sinks (never blocks; each sink counts what it loses).
    fn write_record(&mut self, record: Record) {
        self.sinks.send(std::sync::Arc::new(record));
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
                agent.flow_path().drain(guard.get_inner_mut());
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
                agent.expire();
                agent.flow_path().drain(ring.get_mut());
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
    agent.flow_path().drain(ring.get_mut());
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
mod tests;
