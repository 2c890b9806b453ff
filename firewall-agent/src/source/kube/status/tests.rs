//! Tests of the status: what each object's status says, which warnings it lists, and
//! when a condition counts as already written.

use super::*;
use crate::policy::load_str;

const POLICY: &str = "
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: dmz}
spec: {namespaceSelector: {matchLabels: {zone: dmz}}}
---
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: edge}
spec: {podSelector: {matchLabels: {app: web}}}
---
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: partners}
spec: {networks: [203.0.113.0/24]}
---
apiVersion: zonewall.dev/v1alpha1
kind: ZonePolicy
metadata: {name: staged}
spec: {from: [dmz], to: [partners], action: Deny, mode: Audit}
---
kind: Namespace
metadata: {name: dmz, labels: {zone: dmz}}
---
kind: Pod
metadata: {name: web, namespace: dmz, labels: {app: web}}
status: {podIP: 198.18.0.10}
---
kind: Pod
metadata: {name: db, namespace: dmz}
status: {podIP: 198.18.0.11}
";

fn verdict(resource: Resource, name: &str, problems: &[&str], instead: Option<i64>) -> Verdict {
    Verdict {
        resource,
        name: name.into(),
        generation: 2,
        problems: problems.iter().map(|problem| problem.to_string()).collect(),
        enforced_instead: instead,
    }
}

#[test]
fn statuses_count_members_and_explain_rejections() {
    let compiled = load_str(POLICY).unwrap();
    let summary = Summary::of(&compiled);
    let verdicts = [
        verdict(Resource::Zone, "dmz", &[], None),
        verdict(Resource::Zone, "partners", &[], None),
        verdict(Resource::ZonePolicy, "staged", &[], None),
        verdict(
            Resource::ZonePolicy,
            "broken",
            &["spec.to[0]: zone \"x\" does not exist"],
            Some(1),
        ),
    ];
    let desired = desired(&verdicts, &summary);
    let dmz = &desired[&(Resource::Zone, "dmz".into())];
    assert_eq!(dmz.members, Some(2));
    assert_eq!(dmz.message, "enforced: 2 pods");
    assert!(
        dmz.warnings
            .iter()
            .any(|warning| warning.contains("matches zones dmz, edge")),
        "{dmz:?}"
    );
    let partners = &desired[&(Resource::Zone, "partners".into())];
    assert_eq!(partners.members, None);
    assert_eq!(partners.message, "enforced: 1 network");
    assert!(
        desired[&(Resource::ZonePolicy, "staged".into())]
            .message
            .starts_with("audited")
    );
    let broken = &desired[&(Resource::ZonePolicy, "broken".into())];
    assert!(!broken.accepted);
    assert_eq!(
        broken.message,
        "spec.to[0]: zone \"x\" does not exist; generation 1 of this ZonePolicy stays enforced until this is fixed"
    );
}

#[test]
fn conditions_keep_their_transition_time() {
    let status = DesiredStatus {
        generation: 3,
        accepted: true,
        message: "enforced".into(),
        members: None,
        warnings: vec![],
    };
    let old = Condition {
        type_: CONDITION_ACCEPTED.into(),
        status: "True".into(),
        reason: REASON_ACCEPTED.into(),
        message: "enforced: 1 pod".into(),
        observed_generation: Some(2),
        last_transition_time: Time("2024-01-01T00:00:00Z".parse().unwrap()),
    };
    let condition = accepted_condition(std::slice::from_ref(&old), &status);
    assert_eq!(condition.last_transition_time, old.last_transition_time);
    let observed = |conditions: Vec<Condition>, generation: i64| Observed {
        conditions,
        observed_generation: Some(generation),
        members: None,
        warnings: vec![],
    };
    assert!(!already_written(&observed(vec![old.clone()], 2), &status));
    assert!(already_written(
        &observed(vec![condition.clone()], 3),
        &status
    ));
    let with_members = DesiredStatus {
        members: Some(1),
        ..status.clone()
    };
    assert!(!already_written(
        &observed(vec![condition], 3),
        &with_members
    ));
    let rejected = DesiredStatus {
        accepted: false,
        ..status
    };
    let condition = accepted_condition(std::slice::from_ref(&old), &rejected);
    assert_ne!(condition.last_transition_time, old.last_transition_time);
    assert_eq!(condition.reason, REASON_INVALID);
}

#[test]
fn warnings_are_listed_on_what_they_are_about() {
    let warning = |kind: Subject, name: &str, field: &str, zones: &[&str]| Warning {
        kind,
        name: name.into(),
        namespace: matches!(kind, Subject::Pod | Subject::Service).then(|| "ns".to_string()),
        field: field.into(),
        reason: "reason".into(),
        zones: zones.iter().map(|zone| zone.to_string()).collect(),
    };
    let compiled = CompiledPolicy {
        warnings: vec![
            warning(Subject::Zone, "empty", "", &[]),
            warning(Subject::ZonePolicy, "shadowed", "", &[]),
            warning(Subject::Pod, "p", "", &["first", "second"]),
            warning(Subject::Zone, "networks", "spec.networks[0]", &[]),
            warning(Subject::Service, "s", "", &[]),
            warning(Subject::Address, "10.0.0.1", "", &[]),
        ],
        ..CompiledPolicy::default()
    };
    let summary = Summary::of(&compiled);
    let listed = |resource: Resource, name: &str| {
        summary
            .warnings
            .get(&(resource, name.to_string()))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(listed(Resource::Zone, "empty"), ["Zone/empty reason"]);
    assert_eq!(
        listed(Resource::ZonePolicy, "shadowed"),
        ["ZonePolicy/shadowed reason"]
    );
    assert_eq!(listed(Resource::Zone, "first"), ["Pod ns/p reason"]);
    assert_eq!(listed(Resource::Zone, "second"), ["Pod ns/p reason"]);
    // A warning about a field (host bits) is left to `check` and the log.
    assert!(listed(Resource::Zone, "networks").is_empty());
    assert_eq!(summary.warnings.len(), 4, "{:?}", summary.warnings);
}
