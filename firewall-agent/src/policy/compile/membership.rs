//! Who is in which zone: each pod's zone (selectors, host network, finished pods), the
//! IP -> identity table of pods, nodes and services with its conflicts resolved, and the
//! CIDR zones' prefixes. What is odd about any of it becomes a [`Warning`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use firewall_common::{ZONE_HOST, ZONE_NONE, ZONE_UNZONED};
use ipnet::IpNet;

use crate::policy::compiled::{Endpoint, EndpointKind, Subject, Warning, ZoneInfo};
use crate::policy::ids::zone_id;
use crate::policy::model::{NAMESPACE_NAME_LABEL, PolicySet, Zone};

/// The zone whose traffic each pod sends (indexed like `input.pods`): its selector zone
/// (the first by name when several match), `host` for host-network pods, `unzoned` when
/// no zone selects it, `None` for finished pods.
pub(super) fn resolve_pods(
    input: &PolicySet,
    user_zones: &[&Zone],
    warnings: &mut Vec<Warning>,
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
    // Warnings come out in pod name order whatever the input order: (pod, warning).
    let mut pod_warnings: Vec<((&str, &str), Warning)> = Vec::new();
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
                Warning {
                    zones: matching.iter().map(|zone| zone.to_string()).collect(),
                    ..Warning::namespaced(
                        Subject::Pod,
                        &pod.namespace,
                        &pod.name,
                        format!(
                            "matches zones {}; it is placed in zone {} (the name that sorts \
                             first)",
                            matching.join(", "),
                            matching[0]
                        ),
                    )
                },
            ));
        }
        zones[index] = Some(if pod.host_network {
            if let Some(zone) = matching.first() {
                pod_warnings.push((
                    key,
                    Warning::namespaced(
                        Subject::Pod,
                        &pod.namespace,
                        &pod.name,
                        format!(
                            "uses the host network: its traffic leaves from the node's address \
                             and is identified as zone host, not zone {zone}"
                        ),
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

pub(super) fn resolve_endpoints(
    input: &PolicySet,
    pod_zones: &[Option<u32>],
    zone_names: &HashMap<u32, String>,
    warnings: &mut Vec<Warning>,
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
            warnings.push(Warning::object(
                Subject::Address,
                &ip.to_string(),
                "",
                format!(
                    "is claimed by {winner} and {loser}; {winner} keeps it (nodes win over \
                     pods, pods over services, then the name that sorts first)"
                ),
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
    warnings: &mut Vec<Warning>,
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
        let warning = |reason: String| {
            Warning::namespaced(Subject::Service, &service.namespace, &service.name, reason)
        };
        if service.selector.is_empty() {
            warnings.push(warning(
                "has no selector; its cluster IPs get no zone".to_string(),
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
            warnings.push(warning(
                "selects no pod; its cluster IPs get no zone".to_string(),
            ));
            continue;
        }
        if zones.len() > 1 {
            let mut names: Vec<&str> = zones.iter().map(|zone| zone_names[zone].as_str()).collect();
            names.sort_unstable();
            warnings.push(warning(format!(
                "selects pods of several zones ({}); each connection is judged by the zone of \
                 the pod it reaches",
                names.join(", ")
            )));
        }
        for ip in &service.cluster_ips {
            claims.push((
                *ip,
                Endpoint {
                    zone: ZONE_NONE,
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

pub(super) fn resolve_networks(
    user_zones: &[&Zone],
    zones: &mut BTreeMap<String, ZoneInfo>,
    warnings: &mut Vec<Warning>,
) -> Vec<(IpNet, u32)> {
    let mut networks = Vec::new();
    for zone in user_zones {
        let id = zone_id(&zone.name);
        let mut own: Vec<IpNet> = Vec::new();
        for (index, network) in zone.networks.iter().enumerate() {
            let normalised = network.trunc();
            if normalised != *network {
                warnings.push(Warning::object(
                    Subject::Zone,
                    &zone.name,
                    format!("spec.networks[{index}]"),
                    format!("{network} has host bits set; using {normalised}"),
                ));
            }
            if own.contains(&normalised) {
                warnings.push(Warning::object(
                    Subject::Zone,
                    &zone.name,
                    format!("spec.networks[{index}]"),
                    format!("{normalised} is listed more than once"),
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
