//! The policy model (Zone, ZonePolicy and the Kubernetes objects the standalone file
//! carries), its validation and its compiler. Pure: no I/O, no kernel.
//!
//! - [`parse`]: a multi-document YAML stream -> validated [`PolicySet`].
//! - [`validate`]: every rule a [`PolicySet`] must follow, all problems at once.
//! - [`compile`]: [`PolicySet`] -> [`CompiledPolicy`], what the datapath loads.
//! - [`render_check`]: a [`CompiledPolicy`] as a human reads it (`firewall-agent check`).

pub mod check;
pub mod compile;
pub mod compiled;
pub mod crd;
mod decode;
pub mod documents;
pub mod model;
pub mod validate;

use std::fmt;

pub use check::render_check;
pub use compile::{compile, zone_id};
pub use compiled::CompiledPolicy;
pub use documents::DocumentCache;
pub use model::PolicySet;
pub use validate::validate;

/// Errors of the policy module.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The input breaks the rules; every problem found is listed.
    #[error("{}", render_issues(.0))]
    Invalid(Vec<Issue>),
}

impl PolicyError {
    /// The problems behind the error.
    pub fn issues(&self) -> &[Issue] {
        match self {
            PolicyError::Invalid(issues) => issues,
        }
    }
}

/// One problem of the input, phrased for whoever has to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// `Kind/name` (`Kind/namespace/name` for namespaced kinds), or `document N` when the
    /// object has no usable kind or name.
    pub object: String,
    /// Where in the stream, when known: `document 3` or `document 2, items[4]`.
    pub location: Option<String>,
    /// Field path such as `spec.ports[1].endPort`; empty for the object as a whole.
    pub field: String,
    /// What is wrong and what to do about it.
    pub reason: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.object)?;
        if let Some(location) = &self.location
            && *location != self.object
        {
            write!(formatter, " ({location})")?;
        }
        if !self.field.is_empty() {
            write!(formatter, ": {}", self.field)?;
        }
        write!(formatter, ": {}", self.reason)
    }
}

fn render_issues(issues: &[Issue]) -> String {
    let mut text = match issues.len() {
        1 => "invalid policy input (1 error):".to_string(),
        count => format!("invalid policy input ({count} errors):"),
    };
    for issue in issues {
        text.push_str("\n  - ");
        text.push_str(&issue.to_string());
    }
    text
}

/// Parses and validates a multi-document YAML stream of `Zone`, `ZonePolicy`,
/// `Namespace`, `Pod`, `Service`, `Node` and `List` objects.
pub fn parse(yaml: &str) -> Result<PolicySet, PolicyError> {
    let (set, mut issues, broken_zones) = decode::decode(yaml);
    // Objects that failed to decode are not in `set`; references to a broken zone would
    // only repeat its error as "unknown zone", so the validator is told their names.
    validate::validate_into(&set, &broken_zones, &mut issues);
    if issues.is_empty() {
        Ok(set)
    } else {
        Err(PolicyError::Invalid(issues))
    }
}

/// [`parse`] then [`compile`].
pub fn load_str(yaml: &str) -> Result<CompiledPolicy, PolicyError> {
    compile(&parse(yaml)?)
}
