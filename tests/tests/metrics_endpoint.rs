//! The real agent's metrics endpoint when its process runs out of file descriptors: a
//! listener whose accept fails stays readable (the connection it could not take is still
//! queued), so an agent that retried at once would spin a core and starve its own run
//! loop. Here the agent's RLIMIT_NOFILE is lowered under its feet while a client waits:
//! the agent must back off (little CPU), log the failure a bounded number of times, keep
//! enforcing, and answer once descriptors are available again.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use zonewall_tests::agent::Agent;
use zonewall_tests::fixtures::{PolicyFile, zone_policy};
use zonewall_tests::topology::{Netns, TcpServer, Topology, can_run, tcp_connect, wait_until};

const METRICS_PORT: u16 = 19_968;
const T: Duration = Duration::from_millis(700);

fn metrics_address() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), METRICS_PORT)
}

/// One HTTP GET to the agent's endpoint in the node namespace: the status line and body.
fn get(node: &Netns, path: &str) -> std::io::Result<String> {
    node.enter(|| {
        let mut stream = TcpStream::connect_timeout(&metrics_address(), Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: node\r\n\r\n").as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })
    .expect("entering the node namespace")
}

/// User plus system CPU time the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let after_name = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// The lowest file descriptor number the process does not use: with the soft limit set
/// to it, the process can open nothing new.
fn lowest_free_descriptor(pid: u32) -> u64 {
    let used: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|fd| !used.contains(fd)).expect("a free number")
}

fn descriptor_limit(pid: u32, new: Option<libc::rlimit>) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let new_pointer = new
        .as_ref()
        .map_or(std::ptr::null(), |limit| limit as *const libc::rlimit);
    // SAFETY: prlimit with valid pointers (or null for "do not change").
    let result = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, new_pointer, &mut old) };
    assert_eq!(result, 0, "prlimit: {}", std::io::Error::last_os_error());
    old
}

#[test]
fn out_of_descriptors_the_endpoint_backs_off_keeps_enforcing_and_recovers() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("web").unwrap();
    topology.add_pod("db").unwrap();
    let web = topology.pod("web");
    let db = topology.pod("db");
    let _server = TcpServer::start(&db.netns, 5432).unwrap();
    let policy = PolicyFile::new()
        .pod("web", "dmz", &[web.ipv4.into(), web.ipv6.into()])
        .pod("db", "restricted", &[db.ipv4.into(), db.ipv6.into()])
        .extra(&zone_policy(
            "unrelated",
            "restricted",
            "dmz",
            "[{protocol: TCP, port: 80}]",
            "Allow",
            "",
        ));
    let address = metrics_address().to_string();
    let agent = Agent::start(
        topology.node(),
        &policy.build(),
        &["--metrics-address", &address],
    );
    let mut agent = agent;
    agent.wait_attached(&web.host_veth);
    let node = topology.node();
    wait_until(Duration::from_secs(10), "/healthz answering", || {
        get(node, "/healthz").is_ok_and(|response| response.starts_with("HTTP/1.1 200"))
    })
    .unwrap();
    assert!(
        !tcp_connect(&web.netns, db.ipv4.into(), 5432, T),
        "dmz -> restricted is denied"
    );

    let pid = agent.pid().expect("the agent runs");
    let original = descriptor_limit(pid, None);
    let starved = libc::rlimit {
        rlim_cur: lowest_free_descriptor(pid),
        rlim_max: original.rlim_max,
    };
    descriptor_limit(pid, Some(starved));
    // Queued by the kernel, never accepted while the agent has no descriptor for it.
    let mut waiting = node
        .enter(|| -> std::io::Result<TcpStream> {
            let mut stream =
                TcpStream::connect_timeout(&metrics_address(), Duration::from_secs(2))?;
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")?;
            Ok(stream)
        })
        .unwrap()
        .expect("the kernel queues the connection");

    let window = Duration::from_secs(3);
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    // Meanwhile the datapath still enforces: nothing about the endpoint opens the firewall.
    while started.elapsed() < window {
        assert!(
            !tcp_connect(&web.netns, db.ipv4.into(), 5432, T),
            "dmz -> restricted passed while the agent was out of descriptors:\n{}",
            agent.logs()
        );
    }
    let used = cpu_time(pid) - cpu_before;
    let elapsed = started.elapsed();
    assert!(agent.running(), "the agent stopped:\n{}", agent.logs());
    // Spinning on accept costs a whole core; backing off, almost nothing.
    assert!(
        used < elapsed / 5,
        "the agent used {used:?} of CPU in {elapsed:?} while it could not accept:\n{}",
        agent.logs()
    );
    let logged = agent
        .logs()
        .matches("metrics endpoint cannot accept connections")
        .count();
    assert!(
        (1..=2).contains(&logged),
        "the accept failure is logged, rate-limited: {logged} lines in {elapsed:?}:\n{}",
        agent.logs()
    );

    descriptor_limit(pid, Some(original));
    // The waiting client is served once a descriptor is free again.
    waiting
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut response = String::new();
    waiting
        .read_to_string(&mut response)
        .expect("the waiting client is answered");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let metrics = get(node, "/metrics").expect("/metrics");
    let errors: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("zonewall_metrics_accept_errors_total "))
        .expect("zonewall_metrics_accept_errors_total exported")
        .trim()
        .parse()
        .expect("a number");
    assert!(errors >= 1.0, "accept errors counted: {errors}");
    assert!(
        !tcp_connect(&web.netns, db.ipv4.into(), 5432, T),
        "still denied after recovery"
    );
}
