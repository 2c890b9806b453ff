//! Differential test: the real eBPF program (through BPF_PROG_TEST_RUN, with policy
//! compiled and synced by the agent's own code) against the reference evaluator in
//! tests/src/reference.rs, on at least 10 000 random (policy set, packet) cases. Verdict,
//! deciding policy and audit finding must agree on every case.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use firewall_agent::datapath::Tuning;
use firewall_common::*;
use rand::prelude::*;
use zonewall_tests::kernel::{DROP, Kernel, PASS, privileged};
use zonewall_tests::packet::{ICMP, ICMPV6, SCTP, SYN, Spec, TCP, UDP};
use zonewall_tests::reference;

const POLICY_SETS: usize = 50;
const PACKETS_PER_SET: usize = 220;

/// Port values the rules and packets are drawn around, so range edges are hit often.
const PORTS: [u16; 10] = [1, 53, 80, 443, 1024, 5432, 8000, 8100, 32768, 65535];

struct World {
    yaml: String,
    /// (zone name, v4 and v6 addresses of its pods)
    pods: Vec<(String, IpAddr, IpAddr)>,
    /// Addresses inside the CIDR zones (and their nested prefixes).
    network_hosts: Vec<IpAddr>,
}

fn random_port(rng: &mut StdRng) -> u16 {
    let base = PORTS[rng.random_range(0..PORTS.len())];
    match rng.random_range(0..4) {
        0 => base.saturating_sub(1).max(1),
        1 => base.saturating_add(1),
        2 => rng.random_range(1..=65535),
        _ => base,
    }
}

fn zone_list(rng: &mut StdRng, zones: &[String]) -> String {
    if rng.random_bool(0.15) {
        return "\"*\"".into();
    }
    let mut all: Vec<String> = zones.to_vec();
    all.extend(["world", "unzoned"].map(String::from));
    let count = rng.random_range(1..=3);
    let picked: Vec<String> = all.choose_multiple(rng, count).cloned().collect();
    picked.join(", ")
}

fn generate(rng: &mut StdRng) -> World {
    let mut yaml = String::new();
    let mut pods = Vec::new();
    let zone_count = rng.random_range(2..=5);
    let mut zones: Vec<String> = Vec::new();
    for zone in 0..zone_count {
        let name = format!("z{zone}");
        let _ = write!(
            yaml,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{zone}, labels: {{zone: {name}}}}}\n---\n\
             apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {{name: {name}}}\n\
             spec: {{namespaceSelector: {{matchLabels: {{zone: {name}}}}}}}\n---\n"
        );
        for pod in 0..2u8 {
            let v4 = IpAddr::V4(Ipv4Addr::new(198, 18, zone as u8, 10 + pod));
            let v6 = IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                zone as u16,
                0,
                0,
                0,
                0,
                10 + pod as u16,
            ));
            let _ = write!(
                yaml,
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{zone}-{pod}, namespace: ns{zone}}}\n\
                 status: {{podIP: \"{v4}\", podIPs: [{{ip: \"{v4}\"}}, {{ip: \"{v6}\"}}]}}\n---\n"
            );
            pods.push((name.clone(), v4, v6));
        }
        zones.push(name);
    }
    // A pod in no zone.
    yaml.push_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: loner, namespace: nowhere}\n\
         status: {podIP: 198.18.99.1, podIPs: [{ip: 198.18.99.1}, {ip: \"2001:db8:99::1\"}]}\n---\n",
    );
    pods.push((
        "unzoned".into(),
        "198.18.99.1".parse().unwrap(),
        "2001:db8:99::1".parse().unwrap(),
    ));
    // CIDR zones, one nested in the other.
    let mut network_hosts = Vec::new();
    if rng.random_bool(0.8) {
        yaml.push_str(
            "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: partners}\n\
             spec: {networks: [203.0.113.0/24, \"2001:db8:ffff::/48\"]}\n---\n",
        );
        zones.push("partners".into());
        network_hosts
            .extend(["203.0.113.7", "2001:db8:ffff:5::7"].map(|ip| ip.parse::<IpAddr>().unwrap()));
        if rng.random_bool(0.6) {
            yaml.push_str(
                "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: partner-vip}\n\
                 spec: {networks: [203.0.113.128/25, \"2001:db8:ffff:1::/64\"]}\n---\n",
            );
            zones.push("partner-vip".into());
            network_hosts.extend(
                ["203.0.113.200", "2001:db8:ffff:1::9"].map(|ip| ip.parse::<IpAddr>().unwrap()),
            );
        }
    }
    let policy_count = rng.random_range(1..=8);
    for index in 0..policy_count {
        let from = zone_list(rng, &zones);
        let to = zone_list(rng, &zones);
        let action = if rng.random_bool(0.5) {
            "Allow"
        } else {
            "Deny"
        };
        let mut spec = format!("  from: [{from}]\n  to: [{to}]\n  action: {action}\n");
        if rng.random_bool(0.7) {
            let entries: Vec<String> = (0..rng.random_range(1..=3))
                .map(|_| match rng.random_range(0..6) {
                    0 => "{protocol: ICMP}".to_string(),
                    1 => "{protocol: ICMPv6}".to_string(),
                    2 => "{protocol: UDP}".to_string(),
                    kind => {
                        let protocol = ["TCP", "UDP", "SCTP"][kind % 3];
                        let port = random_port(rng);
                        if rng.random_bool(0.5) {
                            let end = port.saturating_add(rng.random_range(0..3000));
                            format!("{{protocol: {protocol}, port: {port}, endPort: {end}}}")
                        } else {
                            format!("{{protocol: {protocol}, port: {port}}}")
                        }
                    }
                })
                .collect();
            let _ = writeln!(spec, "  ports: [{}]", entries.join(", "));
        }
        match rng.random_range(0..3) {
            0 => {}
            1 => spec.push_str("  priority: 100\n"),
            _ => {
                let _ = writeln!(spec, "  priority: {}", rng.random_range(0..3) * 50);
            }
        }
        if rng.random_bool(0.25) {
            spec.push_str("  mode: Audit\n");
        }
        let _ = write!(
            yaml,
            "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {{name: policy-{index}}}\nspec:\n{spec}---\n"
        );
    }
    World {
        yaml,
        pods,
        network_hosts,
    }
}

/// What the kernel said about one packet: verdict, deciding policy, audit policy.
#[derive(Debug, PartialEq)]
struct Outcome {
    allowed: bool,
    policy: String,
    audit_policy: Option<String>,
}

#[test]
fn kernel_agrees_with_the_reference_on_10000_cases() {
    if !privileged("kernel_agrees_with_the_reference_on_10000_cases") {
        return;
    }
    let seed: u64 = std::env::var("ZONEWALL_DIFF_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("differential seed: {seed} (rerun with ZONEWALL_DIFF_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kernel = Kernel::load();
    let mut ring = kernel.datapath.take_flow_events().unwrap();
    let tuning = Tuning {
        deny_events_per_window: u32::MAX,
        ..Tuning::default()
    };
    let mut cases = 0usize;
    let mut verdicts = [0usize; 2];
    for _ in 0..POLICY_SETS {
        let world = generate(&mut rng);
        let set = firewall_agent::policy::parse(&world.yaml)
            .unwrap_or_else(|error| panic!("generated policy rejected: {error}\n{}", world.yaml));
        let compiled = firewall_agent::policy::compile(&set);
        let rules = compiled.rules.clone();
        kernel.apply_compiled(compiled, &tuning);
        for _ in 0..PACKETS_PER_SET {
            let v6 = rng.random_bool(0.3);
            let (_, src4, src6) = world.pods.choose(&mut rng).unwrap().clone();
            let src = if v6 { src6 } else { src4 };
            let dst = match rng.random_range(0..4) {
                0 | 1 => {
                    let (_, dst4, dst6) = world.pods.choose(&mut rng).unwrap().clone();
                    if v6 { dst6 } else { dst4 }
                }
                2 if !world.network_hosts.is_empty() => **world
                    .network_hosts
                    .iter()
                    .filter(|ip| ip.is_ipv6() == v6)
                    .collect::<Vec<_>>()
                    .choose(&mut rng)
                    .unwrap(),
                _ => {
                    if v6 {
                        "2001:db8:eeee::1".parse().unwrap()
                    } else {
                        "198.51.100.1".parse().unwrap()
                    }
                }
            };
            let proto = match rng.random_range(0..10) {
                0..=3 => TCP,
                4..=5 => UDP,
                6 => SCTP,
                7 | 8 => {
                    if v6 {
                        ICMPV6
                    } else {
                        ICMP
                    }
                }
                _ => 47,
            };
            let port = random_port(&mut rng);
            let spec = match proto {
                ICMP | ICMPV6 => Spec::echo_request(src, dst, rng.random()),
                47 => Spec {
                    proto: 47,
                    ..Spec::udp(src, dst, 0, 0)
                },
                _ => Spec {
                    proto,
                    ..Spec::tcp(
                        src,
                        dst,
                        rng.random_range(1024..65535),
                        port,
                        if proto == TCP { SYN } else { 0 },
                    )
                },
            };
            let policy_port = if matches!(proto, TCP | UDP | SCTP) {
                port
            } else {
                0
            };
            kernel.datapath.flush_conntrack().unwrap();
            let verdict = kernel.run(PROG_FROM_POD, &spec.frame());
            let events: Vec<FlowEvent> = std::iter::from_fn(|| {
                ring.next()
                    .map(|item| firewall_agent::flows::decode(&item).unwrap())
            })
            .collect();
            assert_eq!(events.len(), 1, "one event per new flow");
            let event = events[0];
            let name = |rule: u32| {
                rules
                    .get(&rule)
                    .map(|info| info.name.clone())
                    .unwrap_or_else(|| format!("rule {rule}"))
            };
            let observed = Outcome {
                allowed: match verdict {
                    PASS => true,
                    DROP => false,
                    other => panic!("unexpected program return {other}"),
                },
                policy: name(event.rule),
                audit_policy: (event.kind == EVENT_AUDIT).then(|| name(event.audit_rule)),
            };
            let expected = reference::evaluate(&set, src, dst, proto, policy_port);
            let expected = Outcome {
                allowed: expected.allowed,
                policy: expected.policy,
                audit_policy: expected.audit_policy,
            };
            assert_eq!(
                observed, expected,
                "case {cases}: {src} -> {dst} proto {proto} port {policy_port}\npolicy:\n{}",
                world.yaml
            );
            verdicts[observed.allowed as usize] += 1;
            cases += 1;
        }
    }
    assert!(cases >= 10_000, "only {cases} cases");
    // The generator must exercise both verdicts substantially.
    assert!(
        verdicts[0] > 1000 && verdicts[1] > 1000,
        "verdict mix {verdicts:?}"
    );
    eprintln!(
        "{cases} cases agree: {} allowed, {} denied",
        verdicts[1], verdicts[0]
    );
}
