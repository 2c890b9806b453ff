//! The topology helpers on their own, without any firewall: every pod reaches every other
//! pod and the internet hosts over TCP, UDP and ICMP, IPv4 and IPv6, in both layouts; the
//! probes fail within their timeout; everything is deleted afterwards, even after a panic.
//! Needs root (`cargo xtask test` runs it); outside CI it is skipped when it cannot run.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use zonewall_tests::topology::{
    Layout, Netns, TcpServer, Topology, UdpEchoServer, can_run, cleanup_stale, ping, tcp_connect,
    udp_echo,
};

const TIMEOUT: Duration = Duration::from_secs(1);

/// Servers on one endpoint.
struct Servers {
    tcp: TcpServer,
    udp: UdpEchoServer,
}

fn serve(netns: &Netns) -> Servers {
    Servers {
        tcp: TcpServer::start(netns, 8080).expect("start TCP server"),
        udp: UdpEchoServer::start(netns, 5353).expect("start UDP server"),
    }
}

/// Checks TCP, UDP and ICMP from `from` to `to` over one family, and that the servers saw
/// `from_ip` unchanged (no NAT anywhere).
fn assert_reaches(from: &Netns, from_ip: IpAddr, to: &Servers, to_ip: IpAddr) {
    let what = format!("{} -> {to_ip}", from.name());
    assert!(
        tcp_connect(from, to_ip, to.tcp.port(), TIMEOUT),
        "{what}: TCP connect"
    );
    assert!(
        udp_echo(from, to_ip, to.udp.port(), TIMEOUT),
        "{what}: UDP echo"
    );
    assert!(ping(from, to_ip, TIMEOUT), "{what}: ping");
    let saw = |peers: Vec<SocketAddr>| peers.iter().any(|peer| peer.ip() == from_ip);
    assert!(saw(to.tcp.peers()), "{what}: TCP peer was not {from_ip}");
    assert!(saw(to.udp.peers()), "{what}: UDP peer was not {from_ip}");
}

/// Two pods and two internet hosts; every pair in both directions, both families.
fn check_full_connectivity(layout: Layout) {
    let mut topology = Topology::new(layout).expect("build topology");
    topology.add_pod("web").expect("add pod web");
    topology.add_pod("db").expect("add pod db");
    topology
        .add_internet_host("internet")
        .expect("add internet host");
    topology
        .add_internet_host("partner")
        .expect("add second internet host");

    let endpoints: Vec<(&Netns, IpAddr, IpAddr)> = topology
        .pods()
        .iter()
        .map(|pod| (&pod.netns, pod.ipv4.into(), pod.ipv6.into()))
        .chain(
            topology
                .hosts()
                .iter()
                .map(|host| (&host.netns, host.ipv4.into(), host.ipv6.into())),
        )
        .collect();
    let servers: Vec<Servers> = endpoints.iter().map(|(netns, ..)| serve(netns)).collect();

    for (from, from_v4, from_v6) in &endpoints {
        for ((to, to_v4, to_v6), to_servers) in endpoints.iter().zip(&servers) {
            if from.name() == to.name() {
                continue;
            }
            assert_reaches(from, *from_v4, to_servers, *to_v4);
            assert_reaches(from, *from_v6, to_servers, *to_v6);
        }
    }

    // The node reaches its pods too (as kubelet probes do).
    let web = topology.pod("web");
    assert!(ping(topology.node(), web.ipv4.into(), TIMEOUT));
    assert!(ping(topology.node(), web.ipv6.into(), TIMEOUT));
}

#[test]
fn routed_node_connects_pods_and_internet_hosts() {
    if !can_run(&["ping"]) {
        return;
    }
    check_full_connectivity(Layout::Routed);
}

#[test]
fn bridged_node_connects_pods_and_internet_hosts() {
    if !can_run(&["ping"]) {
        return;
    }
    check_full_connectivity(Layout::Bridged);
}

#[test]
fn routed_pods_look_like_calico_pods() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::routed().expect("build topology");
    topology.add_pod("web").expect("add pod");
    let pod = topology.pod("web");
    assert!(pod.host_veth.starts_with("veth") && pod.host_veth.len() <= 15);
    let routes = pod.netns.ip(&["route", "show"]).expect("pod routes");
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0 onlink"),
        "{routes}"
    );
    let routes = pod
        .netns
        .ip(&["-6", "route", "show", "default"])
        .expect("pod v6 routes");
    assert!(routes.contains("default via fe80::1 dev eth0"), "{routes}");
    let node_routes = topology.node().ip(&["route", "show"]).expect("node routes");
    assert!(
        node_routes.contains(&format!("{} dev {}", pod.ipv4, pod.host_veth)),
        "{node_routes}"
    );
    topology.add_internet_host("internet").expect("add host");
    let host = topology.host("internet");
    assert!(!host.uplink.starts_with("veth"));
    assert_eq!(host.ipv4.to_string(), "203.0.113.10");
}

#[test]
fn probes_fail_within_their_timeout() {
    if !can_run(&["ping"]) {
        return;
    }
    let mut topology = Topology::routed().expect("build topology");
    topology.add_pod("client").expect("add pod");
    topology.add_pod("db").expect("add pod");
    let server = topology.add_pod("server").expect("add pod");
    let (server_v4, server_v6) = (server.ipv4, server.ipv6);
    // The node silently drops everything to the server, as a firewall's deny would.
    topology
        .node()
        .ip(&["route", "replace", "blackhole", &format!("{server_v4}/32")])
        .expect("blackhole v4");
    topology
        .node()
        .ip(&[
            "-6",
            "route",
            "replace",
            "blackhole",
            &format!("{server_v6}/128"),
        ])
        .expect("blackhole v6");
    let _servers = serve(&topology.pod("server").netns);
    let client = &topology.pod("client").netns;
    let timeout = Duration::from_millis(500);
    for ip in [IpAddr::from(server_v4), IpAddr::from(server_v6)] {
        let started = Instant::now();
        assert!(!tcp_connect(client, ip, 8080, timeout), "TCP to {ip}");
        assert!(!udp_echo(client, ip, 5353, timeout), "UDP to {ip}");
        assert!(!ping(client, ip, timeout), "ping {ip}");
        let elapsed = started.elapsed();
        assert!(
            elapsed < 3 * timeout + Duration::from_millis(600),
            "three dropped probes to {ip} took {elapsed:?}"
        );
    }
    // A closed port is refused at once.
    let started = Instant::now();
    let db = topology.pod("db");
    assert!(!tcp_connect(
        client,
        db.ipv4.into(),
        9,
        Duration::from_secs(5)
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
}

fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn everything_is_deleted_on_drop_even_after_a_panic() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::bridged().expect("build topology");
    topology.add_pod("web").expect("add pod");
    topology.add_internet_host("internet").expect("add host");
    let prefix = topology.prefix().to_string();
    assert_eq!(namespaces_with_prefix(&prefix).len(), 3);
    drop(topology);
    assert!(namespaces_with_prefix(&prefix).is_empty());

    let result = std::panic::catch_unwind(|| {
        let mut topology = Topology::routed().expect("build topology");
        topology.add_pod("web").expect("add pod");
        let _server = TcpServer::start(&topology.pod("web").netns, 0).expect("server");
        panic!("{}", topology.prefix());
    });
    let panic = result.expect_err("the closure panics");
    let prefix = panic
        .downcast_ref::<String>()
        .expect("panic message is the prefix");
    assert!(namespaces_with_prefix(prefix).is_empty());
}

#[test]
fn stale_namespaces_of_dead_processes_are_deleted() {
    if !can_run(&[]) {
        return;
    }
    // A pid that is not running now: the namespace looks left behind by a killed run.
    let dead_pid = (1_000_000..)
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .expect("a free pid");
    let name = format!("zw-{dead_pid}-{:04x}-node", rand::random::<u16>());
    // Created without a guard, as a killed run leaves it. (Another test process may
    // clean it up first; that is fine.)
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .expect("run ip netns add");
    assert!(status.success(), "create stale namespace {name}");
    // A namespace of this (live) process must survive the cleanup.
    let live = Topology::routed().expect("build topology");
    cleanup_stale();
    assert!(!Path::new("/run/netns").join(&name).exists());
    assert_eq!(namespaces_with_prefix(live.prefix()).len(), 1);
}
