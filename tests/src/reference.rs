//! The reference evaluator: zonewall's policy semantics written as plainly as possible,
//! to be compared with what the compiler and the kernel decide.
//!
//! It reads the parsed input ([`PolicySet`], from `firewall_agent::policy::parse`) and
//! answers one packet at a time by scanning everything: no ids, no LPM, no precomputed
//! tables, and no code shared with the compiler (label selectors are matched here too).
//! Slow on purpose; obviously right is the point.
//!
//! Semantics (as documented in `firewall_agent::policy::model`):
//! - Zone of an address: a node's address is `host`; else a pod's address is its pod's
//!   zone; else a Service's cluster IP has the zone of the pods it selects when they are
//!   all in one zone (what the destination pod decides once kube-proxy has translated the
//!   address; the datapath defers Service addresses to it); else the zone of the longest `spec.networks` prefix containing it;
//!   else `world`. Two pods (or services) with one address: the `namespace/name` that
//!   sorts first.
//! - Zone of a pod: `host` for host-network pods; else the first selector zone by name
//!   whose selectors match; else `unzoned`. Finished pods (`Succeeded`, `Failed`) own
//!   nothing.
//! - Decision: policies sorted by (priority, name); the first `Enforce` policy matching
//!   decides; without one, same zone allows and different zones deny. The first policy of
//!   any mode that matches is the audit verdict: when it denies what is allowed, the
//!   packet is an audit finding of that policy.
//!
//! Out of scope: sources the agent has not identified (the caller feeds known sources).

use std::collections::BTreeMap;
use std::net::IpAddr;

use firewall_agent::policy::model::{
    Action, LabelSelector, Mode, Pod, PolicySet, SelectorOperator, Zone, ZonePolicy,
};

/// The default rules' names, as in the compiled rule table.
pub const DEFAULT_INTRA_ZONE: &str = "default-allow-intra-zone";
pub const DEFAULT_INTER_ZONE: &str = "default-deny-inter-zone";

/// The decision about one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The enforced verdict.
    pub allowed: bool,
    /// The deciding policy's name, or [`DEFAULT_INTRA_ZONE`] / [`DEFAULT_INTER_ZONE`].
    pub policy: String,
    /// The Audit policy that would deny this allowed packet, if any.
    pub audit_policy: Option<String>,
    /// The zones the packet was judged between.
    pub src_zone: String,
    pub dst_zone: String,
}

/// Decides a packet from `src` to `dst` with IP protocol number `protocol` and
/// destination port `dst_port` (ignored by protocols without ports).
pub fn evaluate(
    set: &PolicySet,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    dst_port: u16,
) -> Decision {
    let src_zone = zone_of(set, src);
    let dst_zone = zone_of(set, dst);

    let mut ranked: Vec<&ZonePolicy> = set.policies.iter().collect();
    ranked.sort_by(|left, right| {
        left.priority
            .cmp(&right.priority)
            .then_with(|| left.name.cmp(&right.name))
    });
    let matching: Vec<&ZonePolicy> = ranked
        .into_iter()
        .filter(|policy| policy_matches(policy, &src_zone, &dst_zone, protocol, dst_port))
        .collect();

    let enforced = matching.iter().find(|policy| policy.mode == Mode::Enforce);
    let (allowed, policy) = match enforced {
        Some(policy) => (policy.action == Action::Allow, policy.name.clone()),
        None if src_zone == dst_zone => (true, DEFAULT_INTRA_ZONE.to_string()),
        None => (false, DEFAULT_INTER_ZONE.to_string()),
    };
    let audit_policy = match matching.first() {
        Some(first) if allowed && first.action == Action::Deny => Some(first.name.clone()),
        _ => None,
    };
    Decision {
        allowed,
        policy,
        audit_policy,
        src_zone,
        dst_zone,
    }
}

/// Whether `policy` covers this packet.
pub fn policy_matches(
    policy: &ZonePolicy,
    src_zone: &str,
    dst_zone: &str,
    protocol: u8,
    dst_port: u16,
) -> bool {
    let names = |zones: &[String], zone: &str| zones.iter().any(|name| name == "*" || name == zone);
    if !names(&policy.from, src_zone) || !names(&policy.to, dst_zone) {
        return false;
    }
    if policy.ports.is_empty() {
        return true;
    }
    policy.ports.iter().any(|entry| {
        if entry.protocol.number() != protocol {
            return false;
        }
        if !entry.protocol.has_ports() {
            return true;
        }
        match entry.port {
            None => true,
            Some(first) => {
                let last = entry.end_port.unwrap_or(first);
                first <= i32::from(dst_port) && i32::from(dst_port) <= last
            }
        }
    })
}

/// The zone name of an address.
pub fn zone_of(set: &PolicySet, ip: IpAddr) -> String {
    let ip = ip.to_canonical();

    if set.nodes.iter().any(|node| node.addresses.contains(&ip)) {
        return "host".to_string();
    }

    let mut pods: Vec<&Pod> = set
        .pods
        .iter()
        .filter(|pod| owns_addresses(pod) && pod.ips.contains(&ip))
        .collect();
    pods.sort_by(|left, right| (&left.namespace, &left.name).cmp(&(&right.namespace, &right.name)));
    if let Some(pod) = pods.first() {
        return pod_zone(set, pod);
    }

    let mut services: Vec<_> = set
        .services
        .iter()
        .filter(|service| service.cluster_ips.contains(&ip))
        .collect();
    services
        .sort_by(|left, right| (&left.namespace, &left.name).cmp(&(&right.namespace, &right.name)));
    for service in services {
        if service.selector.is_empty() {
            continue;
        }
        let mut zones: Vec<String> = set
            .pods
            .iter()
            .filter(|pod| {
                !is_finished(pod)
                    && pod.namespace == service.namespace
                    && service
                        .selector
                        .iter()
                        .all(|(key, value)| pod.labels.get(key) == Some(value))
            })
            .map(|pod| pod_zone(set, pod))
            .collect();
        zones.sort();
        zones.dedup();
        if zones.len() == 1 {
            return zones.remove(0);
        }
    }

    let mut best: Option<(u8, &str)> = None;
    for zone in &set.zones {
        for network in &zone.networks {
            let network = network.trunc();
            if network.contains(&ip) && best.is_none_or(|(length, _)| network.prefix_len() > length)
            {
                best = Some((network.prefix_len(), &zone.name));
            }
        }
    }
    match best {
        Some((_, zone)) => zone.to_string(),
        None => "world".to_string(),
    }
}

fn is_finished(pod: &Pod) -> bool {
    matches!(pod.phase.as_deref(), Some("Succeeded" | "Failed"))
}

/// Pods that own their addresses: running (or about to), not on the host network.
fn owns_addresses(pod: &Pod) -> bool {
    !is_finished(pod) && !pod.host_network
}

/// The zone a pod's traffic belongs to.
pub fn pod_zone(set: &PolicySet, pod: &Pod) -> String {
    if pod.host_network {
        return "host".to_string();
    }
    let mut namespace_labels: BTreeMap<String, String> = set
        .namespaces
        .iter()
        .find(|namespace| namespace.name == pod.namespace)
        .map(|namespace| namespace.labels.clone())
        .unwrap_or_default();
    namespace_labels.insert(
        "kubernetes.io/metadata.name".to_string(),
        pod.namespace.clone(),
    );

    let mut zones: Vec<&Zone> = set.zones.iter().collect();
    zones.sort_by(|left, right| left.name.cmp(&right.name));
    for zone in zones {
        if zone.namespace_selector.is_none() && zone.pod_selector.is_none() {
            continue;
        }
        let namespace_ok = zone
            .namespace_selector
            .as_ref()
            .is_none_or(|selector| selector_matches(selector, &namespace_labels));
        let pod_ok = zone
            .pod_selector
            .as_ref()
            .is_none_or(|selector| selector_matches(selector, &pod.labels));
        if namespace_ok && pod_ok {
            return zone.name.clone();
        }
    }
    "unzoned".to_string()
}

/// Kubernetes label-selector semantics.
fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    for (key, value) in &selector.match_labels {
        if labels.get(key) != Some(value) {
            return false;
        }
    }
    for requirement in &selector.match_expressions {
        let value = labels.get(&requirement.key);
        let holds = match requirement.operator {
            SelectorOperator::In => value.is_some_and(|value| requirement.values.contains(value)),
            SelectorOperator::NotIn => {
                !value.is_some_and(|value| requirement.values.contains(value))
            }
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        };
        if !holds {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::THREE_ZONES;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn set(extra: &str) -> firewall_agent::policy::Validated {
        firewall_agent::policy::parse(&format!("{THREE_ZONES}---\n{extra}")).unwrap()
    }

    #[test]
    fn zones_of_addresses() {
        let set = set(
            "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: partner-vip}\nspec: {networks: [203.0.113.128/25]}\n---\nkind: Node\nmetadata: {name: n}\nstatus: {addresses: [{type: InternalIP, address: 192.168.1.1}]}\n---\nkind: Pod\nmetadata: {name: agent, namespace: kube-system}\nspec: {hostNetwork: true}\nstatus: {podIP: 192.168.1.1}\n---\nkind: Pod\nmetadata: {name: stray, namespace: nowhere}\nstatus: {podIP: 198.18.9.9}\n---\nkind: Service\nmetadata: {name: web, namespace: web}\nspec: {clusterIP: 10.96.0.1, selector: {app: web}}\n---\nkind: Pod\nmetadata: {name: web-3, namespace: web, labels: {app: web}}\nstatus: {podIP: 198.18.0.12}\n",
        );
        assert_eq!(zone_of(&set, ip("198.18.0.10")), "dmz");
        assert_eq!(zone_of(&set, ip("::ffff:198.18.0.10")), "dmz");
        assert_eq!(zone_of(&set, ip("2001:db8::20")), "trusted");
        assert_eq!(zone_of(&set, ip("198.18.9.9")), "unzoned");
        assert_eq!(zone_of(&set, ip("192.168.1.1")), "host");
        assert_eq!(zone_of(&set, ip("10.96.0.1")), "dmz");
        assert_eq!(zone_of(&set, ip("203.0.113.7")), "partners");
        assert_eq!(zone_of(&set, ip("203.0.113.200")), "partner-vip");
        assert_eq!(zone_of(&set, ip("2001:db8:ffff:1::1")), "partners");
        assert_eq!(zone_of(&set, ip("8.8.8.8")), "world");
    }

    #[test]
    fn decisions() {
        let set = set(
            "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: stage-no-ssh}\nspec: {from: [\"*\"], to: [dmz], action: Deny, mode: Audit, priority: 1, ports: [{protocol: TCP, port: 22}]}\n",
        );
        let web = ip("198.18.0.10");
        let web2 = ip("198.18.0.11");
        let app = ip("198.18.0.20");
        let partner = ip("203.0.113.7");

        let decision = evaluate(&set, web, app, 6, 8080);
        assert!(decision.allowed);
        assert_eq!(decision.policy, "dmz-to-trusted-http");
        assert_eq!(
            (decision.src_zone.as_str(), decision.dst_zone.as_str()),
            ("dmz", "trusted")
        );

        let decision = evaluate(&set, web, app, 6, 8081);
        assert!(!decision.allowed);
        assert_eq!(decision.policy, DEFAULT_INTER_ZONE);

        let decision = evaluate(&set, app, partner, 1, 0);
        assert!(decision.allowed);
        assert_eq!(decision.policy, "trusted-to-partners");
        assert!(!evaluate(&set, app, partner, 17, 443).allowed);

        let decision = evaluate(&set, web2, web, 6, 22);
        assert!(decision.allowed);
        assert_eq!(decision.policy, DEFAULT_INTRA_ZONE);
        assert_eq!(decision.audit_policy.as_deref(), Some("stage-no-ssh"));
        assert_eq!(evaluate(&set, web2, web, 6, 23).audit_policy, None);
        // Audit never matters for what is denied anyway.
        assert_eq!(evaluate(&set, app, web, 6, 22).audit_policy, None);
    }

    /// What the compiled tables say (exact endpoint, else longest network, else world;
    /// then the longest POLICY prefix), for comparison with the evaluator.
    fn compiled_decision(
        compiled: &firewall_agent::policy::CompiledPolicy,
        src: IpAddr,
        dst: IpAddr,
        protocol: u8,
        port: u16,
    ) -> (bool, String, Option<String>) {
        use firewall_common::*;
        let zone = |ip: IpAddr| {
            if let Some(endpoint) = compiled.endpoints.get(&ip) {
                return endpoint.zone;
            }
            compiled
                .networks
                .iter()
                .filter(|(network, _)| network.contains(&ip))
                .max_by_key(|(network, _)| network.prefix_len())
                .map_or(ZONE_WORLD, |(_, zone)| *zone)
        };
        let (source, destination) = (zone(src), zone(dst));
        let best = compiled
            .entries
            .iter()
            .filter(|entry| entry.src_zone == source && entry.dst_zone == destination)
            .filter(|entry| {
                let bits = entry.prefix_len.saturating_sub(POLICY_PREFIX_PROTO);
                entry.prefix_len == POLICY_PREFIX_PAIR
                    || (entry.proto == protocol
                        && (bits == 0 || (entry.port ^ port) >> (16 - bits) == 0))
            })
            .max_by_key(|entry| entry.prefix_len);
        let value = match best {
            Some(entry) => entry.value,
            None if source == destination => PolicyValue {
                verdict: VERDICT_ALLOW,
                rule: RULE_DEFAULT_INTRA_ALLOW,
                ..PolicyValue::default()
            },
            None => PolicyValue {
                verdict: VERDICT_DENY,
                rule: RULE_DEFAULT_INTER_DENY,
                ..PolicyValue::default()
            },
        };
        let name = |rule: u32| compiled.rules[&rule].name.clone();
        (
            value.verdict == VERDICT_ALLOW,
            name(value.rule),
            (value.audit == 1).then(|| name(value.audit_rule)),
        )
    }

    /// A random input in the shape of the kernel differential test, plus overlapping
    /// zones, services, nodes and host-network pods.
    fn random_input(rng: &mut rand::rngs::StdRng) -> (String, Vec<IpAddr>) {
        use rand::prelude::*;
        let mut yaml = String::new();
        let mut addresses: Vec<IpAddr> = vec![
            ip("8.8.8.8"),
            ip("203.0.113.7"),
            ip("203.0.113.200"),
            ip("192.168.1.1"),
        ];
        let zones = ["z0", "z1", "z2", "z3"];
        for (index, zone) in zones.iter().enumerate() {
            yaml += &format!(
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{index}, labels: {{zone: {zone}}}}}\n"
            );
            yaml += &format!(
                "---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {{name: {zone}}}\nspec: {{namespaceSelector: {{matchLabels: {{zone: {zone}}}}}}}\n"
            );
            for pod in 0..2 {
                let address = format!("198.18.{index}.{}", 10 + pod);
                let role = if pod == 0 { "api" } else { "worker" };
                yaml += &format!(
                    "---\nkind: Pod\nmetadata: {{name: p{pod}, namespace: ns{index}, labels: {{role: {role}}}}}\nstatus: {{podIP: {address}}}\n"
                );
                addresses.push(ip(&address));
            }
        }
        // Overlaps with z1..: api pods of every namespace.
        yaml += "---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: z2-api}\nspec: {podSelector: {matchExpressions: [{key: role, operator: In, values: [api]}]}}\n";
        yaml += "---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: partners}\nspec: {networks: [203.0.113.0/24]}\n";
        yaml += "---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: partner-vip}\nspec: {networks: [203.0.113.128/25]}\n";
        yaml += "---\nkind: Node\nmetadata: {name: n}\nstatus: {addresses: [{type: InternalIP, address: 192.168.1.1}]}\n";
        yaml += "---\nkind: Pod\nmetadata: {name: agent, namespace: ns0}\nspec: {hostNetwork: true}\nstatus: {podIP: 192.168.1.1}\n";
        yaml += "---\nkind: Pod\nmetadata: {name: loner, namespace: nowhere}\nstatus: {podIP: 198.18.99.1}\n";
        yaml += "---\nkind: Service\nmetadata: {name: workers, namespace: ns1}\nspec: {clusterIP: 10.96.0.1, selector: {role: worker}}\n";
        // The Service's cluster IP is not drawn: the datapath never decides it from the
        // tables (it defers to the destination pod after DNAT; tests/tests/services.rs).
        addresses.extend([ip("198.18.99.1")]);
        let every = [
            "z0",
            "z1",
            "z2",
            "z3",
            "z2-api",
            "partners",
            "partner-vip",
            "world",
            "unzoned",
            "host",
            "\"*\"",
        ];
        for index in 0..rng.random_range(1..=8) {
            let side = |rng: &mut StdRng| {
                let count = rng.random_range(1..=2);
                (0..count)
                    .map(|_| *every.choose(rng).unwrap())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (from, to) = (side(rng), side(rng));
            let action = if rng.random_bool(0.5) {
                "Allow"
            } else {
                "Deny"
            };
            let mode = if rng.random_bool(0.25) {
                "Audit"
            } else {
                "Enforce"
            };
            let priority = rng.random_range(0..3) * 50;
            let mut entries = Vec::new();
            if rng.random_bool(0.7) {
                for _ in 0..rng.random_range(1..=3) {
                    let protocol = ["TCP", "UDP", "SCTP", "ICMP", "ICMPv6"][rng.random_range(0..5)];
                    entries.push(match (protocol, rng.random_range(0..3)) {
                        ("ICMP" | "ICMPv6", _) | (_, 0) => format!("{{protocol: {protocol}}}"),
                        (_, 1) => format!(
                            "{{protocol: {protocol}, port: {}}}",
                            rng.random_range(1..100)
                        ),
                        _ => {
                            let port = rng.random_range(1..100);
                            format!(
                                "{{protocol: {protocol}, port: {port}, endPort: {}}}",
                                port + rng.random_range(0..50)
                            )
                        }
                    });
                }
            }
            yaml += &format!(
                "---\napiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {{name: policy-{index}}}\nspec:\n  from: [{from}]\n  to: [{to}]\n  action: {action}\n  mode: {mode}\n  priority: {priority}\n  ports: [{}]\n",
                entries.join(", ")
            );
        }
        (yaml, addresses)
    }

    #[test]
    fn the_compiled_tables_agree_with_the_evaluator() {
        use rand::prelude::*;
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let (yaml, addresses) = random_input(&mut rng);
            let set = firewall_agent::policy::parse(&yaml)
                .unwrap_or_else(|error| panic!("{error}\n{yaml}"));
            let compiled = firewall_agent::policy::compile(&set);
            for _ in 0..200 {
                let src = *addresses.choose(&mut rng).unwrap();
                let dst = *addresses.choose(&mut rng).unwrap();
                let protocol = [6u8, 17, 132, 1, 58, 47][rng.random_range(0..6)];
                let port =
                    [0u16, 1, 20, 49, 50, 99, 100, 148, 149, 150, 65_535][rng.random_range(0..11)];
                let expected = evaluate(&set, src, dst, protocol, port);
                let got = compiled_decision(&compiled, src, dst, protocol, port);
                assert_eq!(
                    got,
                    (
                        expected.allowed,
                        expected.policy.clone(),
                        expected.audit_policy.clone()
                    ),
                    "{src} ({}) -> {dst} ({}) proto {protocol} port {port}\n{yaml}",
                    expected.src_zone,
                    expected.dst_zone
                );
            }
        }
    }
}
