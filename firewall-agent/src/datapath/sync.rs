//! Writing a compiled policy into the maps. Policy entries go into the inactive slot of
//! POLICY and are switched on with one write of CONFIG, so packets see either the old or
//! the new policy, never a mix. Identity maps are diffed against a shadow copy of what is
//! in the kernel (read once from the pinned maps at start), so a sync costs one map update
//! per change, not per entry.

use std::collections::HashMap as StdHashMap;
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::Key;
use firewall_common::*;

use super::{Datapath, DatapathError, map_error};
use crate::identity;
use crate::policy::compiled::{CompiledPolicy, Endpoint};

/// Datapath settings that are not policy.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub unknown_source_allow: bool,
    pub deny_events_per_window: u32,
    pub deny_event_window: Duration,
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
        Self {
            unknown_source_allow: false,
            deny_events_per_window: 10,
            deny_event_window: Duration::from_secs(1),
            tcp_syn_timeout: Duration::from_secs(60),
            tcp_established_timeout: Duration::from_secs(6 * 3600),
            tcp_closing_timeout: Duration::from_secs(10),
            udp_timeout: Duration::from_secs(60),
            icmp_timeout: Duration::from_secs(30),
            other_timeout: Duration::from_secs(60),
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
    pub policy_entries: usize,
    /// Tracked connections removed because an address left or changed owner.
    pub connections_flushed: usize,
    pub duration: Duration,
}

/// What user space believes is in the kernel maps.
#[derive(Default)]
pub(crate) struct Shadow {
    loaded: bool,
    endpoints: StdHashMap<EndpointKey, EndpointValue>,
    networks: StdHashMap<(u32, NetworkKey), NetworkValue>,
    policy: Vec<(u32, PolicyKey)>,
}

fn full_or(
    name: &'static str,
    entries: usize,
) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |error| match &error {
        aya::maps::MapError::SyscallError(syscall)
            if matches!(
                syscall.io_error.raw_os_error(),
                Some(libc::E2BIG) | Some(libc::ENOSPC) | Some(libc::ENOMEM)
            ) =>
        {
            DatapathError::MapFull { name, entries }
        }
        _ => DatapathError::Map {
            name,
            source: error,
        },
    }
}

fn slot_of(key: &PolicyKey) -> u32 {
    u32::from_be_bytes(key.slot)
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

impl Datapath {
    fn load_shadow(&mut self) -> Result<(), DatapathError> {
        if self.shadow.loaded {
            return Ok(());
        }
        let mut shadow = Shadow {
            loaded: true,
            ..Default::default()
        };
        for entry in self.endpoints.iter() {
            let (key, value) = entry.map_err(map_error(MAP_ENDPOINTS))?;
            shadow.endpoints.insert(key, value);
        }
        for entry in self.networks.iter() {
            let (key, value) = entry.map_err(map_error(MAP_NETWORKS))?;
            shadow
                .networks
                .insert((key.prefix_len(), key.data()), value);
        }
        for key in self.policy.keys() {
            let key = key.map_err(map_error(MAP_POLICY))?;
            shadow.policy.push((key.prefix_len(), key.data()));
        }
        self.shadow = shadow;
        Ok(())
    }

    /// Makes the kernel enforce `compiled`. `is_local` says which endpoints are on this
    /// node (their packets cross one of our hooks first).
    pub fn sync(
        &mut self,
        compiled: &CompiledPolicy,
        tuning: &Tuning,
        is_local: impl Fn(&Endpoint) -> bool,
    ) -> Result<SyncReport, DatapathError> {
        let started = Instant::now();
        self.load_shadow()?;
        let old = self.config()?;
        let new_slot = if old.ready == 0 {
            0
        } else {
            1 - (old.active_slot & 1)
        };
        let generation = old.generation.wrapping_add(1).max(1);
        let mut report = SyncReport {
            generation,
            ..Default::default()
        };

        // 1. The new policy, beside the live one. Leftovers of an interrupted sync in that
        //    slot go first.
        let policy_capacity = self.policy_capacity;
        let mut kept = Vec::with_capacity(self.shadow.policy.len());
        for (prefix_len, key) in std::mem::take(&mut self.shadow.policy) {
            if slot_of(&key) == new_slot {
                let _ = self.policy.remove(&Key::new(prefix_len, key));
            } else {
                kept.push((prefix_len, key));
            }
        }
        for entry in &compiled.entries {
            let key = PolicyKey::new(
                new_slot,
                entry.src_zone,
                entry.dst_zone,
                entry.proto,
                entry.port,
            );
            self.policy
                .insert(&Key::new(entry.prefix_len, key), entry.value, 0)
                .map_err(full_or(MAP_POLICY, policy_capacity))?;
            kept.push((entry.prefix_len, key));
        }
        report.policy_entries = compiled.entries.len();
        self.shadow.policy = kept;

        // 2. Identities: removals first, so an address never carries two owners' state.
        let desired: StdHashMap<EndpointKey, EndpointValue> = compiled
            .endpoints
            .iter()
            .map(|(ip, endpoint)| {
                (
                    identity::endpoint_key(*ip),
                    identity::endpoint_value(endpoint, is_local(endpoint)),
                )
            })
            .collect();
        // An address that leaves, or changes owner, loses its identity and then its
        // tracked connections before a new owner gets it: the datapath's fast path trusts
        // conntrack entries without looking identities up again.
        let stale: Vec<EndpointKey> = self
            .shadow
            .endpoints
            .iter()
            .filter(|(key, value)| match desired.get(key) {
                None => true,
                Some(wanted) => wanted.epoch != value.epoch,
            })
            .map(|(key, _)| *key)
            .collect();
        for key in &stale {
            match self.endpoints.remove(key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(error) => return Err(map_error(MAP_ENDPOINTS)(error)),
            }
            self.shadow.endpoints.remove(key);
            if !desired.contains_key(key) {
                report.endpoints_removed += 1;
            }
        }
        if !stale.is_empty() {
            report.connections_flushed = self.flush_connections_of(&stale)?;
        }
        let endpoint_capacity = self.endpoint_capacity;
        for (key, value) in &desired {
            if self.shadow.endpoints.get(key) != Some(value) {
                self.endpoints
                    .insert(key, value, 0)
                    .map_err(full_or(MAP_ENDPOINTS, endpoint_capacity))?;
                self.shadow.endpoints.insert(*key, *value);
                report.endpoints_written += 1;
            }
        }

        let desired_networks: StdHashMap<(u32, NetworkKey), NetworkValue> = compiled
            .networks
            .iter()
            .map(|(network, zone)| {
                (
                    network_key(network),
                    NetworkValue {
                        zone: *zone,
                        _pad: 0,
                    },
                )
            })
            .collect();
        let stale: Vec<(u32, NetworkKey)> = self
            .shadow
            .networks
            .keys()
            .filter(|key| !desired_networks.contains_key(key))
            .copied()
            .collect();
        for (prefix_len, key) in stale {
            let _ = self.networks.remove(&Key::new(prefix_len, key));
            self.shadow.networks.remove(&(prefix_len, key));
            report.networks_removed += 1;
        }
        let network_capacity = self.network_capacity;
        for ((prefix_len, key), value) in &desired_networks {
            if self.shadow.networks.get(&(*prefix_len, *key)) != Some(value) {
                self.networks
                    .insert(&Key::new(*prefix_len, *key), value, 0)
                    .map_err(full_or(MAP_NETWORKS, network_capacity))?;
                self.shadow.networks.insert((*prefix_len, *key), *value);
                report.networks_written += 1;
            }
        }

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

        // 4. The old slot is dead now.
        let mut live = Vec::with_capacity(self.shadow.policy.len());
        for (prefix_len, key) in std::mem::take(&mut self.shadow.policy) {
            if slot_of(&key) != new_slot {
                let _ = self.policy.remove(&Key::new(prefix_len, key));
            } else {
                live.push((prefix_len, key));
            }
        }
        self.shadow.policy = live;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Number of endpoint entries user space has written (for fill-level reporting).
    pub fn endpoint_count(&self) -> usize {
        self.shadow.endpoints.len()
    }

    pub fn endpoint_capacity(&self) -> usize {
        self.endpoint_capacity
    }

    /// (entries, capacity) of POLICY: both slots during a switch, one otherwise.
    pub fn policy_fill(&self) -> (usize, usize) {
        (self.shadow.policy.len(), self.policy_capacity)
    }
}
