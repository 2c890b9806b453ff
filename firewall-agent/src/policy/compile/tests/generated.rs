//! Compiler tests on generated inputs: random policies agree with the naive ranking, and
//! a large input compiles.

use super::*;
use crate::policy::model::{PortRule, Protocol};

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
        let compiled = compiled(&set);
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
    let set = validate(large_set(50, 1_000, 10_000)).expect("a valid set");
    let compiled = compile(&set);
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
