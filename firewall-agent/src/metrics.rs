//! Prometheus metrics (the prometheus-client crate) and the health endpoints, served over
//! a minimal HTTP/1.1 responder: `/metrics`, `/healthz` (the run loop is alive) and
//! `/readyz` (a policy is enforced, the source is in sync, the last policy was written
//! whole and every pod interface is attached; otherwise a 503 whose body names what is
//! wrong).
//!
//! The endpoint is reachable by anything that can reach its address, so it is bounded: a
//! fixed number of connections at a time (the rest are closed at once and counted),
//! deadlines to read a request and to write the answer, and a backoff after failed
//! accepts so that running out of file descriptors cannot spin a core.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::flows::{FlowRecord, SinkStats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZonePairLabels {
    pub src_zone: String,
    pub dst_zone: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
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

/// What readiness depends on. The agent fills it every round; [`Readiness::reasons`]
/// says, in words an operator can act on, why it is not ready.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// A policy generation is enforced (this agent's or one it adopted).
    pub policy_enforced: bool,
    pub source_synced: bool,
    /// Pod interfaces left without the programs: (interface, attempts, last error).
    pub unprotected: Vec<(String, u32, String)>,
    /// The newest policy could not be written: the map at fault (if known), the error,
    /// and the attempts so far.
    pub apply_failed: Option<ApplyFailure>,
    /// What the policy source fails at now, one line each (see
    /// [`crate::source::SourceHealth::failing`]).
    pub source_failing: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyFailure {
    pub map: Option<String>,
    pub error: String,
    pub attempts: u32,
}

impl Readiness {
    /// One line per reason not to be ready; empty when ready.
    pub fn reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.policy_enforced {
            reasons.push("no policy enforced yet".to_owned());
        }
        if !self.source_synced {
            reasons.push("the policy source is not in sync".to_owned());
        }
        reasons.extend(self.source_failing.iter().cloned());
        for (interface, attempts, error) in &self.unprotected {
            reasons.push(format!(
                "interface {interface} is NOT protected: attach failed {attempts} time(s), retrying: {error}"
            ));
        }
        if let Some(failure) = &self.apply_failed {
            let map = failure
                .map
                .as_deref()
                .map(|map| format!(" (map {map})"))
                .unwrap_or_default();
            reasons.push(format!(
                "the newest policy could not be written{map}: failed {} time(s), retrying; the previous policy stays enforced: {}",
                failure.attempts, failure.error
            ));
        }
        reasons
    }
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    pub flows: Family<ZonePairLabels, Counter>,
    pub packets: Family<ZonePairLabels, Counter>,
    pub bytes: Family<ZonePairLabels, Counter>,
    pub denials: Family<PolicyLabels, Counter>,
    pub datapath: Family<ReasonLabels, Gauge>,
    pub ringbuf_lost: Gauge,
    pub sink_written: Family<SinkLabels, Gauge>,
    pub sink_lost: Family<SinkLabels, Gauge>,
    pub sink_resent: Family<SinkLabels, Gauge>,
    pub sink_connected: Family<SinkLabels, Gauge>,
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
    /// Packets and bytes already counted per flow id (updates report running totals).
    reported: Mutex<HashMap<u64, (u64, u64)>>,
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
            flows: Family::default(),
            packets: Family::default(),
            bytes: Family::default(),
            denials: Family::default(),
            datapath: Family::default(),
            ringbuf_lost: Gauge::default(),
            sink_written: Family::default(),
            sink_lost: Family::default(),
            sink_resent: Family::default(),
            sink_connected: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            generation: Gauge::default(),
            sync_seconds: Histogram::new(
                [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5].into_iter(),
            ),
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
            reported: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            last_tick: AtomicU64::new(0),
            started: Instant::now(),
            registry: Registry::default(),
        };
        registry.register(
            "flows",
            "Flows seen, by source zone, destination zone and verdict",
            metrics.flows.clone(),
        );
        registry.register(
            "packets",
            "Packets of logged flows, by zone pair and verdict",
            metrics.packets.clone(),
        );
        registry.register(
            "bytes",
            "Bytes of logged flows, by zone pair and verdict",
            metrics.bytes.clone(),
        );
        registry.register(
            "denials",
            "Denied flows by the policy (or default) that denied them",
            metrics.denials.clone(),
        );
        registry.register(
            "datapath_packets",
            "Datapath counters by reason (packets)",
            metrics.datapath.clone(),
        );
        registry.register(
            "ringbuf_lost_events",
            "Flow events the ring buffer had no room for",
            metrics.ringbuf_lost.clone(),
        );
        registry.register(
            "sink_written_records",
            "Records written by each sink",
            metrics.sink_written.clone(),
        );
        registry.register(
            "sink_lost_records",
            "Records each sink lost (queue full or write failed)",
            metrics.sink_lost.clone(),
        );
        registry.register(
            "sink_resent_records",
            "Records sent again after a reconnect",
            metrics.sink_resent.clone(),
        );
        registry.register(
            "sink_connected",
            "1 when a stream sink is connected",
            metrics.sink_connected.clone(),
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

    /// Counts a flow record.
    pub fn record_flow(&self, record: &FlowRecord) {
        let labels = ZonePairLabels {
            src_zone: record.src.zone.to_string(),
            dst_zone: record.dst.zone.to_string(),
            verdict: record.verdict.to_owned(),
        };
        match record.event {
            "start" | "audit" => {
                self.flows.get_or_create(&labels).inc();
            }
            "deny" => {
                let denied = 1 + record.suppressed as u64;
                self.flows.get_or_create(&labels).inc_by(denied);
                self.packets.get_or_create(&labels).inc_by(denied);
                self.bytes.get_or_create(&labels).inc_by(record.bytes);
                self.denials
                    .get_or_create(&PolicyLabels {
                        policy: record.policy.to_string(),
                    })
                    .inc_by(denied);
            }
            "update" | "end" => {
                let Some(flow_id) = record.flow_id.map(|id| id.0) else {
                    return;
                };
                let Ok(mut reported) = self.reported.lock() else {
                    return;
                };
                let (packets, bytes) = reported.get(&flow_id).copied().unwrap_or_default();
                self.packets
                    .get_or_create(&labels)
                    .inc_by(record.packets.saturating_sub(packets));
                self.bytes
                    .get_or_create(&labels)
                    .inc_by(record.bytes.saturating_sub(bytes));
                if record.event == "end" {
                    reported.remove(&flow_id);
                } else {
                    reported.insert(flow_id, (record.packets, record.bytes));
                }
            }
            _ => {}
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
        if let Some(lost) = counters.get(firewall_common::COUNTER_RINGBUF_FULL as usize) {
            self.ringbuf_lost.set(*lost as i64);
        }
        for (url, stats) in sinks {
            let labels = SinkLabels { sink: url.clone() };
            self.sink_written
                .get_or_create(&labels)
                .set(stats.written.load(Ordering::Relaxed) as i64);
            self.sink_lost
                .get_or_create(&labels)
                .set(stats.lost() as i64);
            self.sink_resent
                .get_or_create(&labels)
                .set(stats.resent.load(Ordering::Relaxed) as i64);
            self.sink_connected
                .get_or_create(&labels)
                .set(stats.connected.load(Ordering::Relaxed) as i64);
        }
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

    fn healthy(&self) -> bool {
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

/// How much the metrics endpoint serves at once, and how long it waits for a client.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Connections served at the same time; more are closed at once and counted.
    pub max_connections: usize,
    /// Time a client has to send its whole request head.
    pub read_timeout: Duration,
    /// Time a client has to take the whole answer.
    pub write_timeout: Duration,
}

/// Connections served at once by default: Prometheus and the kubelet's three probes need
/// a handful; a client that opens more only starves itself.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Largest request head read; anything longer is answered from what was read.
const MAX_HEAD: usize = 8192;

/// Pauses after failed accepts and decides which failures are logged.
///
/// A listener whose accept fails (EMFILE, ENFILE, ENOBUFS) stays readable, because the
/// connection it could not take is still queued: retrying at once would spin. The pause
/// doubles from [`AcceptBackoff::FIRST`] up to [`AcceptBackoff::LONGEST`] and starts over
/// after an accept succeeds. The first failure of a series is logged, later ones at most
/// once per [`AcceptBackoff::LOG_EVERY`] with the number left unlogged in between.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    pause: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
}

/// What to do after one failed accept.
#[derive(Debug, PartialEq, Eq)]
pub struct AcceptFailure {
    /// How long to wait before accepting again.
    pub pause: Duration,
    /// `Some(n)`: log this failure, saying that `n` failures before it were not logged.
    pub log: Option<u64>,
}

impl AcceptBackoff {
    pub const FIRST: Duration = Duration::from_millis(10);
    pub const LONGEST: Duration = Duration::from_secs(1);
    pub const LOG_EVERY: Duration = Duration::from_secs(10);

    pub fn failed(&mut self, now: Instant) -> AcceptFailure {
        self.pause = if self.pause.is_zero() {
            Self::FIRST
        } else {
            (self.pause * 2).min(Self::LONGEST)
        };
        let due = self
            .last_logged
            .is_none_or(|last| now.saturating_duration_since(last) >= Self::LOG_EVERY);
        let log = if due {
            self.last_logged = Some(now);
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        };
        AcceptFailure {
            pause: self.pause,
            log,
        }
    }

    /// An accept worked: the next failure starts a new series with the shortest pause.
    /// The log limit stays, so alternating failures and successes still log rarely.
    pub fn succeeded(&mut self) {
        self.pause = Duration::ZERO;
    }
}

/// Serves the metrics and health endpoints until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, limits: ServeLimits) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(error) => {
                metrics.endpoint_accept_errors.inc();
                let failure = backoff.failed(Instant::now());
                if let Some(unlogged) = failure.log {
                    tracing::warn!(
                        %error,
                        retry_in_ms = failure.pause.as_millis() as u64,
                        failures_not_logged = unlogged,
                        "metrics endpoint cannot accept connections"
                    );
                }
                tokio::time::sleep(failure.pause).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Closed unanswered: waiting for a slot would let a client that holds every
            // slot queue up the others, and the kubelet retries its probes anyway.
            metrics.endpoint_refused.inc();
            tracing::debug!(%peer, limit = limits.max_connections, "metrics connection refused: limit reached");
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            answer(stream, &metrics, limits).await;
            drop(permit);
        });
    }
}

/// Reads one request head and writes the answer, each within its deadline.
async fn answer(mut stream: tokio::net::TcpStream, metrics: &Metrics, limits: ServeLimits) {
    // Whatever the segmentation: read until the blank line, MAX_HEAD or the deadline.
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limits.read_timeout;
    while !request.windows(4).any(|window| window == b"\r\n\r\n") && request.len() < MAX_HEAD {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(read)) => request.extend_from_slice(&chunk[..read]),
        }
    }
    let head = String::from_utf8_lossy(&request);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = match path {
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" if metrics.healthy() => ("200 OK", "text/plain", "ok\n".into()),
        "/healthz" => (
            "503 Service Unavailable",
            "text/plain",
            "run loop stalled\n".into(),
        ),
        "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
            ("200 OK", "text/plain", "ready\n".into())
        }
        "/readyz" => (
            "503 Service Unavailable",
            "text/plain",
            metrics.not_ready_body(),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A client that stops reading would otherwise hold its slot for good.
    let _ = tokio::time::timeout(limits.write_timeout, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_up_to_the_longest_pause_and_starts_over_after_a_success() {
        let mut backoff = AcceptBackoff::default();
        let now = Instant::now();
        let pauses: Vec<Duration> = (0..10).map(|_| backoff.failed(now).pause).collect();
        assert_eq!(pauses[0], AcceptBackoff::FIRST);
        assert_eq!(pauses[1], AcceptBackoff::FIRST * 2);
        assert!(
            pauses.windows(2).all(|pair| pair[1] >= pair[0]),
            "{pauses:?}"
        );
        assert_eq!(*pauses.last().unwrap(), AcceptBackoff::LONGEST);
        // A failing listener costs at most a few wake-ups per second once backed off.
        let first_second: Duration = pauses.iter().take(7).sum();
        assert!(first_second >= Duration::from_secs(1), "{pauses:?}");
        backoff.succeeded();
        assert_eq!(backoff.failed(now).pause, AcceptBackoff::FIRST);
    }

    #[test]
    fn accept_failures_are_logged_once_per_interval_with_the_count_left_out() {
        let mut backoff = AcceptBackoff::default();
        let start = Instant::now();
        assert_eq!(
            backoff.failed(start).log,
            Some(0),
            "the first failure is logged"
        );
        for step in 1..=5 {
            let now = start + Duration::from_millis(step * 100);
            assert_eq!(backoff.failed(now).log, None);
        }
        backoff.succeeded();
        assert_eq!(
            backoff.failed(start + Duration::from_secs(1)).log,
            None,
            "a success in between does not lift the log limit"
        );
        assert_eq!(
            backoff.failed(start + AcceptBackoff::LOG_EVERY).log,
            Some(6),
            "the next logged failure names the six left out"
        );
    }

    /// A server on loopback with short deadlines; the run loop counts as alive.
    async fn endpoint(limits: ServeLimits) -> (std::net::SocketAddr, Arc<Metrics>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("loopback listener");
        let address = listener.local_addr().expect("bound address");
        let metrics = Arc::new(Metrics::new());
        metrics.tick();
        tokio::spawn(serve(listener, metrics.clone(), limits));
        (address, metrics)
    }

    async fn get(address: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: node\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await
            .map_err(|_| std::io::Error::other("no answer within 5 s"))??;
        Ok(response)
    }

    /// Whether the server closes `stream` (end of file or reset) within `within`.
    async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(within, stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_at_once_and_counted() {
        let limits = ServeLimits {
            max_connections: 4,
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
        };
        let (address, metrics) = endpoint(limits).await;
        // Idle clients that send nothing hold every slot.
        let mut idle = Vec::new();
        for _ in 0..limits.max_connections {
            idle.push(
                tokio::net::TcpStream::connect(address)
                    .await
                    .expect("connect"),
            );
        }
        // Each holds its slot only once the server accepted it: wait for that.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut excess = Vec::new();
        while metrics.endpoint_refused.get() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no connection refused"
            );
            excess.push(
                tokio::net::TcpStream::connect(address)
                    .await
                    .expect("connect"),
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for _ in 0..6 {
            excess.push(
                tokio::net::TcpStream::connect(address)
                    .await
                    .expect("connect"),
            );
        }
        let refused_at_least = excess.len() as u64 - 1;
        for stream in &mut excess[1..] {
            assert!(
                closed_by_server(stream, Duration::from_secs(2)).await,
                "a connection over the limit is closed at once"
            );
        }
        assert!(metrics.endpoint_refused.get() >= refused_at_least);
        // The idle ones are still open: nobody else was closed to make room.
        for stream in &mut idle {
            assert!(!closed_by_server(stream, Duration::from_millis(50)).await);
        }
        assert!(
            metrics
                .encode()
                .contains("zonewall_metrics_connections_refused_total"),
            "the refusals are exported"
        );
        // Once the idle clients go, the endpoint answers again.
        drop(idle);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match get(address, "/healthz").await {
                Ok(response) if response.starts_with("HTTP/1.1 200") => break,
                other => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "/healthz after the idle clients left: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_loses_its_slot_at_the_read_deadline() {
        let limits = ServeLimits {
            max_connections: 1,
            read_timeout: Duration::from_millis(300),
            write_timeout: Duration::from_millis(300),
        };
        let (address, metrics) = endpoint(limits).await;
        let mut silent = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let started = tokio::time::Instant::now();
        // It is answered (404, from an empty head) and closed once the deadline passes.
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), silent.read_to_string(&mut response))
            .await
            .expect("closed by the server within 5 s")
            .expect("read");
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        let healthz = get(address, "/healthz").await.expect("/healthz");
        assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
        assert_eq!(metrics.endpoint_refused.get(), 0);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_loses_its_slot_at_the_write_deadline() {
        let limits = ServeLimits {
            max_connections: 1,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_millis(300),
        };
        let (address, metrics) = endpoint(limits).await;
        // A /metrics answer far larger than the socket buffers, never read.
        for index in 0..70_000 {
            metrics.map_fill(
                &format!("map-with-a-long-name-to-fill-the-answer-{index}"),
                1,
                2,
            );
        }
        let answer_len = metrics.encode().len();
        assert!(answer_len > 8 << 20, "the answer is {answer_len} bytes");
        let mut stalled = std::net::TcpStream::connect(address).expect("connect");
        // The smallest receive buffer the kernel allows, so the write blocks early.
        let size: libc::c_int = 1;
        // SAFETY: setsockopt with a valid fd and a correctly sized int.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&stalled),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        std::io::Write::write_all(&mut stalled, b"GET /metrics HTTP/1.1\r\n\r\n").expect("send");
        // While the stalled client holds the only slot, others are refused; after the
        // write deadline the slot is free and /healthz answers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match get(address, "/healthz").await {
                Ok(response) if response.starts_with("HTTP/1.1 200") => break,
                other => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "/healthz while a client does not read: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        assert!(
            metrics.endpoint_refused.get() > 0,
            "the stalled client held the only slot for a while"
        );
        drop(stalled);
    }

    #[test]
    fn readiness_names_every_reason() {
        let ready = Readiness {
            policy_enforced: true,
            source_synced: true,
            ..Default::default()
        };
        assert!(ready.reasons().is_empty());
        assert!(Readiness::default().reasons().len() == 2);

        let broken = Readiness {
            unprotected: vec![("veth-a".into(), 3, "pin failed".into())],
            apply_failed: Some(ApplyFailure {
                map: Some("ENDPOINTS".into()),
                error: "map ENDPOINTS is full (8 entries)".into(),
                attempts: 2,
            }),
            ..ready.clone()
        };
        let reasons = broken.reasons();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("veth-a") && reasons[0].contains("pin failed"));
        assert!(reasons[1].contains("map ENDPOINTS") && reasons[1].contains("previous policy"));

        let metrics = Metrics::new();
        metrics.set_readiness(&broken);
        assert!(!metrics.ready.load(Ordering::Relaxed));
        let body = metrics.not_ready_body();
        assert!(
            body.contains("veth-a") && body.contains("ENDPOINTS"),
            "{body}"
        );
        assert!(
            metrics
                .encode()
                .contains("zonewall_interfaces_unprotected 1")
        );
        metrics.set_readiness(&ready);
        assert!(metrics.ready.load(Ordering::Relaxed));
        assert!(
            metrics
                .encode()
                .contains("zonewall_interfaces_unprotected 0")
        );

        let failing = Readiness {
            source_failing: vec![
                "zones: list failed: 403 Forbidden: zones.zonewall.dev is forbidden".into(),
            ],
            ..ready.clone()
        };
        metrics.set_readiness(&failing);
        assert!(!metrics.ready.load(Ordering::Relaxed));
        assert_eq!(
            metrics.not_ready_body(),
            "not ready: zones: list failed: 403 Forbidden: zones.zonewall.dev is forbidden\n"
        );
    }

    #[test]
    fn source_failures_are_mirrored_as_running_totals() {
        use crate::source::{RequestFailures, SourceHealth};
        let metrics = Metrics::new();
        let health = |list: u64, watch: u64, wait: Duration| SourceHealth {
            failing: Vec::new(),
            failures: vec![
                RequestFailures {
                    kind: "zones",
                    request: "list",
                    reason: "forbidden",
                    total: list,
                },
                RequestFailures {
                    kind: "pods",
                    request: "watch",
                    reason: "connection",
                    total: watch,
                },
            ],
            retry_backoff: vec![("zones", wait), ("pods", Duration::ZERO)],
        };
        metrics.source_health(&health(2, 1, Duration::from_millis(1500)));
        metrics.source_health(&health(5, 1, Duration::from_secs(4)));
        let text = metrics.encode();
        for expected in [
            "zonewall_kube_list_failures_total{kind=\"zones\",reason=\"forbidden\"} 5",
            "zonewall_kube_watch_failures_total{kind=\"pods\",reason=\"connection\"} 1",
            "zonewall_kube_retry_backoff_seconds{kind=\"zones\"} 4.0",
            "zonewall_kube_retry_backoff_seconds{kind=\"pods\"} 0.0",
        ] {
            assert!(text.contains(expected), "{expected} not in:\n{text}");
        }
        assert!(!text.contains("zonewall_kube_list_failures_total{kind=\"pods\""));
    }
}
