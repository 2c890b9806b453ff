//! What user space believes is in the kernel maps: a copy of ENDPOINTS, NETWORKS,
//! INTERFACES and both POLICY slots, read once from the pinned maps and kept true to the
//! kernel by every write, so a sync writes only what changed.

use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, LpmTrie, MapData};
use firewall_common::*;

use super::error::{DatapathError, map_error};

/// A POLICY entry as the shadow keeps it: prefix length and key with the slot zeroed.
pub(super) type PolicySlotKey = (u32, PolicyKey);

/// What user space believes is in the kernel maps.
#[derive(Default)]
pub(crate) struct Shadow {
    pub(super) loaded: bool,
    pub(super) endpoints: StdHashMap<EndpointKey, EndpointValue>,
    pub(super) networks: StdHashMap<(u32, NetworkKey), NetworkValue>,
    pub(super) interfaces: StdHashMap<u32, InterfaceValue>,
    /// The entries of each POLICY slot.
    pub(super) policy: [StdHashMap<PolicySlotKey, PolicyValue>; 2],
    /// Per map: whether the kernel refused a batched update (then entries go one by one).
    pub(super) no_batch: [bool; 3],
}

pub(super) const BATCH_ENDPOINTS: usize = 0;
pub(super) const BATCH_NETWORKS: usize = 1;
pub(super) const BATCH_POLICY: usize = 2;

pub(super) fn slot_of(key: &PolicyKey) -> u32 {
    u32::from_be_bytes(key.slot)
}

pub(super) fn slot_key(key: &PolicyKey) -> PolicyKey {
    PolicyKey {
        slot: [0; 4],
        ..*key
    }
}

impl Shadow {
    /// Reads what the pinned maps hold.
    pub(super) fn read(
        endpoints: &HashMap<MapData, EndpointKey, EndpointValue>,
        networks: &LpmTrie<MapData, NetworkKey, NetworkValue>,
        interfaces: &HashMap<MapData, u32, InterfaceValue>,
        policy: &LpmTrie<MapData, PolicyKey, PolicyValue>,
    ) -> Result<Self, DatapathError> {
        let mut shadow = Shadow {
            loaded: true,
            ..Default::default()
        };
        for entry in endpoints.iter() {
            let (key, value) = entry.map_err(map_error(MAP_ENDPOINTS))?;
            shadow.endpoints.insert(key, value);
        }
        for entry in networks.iter() {
            let (key, value) = entry.map_err(map_error(MAP_NETWORKS))?;
            shadow
                .networks
                .insert((key.prefix_len(), key.data()), value);
        }
        for entry in interfaces.iter() {
            let (key, value) = entry.map_err(map_error(MAP_INTERFACES))?;
            shadow.interfaces.insert(key, value);
        }
        for entry in policy.iter() {
            let (key, value) = entry.map_err(map_error(MAP_POLICY))?;
            let data = key.data();
            let slot = (slot_of(&data) & 1) as usize;
            shadow.policy[slot].insert((key.prefix_len(), slot_key(&data)), value);
        }
        Ok(shadow)
    }
}
