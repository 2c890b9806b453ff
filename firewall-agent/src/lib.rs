//! zonewall's node agent as a library: the pure policy compiler, identity bookkeeping, the
//! eBPF datapath, flow records, and the sources of truth (a standalone file, or the
//! Kubernetes API). The binaries (`firewall-agent`, `zonewall-cni`, `zonewall-crds`) are
//! thin wrappers around it. Each module has its own error type (thiserror); the binaries
//! report them with anyhow, so no crate-wide error type is needed.

pub mod agent;
pub mod cni;
pub mod config;
pub mod crds;
pub mod datapath;
pub mod flows;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod source;
