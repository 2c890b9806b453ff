//! Helpers for zonewall's integration tests: the agent run as a process and loaded as a
//! library, the Kubernetes API server double and the real test cluster, packets, traffic
//! kept running, the reference evaluator of the policy semantics, a real rsyslog. What
//! xtask needs as well (namespaces, topology, traffic, bpffs, fixtures) lives in the
//! test bed crate, re-exported here under its old paths.

pub mod agent;
pub mod apiserver;
pub mod cluster;
pub mod kernel;
pub mod kube_agent;
pub mod packet;
pub mod probes;
pub mod reference;
pub mod rsyslog;

pub use zonewall_testbed as testbed;
pub use zonewall_testbed::{fixtures, lab, topology};
