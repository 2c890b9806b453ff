//! zonewall's node agent as a library: the pure policy compiler, identity bookkeeping, the
//! eBPF datapath, flow records, and the sources of truth (a standalone file, or the
//! Kubernetes API). The binary (`firewall-agent`) is a thin wrapper around it.

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

/// Errors of the agent library, one variant per module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    Datapath(#[from] datapath::DatapathError),
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    #[error(transparent)]
    Cni(#[from] cni::spec::CniError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
