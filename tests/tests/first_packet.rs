//! A new pod is enforced from its first packet, with real eBPF and real traffic:
//! interfaces are attached on the kernel's link event (RTM_NEWLINK), measured against
//! the interface scan of `--poll-ms`.

use std::path::Path;
use std::time::{Duration, Instant};

use zonewall_tests::agent::Agent;
use zonewall_tests::fixtures::PolicyFile;
use zonewall_tests::topology::{Netns, Topology, can_run};

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
