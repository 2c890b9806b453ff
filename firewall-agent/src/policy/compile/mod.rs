//! [`Validated`] -> [`CompiledPolicy`]: the zone table, then the two halves of the work.
//!
//! - `membership`: who is in which zone: pod membership, the IP -> identity table (pods,
//!   nodes, services) and the CIDR zones.
//! - `partition`: what each zone pair gets: rule ids, the policies ranked, and the POLICY
//!   LPM partition of (protocol, port) space per zone pair.
//!
//! The input is a [`Validated`] set, so the compiler checks nothing and cannot fail; what
//! it finds that does not stop enforcement it reports as [`Warning`]s, in this order:
//! membership first, then the policies.

mod membership;
mod partition;

use std::collections::HashMap;

use super::compiled::{CompiledPolicy, Subject, Warning, ZoneInfo};
use super::ids::zone_id;
use super::model::{RESERVED_ZONES, Zone};
use super::validate::Validated;

/// Compiles a validated set. Pure.
pub fn compile(input: &Validated) -> CompiledPolicy {
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

    let pod_zones = membership::resolve_pods(input, &user_zones, &mut warnings);
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
                warnings.push(Warning::object(
                    Subject::Zone,
                    &zone.name,
                    "",
                    "selects no pod",
                ));
            }
        }
    }

    compiled.endpoints =
        membership::resolve_endpoints(input, &pod_zones, &zone_names, &mut warnings);
    compiled.networks =
        membership::resolve_networks(&user_zones, &mut compiled.zones, &mut warnings);

    compiled.entries =
        partition::entries(input, &compiled.zones, &mut compiled.rules, &mut warnings);
    compiled.warnings = warnings;
    compiled
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

#[cfg(test)]
mod tests;
