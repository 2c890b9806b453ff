//! Who owns an address in the live policy slot: a pod/node/service endpoint (hash, exact)
//! or a CIDR zone (LPM), else `world`; and which pod interface a local address is bound
//! to.
use aya_ebpf::maps::lpm_trie::Key;
use firewall_common::{
    ENDPOINT_FLAG_LOCAL, ENDPOINT_FLAG_PRESENT, EndpointKey, NetworkKey, ZONE_NONE, ZONE_WORLD,
};

use crate::maps::{ENDPOINTS, INTERFACES, NETWORKS};

#[derive(Clone, Copy)]
pub struct Identity {
    pub zone: u32,
    /// The address is in ENDPOINTS.
    pub endpoint: bool,
}

/// An endpoint as the live slot sees it; all zero for an address that is none (a plain
/// struct rather than an `Option`: the verifier rejects copies of an `Option`'s undefined
/// payload bytes).
#[derive(Clone, Copy)]
pub struct Endpoint {
    pub zone: u32,
    pub epoch: u32,
    pub flags: u32,
    /// The pod interface the address is bound to (0: none).
    pub ifindex: u32,
}

impl Endpoint {
    const NONE: Endpoint = Endpoint {
        zone: 0,
        epoch: 0,
        flags: 0,
        ifindex: 0,
    };

    /// The address is an endpoint in the live slot.
    #[inline(always)]
    pub fn present(&self) -> bool {
        self.flags & ENDPOINT_FLAG_PRESENT != 0
    }

    /// The address is an endpoint of this node: the control plane places it here, or it
    /// is bound to one of this node's pod interfaces.
    #[inline(always)]
    pub fn is_local(&self) -> bool {
        self.present() && (self.flags & ENDPOINT_FLAG_LOCAL != 0 || self.ifindex != 0)
    }
}

/// The endpoint owning `addr` in policy slot `slot` (`present()` is false when none).
#[inline(always)]
pub fn endpoint(addr: &[u8; 16], slot: u32) -> Endpoint {
    let Some(value) = ENDPOINTS.get_ptr(EndpointKey { addr: *addr }) else {
        return Endpoint::NONE;
    };
    // SAFETY: the pointer comes from a successful map lookup and is read at once; the
    // index is masked to the two slots.
    let (entry, ifindex) = unsafe {
        let value = &*value;
        (value.slots[(slot & 1) as usize], value.ifindex)
    };
    if entry.flags & ENDPOINT_FLAG_PRESENT == 0 {
        return Endpoint::NONE;
    }
    Endpoint {
        zone: entry.zone,
        epoch: entry.epoch,
        flags: entry.flags,
        ifindex,
    }
}

/// The identity of an address: endpoint first, then the longest CIDR, else world.
#[inline(always)]
pub fn resolve(addr: &[u8; 16], endpoint: &Endpoint, slot: u32) -> Identity {
    if endpoint.present() {
        return Identity {
            zone: endpoint.zone,
            endpoint: true,
        };
    }
    let zone = match NETWORKS.get(Key::new(128, NetworkKey { addr: *addr })) {
        Some(network) => network.zone[(slot & 1) as usize],
        None => ZONE_WORLD,
    };
    Identity {
        zone: if zone == ZONE_NONE { ZONE_WORLD } else { zone },
        endpoint: false,
    }
}

/// Whether some address is bound to the pod interface `ifindex`: then a source that is
/// not bound there is spoofed, not a pod the agent has yet to learn about.
#[inline(always)]
pub fn interface_has_bindings(ifindex: u32) -> bool {
    match INTERFACES.get_ptr(ifindex) {
        // SAFETY: pointer from a successful lookup, read at once.
        Some(value) => unsafe { (*value).bound_addresses != 0 },
        None => false,
    }
}
