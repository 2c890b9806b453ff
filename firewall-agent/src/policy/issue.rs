//! What is wrong with a policy input: one [`Issue`] per problem, as structured fields,
//! and [`PolicyError`] carrying all of them. The decoder and the validator make them;
//! this module depends on nothing else in `policy`.

use std::fmt;

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

/// One problem of the input: which object, where, which field, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// The object's kind as written (`Zone`, `Pod`, or a kind zonewall does not know);
    /// empty when the document has no usable kind.
    pub kind: String,
    /// `metadata.name`; empty when the object has no usable name.
    pub name: String,
    /// The namespace of a namespaced kind (`default` when the input gives none); None for
    /// cluster-scoped kinds.
    pub namespace: Option<String>,
    /// Where in the stream, when known: `document 3` or `document 2, items[4]`.
    pub location: Option<String>,
    /// Field path such as `spec.ports[1].endPort`; empty for the object as a whole.
    pub field: String,
    /// What is wrong and what to do about it, phrased for whoever has to fix it.
    pub reason: String,
    /// Set when the problem is a reference to a zone that does not exist: that zone.
    pub missing_zone: Option<String>,
}

impl Issue {
    /// An issue about `kind` `namespace`/`name`, not tied to a place in a stream.
    pub fn new(
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Issue {
            kind: kind.to_string(),
            name: name.to_string(),
            namespace: namespace.map(str::to_string),
            location: None,
            field: field.into(),
            reason: reason.into(),
            missing_zone: None,
        }
    }

    /// An issue about the document at `location`, whose object has no usable name.
    pub fn at(location: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Issue {
            location: Some(location.to_string()),
            ..Issue::new("", None, "", field, reason)
        }
    }

    /// The object as a person names it: `Kind/name`, `Kind/namespace/name` for namespaced
    /// kinds, or the location (`document N`) when the object has no usable name.
    pub fn object(&self) -> String {
        if self.name.is_empty()
            && let Some(location) = &self.location
        {
            return location.clone();
        }
        match &self.namespace {
            Some(namespace) => format!("{}/{namespace}/{}", self.kind, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let object = self.object();
        formatter.write_str(&object)?;
        if let Some(location) = &self.location
            && *location != object
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
