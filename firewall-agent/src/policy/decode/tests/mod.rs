//! Decoder tests: what a stream decodes to, and every problem found with its object,
//! field and reason. The helpers here serve the files by concern below.

mod core_kinds;
mod stream;
mod zonewall_kinds;

use crate::policy::load::parse;
use crate::policy::testing::{assert_issue, issues_of};

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
