//! Verdicts of the real eBPF programs through BPF_PROG_TEST_RUN, with policy written by the
//! agent's own compiler and sync.

use std::net::IpAddr;

use firewall_common::*;
use zonewall_tests::fixtures::THREE_ZONES as POLICY;
use zonewall_tests::kernel::{DROP, Kernel, PASS, drain_events as drain, privileged};
use zonewall_tests::packet::{self, ACK, FIN, SYN, Spec};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn zone_verdicts_through_test_run() {
    if !privileged("zone_verdicts_through_test_run") {
        return;
    }
    let mut kernel = Kernel::load();
    kernel.apply(POLICY);
    let web = ip("198.18.0.10");
    let web2 = ip("198.18.0.11");
    let app = ip("198.18.0.20");
    let db = ip("198.18.0.30");
    let partner = ip("203.0.113.7");

    // Intra-zone allowed by default.
    let frame = Spec::tcp(web, web2, 40000, 80, SYN).frame();
    assert_eq!(kernel.run(PROG_FROM_POD, &frame), PASS, "dmz -> dmz");
    // The allowed port, and only it.
    let frame = Spec::tcp(web, app, 40001, 8080, SYN).frame();
    assert_eq!(
        kernel.run(PROG_FROM_POD, &frame),
        PASS,
        "dmz -> trusted:8080"
    );
    let frame = Spec::tcp(web, app, 40002, 8081, SYN).frame();
    assert_eq!(
        kernel.run(PROG_FROM_POD, &frame),
        DROP,
        "dmz -> trusted:8081"
    );
    // The reply of the allowed connection passes although trusted may not initiate to dmz.
    let frame = Spec::tcp(app, web, 8080, 40001, SYN | ACK).frame();
    assert_eq!(
        kernel.run(PROG_FROM_POD, &frame),
        PASS,
        "reply trusted -> dmz"
    );
    let frame = Spec::tcp(app, web, 40003, 80, SYN).frame();
    assert_eq!(
        kernel.run(PROG_FROM_POD, &frame),
        DROP,
        "trusted -> dmz new"
    );
    // Inter-zone default deny, world default deny, CIDR zone allowed on 443.
    let frame = Spec::tcp(app, db, 40004, 5432, SYN).frame();
    assert_eq!(
        kernel.run(PROG_FROM_POD, &frame),
        DROP,
        "trusted -> restricted"
    );
    let frame = Spec::tcp(app, ip("198.51.100.1"), 40005, 443, SYN).frame();
    assert_eq!(kernel.run(PROG_FROM_POD, &frame), DROP, "trusted -> world");
    let frame = Spec::tcp(app, partner, 40006, 443, SYN).frame();
    assert_eq!(
        kernel.run(PROG_FROM_POD, &frame),
        PASS,
        "trusted -> partners:443"
    );
    let frame = Spec::echo_request(app, partner, 7).frame();
    assert_eq!(
        kernel.run(PROG_FROM_POD, &frame),
        PASS,
        "trusted -> partners icmp"
    );
    let frame = Spec::echo_reply(partner, app, 7).frame();
    assert_eq!(kernel.run(PROG_TO_POD, &frame), PASS, "icmp echo reply");
    // IPv6.
    let frame = Spec::tcp(ip("2001:db8::10"), ip("2001:db8::20"), 40007, 8080, SYN).frame();
    assert_eq!(
        kernel.run(PROG_FROM_POD, &frame),
        PASS,
        "v6 dmz -> trusted:8080"
    );
    let frame = Spec::tcp(ip("2001:db8::10"), ip("2001:db8::20"), 40008, 22, SYN).frame();
    assert_eq!(
        kernel.run(PROG_FROM_POD, &frame),
        DROP,
        "v6 dmz -> trusted:22"
    );
    let frame = Spec::tcp(ip("2001:db8::20"), ip("2001:db8:ffff::1"), 40009, 443, SYN).frame();
    assert_eq!(
        kernel.run(PROG_FROM_POD, &frame),
        PASS,
        "v6 trusted -> partners:443"
    );
    // An address that is nobody's, sent from an interface whose pods are known (every
    // pod of a test run is bound to its one interface): spoofed, dropped.
    let frame = Spec::tcp(ip("198.18.9.9"), web, 40010, 80, SYN).frame();
    assert_eq!(kernel.run(PROG_FROM_POD, &frame), DROP, "unknown source");
    assert!(kernel.counter(COUNTER_SPOOFED_DROPPED) >= 1);
    // TCP close: FIN both ways ends the flow.
    let frame = Spec::tcp(web, app, 40001, 8080, FIN | ACK).frame();
    assert_eq!(kernel.run(PROG_FROM_POD, &frame), PASS);
    let frame = packet::Spec::tcp(app, web, 8080, 40001, FIN | ACK).frame();
    assert_eq!(kernel.run(PROG_FROM_POD, &frame), PASS);
}

#[test]
fn deny_events_are_rate_limited_per_source_and_counted() {
    if !privileged("deny_events_are_rate_limited_per_source_and_counted") {
        return;
    }
    let mut kernel = Kernel::load();
    kernel.apply(POLICY);
    let mut ring = kernel.datapath.take_flow_events().unwrap();
    drain(&mut ring);
    let (web, db) = (ip("198.18.0.10"), ip("198.18.0.30"));
    for port in 0..100u16 {
        let frame = Spec::tcp(web, db, 30000 + port, 5432, SYN).frame();
        assert_eq!(kernel.run(PROG_FROM_POD, &frame), DROP);
    }
    // Another source is limited separately.
    let frame = Spec::tcp(ip("198.18.0.11"), db, 30000, 5432, SYN).frame();
    assert_eq!(kernel.run(PROG_FROM_POD, &frame), DROP);
    let events = drain(&mut ring);
    let from_web: Vec<_> = events
        .iter()
        .filter(|event| event.src_addr[12..] == [198, 18, 0, 10])
        .collect();
    let from_web2 = events
        .iter()
        .filter(|event| event.src_addr[12..] == [198, 18, 0, 11])
        .count();
    assert_eq!(
        from_web.len(),
        10,
        "default: 10 deny events per source and second"
    );
    assert!(
        from_web
            .iter()
            .all(|event| event.kind == EVENT_DENY && event.rule == RULE_DEFAULT_INTER_DENY)
    );
    assert_eq!(from_web2, 1);
    assert_eq!(kernel.counter(COUNTER_DENY_EVENTS_SUPPRESSED), 90);
    assert_eq!(
        kernel.counter(COUNTER_DENIED_DEFAULT),
        101,
        "every packet is counted, logged or not"
    );
}

#[test]
fn ring_buffer_overflow_is_counted_exactly() {
    if !privileged("ring_buffer_overflow_is_counted_exactly") {
        return;
    }
    let mut kernel = Kernel::load();
    kernel.apply(POLICY);
    let mut ring = kernel.datapath.take_flow_events().unwrap();
    drain(&mut ring);
    // Unknown sources, each one new: one deny event per packet, no rate limit applies.
    // 8 MiB of ring holds ~61 000 events of 128 + 8 bytes; send more without draining.
    let sent = 70_000u32;
    let web = ip("198.18.0.10");
    for index in 0..sent {
        let source = IpAddr::from([198, 19, (index >> 8) as u8, index as u8]);
        let source = if index >= 65_536 {
            IpAddr::from([198, 20, (index >> 8) as u8, index as u8])
        } else {
            source
        };
        let frame = Spec::tcp(source, web, 1000, 80, SYN).frame();
        assert_eq!(kernel.run(PROG_TO_POD, &frame), DROP);
    }
    let delivered = drain(&mut ring).len() as u64;
    let lost = kernel.counter(COUNTER_RINGBUF_FULL);
    let suppressed = kernel.counter(COUNTER_DENY_EVENTS_SUPPRESSED);
    assert!(
        lost > 0,
        "the ring buffer must have overflowed ({delivered} delivered)"
    );
    assert_eq!(
        delivered + lost + suppressed,
        sent as u64,
        "every event is delivered or counted as lost: delivered {delivered}, lost {lost}, suppressed {suppressed}"
    );
}

#[test]
fn long_flows_report_periodic_updates_with_the_same_flow_id() {
    if !privileged("long_flows_report_periodic_updates_with_the_same_flow_id") {
        return;
    }
    let mut kernel = Kernel::load();
    let compiled = firewall_agent::policy::load_str(POLICY).unwrap();
    let tuning = firewall_agent::datapath::Tuning {
        update_interval: std::time::Duration::from_millis(20),
        ..Default::default()
    };
    kernel.apply_compiled(compiled, &tuning);
    let mut ring = kernel.datapath.take_flow_events().unwrap();
    let (web, app) = (ip("198.18.0.10"), ip("198.18.0.20"));
    assert_eq!(
        kernel.run(
            PROG_FROM_POD,
            &Spec::tcp(web, app, 45000, 8080, SYN).frame()
        ),
        PASS
    );
    assert_eq!(
        kernel.run(
            PROG_FROM_POD,
            &Spec::tcp(app, web, 8080, 45000, SYN | ACK).frame()
        ),
        PASS
    );
    // Within the interval: no update.
    assert_eq!(
        kernel.run(
            PROG_FROM_POD,
            &Spec::tcp(web, app, 45000, 8080, ACK).frame()
        ),
        PASS
    );
    std::thread::sleep(std::time::Duration::from_millis(40));
    assert_eq!(
        kernel.run(
            PROG_FROM_POD,
            &Spec::tcp(web, app, 45000, 8080, ACK).frame()
        ),
        PASS
    );
    let events = drain(&mut ring);
    let kinds: Vec<u8> = events.iter().map(|event| event.kind).collect();
    assert_eq!(kinds, [EVENT_START, EVENT_UPDATE], "{events:?}");
    assert_eq!(events[0].flow_id, events[1].flow_id);
    assert_eq!(
        events[1].packets,
        [3, 1],
        "three packets forward, one reply"
    );
    assert_eq!(events[1].tcp_flags, SYN | ACK);
    assert_eq!(events[1].tcp_flags_reply, SYN | ACK);
}
