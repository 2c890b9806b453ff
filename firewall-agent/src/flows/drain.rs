//! The ring-buffer drain: the first stop of the flow path. Reads the events the TC
//! programs wrote into the `FLOW_EVENTS` ring buffer (and the conntrack entries that
//! expired in user space), and hands each on as a record: enriched, counted, queued to
//! every sink.

use aya::maps::{MapData, RingBuf};
use firewall_common::{CtKey, CtValue, FlowEvent};

use super::enrich::Enricher;
use super::metrics::FlowMetrics;
use super::record::{FlowRecord, Record};
use super::sink::Dispatcher;

/// Decodes a ring-buffer item; None when its size is not a FlowEvent's. A longer item is
/// refused too: it comes from a program with another event layout, and reading its
/// first bytes as ours would log made-up flows.
pub fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() != std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: FlowEvent is plain old data of this size; read_unaligned copes with any
    // alignment of the ring-buffer slice.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
}

/// The stops after the drain, as the agent holds them.
pub struct FlowPath<'a> {
    pub enricher: &'a Enricher,
    pub metrics: &'a FlowMetrics,
    pub sinks: &'a Dispatcher,
}

impl FlowPath<'_> {
    /// Reads every item the ring buffer holds now; returns how many it read (items of an
    /// unexpected size are skipped with a warning).
    pub fn drain(&self, ring: &mut RingBuf<MapData>) -> usize {
        let mut drained = 0;
        while let Some(item) = ring.next() {
            drained += 1;
            let Some(event) = decode(&item) else {
                tracing::warn!(size = item.len(), "flow event of unexpected size skipped");
                continue;
            };
            self.hand_on(self.enricher.event(&event));
        }
        drained
    }

    /// End records of conntrack entries that expired in user space.
    pub fn expired(&self, ended: &[(CtKey, CtValue)]) {
        for (key, value) in ended {
            self.hand_on(self.enricher.expired(key, value));
        }
    }

    /// Counts a record and hands it to every sink (never blocks; each sink counts what
    /// it loses).
    fn hand_on(&self, record: FlowRecord) {
        self.metrics.record(&record);
        self.sinks.send(std::sync::Arc::new(Record::Flow(record)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_items_of_an_events_size_are_decoded() {
        let size = std::mem::size_of::<FlowEvent>();
        let bytes: Vec<u8> = (0..=size as u8).collect();
        assert!(decode(&bytes[..size]).is_some());
        assert_eq!(decode(&bytes[..size - 1]), None);
        // Found by fuzzing: a longer item was read as if it were an event.
        assert_eq!(decode(&bytes), None);
        assert_eq!(decode(&[]), None);
    }
}
