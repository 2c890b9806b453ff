//! Who owns which IP, as the datapath sees it: the zone and an epoch that changes exactly
//! when the owner changes. The epoch is derived from the owner's identity (kind,
//! namespace, name, uid), so it needs no state of its own and survives agent restarts:
//! a restarted agent computes the same epochs for the same owners, and conntrack entries
//! made for a previous owner of an IP never match the new one.

use std::net::IpAddr;

use firewall_common::{
    ENDPOINT_FLAG_LOCAL, ENDPOINT_FLAG_POD, ENDPOINT_FLAG_PRESENT, EndpointKey, EndpointSlot,
    ipv4_mapped,
};

use crate::policy::compiled::{Endpoint, EndpointKind};

/// FNV-1a, 32 bits. Zero is reserved for "not an endpoint", so it is mapped to 1.
pub fn epoch_of(owner_key: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in owner_key.bytes() {
        hash ^= byte as u32;
        hash = hash.wrapping_mul(0x0100_0193);
    }
    if hash == 0 { 1 } else { hash }
}

/// [`epoch_of`] of `kind.owner_key()`, without building the string: the sync computes
/// it for every address of every generation.
pub fn epoch_of_kind(kind: &EndpointKind) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |part: &str| {
        for byte in part.bytes() {
            hash ^= byte as u32;
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    match kind {
        EndpointKind::Pod {
            namespace,
            name,
            uid,
            ..
        } => {
            for part in ["pod/", namespace, "/", name, "/", uid] {
                feed(part);
            }
        }
        EndpointKind::Node { name } => {
            feed("node/");
            feed(name);
        }
        EndpointKind::Service { namespace, name } => {
            for part in ["service/", namespace, "/", name] {
                feed(part);
            }
        }
    }
    if hash == 0 { 1 } else { hash }
}

/// The map key of an address (IPv4 stored IPv4-mapped).
pub fn endpoint_key(ip: IpAddr) -> EndpointKey {
    EndpointKey {
        addr: address_bytes(ip),
    }
}

/// 16 bytes, network order, IPv4-mapped for IPv4.
pub fn address_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Back from the map representation.
pub fn address_from_bytes(bytes: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// An endpoint as one policy slot of the map holds it. `local` marks endpoints whose
/// interface is on this node.
pub fn endpoint_slot(endpoint: &Endpoint, local: bool) -> EndpointSlot {
    EndpointSlot {
        zone: endpoint.zone,
        epoch: epoch_of_kind(&endpoint.kind),
        flags: ENDPOINT_FLAG_PRESENT
            | if local { ENDPOINT_FLAG_LOCAL } else { 0 }
            | if matches!(endpoint.kind, EndpointKind::Pod { .. }) {
                ENDPOINT_FLAG_POD
            } else {
                0
            },
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_differ_by_owner_and_are_stable() {
        let a = epoch_of("pod/shop/web-1/uid-a");
        let b = epoch_of("pod/shop/web-1/uid-b");
        assert_ne!(a, b);
        assert_eq!(a, epoch_of("pod/shop/web-1/uid-a"));
        assert_ne!(a, 0);
    }

    #[test]
    fn epoch_of_kind_equals_the_epoch_of_the_owner_key() {
        let kinds = [
            EndpointKind::Pod {
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: "uid-a".into(),
                labels: Default::default(),
                node: None,
                workload: None,
            },
            EndpointKind::Pod {
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: String::new(),
                labels: Default::default(),
                node: Some("n1".into()),
                workload: None,
            },
            EndpointKind::Node { name: "n1".into() },
            EndpointKind::Service {
                namespace: "shop".into(),
                name: "api".into(),
            },
        ];
        for kind in &kinds {
            assert_eq!(epoch_of_kind(kind), epoch_of(&kind.owner_key()), "{kind:?}");
        }
    }

    #[test]
    fn addresses_round_trip() {
        for ip in ["198.18.0.7", "2001:db8::7", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(address_from_bytes(address_bytes(ip)), ip);
        }
        assert_eq!(
            address_bytes("198.18.0.7".parse().unwrap())[10..],
            [0xff, 0xff, 198, 18, 0, 7]
        );
    }
}
