//! Throughput between two pod namespaces on veth (a routed node, as Calico builds it),
//! with no filter, with zonewall (the real agent binary) and with the two netfilter
//! setups a user would otherwise pick, all enforcing the same zone semantics over the
//! same input: 1 000 policies and 10 000 pods in 50 zones.
//!
//! - `no program`: nothing on the path.
//! - `zonewall`: the agent, started as the integration tests start it, attached to both
//!   veths, writing its flow log to a file.
//! - `nftables`: the best nftables can do — one map from address to zone, the zone pair
//!   plus protocol and port looked up in one verdict map of concatenations, intra-zone
//!   pairs in a set, `ct state established,related accept` first.
//! - `iptables`: linear chains as kube-proxy and Calico's iptables mode build them, zone
//!   membership in ipsets, one rule per (policy, port) in priority order, one intra-zone
//!   rule per zone, conntrack first.
//!
//! Netfilter rules go in the node namespace's FORWARD path. Tests: TCP with one and with
//! four streams (iperf3), small-packet UDP (our own sender, 64-byte payloads as fast as
//! one thread can send them; datagrams received per second), and new TCP connections per second (our own client:
//! connect, server closes, client closes; every connection crosses the rules once, which
//! is where the number of rules shows). Configurations are interleaved round by round and
//! every result is a ratio to `no program` of the same round.

mod common;

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::scale::{self, Action, Generated, Scale};
use common::{
    Options, Panel, Plot, PlotKind, Point, Report, Series, Table, number, paired_ratios,
    require_root, round_order, summarize,
};
use zonewall_tests::agent::Agent;
use zonewall_tests::testbed::traffic::Acceptor;
use zonewall_tests::topology::{Netns, Topology, find_on_path, tcp_connect};

const BENCHMARK: &str = "throughput";
const IPERF_PORT: u16 = scale::ALLOWED_TCP[0];
const CONNECT_PORT: u16 = scale::ALLOWED_TCP[1];
/// A port the policy does not open between the two pods (enforcement check).
const CLOSED_PORT: u16 = 5433;
use common::scale::SERVER_V4;
const PODS: usize = 10_000;
const POLICIES: usize = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filter {
    None,
    Zonewall,
    Nftables,
    Iptables,
}

const FILTERS: [Filter; 4] = [
    Filter::None,
    Filter::Zonewall,
    Filter::Nftables,
    Filter::Iptables,
];

impl Filter {
    fn label(self) -> &'static str {
        match self {
            Filter::None => "no program",
            Filter::Zonewall => "zonewall",
            Filter::Nftables => "nftables (maps)",
            Filter::Iptables => "iptables (linear)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Test {
    TcpSingle,
    TcpFour,
    UdpSmall,
    Connections,
}

const TESTS: [Test; 4] = [
    Test::TcpSingle,
    Test::TcpFour,
    Test::UdpSmall,
    Test::Connections,
];

impl Test {
    fn label(self) -> &'static str {
        match self {
            Test::TcpSingle => "TCP, 1 stream",
            Test::TcpFour => "TCP, 4 streams",
            Test::UdpSmall => "UDP, 64-byte payloads",
            Test::Connections => "new TCP connections",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Test::TcpSingle | Test::TcpFour => "Gbit/s",
            Test::UdpSmall => "packets/s received",
            Test::Connections => "connections/s",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Test::TcpSingle => "tcp-1",
            Test::TcpFour => "tcp-4",
            Test::UdpSmall => "udp-64",
            Test::Connections => "connections",
        }
    }
}

struct Plan {
    rounds: usize,
    seconds: u32,
    omit: u32,
    /// A pass of every test in every configuration before the measured rounds.
    warm_up: bool,
    /// Each configuration installed afresh before each test (else once per round, for all
    /// the tests in a row: the quick run, whose installs would take longer than its tests).
    install_per_test: bool,
    /// How long a connection to the closed port may take before it counts as refused.
    closed_timeout: Duration,
}

fn main() {
    let options = Options::from_args();
    require_root(BENCHMARK);
    let plan = Plan {
        rounds: options.pick(6, 1),
        seconds: options.pick(4, 1),
        omit: options.pick(1, 0),
        warm_up: !options.quick,
        install_per_test: !options.quick,
        closed_timeout: options.pick(Duration::from_millis(500), Duration::from_millis(250)),
    };
    let mut report = Report::new(BENCHMARK, &options);
    report.method("rounds", plan.rounds);
    report.method(
        "order",
        if plan.install_per_test {
            "each round runs every test in every configuration back to back (rotating order), installing the configuration before each run"
        } else {
            "each round installs every configuration once (rotating order) and runs every test in it; no warm-up pass"
        },
    );
    report.method(
        "seconds per test",
        format!("{} (after {} s of warm-up)", plan.seconds, plan.omit),
    );
    report.method(
        "policy",
        format!("{POLICIES} policies, {PODS} pods in 50 zones"),
    );

    let mut missing: Vec<&str> = ["iperf3", "nft", "iptables", "ipset"]
        .into_iter()
        .filter(|tool| find_on_path(tool).is_none())
        .collect();
    if missing.contains(&"iperf3") {
        eprintln!("{BENCHMARK}: iperf3 is missing (cargo xtask setup installs it)");
        std::process::exit(2);
    }
    let filters: Vec<Filter> = FILTERS
        .into_iter()
        .filter(|filter| match filter {
            Filter::Nftables => !missing.contains(&"nft"),
            Filter::Iptables => !missing.contains(&"iptables") && !missing.contains(&"ipset"),
            _ => true,
        })
        .collect();
    missing.retain(|tool| *tool != "iperf3");
    if !missing.is_empty() {
        report.note(format!(
            "{} not installed: the configurations that need them were left out",
            missing.join(", ")
        ));
    }
    for (tool, args) in [("iptables", "-V"), ("nft", "-v"), ("iperf3", "-v")] {
        if let Ok(output) = Command::new(tool).arg(args).output() {
            let version = String::from_utf8_lossy(&output.stdout);
            if let Some(line) = version.lines().next() {
                report.method(&format!("{tool} version"), line.trim());
            }
        }
    }

    let mut topology = Topology::routed().expect("a routed node");
    let (fixed, [client_veth, server_veth]) = scale::client_and_server(&mut topology);
    let generated = scale::generate(
        Scale {
            pods: PODS,
            policies: POLICIES,
            prefixes: 2,
        },
        &fixed,
    );
    let rules = Netfilter::new(&generated);
    report.method(
        "position of the rule allowing the test traffic (iptables)",
        format!("{} of {}", rules.allow_position, rules.rule_count),
    );

    let node = topology.node();
    let server_ns = &topology.pod("server").netns;
    let client_ns = &topology.pod("client").netns;
    let _iperf = Daemon::start(server_ns, &["iperf3", "-s", "-p", &IPERF_PORT.to_string()]);
    let _acceptor = Acceptor::start(server_ns, CONNECT_PORT).expect("the acceptor started");
    let _closed = zonewall_tests::topology::TcpServer::start(server_ns, CLOSED_PORT)
        .expect("a server on the closed port");
    std::thread::sleep(Duration::from_millis(300));

    // samples[filter][test] = one value per round.
    let mut samples = vec![vec![Vec::<f64>::new(); TESTS.len()]; filters.len()];
    // The agent's CPU use during each test, in cores.
    let mut agent_share = vec![Vec::<f64>::new(); TESTS.len()];
    let veths = [client_veth.as_str(), server_veth.as_str()];
    // Warm-up: one short run of each test in each configuration.
    if plan.warm_up {
        for filter in &filters {
            let installed = install(*filter, node, &generated, &rules, &veths);
            check_enforcement(*filter, client_ns, plan.closed_timeout);
            for test in TESTS {
                run_test(test, client_ns, server_ns, 1, 0);
            }
            drop(installed);
        }
    }
    for round in 0..plan.rounds {
        // Each test runs in every configuration back to back, so the configurations it
        // compares are measured seconds apart, not minutes. The quick run visits the
        // configurations in the outer loop instead and installs each once.
        let tests = round_order(TESTS.len(), round);
        let configurations = round_order(filters.len(), round);
        let visits: Vec<(usize, usize)> = if plan.install_per_test {
            tests
                .iter()
                .flat_map(|test| configurations.iter().map(move |filter| (*test, *filter)))
                .collect()
        } else {
            configurations
                .iter()
                .flat_map(|filter| tests.iter().map(move |test| (*test, *filter)))
                .collect()
        };
        let mut current: Option<(usize, Installed)> = None;
        for (test_index, filter_index) in visits {
            let test = TESTS[test_index];
            let filter = filters[filter_index];
            let reuse = !plan.install_per_test
                && current
                    .as_ref()
                    .is_some_and(|(installed, _)| *installed == filter_index);
            if !reuse {
                // The previous configuration goes before the next one is installed.
                drop(current.take());
                let installed = install(filter, node, &generated, &rules, &veths);
                check_enforcement(filter, client_ns, plan.closed_timeout);
                current = Some((filter_index, installed));
            }
            let agent_pid = match current.as_ref().map(|(_, installed)| installed) {
                Some(Installed::Agent { pid, .. }) => Some(*pid),
                _ => None,
            };
            let agent_cpu = agent_pid.and_then(common::process_cpu_seconds);
            let started = Instant::now();
            let value = run_test(test, client_ns, server_ns, plan.seconds, plan.omit);
            if let (Some(pid), Some(before)) = (agent_pid, agent_cpu)
                && let Some(after) = common::process_cpu_seconds(pid)
            {
                agent_share[test_index].push((after - before) / started.elapsed().as_secs_f64());
            }
            progress!(
                "round {} {:<22} {:<18} {}",
                round + 1,
                test.label(),
                filter.label(),
                number(value)
            );
            samples[filter_index][test_index].push(value);
            report.sample(test.key(), filter.label(), round, value, test.unit());
        }
        drop(current);
    }
    build_report(&mut report, &filters, &samples, &rules, &agent_share);
    report.write(&options);
}

/// Checks that the configuration really filters: the open port connects, the closed one
/// does only without a filter.
fn check_enforcement(filter: Filter, client: &Netns, closed_timeout: Duration) {
    let closed_connects = tcp_connect(client, SERVER_V4.into(), CLOSED_PORT, closed_timeout);
    assert_eq!(
        closed_connects,
        filter == Filter::None,
        "{}: a port no policy opens must be closed exactly when a filter is installed",
        filter.label()
    );
    let mut open = false;
    for _ in 0..10 {
        if connect_once(client, CONNECT_PORT) {
            open = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(open, "{}: the allowed port must connect", filter.label());
}

fn connect_once(client: &Netns, port: u16) -> bool {
    client
        .enter(move || {
            TcpStream::connect_timeout(
                &SocketAddr::new(SERVER_V4.into(), port),
                Duration::from_secs(1),
            )
            .is_ok()
        })
        .unwrap_or(false)
}

/// What an installed configuration holds until dropped.
enum Installed<'a> {
    Nothing,
    /// Held for its `Drop`: stopping the agent and detaching what it attached.
    Agent {
        _agent: Box<Agent>,
        pid: u32,
    },
    Netfilter(&'a Netns, Filter),
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        match self {
            Installed::Nothing | Installed::Agent { .. } => {}
            Installed::Netfilter(node, Filter::Nftables) => {
                let _ = node.run(&["nft", "delete", "table", "inet", "zwbench"]);
            }
            Installed::Netfilter(node, _) => {
                let _ = node.run(&["iptables", "-P", "FORWARD", "ACCEPT"]);
                let _ = node.run(&["iptables", "-F"]);
                let _ = node.run(&["iptables", "-X"]);
                let _ = node.run(&["ipset", "destroy"]);
            }
        }
    }
}

fn install<'a>(
    filter: Filter,
    node: &'a Netns,
    generated: &Generated,
    rules: &Netfilter,
    veths: &[&str],
) -> Installed<'a> {
    match filter {
        Filter::None => Installed::Nothing,
        Filter::Zonewall => {
            let mut agent = Agent::start(node, &generated.yaml, &[]);
            for veth in veths {
                agent.wait_attached(veth);
            }
            let pid = agent.pid().expect("the agent's process");
            Installed::Agent {
                _agent: Box::new(agent),
                pid,
            }
        }
        Filter::Nftables => {
            feed(node, &["nft", "-f", "-"], &rules.nftables);
            Installed::Netfilter(node, filter)
        }
        Filter::Iptables => {
            feed(node, &["ipset", "restore"], &rules.ipsets);
            feed(node, &["iptables-restore"], &rules.iptables);
            Installed::Netfilter(node, filter)
        }
    }
}

/// Runs `command` in `netns` with `input` on its stdin; panics with its stderr on failure.
fn feed(netns: &Netns, command: &[&str], input: &str) {
    let mut child = netns
        .command(command[0])
        .args(&command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("starting {command:?}: {error}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .unwrap_or_else(|error| panic!("feeding {command:?}: {error}"));
    let output = child.wait_with_output().expect("waiting for the command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The netfilter rule sets equivalent to the generated policy file.
struct Netfilter {
    nftables: String,
    ipsets: String,
    iptables: String,
    rule_count: usize,
    allow_position: usize,
}

impl Netfilter {
    fn new(generated: &Generated) -> Self {
        use std::fmt::Write as _;
        let zone_mark = |zone: &str| -> u32 {
            match zone.strip_prefix("z-") {
                Some(index) => 0x100 + index.parse::<u32>().expect("zone index"),
                None => 0x1000,
            }
        };
        let partners: Vec<String> = generated
            .network_zones
            .iter()
            .filter(|(name, _)| name == "partners")
            .flat_map(|(_, prefixes)| {
                prefixes
                    .iter()
                    .filter(|prefix| prefix.addr().is_ipv4())
                    .map(|prefix| prefix.to_string())
            })
            .collect();

        // nftables.
        let mut nft = String::from("table inet zwbench {\n");
        let members: Vec<String> = generated
            .pods
            .iter()
            .map(|pod| {
                format!(
                    "{} : 0x{:x}",
                    pod.v4,
                    zone_mark(&scale::zone_name(pod.zone))
                )
            })
            .collect();
        let _ = writeln!(
            nft,
            "  map zone4 {{ type ipv4_addr : mark; elements = {{ {} }} }}",
            members.join(", ")
        );
        let networks: Vec<String> = partners
            .iter()
            .map(|prefix| format!("{prefix} : 0x{:x}", zone_mark("partners")))
            .collect();
        let _ = writeln!(
            nft,
            "  map network4 {{ type ipv4_addr : mark; flags interval; elements = {{ {} }} }}",
            networks.join(", ")
        );
        let intra: Vec<String> = (0..scale::POD_ZONES)
            .map(|zone| {
                let mark = zone_mark(&scale::zone_name(zone));
                format!("0x{mark:x} . 0x{mark:x}")
            })
            .collect();
        let _ = writeln!(
            nft,
            "  set intra {{ type mark . mark; elements = {{ {} }} }}",
            intra.join(", ")
        );
        // First match wins, as in the agent: the first policy naming a key decides it.
        let mut decided = std::collections::BTreeMap::new();
        for policy in &generated.policies {
            for (protocol, port) in &policy.ports {
                decided
                    .entry((
                        zone_mark(&policy.from),
                        zone_mark(&policy.to),
                        *protocol,
                        *port,
                    ))
                    .or_insert(policy.action);
            }
        }
        let verdicts: Vec<String> = decided
            .iter()
            .map(|((from, to, protocol, port), action)| {
                let verdict = if *action == Action::Allow {
                    "accept"
                } else {
                    "drop"
                };
                format!("0x{from:x} . 0x{to:x} . {protocol} . {port} : {verdict}")
            })
            .collect();
        let _ = writeln!(
            nft,
            "  map zone_policy {{ type mark . mark . inet_proto . inet_service : verdict; elements = {{ {} }} }}",
            verdicts.join(", ")
        );
        nft.push_str(
            "  chain forward {\n    type filter hook forward priority filter; policy drop;\n    ct state established,related accept\n    meta mark set ip saddr map @zone4\n    ct mark set ip daddr map @network4\n    ct mark set ip daddr map @zone4\n    meta mark . ct mark @intra accept\n    meta mark . ct mark . meta l4proto . th dport vmap @zone_policy\n  }\n}\n",
        );

        // ipsets and iptables.
        let mut ipsets = String::new();
        for zone in 0..scale::POD_ZONES {
            let _ = writeln!(
                ipsets,
                "create zw-{} hash:ip family inet maxelem 262144",
                scale::zone_name(zone)
            );
        }
        for pod in &generated.pods {
            let _ = writeln!(ipsets, "add zw-{} {}", scale::zone_name(pod.zone), pod.v4);
        }
        let _ = writeln!(ipsets, "create zw-partners hash:net family inet");
        for prefix in &partners {
            let _ = writeln!(ipsets, "add zw-partners {prefix}");
        }
        let mut iptables = String::from(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:ZW-POLICY - [0:0]\n-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n-A FORWARD -j ZW-POLICY\n",
        );
        let mut rule_count = 0;
        let mut allow_position = 0;
        for policy in &generated.policies {
            for (protocol, port) in &policy.ports {
                rule_count += 1;
                if policy.name == "bench-allow" && allow_position == 0 {
                    allow_position = rule_count;
                }
                let _ = writeln!(
                    iptables,
                    "-A ZW-POLICY -m set --match-set zw-{} src -m set --match-set zw-{} dst -p {protocol} --dport {port} -j {}",
                    policy.from,
                    policy.to,
                    if policy.action == Action::Allow {
                        "ACCEPT"
                    } else {
                        "DROP"
                    }
                );
            }
        }
        for zone in 0..scale::POD_ZONES {
            rule_count += 1;
            let name = scale::zone_name(zone);
            let _ = writeln!(
                iptables,
                "-A ZW-POLICY -m set --match-set zw-{name} src -m set --match-set zw-{name} dst -j ACCEPT"
            );
        }
        iptables.push_str("COMMIT\n");
        Self {
            nftables: nft,
            ipsets,
            iptables,
            rule_count,
            allow_position,
        }
    }
}

/// A long-running process inside a namespace, killed on drop.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(netns: &Netns, command: &[&str]) -> Self {
        let child = netns
            .command(command[0])
            .args(&command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {command:?}: {error}"));
        Self { child }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One measurement of `test`, in its unit.
fn run_test(test: Test, client: &Netns, server: &Netns, seconds: u32, omit: u32) -> f64 {
    match test {
        Test::TcpSingle => iperf(client, seconds, omit, &[]),
        Test::TcpFour => iperf(client, seconds, omit, &["-P", "4"]),
        Test::UdpSmall => {
            if omit > 0 {
                udp_flood(client, server, omit);
            }
            udp_flood(client, server, seconds)
        }
        Test::Connections => {
            if omit > 0 {
                connection_rate(client, omit);
            }
            connection_rate(client, seconds)
        }
    }
}

fn iperf(client: &Netns, seconds: u32, omit: u32, extra: &[&str]) -> f64 {
    let mut command = client.command("iperf3");
    command
        .args([
            "-c",
            &SERVER_V4.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-J",
        ])
        .args(["-t", &seconds.to_string(), "-O", &omit.to_string()])
        .args(["--connect-timeout", "3000"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let child = command.spawn().expect("starting iperf3");
    let output = wait_with_timeout(child, Duration::from_secs(u64::from(seconds + omit) + 20));
    let json: serde_json::Value = serde_json::from_slice(&output).unwrap_or_else(|error| {
        panic!(
            "iperf3 output is not JSON ({error}): {}",
            String::from_utf8_lossy(&output)
        )
    });
    if let Some(error) = json["error"].as_str() {
        panic!("iperf3 {extra:?}: {error}");
    }
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(f64::NAN)
        / 1e9
}

/// Datagrams per message batch of the UDP flood.
const BATCH: usize = 64;
/// Payload of each datagram (64 bytes of UDP payload: a 106-byte frame).
const PAYLOAD: usize = 64;

/// Small UDP datagrams from the client to the server as fast as one sender thread can
/// write them (sendmmsg, 64 per call); returns datagrams received per second by a
/// receiver in the server pod (recvmmsg). iperf3's own UDP sender tops out below what
/// the path carries, which would hide the filters' cost.
fn udp_flood(client: &Netns, server: &Netns, seconds: u32) -> f64 {
    let port = scale::ALLOWED_UDP[1];
    let stop = Arc::new(AtomicBool::new(false));
    let namespace = std::fs::File::open(server.path()).expect("the server's namespace");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn({
        let stop = stop.clone();
        move || -> u64 {
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("setns into the server");
            let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
                .expect("binding the UDP receiver");
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("read timeout");
            let buffer_size: libc::c_int = 16 << 20;
            // SAFETY: a valid socket and a correctly sized option value.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&buffer_size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                );
            }
            let _ = ready_tx.send(());
            let mut received = 0u64;
            let mut buffers = vec![[0u8; 2048]; BATCH];
            while !stop.load(Ordering::Relaxed) {
                received += receive_batch(socket.as_raw_fd(), &mut buffers);
            }
            received
        }
    });
    ready_rx.recv().expect("the UDP receiver started");
    let elapsed = client
        .enter(move || {
            let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
                .expect("binding the UDP sender");
            socket
                .connect((SERVER_V4, port))
                .expect("connecting the UDP sender");
            let payload = [0x5au8; PAYLOAD];
            let started = Instant::now();
            let duration = Duration::from_secs(u64::from(seconds));
            while started.elapsed() < duration {
                send_batch(socket.as_raw_fd(), &payload);
            }
            started.elapsed()
        })
        .expect("entering the client namespace");
    // What is still queued arrives within moments.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let received = receiver.join().expect("the UDP receiver");
    received as f64 / elapsed.as_secs_f64()
}

fn send_batch(fd: i32, payload: &[u8]) -> u64 {
    let mut vectors: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        })
        .collect();
    // SAFETY: zeroed mmsghdr is a valid empty header; each points at one iovec that lives
    // as long as the call.
    let mut messages: Vec<libc::mmsghdr> = vectors
        .iter_mut()
        .map(|vector| {
            let mut message: libc::mmsghdr = unsafe { std::mem::zeroed() };
            message.msg_hdr.msg_iov = vector;
            message.msg_hdr.msg_iovlen = 1;
            message
        })
        .collect();
    // SAFETY: `messages` holds BATCH valid headers on a connected socket.
    let sent = unsafe { libc::sendmmsg(fd, messages.as_mut_ptr(), BATCH as u32, 0) };
    sent.max(0) as u64
}

fn receive_batch(fd: i32, buffers: &mut [[u8; 2048]]) -> u64 {
    let mut vectors: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|buffer| libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        })
        .collect();
    // SAFETY: as in `send_batch`, with writable buffers.
    let mut messages: Vec<libc::mmsghdr> = vectors
        .iter_mut()
        .map(|vector| {
            let mut message: libc::mmsghdr = unsafe { std::mem::zeroed() };
            message.msg_hdr.msg_iov = vector;
            message.msg_hdr.msg_iovlen = 1;
            message
        })
        .collect();
    // SAFETY: `messages` holds valid headers with buffers that outlive the call; the
    // socket's read timeout bounds the wait.
    let received = unsafe {
        libc::recvmmsg(
            fd,
            messages.as_mut_ptr(),
            messages.len() as u32,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    received.max(0) as u64
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut bytes);
        bytes
    });
    loop {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("iperf3 did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    reader.join().expect("reading iperf3's output")
}

/// Connections per second from the client to the acceptor: connect, wait for the server's
/// close, close. The server closes first (as an HTTP/1.0 server would), so the client
/// keeps no TIME_WAIT state and the rate is the path's, not the port space's.
fn connection_rate(client: &Netns, seconds: u32) -> f64 {
    let target = SocketAddr::new(IpAddr::V4(SERVER_V4), CONNECT_PORT);
    client
        .enter(move || {
            let started = Instant::now();
            let duration = Duration::from_secs(u64::from(seconds));
            let mut made = 0u64;
            while started.elapsed() < duration {
                if let Ok(mut stream) = TcpStream::connect_timeout(&target, Duration::from_secs(1))
                {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut byte = [0u8; 1];
                    if matches!(std::io::Read::read(&mut stream, &mut byte), Ok(0)) {
                        made += 1;
                    }
                }
            }
            made as f64 / started.elapsed().as_secs_f64()
        })
        .expect("entering the client namespace")
}

fn build_report(
    report: &mut Report,
    filters: &[Filter],
    samples: &[Vec<Vec<f64>>],
    rules: &Netfilter,
    agent_share: &[Vec<f64>],
) {
    let baseline = filters
        .iter()
        .position(|filter| *filter == Filter::None)
        .expect("no program is always measured");
    let mut rows = Vec::new();
    let mut ratio_series: Vec<Series> = Vec::new();
    let mut absolute_panels: Vec<Panel> = TESTS
        .iter()
        .map(|test| Panel {
            title: format!("{} ({})", test.label(), test.unit()),
            x_label: String::new(),
            log_x: false,
            categories: filters
                .iter()
                .map(|filter| filter.label().to_owned())
                .collect(),
            series: filters
                .iter()
                .map(|filter| Series {
                    label: filter.label().to_owned(),
                    points: Vec::new(),
                })
                .collect(),
        })
        .collect();
    for (filter_index, filter) in filters.iter().enumerate() {
        let mut series = Series {
            label: filter.label().to_owned(),
            points: Vec::new(),
        };
        for (test_index, test) in TESTS.iter().enumerate() {
            let values = &samples[filter_index][test_index];
            let absolute = summarize(values);
            let ratio = summarize(&paired_ratios(values, &samples[baseline][test_index]));
            rows.push(vec![
                test.label().to_owned(),
                filter.label().to_owned(),
                number(absolute.median),
                number(absolute.p10),
                number(absolute.p90),
                test.unit().to_owned(),
                format!("{:.3}", ratio.median),
                format!("{:.3}–{:.3}", ratio.p10, ratio.p90),
            ]);
            absolute_panels[test_index].series[filter_index]
                .points
                .push(Point::of(filter_index as f64, &absolute));
            series.points.push(Point::of(test_index as f64, &ratio));
            let key = format!(
                "{}_{}_ratio",
                test.key().replace('-', "_"),
                filter.label().split(' ').next().unwrap_or("x")
            );
            report.metric(&key, ratio.median);
        }
        ratio_series.push(series);
    }
    rows.sort_by_key(|row| TESTS.iter().position(|test| test.label() == row[0]));
    report.tables.push(Table {
        title: "Throughput by configuration (absolute numbers of this 2-core VM; the ratio is the headline)".into(),
        columns: ["test", "configuration", "median", "p10", "p90", "unit", "ratio to no program", "ratio p10–p90"]
            .map(String::from)
            .to_vec(),
        rows,
        caption: format!(
            "Ratios are per round (each configuration divided by no program of the same round and test, measured seconds apart), then the median over rounds. The iptables chain holds {} rules; the one allowing the test traffic is number {}.",
            rules.rule_count, rules.allow_position
        ),
    });
    if agent_share.iter().any(|shares| !shares.is_empty()) {
        let rows = TESTS
            .iter()
            .zip(agent_share)
            .map(|(test, shares)| {
                let share = summarize(shares);
                report.metric(
                    &format!("agent_cpu_percent_{}", test.key().replace('-', "_")),
                    share.median * 100.0,
                );
                vec![
                    test.label().to_owned(),
                    format!("{:.1} %", share.median * 100.0),
                    format!("{:.1}–{:.1} %", share.p10 * 100.0, share.p90 * 100.0),
                ]
            })
            .collect();
        report.tables.push(Table {
            title: "CPU used by the zonewall agent process during each test".into(),
            columns: ["test", "share of one core (median)", "p10–p90"].map(String::from).to_vec(),
            rows,
            caption: "User-space work only (reading flow events, enriching, writing the flow log, polling the policy file); the eBPF programs run in the kernel's packet path and are not in it. The machine has 2 cores, shared by the client, the server, the kernel's packet processing and the agent.".into(),
        });
    }
    report.plots.push(Plot {
        file: "throughput-ratio.svg".into(),
        title: "Throughput relative to no program (1.0 = no filter at all)".into(),
        kind: PlotKind::Bar,
        y_label: "ratio to no program".into(),
        panels: vec![Panel {
            title: String::new(),
            x_label: String::new(),
            log_x: false,
            categories: TESTS.iter().map(|test| test.label().to_owned()).collect(),
            series: ratio_series,
        }],
        references: vec![(1.0, "no program".into()), (0.95, "95 %".into())],
        y_from_zero: true,
    });
    report.plots.push(Plot {
        file: "throughput-absolute.svg".into(),
        title: "Throughput per configuration (absolute, this VM)".into(),
        kind: PlotKind::Bar,
        y_label: "per test unit".into(),
        panels: absolute_panels,
        references: Vec::new(),
        y_from_zero: true,
    });

    let spread_of = |filter: Filter, test: Test| -> Option<common::Summary> {
        let filter_index = filters.iter().position(|candidate| *candidate == filter)?;
        let test_index = TESTS.iter().position(|candidate| *candidate == test)?;
        Some(summarize(&paired_ratios(
            &samples[filter_index][test_index],
            &samples[baseline][test_index],
        )))
    };
    let ratio_of =
        |filter: Filter, test: Test| spread_of(filter, test).map(|summary| summary.median);
    for test in [Test::TcpSingle, Test::TcpFour] {
        let Some(ratio) = spread_of(Filter::Zonewall, test) else {
            continue;
        };
        report.check(
            &format!("throughput-{}", test.key()),
            &format!(
                "zonewall, {}, ratio to no program (median over rounds)",
                test.label()
            ),
            "≥ 0.95",
            format!(
                "{:.3} (p10–p90 {:.3}–{:.3})",
                ratio.median, ratio.p10, ratio.p90
            ),
            Some(ratio.median >= 0.95),
        );
        report.metric(
            &format!("{}_zonewall_ratio_p10", test.key().replace('-', "_")),
            ratio.p10,
        );
        report.metric(
            &format!("{}_zonewall_ratio_p90", test.key().replace('-', "_")),
            ratio.p90,
        );
    }
    for test in TESTS {
        let zonewall = ratio_of(Filter::Zonewall, test).unwrap_or(f64::NAN);
        let others: Vec<(Filter, f64)> = [Filter::Nftables, Filter::Iptables]
            .into_iter()
            .filter_map(|filter| Some((filter, ratio_of(filter, test)?)))
            .collect();
        if others.is_empty() {
            continue;
        }
        let ahead = others.iter().all(|(_, ratio)| zonewall > *ratio);
        let measured = std::iter::once(format!("zonewall {zonewall:.3}"))
            .chain(
                others
                    .iter()
                    .map(|(filter, ratio)| format!("{} {ratio:.3}", filter.label())),
            )
            .collect::<Vec<_>>()
            .join(", ");
        report.check(
            &format!("throughput-ahead-{}", test.key()),
            &format!(
                "zonewall ahead of both netfilter baselines, {}",
                test.label()
            ),
            "zonewall > nftables and iptables",
            measured,
            Some(ahead),
        );
    }
}
