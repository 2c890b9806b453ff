//! The agent over time: policy edits apply without a restart, audit mode drops nothing,
//! an invalid edit keeps the last good policy, reused IPs get no old conntrack state,
//! interfaces appearing later are enforced, unknown sources follow --unknown-source, and
//! a SIGKILLed agent leaves enforcement in place and is replaced without a gap.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use zonewall_tests::agent::Agent;
use zonewall_tests::fixtures::{PolicyFile, dmz_to_trusted_http, zone_policy};
use zonewall_tests::lab::ThreeTiers;
use zonewall_tests::probes::with_continuous_traffic;
use zonewall_tests::testbed::until;
use zonewall_tests::topology::{TcpServer, Topology, can_run, ping, tcp_connect};

const T: Duration = Duration::from_millis(700);

fn partners_zone() -> &'static str {
    "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata:\n  name: partners\nspec:\n  networks: [203.0.113.0/24, \"2001:db8:ffff::/64\"]\n"
}

#[test]
fn policy_edits_audit_mode_and_invalid_edits() {
    if !can_run(&["ping"]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    for pod in ["web", "app"] {
        topology.add_pod(pod).unwrap();
    }
    topology.add_internet_host("internet").unwrap();
    let _servers = [
        TcpServer::start(&topology.pod("app").netns, 8080).unwrap(),
        TcpServer::start(&topology.host("internet").netns, 443).unwrap(),
    ];
    let base = PolicyFile::new()
        .pod("web", "dmz", &topology.pod("web").ips())
        .pod("app", "trusted", &topology.pod("app").ips())
        .extra(partners_zone())
        .extra(&dmz_to_trusted_http());
    let mut agent = Agent::start(topology.node(), &base.build(), &[]);
    let app = &topology.pod("app").netns;
    let web = &topology.pod("web").netns;
    let internet = topology.host("internet").ipv4.into();
    let internet6 = topology.host("internet").ipv6.into();

    // World egress is denied until a CIDR zone is allowed.
    assert!(
        !tcp_connect(app, internet, 443, T),
        "trusted -> internet before the edit"
    );
    let edited = base.clone().extra(&zone_policy(
        "trusted-to-partners",
        "trusted",
        "partners",
        "[{protocol: TCP, port: 443}]",
        "Allow",
        "",
    ));
    let generation = agent.generation().unwrap();
    agent.write_policy(&edited.build());
    let took = until(true, Duration::from_secs(3), || {
        tcp_connect(app, internet, 443, Duration::from_millis(200))
    })
    .unwrap_or_else(|| panic!("the edit never applied:\n{}", agent.logs()));
    assert!(
        took < Duration::from_secs(1),
        "new rules must apply within a second, took {took:?}"
    );
    assert!(agent.generation().unwrap() > generation);
    assert!(
        tcp_connect(app, internet6, 443, T),
        "v6 trusted -> partners after the edit"
    );
    let start = agent.wait_record("start to partners", |record| {
        record["event"] == "start" && record["dst"]["zone"] == "partners"
    });
    assert_eq!(start["policy"], "trusted-to-partners");

    // Audit: a Deny staged in Audit mode drops nothing and logs the would-be denial.
    let audited = edited.clone().extra(&zone_policy(
        "stage-deny-dmz-to-trusted",
        "dmz",
        "trusted",
        "",
        "Deny",
        "  mode: Audit\n  priority: 1\n",
    ));
    let generation = agent.generation().unwrap();
    agent.write_policy(&audited.build());
    agent.wait_generation(generation + 1);
    assert!(
        tcp_connect(web, topology.pod("app").ipv4.into(), 8080, T),
        "audit must drop nothing"
    );
    let audit = agent.wait_record("audit event", |record| record["event"] == "audit");
    assert_eq!(audit["verdict"], "allow");
    assert_eq!(audit["policy"], "dmz-to-trusted");
    assert_eq!(audit["audit_policy"], "stage-deny-dmz-to-trusted");
    assert_eq!(audit["src"]["zone"], "dmz");
    assert_eq!(audit["dst"]["port"], 8080);

    // An invalid edit is rejected with a reason and the last good policy stays.
    let generation = agent.generation().unwrap();
    agent.write_policy(&(audited.build() + "---\napiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata:\n  name: broken\nspec:\n  from: [dmz]\n  to: [nowhere]\n  action: Allow\n"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.logs().contains("policy rejected") {
        assert!(
            Instant::now() < deadline,
            "the invalid edit was not reported:\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        agent.logs().contains("nowhere"),
        "the rejection names the unknown zone:\n{}",
        agent.logs()
    );
    assert_eq!(
        agent.generation().unwrap(),
        generation,
        "no new generation for an invalid file"
    );
    assert!(
        tcp_connect(app, internet, 443, T),
        "old allow still enforced"
    );
    assert!(
        !tcp_connect(web, internet, 443, T),
        "old deny still enforced"
    );
    assert!(
        !ping(web, topology.pod("app").ipv4.into(), T),
        "old deny still enforced (icmp)"
    );
    // Broken YAML syntax too.
    agent.write_policy("kind: Zone\n  metadata: [unclosed\n");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(agent.generation().unwrap(), generation);
    assert!(
        tcp_connect(app, internet, 443, T),
        "old allow still enforced after a syntax error"
    );
    // And the next good edit applies again.
    agent.write_policy(&base.build());
    agent.wait_generation(generation + 1);
    assert!(
        !tcp_connect(app, internet, 443, T),
        "back to the base policy"
    );
}

#[test]
fn reused_ip_gets_no_access_through_old_connections() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("client").unwrap();
    topology.add_pod("db").unwrap();
    let _server = TcpServer::start(&topology.pod("db").netns, 5432).unwrap();
    let client_ips = topology.pod("client").ips();
    // First the client address belongs to `app-1` in trusted, which may reach the database.
    let before = PolicyFile::new()
        .pod("app-1", "trusted", &client_ips)
        .pod("db", "restricted", &topology.pod("db").ips())
        .pod("web-placeholder", "dmz", &["198.19.255.1".parse().unwrap()])
        .extra(&zone_policy(
            "trusted-to-db",
            "trusted",
            "restricted",
            "[{protocol: TCP, port: 5432}]",
            "Allow",
            "",
        ));
    let mut agent = Agent::start(topology.node(), &before.build(), &[]);
    let client = &topology.pod("client").netns;
    let db_address = SocketAddr::new(topology.pod("db").ipv4.into(), 5432);
    let mut stream: TcpStream = client
        .enter(|| TcpStream::connect_timeout(&db_address, T))
        .unwrap()
        .expect("trusted connects to the database");
    stream.set_read_timeout(Some(T)).unwrap();
    let mut echo = [0u8; 1];
    stream.write_all(b"a").unwrap();
    stream
        .read_exact(&mut echo)
        .expect("echo while the owner is trusted");

    // app-1 is deleted and its IP goes to `web-9` in dmz, which may not reach the database.
    let after = PolicyFile::new()
        .pod("web-9", "dmz", &client_ips)
        .pod("db", "restricted", &topology.pod("db").ips())
        .pod("app-2", "trusted", &["198.19.255.2".parse().unwrap()])
        .extra(&zone_policy(
            "trusted-to-db",
            "trusted",
            "restricted",
            "[{protocol: TCP, port: 5432}]",
            "Allow",
            "",
        ));
    let generation = agent.generation().unwrap();
    agent.write_policy(&after.build());
    agent.wait_generation(generation + 1);
    // The old connection carries nothing any more...
    let _ = stream.write_all(b"b");
    assert!(
        stream.read_exact(&mut echo).is_err(),
        "the new owner of the IP used the previous owner's connection"
    );
    // ...and a new one is denied.
    assert!(!tcp_connect(client, db_address.ip(), 5432, T));
    let record = agent.wait_record("deny of the new owner", |record| {
        record["event"] == "deny" && record["src"]["pod"] == "web-9"
    });
    assert_eq!(record["src"]["zone"], "dmz");
}

#[test]
fn late_interfaces_and_unknown_sources() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("a").unwrap();
    topology.add_pod("b").unwrap();
    let _server_b = TcpServer::start(&topology.pod("b").netns, 80).unwrap();
    // `stranger` is not in the policy file at all.
    let policy = PolicyFile::new()
        .pod("a", "dmz", &topology.pod("a").ips())
        .pod("b", "dmz", &topology.pod("b").ips())
        .pod("late", "trusted", &["198.19.254.1".parse().unwrap()]);
    let mut agent = Agent::start(topology.node(), &policy.build(), &[]);
    assert!(tcp_connect(
        &topology.pod("a").netns,
        topology.pod("b").ipv4.into(),
        80,
        T
    ));
    // A pod that appears after the agent started is enforced once its interface shows up.
    topology.add_pod("stranger").unwrap();
    agent.wait_attached(&topology.pod("stranger").host_veth);
    let stranger = &topology.pod("stranger").netns;
    let b = topology.pod("b").ipv4.into();
    assert!(
        !tcp_connect(stranger, b, 80, T),
        "an unknown source on a new pod interface must be denied"
    );
    let record = agent.wait_record("unknown-source deny", |record| {
        record["event"] == "deny" && record["policy"] == "unknown-source"
    });
    assert_eq!(record["src"]["zone"], "unknown");
    drop(agent);

    // With --unknown-source allow the same traffic passes, and is logged as such.
    let mut agent = Agent::start(
        topology.node(),
        &policy.build(),
        &["--unknown-source", "allow"],
    );
    agent.wait_attached(&topology.pod("stranger").host_veth);
    let allowed = until(true, Duration::from_secs(3), || {
        tcp_connect(stranger, b, 80, Duration::from_millis(200))
    });
    assert!(
        allowed.is_some(),
        "--unknown-source allow:\n{}",
        agent.logs()
    );
    agent.wait_record("unknown-source start", |record| {
        record["event"] == "start" && record["policy"] == "unknown-source"
    });
}

#[test]
fn sigkill_and_restart_keep_enforcing_without_a_gap() {
    if !can_run(&[]) {
        return;
    }
    let lab = ThreeTiers::routed().unwrap();
    let topology = &lab.topology;
    let policy = lab.pods().extra(&dmz_to_trusted_http());
    let mut agent = Agent::start(topology.node(), &policy.build(), &[]);

    let web = &topology.pod("web").netns;
    let db = SocketAddr::new(topology.pod("db").ipv4.into(), 5432);
    let app = SocketAddr::new(topology.pod("app").ipv4.into(), 8080);
    let (traffic, ()) = with_continuous_traffic(web, db, app, |_| {
        std::thread::sleep(Duration::from_millis(700));
        let status = agent.kill(nix::sys::signal::Signal::SIGKILL);
        assert!(!status.success());
        // Enforcement outlives the agent.
        std::thread::sleep(Duration::from_millis(1000));
        agent.restart();
        agent.wait_generation(1);
        std::thread::sleep(Duration::from_millis(1500));
    });
    assert_eq!(
        traffic.leaks(),
        0,
        "a denied flow got through during kill/restart"
    );
    assert!(
        traffic.denied_probes() >= 5,
        "the denied flow was probed continuously"
    );
    assert_eq!(
        traffic.stalls(),
        0,
        "the allowed connection stalled:\n{}",
        agent.logs()
    );
    assert!(
        traffic.exchanges() >= 50,
        "the allowed connection kept flowing"
    );
    assert!(
        agent.logs().contains("adopting pinned state"),
        "{}",
        agent.logs()
    );
    assert!(
        tcp_connect(web, app.ip(), 8080, T),
        "new allowed connections after the restart"
    );
}

#[test]
fn sigterm_leaves_enforcement_and_detach_removes_it() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("web").unwrap();
    topology.add_pod("db").unwrap();
    let _server = TcpServer::start(&topology.pod("db").netns, 5432).unwrap();
    let policy = PolicyFile::new()
        .pod("web", "dmz", &topology.pod("web").ips())
        .pod("db", "restricted", &topology.pod("db").ips());
    let mut agent = Agent::start(topology.node(), &policy.build(), &[]);
    let web = &topology.pod("web").netns;
    let db = topology.pod("db").ipv4.into();
    assert!(!tcp_connect(web, db, 5432, T));
    let status = agent.kill(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", agent.logs());
    assert!(
        !tcp_connect(web, db, 5432, T),
        "stopping the agent must not open the firewall"
    );
    let output = std::process::Command::new(zonewall_tests::agent::agent_binary())
        .arg("detach")
        .arg("--bpffs")
        .arg(&agent.bpffs)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("4 links removed"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        tcp_connect(web, db, 5432, T),
        "after detach nothing is enforced"
    );
    let pins: Vec<_> = std::fs::read_dir(&agent.bpffs)
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert!(
        pins.iter()
            .all(|name| name.to_string_lossy().ends_with(".debug")),
        "detach leaves no pins: {pins:?}"
    );
}
