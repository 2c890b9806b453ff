//! The rules a [`PolicySet`] must follow beyond field types: names, reserved zones,
//! duplicates, the shape of a zone, selector expressions, port ranges, references to
//! zones, network prefixes claimed twice and zone-id collisions. Every problem is
//! reported, each with its object, field path and what to do.
//!
//! A set that passes becomes a [`Validated`], which nothing else can make: whatever takes
//! one (the compiler) knows the rules hold and checks none of them again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Deref;

use super::ids::zone_id;
use super::issue::{Issue, PolicyError};
use super::messages::{edit_distance, port_out_of_range};
use super::model::{
    ANY_ZONE, LabelSelector, PolicySet, RESERVED_ZONES, SelectorOperator, Zone, ZonePolicy,
    is_reserved_zone,
};

/// A [`PolicySet`] that passed validation; only [`validate`] makes one. Reads as the set
/// it wraps.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated(PolicySet);

impl Deref for Validated {
    type Target = PolicySet;

    fn deref(&self) -> &PolicySet {
        &self.0
    }
}

impl Validated {
    /// The set, to change it (and validate it again).
    pub fn into_inner(self) -> PolicySet {
        self.0
    }
}

/// A set that failed validation: every problem found, and the set handed back so that a
/// caller can leave out what is at fault and try again without rebuilding it.
#[derive(Debug)]
pub struct Rejected {
    /// Boxed: a `Result` carrying it stays small.
    pub set: Box<PolicySet>,
    pub error: PolicyError,
}

impl Rejected {
    /// The problems found.
    pub fn issues(&self) -> &[Issue] {
        self.error.issues()
    }
}

impl From<Rejected> for PolicyError {
    fn from(rejected: Rejected) -> Self {
        rejected.error
    }
}

/// Checks `set`; on failure every problem found is listed.
pub fn validate(set: PolicySet) -> Result<Validated, Rejected> {
    validate_with(set, Vec::new(), &BTreeSet::new())
}

/// [`validate`] for a set fresh from the decoder: `earlier` are the problems decoding
/// found (the set is valid only without any), `broken_zones` the zones that exist in the
/// input but failed to decode, so that references to them are not reported again.
pub(super) fn validate_with(
    set: PolicySet,
    mut earlier: Vec<Issue>,
    broken_zones: &BTreeSet<String>,
) -> Result<Validated, Rejected> {
    check(&set, broken_zones, &mut earlier);
    if earlier.is_empty() {
        Ok(Validated(set))
    } else {
        Err(Rejected {
            set: Box::new(set),
            error: PolicyError::Invalid(earlier),
        })
    }
}

/// Appends the problems of `set` to `issues`.
fn check(set: &PolicySet, broken_zones: &BTreeSet<String>, issues: &mut Vec<Issue>) {
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

/// An issue about the cluster-scoped object `kind`/`name`.
fn issue(kind: &str, name: &str, field: impl Into<String>, reason: impl Into<String>) -> Issue {
    Issue::new(kind, None, name, field, reason)
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
            kind,
            name,
            "metadata.name",
            format!(
                "\"{name}\" is not a valid name; use lowercase letters, digits, '-' and '.', \
                 starting and ending with a letter or digit, at most 253 characters"
            ),
        ));
    }
}

fn check_zone(zone: &Zone, issues: &mut Vec<Issue>) {
    let zone_issue = |field: &str, reason: String| issue("Zone", &zone.name, field, reason);
    check_name("Zone", &zone.name, issues);
    if is_reserved_zone(&zone.name) {
        let reserved = RESERVED_ZONES.map(|(name, _)| name).join(", ");
        issues.push(zone_issue(
            "metadata.name",
            format!(
                "\"{}\" is a reserved zone ({reserved}) that zonewall defines itself; choose \
                 another name",
                zone.name
            ),
        ));
    }
    match (zone.has_selectors(), zone.networks.is_empty()) {
        (true, false) => issues.push(zone_issue(
            "spec",
            "a Zone has either selectors (namespaceSelector/podSelector, for pods) or networks \
             (CIDRs outside the cluster), not both; split it into two zones"
                .to_string(),
        )),
        (false, true) => issues.push(zone_issue(
            "spec",
            "a Zone needs namespaceSelector and/or podSelector (for pods), or networks (CIDRs \
             outside the cluster); an empty selector {} selects every pod"
                .to_string(),
        )),
        _ => {}
    }
    for (field, selector) in [
        ("spec.namespaceSelector", &zone.namespace_selector),
        ("spec.podSelector", &zone.pod_selector),
    ] {
        if let Some(selector) = selector {
            check_selector(&zone.name, field, selector, issues);
        }
    }
}

/// The selector at `field` of Zone `zone`.
fn check_selector(zone: &str, field: &str, selector: &LabelSelector, issues: &mut Vec<Issue>) {
    for key in selector.match_labels.keys() {
        if key.is_empty() {
            issues.push(issue(
                "Zone",
                zone,
                format!("{field}.matchLabels"),
                "a label key must not be empty",
            ));
        }
    }
    for (index, requirement) in selector.match_expressions.iter().enumerate() {
        let path = format!("{field}.matchExpressions[{index}]");
        if requirement.key.is_empty() {
            issues.push(issue(
                "Zone",
                zone,
                format!("{path}.key"),
                "must not be empty; name the label to test",
            ));
        }
        let operator = requirement.operator.as_str();
        match requirement.operator {
            SelectorOperator::In | SelectorOperator::NotIn if requirement.values.is_empty() => {
                issues.push(issue(
                    "Zone",
                    zone,
                    format!("{path}.values"),
                    format!("operator {operator} needs at least one value"),
                ));
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist
                if !requirement.values.is_empty() =>
            {
                issues.push(issue(
                    "Zone",
                    zone,
                    format!("{path}.values"),
                    format!("operator {operator} takes no values; remove values"),
                ));
            }
            _ => {}
        }
    }
}

fn check_policy(policy: &ZonePolicy, zone_names: &BTreeSet<&str>, issues: &mut Vec<Issue>) {
    let policy_issue =
        |field: String, reason: String| issue("ZonePolicy", &policy.name, field, reason);
    check_name("ZonePolicy", &policy.name, issues);
    for (field, zones, side) in [
        ("spec.from", &policy.from, "source"),
        ("spec.to", &policy.to, "destination"),
    ] {
        if zones.is_empty() {
            issues.push(policy_issue(
                field.to_string(),
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
            issues.push(Issue {
                missing_zone: Some(zone.clone()),
                ..policy_issue(
                    format!("{field}[{index}]"),
                    format!(
                        "zone \"{zone}\" does not exist; {closest}define a Zone named \"{zone}\", \
                         or use a reserved zone (world, unzoned, host) or \"*\" for every zone"
                    ),
                )
            });
        }
    }
    for (index, rule) in policy.ports.iter().enumerate() {
        let path = format!("spec.ports[{index}]");
        if !rule.protocol.has_ports() {
            for (field, value) in [("port", rule.port), ("endPort", rule.end_port)] {
                if value.is_some() {
                    issues.push(policy_issue(
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
            issues.push(policy_issue(
                format!("{path}.port"),
                port_out_of_range(port),
            ));
        }
        let Some(end_port) = rule.end_port else {
            continue;
        };
        if !(1..=65535).contains(&end_port) {
            issues.push(policy_issue(
                format!("{path}.endPort"),
                format!("endPort {end_port} is out of range; ports are 1..=65535"),
            ));
            continue;
        }
        match rule.port {
            None => issues.push(policy_issue(
                format!("{path}.endPort"),
                format!(
                    "endPort {end_port} needs port, the start of the range; add port (or remove \
                     endPort to match every {} port)",
                    rule.protocol
                ),
            )),
            Some(port) if port_valid && end_port < port => issues.push(policy_issue(
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
        let namespace = Some(namespace).filter(|namespace| !namespace.is_empty());
        issues.push(Issue::new(
            kind,
            namespace,
            name,
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
                    "Zone",
                    &zone.name,
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
                "Zone",
                name,
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
mod tests;
