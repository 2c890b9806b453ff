//! Policy files of a chosen scale: pods, policies and network prefixes, generated from a
//! fixed seed so every run (and every configuration of a run) sees the same input.
//!
//! - 50 pod zones `z-00`…`z-49`, each selecting namespace `ns-NN`; pods are spread over
//!   them round-robin, dual-stack: IPv4 from 198.18.16.0 upwards (198.18.0.0/15 holds
//!   100 000 of them and leaves 198.18.0.0/20 to real test pods), IPv6 from
//!   2001:db8:1::1:0 upwards.
//! - CIDR zones: `partners` (100.64.0.0/24 and 2001:db8:ffff::/48) and `ext-0`…`ext-9`
//!   holding the other prefixes, random /16 to /32 inside 100.64.0.0/10 (shared address
//!   space, never routed on the internet; the per-packet benchmark only uses them as map
//!   content, no packet leaves the machine).
//! - The benchmark's own policies: `z-00 -> z-01` allowed on [`ALLOWED_TCP`] and
//!   [`ALLOWED_UDP`], `z-00 -> z-02` denied on [`DENIED_PORT`], `z-00 -> partners` allowed on
//!   [`PARTNER_PORT`]. The other policies are random (zone pairs, one or two ports, Allow or
//!   Deny, priorities) and never start from `z-00`, so they cannot change those verdicts.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};
use rand::{Rng, SeedableRng, rngs::StdRng};

pub const POD_ZONES: usize = 50;
pub const NETWORK_ZONES: usize = 10;
/// z-00 -> z-01.
pub const ALLOWED_TCP: [u16; 3] = [5201, 5202, 8080];
pub const ALLOWED_UDP: [u16; 2] = [5201, 8080];
/// z-00 -> z-02, denied by policy.
pub const DENIED_PORT: u16 = 5432;
/// z-00 -> partners.
pub const PARTNER_PORT: u16 = 443;
/// An address of `partners`.
pub const PARTNER_ADDRESS: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 7);
/// The first generated pod's addresses; the following pods count up from them.
const FIRST_POD_V4: u32 = u32::from_be_bytes([198, 18, 16, 0]);
const FIRST_POD_V6: u128 = 0x2001_0db8_0001_0000_0000_0000_0001_0000;

/// How big a generated policy file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    pub pods: usize,
    pub policies: usize,
    pub prefixes: usize,
}

impl Scale {
    pub fn label(&self) -> String {
        format!(
            "{} pods, {} policies, {} prefixes",
            self.pods, self.policies, self.prefixes
        )
    }
}

/// A pod the caller places itself (a real namespace of a test topology).
#[derive(Clone, Debug)]
pub struct FixedPod {
    pub name: String,
    /// Index of its zone `z-NN`.
    pub zone: usize,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// The client (zone 0) and server (zone 1) pods the throughput and control-plane
/// benchmarks measure between: `198.18.1.10` and `198.18.1.11` on a routed node.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);

/// Adds the client and server pods to `topology`; they as [`FixedPod`]s of the
/// generated policy, and their host-side interfaces.
pub fn client_and_server(
    topology: &mut zonewall_tests::topology::Topology,
) -> ([FixedPod; 2], [String; 2]) {
    let pods = [
        FixedPod {
            name: "client".into(),
            zone: 0,
            v4: CLIENT_V4,
            v6: "2001:db8:1::10".parse().expect("literal"),
        },
        FixedPod {
            name: "server".into(),
            zone: 1,
            v4: SERVER_V4,
            v6: "2001:db8:1::11".parse().expect("literal"),
        },
    ];
    let veths = [0, 1].map(|index| {
        let pod = &pods[index];
        topology
            .add_pod_at(&pod.name, pod.v4, pod.v6)
            .unwrap_or_else(|error| panic!("{} pod: {error:#}", pod.name))
            .host_veth
            .clone()
    });
    (pods, veths)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// One generated ZonePolicy, as the netfilter baselines need it.
#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    pub from: String,
    pub to: String,
    /// (protocol, port): `tcp` or `udp`.
    pub ports: Vec<(&'static str, u16)>,
    pub action: Action,
    pub priority: i32,
}

#[derive(Clone, Copy, Debug)]
pub struct PodAddress {
    pub zone: usize,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// A generated policy file and what the benchmarks aim at.
pub struct Generated {
    pub scale: Scale,
    pub yaml: String,
    /// Every pod (fixed ones first).
    pub pods: Vec<PodAddress>,
    /// Policies in the order the agent ranks them (priority, then name).
    pub policies: Vec<Policy>,
    /// CIDR zones: (name, prefixes).
    pub network_zones: Vec<(String, Vec<IpNet>)>,
}

pub fn zone_name(index: usize) -> String {
    format!("z-{index:02}")
}

impl Generated {
    /// Generated pods of zone `zone`.
    pub fn pods_in(&self, zone: usize) -> Vec<PodAddress> {
        self.pods
            .iter()
            .copied()
            .filter(|pod| pod.zone == zone)
            .collect()
    }
}

/// Generates a file of `scale` (the fixed pods count towards `scale.pods`).
pub fn generate(scale: Scale, fixed: &[FixedPod]) -> Generated {
    let mut rng = StdRng::seed_from_u64(0x7a6f_6e65_7761_6c6c);
    let mut yaml = String::with_capacity(scale.pods * 260 + scale.policies * 300);
    let document = |yaml: &mut String| yaml.push_str("---\n");

    for zone in 0..POD_ZONES {
        document(&mut yaml);
        let _ = writeln!(
            yaml,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{zone:02}, labels: {{zone: {}}}}}",
            zone_name(zone)
        );
        document(&mut yaml);
        let _ = writeln!(
            yaml,
            "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {{name: {0}}}\nspec: {{namespaceSelector: {{matchLabels: {{zone: {0}}}}}}}",
            zone_name(zone)
        );
    }

    let mut pods = Vec::with_capacity(scale.pods);
    for pod in fixed {
        pods.push(PodAddress {
            zone: pod.zone,
            v4: pod.v4,
            v6: pod.v6,
        });
        write_pod(&mut yaml, &pod.name, pod.zone, pod.v4, pod.v6);
    }
    for index in fixed.len()..scale.pods {
        let zone = index % POD_ZONES;
        let v4 = Ipv4Addr::from(FIRST_POD_V4 + index as u32);
        let v6 = Ipv6Addr::from(FIRST_POD_V6 + index as u128);
        pods.push(PodAddress { zone, v4, v6 });
        write_pod(&mut yaml, &format!("p-{index}"), zone, v4, v6);
    }

    let network_zones = networks(&mut rng, scale.prefixes);
    for (name, prefixes) in &network_zones {
        document(&mut yaml);
        let list: Vec<String> = prefixes
            .iter()
            .map(|prefix| format!("\"{prefix}\""))
            .collect();
        let _ = writeln!(
            yaml,
            "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {{name: {name}}}\nspec: {{networks: [{}]}}",
            list.join(", ")
        );
    }

    let external: Vec<String> = network_zones
        .iter()
        .map(|(name, _)| name.clone())
        .filter(|name| name.starts_with("ext-"))
        .collect();
    let mut policies = own_policies();
    let mut taken: BTreeSet<(String, String, &'static str, u16)> = BTreeSet::new();
    while policies.len() < scale.policies {
        let from = rng.random_range(1..POD_ZONES);
        let to = if !external.is_empty() && rng.random_bool(0.1) {
            external[rng.random_range(0..external.len())].clone()
        } else {
            let mut to = rng.random_range(0..POD_ZONES);
            if to == from {
                to = (to + 1) % POD_ZONES;
            }
            zone_name(to)
        };
        let mut ports = Vec::new();
        for _ in 0..rng.random_range(1..=2) {
            let protocol = if rng.random_bool(0.8) { "tcp" } else { "udp" };
            let port = rng.random_range(1024..=60_000);
            if taken.insert((zone_name(from), to.clone(), protocol, port)) {
                ports.push((protocol, port));
            }
        }
        if ports.is_empty() {
            continue;
        }
        policies.push(Policy {
            name: format!("gen-{:05}", policies.len()),
            from: zone_name(from),
            to,
            ports,
            action: if rng.random_bool(0.85) {
                Action::Allow
            } else {
                Action::Deny
            },
            priority: rng.random_range(100..=2000),
        });
    }
    policies.truncate(scale.policies.max(own_policies().len()));
    policies.sort_by(|left, right| (left.priority, &left.name).cmp(&(right.priority, &right.name)));
    for policy in &policies {
        document(&mut yaml);
        let ports: Vec<String> = policy
            .ports
            .iter()
            .map(|(protocol, port)| {
                format!("{{protocol: {}, port: {port}}}", protocol.to_uppercase())
            })
            .collect();
        let _ = writeln!(
            yaml,
            "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {{name: {}}}\nspec: {{from: [{}], to: [{}], ports: [{}], action: {}, priority: {}}}",
            policy.name,
            policy.from,
            policy.to,
            ports.join(", "),
            match policy.action {
                Action::Allow => "Allow",
                Action::Deny => "Deny",
            },
            policy.priority
        );
    }

    Generated {
        scale,
        yaml,
        pods,
        policies,
        network_zones,
    }
}

fn write_pod(yaml: &mut String, name: &str, zone: usize, v4: Ipv4Addr, v6: Ipv6Addr) {
    let _ = writeln!(
        yaml,
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ns-{zone:02}, uid: uid-{name}, labels: {{app: {name}, tier: t-{}}}}}\nstatus: {{podIP: {v4}, podIPs: [{{ip: {v4}}}, {{ip: \"{v6}\"}}]}}",
        zone % 7
    );
}

/// The benchmark's own policies (see the module documentation).
fn own_policies() -> Vec<Policy> {
    let mut allowed: Vec<(&'static str, u16)> =
        ALLOWED_TCP.iter().map(|port| ("tcp", *port)).collect();
    allowed.extend(ALLOWED_UDP.iter().map(|port| ("udp", *port)));
    vec![
        Policy {
            name: "bench-allow".into(),
            from: zone_name(0),
            to: zone_name(1),
            ports: allowed,
            action: Action::Allow,
            priority: 1000,
        },
        Policy {
            name: "bench-deny".into(),
            from: zone_name(0),
            to: zone_name(2),
            ports: vec![("tcp", DENIED_PORT)],
            action: Action::Deny,
            priority: 1000,
        },
        Policy {
            name: "bench-partners".into(),
            from: zone_name(0),
            to: "partners".into(),
            ports: vec![("tcp", PARTNER_PORT)],
            action: Action::Allow,
            priority: 1000,
        },
    ]
}

/// `count` prefixes: two for `partners`, the rest random over the `ext-*` zones.
fn networks(rng: &mut StdRng, count: usize) -> Vec<(String, Vec<IpNet>)> {
    let partners: Vec<IpNet> = vec![
        "100.64.0.0/24".parse().expect("valid literal"),
        "2001:db8:ffff::/48".parse().expect("valid literal"),
    ];
    let mut zones: Vec<(String, Vec<IpNet>)> = vec![("partners".into(), partners)];
    let mut ext: Vec<Vec<IpNet>> = vec![Vec::new(); NETWORK_ZONES];
    let mut seen = BTreeSet::new();
    let shared = u32::from_be_bytes([100, 64, 0, 0]);
    let mut made = 0;
    while made + 2 < count {
        let length: u8 = match rng.random_range(0..10) {
            0..=2 => rng.random_range(16..24),
            3..=5 => 24,
            _ => rng.random_range(25..=32),
        };
        let address = shared | rng.random_range(0..(1u32 << 22));
        let Ok(network) = Ipv4Net::new(Ipv4Addr::from(address), length) else {
            continue;
        };
        let network = network.trunc();
        // 100.64.0.0/16 stays clear, so `partners` is the longest match of its addresses.
        if network.contains(&PARTNER_ADDRESS) || network.network().octets()[..2] == [100, 64] {
            continue;
        }
        if !seen.insert(network) {
            continue;
        }
        ext[made % NETWORK_ZONES].push(IpNet::V4(network));
        made += 1;
    }
    for (index, prefixes) in ext.into_iter().enumerate() {
        if !prefixes.is_empty() {
            zones.push((format!("ext-{index}"), prefixes));
        }
    }
    zones
}
