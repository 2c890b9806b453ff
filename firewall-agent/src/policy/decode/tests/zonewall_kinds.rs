//! Decoder tests of `Zone` and `ZonePolicy`: unknown fields, selectors, the spec, and
//! the type of every field.

use super::*;
use crate::policy::model::SelectorOperator;

#[test]
fn selectors_are_decoded() {
    let yaml = "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: z}\nspec:\n  namespaceSelector: {}\n  podSelector:\n    matchLabels: {app: db}\n    matchExpressions:\n      - {key: env, operator: NotIn, values: [dev]}\n";
    let set = parse(yaml).unwrap();
    let zone = &set.zones[0];
    assert_eq!(zone.namespace_selector, Some(Default::default()));
    let selector = zone.pod_selector.as_ref().unwrap();
    assert_eq!(selector.match_labels["app"], "db");
    assert_eq!(
        selector.match_expressions[0].operator,
        SelectorOperator::NotIn
    );
    assert_eq!(selector.match_expressions[0].values, ["dev"]);
}

#[test]
fn zone_must_not_have_a_namespace() {
    let issues = issues_of(
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: z, namespace: prod}\nspec: {podSelector: {}}\n",
    );
    assert_issue(
        &issues,
        "Zone/z",
        "metadata.namespace",
        "a Zone is cluster scoped and has no namespace (found \"prod\")",
    );
}

#[test]
fn unknown_fields_in_zonewall_kinds() {
    let issues = issues_of(&with_zones(
        "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: p}\nspce: {}\nspec:\n  from: [dmz]\n  to: [db]\n  action: Allow\n  prots: []\n  ports: [{protocol: TCP, prot: 80}]\n  zzzzzzzz: 1\n",
    ));
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spce",
        "unknown field `spce`; did you mean `spec`?",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.prots",
        "unknown field `prots`; did you mean `ports`? known fields are `from`, `to`, `ports`, `action`, `priority`, `mode`",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.ports[0].prot",
        "unknown field `prot`; did you mean `port`?",
    );
    let far = assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.zzzzzzzz",
        "unknown field `zzzzzzzz`; known fields",
    );
    assert!(!far.reason.contains("did you mean"));

    let issues = issues_of(
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: z}\nspec:\n  podselector: {}\n  networks: []\n",
    );
    assert_issue(
        &issues,
        "Zone/z",
        "spec.podselector",
        "did you mean `podSelector`?",
    );
}

#[test]
fn unknown_fields_in_selectors_have_full_paths() {
    let issues = issues_of(
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: z}\nspec:\n  podSelector:\n    matchExpressions:\n      - {key: a, operater: In, values: [x]}\n  namespaceSelector: {matchLabel: {a: b}}\n",
    );
    assert_issue(
        &issues,
        "Zone/z",
        "spec.podSelector.matchExpressions[0].operater",
        "unknown field `operater`",
    );
    assert_issue(
        &issues,
        "Zone/z",
        "spec.namespaceSelector.matchLabel",
        "unknown field `matchLabel`",
    );
}

#[test]
fn selector_type_errors_and_operators() {
    let issues = issues_of(
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: z}\nspec:\n  podSelector:\n    matchLabels: {tier: 1}\n  namespaceSelector:\n    matchExpressions: [{key: a, operator: in, values: [x]}]\n",
    );
    assert_issue(
        &issues,
        "Zone/z",
        "spec.podSelector.matchLabels.tier",
        "invalid type: integer `1`, expected a string",
    );
    assert_issue(
        &issues,
        "Zone/z",
        "spec.namespaceSelector.matchExpressions[0].operator",
        "\"in\" is not one of In, NotIn, Exists, DoesNotExist",
    );
}

#[test]
fn spec_must_be_present_and_a_mapping() {
    let issues = issues_of(
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: a}\n---\napiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: b}\n---\napiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: c}\nspec: [1]\n",
    );
    assert_issue(
        &issues,
        "Zone/a",
        "spec",
        "missing; a Zone needs namespaceSelector/podSelector or networks",
    );
    assert_issue(
        &issues,
        "ZonePolicy/b",
        "spec",
        "missing; a ZonePolicy needs from, to and action",
    );
    assert_issue(
        &issues,
        "ZonePolicy/c",
        "spec",
        "must be a mapping, found a list",
    );
}

#[test]
fn required_policy_fields() {
    let issues = issues_of(&policy("  ports: []"));
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.from",
        "missing; list the source zones, or \"*\" for every zone",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.to",
        "missing; list the destination zones",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.action",
        "missing; every ZonePolicy needs action Allow or Deny",
    );
    assert_eq!(issues.len(), 3);
}

#[test]
fn enumerated_values() {
    let issues = issues_of(&policy(
        "  from: [dmz]\n  to: [db]\n  action: allow\n  mode: Dry\n  ports: [{protocol: tcp, port: 80}, {protocol: GRE}, {protocol: 6}]",
    ));
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.action",
        "\"allow\" is not one of Allow, Deny (spelling is case-sensitive: write Allow)",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.mode",
        "\"Dry\" is not one of Enforce, Audit",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.ports[0].protocol",
        "\"tcp\" is not one of TCP, UDP, SCTP, ICMP, ICMPv6 (spelling is case-sensitive: write TCP)",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.ports[1].protocol",
        "\"GRE\" is not one of TCP, UDP, SCTP, ICMP, ICMPv6",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.ports[2].protocol",
        "must be one of TCP, UDP, SCTP, ICMP, ICMPv6, found the number 6",
    );
}

#[test]
fn numeric_fields() {
    let issues = issues_of(&policy(
        "  from: [dmz]\n  to: [db]\n  action: Allow\n  priority: 1.5\n  ports: [{port: https}, {port: 8.5}, {port: 99999999999}, {port: 80, endPort: [1]}]",
    ));
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.priority",
        "must be an integer, found the number 1.5",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.ports[0].port",
        "must be a port number, found the string \"https\" (named ports are not supported)",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.ports[1].port",
        "must be a port number, found the number 8.5",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.ports[2].port",
        "port 99999999999 is out of range; ports are 1..=65535",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.ports[3].endPort",
        "must be a port number, found a list",
    );
    let issues = issues_of(&policy(
        "  from: [dmz]\n  to: [db]\n  action: Allow\n  priority: 3000000000",
    ));
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.priority",
        "3000000000 is out of range; priority must be between",
    );
}

#[test]
fn list_fields_with_wrong_types() {
    let issues = issues_of(&policy(
        "  from: dmz\n  to: [db, [x]]\n  action: Allow\n  ports: {protocol: TCP}",
    ));
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.from",
        "invalid type: string \"dmz\", expected a sequence",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.to[1]",
        "invalid type: sequence, expected a string",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.ports",
        "must be a list of {protocol, port, endPort} entries, found a mapping",
    );
    let issues = issues_of(&policy(
        "  from: [dmz]\n  to: [db]\n  action: Allow\n  ports: [TCP]",
    ));
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.ports[0]",
        "must be a mapping such as {protocol: TCP, port: 443}, found \"TCP\"",
    );
}

#[test]
fn non_string_field_names() {
    let issues = issues_of(&policy(
        "  from: [dmz]\n  to: [db]\n  action: Allow\n  1: x",
    ));
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec",
        "field names must be strings, found the number 1",
    );
}

#[test]
fn networks_must_be_cidrs() {
    let issues = issues_of(
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: z}\nspec:\n  networks: [10.0.0.0/33, 10.1.2.3, \"fd00::1\", corp]\n---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: y}\nspec: {networks: 10.0.0.0/8}\n",
    );
    assert_issue(
        &issues,
        "Zone/z",
        "spec.networks[0]",
        "\"10.0.0.0/33\" is not a CIDR; write address/prefix-length",
    );
    assert_issue(
        &issues,
        "Zone/z",
        "spec.networks[1]",
        "\"10.1.2.3\" is an address, not a CIDR; write 10.1.2.3/32 for a single address",
    );
    assert_issue(
        &issues,
        "Zone/z",
        "spec.networks[2]",
        "write fd00::1/128 for a single address",
    );
    assert_issue(
        &issues,
        "Zone/z",
        "spec.networks[3]",
        "\"corp\" is not a CIDR",
    );
    assert_issue(
        &issues,
        "Zone/y",
        "spec.networks",
        "invalid type: string \"10.0.0.0/8\", expected a sequence",
    );
}
