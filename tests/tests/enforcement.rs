//! The agent enforcing zone policy on real traffic between network namespaces: TCP, UDP
//! and ICMP over IPv4 and IPv6, routed and bridged nodes, policy edits, audit mode,
//! invalid edits, IP reuse, and a SIGKILLed agent. Flow records are checked field by field.

use std::time::Duration;

use zonewall_tests::agent::Agent;
use zonewall_tests::agent::check_verdict as check;
use zonewall_tests::fixtures::{PolicyFile, zone_policy};
use zonewall_tests::topology::{
    Layout, TcpServer, Topology, UdpEchoServer, can_run, ping, tcp_connect, udp_echo,
};

const T: Duration = Duration::from_millis(700);

struct Lab {
    topology: Topology,
    _servers: (Vec<TcpServer>, Vec<UdpEchoServer>),
}

/// web, web2 in dmz; app in trusted; db in restricted; an internet host; servers:
/// TCP 80 on web2, TCP 8080/8081 and UDP 5353/5354 on app, TCP 5432 on db, TCP 443 on the
/// internet host.
fn lab(layout: Layout) -> Lab {
    let mut topology = Topology::new(layout).expect("topology");
    for pod in ["web", "web2", "app", "db"] {
        topology.add_pod(pod).expect("pod");
    }
    topology
        .add_internet_host("internet")
        .expect("internet host");
    let tcp = vec![
        TcpServer::start(&topology.pod("web2").netns, 80).unwrap(),
        TcpServer::start(&topology.pod("app").netns, 8080).unwrap(),
        TcpServer::start(&topology.pod("app").netns, 8081).unwrap(),
        TcpServer::start(&topology.pod("db").netns, 5432).unwrap(),
        TcpServer::start(&topology.host("internet").netns, 443).unwrap(),
    ];
    let udp = vec![
        UdpEchoServer::start(&topology.pod("app").netns, 5353).unwrap(),
        UdpEchoServer::start(&topology.pod("app").netns, 5354).unwrap(),
    ];
    Lab {
        topology,
        _servers: (tcp, udp),
    }
}

fn base_policy(topology: &Topology) -> PolicyFile {
    PolicyFile::new()
        .pod("web", "dmz", &topology.pod("web").ips())
        .pod("web2", "dmz", &topology.pod("web2").ips())
        .pod("app", "trusted", &topology.pod("app").ips())
        .pod("db", "restricted", &topology.pod("db").ips())
        .extra(&zone_policy(
            "dmz-to-trusted",
            "dmz",
            "trusted",
            "[{protocol: TCP, port: 8080}, {protocol: UDP, port: 5353}]",
            "Allow",
            "",
        ))
        .extra(&zone_policy(
            "trusted-to-restricted-icmp",
            "trusted",
            "restricted",
            "[{protocol: ICMP}, {protocol: ICMPv6}]",
            "Allow",
            "",
        ))
}

fn zone_matrix(layout: Layout) {
    let lab = lab(layout);
    let topology = &lab.topology;
    let mut agent = Agent::start(topology.node(), &base_policy(topology).build(), &[]);
    let web = &topology.pod("web").netns;
    let app = &topology.pod("app").netns;
    for v6 in [false, true] {
        let family = if v6 { "v6" } else { "v4" };
        let ip = |pod: &str| topology.pod(pod).ip(v6);
        check(
            true,
            tcp_connect(web, ip("web2"), 80, T),
            &format!("{family} dmz -> dmz tcp"),
            &agent,
        );
        check(
            true,
            tcp_connect(web, ip("app"), 8080, T),
            &format!("{family} dmz -> trusted:8080"),
            &agent,
        );
        check(
            false,
            tcp_connect(web, ip("app"), 8081, T),
            &format!("{family} dmz -> trusted:8081"),
            &agent,
        );
        check(
            true,
            udp_echo(web, ip("app"), 5353, T),
            &format!("{family} dmz -> trusted udp 5353"),
            &agent,
        );
        check(
            false,
            udp_echo(web, ip("app"), 5354, T),
            &format!("{family} dmz -> trusted udp 5354"),
            &agent,
        );
        check(
            false,
            tcp_connect(app, ip("db"), 5432, T),
            &format!("{family} trusted -> restricted:5432"),
            &agent,
        );
        check(
            true,
            ping(app, ip("db"), T),
            &format!("{family} trusted -> restricted icmp"),
            &agent,
        );
        check(
            false,
            ping(web, ip("app"), T),
            &format!("{family} dmz -> trusted icmp"),
            &agent,
        );
        check(
            true,
            ping(web, ip("web2"), T),
            &format!("{family} dmz -> dmz icmp"),
            &agent,
        );
        // trusted may answer dmz (above) but not open a connection to it.
        check(
            false,
            tcp_connect(app, ip("web2"), 80, T),
            &format!("{family} trusted -> dmz new"),
            &agent,
        );
        let internet = topology.host("internet").ip(v6);
        check(
            false,
            tcp_connect(app, internet, 443, T),
            &format!("{family} trusted -> world:443"),
            &agent,
        );
    }
    // Flow records of that traffic, field by field.
    let web_ip = topology.pod("web").ipv4.to_string();
    let app_ip = topology.pod("app").ipv4.to_string();
    let deny = agent.wait_record("deny dmz -> trusted:8081", |record| {
        record["event"] == "deny" && record["dst"]["port"] == 8081 && record["src"]["ip"] == web_ip
    });
    assert_eq!(deny["verdict"], "deny");
    assert_eq!(deny["policy"], "default-deny-inter-zone");
    assert_eq!(deny["protocol"], "tcp");
    assert_eq!(deny["src"]["zone"], "dmz");
    assert_eq!(deny["src"]["namespace"], "dmz");
    assert_eq!(deny["src"]["pod"], "web");
    assert_eq!(
        deny["src"]["workload"]["kind"], "Deployment",
        "the ReplicaSet stands for its Deployment"
    );
    assert_eq!(deny["src"]["workload"]["name"], "web");
    assert_eq!(deny["src"]["labels"]["app"], "web");
    assert_eq!(deny["dst"]["ip"], app_ip);
    assert_eq!(deny["dst"]["zone"], "trusted");
    assert_eq!(deny["dst"]["pod"], "app");
    assert_eq!(deny["direction"], "from-pod");
    assert!(
        deny["time"]
            .as_str()
            .is_some_and(|time| time.starts_with("20")),
        "{deny}"
    );
    assert!(
        deny["src"]["port"].as_u64().is_some_and(|port| port > 0),
        "{deny}"
    );
    let start = agent.wait_record("start dmz -> trusted:8080", |record| {
        record["event"] == "start" && record["dst"]["port"] == 8080 && record["src"]["ip"] == web_ip
    });
    assert_eq!(start["verdict"], "allow");
    assert_eq!(start["policy"], "dmz-to-trusted");
    assert_eq!(start["src"]["zone"], "dmz");
    assert_eq!(start["dst"]["zone"], "trusted");
    assert_eq!(start["tcp_flags"], "SYN");
    let flow_id = start["flow_id"].as_str().expect("flow id").to_owned();
    let end = agent.wait_record("end of that flow", |record| {
        record["event"] == "end" && record["flow_id"] == flow_id.as_str()
    });
    assert_eq!(end["policy"], "dmz-to-trusted");
    assert!(
        end["packets"].as_u64().unwrap() >= 4,
        "a connect, a byte each way and a close: {end}"
    );
    assert!(end["packets_reply"].as_u64().unwrap() >= 2, "{end}");
    assert!(
        end["bytes"].as_u64().unwrap() > end["packets"].as_u64().unwrap() * 40,
        "{end}"
    );
    assert!(end["end"].is_string(), "{end}");
    assert!(end["tcp_flags"].as_str().unwrap().contains("FIN"), "{end}");
    let world = agent.wait_record("deny to world", |record| {
        record["event"] == "deny" && record["dst"]["zone"] == "world"
    });
    assert_eq!(world["dst"]["port"], 443);
    assert!(world["dst"]["pod"].is_null());
    let intra = agent.wait_record("intra-zone start", |record| {
        record["event"] == "start" && record["dst"]["pod"] == "web2" && record["protocol"] == "tcp"
    });
    assert_eq!(intra["policy"], "default-allow-intra-zone");
    let icmp = agent.wait_record("icmp start", |record| {
        record["event"] == "start" && record["protocol"] == "icmp" && record["dst"]["pod"] == "db"
    });
    assert_eq!(icmp["policy"], "trusted-to-restricted-icmp");
    agent.wait_record("icmpv6 start", |record| {
        record["event"] == "start" && record["protocol"] == "icmpv6" && record["dst"]["pod"] == "db"
    });
    agent.wait_record("udp start", |record| {
        record["event"] == "start" && record["protocol"] == "udp" && record["dst"]["port"] == 5353
    });
    let status = agent.kill(nix::sys::signal::Signal::SIGTERM);
    assert!(
        status.success(),
        "SIGTERM must stop the agent cleanly: {status:?}\n{}",
        agent.logs()
    );
}

#[test]
fn routed_node_enforces_the_zone_matrix() {
    if !can_run(&["ping"]) {
        return;
    }
    zone_matrix(Layout::Routed);
}

#[test]
fn bridged_node_enforces_the_zone_matrix() {
    if !can_run(&["ping"]) {
        return;
    }
    zone_matrix(Layout::Bridged);
}
