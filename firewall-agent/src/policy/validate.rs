//! The rules a [`PolicySet`] must follow beyond field types: names, reserved zones,
//! duplicates, the shape of a zone, selector expressions, port ranges, references to
//! zones, network prefixes claimed twice and zone-id collisions. Every problem is
//! reported, each with its object, field path and what to do.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::compile::zone_id;
use super::decode::edit_distance;
use super::model::{
    ANY_ZONE, LabelSelector, PolicySet, RESERVED_ZONES, SelectorOperator, Zone, ZonePolicy,
    is_reserved_zone,
};
use super::{Issue, PolicyError};

/// Checks `set`; on failure the error lists every problem found.
pub fn validate(set: &PolicySet) -> Result<(), PolicyError> {
    let mut issues = Vec::new();
    validate_into(set, &BTreeSet::new(), &mut issues);
    if issues.is_empty() {
        Ok(())
    } else {
        Err(PolicyError::Invalid(issues))
    }
}

/// Appends the problems of `set` to `issues`. `broken_zones` are zones that exist in the
/// input but failed to decode: references to them are not reported again.
pub(super) fn validate_into(
    set: &PolicySet,
    broken_zones: &BTreeSet<String>,
    issues: &mut Vec<Issue>,
) {
    for zone in &set.zones {
        check_zone(zone, issues);
    }
    check_unique(
        "Zone",
        set.zones.iter().map(|zone| ("", zone.name.as_str())),
        issues,
    );
    check_networks_unique(set, issues);
    check_zone_ids(set, issues);

    let zone_names: BTreeSet<&str> = set
        .zones
        .iter()
        .map(|zone| zone.name.as_str())
        .chain(broken_zones.iter().map(String::as_str))
        .collect();
    for policy in &set.policies {
        check_policy(policy, &zone_names, issues);
    }
    check_unique(
        "ZonePolicy",
        set.policies.iter().map(|policy| ("", policy.name.as_str())),
        issues,
    );

    check_unique(
        "Namespace",
        set.namespaces
            .iter()
            .map(|namespace| ("", namespace.name.as_str())),
        issues,
    );
    check_unique(
        "Pod",
        set.pods
            .iter()
            .map(|pod| (pod.namespace.as_str(), pod.name.as_str())),
        issues,
    );
    check_unique(
        "Service",
        set.services
            .iter()
            .map(|service| (service.namespace.as_str(), service.name.as_str())),
        issues,
    );
    check_unique(
        "Node",
        set.nodes.iter().map(|node| ("", node.name.as_str())),
        issues,
    );
}

/// The reason for a port number outside 1..=65535 (shared with the decoder, which sees
/// numbers too large for the model).
pub(super) fn port_out_of_range(number: i64) -> String {
    format!("port {number} is out of range; ports are 1..=65535")
}

fn issue(object: String, field: impl Into<String>, reason: impl Into<String>) -> Issue {
    Issue {
        object,
        location: None,
        field: field.into(),
        reason: reason.into(),
    }
}

/// Kubernetes object names of cluster-scoped custom resources: a DNS-1123 subdomain.
fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alphanumeric = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes
            .iter()
            .all(|byte| alphanumeric(byte) || *byte == b'-' || *byte == b'.')
        && bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
}

fn check_name(kind: &str, name: &str, issues: &mut Vec<Issue>) {
    if !is_valid_name(name) {
        issues.push(issue(
            format!("{kind}/{name}"),
            "metadata.name",
            format!(
                "\"{name}\" is not a valid name; use lowercase letters, digits, '-' and '.', \
                 starting and ending with a letter or digit, at most 253 characters"
            ),
        ));
    }
}

fn check_zone(zone: &Zone, issues: &mut Vec<Issue>) {
    let object = format!("Zone/{}", zone.name);
    check_name("Zone", &zone.name, issues);
    if is_reserved_zone(&zone.name) {
        let reserved = RESERVED_ZONES.map(|(name, _)| name).join(", ");
        issues.push(issue(
            object.clone(),
            "metadata.name",
            format!(
                "\"{}\" is a reserved zone ({reserved}) that zonewall defines itself; choose \
                 another name",
                zone.name
            ),
        ));
    }
    match (zone.has_selectors(), zone.networks.is_empty()) {
        (true, false) => issues.push(issue(
            object.clone(),
            "spec",
            "a Zone has either selectors (namespaceSelector/podSelector, for pods) or networks \
             (CIDRs outside the cluster), not both; split it into two zones",
        )),
        (false, true) => issues.push(issue(
            object.clone(),
            "spec",
            "a Zone needs namespaceSelector and/or podSelector (for pods), or networks (CIDRs \
             outside the cluster); an empty selector {} selects every pod",
        )),
        _ => {}
    }
    for (field, selector) in [
        ("spec.namespaceSelector", &zone.namespace_selector),
        ("spec.podSelector", &zone.pod_selector),
    ] {
        if let Some(selector) = selector {
            check_selector(&object, field, selector, issues);
        }
    }
}

fn check_selector(object: &str, field: &str, selector: &LabelSelector, issues: &mut Vec<Issue>) {
    for key in selector.match_labels.keys() {
        if key.is_empty() {
            issues.push(issue(
                object.to_string(),
                format!("{field}.matchLabels"),
                "a label key must not be empty",
            ));
        }
    }
    for (index, requirement) in selector.match_expressions.iter().enumerate() {
        let path = format!("{field}.matchExpressions[{index}]");
        if requirement.key.is_empty() {
            issues.push(issue(
                object.to_string(),
                format!("{path}.key"),
                "must not be empty; name the label to test",
            ));
        }
        let operator = requirement.operator.as_str();
        match requirement.operator {
            SelectorOperator::In | SelectorOperator::NotIn if requirement.values.is_empty() => {
                issues.push(issue(
                    object.to_string(),
                    format!("{path}.values"),
                    format!("operator {operator} needs at least one value"),
                ));
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist
                if !requirement.values.is_empty() =>
            {
                issues.push(issue(
                    object.to_string(),
                    format!("{path}.values"),
                    format!("operator {operator} takes no values; remove values"),
                ));
            }
            _ => {}
        }
    }
}

fn check_policy(policy: &ZonePolicy, zone_names: &BTreeSet<&str>, issues: &mut Vec<Issue>) {
    let object = format!("ZonePolicy/{}", policy.name);
    check_name("ZonePolicy", &policy.name, issues);
    for (field, zones, side) in [
        ("spec.from", &policy.from, "source"),
        ("spec.to", &policy.to, "destination"),
    ] {
        if zones.is_empty() {
            issues.push(issue(
                object.clone(),
                field,
                format!(
                    "is empty, so the policy would match nothing; list the {side} zones, or \
                     \"*\" for every zone"
                ),
            ));
        }
        for (index, zone) in zones.iter().enumerate() {
            if zone == ANY_ZONE || is_reserved_zone(zone) || zone_names.contains(zone.as_str()) {
                continue;
            }
            let closest = zone_names
                .iter()
                .copied()
                .chain(RESERVED_ZONES.map(|(name, _)| name))
                .map(|candidate| (edit_distance(zone, candidate), candidate))
                .min()
                .filter(|(distance, _)| *distance <= 2)
                .map(|(_, candidate)| format!("did you mean \"{candidate}\"? "))
                .unwrap_or_default();
            issues.push(issue(
                object.clone(),
                format!("{field}[{index}]"),
                format!(
                    "zone \"{zone}\" does not exist; {closest}define a Zone named \"{zone}\", or \
                     use a reserved zone (world, unzoned, host) or \"*\" for every zone"
                ),
            ));
        }
    }
    for (index, rule) in policy.ports.iter().enumerate() {
        let path = format!("spec.ports[{index}]");
        if !rule.protocol.has_ports() {
            for (field, value) in [("port", rule.port), ("endPort", rule.end_port)] {
                if value.is_some() {
                    issues.push(issue(
                        object.clone(),
                        format!("{path}.{field}"),
                        format!(
                            "{} has no ports; remove {field} (an {} entry matches all {} \
                             traffic)",
                            rule.protocol, rule.protocol, rule.protocol
                        ),
                    ));
                }
            }
            continue;
        }
        let port_valid = rule.port.is_none_or(|port| (1..=65535).contains(&port));
        if let Some(port) = rule.port
            && !port_valid
        {
            issues.push(issue(
                object.clone(),
                format!("{path}.port"),
                port_out_of_range(i64::from(port)),
            ));
        }
        let Some(end_port) = rule.end_port else {
            continue;
        };
        if !(1..=65535).contains(&end_port) {
            issues.push(issue(
                object.clone(),
                format!("{path}.endPort"),
                format!("endPort {end_port} is out of range; ports are 1..=65535"),
            ));
            continue;
        }
        match rule.port {
            None => issues.push(issue(
                object.clone(),
                format!("{path}.endPort"),
                format!(
                    "endPort {end_port} needs port, the start of the range; add port (or remove \
                     endPort to match every {} port)",
                    rule.protocol
                ),
            )),
            Some(port) if port_valid && end_port < port => issues.push(issue(
                object.clone(),
                format!("{path}.endPort"),
                format!("endPort {end_port} is lower than port {port}; endPort must be >= port"),
            )),
            _ => {}
        }
    }
}

/// One error per name of `kind` used more than once. Names are (namespace, name), the
/// namespace empty for cluster-scoped kinds.
fn check_unique<'a>(
    kind: &str,
    names: impl Iterator<Item = (&'a str, &'a str)>,
    issues: &mut Vec<Issue>,
) {
    let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
    for name in names {
        *counts.entry(name).or_default() += 1;
    }
    let mut repeated: Vec<((&str, &str), usize)> =
        counts.into_iter().filter(|(_, count)| *count > 1).collect();
    repeated.sort_unstable();
    for ((namespace, name), count) in repeated {
        let object = if namespace.is_empty() {
            format!("{kind}/{name}")
        } else {
            format!("{kind}/{namespace}/{name}")
        };
        issues.push(issue(
            object,
            "metadata.name",
            format!(
                "defined {count} times; each {kind} must appear once (remove or rename the \
                 copies)"
            ),
        ));
    }
}

/// A prefix in two zones would make the zone of its addresses depend on input order.
fn check_networks_unique(set: &PolicySet, issues: &mut Vec<Issue>) {
    let mut zones: Vec<&Zone> = set.zones.iter().collect();
    zones.sort_by(|left, right| left.name.cmp(&right.name));
    let mut owners: BTreeMap<ipnet::IpNet, &str> = BTreeMap::new();
    for zone in zones {
        for (index, network) in zone.networks.iter().enumerate() {
            let normalised = network.trunc();
            match owners.get(&normalised) {
                Some(owner) if *owner != zone.name => issues.push(issue(
                    format!("Zone/{}", zone.name),
                    format!("spec.networks[{index}]"),
                    format!(
                        "{normalised} is already in Zone/{owner}; a prefix can belong to one \
                         zone only (remove it from one of them)"
                    ),
                )),
                Some(_) => {}
                None => {
                    owners.insert(normalised, &zone.name);
                }
            }
        }
    }
}

/// Zone ids are hashes of the names (stable across restarts); two names may collide.
fn check_zone_ids(set: &PolicySet, issues: &mut Vec<Issue>) {
    let names: BTreeSet<&str> = set
        .zones
        .iter()
        .map(|zone| zone.name.as_str())
        .filter(|name| !is_reserved_zone(name))
        .collect();
    check_ids(names, zone_id, issues);
}

/// The collision check with the id function as a parameter, so a test can force one.
pub(super) fn check_ids<'a>(
    names: impl IntoIterator<Item = &'a str>,
    id_of: impl Fn(&str) -> u32,
    issues: &mut Vec<Issue>,
) {
    let mut owners: BTreeMap<u32, &str> = BTreeMap::new();
    for name in names {
        let id = id_of(name);
        match owners.get(&id) {
            Some(owner) => issues.push(issue(
                format!("Zone/{name}"),
                "metadata.name",
                format!(
                    "its zone id {id} (a hash of the name) is the same as the id of Zone/{owner}; \
                     rename one of the two zones"
                ),
            )),
            None => {
                owners.insert(id, name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{Mode, PortRule, Protocol};
    use super::super::parse;
    use super::*;

    /// Parses `yaml`, expecting failure, and returns the issues.
    fn issues_of(yaml: &str) -> Vec<Issue> {
        match parse(yaml) {
            Ok(set) => panic!("expected errors, parsed {set:?}"),
            Err(error) => error.issues().to_vec(),
        }
    }

    /// Asserts that exactly one issue has this object and field, and that its reason
    /// contains `reason`.
    fn assert_issue(issues: &[Issue], object: &str, field: &str, reason: &str) {
        let found: Vec<&Issue> = issues
            .iter()
            .filter(|issue| issue.object == object && issue.field == field)
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
    }

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
        let issues = issues_of(
            &(base_zones() + &policy("-x", "  from: [dmz]\n  to: [db]\n  action: Allow")),
        );
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
        let issues =
            issues_of(&(base_zones() + &policy("p", "  from: []\n  to: []\n  action: Deny")));
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
                action: super::super::model::Action::Allow,
                priority: 5,
                mode: Mode::Enforce,
            }],
            ..PolicySet::default()
        };
        validate(&set).unwrap();
        let mut broken = set.clone();
        broken.policies[0].to = vec!["nowhere".into()];
        let error = validate(&broken).unwrap_err();
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
}
