//! What each sink wrote, lost and sent again: the counters its queue and its thread keep
//! and the metrics mirror. Losses are counted, never silent.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Per-sink counters, shared with the metrics.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub written: AtomicU64,
    /// Lost because the queue was full (the sink too slow or down).
    pub dropped_queue_full: AtomicU64,
    /// Lost because writing failed for good (e.g. UDP send error).
    pub dropped_error: AtomicU64,
    /// Sent again after a reconnect (possible duplicates, never losses).
    pub resent: AtomicU64,
    /// Left out by sampling (by configuration, not a loss).
    pub sampled_out: AtomicU64,
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
}

impl SinkStats {
    pub fn lost(&self) -> u64 {
        self.dropped_queue_full.load(Ordering::Relaxed) + self.dropped_error.load(Ordering::Relaxed)
    }
}
