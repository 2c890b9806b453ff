//! Compiler tests. The POLICY entries are checked through a bit-level longest-prefix
//! lookup written here, against a naive evaluator that ranks the policies for each packet.

use std::collections::BTreeMap;
use std::net::IpAddr;

use firewall_common::{
    FIRST_USER_RULE_ID, FIRST_USER_ZONE_ID, PolicyKey, PolicyValue, RULE_DEFAULT_INTER_DENY,
    RULE_DEFAULT_INTRA_ALLOW, RULE_FRAGMENT, RULE_NONE, RULE_UNKNOWN_SOURCE, VERDICT_ALLOW,
    VERDICT_DENY, ZONE_HOST, ZONE_UNZONED, ZONE_WORLD,
};

use super::super::compiled::{CompiledPolicy, EndpointKind, PolicyEntry};
use super::super::model::{
    ANY_ZONE, Action, LabelSelector, Mode, Pod, PolicySet, PortRule, Protocol, Zone, ZonePolicy,
};
use super::super::{load_str, parse};
use super::*;

// ---------------------------------------------------------------------------------------
// Helpers: LPM lookup and a naive evaluator.
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Zone ids and rules.
// ---------------------------------------------------------------------------------------

#[test]
fn zone_ids_are_fnv1a_above_the_reserved_range() {
    // FNV-1a 32 reference values.
    assert_eq!(zone_id(""), 0x811c_9dc5);
    assert_eq!(zone_id("a"), 0xe40c_292c);
    assert_eq!(zone_id("foobar"), 0xbf9c_f968);
    assert_eq!(above_reserved(0), FIRST_USER_ZONE_ID);
    assert_eq!(above_reserved(255), 255 + FIRST_USER_ZONE_ID);
    assert_eq!(above_reserved(256), 256);
    let compiled = load_str(&yaml_zones(&["dmz", "db"])).unwrap();
    assert_eq!(id(&compiled, "world"), ZONE_WORLD);
    assert_eq!(id(&compiled, "unzoned"), ZONE_UNZONED);
    assert_eq!(id(&compiled, "host"), ZONE_HOST);
    assert_eq!(id(&compiled, "dmz"), zone_id("dmz"));
    assert!(compiled.zones["world"].reserved && !compiled.zones["dmz"].reserved);
    assert_eq!(compiled.zones.len(), 5);
}

#[test]
fn rules_hold_reserved_ids_and_policies_in_name_order() {
    let yaml = yaml_zones(&["a"])
        + &yaml_policy(
            "zeta",
            "  from: [a]\n  to: [world]\n  action: Allow\n  priority: 1",
        )
        + &yaml_policy(
            "alpha",
            "  from: [a]\n  to: [world]\n  action: Deny\n  mode: Audit",
        );
    let compiled = load_str(&yaml).unwrap();
    assert_eq!(
        compiled.rules[&RULE_DEFAULT_INTRA_ALLOW].name,
        "default-allow-intra-zone"
    );
    assert_eq!(
        compiled.rules[&RULE_DEFAULT_INTER_DENY].name,
        "default-deny-inter-zone"
    );
    assert_eq!(compiled.rules[&RULE_UNKNOWN_SOURCE].name, "unknown-source");
    assert_eq!(compiled.rules[&RULE_FRAGMENT].name, "fragment");
    assert_eq!(
        compiled.rules[&firewall_common::RULE_SPOOFED].name,
        "spoofed-source"
    );
    let alpha = &compiled.rules[&FIRST_USER_RULE_ID];
    assert_eq!(
        (
            alpha.name.as_str(),
            alpha.action.as_str(),
            alpha.mode.as_str()
        ),
        ("alpha", "Deny", "Audit")
    );
    assert_eq!(alpha.priority, 1000);
    let zeta = &compiled.rules[&(FIRST_USER_RULE_ID + 1)];
    assert_eq!((zeta.name.as_str(), zeta.priority), ("zeta", 1));
    assert_eq!(compiled.rules.len(), 7);
}

#[test]
fn compile_rejects_an_invalid_set() {
    let set = PolicySet {
        zones: vec![Zone {
            name: "world".into(),
            ..Zone::default()
        }],
        ..PolicySet::default()
    };
    let error = compile(&set).unwrap_err();
    assert!(error.issues().len() >= 2, "{error}");
}

// ---------------------------------------------------------------------------------------
// Membership and endpoints.
// ---------------------------------------------------------------------------------------

#[test]
fn namespace_selector_sees_labels_and_the_implicit_name_label() {
    let yaml = r#"
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: prod}
spec: {namespaceSelector: {matchLabels: {env: prod}}}
---
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: payments}
spec:
  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: pay}}
  podSelector: {matchExpressions: [{key: app, operator: In, values: [api, worker]}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {env: prod}}
---
{kind: Pod, metadata: {name: web, namespace: shop}, status: {podIP: 10.0.0.1}}
---
{kind: Pod, metadata: {name: api, namespace: pay, labels: {app: api}}, status: {podIP: 10.0.0.2}}
---
{kind: Pod, metadata: {name: cron, namespace: pay, labels: {app: cron}}, status: {podIP: 10.0.0.3}}
---
{kind: Pod, metadata: {name: api, namespace: other, labels: {app: api}}, status: {podIP: 10.0.0.4}}
"#;
    let compiled = load_str(yaml).unwrap();
    assert_eq!(compiled.zones["prod"].members, ["shop/web"]);
    assert_eq!(compiled.zones["payments"].members, ["pay/api"]);
    assert_eq!(compiled.zones["unzoned"].members, ["other/api", "pay/cron"]);
    assert_eq!(compiled.endpoints[&ip("10.0.0.1")].zone, zone_id("prod"));
    assert_eq!(
        compiled.endpoints[&ip("10.0.0.2")].zone,
        zone_id("payments")
    );
    assert_eq!(compiled.endpoints[&ip("10.0.0.3")].zone, ZONE_UNZONED);
    assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
}

#[test]
fn pod_selector_alone_spans_namespaces_and_empty_selects_all() {
    let set = PolicySet {
        zones: vec![
            selector_zone("web", "app", "web"),
            Zone {
                name: "zz-everything".into(),
                namespace_selector: Some(LabelSelector::default()),
                ..Zone::default()
            },
        ],
        pods: vec![
            pod("a", "w", &[("app", "web")], &["10.0.0.1"]),
            pod("b", "w", &[("app", "web")], &["10.0.0.2"]),
            pod("c", "x", &[], &["10.0.0.3"]),
        ],
        ..PolicySet::default()
    };
    let compiled = compile(&set).unwrap();
    assert_eq!(compiled.zones["web"].members, ["a/w", "b/w"]);
    assert_eq!(compiled.zones["zz-everything"].members, ["c/x"]);
    assert_eq!(compiled.warnings.len(), 2, "{:?}", compiled.warnings);
    assert_eq!(
        compiled.warnings[0],
        "Pod a/w matches zones web, zz-everything; it is placed in zone web (the name that sorts \
         first)"
    );
}

#[test]
fn overlap_resolution_does_not_depend_on_input_order() {
    let mut set = PolicySet {
        zones: vec![
            selector_zone("b-zone", "tier", "x"),
            selector_zone("a-zone", "app", "x"),
            selector_zone("c-zone", "team", "x"),
        ],
        pods: vec![
            pod(
                "ns",
                "p1",
                &[("tier", "x"), ("app", "x"), ("team", "x")],
                &["10.0.0.1"],
            ),
            pod("ns", "p2", &[("tier", "x"), ("team", "x")], &["10.0.0.2"]),
            pod("ns", "p3", &[("team", "x")], &["10.0.0.3"]),
        ],
        ..PolicySet::default()
    };
    let first = compile(&set).unwrap();
    set.zones.reverse();
    set.pods.reverse();
    let second = compile(&set).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.endpoints[&ip("10.0.0.1")].zone, zone_id("a-zone"));
    assert_eq!(first.endpoints[&ip("10.0.0.2")].zone, zone_id("b-zone"));
    assert_eq!(first.endpoints[&ip("10.0.0.3")].zone, zone_id("c-zone"));
    assert_eq!(
        first.warnings,
        [
            "Pod ns/p1 matches zones a-zone, b-zone, c-zone; it is placed in zone a-zone (the name \
         that sorts first)",
            "Pod ns/p2 matches zones b-zone, c-zone; it is placed in zone b-zone (the name that sorts \
         first)",
        ]
    );
}

#[test]
fn host_network_and_finished_pods() {
    let mut host_pod = pod("kube-system", "proxy", &[("app", "web")], &["192.168.1.10"]);
    host_pod.host_network = true;
    let mut finished = pod("jobs", "old", &[("app", "web")], &["10.0.0.9"]);
    finished.phase = Some("Succeeded".into());
    let set = PolicySet {
        zones: vec![selector_zone("web", "app", "web")],
        pods: vec![host_pod, finished, pod("jobs", "new", &[], &["10.0.0.9"])],
        ..PolicySet::default()
    };
    let compiled = compile(&set).unwrap();
    assert!(!compiled.endpoints.contains_key(&ip("192.168.1.10")));
    assert_eq!(compiled.zones["host"].members, ["kube-system/proxy"]);
    assert_eq!(compiled.endpoints[&ip("10.0.0.9")].zone, ZONE_UNZONED);
    assert!(compiled.zones["web"].members.is_empty());
    assert_eq!(
        compiled.warnings,
        [
            "Pod kube-system/proxy uses the host network: its traffic leaves from the node's address \
         and is identified as zone host, not zone web",
            "Zone/web selects no pod",
        ]
    );
}

#[test]
fn endpoints_of_pods_nodes_and_their_conflicts() {
    let yaml = yaml_zones(&["web"])
        + "---\n{kind: Node, metadata: {name: n1}, status: {addresses: [{type: InternalIP, address: 192.168.1.1}, {type: ExternalIP, address: \"2001:db8::1\"}]}}\n"
        + "---\n{kind: Pod, metadata: {name: squatter, namespace: a, uid: u1}, status: {podIP: 192.168.1.1}}\n"
        + "---\n{kind: Pod, metadata: {name: y, namespace: b, labels: {zone: web}}, spec: {nodeName: n1}, status: {podIP: 10.0.0.5}}\n"
        + "---\n{kind: Pod, metadata: {name: x, namespace: b, uid: u2}, status: {podIPs: [{ip: 10.0.0.5}, {ip: \"fd00::5\"}]}}\n";
    let compiled = load_str(&yaml).unwrap();
    let node = &compiled.endpoints[&ip("192.168.1.1")];
    assert_eq!(node.zone, ZONE_HOST);
    assert_eq!(node.kind, EndpointKind::Node { name: "n1".into() });
    assert_eq!(compiled.endpoints[&ip("2001:db8::1")].zone, ZONE_HOST);
    // Pod b/x sorts before b/y and keeps 10.0.0.5.
    let shared = &compiled.endpoints[&ip("10.0.0.5")];
    assert_eq!(shared.zone, ZONE_UNZONED);
    assert_eq!(shared.kind.owner_key(), "pod/b/x/u2");
    assert_eq!(compiled.endpoints[&ip("fd00::5")].zone, ZONE_UNZONED);
    assert_eq!(
        compiled.warnings,
        [
            "IP 10.0.0.5 is claimed by Pod/b/x and Pod/b/y; Pod/b/x keeps it (nodes win over pods, \
         pods over services, then the name that sorts first)",
            "IP 192.168.1.1 is claimed by Node/n1 and Pod/a/squatter; Node/n1 keeps it (nodes win \
         over pods, pods over services, then the name that sorts first)",
        ]
    );
    assert_eq!(compiled.endpoints.len(), 4);
    let EndpointKind::Pod { node, labels, .. } = &compiled.endpoints[&ip("fd00::5")].kind else {
        panic!("a pod");
    };
    assert!(node.is_none() && labels.is_empty());
}

#[test]
fn service_ips_take_the_zone_of_their_pods() {
    let yaml = yaml_zones(&["web", "db"])
        + "---\n{kind: Pod, metadata: {name: w1, namespace: shop, labels: {app: web, zone: web}}, status: {podIP: 10.0.0.1}}\n"
        + "---\n{kind: Pod, metadata: {name: w2, namespace: shop, labels: {app: web, zone: web}}, status: {podIP: 10.0.0.2}}\n"
        + "---\n{kind: Pod, metadata: {name: d1, namespace: shop, labels: {app: mixed, zone: db}}, status: {podIP: 10.0.0.3}}\n"
        + "---\n{kind: Pod, metadata: {name: w3, namespace: shop, labels: {app: mixed, zone: web}}, status: {podIP: 10.0.0.4}}\n"
        + "---\n{kind: Pod, metadata: {name: w4, namespace: other, labels: {app: lonely, zone: web}}, status: {podIP: 10.0.0.6}}\n"
        + "---\n{kind: Service, metadata: {name: web, namespace: shop}, spec: {clusterIP: 10.96.0.1, selector: {app: web}}}\n"
        + "---\n{kind: Service, metadata: {name: mixed, namespace: shop}, spec: {clusterIP: 10.96.0.2, selector: {app: mixed}}}\n"
        + "---\n{kind: Service, metadata: {name: lonely, namespace: shop}, spec: {clusterIP: 10.96.0.3, selector: {app: lonely}}}\n"
        + "---\n{kind: Service, metadata: {name: manual, namespace: shop}, spec: {clusterIP: 10.96.0.4}}\n"
        + "---\n{kind: Service, metadata: {name: headless, namespace: shop}, spec: {clusterIP: None, selector: {app: web}}}\n";
    let compiled = load_str(&yaml).unwrap();
    let service = &compiled.endpoints[&ip("10.96.0.1")];
    // Deferred to the destination pod: judged after kube-proxy's DNAT.
    assert_eq!(service.zone, firewall_common::ZONE_NONE);
    assert_eq!(
        service.kind,
        EndpointKind::Service {
            namespace: "shop".into(),
            name: "web".into()
        }
    );
    for missing in ["10.96.0.3", "10.96.0.4"] {
        assert!(!compiled.endpoints.contains_key(&ip(missing)), "{missing}");
    }
    // Pods of several zones: zone NONE, so the datapath defers to the destination pod.
    assert_eq!(
        compiled.endpoints[&ip("10.96.0.2")].zone,
        firewall_common::ZONE_NONE
    );
    assert_eq!(
        compiled.warnings,
        [
            "Service shop/lonely selects no pod; its cluster IPs get no zone",
            "Service shop/manual has no selector; its cluster IPs get no zone",
            "Service shop/mixed selects pods of several zones (db, web); each connection is judged by the zone of the pod it reaches",
        ]
    );
}

#[test]
fn networks_are_normalised_and_sorted() {
    let yaml = "---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: corp}\nspec: {networks: [10.1.2.3/8, \"fd00::/8\", 10.0.0.0/8, 192.168.0.0/16]}\n---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: branch}\nspec: {networks: [10.20.0.0/16]}\n";
    let compiled = load_str(yaml).unwrap();
    let corp = zone_id("corp");
    let branch = zone_id("branch");
    let expected: Vec<(ipnet::IpNet, u32)> = vec![
        ("10.0.0.0/8".parse().unwrap(), corp),
        ("10.20.0.0/16".parse().unwrap(), branch),
        ("192.168.0.0/16".parse().unwrap(), corp),
        ("fd00::/8".parse().unwrap(), corp),
    ];
    assert_eq!(compiled.networks, expected);
    assert_eq!(compiled.zones["corp"].networks.len(), 3);
    assert_eq!(
        compiled.warnings,
        [
            "Zone/corp: spec.networks[0] 10.1.2.3/8 has host bits set; using 10.0.0.0/8",
            "Zone/corp: spec.networks[2] 10.0.0.0/8 is listed more than once",
        ]
    );
}

// ---------------------------------------------------------------------------------------
// The POLICY partition.
// ---------------------------------------------------------------------------------------

/// What a longest-prefix lookup of `port` finds among `blocks`, else `inherited`.
fn lookup_blocks(
    blocks: &[(u32, u32, PolicyValue)],
    inherited: PolicyValue,
    port: u32,
) -> PolicyValue {
    blocks
        .iter()
        .filter(|(start, bits, _)| port >> bits == start >> bits)
        .min_by_key(|(_, bits, _)| *bits)
        .map_or(inherited, |(_, _, value)| *value)
}

#[test]
fn fewest_blocks_nest_exceptions_inside_a_wider_block() {
    let (pair, rule_a, rule_b) = (deny(RULE_DEFAULT_INTER_DENY), allow(70), deny(71));
    let single = [(0, 442, pair), (443, 443, rule_a), (444, 65_535, pair)];
    assert_eq!(fewest_blocks(&single, pair), [(443, 0, rule_a)]);
    // The same port when the protocol's background differs from the pair entry: one
    // entry for the protocol, one for the port.
    let other = [(0, 442, rule_b), (443, 443, rule_a), (444, 65_535, rule_b)];
    assert_eq!(
        fewest_blocks(&other, pair),
        [(0, 16, rule_b), (443, 0, rule_a)]
    );
    assert_eq!(fewest_blocks(&[(0, 65_535, pair)], pair), []);
    assert_eq!(
        fewest_blocks(&[(0, 65_535, rule_a)], pair),
        [(0, 16, rule_a)]
    );
}

#[test]
fn fewest_blocks_match_every_port_and_beat_a_flat_partition() {
    let values = [
        deny(RULE_DEFAULT_INTER_DENY),
        allow(70),
        allow(71),
        deny(72),
    ];
    let mut seed = 0x1234_5678u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for _ in 0..300 {
        // Random cut points, random values, neighbours merged as the compiler does.
        let mut cuts: Vec<u32> = (0..next() % 12).map(|_| 1 + next() % 65_535).collect();
        if next() % 4 == 0 {
            let port = next() % 65_535;
            cuts.extend([port, port + 1]);
        }
        cuts.push(0);
        cuts.sort_unstable();
        cuts.dedup();
        let mut segments: Vec<(u32, u32, PolicyValue)> = Vec::new();
        for (index, start) in cuts.iter().enumerate() {
            let end = cuts.get(index + 1).map_or(65_535, |next| next - 1);
            let value = values[next() as usize % values.len()];
            match segments.last_mut() {
                Some(last) if last.2 == value => last.1 = end,
                _ => segments.push((*start, end, value)),
            }
        }
        let inherited = values[next() as usize % values.len()];
        let blocks = fewest_blocks(&segments, inherited);
        for (start, end, value) in &segments {
            let mut probes = vec![*start, *end, (start + end) / 2];
            probes.extend((0..8).map(|_| start + next() % (end - start + 1)));
            for port in probes {
                assert_eq!(
                    lookup_blocks(&blocks, inherited, port),
                    *value,
                    "port {port} of {segments:?}: {blocks:?}"
                );
            }
        }
        // Every block is aligned and distinct.
        let mut seen = std::collections::BTreeSet::new();
        for (start, bits, _) in &blocks {
            assert_eq!(start % (1 << bits), 0, "aligned");
            assert!(seen.insert((*start, *bits)), "one entry per prefix");
        }
        // Never more entries than the flat partition into aligned blocks.
        let flat: usize = segments
            .iter()
            .filter(|_| !(segments.len() == 1 && segments[0].2 == inherited))
            .map(|(start, end, _)| flat_blocks(*start, *end))
            .sum();
        assert!(blocks.len() <= flat, "{} > {flat}", blocks.len());
    }
}

/// How many aligned power-of-two blocks exactly cover `start..=end`.
fn flat_blocks(mut start: u32, end: u32) -> usize {
    let mut count = 0;
    while start <= end {
        let mut bits = if start == 0 {
            16
        } else {
            start.trailing_zeros().min(16)
        };
        while start + (1 << bits) - 1 > end {
            bits -= 1;
        }
        count += 1;
        start += 1 << bits;
    }
    count
}

#[test]
fn painter_gives_each_port_to_the_first_policy() {
    let mut painter = Painter::new();
    assert!(painter.paint(100, 200, 0));
    assert!(painter.paint(150, 300, 1));
    assert!(!painter.paint(120, 180, 2));
    assert!(painter.paint(0, 65_535, 3));
    assert!(painter.is_full());
    assert_eq!(
        painter.finish(),
        [
            (0, 99, Some(3)),
            (100, 200, Some(0)),
            (201, 300, Some(1)),
            (301, 65_535, Some(3)),
        ]
    );
    let mut painter = Painter::new();
    painter.paint(5, 5, 0);
    assert_eq!(
        painter.finish(),
        [(0, 4, None), (5, 5, Some(0)), (6, 65_535, None)]
    );
}

const EDGE_PORTS: [u16; 17] = [
    0, 1, 2, 52, 53, 54, 79, 80, 81, 442, 443, 444, 8079, 8080, 8090, 8091, 65_535,
];

#[test]
fn port_ranges_and_protocols_follow_priority() {
    let yaml = yaml_zones(&["dmz", "db"])
        + &yaml_policy(
            "web",
            "  from: [dmz]\n  to: [db]\n  action: Allow\n  priority: 10\n  ports:\n    - {protocol: TCP, port: 443}\n    - {protocol: TCP, port: 8080, endPort: 8090}\n    - {protocol: UDP, port: 53}\n    - {protocol: ICMP}",
        )
        + &yaml_policy(
            "no-8085",
            "  from: [dmz]\n  to: [db]\n  action: Deny\n  priority: 5\n  ports: [{protocol: TCP, port: 8085}]",
        )
        + &yaml_policy(
            "sctp-all",
            "  from: [dmz]\n  to: [db]\n  action: Allow\n  priority: 20\n  ports: [{protocol: SCTP}]",
        );
    let set = parse(&yaml).unwrap();
    let compiled = compile(&set).unwrap();
    assert_unique_keys(&compiled);
    let mut ports = EDGE_PORTS.to_vec();
    ports.extend([8084, 8085, 8086]);
    assert_agrees(&set, &compiled, &ports);

    let (dmz, db) = (id(&compiled, "dmz"), id(&compiled, "db"));
    let web = FIRST_USER_RULE_ID + 2;
    let no_8085 = FIRST_USER_RULE_ID;
    assert_eq!(lookup(&compiled, dmz, db, 6, 443), allow(web));
    assert_eq!(lookup(&compiled, dmz, db, 6, 8085), deny(no_8085));
    assert_eq!(lookup(&compiled, dmz, db, 6, 8090), allow(web));
    assert_eq!(
        lookup(&compiled, dmz, db, 6, 8091),
        deny(RULE_DEFAULT_INTER_DENY)
    );
    assert_eq!(lookup(&compiled, dmz, db, 17, 53), allow(web));
    assert_eq!(lookup(&compiled, dmz, db, 1, 0), allow(web));
    assert_eq!(
        lookup(&compiled, dmz, db, 58, 0),
        deny(RULE_DEFAULT_INTER_DENY)
    );
    assert_eq!(
        lookup(&compiled, dmz, db, 132, 0),
        allow(FIRST_USER_RULE_ID + 1)
    );
    assert_eq!(
        lookup(&compiled, db, dmz, 6, 443),
        deny(RULE_DEFAULT_INTER_DENY)
    );

    let pair: Vec<&PolicyEntry> = compiled
        .entries
        .iter()
        .filter(|entry| entry.src_zone == dmz && entry.dst_zone == db)
        .collect();
    let pair_level: Vec<_> = pair
        .iter()
        .filter(|entry| entry.prefix_len == POLICY_PREFIX_PAIR)
        .collect();
    assert_eq!(pair_level.len(), 1);
    assert_eq!(pair_level[0].value, deny(RULE_DEFAULT_INTER_DENY));
    let icmp: Vec<_> = pair.iter().filter(|entry| entry.proto == 1).collect();
    assert_eq!(icmp.len(), 1);
    assert_eq!((icmp[0].prefix_len, icmp[0].port), (POLICY_PREFIX_PROTO, 0));
    let sctp: Vec<_> = pair.iter().filter(|entry| entry.proto == 132).collect();
    assert_eq!(sctp.len(), 1, "a constant protocol is one /112 entry");
    assert_eq!(pair.iter().filter(|entry| entry.proto == 58).count(), 0);
    // Only the pair some policy covers has entries.
    assert!(
        compiled
            .entries
            .iter()
            .all(|entry| entry.src_zone == dmz && entry.dst_zone == db)
    );
}

#[test]
fn every_port_of_a_partition_matches_the_ranking() {
    let yaml = yaml_zones(&["a", "b"])
        + &yaml_policy(
            "p1",
            "  from: [a]\n  to: [b]\n  action: Allow\n  priority: 3\n  ports: [{protocol: TCP, port: 1000, endPort: 2000}, {protocol: TCP, port: 3}]",
        )
        + &yaml_policy(
            "p2",
            "  from: [a]\n  to: [b]\n  action: Deny\n  priority: 2\n  ports: [{protocol: TCP, port: 1500, endPort: 1501}]",
        )
        + &yaml_policy(
            "p3",
            "  from: [a]\n  to: [b]\n  action: Allow\n  priority: 4\n  mode: Audit\n  ports: [{protocol: TCP, port: 1, endPort: 65535}]",
        )
        + &yaml_policy(
            "p4",
            "  from: [a]\n  to: [b]\n  action: Deny\n  priority: 4\n  mode: Audit\n  ports: [{protocol: TCP, port: 1999, endPort: 2001}]",
        );
    let set = parse(&yaml).unwrap();
    let compiled = compile(&set).unwrap();
    assert_unique_keys(&compiled);
    let (a, b) = (id(&compiled, "a"), id(&compiled, "b"));
    let lpm = Lpm::new(&compiled);
    for port in 0..=65_535u16 {
        let value = lpm.lookup(a, b, 6, port);
        let (verdict, rule, audit) = naive(&set, "a", "b", 6, port);
        assert_eq!(
            (value.verdict, rule_name(&compiled, value.rule)),
            (verdict, rule),
            "port {port}"
        );
        assert_eq!(
            (value.audit == 1).then(|| rule_name(&compiled, value.audit_rule)),
            audit
        );
    }
    assert_eq!(
        lookup(&compiled, a, b, 6, 0),
        deny(RULE_DEFAULT_INTER_DENY),
        "port 0 is outside 1..=65535"
    );
}

#[test]
fn protocols_equal_to_the_pair_entry_are_skipped() {
    let yaml = yaml_zones(&["a", "b"])
        + &yaml_policy(
            "all",
            "  from: [a]\n  to: [b]\n  action: Allow\n  priority: 1",
        )
        + &yaml_policy(
            "shadowed",
            "  from: [a]\n  to: [b]\n  action: Deny\n  priority: 2\n  ports: [{protocol: TCP, port: 22}, {protocol: ICMP}]",
        );
    let compiled = load_str(&yaml).unwrap();
    assert_eq!(compiled.entries.len(), 1, "{:?}", compiled.entries);
    assert_eq!(compiled.entries[0].value, allow(FIRST_USER_RULE_ID));
    assert_eq!(
        compiled.warnings,
        [
            "ZonePolicy/shadowed never decides any traffic: policies ranked before it (lower \
         priority, or equal priority and a smaller name) cover everything it matches",
        ]
    );
}

#[test]
fn priority_ties_are_broken_by_name() {
    let yaml = yaml_zones(&["a", "b"])
        + &yaml_policy("b-allow", "  from: [a]\n  to: [b]\n  action: Allow")
        + &yaml_policy("a-deny", "  from: [a]\n  to: [b]\n  action: Deny")
        + &yaml_policy(
            "c-allow",
            "  from: [a]\n  to: [b]\n  action: Allow\n  priority: 999",
        );
    let compiled = load_str(&yaml).unwrap();
    let (a, b) = (id(&compiled, "a"), id(&compiled, "b"));
    let value = lookup(&compiled, a, b, 6, 80);
    assert_eq!(rule_name(&compiled, value.rule), "c-allow");
    let yaml = yaml_zones(&["a", "b"])
        + &yaml_policy("b-allow", "  from: [a]\n  to: [b]\n  action: Allow")
        + &yaml_policy("a-deny", "  from: [a]\n  to: [b]\n  action: Deny");
    let compiled = load_str(&yaml).unwrap();
    let value = lookup(&compiled, a, b, 6, 80);
    assert_eq!(rule_name(&compiled, value.rule), "a-deny");
    assert_eq!(value.verdict, VERDICT_DENY);
}

#[test]
fn intra_zone_defaults_and_overrides() {
    let yaml = yaml_zones(&["a"])
        + &yaml_policy(
            "lock-a",
            "  from: [a]\n  to: [a]\n  action: Deny\n  ports: [{protocol: TCP, port: 22}]",
        );
    let compiled = load_str(&yaml).unwrap();
    let a = id(&compiled, "a");
    assert_eq!(lookup(&compiled, a, a, 6, 22), deny(FIRST_USER_RULE_ID));
    assert_eq!(
        lookup(&compiled, a, a, 6, 23),
        allow(RULE_DEFAULT_INTRA_ALLOW)
    );
    assert_eq!(
        lookup(&compiled, a, a, 17, 22),
        allow(RULE_DEFAULT_INTRA_ALLOW)
    );
    let pair_entry = compiled
        .entries
        .iter()
        .find(|entry| entry.prefix_len == POLICY_PREFIX_PAIR)
        .unwrap();
    assert_eq!(pair_entry.value, allow(RULE_DEFAULT_INTRA_ALLOW));
}

#[test]
fn audit_marks_without_changing_the_enforced_verdict() {
    let yaml = yaml_zones(&["a", "b"])
        + &yaml_policy(
            "allow-all",
            "  from: [a]\n  to: [b]\n  action: Allow\n  priority: 100",
        )
        + &yaml_policy(
            "stage-deny-ssh",
            "  from: [a]\n  to: [b]\n  action: Deny\n  mode: Audit\n  priority: 50\n  ports: [{protocol: TCP, port: 22}]",
        )
        + &yaml_policy(
            "stage-deny-late",
            "  from: [a]\n  to: [b]\n  action: Deny\n  mode: Audit\n  priority: 200\n  ports: [{protocol: TCP, port: 80}]",
        )
        + &yaml_policy(
            "stage-allow",
            "  from: [b]\n  to: [a]\n  action: Allow\n  mode: Audit",
        )
        + &yaml_policy(
            "stage-deny-b",
            "  from: [b]\n  to: [b]\n  action: Deny\n  mode: Audit",
        );
    let set = parse(&yaml).unwrap();
    let compiled = compile(&set).unwrap();
    assert_agrees(&set, &compiled, &[0, 21, 22, 23, 80, 443]);
    let (a, b) = (id(&compiled, "a"), id(&compiled, "b"));
    let allow_all = FIRST_USER_RULE_ID;
    let stage_deny_b = FIRST_USER_RULE_ID + 2;
    let stage_deny_ssh = FIRST_USER_RULE_ID + 4;
    // Audit deny ranked before the enforced allow: marked.
    assert_eq!(
        lookup(&compiled, a, b, 6, 22),
        audited(allow_all, stage_deny_ssh)
    );
    // Audit deny ranked after the enforced allow: the allow decides both ways.
    assert_eq!(lookup(&compiled, a, b, 6, 80), allow(allow_all));
    assert_eq!(lookup(&compiled, a, b, 17, 22), allow(allow_all));
    // An Audit allow never opens anything.
    assert_eq!(
        lookup(&compiled, b, a, 6, 22),
        deny(RULE_DEFAULT_INTER_DENY)
    );
    // Audit deny over the intra-zone default allow.
    assert_eq!(
        lookup(&compiled, b, b, 17, 53),
        audited(RULE_DEFAULT_INTRA_ALLOW, stage_deny_b)
    );
    assert!(
        compiled
            .warnings
            .iter()
            .any(|warning| warning.contains("stage-deny-late never decides")),
        "{:?}",
        compiled.warnings
    );
    assert!(
        !compiled
            .warnings
            .iter()
            .any(|warning| warning.contains("stage-allow ")),
        "{:?}",
        compiled.warnings
    );
}

#[test]
fn wildcards_expand_to_every_zone_including_reserved() {
    let yaml = yaml_zones(&["a", "b"])
        + &yaml_policy(
            "to-b",
            "  from: [\"*\"]\n  to: [b]\n  action: Allow\n  ports: [{protocol: TCP, port: 443}]",
        )
        + &yaml_policy(
            "a-out",
            "  from: [a]\n  to: [\"*\", world]\n  action: Allow\n  ports: [{protocol: UDP, port: 53}]",
        );
    let set = parse(&yaml).unwrap();
    let compiled = compile(&set).unwrap();
    assert_unique_keys(&compiled);
    assert_agrees(&set, &compiled, &EDGE_PORTS);
    let b = id(&compiled, "b");
    let a = id(&compiled, "a");
    for source in ["world", "unzoned", "host", "a", "b"] {
        let source = id(&compiled, source);
        assert_eq!(
            lookup(&compiled, source, b, 6, 443),
            allow(FIRST_USER_RULE_ID + 1)
        );
        assert!(
            compiled
                .entries
                .iter()
                .any(|entry| entry.src_zone == source && entry.dst_zone == b)
        );
    }
    for destination in ["world", "unzoned", "host", "a", "b"] {
        let destination = id(&compiled, destination);
        assert_eq!(
            lookup(&compiled, a, destination, 17, 53),
            allow(FIRST_USER_RULE_ID)
        );
    }
    let pairs: std::collections::BTreeSet<(u32, u32)> = compiled
        .entries
        .iter()
        .map(|entry| (entry.src_zone, entry.dst_zone))
        .collect();
    assert_eq!(pairs.len(), 5 + 5 - 1);

    let any = load_str(
        &(yaml_zones(&["a"])
            + &yaml_policy("any", "  from: [\"*\"]\n  to: [\"*\"]\n  action: Deny")),
    )
    .unwrap();
    assert_eq!(
        any.entries.len(),
        16,
        "every pair of 4 zones, one entry each"
    );
    assert!(
        any.entries
            .iter()
            .all(|entry| entry.value == deny(FIRST_USER_RULE_ID))
    );
}

/// xorshift32, so the generated inputs are the same on every run.
struct Sequence(u32);

impl Sequence {
    fn next(&mut self, bound: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0 % bound
    }
}

fn generated_set(sequence: &mut Sequence, policies: usize) -> PolicySet {
    let zone_names = ["a", "b", "c"];
    let every = ["a", "b", "c", "world", "unzoned", "host", "*"];
    let mut set = PolicySet {
        zones: zone_names
            .iter()
            .map(|name| selector_zone(name, "zone", name))
            .collect(),
        ..PolicySet::default()
    };
    let side = |sequence: &mut Sequence| -> Vec<String> {
        (0..1 + sequence.next(2))
            .map(|_| every[sequence.next(every.len() as u32) as usize].to_string())
            .collect()
    };
    for index in 0..policies {
        let mut ports = Vec::new();
        if sequence.next(4) != 0 {
            for _ in 0..1 + sequence.next(3) {
                let protocol = Protocol::ALL[sequence.next(5) as usize];
                let (port, end_port) = if !protocol.has_ports() || sequence.next(5) == 0 {
                    (None, None)
                } else {
                    let start = [1, 22, 53, 80, 443, 1000, 65_535][sequence.next(7) as usize]
                        + sequence.next(3) as i32;
                    let start = start.min(65_535);
                    let end = (sequence.next(2) == 0)
                        .then(|| (start + sequence.next(3000) as i32).min(65_535));
                    (Some(start), end)
                };
                ports.push(PortRule {
                    protocol,
                    port,
                    end_port,
                });
            }
        }
        set.policies.push(ZonePolicy {
            name: format!("policy-{index}"),
            from: side(sequence),
            to: side(sequence),
            ports,
            action: if sequence.next(2) == 0 {
                Action::Allow
            } else {
                Action::Deny
            },
            priority: sequence.next(4) as i32,
            mode: if sequence.next(3) == 0 {
                Mode::Audit
            } else {
                Mode::Enforce
            },
        });
    }
    set
}

#[test]
fn generated_policies_agree_with_the_ranking() {
    let mut sequence = Sequence(0x9e37_79b9);
    for round in 0..40 {
        let set = generated_set(&mut sequence, 1 + round % 12);
        let compiled = compile(&set).unwrap();
        assert_unique_keys(&compiled);
        let mut ports: Vec<u16> = vec![0, 65_535];
        for policy in &set.policies {
            for rule in &policy.ports {
                for edge in [rule.port, rule.end_port].into_iter().flatten() {
                    for port in [edge - 1, edge, edge + 1] {
                        if (0..=65_535).contains(&port) {
                            ports.push(port as u16);
                        }
                    }
                }
            }
        }
        ports.sort_unstable();
        ports.dedup();
        assert_agrees(&set, &compiled, &ports);
    }
}

/// A large input: many zones, policies between random pairs, `*` policies and pods.
fn large_set(zones: usize, policies: usize, pods: usize) -> PolicySet {
    let mut sequence = Sequence(0x0bad_5eed);
    let zone_name = |index: usize| format!("zone-{index}");
    let mut set = PolicySet {
        zones: (0..zones)
            .map(|index| selector_zone(&zone_name(index), "zone", &zone_name(index)))
            .collect(),
        ..PolicySet::default()
    };
    for index in 0..policies {
        let wildcard = index % 100 == 0;
        let from = if wildcard {
            ANY_ZONE.to_string()
        } else {
            zone_name(sequence.next(zones as u32) as usize)
        };
        let to = zone_name(sequence.next(zones as u32) as usize);
        let port = 1 + sequence.next(60_000) as i32;
        set.policies.push(ZonePolicy {
            name: format!("policy-{index:05}"),
            from: vec![from],
            to: vec![to],
            ports: vec![PortRule {
                protocol: Protocol::Tcp,
                port: Some(port),
                end_port: Some(port + sequence.next(10) as i32),
            }],
            action: if index % 3 == 0 {
                Action::Deny
            } else {
                Action::Allow
            },
            priority: sequence.next(100) as i32,
            mode: if index % 10 == 0 {
                Mode::Audit
            } else {
                Mode::Enforce
            },
        });
    }
    for index in 0..pods {
        let zone = zone_name(index % (zones + 1));
        let address = IpAddr::from([10, (index >> 16) as u8, (index >> 8) as u8, index as u8]);
        set.pods.push(Pod {
            namespace: format!("ns-{}", index % 50),
            name: format!("pod-{index}"),
            labels: BTreeMap::from([
                ("zone".to_string(), zone),
                ("app".to_string(), format!("app-{}", index % 300)),
            ]),
            ips: vec![address],
            ..Pod::default()
        });
    }
    set
}

#[test]
fn a_large_input_compiles() {
    // Debug builds are slow; the full size runs in `compiles_at_scale` (release, ignored).
    let set = large_set(50, 1_000, 10_000);
    let compiled = compile(&set).unwrap();
    assert_eq!(compiled.endpoints.len(), 10_000);
    assert_unique_keys(&compiled);
    let (zone_a, zone_b) = (&set.policies[1].from[0], &set.policies[1].to[0]);
    let port = set.policies[1].ports[0].port.unwrap() as u16;
    let value = lookup(
        &compiled,
        id(&compiled, zone_a),
        id(&compiled, zone_b),
        6,
        port,
    );
    let (verdict, rule, _) = naive(&set, zone_a, zone_b, 6, port);
    assert_eq!(
        (value.verdict, rule_name(&compiled, value.rule)),
        (verdict, rule)
    );
}
