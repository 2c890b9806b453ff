//! Flow records: kernel events (ring buffer) and conntrack expiries become records
//! enriched with zone, pod, namespace and the policy that decided, encoded as JSON, OCSF
//! or CEF and written to any number of sinks (files, stdout, syslog over UDP/TCP/TLS).

pub mod format;
mod record;
mod sink;

pub use format::{Encoder, Format};
pub use record::{
    Enricher, FlowId, FlowRecord, Name, Owner, Peer, PolicyChangeRecord, Protocol, Record,
    RecordId, TcpFlags, Timestamp, decode, protocol_name, tcp_flag_names,
};
pub use sink::{Dispatcher, Sampling, SinkError, SinkSpec, SinkStats, Target, TlsSettings};
