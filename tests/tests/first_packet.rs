//! A new pod is enforced from its first packet, with real eBPF and real traffic:
//!
//! - interfaces are attached on the kernel's link event (RTM_NEWLINK), measured against
//!   the interface scan of `--poll-ms`;
//! - the uplink program drops, counts and reports what a local pod sends through an
//!   interface no program judged, and lets the node's own traffic and transit pass.

#[path = "support/pods.rs"]
mod pods;

use std::path::Path;
use std::time::{Duration, Instant};

use firewall_common::COUNTER_UNJUDGED_EGRESS_DROPPED;
use pods::FastPod;
use zonewall_tests::agent::Agent;
use zonewall_tests::fixtures::PolicyFile;
use zonewall_tests::topology::{Netns, Topology, UdpEchoServer, can_run, udp_echo};

/// Link pins of `interface` under the agent's bpffs (one per direction once attached).
fn link_pins(bpffs: &Path, interface: &str) -> usize {
    let links = bpffs
        .join(format!("v{}", firewall_common::SCHEMA_VERSION))
        .join("links");
    let prefix = format!("{interface}@");
    std::fs::read_dir(links)
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Times from `ip link add` returning to the first link (ingress: what the pod sends)
/// and to both links of the new interface being pinned, for `count` interfaces created
/// one after the other; each list sorted.
fn attach_latencies(
    node: &Netns,
    agent: &Agent,
    tag: &str,
    count: usize,
    tc: bool,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut first, mut both) = (Vec::new(), Vec::new());
    for index in 0..count {
        let name = format!("veth{tag}{index}");
        node.ip(&[
            "link",
            "add",
            &name,
            "type",
            "veth",
            "peer",
            "name",
            &format!("zp{tag}{index}"),
        ])
        .unwrap();
        let created = Instant::now();
        let deadline = created + Duration::from_secs(5);
        let mut first_seen = None;
        loop {
            let attached = if tc {
                tc_records(&agent.bpffs, &name)
            } else {
                link_pins(&agent.bpffs, &name)
            };
            if attached >= 1 {
                first_seen.get_or_insert(created.elapsed());
            }
            if attached >= 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not attached within 5 s:\n{}",
                agent.logs()
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        both.push(created.elapsed());
        first.push(first_seen.unwrap_or_default());
        node.ip(&["link", "del", &name]).unwrap();
    }
    first.sort();
    both.sort();
    (first, both)
}

/// TC filter records of `interface` (clsact mode), one per direction.
fn tc_records(bpffs: &Path, interface: &str) -> usize {
    let tc = bpffs
        .join(format!("v{}", firewall_common::SCHEMA_VERSION))
        .join("tc");
    let prefix = format!("{interface}@");
    std::fs::read_dir(tc)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|namespace| {
            std::fs::read_dir(namespace.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .count()
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

#[test]
fn link_events_attach_a_new_interface_within_milliseconds_the_poll_takes_up_to_its_period() {
    if !can_run(&[]) {
        return;
    }
    let topology = Topology::routed().unwrap();
    let policy = PolicyFile::new().build();
    let mut results = Vec::new();
    for (mode, tag, arguments) in [
        (
            "poll every 200 ms, TCX",
            "p",
            ["--link-events", "false", "--attach-mode", "tcx"],
        ),
        (
            "RTM_NEWLINK, TCX",
            "e",
            ["--link-events", "true", "--attach-mode", "tcx"],
        ),
        (
            "RTM_NEWLINK, clsact",
            "c",
            ["--link-events", "true", "--attach-mode", "tc"],
        ),
    ] {
        let mut all = vec!["--poll-ms", "200"];
        all.extend(arguments);
        let agent = Agent::start(topology.node(), &policy, &all);
        let (first, both) = attach_latencies(topology.node(), &agent, tag, 40, tag == "c");
        println!(
            "attach latency, {mode}: ingress p50 {:.1} ms p90 {:.1} ms; both directions p50 {:.1} ms p90 {:.1} ms max {:.1} ms ({} interfaces)",
            milliseconds(percentile(&first, 0.5)),
            milliseconds(percentile(&first, 0.9)),
            milliseconds(percentile(&both, 0.5)),
            milliseconds(percentile(&both, 0.9)),
            milliseconds(*both.last().unwrap()),
            both.len()
        );
        results.push((percentile(&both, 0.5), *both.last().unwrap()));
    }
    let (poll_p50, _) = results[0];
    let (events_p50, events_max) = results[1];
    // Each TCX attach waits for an RCU grace period in the kernel (tens of ms on a busy
    // machine), the scan for its next tick on top of that.
    assert!(
        events_p50 * 3 < poll_p50 && events_max < Duration::from_millis(150),
        "link events: p50 {events_p50:?}, max {events_max:?}; poll p50 {poll_p50:?}"
    );
}

/// The destination port the policy allows.
const ALLOWED_PORT: u16 = 443;

#[test]
fn the_uplink_drops_what_no_program_judged_and_passes_the_node_and_transit() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("attached").unwrap();
    topology.add_internet_host("internet").unwrap();
    topology.add_internet_host("partner").unwrap();
    // A pod whose interface the agent's globs (veth*) do not match: a missed attach.
    let (netns, missed_ip) = FastPod::namespace(topology.prefix(), 0).unwrap();
    let missed_ip6: std::net::Ipv6Addr = "2001:db8:8::10".parse().unwrap();
    let missed = FastPod::plumb_as(
        topology.node(),
        netns,
        0,
        "unseen0",
        missed_ip,
        Some(missed_ip6),
    )
    .unwrap();
    let internet = topology.host("internet").ipv4;
    let internet6 = topology.host("internet").ipv6;
    let _echo = [
        UdpEchoServer::start(&topology.host("internet").netns, ALLOWED_PORT).unwrap(),
        UdpEchoServer::start(&topology.host("partner").netns, ALLOWED_PORT).unwrap(),
    ];
    let attached_pod = topology.pod("attached");
    let policy = pods::apps_policy(
        &[
            (
                "attached".into(),
                vec![attached_pod.ipv4.into(), attached_pod.ipv6.into()],
            ),
            ("missed".into(), vec![missed_ip.into(), missed_ip6.into()]),
        ],
        "[203.0.113.0/24, \"2001:db8:ffff::/48\"]",
    );
    let mut agent = Agent::start(topology.node(), &policy, &["--uplinks", "uplink*"]);
    agent.wait_attached(&attached_pod.host_veth);
    let short = Duration::from_millis(600);
    let attached = &attached_pod.netns;
    assert!(
        udp_echo(attached, internet.into(), ALLOWED_PORT, short),
        "judged and allowed"
    );
    assert!(
        udp_echo(attached, internet6.into(), ALLOWED_PORT, short),
        "judged and allowed, IPv6"
    );
    let before = agent.counter(COUNTER_UNJUDGED_EGRESS_DROPPED);
    assert!(
        !udp_echo(&missed.netns, internet.into(), ALLOWED_PORT, short),
        "unjudged: dropped\n{}",
        agent.logs()
    );
    assert!(
        !udp_echo(&missed.netns, internet6.into(), ALLOWED_PORT, short),
        "unjudged IPv6: dropped"
    );
    assert!(agent.counter(COUNTER_UNJUDGED_EGRESS_DROPPED) > before);
    let record = agent.wait_record("an unjudged-egress deny", |record| {
        record["event"] == "deny" && record["policy"] == "unjudged-egress"
    });
    assert_eq!(record["verdict"], "deny");
    assert_eq!(record["src"]["ip"], missed_ip.to_string());
    assert_eq!(record["dst"]["zone"], "internet");
    agent.wait_record("an unjudged-egress deny over IPv6", |record| {
        record["policy"] == "unjudged-egress" && record["src"]["ip"] == missed_ip6.to_string()
    });
    // The node's own traffic leaves, and so does transit from one uplink to the other.
    assert!(
        udp_echo(topology.node(), internet.into(), ALLOWED_PORT, short),
        "the node's own"
    );
    let partner = topology.host("partner").ipv4;
    assert!(
        udp_echo(
            &topology.host("internet").netns,
            partner.into(),
            ALLOWED_PORT,
            short
        ),
        "transit between uplinks"
    );

    // Enforcement on the uplink outlives the agent, as on pod interfaces.
    agent.kill(nix::sys::signal::Signal::SIGKILL);
    assert!(
        !udp_echo(&missed.netns, internet.into(), ALLOWED_PORT, short),
        "agent gone: still dropped"
    );
    assert!(
        udp_echo(attached, internet.into(), ALLOWED_PORT, short),
        "agent gone: judged passes"
    );
}
