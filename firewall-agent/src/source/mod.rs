//! Sources of truth for the policy and the identities: the standalone file (this module);
//! Kubernetes watchers come later.

mod file;

pub use file::{FileSource, FileState};
