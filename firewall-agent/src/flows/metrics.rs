//! The flow path's metrics: flows, packets and bytes by zone pair and verdict, denials by
//! policy, ring-buffer losses, and what each sink wrote, lost and sent again. Registered
//! with the agent's other metrics (`crate::metrics`), which export them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::record::FlowRecord;
use super::sink::SinkStats;

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
pub struct SinkLabels {
    pub sink: String,
}

/// Every metric of the flow path.
#[derive(Debug, Default)]
pub struct FlowMetrics {
    pub flows: Family<ZonePairLabels, Counter>,
    pub packets: Family<ZonePairLabels, Counter>,
    pub bytes: Family<ZonePairLabels, Counter>,
    pub denials: Family<PolicyLabels, Counter>,
    pub ringbuf_lost: Gauge,
    pub sink_written: Family<SinkLabels, Gauge>,
    pub sink_lost: Family<SinkLabels, Gauge>,
    pub sink_resent: Family<SinkLabels, Gauge>,
    pub sink_connected: Family<SinkLabels, Gauge>,
    /// Packets and bytes already counted per flow id (updates report running totals).
    reported: Mutex<HashMap<u64, (u64, u64)>>,
}

impl FlowMetrics {
    /// Adds every flow metric to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "flows",
            "Flows seen, by source zone, destination zone and verdict",
            self.flows.clone(),
        );
        registry.register(
            "packets",
            "Packets of logged flows, by zone pair and verdict",
            self.packets.clone(),
        );
        registry.register(
            "bytes",
            "Bytes of logged flows, by zone pair and verdict",
            self.bytes.clone(),
        );
        registry.register(
            "denials",
            "Denied flows by the policy (or default) that denied them",
            self.denials.clone(),
        );
        registry.register(
            "ringbuf_lost_events",
            "Flow events the ring buffer had no room for",
            self.ringbuf_lost.clone(),
        );
        registry.register(
            "sink_written_records",
            "Records written by each sink",
            self.sink_written.clone(),
        );
        registry.register(
            "sink_lost_records",
            "Records each sink lost (queue full or write failed)",
            self.sink_lost.clone(),
        );
        registry.register(
            "sink_resent_records",
            "Records sent again after a reconnect",
            self.sink_resent.clone(),
        );
        registry.register(
            "sink_connected",
            "1 when a stream sink is connected",
            self.sink_connected.clone(),
        );
    }

    /// Counts a flow record.
    pub fn record(&self, record: &FlowRecord) {
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

    /// Mirrors the ring buffer's loss counter (from the datapath counters) and every
    /// sink's statistics into the gauges.
    pub fn observe(&self, counters: &[u64], sinks: &[(String, std::sync::Arc<SinkStats>)]) {
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
}

#[cfg(test)]
mod tests {
    use firewall_common::{
        EVENT_DENY, EVENT_END, EVENT_START, EVENT_UPDATE, FlowEvent, VERDICT_DENY, ZONE_WORLD,
    };

    use super::*;
    use crate::flows::enrich::Enricher;

    fn counted(family: &Family<ZonePairLabels, Counter>, verdict: &str) -> u64 {
        family
            .get_or_create(&ZonePairLabels {
                src_zone: "world".into(),
                dst_zone: "world".into(),
                verdict: verdict.into(),
            })
            .get()
    }

    #[test]
    fn flows_denials_and_running_totals_are_counted_once() {
        let metrics = FlowMetrics::default();
        let enricher = Enricher::new(None);
        let event = |kind, verdict, flow_id, packets: u64, bytes: u64, suppressed| {
            enricher.event(&FlowEvent {
                kind,
                verdict,
                flow_id,
                packets: [packets, 0],
                bytes: [bytes, 0],
                suppressed,
                src_zone: ZONE_WORLD,
                dst_zone: ZONE_WORLD,
                proto: 6,
                ..FlowEvent::default()
            })
        };
        metrics.record(&event(EVENT_START, 0, 7, 1, 60, 0));
        assert_eq!(counted(&metrics.flows, "allow"), 1);
        // Updates and the end carry running totals: only what is new is added.
        metrics.record(&event(EVENT_UPDATE, 0, 7, 10, 1000, 0));
        metrics.record(&event(EVENT_UPDATE, 0, 7, 15, 1500, 0));
        metrics.record(&event(EVENT_END, 0, 7, 16, 1600, 0));
        assert_eq!(counted(&metrics.packets, "allow"), 16);
        assert_eq!(counted(&metrics.bytes, "allow"), 1600);
        // A later flow with the same id starts from zero again.
        metrics.record(&event(EVENT_END, 0, 7, 2, 100, 0));
        assert_eq!(counted(&metrics.packets, "allow"), 18);
        // A deny event stands for the denials the rate limit left out as well.
        metrics.record(&event(EVENT_DENY, VERDICT_DENY, 0, 1, 60, 4));
        assert_eq!(counted(&metrics.flows, "deny"), 5);
        assert_eq!(counted(&metrics.packets, "deny"), 5);
        assert_eq!(counted(&metrics.bytes, "deny"), 60);
        let policy = PolicyLabels {
            policy: "none".into(),
        };
        assert_eq!(metrics.denials.get_or_create(&policy).get(), 5);
        assert_eq!(counted(&metrics.flows, "allow"), 1);
    }
}
