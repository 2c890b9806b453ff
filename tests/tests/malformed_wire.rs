//! Frames whose IP header itself is cut short cannot go through BPF_PROG_TEST_RUN (the
//! kernel refuses them), but a pod can send them: here a pod sends them on its eth0
//! through a packet socket and the agent's datapath must drop and count each one.

use std::time::{Duration, Instant};

use firewall_common::COUNTER_MALFORMED_DROPPED;
use zonewall_tests::agent::{Agent, send_raw_frame};
use zonewall_tests::fixtures::PolicyFile;
use zonewall_tests::packet::{SYN, Spec, ethernet};
use zonewall_tests::topology::{Topology, can_run};

#[test]
fn truncated_ip_headers_from_a_pod_are_dropped_and_counted() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("sender").unwrap();
    topology.add_pod("peer").unwrap();
    let sender = topology.pod("sender");
    let peer = topology.pod("peer");
    let policy = PolicyFile::new()
        .pod("sender", "dmz", &[sender.ipv4.into(), sender.ipv6.into()])
        .pod("peer", "dmz", &[peer.ipv4.into(), peer.ipv6.into()]);
    let agent = Agent::start(topology.node(), &policy.build(), &[]);
    let v4 = Spec::tcp(sender.ipv4.into(), peer.ipv4.into(), 40000, 80, SYN).frame();
    let v6 = Spec::tcp(sender.ipv6.into(), peer.ipv6.into(), 40000, 80, SYN).frame();
    let frames: Vec<Vec<u8>> = vec![
        ethernet(0x0800),       // IPv4 ethertype, nothing after it
        v4[..14 + 12].to_vec(), // IPv4 header cut in the middle
        ethernet(0x86dd),       // IPv6 ethertype, nothing after it
        v6[..14 + 30].to_vec(), // IPv6 fixed header cut
    ];
    let before = agent.counter(COUNTER_MALFORMED_DROPPED);
    sender
        .netns
        .enter(|| {
            for frame in &frames {
                send_raw_frame("eth0", frame).expect("packet socket send");
            }
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.counter(COUNTER_MALFORMED_DROPPED) < before + frames.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "malformed counter went from {before} to {} for {} frames",
            agent.counter(COUNTER_MALFORMED_DROPPED),
            frames.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        agent.counter(COUNTER_MALFORMED_DROPPED),
        before + frames.len() as u64
    );
}
