//! Compiler tests. The POLICY entries are checked through a bit-level longest-prefix
//! lookup written here, against a naive evaluator that ranks the policies for each
//! packet; the tests themselves are in the files by concern below.

mod generated;
mod membership;
mod partition;
mod rules;

use std::collections::BTreeMap;
use std::net::IpAddr;

use firewall_common::{
    POLICY_PREFIX_PAIR, POLICY_PREFIX_PROTO, PolicyKey, PolicyValue, RULE_DEFAULT_INTER_DENY,
    RULE_DEFAULT_INTRA_ALLOW, RULE_NONE, VERDICT_ALLOW, VERDICT_DENY,
};

use super::compile;
use crate::policy::compiled::{CompiledPolicy, Warning};
use crate::policy::model::{
    ANY_ZONE, Action, LabelSelector, Mode, Pod, PolicySet, Zone, ZonePolicy,
};
use crate::policy::validate::validate;

/// Validates a hand-built set, which must be valid, and compiles it.
fn compiled(set: &PolicySet) -> CompiledPolicy {
    compile(&validate(set.clone()).expect("a valid set"))
}

/// The warnings as people read them.
fn texts(warnings: &[Warning]) -> Vec<String> {
    warnings.iter().map(ToString::to_string).collect()
}

fn key_bytes(key: &PolicyKey) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[0..4].copy_from_slice(&key.slot);
    bytes[4..8].copy_from_slice(&key.src_zone);
    bytes[8..12].copy_from_slice(&key.dst_zone);
    bytes[12] = key.proto;
    bytes[13] = key._pad;
    bytes[14..16].copy_from_slice(&key.port);
    bytes
}

fn prefix_matches(entry: &[u8; 16], key: &[u8; 16], bits: u32) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits)
    };
    u128::from_be_bytes(*entry) & mask == u128::from_be_bytes(*key) & mask
}

/// What the kernel's LPM map answers (slot 0), or the kernel default for unknown pairs.
fn lookup(
    compiled: &CompiledPolicy,
    source: u32,
    destination: u32,
    proto: u8,
    port: u16,
) -> PolicyValue {
    Lpm::new(compiled).lookup(source, destination, proto, port)
}

/// A stored key, its prefix length and its value.
type Stored = ([u8; 16], u32, PolicyValue);

/// The entries as an LPM map, grouped by pair only to keep the tests fast.
struct Lpm {
    by_pair: BTreeMap<(u32, u32), Vec<Stored>>,
}

impl Lpm {
    fn new(compiled: &CompiledPolicy) -> Self {
        let mut by_pair: BTreeMap<(u32, u32), Vec<_>> = BTreeMap::new();
        for entry in &compiled.entries {
            let stored = key_bytes(&PolicyKey::new(
                0,
                entry.src_zone,
                entry.dst_zone,
                entry.proto,
                entry.port,
            ));
            by_pair
                .entry((entry.src_zone, entry.dst_zone))
                .or_default()
                .push((stored, entry.prefix_len, entry.value));
        }
        Lpm { by_pair }
    }

    fn lookup(&self, source: u32, destination: u32, proto: u8, port: u16) -> PolicyValue {
        let key = key_bytes(&PolicyKey::new(0, source, destination, proto, port));
        let best = self
            .by_pair
            .get(&(source, destination))
            .into_iter()
            .flatten()
            .filter(|(stored, prefix_len, _)| prefix_matches(stored, &key, *prefix_len))
            .max_by_key(|(_, prefix_len, _)| *prefix_len);
        match best {
            Some((_, _, value)) => *value,
            None if source == destination => allow(RULE_DEFAULT_INTRA_ALLOW),
            None => deny(RULE_DEFAULT_INTER_DENY),
        }
    }
}

fn allow(rule: u32) -> PolicyValue {
    PolicyValue {
        verdict: VERDICT_ALLOW,
        rule,
        ..PolicyValue::default()
    }
}

fn deny(rule: u32) -> PolicyValue {
    PolicyValue {
        verdict: VERDICT_DENY,
        rule,
        ..PolicyValue::default()
    }
}

fn audited(rule: u32, audit_rule: u32) -> PolicyValue {
    PolicyValue {
        audit: 1,
        audit_rule,
        ..allow(rule)
    }
}

/// The decision by ranking every policy for this one packet.
fn naive(
    set: &PolicySet,
    source: &str,
    destination: &str,
    proto: u8,
    port: u16,
) -> (u8, String, Option<String>) {
    let mut ranked: Vec<&ZonePolicy> = set.policies.iter().collect();
    ranked.sort_by(|left, right| (left.priority, &left.name).cmp(&(right.priority, &right.name)));
    let covers = |policy: &&&ZonePolicy| {
        let side = |zones: &[String], zone: &str| {
            zones.iter().any(|name| name == ANY_ZONE || name == zone)
        };
        side(&policy.from, source)
            && side(&policy.to, destination)
            && (policy.ports.is_empty()
                || policy.ports.iter().any(|rule| {
                    rule.protocol.number() == proto
                        && (!rule.protocol.has_ports()
                            || match (rule.port, rule.end_port) {
                                (None, _) => true,
                                (Some(start), end) => {
                                    (start..=end.unwrap_or(start)).contains(&i32::from(port))
                                }
                            })
                }))
    };
    let enforced = ranked
        .iter()
        .filter(|policy| policy.mode == Mode::Enforce)
        .find(covers);
    let any = ranked.iter().find(covers);
    let verdict = |policy: &ZonePolicy| match policy.action {
        Action::Allow => VERDICT_ALLOW,
        Action::Deny => VERDICT_DENY,
    };
    let (verdict_value, rule) = match enforced {
        Some(policy) => (verdict(policy), policy.name.clone()),
        None if source == destination => (VERDICT_ALLOW, "default-allow-intra-zone".to_string()),
        None => (VERDICT_DENY, "default-deny-inter-zone".to_string()),
    };
    let audit = any
        .filter(|policy| verdict_value == VERDICT_ALLOW && verdict(policy) == VERDICT_DENY)
        .map(|policy| policy.name.clone());
    (verdict_value, rule, audit)
}

fn rule_name(compiled: &CompiledPolicy, rule: u32) -> String {
    compiled.rules[&rule].name.clone()
}

fn id(compiled: &CompiledPolicy, zone: &str) -> u32 {
    compiled.zones[zone].id
}

/// Compares lookups with the naive evaluator for every zone pair and the given ports.
fn assert_agrees(set: &PolicySet, compiled: &CompiledPolicy, ports: &[u16]) {
    let zones: Vec<&String> = compiled.zones.keys().collect();
    let lpm = Lpm::new(compiled);
    for source in &zones {
        for destination in &zones {
            for proto in [6u8, 17, 132, 1, 58, 47] {
                for port in ports {
                    let value = lpm.lookup(
                        id(compiled, source),
                        id(compiled, destination),
                        proto,
                        *port,
                    );
                    let expected = naive(set, source, destination, proto, *port);
                    let audit = (value.audit == 1).then(|| rule_name(compiled, value.audit_rule));
                    let got = (value.verdict, rule_name(compiled, value.rule), audit);
                    assert_eq!(
                        got, expected,
                        "{source} -> {destination} proto {proto} port {port}"
                    );
                    if value.audit == 0 {
                        assert_eq!(value.audit_rule, RULE_NONE);
                    }
                }
            }
        }
    }
}

/// No two entries share a key (the LPM map would keep only one).
fn assert_unique_keys(compiled: &CompiledPolicy) {
    let mut keys = std::collections::BTreeSet::new();
    for entry in &compiled.entries {
        assert!(
            keys.insert((
                entry.src_zone,
                entry.dst_zone,
                entry.prefix_len,
                entry.proto,
                entry.port
            )),
            "duplicate entry {entry:?}"
        );
        let bits = entry.prefix_len.saturating_sub(POLICY_PREFIX_PROTO);
        if entry.prefix_len > POLICY_PREFIX_PROTO {
            let low_mask = (1u32 << (16 - bits)) - 1;
            assert_eq!(
                u32::from(entry.port) & low_mask,
                0,
                "host bits in {entry:?}"
            );
        }
    }
}

fn yaml_zones(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| {
            format!(
                "---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {{name: {name}}}\nspec: {{podSelector: {{matchLabels: {{zone: {name}}}}}}}\n"
            )
        })
        .collect()
}

fn yaml_policy(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {{name: {name}}}\nspec:\n{spec}\n"
    )
}

fn pod(namespace: &str, name: &str, labels: &[(&str, &str)], ips: &[&str]) -> Pod {
    Pod {
        namespace: namespace.into(),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
        ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        ..Pod::default()
    }
}

fn selector_zone(name: &str, key: &str, value: &str) -> Zone {
    Zone {
        name: name.into(),
        pod_selector: Some(LabelSelector {
            match_labels: [(key.to_string(), value.to_string())].into(),
            match_expressions: vec![],
        }),
        ..Zone::default()
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}
