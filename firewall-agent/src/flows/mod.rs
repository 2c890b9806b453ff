//! Flow records, from the kernel to the SIEM. A record travels through one file per stop:
//!
//! 1. `drain`: the TC programs' events are read from the ring buffer (and conntrack
//!    entries that expired in user space are picked up);
//! 2. `enrich`: each becomes a `record` naming zones, policy, pods, nodes and services
//!    (`record` is the typed record every later stop reads);
//! 3. `metrics`: it is counted by zone pair, verdict and policy;
//! 4. `sink`: it is queued, without blocking, to every sink (files, stdout, syslog over
//!    UDP/TCP/TLS), each on its own thread, which counts what it loses;
//! 5. `encode`: each sink's thread writes it as JSON, OCSF or CEF.
//!
//! Files depend on the ones before them only: record <- enrich <- encode <- sink <-
//! metrics <- drain.

mod drain;
mod encode;
mod enrich;
mod metrics;
mod record;
mod sink;

pub use drain::{FlowPath, decode};
pub use encode::{Encoder, Format};
pub use enrich::Enricher;
pub use metrics::{FlowMetrics, PolicyLabels, SinkLabels, ZonePairLabels};
pub use record::{
    FlowId, FlowRecord, Name, Owner, OwnerBatch, OwnerId, Peer, PolicyChangeRecord, Protocol,
    Record, RecordId, TcpFlags, Timestamp, protocol_name, tcp_flag_names,
};
pub use sink::{Dispatcher, Sampling, SinkError, SinkSpec, SinkStats, Target, TlsSettings};
