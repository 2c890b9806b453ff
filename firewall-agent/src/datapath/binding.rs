//! Which pod interface each pod address belongs to: the binding the datapath's
//! anti-spoofing checks (a packet from a pod interface must carry one of that interface's
//! addresses as its source).
//!
//! Found from the node itself, over rtnetlink, in two ways:
//! - a host route to exactly that address through a pod interface (routed CNIs: Calico,
//!   Cilium native routing, ptp): written by the node's CNI, so it wins;
//! - the addresses configured on the other end of a pod's veth, read in the pod's network
//!   namespace through its netns id (`IFA_TARGET_NETNSID`, Linux 4.20+): this covers
//!   bridged CNIs, where all pods share one route through the bridge.
//!
//! Only addresses the control plane gives to a pod are ever bound (the sync looks bindings
//! up by its endpoints). A host route binds any pod's address (the node's own routing
//! table says where that pod is); an address configured in a pod's namespace binds only
//! a pod the control plane places on this node, so a pod adding an address to its own
//! interface cannot claim a pod of another node, and claiming one of this node's makes it
//! contested: a contested address is bound nowhere (its traffic then follows
//! `--unknown-source`), logged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::netlink::{
    IFA_ADDRESS, IFA_LOCAL, IFA_TARGET_NETNSID, IFLA_LINK, IFLA_LINK_NETNSID, NetlinkError,
    RT_TABLE_MAIN, RTA_DST, RTA_OIF, RTA_TABLE, RTM_GETADDR, RTM_GETLINK, RTM_GETROUTE,
    RTN_UNICAST, Socket, address_of, attribute, attributes, u32_of,
};

/// Address -> ifindex of the host-side pod interface it is bound to, by how it was found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bindings {
    /// By a host route through the interface (the node's own routing table).
    by_route: HashMap<IpAddr, u32>,
    /// By the address configured on the pod's end of the interface.
    by_address: HashMap<IpAddr, u32>,
}

impl Bindings {
    /// The interface `ip` is bound to; `placed_here` says whether the control plane puts
    /// its pod on this node (only then does a pod-configured address count).
    pub fn interface(&self, ip: &IpAddr, placed_here: bool) -> Option<u32> {
        self.by_route.get(ip).copied().or_else(|| {
            placed_here
                .then(|| self.by_address.get(ip).copied())
                .flatten()
        })
    }

    /// How many addresses are bound.
    pub fn len(&self) -> usize {
        self.by_route.len() + self.by_address.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bindings known for certain (as a host route would make them), e.g. for tests that run
/// every address through one interface.
impl FromIterator<(IpAddr, u32)> for Bindings {
    fn from_iter<I: IntoIterator<Item = (IpAddr, u32)>>(iter: I) -> Self {
        Self {
            by_route: iter.into_iter().collect(),
            by_address: HashMap::new(),
        }
    }
}

/// Errors of the binding discovery.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// Addresses that are never a pod's own source: link-local ones (handled by the
/// datapath's link rules), loopback, unspecified and multicast.
fn bindable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_unspecified() || v4.is_multicast()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local())
        }
    }
}

/// A pod interface's other end: its index in the pod's namespace and that namespace's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Peer {
    netns_id: i32,
    ifindex: u32,
}

/// What was last read in the pod namespaces, per host-side interface, so that a scan
/// reads a pod's namespace again only when it has to: an interface seen for the first
/// time, one whose pod had no address yet (the CNI configures it just after creating the
/// interface), or every [`REREAD_EVERY`]. Keyed by the host-side ifindex, which is not
/// reused soon, rather than by netns id and peer index, which are.
#[derive(Debug, Default)]
pub struct Discovery {
    pods: HashMap<u32, PodAddresses>,
}

#[derive(Debug)]
struct PodAddresses {
    read_at: Instant,
    addresses: Vec<IpAddr>,
}

/// How often the addresses inside a pod's namespace are read again anyway.
pub const REREAD_EVERY: Duration = Duration::from_secs(30);

impl Discovery {
    /// Finds the bindings of the pod interfaces `interfaces` (ifindex of host-side
    /// interfaces). An error in one step is logged and leaves that step's bindings out.
    pub fn discover(&mut self, interfaces: &HashSet<u32>) -> Result<Bindings, BindingError> {
        discover_with(interfaces, &mut self.pods)
    }
}

fn discover_with(
    interfaces: &HashSet<u32>,
    cache: &mut HashMap<u32, PodAddresses>,
) -> Result<Bindings, BindingError> {
    let mut socket = Socket::open()?;
    // Claims: address -> interfaces that claim it (by route, or by peer address).
    let mut routed: BTreeMap<IpAddr, HashSet<u32>> = BTreeMap::new();
    let mut configured: BTreeMap<IpAddr, HashSet<u32>> = BTreeMap::new();

    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut header = [0u8; 12];
        header[0] = family;
        let result = socket.dump("route dump", RTM_GETROUTE, &header, &[], |payload| {
            if payload.len() < 12 {
                return;
            }
            let (dst_len, table, route_type) = (payload[1], payload[4], payload[7]);
            let full = if family as i32 == libc::AF_INET {
                32
            } else {
                128
            };
            if dst_len != full || route_type != RTN_UNICAST {
                return;
            }
            let mut table = table as u32;
            let (mut destination, mut oif) = (None, None);
            for (kind, value) in attributes(payload, 12) {
                match kind {
                    RTA_DST => destination = address_of(family, value),
                    RTA_OIF => oif = u32_of(value),
                    RTA_TABLE => table = u32_of(value).unwrap_or(table),
                    _ => {}
                }
            }
            if let (Some(destination), Some(oif)) = (destination, oif)
                && table == RT_TABLE_MAIN
                && interfaces.contains(&oif)
                && bindable(&destination)
            {
                routed.entry(destination).or_default().insert(oif);
            }
        });
        if let Err(error) = result {
            tracing::warn!(%error, "cannot read host routes; bindings from pod addresses only");
        }
    }

    // The other end of each pod veth.
    let mut peers: HashMap<Peer, u32> = HashMap::new();
    // struct ifinfomsg: family, pad, type, index, flags, change (16 bytes).
    let header = [0u8; 16];
    socket.dump("link dump", RTM_GETLINK, &header, &[], |payload| {
        if payload.len() < 16 {
            return;
        }
        let index = u32::from_ne_bytes(payload[4..8].try_into().expect("4 bytes"));
        if !interfaces.contains(&index) {
            return;
        }
        let (mut link, mut netns_id) = (None, None);
        for (kind, value) in attributes(payload, 16) {
            match kind {
                IFLA_LINK => link = u32_of(value),
                IFLA_LINK_NETNSID => netns_id = u32_of(value).map(|id| id as i32),
                _ => {}
            }
        }
        if let (Some(ifindex), Some(netns_id)) = (link, netns_id)
            && netns_id >= 0
        {
            peers.insert(Peer { netns_id, ifindex }, index);
        }
    })?;

    // Forget interfaces that are gone; read the namespaces of pods not known well enough.
    cache.retain(|host_side, _| peers.values().any(|index| index == host_side));
    let now = Instant::now();
    let stale = |host_side: &u32| match cache.get(host_side) {
        None => true,
        Some(known) => {
            known.addresses.is_empty() || now.duration_since(known.read_at) >= REREAD_EVERY
        }
    };
    let namespaces: HashSet<i32> = peers
        .iter()
        .filter(|(_, host_side)| stale(host_side))
        .map(|(peer, _)| peer.netns_id)
        .collect();
    let mut read: HashMap<u32, Vec<IpAddr>> = HashMap::new();
    for (peer, host_side) in &peers {
        if namespaces.contains(&peer.netns_id) {
            read.insert(*host_side, Vec::new());
        }
    }
    for netns_id in namespaces {
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            // struct ifaddrmsg: family, prefixlen, flags, scope, index (8 bytes).
            let mut header = [0u8; 8];
            header[0] = family;
            let target = attribute(IFA_TARGET_NETNSID, &netns_id.to_ne_bytes());
            let result = socket.dump("address dump", RTM_GETADDR, &header, &target, |payload| {
                if payload.len() < 8 {
                    return;
                }
                let index = u32::from_ne_bytes(payload[4..8].try_into().expect("4 bytes"));
                let Some(host_side) = peers.get(&Peer {
                    netns_id,
                    ifindex: index,
                }) else {
                    return;
                };
                let (mut local, mut address) = (None, None);
                for (kind, value) in attributes(payload, 8) {
                    match kind {
                        IFA_LOCAL => local = address_of(family, value),
                        IFA_ADDRESS => address = address_of(family, value),
                        _ => {}
                    }
                }
                if let Some(ip) = local.or(address)
                    && bindable(&ip)
                {
                    read.entry(*host_side).or_default().push(ip);
                }
            });
            if let Err(error) = result {
                tracing::warn!(%error, netns_id, "cannot read a pod namespace's addresses");
            }
        }
    }
    for (host_side, addresses) in read {
        cache.insert(
            host_side,
            PodAddresses {
                read_at: now,
                addresses,
            },
        );
    }
    for (host_side, known) in cache.iter() {
        for ip in &known.addresses {
            configured.entry(*ip).or_default().insert(*host_side);
        }
    }
    Ok(resolve_claims(&routed, &configured))
}

/// One interface per address: a route wins; an address claimed by several interfaces
/// (by routes, or, without a route, by pod addresses) is bound to none.
fn resolve_claims(
    routed: &BTreeMap<IpAddr, HashSet<u32>>,
    configured: &BTreeMap<IpAddr, HashSet<u32>>,
) -> Bindings {
    let addresses: HashSet<&IpAddr> = routed.keys().chain(configured.keys()).collect();
    let mut bindings = Bindings::default();
    for ip in addresses {
        let (claims, found) = match routed.get(ip) {
            Some(claims) => (claims, &mut bindings.by_route),
            None => match configured.get(ip) {
                Some(claims) => (claims, &mut bindings.by_address),
                None => continue,
            },
        };
        match claims.iter().collect::<Vec<_>>().as_slice() {
            [only] => {
                found.insert(*ip, **only);
            }
            _ => {
                tracing::warn!(%ip, interfaces = ?claims, "address claimed by several pod interfaces: bound to none");
            }
        }
    }
    bindings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(entries: &[(&str, &[u32])]) -> BTreeMap<IpAddr, HashSet<u32>> {
        entries
            .iter()
            .map(|(ip, interfaces)| (ip.parse().unwrap(), interfaces.iter().copied().collect()))
            .collect()
    }

    #[test]
    fn a_route_wins_over_pod_addresses() {
        let routed = claims(&[("198.18.1.10", &[7])]);
        let configured = claims(&[("198.18.1.10", &[9]), ("198.18.1.11", &[9])]);
        let bindings = resolve_claims(&routed, &configured);
        let (routed_ip, configured_ip) = (
            "198.18.1.10".parse::<IpAddr>().unwrap(),
            "198.18.1.11".parse::<IpAddr>().unwrap(),
        );
        assert_eq!(bindings.interface(&routed_ip, false), Some(7));
        assert_eq!(bindings.interface(&configured_ip, true), Some(9));
        // A pod address found only inside a pod's namespace binds a pod placed here, never
        // one the control plane places on another node.
        assert_eq!(bindings.interface(&configured_ip, false), None);
    }

    #[test]
    fn a_contested_address_is_bound_nowhere() {
        let configured = claims(&[("198.18.2.10", &[7, 9]), ("198.18.2.11", &[9])]);
        let bindings = resolve_claims(&BTreeMap::new(), &configured);
        assert_eq!(
            bindings.interface(&"198.18.2.10".parse::<IpAddr>().unwrap(), true),
            None
        );
        assert_eq!(bindings.len(), 1);
        let routed = claims(&[("198.18.1.10", &[3, 4])]);
        let configured = claims(&[("198.18.1.10", &[3])]);
        assert!(resolve_claims(&routed, &configured).is_empty());
    }

    #[test]
    fn link_local_and_special_addresses_are_never_bound() {
        for ip in [
            "fe80::1",
            "::1",
            "127.0.0.1",
            "0.0.0.0",
            "ff02::1",
            "224.0.0.1",
            "::",
        ] {
            assert!(!bindable(&ip.parse().unwrap()), "{ip}");
        }
        for ip in ["198.18.1.10", "2001:db8:1::10"] {
            assert!(bindable(&ip.parse().unwrap()), "{ip}");
        }
    }
}
