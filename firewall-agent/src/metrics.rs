//! Prometheus metrics (the prometheus-client crate) and the health endpoints, served over
//! a minimal HTTP/1.1 responder: `/metrics`, `/healthz` (the run loop is alive) and
//! `/readyz` (a policy is enforced and the source is in sync).

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

/// Serves the metrics and health endpoints until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // Read the request head (up to 8 KiB, 5 s), whatever the segmentation.
            let mut request = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !request.windows(4).any(|window| window == b"\r\n\r\n") && request.len() < 8192 {
                match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(read)) => request.extend_from_slice(&chunk[..read]),
                }
            }
            let read = request.len();
            let head = String::from_utf8_lossy(&request[..read]);
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
                    "no policy enforced yet, or the source is not in sync\n".into(),
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
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
