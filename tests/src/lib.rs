//! Helpers for zonewall's integration tests: network namespaces that play pods and nodes,
//! traffic probes, and the reference evaluator of the policy semantics.

pub mod agent;
pub mod apiserver;
pub mod cluster;
pub mod fixtures;
pub mod kernel;
pub mod kube_agent;
pub mod packet;
pub mod probes;
pub mod reference;
pub mod rsyslog;
pub mod topology;
