//! Who owns an address: a pod/node/service endpoint (hash, exact) or a CIDR zone (LPM),
//! else `world`.
use aya_ebpf::maps::lpm_trie::Key;
use firewall_common::{EndpointKey, EndpointValue, NetworkKey, ZONE_WORLD};

use crate::maps::{ENDPOINTS, NETWORKS};

#[derive(Clone, Copy)]
pub struct Identity {
    pub zone: u32,
    /// The address is in ENDPOINTS.
    pub endpoint: bool,
}

#[inline(always)]
pub fn endpoint(addr: &[u8; 16]) -> Option<EndpointValue> {
    let value = ENDPOINTS.get_ptr(EndpointKey { addr: *addr })?;
    // SAFETY: the pointer comes from a successful map lookup and is read at once.
    Some(unsafe { *value })
}

/// The identity of an address: endpoint first, then the longest CIDR, else world.
#[inline(always)]
pub fn resolve(addr: &[u8; 16], endpoint: Option<EndpointValue>) -> Identity {
    if let Some(value) = endpoint {
        return Identity {
            zone: value.zone,
            endpoint: true,
        };
    }
    let zone = match NETWORKS.get(Key::new(128, NetworkKey { addr: *addr })) {
        Some(network) => network.zone,
        None => ZONE_WORLD,
    };
    Identity {
        zone,
        endpoint: false,
    }
}
