//! `cargo xtask demo`: the agent enforcing `deploy/examples/demo.yaml` on a simulated
//! node. Builds a routed node with the pods of the file and two internet hosts in network
//! namespaces, starts the agent there, probes every path of [`scenario::EXPECTATIONS`]
//! over IPv4 and IPv6, prints what it saw next to what the policy says with the flow-log
//! records behind each verdict, then stops and detaches the agent and deletes everything.
//! Fails when a verdict differs from the policy. Writes only to a temporary folder (and a
//! bpffs under `/run` that it unmounts).

mod agent;
mod report;
mod scenario;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd;
use agent::{Agent, Files};
use report::Outcome;
use scenario::{EXPECTATIONS, INTERNET_HOSTS, PODS, Traffic};
use zonewall_testbed::bpffs::Bpffs;
use zonewall_testbed::topology::{self, Netns, TcpServer, Topology, UdpEchoServer};

/// How long a probe waits for an answer; a denied probe takes this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the agent may take to enforce its first policy.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the flow records of the probes.
const FLOW_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(agent_binary: &Path) -> Result<()> {
    let started = Instant::now();
    if !topology::can_run(&["ping"]) {
        bail!("the demo needs root and the tools above");
    }
    let config = crate::workspace_root().join("deploy/examples/demo.yaml");
    let yaml =
        std::fs::read_to_string(&config).with_context(|| format!("read {}", config.display()))?;
    let pods = scenario::pods_of(&yaml)?;

    println!();
    println!(
        "== The policy, as the agent reads it ({})",
        config.display()
    );
    let checked = cmd::output(
        Command::new(agent_binary)
            .arg("check")
            .arg("--config")
            .arg(&config),
    )
    .context("`firewall-agent check` rejects the demo policy")?;
    for line in checked.lines() {
        println!("  {line}");
    }

    let temp = tempfile::Builder::new()
        .prefix("zonewall-demo-")
        .tempdir()
        .context("create a temporary folder")?;
    let bpffs = Bpffs::mount_in_run(agent::BPFFS_PREFIX)?;

    println!();
    println!("== A node with three pods and two internet hosts (network namespaces)");
    let mut topology = Topology::routed()?;
    for (name, zone) in PODS {
        let (v4, v6) = scenario::addresses(&pods, name)?;
        let pod = topology.add_pod_at(name, v4, v6)?;
        let namespace = pods
            .iter()
            .find(|pod| pod.name == name)
            .map_or("?", |pod| pod.namespace.as_str());
        println!(
            "  pod  {name:<9} {:<20} zone {zone:<11} {v4:<14} {v6:<20} host side {}",
            format!("{namespace}/{name}"),
            pod.host_veth
        );
    }
    for (name, zone) in INTERNET_HOSTS {
        let host = topology.add_internet_host(name)?;
        println!(
            "  host {name:<9} {:<20} zone {zone:<11} {:<14} {:<20} via {}",
            "",
            host.ipv4.to_string(),
            host.ipv6.to_string(),
            host.uplink
        );
    }
    println!("  node namespace: {}", topology.node().name());
    let servers = start_servers(&topology)?;

    let files = Files {
        config: &config,
        flow_log: &temp.path().join("flows.jsonl"),
        ready: &temp.path().join("ready.json"),
        log: &temp.path().join("agent.log"),
    };
    println!();
    println!("== Starting the agent");
    let mut agent = Agent::start(topology.node(), agent_binary, &bpffs, &files)?;
    let ready = agent.wait_ready(files.ready, READY_TIMEOUT)?;
    println!("  ready: {ready}");

    println!();
    println!(
        "== Probing {} paths over IPv4 and IPv6 ({} s per denied probe)",
        EXPECTATIONS.len(),
        PROBE_TIMEOUT.as_secs()
    );
    let outcomes = probe_all(&topology)?;
    wait_for_records(files.flow_log, &outcomes);

    println!();
    println!("== Stopping the agent (SIGTERM), detaching, cleaning up");
    let status = agent.stop(Duration::from_secs(10))?;
    println!("  agent exited: {status}");
    // Read after the agent has stopped: it writes the end records of open flows on exit.
    let records = read_records(files.flow_log);
    let detached = agent::detach(topology.node(), agent_binary, &bpffs);

    report::print_verdicts(&outcomes);
    report::print_zone_matrix(&outcomes);
    let without_records = report::print_flows(&outcomes, &records);
    println!();
    println!("Agent log (last lines):");
    print!("{}", agent.log_tail(12));

    drop(servers);
    drop(topology);
    drop(bpffs);
    detached.context("`firewall-agent detach` failed")?;
    let differing = outcomes.iter().filter(|outcome| !outcome.matches()).count();
    println!();
    if without_records > 0 {
        println!("{without_records} paths have no flow record (see above)");
    }
    println!("demo finished in {:.1} s", started.elapsed().as_secs_f64());
    if differing > 0 {
        bail!(
            "{differing} of {} paths got a verdict that differs from the policy",
            outcomes.len()
        );
    }
    println!("every verdict matches the policy");
    Ok(())
}

/// The TCP and UDP servers every probe of the scenario needs, on each destination; they
/// stop when dropped.
type Servers = (Vec<TcpServer>, Vec<UdpEchoServer>);

fn start_servers(topology: &Topology) -> Result<Servers> {
    let mut wanted: BTreeMap<&str, BTreeSet<Traffic>> = BTreeMap::new();
    for expectation in EXPECTATIONS {
        wanted
            .entry(expectation.to)
            .or_default()
            .insert(expectation.traffic);
    }
    let mut servers: Servers = (Vec::new(), Vec::new());
    for (name, traffic) in wanted {
        let netns = endpoint_netns(topology, name)?;
        for traffic in traffic {
            match traffic {
                Traffic::Tcp(port) => servers.0.push(TcpServer::start(netns, port)?),
                Traffic::Udp(port) => servers.1.push(UdpEchoServer::start(netns, port)?),
                Traffic::Ping => {}
            }
        }
    }
    Ok(servers)
}

fn endpoint_netns<'a>(topology: &'a Topology, name: &str) -> Result<&'a Netns> {
    topology
        .netns(name)
        .with_context(|| format!("no pod or host {name} in the demo topology"))
}

fn endpoint_ips(topology: &Topology, name: &str) -> Result<[IpAddr; 2]> {
    if let Some(pod) = topology.pods().iter().find(|pod| pod.name == name) {
        return Ok([pod.ipv4.into(), pod.ipv6.into()]);
    }
    if let Some(host) = topology.hosts().iter().find(|host| host.name == name) {
        return Ok([host.ipv4.into(), host.ipv6.into()]);
    }
    bail!("no pod or host {name} in the demo topology")
}

fn probe_all(topology: &Topology) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for expectation in EXPECTATIONS {
        let from = endpoint_netns(topology, expectation.from)?;
        let from_ips = endpoint_ips(topology, expectation.from)?;
        let to_ips = endpoint_ips(topology, expectation.to)?;
        let mut allowed = [false; 2];
        for family in 0..2 {
            let to = to_ips[family];
            allowed[family] = match expectation.traffic {
                Traffic::Tcp(port) => topology::tcp_connect(from, to, port, PROBE_TIMEOUT),
                Traffic::Udp(port) => topology::udp_echo(from, to, port, PROBE_TIMEOUT),
                Traffic::Ping => topology::ping(from, to, PROBE_TIMEOUT),
            };
        }
        println!(
            "  {:<9} -> {:<9} {:<9} IPv4 {:<5} IPv6 {:<5}",
            expectation.from,
            expectation.to,
            expectation.traffic.to_string(),
            if allowed[0] { "allow" } else { "deny" },
            if allowed[1] { "allow" } else { "deny" },
        );
        outcomes.push(Outcome {
            expectation,
            addresses: [(from_ips[0], to_ips[0]), (from_ips[1], to_ips[1])],
            allowed,
        });
    }
    Ok(outcomes)
}

/// Every JSON record of the flow log written so far.
fn read_records(flow_log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(flow_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Waits until the flow log has a record for every probe, at most [`FLOW_TIMEOUT`]
/// (records are written asynchronously).
fn wait_for_records(flow_log: &Path, outcomes: &[Outcome]) {
    let deadline = Instant::now() + FLOW_TIMEOUT;
    loop {
        let records = read_records(flow_log);
        let complete = outcomes.iter().all(|outcome| {
            outcome
                .addresses
                .iter()
                .enumerate()
                .all(|(family, (source, destination))| {
                    let traffic = outcome.expectation.traffic;
                    records.iter().any(|record| {
                        report::is_flow_of(
                            record,
                            traffic.protocol(family == 1),
                            *source,
                            *destination,
                            traffic.port(),
                        )
                    })
                })
        });
        if complete || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
