//! The registry of every metric the agent exports (prometheus-client), and the state the
//! health endpoints answer from: readiness and the run loop's last round.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::readiness::Readiness;
use crate::flows::{FlowMetrics, SinkStats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InterfaceLabels {
    pub interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub hook: String,
}

/// A kind the Kubernetes source follows (`zones`, `pods`...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// A kind and why a request for it failed (`forbidden`, `not_found`,
/// `too_many_requests`, `server_error`, `connection`...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindReasonLabels {
    pub kind: String,
    pub reason: String,
}

/// Every metric the agent exports: the flow path's ([`FlowMetrics`], read through
/// `Deref` as if its fields were this struct's: `metrics.flows`, `metrics.sink_lost`...)
/// and the agent's own.
pub struct Metrics {
    registry: Registry,
    pub flow: FlowMetrics,
    pub datapath: Family<ReasonLabels, Gauge>,
    pub map_entries: Family<MapLabels, Gauge>,
    pub map_capacity: Family<MapLabels, Gauge>,
    pub generation: Gauge,
    pub sync_seconds: Histogram,
    pub policy_rejections: Counter,
    /// Connections to this endpoint closed unanswered because the limit was reached.
    pub endpoint_refused: Counter,
    /// Failed accepts on this endpoint's listener (e.g. out of file descriptors).
    pub endpoint_accept_errors: Counter,
    pub policy_apply_failures: Counter,
    pub map_full: Family<MapLabels, Gauge>,
    pub interfaces_unprotected: Gauge,
    pub interfaces_attached: Family<HookLabels, Gauge>,
    pub attach_failures: Family<InterfaceLabels, Counter>,
    pub conntrack_insert_failures: Counter,
    /// Failed list requests of the Kubernetes source (a streamed list included).
    pub kube_list_failures: Family<KindReasonLabels, Counter>,
    /// Failed watch requests of the Kubernetes source (a `410 Gone` is not one).
    pub kube_watch_failures: Family<KindReasonLabels, Counter>,
    /// The wait the Kubernetes source chose after a kind's last failure; 0 once a
    /// request succeeds.
    pub kube_retry_backoff: Family<KindLabels, Gauge<f64, AtomicU64>>,
    /// The /readyz body while not ready.
    not_ready: Mutex<String>,
    pub state_file_errors: Counter,
    pub ready: AtomicBool,
    last_tick: AtomicU64,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("zonewall");
        let metrics = Self {
            flow: FlowMetrics::default(),
            datapath: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            generation: Gauge::default(),
            sync_seconds: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            policy_rejections: Counter::default(),
            endpoint_refused: Counter::default(),
            endpoint_accept_errors: Counter::default(),
            policy_apply_failures: Counter::default(),
            map_full: Family::default(),
            interfaces_unprotected: Gauge::default(),
            interfaces_attached: Family::default(),
            attach_failures: Family::default(),
            conntrack_insert_failures: Counter::default(),
            kube_list_failures: Family::default(),
            kube_watch_failures: Family::default(),
            kube_retry_backoff: Family::default(),
            not_ready: Mutex::new("not ready: the agent is starting\n".to_owned()),
            state_file_errors: Counter::default(),
            ready: AtomicBool::new(false),
            last_tick: AtomicU64::new(0),
            started: Instant::now(),
            registry: Registry::default(),
        };
        metrics.flow.register(&mut registry);
        registry.register(
            "datapath_packets",
            "Datapath counters by reason (packets)",
            metrics.datapath.clone(),
        );
        registry.register(
            "map_entries",
            "Entries in a datapath map",
            metrics.map_entries.clone(),
        );
        registry.register(
            "map_capacity",
            "Capacity of a datapath map",
            metrics.map_capacity.clone(),
        );
        registry.register(
            "policy_generation",
            "Generation of the enforced policy",
            metrics.generation.clone(),
        );
        registry.register(
            "policy_sync_seconds",
            "Time to compile and write a policy",
            metrics.sync_seconds.clone(),
        );
        registry.register(
            "policy_rejections",
            "Policy inputs rejected as invalid",
            metrics.policy_rejections.clone(),
        );
        registry.register(
            "metrics_connections_refused",
            "Connections to the metrics and health endpoint closed unanswered: too many open at once",
            metrics.endpoint_refused.clone(),
        );
        registry.register(
            "metrics_accept_errors",
            "Failed accepts of the metrics and health endpoint (each followed by a backoff)",
            metrics.endpoint_accept_errors.clone(),
        );
        registry.register(
            "policy_apply_failures",
            "Attempts to write a valid policy into the datapath that failed (retried with backoff)",
            metrics.policy_apply_failures.clone(),
        );
        registry.register(
            "map_full",
            "1 while the newest policy does not fit into this map",
            metrics.map_full.clone(),
        );
        registry.register(
            "interfaces_unprotected",
            "Pod interfaces the programs could not be attached to",
            metrics.interfaces_unprotected.clone(),
        );
        registry.register(
            "interfaces_attached",
            "Pod interfaces attached, by hook (tcx or tc)",
            metrics.interfaces_attached.clone(),
        );
        registry.register(
            "attach_failures",
            "Failed attempts to attach the programs to an interface",
            metrics.attach_failures.clone(),
        );
        registry.register(
            "conntrack_insert_failures",
            "Connections the datapath could not track (CONNTRACK insert failed)",
            metrics.conntrack_insert_failures.clone(),
        );
        registry.register(
            "kube_list_failures",
            "Failed list requests to the Kubernetes API (streamed lists included), by kind and reason; retried with backoff",
            metrics.kube_list_failures.clone(),
        );
        registry.register(
            "kube_watch_failures",
            "Failed watch requests to the Kubernetes API, by kind and reason; retried with backoff",
            metrics.kube_watch_failures.clone(),
        );
        registry.register(
            "kube_retry_backoff_seconds",
            "Wait before retrying a kind's failed Kubernetes API request (0 while its requests succeed)",
            metrics.kube_retry_backoff.clone(),
        );
        registry.register(
            "state_file_errors",
            "State files (--state-dir) that could not be read, parsed or written",
            metrics.state_file_errors.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Brings the state file error counter up to the source's running total.
    pub fn state_file_errors_total(&self, total: u64) {
        let counted = self.state_file_errors.get();
        if total > counted {
            self.state_file_errors.inc_by(total - counted);
        }
    }

    /// Brings the request failure counters up to the source's running totals, and the
    /// retry waits to the source's.
    pub fn source_health(&self, health: &crate::source::SourceHealth) {
        for failures in &health.failures {
            let family = match failures.request {
                "watch" => &self.kube_watch_failures,
                _ => &self.kube_list_failures,
            };
            let counter = family.get_or_create(&KindReasonLabels {
                kind: failures.kind.to_owned(),
                reason: failures.reason.to_owned(),
            });
            let counted = counter.get();
            if failures.total > counted {
                counter.inc_by(failures.total - counted);
            }
        }
        for (kind, wait) in &health.retry_backoff {
            self.kube_retry_backoff
                .get_or_create(&KindLabels {
                    kind: (*kind).to_owned(),
                })
                .set(wait.as_secs_f64());
        }
    }

    /// Mirrors datapath counters and sink statistics into the gauges.
    pub fn observe(&self, counters: &[u64], sinks: &[(String, Arc<SinkStats>)]) {
        for (index, value) in counters.iter().enumerate() {
            if let Some(name) = firewall_common::COUNTER_NAMES.get(index) {
                self.datapath
                    .get_or_create(&ReasonLabels {
                        reason: (*name).to_owned(),
                    })
                    .set(*value as i64);
            }
        }
        self.flow.observe(counters, sinks);
    }

    /// Fill level of a map.
    pub fn map_fill(&self, map: &str, entries: usize, capacity: usize) {
        let labels = MapLabels {
            map: map.to_owned(),
        };
        self.map_entries.get_or_create(&labels).set(entries as i64);
        self.map_capacity
            .get_or_create(&labels)
            .set(capacity as i64);
    }

    /// Publishes readiness: the flag /readyz answers with and the body of its 503.
    pub fn set_readiness(&self, readiness: &Readiness) {
        let reasons = readiness.reasons();
        if let Ok(mut body) = self.not_ready.lock() {
            *body = reasons
                .iter()
                .map(|reason| format!("not ready: {reason}\n"))
                .collect();
        }
        self.interfaces_unprotected
            .set(readiness.unprotected.len() as i64);
        self.ready.store(reasons.is_empty(), Ordering::Relaxed);
    }

    /// The /readyz body while not ready.
    pub fn not_ready_body(&self) -> String {
        self.not_ready
            .lock()
            .map(|body| body.clone())
            .unwrap_or_else(|_| "not ready\n".to_owned())
    }

    /// The run loop calls this every round; /healthz fails when it stops.
    pub fn tick(&self) {
        self.last_tick
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(super) fn healthy(&self) -> bool {
        let last = Duration::from_millis(self.last_tick.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) < Duration::from_secs(10)
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

impl std::ops::Deref for Metrics {
    type Target = FlowMetrics;

    fn deref(&self) -> &FlowMetrics {
        &self.flow
    }
}
