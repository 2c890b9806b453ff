//! Flow records: kernel events (ring buffer) and conntrack expiries become JSON records
//! enriched with zone, pod, namespace and the policy that decided, written to a sink.

mod record;
mod sink;

pub use record::{Enricher, FlowRecord, Peer, decode, protocol_name, tcp_flag_names};
pub use sink::{FlowSink, SinkError};
