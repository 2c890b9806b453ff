//! Decoder tests: what a stream decodes to, and every problem found with its object,
//! field and reason. The helpers here serve the files by concern below.

mod core_kinds;
mod stream;
mod zonewall_kinds;

use crate::policy::issue::Issue;
use crate::policy::load::parse;

fn issues_of(yaml: &str) -> Vec<Issue> {
    match parse(yaml) {
        Ok(set) => panic!("expected errors, parsed {set:?}"),
        Err(error) => error.issues().to_vec(),
    }
}

/// Exactly one issue for this object and field, whose reason contains `reason`.
fn assert_issue(issues: &[Issue], object: &str, field: &str, reason: &str) -> Issue {
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

const ZONES: &str = "
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: dmz}
spec: {podSelector: {matchLabels: {zone: dmz}}}
---
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: db}
spec: {podSelector: {matchLabels: {zone: db}}}
";

fn with_zones(rest: &str) -> String {
    format!("{ZONES}---\n{rest}")
}

fn policy(spec: &str) -> String {
    with_zones(&format!(
        "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {{name: p}}\nspec:\n{spec}\n"
    ))
}
