//! [`PolicySet`] -> [`CompiledPolicy`]: zone ids, pod membership, the IP -> identity
//! table, CIDR zones and the POLICY LPM partition.
//!
//! The partition: for every zone pair some policy covers, one entry at
//! `POLICY_PREFIX_PAIR` holds the decision for protocols no policy names; for every
//! protocol a policy names whose decision differs from that, port blocks (aligned powers
//! of two, `POLICY_PREFIX_PROTO + k` bits) cover all of 0..=65535, so a longest-prefix
//! lookup of (src zone, dst zone, protocol, port) returns exactly what ranking the
//! policies would.
//!
//! Policies are grouped by zone pair first (exact pairs, `*` on one side, `*` on both) so
//! the work per pair is the policies that cover it, not all of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use firewall_common::{
    FIRST_USER_RULE_ID, FIRST_USER_ZONE_ID, POLICY_PREFIX_PAIR, POLICY_PREFIX_PROTO, PolicyValue,
    RULE_DEFAULT_INTER_DENY, RULE_DEFAULT_INTRA_ALLOW, RULE_FRAGMENT, RULE_NONE,
    RULE_UNKNOWN_SOURCE, VERDICT_ALLOW, VERDICT_DENY, ZONE_HOST, ZONE_UNZONED,
};

use super::compiled::{CompiledPolicy, Endpoint, EndpointKind, PolicyEntry, RuleInfo, ZoneInfo};
use super::model::{
    ANY_ZONE, Action, Mode, NAMESPACE_NAME_LABEL, PolicySet, Protocol, RESERVED_ZONES, Zone,
    ZonePolicy,
};
use super::{PolicyError, validate};

/// Port space of TCP, UDP and SCTP: 0..=65535 (port 0 included, as any port).
const PORT_SPACE_END: u32 = 65_535;

/// Stable id of a user zone: FNV-1a (32 bits) of its name, moved above the reserved ids.
/// Stable across restarts, so kernel state survives an agent restart.
pub fn zone_id(name: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    above_reserved(hash)
}

/// Moves a hash out of the reserved id range.
fn above_reserved(hash: u32) -> u32 {
    if hash < FIRST_USER_ZONE_ID {
        hash + FIRST_USER_ZONE_ID
    } else {
        hash
    }
}

/// Validates `input` and compiles it. Pure.
pub fn compile(input: &PolicySet) -> Result<CompiledPolicy, PolicyError> {
    validate(input)?;
    let mut compiled = CompiledPolicy::default();
    let mut warnings = Vec::new();

    let mut user_zones: Vec<&Zone> = input.zones.iter().collect();
    user_zones.sort_by(|left, right| left.name.cmp(&right.name));
    for (name, id) in RESERVED_ZONES {
        compiled
            .zones
            .insert(name.to_string(), zone_info(name, id, true));
    }
    for zone in &user_zones {
        compiled.zones.insert(
            zone.name.clone(),
            zone_info(&zone.name, zone_id(&zone.name), false),
        );
    }
    let zone_names: HashMap<u32, String> = compiled
        .zones
        .values()
        .map(|zone| (zone.id, zone.name.clone()))
        .collect();

    let pod_zones = resolve_pods(input, &user_zones, &mut warnings);
    for (pod, zone) in input.pods.iter().zip(&pod_zones) {
        if let Some(zone) = zone
            && let Some(info) = compiled.zones.get_mut(&zone_names[zone])
        {
            info.members.push(format!("{}/{}", pod.namespace, pod.name));
        }
    }
    for info in compiled.zones.values_mut() {
        info.members.sort();
    }
    if !input.pods.is_empty() {
        for zone in user_zones.iter().filter(|zone| zone.has_selectors()) {
            if compiled.zones[&zone.name].members.is_empty() {
                warnings.push(format!("Zone/{} selects no pod", zone.name));
            }
        }
    }

    compiled.endpoints = resolve_endpoints(input, &pod_zones, &zone_names, &mut warnings);
    compiled.networks = resolve_networks(&user_zones, &mut compiled.zones, &mut warnings);

    let prepared = prepare_policies(input, &compiled.zones, &mut compiled.rules);
    let mut decided = vec![false; prepared.len()];
    compiled.entries = compile_entries(&prepared, &compiled.zones, &mut decided);
    for (policy, decided) in prepared.iter().zip(decided) {
        if !decided {
            warnings.push(format!(
                "ZonePolicy/{} never decides any traffic: policies ranked before it (lower \
                 priority, or equal priority and a smaller name) cover everything it matches",
                policy.name
            ));
        }
    }

    compiled.warnings = warnings;
    Ok(compiled)
}

fn zone_info(name: &str, id: u32, reserved: bool) -> ZoneInfo {
    ZoneInfo {
        id,
        name: name.to_string(),
        members: Vec::new(),
        networks: Vec::new(),
        reserved,
    }
}

/// The zone whose traffic each pod sends (indexed like `input.pods`): its selector zone
/// (the first by name when several match), `host` for host-network pods, `unzoned` when
/// no zone selects it, `None` for finished pods.
fn resolve_pods(
    input: &PolicySet,
    user_zones: &[&Zone],
    warnings: &mut Vec<String>,
) -> Vec<Option<u32>> {
    let selector_zones: Vec<&Zone> = user_zones
        .iter()
        .copied()
        .filter(|zone| zone.has_selectors())
        .collect();
    let mut namespace_labels: HashMap<&str, BTreeMap<String, String>> = input
        .namespaces
        .iter()
        .map(|namespace| (namespace.name.as_str(), namespace.labels.clone()))
        .collect();
    for pod in &input.pods {
        namespace_labels.entry(pod.namespace.as_str()).or_default();
    }
    for (name, labels) in namespace_labels.iter_mut() {
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
    }
    // Which zones' namespaceSelector each namespace passes, computed once per namespace.
    let namespace_passes: HashMap<&str, Vec<bool>> = namespace_labels
        .iter()
        .map(|(name, labels)| {
            let passes = selector_zones
                .iter()
                .map(|zone| {
                    zone.namespace_selector
                        .as_ref()
                        .is_none_or(|selector| selector.matches(labels))
                })
                .collect();
            (*name, passes)
        })
        .collect();

    // A zone whose podSelector has matchLabels can only select pods carrying its first
    // pair: index zones by that pair so a pod is tested against few zones, not all.
    let mut anchored: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    let mut unanchored: Vec<usize> = Vec::new();
    for (index, zone) in selector_zones.iter().enumerate() {
        let anchor = zone
            .pod_selector
            .as_ref()
            .and_then(|selector| selector.match_labels.iter().next());
        match anchor {
            Some((key, value)) => anchored
                .entry((key.as_str(), value.as_str()))
                .or_default()
                .push(index),
            None => unanchored.push(index),
        }
    }

    // Per namespace: the zones without an anchor whose namespaceSelector it passes, so a
    // pod without anchored candidates needs no allocation at all.
    let unanchored_passing: HashMap<&str, Vec<usize>> = namespace_passes
        .iter()
        .map(|(name, passes)| {
            let zones = unanchored
                .iter()
                .copied()
                .filter(|index| passes[*index])
                .collect();
            (*name, zones)
        })
        .collect();
    // Warnings come out in pod name order whatever the input order: (pod, text).
    let mut pod_warnings: Vec<((&str, &str), String)> = Vec::new();
    let mut zones = vec![None; input.pods.len()];
    let mut candidates: Vec<usize> = Vec::new();
    let mut matching: Vec<&str> = Vec::new();
    for (index, pod) in input.pods.iter().enumerate() {
        if pod.is_terminated() {
            continue;
        }
        let namespace = pod.namespace.as_str();
        let passes = &namespace_passes[namespace];
        candidates.clear();
        candidates.extend_from_slice(&unanchored_passing[namespace]);
        let plain = candidates.len();
        for (key, value) in &pod.labels {
            if let Some(zones) = anchored.get(&(key.as_str(), value.as_str())) {
                candidates.extend(zones.iter().filter(|index| passes[**index]));
            }
        }
        // Zone indices follow name order, so the first match is the name that sorts first.
        if candidates.len() > plain {
            candidates.sort_unstable();
            candidates.dedup();
        }
        matching.clear();
        matching.extend(
            candidates
                .iter()
                .filter(|index| {
                    selector_zones[**index]
                        .pod_selector
                        .as_ref()
                        .is_none_or(|selector| selector.matches(&pod.labels))
                })
                .map(|index| selector_zones[*index].name.as_str()),
        );
        let key = (namespace, pod.name.as_str());
        if matching.len() > 1 {
            pod_warnings.push((
                key,
                format!(
                    "Pod {}/{} matches zones {}; it is placed in zone {} (the name that sorts first)",
                    pod.namespace,
                    pod.name,
                    matching.join(", "),
                    matching[0]
                ),
            ));
        }
        zones[index] = Some(if pod.host_network {
            if let Some(zone) = matching.first() {
                pod_warnings.push((
                    key,
                    format!(
                        "Pod {}/{} uses the host network: its traffic leaves from the node's \
                         address and is identified as zone host, not zone {zone}",
                        pod.namespace, pod.name
                    ),
                ));
            }
            ZONE_HOST
        } else {
            matching.first().map_or(ZONE_UNZONED, |name| zone_id(name))
        });
    }
    // Stable: a pod's own warnings keep their order.
    pod_warnings.sort_by(|left, right| left.0.cmp(&right.0));
    warnings.extend(pod_warnings.into_iter().map(|(_, warning)| warning));
    zones
}

/// Who wins an IP claimed twice: nodes, then pods, then services; then the owner name.
fn claim_rank(endpoint: &Endpoint) -> (u8, String) {
    match &endpoint.kind {
        EndpointKind::Node { name } => (0, format!("Node/{name}")),
        EndpointKind::Pod {
            namespace, name, ..
        } => (1, format!("Pod/{namespace}/{name}")),
        EndpointKind::Service { namespace, name } => (2, format!("Service/{namespace}/{name}")),
    }
}

fn resolve_endpoints(
    input: &PolicySet,
    pod_zones: &[Option<u32>],
    zone_names: &HashMap<u32, String>,
    warnings: &mut Vec<String>,
) -> BTreeMap<IpAddr, Endpoint> {
    let mut endpoints: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
    // IPs claimed more than once -> every claimant, resolved once all are known so the
    // result does not depend on input order.
    let mut contested: BTreeMap<IpAddr, Vec<Endpoint>> = BTreeMap::new();
    let mut claim = |ip: IpAddr, endpoint: Endpoint| {
        if let Some(existing) = endpoints.get(&ip) {
            if existing.kind.owner_key() != endpoint.kind.owner_key() {
                contested
                    .entry(ip)
                    .or_insert_with(|| vec![existing.clone()])
                    .push(endpoint);
            }
        } else {
            endpoints.insert(ip, endpoint);
        }
    };
    for node in &input.nodes {
        for ip in &node.addresses {
            claim(
                *ip,
                Endpoint {
                    zone: ZONE_HOST,
                    kind: EndpointKind::Node {
                        name: node.name.clone(),
                    },
                },
            );
        }
    }
    for (pod, zone) in input.pods.iter().zip(pod_zones) {
        // Host-network pods share the node's address; finished pods own no address.
        let Some(zone) = zone.filter(|_| !pod.host_network) else {
            continue;
        };
        for ip in &pod.ips {
            claim(
                *ip,
                Endpoint {
                    zone,
                    kind: EndpointKind::Pod {
                        namespace: pod.namespace.clone(),
                        name: pod.name.clone(),
                        uid: pod.uid.clone(),
                        labels: pod.labels.clone(),
                        node: pod.node_name.clone(),
                        workload: pod.workload.clone(),
                    },
                },
            );
        }
    }
    for (ip, endpoint) in service_endpoints(input, pod_zones, zone_names, warnings) {
        claim(ip, endpoint);
    }

    for (ip, mut claimants) in contested {
        claimants.sort_by_cached_key(claim_rank);
        let (_, winner) = claim_rank(&claimants[0]);
        for loser in &claimants[1..] {
            let (_, loser) = claim_rank(loser);
            warnings.push(format!(
                "IP {ip} is claimed by {winner} and {loser}; {winner} keeps it (nodes win over \
                 pods, pods over services, then the name that sorts first)"
            ));
        }
        endpoints.insert(ip, claimants.swap_remove(0));
    }
    endpoints
}

/// A Service's cluster IPs, marked for deferral to the destination pod (see below).
fn service_endpoints(
    input: &PolicySet,
    pod_zones: &[Option<u32>],
    zone_names: &HashMap<u32, String>,
    warnings: &mut Vec<String>,
) -> Vec<(IpAddr, Endpoint)> {
    let mut claims = Vec::new();
    if input.services.is_empty() {
        return claims;
    }
    // (namespace, label key, label value) -> pods, to find a selector's pods without
    // scanning every pod for every service.
    let mut by_label: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
    for (index, pod) in input.pods.iter().enumerate() {
        if pod_zones[index].is_none() {
            continue;
        }
        for (key, value) in &pod.labels {
            by_label
                .entry((pod.namespace.as_str(), key.as_str(), value.as_str()))
                .or_default()
                .push(index);
        }
    }
    let mut services: Vec<_> = input.services.iter().collect();
    services
        .sort_by(|left, right| (&left.namespace, &left.name).cmp(&(&right.namespace, &right.name)));
    for service in services {
        if service.cluster_ips.is_empty() {
            continue;
        }
        let label = format!("Service {}/{}", service.namespace, service.name);
        if service.selector.is_empty() {
            warnings.push(format!(
                "{label} has no selector; its cluster IPs get no zone"
            ));
            continue;
        }
        let smallest = service
            .selector
            .iter()
            .map(|(key, value)| {
                by_label
                    .get(&(service.namespace.as_str(), key.as_str(), value.as_str()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|pods| pods.len())
            .unwrap_or(&[]);
        let zones: BTreeSet<u32> = smallest
            .iter()
            .filter(|index| {
                let labels = &input.pods[**index].labels;
                service
                    .selector
                    .iter()
                    .all(|(key, value)| labels.get(key) == Some(value))
            })
            .filter_map(|index| pod_zones[*index])
            .collect();
        // A Service address is never judged by itself: the decision waits for kube-proxy's
        // DNAT to pick a pod, and the destination pod's hook judges the connection by that
        // pod's zone and port (the target port, as NetworkPolicy does). Zone NONE tells the
        // datapath to defer.
        if zones.is_empty() {
            warnings.push(format!(
                "{label} selects no pod; its cluster IPs get no zone"
            ));
            continue;
        }
        if zones.len() > 1 {
            let mut names: Vec<&str> = zones.iter().map(|zone| zone_names[zone].as_str()).collect();
            names.sort_unstable();
            warnings.push(format!(
                "{label} selects pods of several zones ({}); each connection is judged by the zone of the pod it reaches",
                names.join(", ")
            ));
        }
        for ip in &service.cluster_ips {
            claims.push((
                *ip,
                Endpoint {
                    zone: firewall_common::ZONE_NONE,
                    kind: EndpointKind::Service {
                        namespace: service.namespace.clone(),
                        name: service.name.clone(),
                    },
                },
            ));
        }
    }
    claims
}

fn resolve_networks(
    user_zones: &[&Zone],
    zones: &mut BTreeMap<String, ZoneInfo>,
    warnings: &mut Vec<String>,
) -> Vec<(ipnet::IpNet, u32)> {
    let mut networks = Vec::new();
    for zone in user_zones {
        let id = zone_id(&zone.name);
        let mut own: Vec<ipnet::IpNet> = Vec::new();
        for (index, network) in zone.networks.iter().enumerate() {
            let normalised = network.trunc();
            if normalised != *network {
                warnings.push(format!(
                    "Zone/{}: spec.networks[{index}] {network} has host bits set; using \
                     {normalised}",
                    zone.name
                ));
            }
            if own.contains(&normalised) {
                warnings.push(format!(
                    "Zone/{}: spec.networks[{index}] {normalised} is listed more than once",
                    zone.name
                ));
                continue;
            }
            own.push(normalised);
            networks.push((normalised, id));
        }
        own.sort();
        if let Some(info) = zones.get_mut(&zone.name) {
            info.networks = own;
        }
    }
    networks.sort();
    networks
}

/// One policy, ready for evaluation. Ranked: index 0 is evaluated first.
struct Prepared {
    name: String,
    rule: u32,
    verdict: u8,
    enforce: bool,
    /// No `ports`: every protocol, every port.
    all_traffic: bool,
    /// Port ranges per protocol (indexed like `Protocol::ALL`); empty: protocol not named.
    ranges: [Vec<(u32, u32)>; 5],
    from: Side,
    to: Side,
}

enum Side {
    Any,
    Zones(Vec<u32>),
}

fn protocol_index(protocol: Protocol) -> usize {
    Protocol::ALL
        .iter()
        .position(|candidate| *candidate == protocol)
        .unwrap_or(0)
}

/// Rule ids (by name) and the ranked list of policies; fills `rules`.
fn prepare_policies(
    input: &PolicySet,
    zones: &BTreeMap<String, ZoneInfo>,
    rules: &mut BTreeMap<u32, RuleInfo>,
) -> Vec<Prepared> {
    for (id, name, action) in [
        (
            RULE_DEFAULT_INTRA_ALLOW,
            "default-allow-intra-zone",
            "Allow",
        ),
        (RULE_DEFAULT_INTER_DENY, "default-deny-inter-zone", "Deny"),
        (RULE_UNKNOWN_SOURCE, "unknown-source", "Configured"),
        (RULE_FRAGMENT, "fragment", "Deny"),
        (firewall_common::RULE_SPOOFED, "spoofed-source", "Deny"),
    ] {
        rules.insert(
            id,
            RuleInfo {
                name: name.to_string(),
                action: action.to_string(),
                mode: Mode::Enforce.as_str().to_string(),
                // Defaults apply after every policy.
                priority: i64::MAX,
            },
        );
    }

    let mut by_name: Vec<&ZonePolicy> = input.policies.iter().collect();
    by_name.sort_by(|left, right| left.name.cmp(&right.name));
    let side = |names: &[String]| {
        if names.iter().any(|name| name == ANY_ZONE) {
            return Side::Any;
        }
        let mut ids: Vec<u32> = names
            .iter()
            .filter_map(|name| zones.get(name).map(|zone| zone.id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Side::Zones(ids)
    };
    let mut prepared = Vec::with_capacity(by_name.len());
    for (index, policy) in by_name.iter().enumerate() {
        let rule = FIRST_USER_RULE_ID + index as u32;
        rules.insert(
            rule,
            RuleInfo {
                name: policy.name.clone(),
                action: policy.action.as_str().to_string(),
                mode: policy.mode.as_str().to_string(),
                priority: i64::from(policy.priority),
            },
        );
        let mut ranges: [Vec<(u32, u32)>; 5] = Default::default();
        for port_rule in &policy.ports {
            let range = match (
                port_rule.protocol.has_ports(),
                port_rule.port,
                port_rule.end_port,
            ) {
                (true, Some(port), end) => (port as u32, end.unwrap_or(port) as u32),
                _ => (0, PORT_SPACE_END),
            };
            ranges[protocol_index(port_rule.protocol)].push(range);
        }
        prepared.push((
            policy.priority,
            Prepared {
                name: policy.name.clone(),
                rule,
                verdict: match policy.action {
                    Action::Allow => VERDICT_ALLOW,
                    Action::Deny => VERDICT_DENY,
                },
                enforce: policy.mode == Mode::Enforce,
                all_traffic: policy.ports.is_empty(),
                ranges,
                from: side(&policy.from),
                to: side(&policy.to),
            },
        ));
    }
    // Rank: priority, then name (the list is in name order and the sort is stable).
    prepared.sort_by_key(|(priority, _)| *priority);
    prepared.into_iter().map(|(_, policy)| policy).collect()
}

/// Policies (as rank indices, ascending) grouped by the zone pairs they cover.
#[derive(Default)]
struct PairIndex {
    exact: HashMap<(u32, u32), Vec<u32>>,
    any_source: HashMap<u32, Vec<u32>>,
    any_destination: HashMap<u32, Vec<u32>>,
    any_pair: Vec<u32>,
}

impl PairIndex {
    fn new(policies: &[Prepared]) -> Self {
        let mut index = PairIndex::default();
        for (rank, policy) in policies.iter().enumerate() {
            let rank = rank as u32;
            match (&policy.from, &policy.to) {
                (Side::Any, Side::Any) => index.any_pair.push(rank),
                (Side::Any, Side::Zones(destinations)) => {
                    for destination in destinations {
                        index.any_source.entry(*destination).or_default().push(rank);
                    }
                }
                (Side::Zones(sources), Side::Any) => {
                    for source in sources {
                        index.any_destination.entry(*source).or_default().push(rank);
                    }
                }
                (Side::Zones(sources), Side::Zones(destinations)) => {
                    for source in sources {
                        for destination in destinations {
                            index
                                .exact
                                .entry((*source, *destination))
                                .or_default()
                                .push(rank);
                        }
                    }
                }
            }
        }
        index
    }

    /// Every pair at least one policy covers.
    fn pairs(&self, all_zones: &[u32]) -> BTreeSet<(u32, u32)> {
        let mut pairs = BTreeSet::new();
        if !self.any_pair.is_empty() {
            for source in all_zones {
                for destination in all_zones {
                    pairs.insert((*source, *destination));
                }
            }
            return pairs;
        }
        pairs.extend(self.exact.keys().copied());
        for destination in self.any_source.keys() {
            pairs.extend(all_zones.iter().map(|source| (*source, *destination)));
        }
        for source in self.any_destination.keys() {
            pairs.extend(all_zones.iter().map(|destination| (*source, *destination)));
        }
        pairs
    }

    /// The four sorted rank lists that apply to a pair.
    fn lists(&self, source: u32, destination: u32) -> [&[u32]; 4] {
        [
            self.exact
                .get(&(source, destination))
                .map_or(&[][..], Vec::as_slice),
            self.any_source
                .get(&destination)
                .map_or(&[][..], Vec::as_slice),
            self.any_destination
                .get(&source)
                .map_or(&[][..], Vec::as_slice),
            &self.any_pair,
        ]
    }
}

fn compile_entries(
    policies: &[Prepared],
    zones: &BTreeMap<String, ZoneInfo>,
    decided: &mut [bool],
) -> Vec<PolicyEntry> {
    let index = PairIndex::new(policies);
    let mut all_zones: Vec<u32> = zones.values().map(|zone| zone.id).collect();
    all_zones.sort_unstable();
    let pairs: Vec<(u32, u32)> = index.pairs(&all_zones).into_iter().collect();
    // Pairs are independent: compile contiguous runs of them on every core and
    // concatenate in pair order, so the result does not depend on the thread count.
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 8);
    let chunk = pairs.len().div_ceil(threads).max(PAIRS_PER_THREAD);
    let compile_run = |run: &[(u32, u32)]| {
        let mut entries = Vec::new();
        let mut winners = Vec::new();
        for (source, destination) in run {
            compile_pair(
                policies,
                &index,
                *source,
                *destination,
                &mut winners,
                &mut entries,
            );
        }
        (entries, winners)
    };
    let results: Vec<(Vec<PolicyEntry>, Vec<usize>)> = if pairs.len() <= chunk {
        vec![compile_run(&pairs)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = pairs
                .chunks(chunk)
                .map(|run| scope.spawn(|| compile_run(run)))
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("a pair compiler thread panicked"))
                .collect()
        })
    };
    let mut entries = Vec::with_capacity(results.iter().map(|(entries, _)| entries.len()).sum());
    for (run, winners) in results {
        entries.extend(run);
        for rank in winners {
            decided[rank] = true;
        }
    }
    entries
}

/// Below this many pairs per thread, starting threads costs more than it saves.
const PAIRS_PER_THREAD: usize = 256;

/// One pair's entries, sorted by (prefix length, protocol, port), appended to `entries`.
fn compile_pair(
    policies: &[Prepared],
    index: &PairIndex,
    source: u32,
    destination: u32,
    winners: &mut Vec<usize>,
    entries: &mut Vec<PolicyEntry>,
) {
    let mut pair = PairCompiler::new(policies);
    let mut cursors = [0usize; 4];
    let lists = index.lists(source, destination);
    // Merge the four sorted lists in rank order; stop once nothing later can matter.
    while !pair.complete() {
        let next = (0..4)
            .filter(|list| cursors[*list] < lists[*list].len())
            .min_by_key(|list| lists[*list][cursors[*list]]);
        let Some(list) = next else {
            break;
        };
        pair.add(lists[list][cursors[list]] as usize);
        cursors[list] += 1;
    }
    let first = entries.len();
    pair.emit(source, destination, winners, entries);
    entries[first..].sort_unstable_by_key(|entry| (entry.prefix_len, entry.proto, entry.port));
}

/// First-come painting of the port space: each port goes to the first (best ranked)
/// policy that covers it.
struct Painter {
    /// Unclaimed ranges, start -> end (inclusive).
    free: BTreeMap<u32, u32>,
    /// Claimed ranges: (start, end, rank).
    claimed: Vec<(u32, u32, usize)>,
}

impl Painter {
    fn new() -> Self {
        Painter {
            free: BTreeMap::from([(0, PORT_SPACE_END)]),
            claimed: Vec::new(),
        }
    }

    /// Claims the unclaimed part of `low..=high` for `rank`; whether it claimed anything.
    fn paint(&mut self, low: u32, high: u32, rank: usize) -> bool {
        let mut painted = false;
        // The free range containing `low`, if any, then every one starting inside.
        let first = self
            .free
            .range(..=low)
            .next_back()
            .filter(|(_, end)| **end >= low)
            .map(|(start, _)| *start)
            .unwrap_or(low);
        let overlapping: Vec<(u32, u32)> = self
            .free
            .range(first..=high)
            .map(|(start, end)| (*start, *end))
            .collect();
        for (start, end) in overlapping {
            self.free.remove(&start);
            if start < low {
                self.free.insert(start, low - 1);
            }
            if end > high {
                self.free.insert(high + 1, end);
            }
            self.claimed.push((start.max(low), end.min(high), rank));
            painted = true;
        }
        painted
    }

    fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// The whole port space as sorted (start, end, winner) segments.
    fn finish(self) -> Vec<(u32, u32, Option<usize>)> {
        let mut segments: Vec<(u32, u32, Option<usize>)> = self
            .claimed
            .into_iter()
            .map(|(start, end, rank)| (start, end, Some(rank)))
            .chain(self.free.into_iter().map(|(start, end)| (start, end, None)))
            .collect();
        segments.sort_unstable_by_key(|segment| segment.0);
        segments
    }
}

/// The decision of one zone pair, built by feeding its policies in rank order.
struct PairCompiler<'a> {
    policies: &'a [Prepared],
    /// First Enforce policy without ports, first policy of any mode without ports.
    enforced_pair: Option<usize>,
    audited_pair: Option<usize>,
    /// Per protocol (like `Protocol::ALL`): (enforced painter, any-mode painter), created
    /// when a policy first names the protocol.
    protocols: [Option<(Painter, Painter)>; 5],
    /// Ranks that decided something here.
    winners: Vec<usize>,
}

impl<'a> PairCompiler<'a> {
    fn new(policies: &'a [Prepared]) -> Self {
        PairCompiler {
            policies,
            enforced_pair: None,
            audited_pair: None,
            protocols: Default::default(),
            winners: Vec::new(),
        }
    }

    /// Nothing ranked later can change the result.
    fn complete(&self) -> bool {
        self.enforced_pair.is_some() && self.audited_pair.is_some()
    }

    fn add(&mut self, rank: usize) {
        let policy = &self.policies[rank];
        // (mode slot, whether this policy takes part in it): 0 = enforced, 1 = any mode.
        let takes_part = [policy.enforce, true];
        if policy.all_traffic {
            for (slot, pair) in [&mut self.enforced_pair, &mut self.audited_pair]
                .into_iter()
                .enumerate()
            {
                if takes_part[slot] && pair.is_none() {
                    *pair = Some(rank);
                    self.winners.push(rank);
                }
            }
            for (enforced, audited) in self.protocols.iter_mut().flatten() {
                if policy.enforce {
                    enforced.paint(0, PORT_SPACE_END, rank);
                }
                audited.paint(0, PORT_SPACE_END, rank);
            }
            return;
        }
        for (protocol, ranges) in policy.ranges.iter().enumerate() {
            if ranges.is_empty() {
                continue;
            }
            let (enforced_pair, audited_pair) = (self.enforced_pair, self.audited_pair);
            let (enforced, audited) = self.protocols[protocol].get_or_insert_with(|| {
                // A policy without ports ranked earlier already owns the whole protocol.
                let painter = |owner: Option<usize>| {
                    let mut painter = Painter::new();
                    if let Some(owner) = owner {
                        painter.paint(0, PORT_SPACE_END, owner);
                    }
                    painter
                };
                (painter(enforced_pair), painter(audited_pair))
            });
            let mut won = false;
            for (low, high) in ranges {
                if policy.enforce && !enforced.is_full() {
                    won |= enforced.paint(*low, *high, rank);
                }
                if !audited.is_full() {
                    won |= audited.paint(*low, *high, rank);
                }
            }
            if won {
                self.winners.push(rank);
            }
        }
    }

    fn value(
        &self,
        enforced: Option<usize>,
        audited: Option<usize>,
        default: (u8, u32),
    ) -> PolicyValue {
        let (verdict, rule) = enforced.map_or(default, |rank| {
            (self.policies[rank].verdict, self.policies[rank].rule)
        });
        let mut value = PolicyValue {
            verdict,
            rule,
            audit_rule: RULE_NONE,
            ..PolicyValue::default()
        };
        if let Some(rank) = audited
            && verdict == VERDICT_ALLOW
            && self.policies[rank].verdict == VERDICT_DENY
        {
            value.audit = 1;
            value.audit_rule = self.policies[rank].rule;
        }
        value
    }

    fn emit(
        mut self,
        source: u32,
        destination: u32,
        winners: &mut Vec<usize>,
        entries: &mut Vec<PolicyEntry>,
    ) {
        winners.append(&mut self.winners);
        let default = if source == destination {
            (VERDICT_ALLOW, RULE_DEFAULT_INTRA_ALLOW)
        } else {
            (VERDICT_DENY, RULE_DEFAULT_INTER_DENY)
        };
        let pair_value = self.value(self.enforced_pair, self.audited_pair, default);
        let entry = |prefix_len: u32, proto: u8, port: u16, value: PolicyValue| PolicyEntry {
            src_zone: source,
            dst_zone: destination,
            prefix_len,
            proto,
            port,
            value,
        };
        entries.push(entry(POLICY_PREFIX_PAIR, 0, 0, pair_value));
        let protocols = std::mem::take(&mut self.protocols);
        for (protocol, painters) in Protocol::ALL.iter().zip(protocols) {
            let Some((enforced, audited)) = painters else {
                continue;
            };
            let mut segments: Vec<(u32, u32, PolicyValue)> = Vec::new();
            for (start, end, enforced, audited) in overlay(&enforced.finish(), &audited.finish()) {
                let value = self.value(enforced, audited, default);
                match segments.last_mut() {
                    Some(last) if last.2 == value => last.1 = end,
                    _ => segments.push((start, end, value)),
                }
            }
            for (block_start, size_bits, value) in fewest_blocks(&segments, pair_value) {
                entries.push(entry(
                    POLICY_PREFIX_PROTO + 16 - size_bits,
                    protocol.number(),
                    block_start as u16,
                    value,
                ));
            }
        }
    }
}

/// Two partitions of the port space laid over each other: (start, end, left, right).
fn overlay(
    left: &[(u32, u32, Option<usize>)],
    right: &[(u32, u32, Option<usize>)],
) -> Vec<(u32, u32, Option<usize>, Option<usize>)> {
    let mut result = Vec::with_capacity(left.len() + right.len());
    let (mut left_index, mut right_index) = (0, 0);
    let mut start = 0;
    while left_index < left.len() && right_index < right.len() {
        let (_, left_end, left_owner) = left[left_index];
        let (_, right_end, right_owner) = right[right_index];
        let end = left_end.min(right_end);
        result.push((start, end, left_owner, right_owner));
        if left_end == end {
            left_index += 1;
        }
        if right_end == end {
            right_index += 1;
        }
        start = end + 1;
    }
    result
}

/// The fewest prefix entries that give every port of a protocol the value of its
/// segment under longest-prefix match: (block start, log2 of block size, value). Ports no
/// entry covers get `inherited` (the pair entry). Blocks nest: a wide block carries the
/// most common value and narrower ones carve out the exceptions, so one allowed port
/// costs one entry instead of the ~30 a flat partition of the port space needs.
///
/// This is ORTC (Draves et al., "Constructing optimal IP routing tables"): bottom up,
/// every block of the binary trie over the port space gets the set of values that
/// minimise the entries below it (the children's intersection when they share one,
/// their union otherwise); top down, a block gets an entry only when the value it
/// inherits is not in its set. Only blocks whose ports do not all share one value are
/// split, so the work grows with the number of segments, not with the port space.
fn fewest_blocks(
    segments: &[(u32, u32, PolicyValue)],
    inherited: PolicyValue,
) -> Vec<(u32, u32, PolicyValue)> {
    /// A block of the trie: its best values (indices into `values`, sorted) and children.
    struct Block {
        best: Vec<u16>,
        children: Option<[usize; 2]>,
    }
    fn build(
        start: u32,
        bits: u32,
        segments: &[(u32, u32, u16)],
        blocks: &mut Vec<Block>,
    ) -> usize {
        let end = start + (1 << bits) - 1;
        // `segments` holds exactly the segments overlapping this block, in order.
        let (first_end, first_value) = (segments[0].1, segments[0].2);
        let block = if first_end >= end || bits == 0 {
            Block {
                best: vec![first_value],
                children: None,
            }
        } else {
            let middle = start + (1 << (bits - 1));
            // A segment straddling the middle belongs to both halves.
            let left_to = segments.partition_point(|segment| segment.0 < middle);
            let right_from = segments.partition_point(|segment| segment.1 < middle);
            let left = build(start, bits - 1, &segments[..left_to], blocks);
            let right = build(middle, bits - 1, &segments[right_from..], blocks);
            let (left_best, right_best) = (&blocks[left].best, &blocks[right].best);
            let shared: Vec<u16> = left_best
                .iter()
                .copied()
                .filter(|value| right_best.binary_search(value).is_ok())
                .collect();
            let best = if shared.is_empty() {
                let mut union: Vec<u16> = left_best.iter().chain(right_best).copied().collect();
                union.sort_unstable();
                union.dedup();
                union
            } else {
                shared
            };
            Block {
                best,
                children: Some([left, right]),
            }
        };
        blocks.push(block);
        blocks.len() - 1
    }
    fn emit(
        blocks: &[Block],
        block: usize,
        start: u32,
        bits: u32,
        inherited: u16,
        out: &mut Vec<(u32, u32, u16)>,
    ) {
        let own = &blocks[block];
        let value = if own.best.binary_search(&inherited).is_ok() {
            inherited
        } else {
            out.push((start, bits, own.best[0]));
            own.best[0]
        };
        if let Some([left, right]) = own.children {
            emit(blocks, left, start, bits - 1, value, out);
            emit(
                blocks,
                right,
                start + (1 << (bits - 1)),
                bits - 1,
                value,
                out,
            );
        }
    }

    let mut values: Vec<PolicyValue> = vec![inherited];
    let indexed: Vec<(u32, u32, u16)> = segments
        .iter()
        .map(|(start, end, value)| {
            let index = match values.iter().position(|known| known == value) {
                Some(index) => index,
                None => {
                    values.push(*value);
                    values.len() - 1
                }
            };
            (*start, *end, index as u16)
        })
        .collect();
    let mut blocks = Vec::new();
    let root = build(0, 16, &indexed, &mut blocks);
    let mut out = Vec::new();
    emit(&blocks, root, 0, 16, 0, &mut out);
    out.into_iter()
        .map(|(start, bits, value)| (start, bits, values[value as usize]))
        .collect()
}

#[cfg(test)]
mod tests;
