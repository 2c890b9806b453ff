//! Writing a compiled policy into the maps. POLICY, ENDPOINTS and NETWORKS each hold two
//! slots; a new generation is written into the inactive slot of all three and switched on
//! with one write of CONFIG, so packets see either the old or the new generation (zones of
//! addresses and rules together), never a mix, and a write that fails half-way (a full
//! map) changes nothing packets see. Only the binding of pod addresses to interfaces
//! (anti-spoofing, not policy) is written in place.
//!
//! Every map is diffed against a shadow copy of what is in the kernel (read once from the
//! pinned maps at start), so a sync costs one map update per change, not per entry: the
//! inactive slot keeps the generation before the live one, and the next generation is
//! written over it as a diff (the copy is `shadow`). Writes go to the kernel in batches
//! (`BPF_MAP_UPDATE_BATCH`, one syscall for many entries) where the map type has them
//! (`batch`).

use std::collections::{HashMap as StdHashMap, HashSet};
use std::time::{Duration, Instant};

use aya::maps::IterableMap as _;
use aya::maps::lpm_trie::Key;
use firewall_common::*;

use super::{
    batch::{raw_fd, write_all},
    binding::Bindings,
    error::{DatapathError, full_or, map_error, removed},
    load::Datapath,
    shadow::{BATCH_ENDPOINTS, BATCH_NETWORKS, BATCH_POLICY, PolicySlotKey, Shadow, slot_key},
};
use crate::identity;
use crate::policy::compiled::{CompiledPolicy, Endpoint, EndpointKind};

/// Datapath settings that are not policy.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub unknown_source_allow: bool,
    pub deny_events_per_window: u32,
    pub deny_event_window: Duration,
    /// Conntrack timeouts: `CtTimeout::of` (firewall-common) says which one an entry lives
    /// by, for the datapath and for ageing alike; the defaults are `CtTimeout`'s.
    pub tcp_syn_timeout: Duration,
    pub tcp_established_timeout: Duration,
    pub tcp_closing_timeout: Duration,
    pub udp_timeout: Duration,
    pub icmp_timeout: Duration,
    pub other_timeout: Duration,
    /// Long flows report an update this often; zero disables updates.
    pub update_interval: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        let default = |timeout: CtTimeout| Duration::from_secs(timeout.default_secs());
        Self {
            unknown_source_allow: false,
            deny_events_per_window: 10,
            deny_event_window: Duration::from_secs(1),
            tcp_syn_timeout: default(CtTimeout::TcpSyn),
            tcp_established_timeout: default(CtTimeout::TcpEstablished),
            tcp_closing_timeout: default(CtTimeout::TcpClosing),
            udp_timeout: default(CtTimeout::Udp),
            icmp_timeout: default(CtTimeout::Icmp),
            other_timeout: default(CtTimeout::Other),
            update_interval: Duration::from_secs(60),
        }
    }
}

/// What one sync changed.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    pub generation: u32,
    pub endpoints_written: usize,
    pub endpoints_removed: usize,
    pub networks_written: usize,
    pub networks_removed: usize,
    /// Entries of the new generation (the size of one POLICY slot).
    pub policy_entries: usize,
    /// POLICY writes and deletes this sync needed: the difference between the new
    /// generation and what the inactive slot held.
    pub policy_written: usize,
    pub policy_removed: usize,
    /// Tracked connections removed because an address left or changed owner.
    pub connections_flushed: usize,
    pub duration: Duration,
}

fn network_key(network: &ipnet::IpNet) -> (u32, NetworkKey) {
    match network {
        ipnet::IpNet::V4(v4) => (
            96 + v4.prefix_len() as u32,
            NetworkKey {
                addr: ipv4_mapped(v4.network().octets()),
            },
        ),
        ipnet::IpNet::V6(v6) => (
            v6.prefix_len() as u32,
            NetworkKey {
                addr: v6.network().octets(),
            },
        ),
    }
}

/// The value of the longest proper prefix covering `key` that `value_of` knows, or world.
fn longest_cover(
    key: (u32, NetworkKey),
    value_of: impl Fn(&(u32, NetworkKey)) -> Option<u32>,
) -> u32 {
    let (prefix_len, network) = key;
    let address = u128::from_be_bytes(network.addr);
    for shorter in (0..prefix_len).rev() {
        let mask = if shorter == 0 {
            0
        } else {
            u128::MAX << (128 - shorter)
        };
        let cover = (
            shorter,
            NetworkKey {
                addr: (address & mask).to_be_bytes(),
            },
        );
        if let Some(zone) = value_of(&cover) {
            return zone;
        }
    }
    ZONE_WORLD
}

impl Datapath {
    /// Reads the shadow from the pinned maps, once.
    fn load_shadow(&mut self) -> Result<(), DatapathError> {
        if !self.shadow.loaded {
            self.shadow = Shadow::read(
                &self.endpoints,
                &self.networks,
                &self.interfaces_map,
                &self.policy,
            )?;
        }
        Ok(())
    }

    /// Makes the kernel enforce `compiled`. `is_local` says which endpoints are on this
    /// node (their packets cross one of our hooks first); `bindings` which pod interface
    /// each local address is bound to.
    pub fn sync(
        &mut self,
        compiled: &CompiledPolicy,
        tuning: &Tuning,
        is_local: impl Fn(&Endpoint) -> bool,
        bindings: &Bindings,
    ) -> Result<SyncReport, DatapathError> {
        let started = Instant::now();
        self.load_shadow()?;
        let old = self.config()?;
        let (new_slot, live_slot) = if old.ready == 0 {
            (0, None)
        } else {
            (1 - (old.active_slot & 1), Some(old.active_slot & 1))
        };
        let generation = old.generation.wrapping_add(1).max(1);
        let mut report = SyncReport {
            generation,
            policy_entries: compiled.entries.len(),
            ..Default::default()
        };

        // 1. The new generation beside the live one, in the inactive slot of every map:
        //    written over what that slot holds (the generation before the live one, or
        //    leftovers of an interrupted sync).
        self.sync_policy_slot(compiled, new_slot, &mut report)?;
        let stale = self.sync_endpoint_slot(
            compiled,
            new_slot,
            live_slot,
            &is_local,
            bindings,
            &mut report,
        )?;
        let prefixes = self.sync_network_slot(compiled, new_slot, live_slot, &mut report)?;
        self.sync_interfaces()?;

        // 3. The switch: one write makes the new slot live.
        let nanos = |duration: Duration| duration.as_nanos().min(u64::MAX as u128) as u64;
        let config = Config {
            active_slot: new_slot,
            generation,
            unknown_source: if tuning.unknown_source_allow {
                VERDICT_ALLOW
            } else {
                VERDICT_DENY
            },
            ready: 1,
            _pad: [0; 2],
            deny_events_per_window: tuning.deny_events_per_window,
            deny_event_window_ns: nanos(tuning.deny_event_window),
            ct_timeout_tcp_syn_ns: nanos(tuning.tcp_syn_timeout),
            ct_timeout_tcp_established_ns: nanos(tuning.tcp_established_timeout),
            ct_timeout_tcp_closing_ns: nanos(tuning.tcp_closing_timeout),
            ct_timeout_udp_ns: nanos(tuning.udp_timeout),
            ct_timeout_icmp_ns: nanos(tuning.icmp_timeout),
            ct_timeout_other_ns: nanos(tuning.other_timeout),
            update_interval_ns: nanos(tuning.update_interval),
        };
        self.config
            .set(0, config, 0)
            .map_err(map_error(MAP_CONFIG))?;

        // 4. What only the dead slot still needs goes: addresses and prefixes of no
        //    identity in the live slot (removing them changes no live answer), then the
        //    tracked connections of addresses that left or changed owner (the datapath
        //    already refuses to trust them: it compares the owners' epochs).
        self.drop_dead_entries(new_slot, &prefixes)?;
        if !stale.is_empty() {
            report.connections_flushed = self.flush_connections_of(&stale)?;
        }
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Writes the identities of `compiled` into slot `slot` of every ENDPOINTS entry,
    /// leaving the live slot as it is. Returns the addresses that leave or change owner.
    #[allow(clippy::too_many_arguments)]
    fn sync_endpoint_slot(
        &mut self,
        compiled: &CompiledPolicy,
        slot: u32,
        live_slot: Option<u32>,
        is_local: &impl Fn(&Endpoint) -> bool,
        bindings: &Bindings,
        report: &mut SyncReport,
    ) -> Result<Vec<EndpointKey>, DatapathError> {
        let slot = (slot & 1) as usize;
        let mut desired: StdHashMap<EndpointKey, (EndpointSlot, u32)> =
            StdHashMap::with_capacity(compiled.endpoints.len());
        for (ip, endpoint) in &compiled.endpoints {
            let local = is_local(endpoint);
            let ifindex = match endpoint.kind {
                EndpointKind::Pod { .. } => bindings.interface(ip, local).unwrap_or(0),
                _ => 0,
            };
            desired.insert(
                identity::endpoint_key(*ip),
                (identity::endpoint_slot(endpoint, local), ifindex),
            );
        }
        let mut stale = Vec::new();
        let mut keys = Vec::new();
        let mut values = Vec::new();
        let absent = EndpointSlot::default();
        for key in desired.keys().chain(
            self.shadow
                .endpoints
                .keys()
                .filter(|key| !desired.contains_key(key)),
        ) {
            let held = self.shadow.endpoints.get(key).copied().unwrap_or_default();
            let mut value = held;
            if live_slot.is_none() {
                // Nothing is live yet: whatever the other slot holds is leftovers.
                value.slots[1 - slot] = absent;
            }
            let (wanted, ifindex) = desired.get(key).copied().unwrap_or((absent, 0));
            value.slots[slot] = wanted;
            value.ifindex = ifindex;
            if let Some(live) = live_slot {
                let before = held.slots[(live & 1) as usize];
                if before.flags & ENDPOINT_FLAG_PRESENT != 0 && before.epoch != wanted.epoch {
                    stale.push(*key);
                    if wanted.flags & ENDPOINT_FLAG_PRESENT == 0 {
                        report.endpoints_removed += 1;
                    }
                }
            }
            if value != held {
                keys.push(*key);
                values.push(value);
            }
        }
        let shadow = &mut self.shadow.endpoints;
        let endpoints = &mut self.endpoints;
        write_all(
            raw_fd(endpoints.map()),
            &mut self.shadow.no_batch[BATCH_ENDPOINTS],
            MAP_ENDPOINTS,
            self.endpoint_capacity,
            &keys,
            &values,
            |key, value| endpoints.insert(key, value, 0),
            |index| {
                shadow.insert(keys[index], values[index]);
                report.endpoints_written += 1;
            },
        )?;
        Ok(stale)
    }

    /// Writes the CIDR zones of `compiled` into slot `slot` of NETWORKS. A prefix in one
    /// slot only gets, in the other slot, the answer of that slot's own prefixes (the
    /// longest one covering it, or world), so the trie's longest match stays right for
    /// both slots while they differ.
    fn sync_network_slot(
        &mut self,
        compiled: &CompiledPolicy,
        slot: u32,
        live_slot: Option<u32>,
        report: &mut SyncReport,
    ) -> Result<HashSet<(u32, NetworkKey)>, DatapathError> {
        let slot = (slot & 1) as usize;
        let desired: StdHashMap<(u32, NetworkKey), u32> = compiled
            .networks
            .iter()
            .map(|(network, zone)| (network_key(network), *zone))
            .collect();
        report.networks_removed = self
            .shadow
            .networks
            .keys()
            .filter(|key| !desired.contains_key(key))
            .count();
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for key in desired.keys().chain(
            self.shadow
                .networks
                .keys()
                .filter(|key| !desired.contains_key(key)),
        ) {
            let held = self.shadow.networks.get(key).copied();
            let mut value = held.unwrap_or_default();
            let other = 1 - slot;
            value.zone[other] = match (live_slot, held) {
                (None, _) => ZONE_WORLD,
                (Some(_), Some(held)) => held.zone[other],
                // New to the trie: what the live slot answers for it today.
                (Some(_), None) => longest_cover(*key, |prefix| {
                    self.shadow
                        .networks
                        .get(prefix)
                        .map(|value| value.zone[other])
                }),
            };
            value.zone[slot] = match desired.get(key) {
                Some(zone) => *zone,
                None => longest_cover(*key, |prefix| desired.get(prefix).copied()),
            };
            if held != Some(value) {
                keys.push(Key::new(key.0, key.1));
                values.push(value);
            }
        }
        let shadow = &mut self.shadow.networks;
        let networks = &mut self.networks;
        write_all(
            raw_fd(networks.map()),
            &mut self.shadow.no_batch[BATCH_NETWORKS],
            MAP_NETWORKS,
            self.network_capacity,
            &keys,
            &values,
            |key, value| networks.insert(key, value, 0),
            |index| {
                shadow.insert(
                    (keys[index].prefix_len(), keys[index].data()),
                    values[index],
                );
                report.networks_written += 1;
            },
        )?;
        Ok(desired.into_keys().collect())
    }

    /// After the switch to `live`: removes addresses without an identity in the live slot
    /// and prefixes that only stood in for another slot's answer.
    fn drop_dead_entries(
        &mut self,
        live: u32,
        prefixes: &HashSet<(u32, NetworkKey)>,
    ) -> Result<(), DatapathError> {
        let live = (live & 1) as usize;
        let dead: Vec<EndpointKey> = self
            .shadow
            .endpoints
            .iter()
            .filter(|(_, value)| value.slots[live].flags & ENDPOINT_FLAG_PRESENT == 0)
            .map(|(key, _)| *key)
            .collect();
        for key in dead {
            removed(self.endpoints.remove(&key), MAP_ENDPOINTS)?;
            self.shadow.endpoints.remove(&key);
        }
        let dead: Vec<(u32, NetworkKey)> = self
            .shadow
            .networks
            .keys()
            .filter(|key| !prefixes.contains(key))
            .copied()
            .collect();
        for (prefix_len, key) in dead {
            removed(
                self.networks.remove(&Key::new(prefix_len, key)),
                MAP_NETWORKS,
            )?;
            self.shadow.networks.remove(&(prefix_len, key));
        }
        Ok(())
    }

    /// Writes how many addresses each pod interface has bound (in place: not policy).
    fn sync_interfaces(&mut self) -> Result<(), DatapathError> {
        let mut desired: StdHashMap<u32, InterfaceValue> = StdHashMap::new();
        for value in self.shadow.endpoints.values() {
            if value.ifindex != 0 {
                desired.entry(value.ifindex).or_default().bound_addresses += 1;
            }
        }
        let gone: Vec<u32> = self
            .shadow
            .interfaces
            .keys()
            .filter(|ifindex| !desired.contains_key(ifindex))
            .copied()
            .collect();
        for ifindex in gone {
            removed(self.interfaces_map.remove(&ifindex), MAP_INTERFACES)?;
            self.shadow.interfaces.remove(&ifindex);
        }
        for (ifindex, value) in desired {
            if self.shadow.interfaces.get(&ifindex) != Some(&value) {
                self.interfaces_map
                    .insert(ifindex, value, 0)
                    .map_err(full_or(MAP_INTERFACES, INTERFACES_MAX_ENTRIES as usize))?;
                self.shadow.interfaces.insert(ifindex, value);
            }
        }
        Ok(())
    }

    /// Binds pod addresses to interfaces anew without a new generation: only the
    /// `ifindex` of entries changes (in place; it is not policy). Returns how many entries
    /// changed.
    pub fn rebind(&mut self, bindings: &Bindings) -> Result<usize, DatapathError> {
        self.load_shadow()?;
        let mut changed = 0;
        let updates: Vec<(EndpointKey, EndpointValue)> = self
            .shadow
            .endpoints
            .iter()
            .filter_map(|(key, value)| {
                let pod = value
                    .slots
                    .iter()
                    .any(|slot| slot.flags & ENDPOINT_FLAG_POD != 0);
                let placed_here = value
                    .slots
                    .iter()
                    .any(|slot| slot.flags & ENDPOINT_FLAG_LOCAL != 0);
                let ifindex = if pod {
                    bindings
                        .interface(&identity::address_from_bytes(key.addr), placed_here)
                        .unwrap_or(0)
                } else {
                    0
                };
                (ifindex != value.ifindex).then_some((*key, EndpointValue { ifindex, ..*value }))
            })
            .collect();
        for (key, value) in updates {
            self.endpoints
                .insert(key, value, 0)
                .map_err(full_or(MAP_ENDPOINTS, self.endpoint_capacity))?;
            self.shadow.endpoints.insert(key, value);
            changed += 1;
        }
        self.sync_interfaces()?;
        Ok(changed)
    }

    /// Number of endpoint entries user space has written (for fill-level reporting).
    pub fn endpoint_count(&self) -> usize {
        self.shadow.endpoints.len()
    }

    pub fn endpoint_capacity(&self) -> usize {
        self.endpoint_capacity
    }

    /// (entries, capacity) of POLICY: both slots, the live one and the previous
    /// generation kept as the base of the next diff.
    pub fn policy_fill(&self) -> (usize, usize) {
        (
            self.shadow.policy[0].len() + self.shadow.policy[1].len(),
            self.policy_capacity,
        )
    }

    /// Writes the slot `slot` of POLICY so that it holds exactly `compiled.entries`.
    fn sync_policy_slot(
        &mut self,
        compiled: &CompiledPolicy,
        slot: u32,
        report: &mut SyncReport,
    ) -> Result<(), DatapathError> {
        let shadow_slot = (slot & 1) as usize;
        let desired: StdHashMap<PolicySlotKey, PolicyValue> = compiled
            .entries
            .iter()
            .map(|entry| {
                (
                    (
                        entry.prefix_len,
                        PolicyKey::new(0, entry.src_zone, entry.dst_zone, entry.proto, entry.port),
                    ),
                    entry.value,
                )
            })
            .collect();
        let stale: Vec<PolicySlotKey> = self.shadow.policy[shadow_slot]
            .keys()
            .filter(|key| !desired.contains_key(key))
            .copied()
            .collect();
        let in_slot = |key: &PolicyKey| PolicyKey {
            slot: slot.to_be_bytes(),
            ..*key
        };
        for (prefix_len, key) in &stale {
            removed(
                self.policy.remove(&Key::new(*prefix_len, in_slot(key))),
                MAP_POLICY,
            )?;
            self.shadow.policy[shadow_slot].remove(&(*prefix_len, *key));
            report.policy_removed += 1;
        }
        // Written in the compiler's order (pair, prefix length, protocol, port): the
        // order does not matter to packets, the slot is not live, but it is reproducible.
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for entry in &compiled.entries {
            let key = PolicyKey::new(0, entry.src_zone, entry.dst_zone, entry.proto, entry.port);
            if self.shadow.policy[shadow_slot].get(&(entry.prefix_len, key)) != Some(&entry.value) {
                keys.push(Key::new(entry.prefix_len, in_slot(&key)));
                values.push(entry.value);
            }
        }
        let shadow = &mut self.shadow.policy[shadow_slot];
        let policy = &mut self.policy;
        write_all(
            raw_fd(policy.map()),
            &mut self.shadow.no_batch[BATCH_POLICY],
            MAP_POLICY,
            self.policy_capacity,
            &keys,
            &values,
            |key, value| policy.insert(key, value, 0),
            |index| {
                shadow.insert(
                    (keys[index].prefix_len(), slot_key(&keys[index].data())),
                    values[index],
                );
                report.policy_written += 1;
            },
        )
    }
}
