//! Attacks on the firewall from a pod, each with real traffic between network namespaces:
//! what a review of the datapath found, and what must stay closed.
//!
//! - A spoofed TCP RST "from" the node or from another pod, meant to plant a conntrack
//!   entry whose reply direction is the connection the attacker wants: anti-spoofing
//!   drops it, and a RST never creates an entry anyway.
//! - NDP and MLD message types sent off the link (to the internet): judged by policy like
//!   any ICMPv6, not passed as link plumbing.
//! - A forged ICMP error quoting a tracked flow, addressed to someone else: dropped.
//! - A pod replaced by another with the same address while the agent is down: the new pod
//!   does not inherit the old one's connections.
//!
//! Every test first shows the path is closed to plain traffic, then attacks, then checks
//! the attack failed (and, where it applies, that the drop was counted and logged).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use firewall_common::{
    COUNTER_ICMP_ERROR_DROPPED, COUNTER_SPOOFED_DROPPED, COUNTER_WRONG_INTERFACE_DROPPED,
};
use zonewall_tests::agent::{Agent, send_raw_frame};
use zonewall_tests::fixtures::{PolicyFile, zone_policy};
use zonewall_tests::packet::{ACK, RST, Spec};
use zonewall_tests::topology::{Netns, TcpServer, Topology, UdpEchoServer, can_run, tcp_connect};

const T: Duration = Duration::from_millis(800);

/// Lets the node (zone `host`) reach `zone` on every port, as kubelet probes need: the
/// direction a spoofed "reply from the node" would claim.
fn host_may_reach(zone: &str) -> String {
    zone_policy(&format!("host-to-{zone}"), "host", zone, "", "Allow", "")
}

fn node_document(topology: &Topology) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-0\nstatus:\n  addresses:\n  - {{type: InternalIP, address: \"{}\"}}\n  - {{type: InternalIP, address: \"{}\"}}\n",
        topology.node_ipv4(),
        topology.node_ipv6()
    )
}

/// A TCP connection from `local_port` of `from` to `ip:port` that echoes a byte.
fn connect_from_port(from: &Netns, local_port: u16, ip: IpAddr, port: u16) -> bool {
    from.enter(|| -> std::io::Result<bool> {
        let family = if ip.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket calls on a descriptor this closure owns.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: `one` outlives the call.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                4,
            );
        }
        let local: SocketAddr = if ip.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, local_port).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, local_port).into()
        };
        let local = socket2_address(&local);
        // SAFETY: the address buffer is valid for its length.
        if unsafe { libc::bind(socket.as_raw_fd(), local.0.as_ptr().cast(), local.1) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = std::net::TcpStream::from(socket);
        // Connect with a deadline: non-blocking connect, then wait for writability.
        stream.set_nonblocking(true)?;
        let remote = socket2_address(&SocketAddr::new(ip, port));
        // SAFETY: the address buffer is valid for its length.
        let result =
            unsafe { libc::connect(stream.as_raw_fd(), remote.0.as_ptr().cast(), remote.1) };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EINPROGRESS) {
                return Ok(false);
            }
        }
        let mut poll = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, T.as_millis() as i32) };
        if ready <= 0 || stream.take_error()?.is_some() {
            return Ok(false);
        }
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(T))?;
        use std::io::{Read as _, Write as _};
        let mut stream = stream;
        stream.write_all(b"x")?;
        let mut reply = [0u8; 1];
        Ok(stream.read_exact(&mut reply).is_ok() && reply == *b"x")
    })
    .expect("enter the pod")
    .unwrap_or(false)
}

/// A socket address as sockaddr bytes and length.
fn socket2_address(address: &SocketAddr) -> (Vec<u8>, libc::socklen_t) {
    match address {
        SocketAddr::V4(v4) => {
            let raw = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: plain-old-data struct viewed as bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&raw as *const libc::sockaddr_in).cast::<u8>(),
                    size_of::<libc::sockaddr_in>(),
                )
            };
            (bytes.to_vec(), size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(v6) => {
            let raw = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: plain-old-data struct viewed as bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&raw as *const libc::sockaddr_in6).cast::<u8>(),
                    size_of::<libc::sockaddr_in6>(),
                )
            };
            (bytes.to_vec(), size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

/// Sends `frame` out of the pod's `eth0` (a packet socket: any source address).
fn send_from_pod(pod: &Netns, frame: &[u8]) {
    pod.enter(|| send_raw_frame("eth0", frame))
        .expect("enter the pod")
        .expect("packet socket send");
}

fn wait_counter(agent: &Agent, counter: u32, above: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.counter(counter) <= above {
        assert!(
            Instant::now() < deadline,
            "{what}: counter {counter} stayed at {}",
            agent.counter(counter)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The review's critical finding: a pod plants "the node answered me" with a spoofed RST
/// from NodeIP:22 to itself, then connects self:40000 -> NodeIP:22, a port no policy
/// allows. And the same with another pod's address and port.
#[test]
fn spoofed_rst_does_not_open_a_denied_port() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("attacker").unwrap();
    topology.add_pod("db").unwrap();
    let _ssh = TcpServer::start(topology.node(), 22).unwrap();
    let _database = TcpServer::start(&topology.pod("db").netns, 5432).unwrap();
    let policy = PolicyFile::new()
        .pod("attacker", "dmz", &topology.pod("attacker").ips())
        .pod("db", "restricted", &topology.pod("db").ips())
        .extra(&node_document(&topology))
        .extra(&host_may_reach("dmz"))
        // The database may call the dmz (anything), never the other way.
        .extra(&zone_policy(
            "db-to-dmz",
            "restricted",
            "dmz",
            "",
            "Allow",
            "",
        ));
    let agent = Agent::start(topology.node(), &policy.build(), &[]);
    let attacker = topology.pod("attacker");
    let db = topology.pod("db");

    let mut sent = 0;
    for v6 in [false, true] {
        let node: IpAddr = if v6 {
            topology.node_ipv6().into()
        } else {
            topology.node_ipv4().into()
        };
        let db_ip = db.ip(v6);
        let me = attacker.ip(v6);
        // One local port per (spoofed source, flags): a bare RST, and an ACK as if
        // mid-stream. Each must leave the way back closed.
        let mut local_port = if v6 { 40_100 } else { 40_000 };
        for (target, target_port) in [(node, 22), (db_ip, 5432)] {
            assert!(
                !connect_from_port(&attacker.netns, local_port, target, target_port),
                "dmz -> {target}:{target_port} must be closed before the attack"
            );
            for flags in [RST, ACK] {
                local_port += 1;
                send_from_pod(
                    &attacker.netns,
                    &Spec::tcp(target, me, target_port, local_port, flags).frame(),
                );
                sent += 1;
                assert!(
                    !connect_from_port(&attacker.netns, local_port, target, target_port),
                    "a spoofed packet (flags {flags:#x}) from {target}:{target_port} to \
                     {me}:{local_port} opened {me}:{local_port} -> {target}:{target_port}"
                );
            }
        }
        wait_counter(&agent, COUNTER_SPOOFED_DROPPED, sent - 1, "spoofed frames");
    }
    // The SIEM sees the spoofing, attributed to the interface it came from.
    let record = agent.wait_record("denying the spoofed source", |record| {
        record["policy"] == "spoofed-source"
    });
    assert_eq!(record["event"], "deny");
    assert_eq!(record["interface"], attacker.host_veth.as_str());

    // The legitimate directions still work: the node and the database reach the dmz pod.
    let _dmz_server = TcpServer::start(&attacker.netns, 8080).unwrap();
    assert!(tcp_connect(topology.node(), attacker.ipv4.into(), 8080, T));
    assert!(tcp_connect(&db.netns, attacker.ipv6.into(), 8080, T));
}

/// A RST from the pod's own address (not spoofed) with no tracked connection: allowed
/// or not by the policy, it must not plant an entry whose other direction is open.
#[test]
fn a_teardown_packet_opens_nothing() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("client").unwrap();
    topology.add_pod("server").unwrap();
    let policy = PolicyFile::new()
        .pod("client", "dmz", &topology.pod("client").ips())
        .pod("server", "trusted", &topology.pod("server").ips())
        // trusted may send to dmz (any port); dmz may not call trusted.
        .extra(&zone_policy(
            "trusted-to-dmz",
            "trusted",
            "dmz",
            "",
            "Allow",
            "",
        ));
    let _agent = Agent::start(topology.node(), &policy.build(), &[]);
    let client = topology.pod("client");
    let server = topology.pod("server");
    // The server pod sends a RST (its own address: allowed direction trusted -> dmz),
    // then the client "answers" from 7000 to the server's port 9000: a new connection
    // from dmz to trusted, which no policy allows.
    let _listener = TcpServer::start(&server.netns, 9000).unwrap();
    send_from_pod(
        &server.netns,
        &Spec::tcp(server.ipv4.into(), client.ipv4.into(), 9000, 7001, RST).frame(),
    );
    assert!(
        !connect_from_port(&client.netns, 7001, server.ipv4.into(), 9000),
        "a RST from trusted:9000 let dmz:7001 connect to trusted:9000"
    );
}

/// A raw socket of `family` and `protocol`.
fn raw_socket(family: i32, protocol: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket call; the result is checked.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `message` on a raw socket to `to` (the kernel adds the IP header).
fn send_raw(socket: &OwnedFd, message: &[u8], to: IpAddr) -> std::io::Result<()> {
    let address = socket2_address(&SocketAddr::new(to, 0));
    // SAFETY: buffers valid for their lengths.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            address.0.as_ptr().cast(),
            address.1,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends an ICMPv6 message of `icmp_type` with `hop_limit` and `marker` from `from`.
fn send_icmpv6(from: &Netns, to: IpAddr, icmp_type: u8, hop_limit: i32, marker: &[u8]) {
    from.enter(|| -> std::io::Result<()> {
        let socket = raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6)?;
        // SAFETY: `hop_limit` outlives the call.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_UNICAST_HOPS,
                (&hop_limit as *const i32).cast(),
                4,
            );
        }
        // type, code, checksum (the kernel fills it for ICMPv6), 4 reserved bytes, then
        // a target address (NDP) or group (MLD) of 16 bytes, then the marker.
        let mut message = vec![icmp_type, 0, 0, 0, 0, 0, 0, 0];
        message.extend_from_slice(&[0u8; 16]);
        message.extend_from_slice(marker);
        send_raw(&socket, &message, to)
    })
    .expect("enter the pod")
    .expect("send ICMPv6");
}

/// Listens for raw packets of `protocol` in `netns` while `send` runs and returns how many
/// carried `marker`.
fn count_received(
    netns: &Netns,
    family: i32,
    protocol: i32,
    marker: &'static [u8],
    send: impl FnOnce(),
) -> usize {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            netns
                .enter(|| -> std::io::Result<usize> {
                    let socket = raw_socket(family, protocol)?;
                    let timeout = libc::timeval {
                        tv_sec: 0,
                        tv_usec: 200_000,
                    };
                    // SAFETY: `timeout` outlives the call.
                    unsafe {
                        libc::setsockopt(
                            socket.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_RCVTIMEO,
                            (&timeout as *const libc::timeval).cast(),
                            size_of::<libc::timeval>() as u32,
                        );
                    }
                    ready_tx.send(()).expect("ready");
                    let deadline = Instant::now() + Duration::from_secs(2);
                    let mut seen = 0;
                    let mut buffer = [0u8; 2048];
                    while Instant::now() < deadline {
                        // SAFETY: the buffer is valid for its length.
                        let read = unsafe {
                            libc::recv(
                                socket.as_raw_fd(),
                                buffer.as_mut_ptr().cast(),
                                buffer.len(),
                                0,
                            )
                        };
                        if read > 0
                            && buffer[..read as usize]
                                .windows(marker.len())
                                .any(|window| window == marker)
                        {
                            seen += 1;
                        }
                    }
                    Ok(seen)
                })
                .expect("enter the receiver")
                .expect("raw socket")
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("receiver ready");
        send();
        handle.join().expect("receiver thread")
    })
}

/// NDP (133-137) and MLD (130-132, 143) types used to be passed on both hooks whatever
/// their addresses: a pod could send anything to anyone under those types. Sent off the
/// link, to an internet host the pod may not reach, they must be dropped; on the link
/// (neighbour discovery with the node) they keep working (IPv6 connectivity depends on it).
#[test]
fn ndp_and_mld_types_do_not_leave_the_link() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("attacker").unwrap();
    topology.add_pod("peer").unwrap();
    topology.add_internet_host("internet").unwrap();
    let _echo = UdpEchoServer::start(&topology.pod("peer").netns, 5000).unwrap();
    let policy = PolicyFile::new()
        .pod("attacker", "dmz", &topology.pod("attacker").ips())
        .pod("peer", "dmz", &topology.pod("peer").ips());
    let _agent = Agent::start(topology.node(), &policy.build(), &[]);
    let attacker = &topology.pod("attacker").netns;
    let internet = topology.host("internet");
    const MARKER: &[u8] = b"zonewall-ndp-exfiltration";
    let leaked = count_received(
        &internet.netns,
        libc::AF_INET6,
        libc::IPPROTO_ICMPV6,
        MARKER,
        || {
            for (icmp_type, hop_limit) in [(135, 255), (136, 255), (134, 255), (130, 1), (143, 64)]
            {
                send_icmpv6(attacker, internet.ipv6.into(), icmp_type, hop_limit, MARKER);
            }
        },
    );
    assert_eq!(
        leaked, 0,
        "NDP/MLD-typed messages reached the internet host"
    );
    // Neighbour discovery on the link still works: IPv6 between pods of one zone.
    assert!(zonewall_tests::topology::udp_echo(
        attacker,
        topology.pod("peer").ipv6.into(),
        5000,
        Duration::from_secs(2)
    ));
}

/// RFC 1071 checksum.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP destination-unreachable (port) quoting a UDP packet `quoted_src:sport ->
/// quoted_dst:dport`, with `marker` after the quoted header.
fn icmp_error(
    quoted_src: Ipv4Addr,
    quoted_dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    marker: &[u8],
) -> Vec<u8> {
    let mut quoted = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    quoted.extend_from_slice(&quoted_src.octets());
    quoted.extend_from_slice(&quoted_dst.octets());
    let total = (20 + 8 + marker.len()) as u16;
    quoted[2..4].copy_from_slice(&total.to_be_bytes());
    let header_sum = checksum(&quoted);
    quoted[10..12].copy_from_slice(&header_sum.to_be_bytes());
    quoted.extend_from_slice(&sport.to_be_bytes());
    quoted.extend_from_slice(&dport.to_be_bytes());
    quoted.extend_from_slice(&((8 + marker.len()) as u16).to_be_bytes());
    quoted.extend_from_slice(&[0, 0]);
    quoted.extend_from_slice(marker);
    let mut message = vec![3, 3, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(&quoted);
    let sum = checksum(&message);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    message
}

fn send_icmp(from: &Netns, to: Ipv4Addr, message: &[u8]) {
    from.enter(|| -> std::io::Result<()> {
        let socket = raw_socket(libc::AF_INET, libc::IPPROTO_ICMP)?;
        send_raw(&socket, message, to.into())
    })
    .expect("enter the pod")
    .expect("send ICMP");
}

/// An ICMP error passes as "related" only when it belongs to the flow it quotes. A pod
/// with one allowed flow (UDP to a partner) must not pass errors quoting that flow to an
/// address it may not reach; a real error of that flow still reaches the pod.
#[test]
fn forged_icmp_errors_quoting_a_tracked_flow_are_dropped() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("attacker").unwrap();
    topology.add_internet_host("partner").unwrap();
    topology.add_internet_host("elsewhere").unwrap();
    let partner = topology.host("partner");
    let _dns = UdpEchoServer::start(&partner.netns, 5353).unwrap();
    let policy = PolicyFile::new()
        .pod("attacker", "dmz", &topology.pod("attacker").ips())
        .extra("apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata:\n  name: partners\nspec:\n  networks: [203.0.113.0/24]\n")
        .extra(&zone_policy(
            "dmz-to-partners",
            "dmz",
            "partners",
            "[{protocol: UDP, port: 5353}, {protocol: UDP, port: 5399}]",
            "Allow",
            "",
        ));
    let agent = Agent::start(topology.node(), &policy.build(), &[]);
    let attacker = topology.pod("attacker");
    let elsewhere = topology.host("elsewhere");

    // The tracked flow: attacker:5300 <-> partner:5353.
    attacker
        .netns
        .enter(|| {
            let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5300)).unwrap();
            socket.set_read_timeout(Some(T)).unwrap();
            socket.send_to(b"hello", (partner.ipv4, 5353)).unwrap();
            let mut buffer = [0u8; 16];
            socket.recv(&mut buffer).expect("the partner echoes");
        })
        .unwrap();

    const MARKER: &[u8] = b"zonewall-forged-icmp";
    let leaked = count_received(
        &elsewhere.netns,
        libc::AF_INET,
        libc::IPPROTO_ICMP,
        MARKER,
        || {
            // Quoting the partner's packet to the attacker, and the attacker's to the
            // partner: either way the error is not addressed to the quoted sender.
            send_icmp(
                &attacker.netns,
                elsewhere.ipv4,
                &icmp_error(partner.ipv4, attacker.ipv4, 5353, 5300, MARKER),
            );
            send_icmp(
                &attacker.netns,
                elsewhere.ipv4,
                &icmp_error(attacker.ipv4, partner.ipv4, 5300, 5353, MARKER),
            );
        },
    );
    assert_eq!(
        leaked, 0,
        "forged ICMP errors reached a host the pod may not reach"
    );
    wait_counter(&agent, COUNTER_ICMP_ERROR_DROPPED, 1, "forged errors");

    // A genuine error of an allowed flow still gets through: UDP to a closed port of the
    // partner comes back as "port unreachable" (ECONNREFUSED on the socket).
    let refused = attacker
        .netns
        .enter(|| {
            let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            socket.connect((partner.ipv4, 5399)).unwrap();
            socket.set_read_timeout(Some(T)).unwrap();
            socket.send(b"anyone?").unwrap();
            let mut buffer = [0u8; 16];
            matches!(socket.recv(&mut buffer), Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused)
        })
        .unwrap();
    assert!(
        refused,
        "the partner's port-unreachable error did not reach the pod"
    );
}

/// A pod's address is reused by a new pod of another zone while the agent is down (no
/// agent updates identities, flushes conntrack or attaches the new interface): the new
/// pod must not inherit the old pod's connection to a local server.
#[test]
fn a_reused_address_inherits_nothing_while_the_agent_is_down() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("server").unwrap();
    topology.add_pod("old").unwrap();
    let _echo = UdpEchoServer::start(&topology.pod("server").netns, 6000).unwrap();
    let old = topology.pod("old");
    let (address4, address6) = (old.ipv4, old.ipv6);
    let old_veth = old.host_veth.clone();
    let policy = PolicyFile::new()
        .pod("server", "trusted", &topology.pod("server").ips())
        .pod("old", "dmz", &[address4.into(), address6.into()])
        .extra(&zone_policy(
            "dmz-to-trusted",
            "dmz",
            "trusted",
            "[{protocol: UDP, port: 6000}]",
            "Allow",
            "",
        ));
    let mut agent = Agent::start(topology.node(), &policy.build(), &[]);
    let server_ip = topology.pod("server").ipv4;

    // One UDP flow old:6100 -> server:6000, tracked.
    let flow = |netns: &Netns| -> bool {
        netns
            .enter(|| {
                let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 6100)).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(400)))
                    .unwrap();
                socket.connect((server_ip, 6000)).unwrap();
                (0..3).any(|_| {
                    socket.send(b"ping").is_ok() && {
                        let mut buffer = [0u8; 8];
                        socket.recv(&mut buffer).is_ok()
                    }
                })
            })
            .unwrap()
    };
    assert!(flow(&topology.pod("old").netns), "the allowed flow works");

    agent.kill(nix::sys::signal::Signal::SIGKILL);
    // The old pod goes; a new pod gets its addresses on a new interface.
    topology.node().ip(&["link", "del", &old_veth]).unwrap();
    topology.add_pod_at("new", address4, address6).unwrap();
    assert!(
        !flow(&topology.pod("new").netns),
        "the new owner of {address4} inherited the old owner's flow to the server"
    );
    assert!(agent.counter(COUNTER_WRONG_INTERFACE_DROPPED) > 0);

    // The agent comes back with the new pod in a zone that may not reach the server:
    // still nothing; the tracked state of the old owner is not used.
    let updated = PolicyFile::new()
        .pod("server", "trusted", &topology.pod("server").ips())
        .pod("new", "restricted", &[address4.into(), address6.into()])
        .extra("apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata:\n  name: dmz\nspec:\n  namespaceSelector:\n    matchLabels:\n      zone: dmz\n")
        .extra(&zone_policy("dmz-to-trusted", "dmz", "trusted", "[{protocol: UDP, port: 6000}]", "Allow", ""));
    agent.write_policy(&updated.build());
    agent.restart();
    agent.wait_attached(&topology.pod("new").host_veth);
    assert!(
        !agent.logs().contains("policy rejected"),
        "the updated policy must be valid:\n{}",
        agent.logs()
    );
    assert!(
        !flow(&topology.pod("new").netns),
        "restricted -> trusted:6000 passed; records: {:#?}\nagent log:\n{}",
        agent.flow_records(),
        agent.logs()
    );
}

/// On a bridge all pods share one route, so the binding comes from the addresses inside
/// each pod's namespace: a pod sending with its neighbour's address is dropped as spoofed,
/// while both pods' own traffic flows.
#[test]
fn spoofing_a_neighbour_on_a_bridge_is_dropped() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::bridged().unwrap();
    topology.add_pod("attacker").unwrap();
    topology.add_pod("neighbour").unwrap();
    topology.add_pod("server").unwrap();
    let _server = TcpServer::start(&topology.pod("server").netns, 8080).unwrap();
    let policy = PolicyFile::new()
        .pod("attacker", "dmz", &topology.pod("attacker").ips())
        .pod("neighbour", "trusted", &topology.pod("neighbour").ips())
        .pod("server", "restricted", &topology.pod("server").ips())
        .extra(&zone_policy(
            "trusted-to-restricted",
            "trusted",
            "restricted",
            "[{protocol: TCP, port: 8080}]",
            "Allow",
            "",
        ));
    let agent = Agent::start(topology.node(), &policy.build(), &[]);
    let attacker = topology.pod("attacker");
    let neighbour = topology.pod("neighbour");
    let server = topology.pod("server");
    for v6 in [false, true] {
        assert!(
            tcp_connect(&neighbour.netns, server.ip(v6), 8080, T),
            "the neighbour's own allowed traffic"
        );
        assert!(
            !tcp_connect(&attacker.netns, server.ip(v6), 8080, T),
            "dmz -> restricted is denied"
        );
    }
    let before = agent.counter(COUNTER_SPOOFED_DROPPED);
    let mut sent = 0;
    for v6 in [false, true] {
        // The neighbour's address as source: what trusted may send, restricted accepts.
        for flags in [zonewall_tests::packet::SYN, ACK, RST] {
            send_from_pod(
                &attacker.netns,
                &Spec::tcp(neighbour.ip(v6), server.ip(v6), 43000, 8080, flags).frame(),
            );
            sent += 1;
        }
    }
    wait_counter(
        &agent,
        COUNTER_SPOOFED_DROPPED,
        before + sent - 1,
        "spoofed frames on the bridge",
    );
    let record = agent.wait_record(
        "denying the neighbour's address from the attacker",
        |record| {
            record["policy"] == "spoofed-source"
                && record["interface"] == attacker.host_veth.as_str()
        },
    );
    assert_eq!(record["event"], "deny");
}
