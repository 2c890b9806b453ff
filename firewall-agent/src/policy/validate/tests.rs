//! Validator tests: every rule, each problem with its object, field and reason.

use super::*;
use crate::policy::model::{Action, Mode, PortRule, Protocol};
use crate::policy::testing::{assert_issue, issues_of};

const HEADER: &str = "apiVersion: zonewall.dev/v1alpha1\n";

fn zone(name: &str, spec: &str) -> String {
    format!("---\n{HEADER}kind: Zone\nmetadata:\n  name: {name}\nspec:\n{spec}\n")
}

fn policy(name: &str, spec: &str) -> String {
    format!("---\n{HEADER}kind: ZonePolicy\nmetadata:\n  name: {name}\nspec:\n{spec}\n")
}

fn base_zones() -> String {
    zone("dmz", "  podSelector: {matchLabels: {zone: dmz}}")
        + &zone("db", "  podSelector: {matchLabels: {zone: db}}")
}

#[test]
fn invalid_name() {
    let issues = issues_of(&zone("Bad_Name", "  podSelector: {}"));
    assert_issue(
        &issues,
        "Zone/Bad_Name",
        "metadata.name",
        "is not a valid name",
    );
    let issues =
        issues_of(&(base_zones() + &policy("-x", "  from: [dmz]\n  to: [db]\n  action: Allow")));
    assert_issue(
        &issues,
        "ZonePolicy/-x",
        "metadata.name",
        "is not a valid name",
    );
}

#[test]
fn reserved_zone_name() {
    for name in ["world", "unzoned", "host"] {
        let issues = issues_of(&zone(name, "  podSelector: {}"));
        assert_issue(
            &issues,
            &format!("Zone/{name}"),
            "metadata.name",
            "is a reserved zone",
        );
    }
}

#[test]
fn zone_with_selectors_and_networks() {
    let issues = issues_of(&zone(
        "mixed",
        "  podSelector: {}\n  networks: [10.0.0.0/8]",
    ));
    assert_issue(&issues, "Zone/mixed", "spec", "not both");
}

#[test]
fn zone_with_nothing() {
    let issues = issues_of(&zone("empty", "  networks: []"));
    assert_issue(
        &issues,
        "Zone/empty",
        "spec",
        "needs namespaceSelector and/or podSelector",
    );
    let issues = issues_of(&zone("null-selector", "  podSelector:"));
    assert_issue(
        &issues,
        "Zone/null-selector",
        "spec",
        "needs namespaceSelector",
    );
}

#[test]
fn selector_values_rules() {
    let spec = "  podSelector:\n    matchExpressions:\n      - {key: app, operator: In}\n      \
                    - {key: app, operator: NotIn, values: []}\n      - {key: app, operator: \
                    Exists, values: [x]}\n      - {key: app, operator: DoesNotExist, values: \
                    [y]}\n      - {key: '', operator: Exists}\n  namespaceSelector:\n    \
                    matchLabels: {'': x}";
    let issues = issues_of(&zone("sel", spec));
    let base = "spec.podSelector.matchExpressions";
    assert_issue(
        &issues,
        "Zone/sel",
        &format!("{base}[0].values"),
        "operator In needs at least one value",
    );
    assert_issue(
        &issues,
        "Zone/sel",
        &format!("{base}[1].values"),
        "operator NotIn needs at least one value",
    );
    assert_issue(
        &issues,
        "Zone/sel",
        &format!("{base}[2].values"),
        "operator Exists takes no values",
    );
    assert_issue(
        &issues,
        "Zone/sel",
        &format!("{base}[3].values"),
        "operator DoesNotExist takes no values",
    );
    assert_issue(
        &issues,
        "Zone/sel",
        &format!("{base}[4].key"),
        "must not be empty",
    );
    assert_issue(
        &issues,
        "Zone/sel",
        "spec.namespaceSelector.matchLabels",
        "label key must not be empty",
    );
    assert_eq!(issues.len(), 6, "{issues:#?}");
}

#[test]
fn empty_from_and_to() {
    let issues = issues_of(&(base_zones() + &policy("p", "  from: []\n  to: []\n  action: Deny")));
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.from",
        "is empty, so the policy would match nothing",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.to",
        "list the destination zones",
    );
}

#[test]
fn unknown_zone_reference_with_hint() {
    let issues = issues_of(
        &(base_zones()
            + &policy(
                "p",
                "  from: [dmz, \"*\", world]\n  to: [db, dbz, nowhere-at-all]\n  action: Allow",
            )),
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.to[1]",
        "zone \"dbz\" does not exist; did you mean \"db\"?",
    );
    assert_issue(
        &issues,
        "ZonePolicy/p",
        "spec.to[2]",
        "zone \"nowhere-at-all\" does not exist; define a Zone",
    );
    assert_eq!(issues.len(), 2);
}

#[test]
fn reference_to_a_broken_zone_is_not_repeated() {
    let yaml = zone("dmz", "  podSelectr: {}")
        + &zone("db", "  podSelector: {}")
        + &policy("p", "  from: [dmz]\n  to: [db]\n  action: Allow");
    let issues = issues_of(&yaml);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_issue(
        &issues,
        "Zone/dmz",
        "spec.podSelectr",
        "did you mean `podSelector`?",
    );
}

#[test]
fn port_rules() {
    let spec = "  from: [dmz]\n  to: [db]\n  action: Allow\n  ports:\n    - {protocol: TCP, port: 443, endPort: 80}\n    - {protocol: TCP, port: 0}\n    - {protocol: UDP, port: 70000}\n    - {protocol: TCP, port: 80, endPort: 65536}\n    - {protocol: SCTP, endPort: 90}\n    - {protocol: ICMP, port: 8}\n    - {protocol: ICMPv6, endPort: 9}\n    - {protocol: TCP, port: -1, endPort: 5}\n    - {protocol: UDP, port: 53, endPort: 53}\n    - {protocol: TCP, port: 1, endPort: 65535}";
    let issues = issues_of(&(base_zones() + &policy("p", spec)));
    let object = "ZonePolicy/p";
    assert_issue(
        &issues,
        object,
        "spec.ports[0].endPort",
        "endPort 80 is lower than port 443; endPort must be >= port",
    );
    assert_issue(
        &issues,
        object,
        "spec.ports[1].port",
        "port 0 is out of range; ports are 1..=65535",
    );
    assert_issue(
        &issues,
        object,
        "spec.ports[2].port",
        "port 70000 is out of range",
    );
    assert_issue(
        &issues,
        object,
        "spec.ports[3].endPort",
        "endPort 65536 is out of range; ports are 1..=65535",
    );
    assert_issue(
        &issues,
        object,
        "spec.ports[4].endPort",
        "endPort 90 needs port",
    );
    assert_issue(
        &issues,
        object,
        "spec.ports[5].port",
        "ICMP has no ports; remove port",
    );
    assert_issue(
        &issues,
        object,
        "spec.ports[6].endPort",
        "ICMPv6 has no ports; remove endPort",
    );
    assert_issue(
        &issues,
        object,
        "spec.ports[7].port",
        "port -1 is out of range",
    );
    assert_eq!(
        issues.len(),
        8,
        "only the port of entry 7 is reported: {issues:#?}"
    );
}

#[test]
fn duplicate_names() {
    let yaml = base_zones()
        + &zone("dmz", "  podSelector: {}")
        + &policy("p", "  from: [dmz]\n  to: [db]\n  action: Allow")
        + &policy("p", "  from: [db]\n  to: [dmz]\n  action: Allow")
        + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n"
        + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n"
        + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: y}\n"
        + "---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
        + "---\napiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: default}\n"
        + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"
        + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"
        + "---\napiVersion: v1\nkind: Node\nmetadata: {name: n}\n"
        + "---\napiVersion: v1\nkind: Node\nmetadata: {name: n}\n";
    let issues = issues_of(&yaml);
    assert_issue(
        &issues,
        "Zone/dmz",
        "metadata.name",
        "defined 2 times; each Zone must appear once",
    );
    assert_issue(&issues, "ZonePolicy/p", "metadata.name", "defined 2 times");
    assert_issue(
        &issues,
        "Pod/x/a",
        "metadata.name",
        "defined 2 times; each Pod must appear once",
    );
    assert_issue(
        &issues,
        "Service/default/s",
        "metadata.name",
        "defined 2 times",
    );
    assert_issue(&issues, "Namespace/x", "metadata.name", "defined 2 times");
    assert_issue(&issues, "Node/n", "metadata.name", "defined 2 times");
    assert_eq!(issues.len(), 6, "{issues:#?}");
}

#[test]
fn prefix_in_two_zones() {
    let yaml = zone("corp", "  networks: [10.0.0.0/8, 192.168.0.0/16]")
        + &zone("alpha", "  networks: [10.1.2.3/8]")
        + &zone(
            "beta",
            "  networks: [10.0.0.0/8, 172.16.0.0/12, 172.16.0.0/12]",
        );
    let issues = issues_of(&yaml);
    // alpha sorts first and keeps the prefix; host bits do not hide the duplicate.
    assert_issue(
        &issues,
        "Zone/beta",
        "spec.networks[0]",
        "10.0.0.0/8 is already in Zone/alpha",
    );
    assert_issue(
        &issues,
        "Zone/corp",
        "spec.networks[0]",
        "10.0.0.0/8 is already in Zone/alpha; a prefix can belong to one zone only",
    );
    assert_eq!(
        issues.len(),
        2,
        "a repeat inside one zone is not an error: {issues:#?}"
    );
}

#[test]
fn zone_id_collision_found_by_brute_force() {
    // Birthday search over generated names: a 32-bit collision shows up after ~2^16.
    let mut seen: std::collections::HashMap<u32, String> = std::collections::HashMap::new();
    let mut pair = None;
    for index in 0..2_000_000u32 {
        let name = format!("z{index}");
        if let Some(previous) = seen.insert(zone_id(&name), name.clone()) {
            pair = Some((previous, name));
            break;
        }
    }
    let (first, second) = pair.expect("a collision within two million names");
    let yaml = zone(&first, "  podSelector: {}") + &zone(&second, "  podSelector: {}");
    let issues = issues_of(&yaml);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    let (early, late) = if first < second {
        (&first, &second)
    } else {
        (&second, &first)
    };
    assert_issue(
        &issues,
        &format!("Zone/{late}"),
        "metadata.name",
        &format!("is the same as the id of Zone/{early}; rename one of the two zones"),
    );
}

#[test]
fn zone_id_collision_with_injected_hash() {
    let mut issues = Vec::new();
    check_ids(
        ["a", "b", "c"],
        |name| if name == "c" { 7 } else { 300 },
        &mut issues,
    );
    assert_eq!(issues.len(), 1);
    assert_issue(&issues, "Zone/b", "metadata.name", "zone id 300");
}

#[test]
fn validate_accepts_a_hand_built_set() {
    let set = PolicySet {
        zones: vec![Zone {
            name: "dmz".into(),
            pod_selector: Some(LabelSelector::default()),
            ..Zone::default()
        }],
        policies: vec![ZonePolicy {
            name: "p".into(),
            from: vec!["dmz".into()],
            to: vec!["world".into()],
            ports: vec![PortRule {
                protocol: Protocol::Tcp,
                port: Some(443),
                end_port: None,
            }],
            action: Action::Allow,
            priority: 5,
            mode: Mode::Enforce,
        }],
        ..PolicySet::default()
    };
    validate(set.clone()).unwrap();
    let mut broken = set;
    broken.policies[0].to = vec!["nowhere".into()];
    let error = validate(broken).unwrap_err();
    assert_issue(
        error.issues(),
        "ZonePolicy/p",
        "spec.to[0]",
        "zone \"nowhere\" does not exist",
    );
}

#[test]
fn valid_names() {
    assert!(is_valid_name("a"));
    assert!(is_valid_name("dmz-1.corp"));
    assert!(!is_valid_name(""));
    assert!(!is_valid_name("a-"));
    assert!(!is_valid_name("A"));
    assert!(!is_valid_name("a_b"));
    assert!(!is_valid_name(&"a".repeat(254)));
}

#[test]
fn issues_name_their_object_in_fields() {
    let yaml = base_zones()
        + &policy("p", "  from: [dmz]\n  to: [dbz]\n  action: Allow")
        + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n"
        + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n";
    let issues = issues_of(&yaml);
    let reference = assert_issue(&issues, "ZonePolicy/p", "spec.to[0]", "does not exist");
    assert_eq!(
        (
            reference.kind.as_str(),
            reference.name.as_str(),
            reference.namespace.as_deref()
        ),
        ("ZonePolicy", "p", None)
    );
    assert_eq!(reference.missing_zone.as_deref(), Some("dbz"));
    let duplicate = assert_issue(&issues, "Pod/x/a", "metadata.name", "defined 2 times");
    assert_eq!(
        (
            duplicate.kind.as_str(),
            duplicate.name.as_str(),
            duplicate.namespace.as_deref()
        ),
        ("Pod", "a", Some("x"))
    );
    assert_eq!(duplicate.missing_zone, None);
}
