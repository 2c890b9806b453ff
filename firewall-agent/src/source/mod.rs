//! Sources of truth for the policy and the identities: the standalone file (`file`) and
//! the Kubernetes API (`kube`). The run loop (`agent`) is the same whatever the source: it
//! polls the source (and wakes early when the source says so), compiles what changed,
//! enforces it, and tells the source how that went (a Kubernetes source writes status
//! conditions from it). Sources hand over only validated sets.
//!
//! This file only declares and re-exports. The trait between the run loop and the
//! sources is in `policy_source`, which depends on no source.

mod file;
pub mod kube;
mod policy_source;
mod state;

pub use file::{FileSource, FileState, QUIET};
pub use policy_source::{Outcome, PolicySource, RequestFailures, SourceHealth, SourceUpdate};
pub use state::{StateDir, StateError};
