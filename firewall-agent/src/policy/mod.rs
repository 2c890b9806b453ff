//! The policy model (Zone, ZonePolicy and the Kubernetes objects whose identity they
//! describe, from a YAML stream or from the Kubernetes source), its validation and its
//! compiler. Pure: no I/O, no kernel.
//!
//! - [`parse`]: a multi-document YAML stream -> [`Validated`] set ([`DocumentCache`]
//!   does it again after a small change at the cost of the change).
//! - [`validate`]: every rule a [`PolicySet`] must follow, all problems at once; only it
//!   makes a [`Validated`].
//! - [`compile`]: [`Validated`] -> [`CompiledPolicy`], what the datapath loads, with its
//!   [`Warning`]s.
//! - [`render_check`]: a [`CompiledPolicy`] as a human reads it (`firewall-agent check`).
//!
//! Problems are [`Issue`]s and findings [`Warning`]s: structured values (kind, name,
//! field, reason) whose `Display` is the text people read.
//!
//! This file only declares and re-exports: no module here uses it, and the shared
//! helpers (`issue`, `ids`, `messages`, `model`) depend on nothing else in `policy`.

pub mod check;
pub mod compile;
pub mod compiled;
pub mod crd;
mod decode;
pub mod documents;
mod ids;
mod issue;
mod load;
mod messages;
pub mod model;
#[cfg(test)]
mod testing;
pub mod validate;

pub use check::render_check;
pub use compile::compile;
pub use compiled::{CompiledPolicy, Subject, Warning};
pub use documents::DocumentCache;
pub use ids::zone_id;
pub use issue::{Issue, PolicyError};
pub use load::{load_str, parse};
pub use model::PolicySet;
pub use validate::{Rejected, Validated, validate};
