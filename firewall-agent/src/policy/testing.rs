//! Helpers the decoder's and the validator's tests share: the issues an input is refused
//! with, and the assertion that one of them names an object, a field and a reason.

use super::issue::Issue;
use super::load::parse;

/// Parses `yaml`, expecting failure, and returns the issues.
pub(super) fn issues_of(yaml: &str) -> Vec<Issue> {
    match parse(yaml) {
        Ok(set) => panic!("expected errors, parsed {set:?}"),
        Err(error) => error.issues().to_vec(),
    }
}

/// Asserts that exactly one issue has this object and field and that its reason contains
/// `reason`; returns that issue.
pub(super) fn assert_issue(issues: &[Issue], object: &str, field: &str, reason: &str) -> Issue {
    let found: Vec<&Issue> = issues
        .iter()
        .filter(|issue| issue.object() == object && issue.field == field)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one issue for {object} {field} in {issues:#?}"
    );
    assert!(
        found[0].reason.contains(reason),
        "reason {:?} should contain {reason:?}",
        found[0].reason
    );
    found[0].clone()
}
