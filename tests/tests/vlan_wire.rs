//! VLAN-tagged frames on a pod's interface, as real traffic through the kernel. The
//! verdict test of the VLAN rule (`malformed.rs`) runs a frame whose 802.1Q tag is in its
//! bytes through BPF_PROG_TEST_RUN; on the wire the receiving kernel moves the tag into
//! the skb's metadata (`vlan_present`, `vlan_tci`) before the TC ingress hook, and the
//! bytes the program reads then start with the inner ethertype: a parser that reads only
//! the bytes takes a tagged frame for plain IP.
//!
//! The tagged frames are built here and sent through packet sockets, because the test
//! kernels have no 802.1Q support (`CONFIG_VLAN_8021Q` unset: `ip link add ... type vlan`
//! fails with "Unknown device type", and bridges cannot filter VLANs either). The kernel's
//! receive path untags frames whatever created them, so what the datapath sees is the
//! same. Each tagged frame carries a well-formed request (TCP SYN, UDP datagram, ICMP
//! echo, over IPv4 and IPv6, checksums included) and goes out twice: with VLAN id 100
//! and with id 0. A priority tag (id 0) matters most: the kernel strips it and hands the
//! packet to the IP stack as if untagged, so it reaches the node or the pod. The policy
//! denies both directions (pod zone -> node and node -> pod zone); every tagged frame must
//! be dropped and counted as `vlan_dropped`, on the hook for what the pod sends (TC
//! ingress of its host-side veth) and the hook for what it receives (TC egress).
//!
//! Where the tag sits, as observed here (Linux 6.18, veth): frames the pod sends arrive at
//! the ingress hook untagged with the tag in metadata; frames the node sends through a
//! packet socket reach the egress hook with the tag still in their bytes (nothing untags
//! on transmit). Turning VLAN offloads off on both ends (`ethtool -K ... rxvlan off
//! txvlan off`) changes neither: the receive path untags in software before TC anyway.
//! The test runs both ways and prints which counters each phase moved.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use firewall_common::{COUNTER_NAMES, COUNTER_VLAN_DROPPED};
use zonewall_tests::agent::Agent;
use zonewall_tests::fixtures::PolicyFile;
use zonewall_tests::packet::{ICMP, ICMPV6, SYN, Spec, TCP, UDP};
use zonewall_tests::topology::{Netns, TcpServer, Topology, UdpEchoServer, can_run};

const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
const CLIENT_PORT: u16 = 41000;
/// How long replies are awaited after a batch of frames.
const REPLY_WINDOW: Duration = Duration::from_millis(700);
const ETH_P_ALL: u16 = 0x0003;

// ---------------------------------------------------------------------------------------
// Frames with correct checksums (the receiving stack verifies them).

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn add_words(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum()
}

/// The pseudo-header sum of TCP, UDP and ICMPv6.
fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, length: usize) -> u32 {
    let addresses = match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => [src.octets().to_vec(), dst.octets().to_vec()],
        (IpAddr::V6(src), IpAddr::V6(dst)) => [src.octets().to_vec(), dst.octets().to_vec()],
        _ => panic!("mixed families"),
    };
    add_words(&addresses.concat()) + u32::from(proto) + length as u32
}

/// An IP packet (no Ethernet header) for `spec`, every checksum filled in.
fn ip_packet(spec: &Spec) -> Vec<u8> {
    let mut l4 = spec.l4();
    let checksum_at = match spec.proto {
        TCP => 16,
        UDP => 6,
        _ => 2,
    };
    let sum = match spec.proto {
        ICMP => add_words(&l4),
        _ => pseudo_header(spec.src, spec.dst, spec.proto, l4.len()) + add_words(&l4),
    };
    let mut checksum = fold(sum);
    if spec.proto == UDP && checksum == 0 {
        checksum = 0xffff;
    }
    l4[checksum_at..checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
    // The packet helpers' frames without their Ethernet header, then the IPv4 header's
    // own checksum.
    let mut packet = spec.frame()[14..].to_vec();
    let header_len = if spec.src.is_ipv4() { 20 } else { 40 };
    packet.truncate(header_len);
    if spec.src.is_ipv4() {
        let checksum = fold(add_words(&packet));
        packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    }
    packet.extend_from_slice(&l4);
    packet
}

/// An Ethernet frame carrying `packet` behind an 802.1Q tag with `vlan_id`.
fn tagged_frame(dst_mac: [u8; 6], src_mac: [u8; 6], vlan_id: u16, packet: &[u8]) -> Vec<u8> {
    let ethertype: u16 = if packet[0] >> 4 == 4 { 0x0800 } else { 0x86dd };
    let mut frame = Vec::with_capacity(18 + packet.len());
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x8100u16.to_be_bytes());
    frame.extend_from_slice(&vlan_id.to_be_bytes());
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(packet);
    frame
}

/// The requests one side sends the other: TCP SYN, UDP, ICMP echo, each over both
/// families. (Server ports are those of the peer's servers.)
fn requests(from: [IpAddr; 2], to: [IpAddr; 2]) -> Vec<Spec> {
    let mut specs = Vec::new();
    for (src, dst) in from.into_iter().zip(to) {
        specs.push(Spec::tcp(src, dst, CLIENT_PORT, TCP_PORT, SYN));
        let mut udp = Spec::udp(src, dst, CLIENT_PORT, UDP_PORT);
        udp.payload = 8;
        specs.push(udp);
        specs.push(Spec::echo_request(src, dst, CLIENT_PORT));
    }
    specs
}

// ---------------------------------------------------------------------------------------
// Sending frames and catching replies on one interface of one namespace.

fn mac_address(netns: &Netns, interface: &str) -> [u8; 6] {
    let line = netns
        .ip(&["-o", "link", "show", "dev", interface])
        .expect("ip link show");
    let text = line
        .split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC address for {interface}: {line}"));
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("hex MAC byte");
    }
    mac
}

fn packet_socket(interface: &str) -> std::io::Result<(OwnedFd, libc::sockaddr_ll)> {
    let ifindex = nix::net::if_::if_nametoindex(interface).map_err(std::io::Error::from)?;
    // SAFETY: plain socket(2)/bind(2) with a correctly sized sockaddr_ll; the fd is owned
    // at once.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            i32::from(ETH_P_ALL.to_be()),
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut address: libc::sockaddr_ll = std::mem::zeroed();
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = ETH_P_ALL.to_be();
        address.sll_ifindex = ifindex as i32;
        let size = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        if libc::bind(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_ll).cast(),
            size,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok((fd, address))
    }
}

/// Inside `netns`: listens on `interface`, sends every frame out of it, and returns the
/// IP packets received within [`REPLY_WINDOW`] afterwards (VLAN tags, if any, removed).
fn exchange(netns: &Netns, interface: &str, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    netns
        .enter(|| -> std::io::Result<Vec<Vec<u8>>> {
            let (socket, mut address) = packet_socket(interface)?;
            for frame in frames {
                address.sll_halen = 6;
                address.sll_addr[..6].copy_from_slice(&frame[..6]);
                // SAFETY: sendto with a valid buffer and sockaddr_ll.
                let sent = unsafe {
                    libc::sendto(
                        socket.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&address as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                // ENOBUFS: dropped on the way out (a TC drop on the egress hook reports
                // so); the frame was still sent, and the counters tell what happened.
                if sent < 0 {
                    let error = std::io::Error::last_os_error();
                    if error.raw_os_error() != Some(libc::ENOBUFS) {
                        return Err(error);
                    }
                }
            }
            let deadline = Instant::now() + REPLY_WINDOW;
            let mut packets = Vec::new();
            let mut buffer = vec![0u8; 65_536];
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                let mut poll = libc::pollfd {
                    fd: socket.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut poll, 1, left.as_millis().max(1) as i32) } <= 0 {
                    continue;
                }
                // SAFETY: recv into a buffer of the given length.
                let read = unsafe {
                    libc::recv(
                        socket.as_raw_fd(),
                        buffer.as_mut_ptr().cast(),
                        buffer.len(),
                        0,
                    )
                };
                if read < 14 {
                    continue;
                }
                let frame = &buffer[..read as usize];
                let mut offset = 12;
                while offset + 2 <= frame.len()
                    && matches!(
                        u16::from_be_bytes([frame[offset], frame[offset + 1]]),
                        0x8100 | 0x88a8
                    )
                {
                    offset += 4;
                }
                if offset + 2 <= frame.len()
                    && matches!(
                        u16::from_be_bytes([frame[offset], frame[offset + 1]]),
                        0x0800 | 0x86dd
                    )
                {
                    packets.push(frame[offset + 2..].to_vec());
                }
            }
            Ok(packets)
        })
        .expect("entering the namespace")
        .unwrap_or_else(|error| panic!("packet socket on {interface}: {error}"))
}

/// The replies among `packets`: anything `from` sent to `to`, neighbor discovery aside.
fn replies(packets: &[Vec<u8>], from: [IpAddr; 2], to: [IpAddr; 2]) -> Vec<String> {
    let mut found = Vec::new();
    for packet in packets {
        let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = match packet[0] >> 4 {
            4 if packet.len() >= 20 => {
                let header = usize::from(packet[0] & 0x0f) * 4;
                let src: [u8; 4] = packet[12..16].try_into().unwrap();
                let dst: [u8; 4] = packet[16..20].try_into().unwrap();
                (
                    src.into(),
                    dst.into(),
                    packet[9],
                    &packet[header.min(packet.len())..],
                )
            }
            6 if packet.len() >= 40 => {
                let src: [u8; 16] = packet[8..24].try_into().unwrap();
                let dst: [u8; 16] = packet[24..40].try_into().unwrap();
                (src.into(), dst.into(), packet[6], &packet[40..])
            }
            _ => continue,
        };
        if !from.contains(&src) || !to.contains(&dst) {
            continue;
        }
        if proto == ICMPV6 && l4.first().is_some_and(|kind| (133..=137).contains(kind)) {
            continue;
        }
        let what = match proto {
            TCP => "tcp",
            UDP => "udp",
            ICMP | ICMPV6 => "icmp",
            _ => "ip",
        };
        found.push(format!("{what} {src} -> {dst}"));
    }
    found
}

// ---------------------------------------------------------------------------------------

/// Every datapath counter, summed over CPUs.
fn counters(agent: &Agent) -> Vec<u64> {
    (0..COUNTER_NAMES.len() as u32)
        .map(|index| agent.counter(index))
        .collect()
}

/// The counters that moved between two readings, by name.
fn moved(before: &[u64], after: &[u64]) -> Vec<(&'static str, u64)> {
    COUNTER_NAMES
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (before, after))| after > before)
        .map(|(name, (before, after))| (*name, after - before))
        .collect()
}

/// One side of the conversation: its namespace, the interface it sends on, its MAC and
/// the peer's, and both sides' addresses.
struct Side<'a> {
    name: &'static str,
    netns: &'a Netns,
    interface: String,
    mac: [u8; 6],
    peer_mac: [u8; 6],
    ips: [IpAddr; 2],
    peer_ips: [IpAddr; 2],
}

impl Side<'_> {
    /// The tagged requests to the peer, with VLAN ids 100 and 0.
    fn frames(&self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for vlan_id in [100, 0] {
            for spec in requests(self.ips, self.peer_ips) {
                frames.push(tagged_frame(
                    self.peer_mac,
                    self.mac,
                    vlan_id,
                    &ip_packet(&spec),
                ));
            }
        }
        frames
    }

    /// Sends the tagged requests and returns the peer's replies.
    fn send(&self) -> Vec<String> {
        let packets = exchange(self.netns, &self.interface, &self.frames());
        replies(&packets, self.peer_ips, self.ips)
    }
}

struct Observation {
    phase: &'static str,
    direction: &'static str,
    sent: usize,
    through: Vec<String>,
    vlan_dropped: u64,
    counters: Vec<(&'static str, u64)>,
}

#[test]
fn tagged_traffic_on_a_pod_interface_is_dropped_and_counted_both_ways() {
    if !can_run(&["ethtool"]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("tagger").unwrap();
    let pod = topology.pod("tagger");
    let node = topology.node();
    let _servers = (
        TcpServer::start(node, TCP_PORT).unwrap(),
        UdpEchoServer::start(node, UDP_PORT).unwrap(),
        TcpServer::start(&pod.netns, TCP_PORT).unwrap(),
        UdpEchoServer::start(&pod.netns, UDP_PORT).unwrap(),
    );
    let pod_mac = mac_address(&pod.netns, "eth0");
    let host_mac = mac_address(node, &pod.host_veth);
    let pod_ips = [pod.ipv4.into(), pod.ipv6.into()];
    let node_ips = [topology.node_ipv4().into(), topology.node_ipv6().into()];
    let from_pod = Side {
        name: "from the pod",
        netns: &pod.netns,
        interface: "eth0".into(),
        mac: pod_mac,
        peer_mac: host_mac,
        ips: pod_ips,
        peer_ips: node_ips,
    };
    let to_pod = Side {
        name: "to the pod",
        netns: node,
        interface: pod.host_veth.clone(),
        mac: host_mac,
        peer_mac: pod_mac,
        ips: node_ips,
        peer_ips: pod_ips,
    };

    // Without the agent, priority-tagged requests are answered both ways (all six kinds):
    // otherwise "nothing gets through" below would prove nothing.
    for side in [&from_pod, &to_pod] {
        // The first exchange also settles ARP and neighbor discovery for the replies.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let through = side.send();
            let kinds: std::collections::BTreeSet<String> = through.iter().cloned().collect();
            if kinds.len() >= 6 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: without the agent only {kinds:?} answered",
                side.name
            );
        }
    }

    // The pod's zone may reach nothing and nothing may reach it: pod -> node and
    // node -> pod are both denied by default.
    let policy = PolicyFile::new().pod("tagger", "dmz", &pod_ips).build();
    let mut agent = Agent::start(node, &policy, &[]);
    agent.wait_attached(&pod.host_veth);

    let mut observations = Vec::new();
    for phase in ["offloads on", "offloads off"] {
        if phase == "offloads off" {
            for (netns, interface) in [(&pod.netns, "eth0"), (node, pod.host_veth.as_str())] {
                netns
                    .run(&["ethtool", "-K", interface, "rxvlan", "off", "txvlan", "off"])
                    .unwrap();
            }
        }
        for side in [&from_pod, &to_pod] {
            let before = counters(&agent);
            let through = side.send();
            let after = counters(&agent);
            let index = COUNTER_VLAN_DROPPED as usize;
            observations.push(Observation {
                phase,
                direction: side.name,
                sent: side.frames().len(),
                through,
                vlan_dropped: after[index] - before[index],
                counters: moved(&before, &after),
            });
        }
    }
    for observation in &observations {
        eprintln!(
            "{} {}: {} tagged frames sent, answered {:?}, vlan_dropped +{}, counters moved {:?}",
            observation.phase,
            observation.direction,
            observation.sent,
            observation.through,
            observation.vlan_dropped,
            observation.counters
        );
    }
    for observation in &observations {
        assert!(
            observation.through.is_empty(),
            "{} {}: tagged requests were answered: {:?}\nagent log:\n{}",
            observation.phase,
            observation.direction,
            observation.through,
            agent.logs()
        );
    }
    for observation in &observations {
        assert!(
            observation.vlan_dropped >= observation.sent as u64,
            "{} {}: {} tagged frames sent, vlan_dropped went up by {}; the datapath counted {:?}",
            observation.phase,
            observation.direction,
            observation.sent,
            observation.vlan_dropped,
            observation.counters
        );
    }
}
