//! Tests of the model: label selectors as Kubernetes evaluates them, zone membership,
//! protocol numbers and workloads.

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn requirement(key: &str, operator: SelectorOperator, values: &[&str]) -> SelectorRequirement {
    SelectorRequirement {
        key: key.to_string(),
        operator,
        values: values.iter().map(|value| value.to_string()).collect(),
    }
}

#[test]
fn empty_selector_matches_everything() {
    let selector = LabelSelector::default();
    assert!(selector.matches(&labels(&[])));
    assert!(selector.matches(&labels(&[("app", "web")])));
}

#[test]
fn match_labels_needs_every_pair() {
    let selector = LabelSelector {
        match_labels: labels(&[("app", "web"), ("tier", "front")]),
        match_expressions: vec![],
    };
    assert!(selector.matches(&labels(&[("app", "web"), ("tier", "front"), ("x", "y")])));
    assert!(!selector.matches(&labels(&[("app", "web")])));
    assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "back")])));
}

#[test]
fn operators_follow_kubernetes() {
    let within = requirement("env", SelectorOperator::In, &["prod", "staging"]);
    assert!(within.matches(&labels(&[("env", "prod")])));
    assert!(!within.matches(&labels(&[("env", "dev")])));
    assert!(!within.matches(&labels(&[])));

    let not_within = requirement("env", SelectorOperator::NotIn, &["prod"]);
    assert!(not_within.matches(&labels(&[("env", "dev")])));
    assert!(
        not_within.matches(&labels(&[])),
        "absent label satisfies NotIn"
    );
    assert!(!not_within.matches(&labels(&[("env", "prod")])));

    let exists = requirement("env", SelectorOperator::Exists, &[]);
    assert!(exists.matches(&labels(&[("env", "")])));
    assert!(!exists.matches(&labels(&[("other", "x")])));

    let absent = requirement("env", SelectorOperator::DoesNotExist, &[]);
    assert!(absent.matches(&labels(&[("other", "x")])));
    assert!(!absent.matches(&labels(&[("env", "prod")])));
}

#[test]
fn expressions_and_labels_combine() {
    let selector = LabelSelector {
        match_labels: labels(&[("app", "db")]),
        match_expressions: vec![requirement("env", SelectorOperator::In, &["prod"])],
    };
    assert!(selector.matches(&labels(&[("app", "db"), ("env", "prod")])));
    assert!(!selector.matches(&labels(&[("app", "db"), ("env", "dev")])));
    assert!(!selector.matches(&labels(&[("app", "web"), ("env", "prod")])));
}

#[test]
fn zone_needs_both_selectors_when_both_are_given() {
    let zone = Zone {
        name: "dmz".into(),
        namespace_selector: Some(LabelSelector {
            match_labels: labels(&[("zone", "dmz")]),
            match_expressions: vec![],
        }),
        pod_selector: Some(LabelSelector {
            match_labels: labels(&[("app", "web")]),
            match_expressions: vec![],
        }),
        networks: vec![],
    };
    assert!(zone.selects(&labels(&[("zone", "dmz")]), &labels(&[("app", "web")])));
    assert!(!zone.selects(&labels(&[("zone", "dmz")]), &labels(&[("app", "db")])));
    assert!(!zone.selects(&labels(&[]), &labels(&[("app", "web")])));

    let only_pods = Zone {
        namespace_selector: None,
        ..zone.clone()
    };
    assert!(only_pods.selects(&labels(&[("zone", "other")]), &labels(&[("app", "web")])));

    let networks = Zone {
        name: "corp".into(),
        networks: vec!["10.0.0.0/8".parse().unwrap()],
        ..Zone::default()
    };
    assert!(!networks.selects(&labels(&[]), &labels(&[])));
}

#[test]
fn protocol_numbers() {
    for protocol in Protocol::ALL {
        assert_eq!(Protocol::from_number(protocol.number()), Some(protocol));
    }
    assert_eq!(Protocol::from_number(47), None);
    assert!(Protocol::Sctp.has_ports());
    assert!(!Protocol::Icmpv6.has_ports());
}

#[test]
fn replica_sets_stand_for_their_deployment() {
    let labels: BTreeMap<String, String> =
        [("pod-template-hash".to_string(), "5d9f8".to_string())].into();
    let workload = Workload::from_owner("ReplicaSet", "web-5d9f8", &labels);
    assert_eq!(
        (workload.kind.as_str(), workload.name.as_str()),
        ("Deployment", "web")
    );
    // Without the matching hash label it stays a ReplicaSet.
    let workload = Workload::from_owner("ReplicaSet", "web-5d9f8", &BTreeMap::new());
    assert_eq!(
        (workload.kind.as_str(), workload.name.as_str()),
        ("ReplicaSet", "web-5d9f8")
    );
    let workload = Workload::from_owner("StatefulSet", "db", &labels);
    assert_eq!(
        (workload.kind.as_str(), workload.name.as_str()),
        ("StatefulSet", "db")
    );
}
