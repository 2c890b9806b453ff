//! Network namespaces that play a Kubernetes node and its pods: veth pairs, addresses and
//! routes as a routed (Calico-like) or a bridged CNI wires them. The old home of the
//! namespace guards, the traffic servers and the probes: they live in [`crate::netns`],
//! [`crate::traffic`] and [`crate::preflight`] now and are re-exported here, so
//! `topology::{Netns, TcpServer, can_run, ...}` keeps working.
//!
//! Every namespace is named `zw-<pid>-<unique>-<role>` and is owned by an RAII guard
//! ([`Netns`]): dropping the guard (also while a test panics) deletes the namespace, and
//! with it every interface inside. Host-side interfaces live in the node namespace, never in
//! the namespace the tests run in, and no namespace gets a route to the machine's real
//! interfaces. Namespaces left behind by a process that no longer exists are deleted by
//! [`cleanup_stale`], which [`Topology::routed`] and [`Topology::bridged`] call first.
//!
//! Addresses (documentation and benchmarking ranges only):
//!
//! | what | routed | bridged |
//! | --- | --- | --- |
//! | pod *n* (0-based) | `198.18.1.<10+n>/32`, `2001:db8:1::<10+n>/128` | `198.18.2.<10+n>/24`, `2001:db8:2::<10+n>/64` |
//! | pod gateway | `169.254.1.1` (proxy ARP), `fe80::1` | `198.18.2.1`, `2001:db8:2::1` (the bridge) |
//! | node | `198.18.0.1`, `2001:db8::1` (on `lo`) | `198.18.2.1`, `2001:db8:2::1` |
//! | internet host 0 | `203.0.113.10/24`, `2001:db8:ffff::10/64` | same |
//! | internet host 1 | `198.51.100.10/24`, `2001:db8:ffff:1::10/64` | same |
//!
//! Servers and probes run on threads that enter a namespace with `setns(CLONE_NEWNET)`;
//! `setns` changes only the calling thread, so the caller's thread never moves.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result, bail, ensure};

pub use crate::netns::{Netns, cleanup_stale, run_checked, unique_prefix};
pub use crate::preflight::{can_run, find_on_path, in_ci};
pub use crate::traffic::{TcpServer, UdpEchoServer, ping, tcp_connect, udp_echo};
pub use crate::wait_until;

/// Interface names are at most 15 bytes (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;
/// Pod gateway of the routed layout, as Calico configures it.
pub const ROUTED_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Link-local IPv6 gateway of the routed layout, owned by every host-side veth.
pub const ROUTED_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Name of the bridge in the bridged layout (it does not match the agent's `veth*` glob).
pub const BRIDGE: &str = "br0";

/// How the node connects its pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Calico-like: /32 and /128 routes per pod, proxy ARP, no bridge.
    Routed,
    /// Pods share a subnet; the host-side veths are ports of a bridge that holds the gateway.
    Bridged,
}

/// A pod: a namespace whose `eth0` is one end of a veth pair; the other end
/// (`host_veth`) lives in the node namespace.
#[derive(Debug)]
pub struct Pod {
    /// The pod's name (also the last part of its namespace's name).
    pub name: String,
    /// The pod's network namespace.
    pub netns: Netns,
    /// The pod's IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The pod's IPv6 address.
    pub ipv6: Ipv6Addr,
    /// Name of the host-side veth in the node namespace (`veth…`).
    pub host_veth: String,
}

impl Pod {
    /// The pod's address of the given family.
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.ipv6.into()
        } else {
            self.ipv4.into()
        }
    }

    /// Both addresses, IPv4 first (as a pod's `status.podIPs` lists them).
    pub fn ips(&self) -> Vec<IpAddr> {
        vec![self.ipv4.into(), self.ipv6.into()]
    }
}

/// A host outside the cluster ("the internet"), reached through the node over an uplink
/// whose name does not match the agent's `veth*` glob.
#[derive(Debug)]
pub struct ExternalHost {
    /// The host's name (also the last part of its namespace's name).
    pub name: String,
    /// The host's network namespace.
    pub netns: Netns,
    /// The host's IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The host's IPv6 address.
    pub ipv6: Ipv6Addr,
    /// Name of the node-side end of the link (`uplink<n>`).
    pub uplink: String,
}

impl ExternalHost {
    /// The host's address of the given family.
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.ipv6.into()
        } else {
            self.ipv4.into()
        }
    }
}

/// The subnets of the internet hosts, in the order [`Topology::add_internet_host`] uses
/// them: (IPv4 /24 base, IPv6 /64 base).
const EXTERNAL_NETS: [([u8; 3], [u16; 4]); 2] = [
    ([203, 0, 113], [0x2001, 0xdb8, 0xffff, 0]),
    ([198, 51, 100], [0x2001, 0xdb8, 0xffff, 1]),
];

/// A node namespace with its pods and internet hosts. Dropping it deletes all of them.
///
/// ```no_run
/// # use zonewall_testbed::topology::*;
/// # use std::time::Duration;
/// let mut topology = Topology::routed()?;
/// topology.add_pod("web")?;
/// topology.add_pod("db")?;
/// topology.add_internet_host("internet")?;
/// let db = topology.pod("db");
/// let _server = TcpServer::start(&db.netns, 5432)?;
/// assert!(tcp_connect(&topology.pod("web").netns, db.ipv4.into(), 5432, Duration::from_secs(1)));
/// # anyhow::Ok(())
/// ```
#[derive(Debug)]
pub struct Topology {
    layout: Layout,
    prefix: String,
    // Pods and hosts first: their guards drop before the node's.
    pods: Vec<Pod>,
    hosts: Vec<ExternalHost>,
    node: Netns,
}

impl Topology {
    /// A Calico-like routed node without pods yet.
    pub fn routed() -> Result<Self> {
        Self::new(Layout::Routed)
    }

    /// A node whose pods hang off a bridge, without pods yet.
    pub fn bridged() -> Result<Self> {
        Self::new(Layout::Bridged)
    }

    /// A node of the given layout, in namespaces with a fresh [`unique_prefix`].
    pub fn new(layout: Layout) -> Result<Self> {
        cleanup_stale();
        let prefix = unique_prefix();
        let node = Netns::create(&format!("{prefix}node"))?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        disable_dad(&node)?;
        match layout {
            Layout::Routed => {
                node.ip(&["addr", "add", "198.18.0.1/32", "dev", "lo"])?;
                node.ip(&["-6", "addr", "add", "2001:db8::1/128", "dev", "lo"])?;
                // Proxy ARP answers for the pods' gateway only if the node has a route to
                // it on another interface than the asking veth.
                node.ip(&["route", "add", "169.254.1.1/32", "dev", "lo"])?;
            }
            Layout::Bridged => {
                node.ip(&[
                    "link",
                    "add",
                    BRIDGE,
                    "type",
                    "bridge",
                    "mcast_snooping",
                    "0",
                ])?;
                add_address(&node, "198.18.2.1/24", BRIDGE)?;
                add_address(&node, "2001:db8:2::1/64", BRIDGE)?;
                node.ip(&["link", "set", BRIDGE, "up"])?;
            }
        }
        Ok(Self {
            layout,
            prefix,
            pods: Vec::new(),
            hosts: Vec::new(),
            node,
        })
    }

    /// The layout this node was built with.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The prefix of every namespace of this topology (`zw-<pid>-<unique>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The node namespace (where the agent runs and the host-side veths live).
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// The node's own IPv4 address.
    pub fn node_ipv4(&self) -> Ipv4Addr {
        match self.layout {
            Layout::Routed => Ipv4Addr::new(198, 18, 0, 1),
            Layout::Bridged => Ipv4Addr::new(198, 18, 2, 1),
        }
    }

    /// The node's own IPv6 address.
    pub fn node_ipv6(&self) -> Ipv6Addr {
        match self.layout {
            Layout::Routed => "2001:db8::1".parse().expect("valid literal"),
            Layout::Bridged => "2001:db8:2::1".parse().expect("valid literal"),
        }
    }

    /// Adds a pod with the next free addresses of the layout (see the module's table).
    pub fn add_pod(&mut self, name: &str) -> Result<&Pod> {
        let host = u8::try_from(10 + self.pods.len()).context("too many pods (at most 245)")?;
        let (ipv4, ipv6) = match self.layout {
            Layout::Routed => (
                Ipv4Addr::new(198, 18, 1, host),
                mirrored_v6([0x2001, 0xdb8, 1], host),
            ),
            Layout::Bridged => (
                Ipv4Addr::new(198, 18, 2, host),
                mirrored_v6([0x2001, 0xdb8, 2], host),
            ),
        };
        self.add_pod_at(name, ipv4, ipv6)
    }

    /// Adds a pod with the given addresses. In the bridged layout they must lie in
    /// 198.18.2.0/24 and 2001:db8:2::/64.
    pub fn add_pod_at(&mut self, name: &str, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> Result<&Pod> {
        check_name(name)?;
        ensure!(
            self.pods.iter().all(|pod| pod.name != name),
            "pod {name} exists already"
        );
        if self.layout == Layout::Bridged {
            let [a, b, c, _] = ipv4.octets();
            let v6 = ipv6.segments();
            ensure!(
                [a, b, c] == [198, 18, 2] && v6[..4] == [0x2001, 0xdb8, 2, 0],
                "bridged pods live in 198.18.2.0/24 and 2001:db8:2::/64, not {ipv4} / {ipv6}"
            );
        }
        let host_veth = truncate_ifname(&format!("veth{:02}{name}", self.pods.len()));
        let netns = Netns::create(&format!("{}{name}", self.prefix))?;
        disable_dad(&netns)?;
        match self.layout {
            Layout::Routed => wire_routed_pod(&self.node, &netns, &host_veth, ipv4, Some(ipv6))?,
            Layout::Bridged => {
                add_veth(&self.node, &host_veth, &netns)?;
                netns.ip(&["link", "set", "eth0", "up"])?;
                add_address(&netns, &format!("{ipv4}/24"), "eth0")?;
                add_address(&netns, &format!("{ipv6}/64"), "eth0")?;
                add_default_routes(&netns, "198.18.2.1", "2001:db8:2::1")?;
                self.node
                    .ip(&["link", "set", &host_veth, "master", BRIDGE, "up"])?;
            }
        }
        self.pods.push(Pod {
            name: name.to_string(),
            netns,
            ipv4,
            ipv6,
            host_veth,
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Adds a host outside the cluster: the first gets 203.0.113.10, the second
    /// 198.51.100.10 (see the module's table). It is connected to the node by `uplink<n>`
    /// and routes everything through the node.
    pub fn add_internet_host(&mut self, name: &str) -> Result<&ExternalHost> {
        check_name(name)?;
        let index = self.hosts.len();
        let Some(&([a, b, c], [s0, s1, s2, s3])) = EXTERNAL_NETS.get(index) else {
            bail!("at most {} internet hosts", EXTERNAL_NETS.len());
        };
        let ipv4 = Ipv4Addr::new(a, b, c, 10);
        let gateway_v4 = Ipv4Addr::new(a, b, c, 1);
        let ipv6 = Ipv6Addr::new(s0, s1, s2, s3, 0, 0, 0, 0x10);
        let gateway_v6 = Ipv6Addr::new(s0, s1, s2, s3, 0, 0, 0, 1);
        let uplink = format!("uplink{index}");
        let netns = Netns::create(&format!("{}{name}", self.prefix))?;
        disable_dad(&netns)?;
        add_veth(&self.node, &uplink, &netns)?;
        add_address(&self.node, &format!("{gateway_v4}/24"), &uplink)?;
        add_address(&self.node, &format!("{gateway_v6}/64"), &uplink)?;
        self.node.ip(&["link", "set", &uplink, "up"])?;
        add_address(&netns, &format!("{ipv4}/24"), "eth0")?;
        add_address(&netns, &format!("{ipv6}/64"), "eth0")?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        add_default_routes(&netns, &gateway_v4.to_string(), &gateway_v6.to_string())?;
        self.hosts.push(ExternalHost {
            name: name.to_string(),
            netns,
            ipv4,
            ipv6,
            uplink,
        });
        Ok(self.hosts.last().expect("just pushed"))
    }

    /// The pod called `name`. Panics if there is none (a bug in the test).
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|pod| pod.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in this topology"))
    }

    /// The internet host called `name`. Panics if there is none (a bug in the test).
    pub fn host(&self, name: &str) -> &ExternalHost {
        self.hosts
            .iter()
            .find(|host| host.name == name)
            .unwrap_or_else(|| panic!("no internet host {name} in this topology"))
    }

    /// Every pod, in the order they were added.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Every internet host, in the order they were added.
    pub fn hosts(&self) -> &[ExternalHost] {
        &self.hosts
    }

    /// The namespace of the pod or internet host called `name`.
    pub fn netns(&self, name: &str) -> Option<&Netns> {
        self.pods
            .iter()
            .find(|pod| pod.name == name)
            .map(|pod| &pod.netns)
            .or_else(|| {
                self.hosts
                    .iter()
                    .find(|host| host.name == name)
                    .map(|host| &host.netns)
            })
    }
}

/// Wires `pod` to `node` the way a routed CNI (Calico) does: a veth pair (`host_veth` in
/// the node, `eth0` in the pod), the pod's /32 (and /128) on `eth0`, default routes to a
/// link-local gateway the host side answers for by proxy ARP (and owns, for IPv6), and
/// host routes to the pod through `host_veth`.
pub fn wire_routed_pod(
    node: &Netns,
    pod: &Netns,
    host_veth: &str,
    ipv4: Ipv4Addr,
    ipv6: Option<Ipv6Addr>,
) -> Result<()> {
    add_veth(node, host_veth, pod)?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    add_address(pod, &format!("{ipv4}/32"), "eth0")?;
    let gateway_v4 = ROUTED_GATEWAY_V4.to_string();
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        &gateway_v4,
        "dev",
        "eth0",
        "onlink",
    ])?;
    if let Some(ipv6) = ipv6 {
        add_address(pod, &format!("{ipv6}/128"), "eth0")?;
        let gateway_v6 = ROUTED_GATEWAY_V6.to_string();
        pod.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &gateway_v6,
            "dev",
            "eth0",
        ])?;
    }
    node.sysctl(&format!("net/ipv4/conf/{host_veth}/proxy_arp"), "1")?;
    // As Calico does: answer at once, not after a random delay of up to 0.8 s.
    node.sysctl(&format!("net/ipv4/neigh/{host_veth}/proxy_delay"), "0")?;
    if ipv6.is_some() {
        add_address(node, &format!("{ROUTED_GATEWAY_V6}/64"), host_veth)?;
    }
    node.ip(&["link", "set", host_veth, "up"])?;
    node.ip(&["route", "add", &format!("{ipv4}/32"), "dev", host_veth])?;
    if let Some(ipv6) = ipv6 {
        node.ip(&[
            "-6",
            "route",
            "add",
            &format!("{ipv6}/128"),
            "dev",
            host_veth,
        ])?;
    }
    Ok(())
}

/// A veth pair: `host_end` in `node`, its peer `eth0` in `peer`.
fn add_veth(node: &Netns, host_end: &str, peer: &Netns) -> Result<()> {
    node.ip(&[
        "link",
        "add",
        host_end,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        peer.name(),
    ])
    .map(drop)
}

/// Adds `address` (with its prefix length) to `device`; an IPv6 address without
/// duplicate address detection, so it is usable at once.
fn add_address(netns: &Netns, address: &str, device: &str) -> Result<()> {
    if address.contains(':') {
        netns.ip(&["-6", "addr", "add", address, "dev", device, "nodad"])
    } else {
        netns.ip(&["addr", "add", address, "dev", device])
    }
    .map(drop)
}

/// Default routes of both families through these gateways.
fn add_default_routes(netns: &Netns, gateway_v4: &str, gateway_v6: &str) -> Result<()> {
    netns.ip(&["route", "add", "default", "via", gateway_v4])?;
    netns.ip(&["-6", "route", "add", "default", "via", gateway_v6])?;
    Ok(())
}

/// Turns off duplicate address detection for interfaces created later in `netns`: a
/// tentative address would make the first IPv6 packets of a test fail for a second.
fn disable_dad(netns: &Netns) -> Result<()> {
    netns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    netns.sysctl("net.ipv6.conf.all.accept_dad", "0")
}

/// `2001:db8:<subnet>::<host>` where `<host>` reads like the IPv4 host byte (10 -> `::10`).
fn mirrored_v6(base: [u16; 3], host: u8) -> Ipv6Addr {
    let last = u16::from_str_radix(&host.to_string(), 16).expect("at most three decimal digits");
    Ipv6Addr::new(base[0], base[1], base[2], 0, 0, 0, 0, last)
}

fn check_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 40
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "name {name:?}: use 1 to 40 lowercase letters, digits and dashes"
    );
    Ok(())
}

fn truncate_ifname(name: &str) -> String {
    name.chars().take(MAX_IFNAME).collect()
}
