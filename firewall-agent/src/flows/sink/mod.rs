//! Where records go. Every sink runs on its own thread behind a bounded queue: a slow or
//! dead sink never slows the datapath reader or the other sinks; what a full queue or a
//! failed write loses is counted per sink. Targets: stdout, a file with size-based
//! rotation, syslog (RFC 5424) over UDP, TCP (RFC 6587 octet counting) and TLS.
//!
//! A sink is named by a URL, e.g. `syslog+tls://siem.example:6514?format=ocsf&ca=/ca.pem`:
//!
//! | parameter | meaning |
//! | --- | --- |
//! | `format` | `json` (default), `ocsf` (Network Activity 4001) or `cef` |
//! | `fields` | JSON only: comma-separated dotted fields to keep (`time,event,src.ip`) |
//! | `sample` | allowed flows only: `FROM/TO=RATE,...` (`*` for any zone), first match wins |
//! | `queue` | records the sink may hold before dropping (default 65536) |
//! | `max-size`, `keep` | files: rotate at this size (`100M`), keep this many old files |
//! | `ca`, `cert`, `key`, `server-name` | TLS: CA bundle, client certificate and key (PEM) |
//! | `replay` | TCP/TLS: bytes of recent messages re-sent after a reconnect (default 4M) |
//!
//! `spec` reads the URL, `queue` hands records to each sink's thread and runs it, `file`
//! and `syslog` write, `stats` counts what each sink wrote and lost.

mod file;
mod queue;
mod spec;
mod stats;
mod syslog;

pub use queue::Dispatcher;
pub use spec::{Sampling, SinkError, SinkSpec, Target, TlsSettings};
pub use stats::SinkStats;
