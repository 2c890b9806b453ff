//! The datapath's two ways of handling a packet of a tracked flow must agree: the fast path
//! (common shapes read straight from the packet) and the full pipeline (everything else:
//! IPv4 options, IPv6 extension headers, connection setup and teardown). These tests mix
//! both shapes in one flow and check the flow's accounting to the packet and the byte, that
//! an expired flow is judged again, and that the policy cache of new flows never answers
//! with a policy that is no longer in force.

use std::net::IpAddr;
use std::time::Duration;

use firewall_agent::datapath::Tuning;
use firewall_common::*;
use rand::prelude::*;
use zonewall_tests::fixtures::THREE_ZONES;
use zonewall_tests::kernel::{DROP, Kernel, PASS, drain_events as drain, privileged};
use zonewall_tests::packet::{self, ACK, FIN, SYN, Spec};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A random generator whose seed is printed, so a failure can be replayed.
fn seeded_rng() -> StdRng {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    StdRng::seed_from_u64(seed)
}

/// A dmz pod and a trusted pod of THREE_ZONES, over IPv4 and over IPv6.
fn web_and_app() -> [(IpAddr, IpAddr); 2] {
    [
        (ip("198.18.0.10"), ip("198.18.0.20")),
        (ip("2001:db8::10"), ip("2001:db8::20")),
    ]
}

/// THREE_ZONES with dmz -> trusted allowed on UDP 8080 instead of TCP.
fn udp_allowed() -> String {
    THREE_ZONES.replace("protocol: TCP, port: 8080", "protocol: UDP, port: 8080")
}

/// A frame of `spec` in a shape only the full pipeline handles: IPv4 with a four-byte
/// option (NOP padding), IPv6 with an empty destination-options header.
fn uncommon_frame(spec: &Spec) -> Vec<u8> {
    let l4 = spec.l4();
    match spec.src {
        IpAddr::V4(_) => packet::ipv4_frame(spec, &[1, 1, 1, 0], 0, &l4),
        IpAddr::V6(_) => packet::ipv6_frame(spec, &[packet::extension(60, 0)], &l4),
    }
}

/// What one direction of a flow should have been charged.
#[derive(Default, Debug, PartialEq)]
struct Charged {
    packets: u64,
    bytes: u64,
}

/// Sends a random mix of common and uncommon frames of an established flow through both
/// hooks, in both directions; returns what the flow must have been charged per direction
/// (every endpoint is local in `Kernel::apply`, so only the sender's hook counts) and how
/// many packets went through.
fn mixed_traffic(
    kernel: &mut Kernel,
    rng: &mut StdRng,
    forward: &Spec,
    reply: &Spec,
    packets: usize,
) -> ([Charged; 2], u64) {
    let mut charged = [Charged::default(), Charged::default()];
    for _ in 0..packets {
        let direction = rng.random_range(0..2);
        let mut spec = if direction == 0 {
            forward.clone()
        } else {
            reply.clone()
        };
        spec.payload = rng.random_range(0..200);
        if spec.proto == packet::TCP {
            spec.tcp_flags = if rng.random_bool(0.5) {
                ACK
            } else {
                ACK | 0x08
            };
        }
        let frame = if rng.random_bool(0.3) {
            uncommon_frame(&spec)
        } else {
            spec.frame()
        };
        // The sender's own hook (FROM_POD) counts; the receiver's (TO_POD) does not,
        // because the sender is on this node.
        let sender_hook = rng.random_bool(0.7);
        let program = if sender_hook {
            PROG_FROM_POD
        } else {
            PROG_TO_POD
        };
        assert_eq!(
            kernel.run(program, &frame),
            PASS,
            "established packet {spec:?} at {program}"
        );
        if sender_hook {
            charged[direction].packets += 1;
            charged[direction].bytes += frame.len() as u64;
        }
    }
    (charged, packets as u64)
}

#[test]
fn tcp_flows_are_accounted_the_same_on_both_paths() {
    if !privileged("tcp_flows_are_accounted_the_same_on_both_paths") {
        return;
    }
    let mut rng = seeded_rng();
    let mut kernel = Kernel::load();
    kernel.apply(THREE_ZONES);
    let mut ring = kernel.datapath.take_flow_events().unwrap();
    for (index, (web, app)) in web_and_app().into_iter().enumerate() {
        let port = 41000 + index as u16;
        let established_before = kernel.counter(COUNTER_ALLOWED_ESTABLISHED);
        let syn = Spec::tcp(web, app, port, 8080, SYN).frame();
        assert_eq!(kernel.run(PROG_FROM_POD, &syn), PASS, "SYN");
        let syn_ack = Spec::tcp(app, web, 8080, port, SYN | ACK).frame();
        assert_eq!(kernel.run(PROG_FROM_POD, &syn_ack), PASS, "SYN-ACK");
        let forward = Spec::tcp(web, app, port, 8080, ACK);
        let reply = Spec::tcp(app, web, 8080, port, ACK);
        let (mut charged, sent) = mixed_traffic(&mut kernel, &mut rng, &forward, &reply, 300);
        let fin = Spec::tcp(web, app, port, 8080, FIN | ACK).frame();
        assert_eq!(kernel.run(PROG_FROM_POD, &fin), PASS, "FIN");
        let fin_reply = Spec::tcp(app, web, 8080, port, FIN | ACK).frame();
        assert_eq!(kernel.run(PROG_FROM_POD, &fin_reply), PASS, "FIN reply");
        charged[0].packets += 2;
        charged[0].bytes += (syn.len() + fin.len()) as u64;
        charged[1].packets += 2;
        charged[1].bytes += (syn_ack.len() + fin_reply.len()) as u64;

        let events = drain(&mut ring);
        let kinds: Vec<u8> = events.iter().map(|event| event.kind).collect();
        assert_eq!(kinds, [EVENT_START, EVENT_END], "{events:?}");
        let end = &events[1];
        assert_eq!(end.flow_id, events[0].flow_id);
        let got = [
            Charged {
                packets: end.packets[0],
                bytes: end.bytes[0],
            },
            Charged {
                packets: end.packets[1],
                bytes: end.bytes[1],
            },
        ];
        assert_eq!(
            got, charged,
            "per-direction packets and bytes (forward, reply)"
        );
        assert_eq!(end.tcp_flags, SYN | ACK | FIN | 0x08);
        assert_eq!(end.tcp_flags_reply, SYN | ACK | FIN | 0x08);
        // Every packet after the SYN was a packet of a tracked flow, whichever path took it.
        assert_eq!(
            kernel.counter(COUNTER_ALLOWED_ESTABLISHED) - established_before,
            sent + 3
        );
    }
}

#[test]
fn udp_flows_are_accounted_the_same_on_both_paths() {
    if !privileged("udp_flows_are_accounted_the_same_on_both_paths") {
        return;
    }
    let mut rng = seeded_rng();
    let mut kernel = Kernel::load();
    let compiled = firewall_agent::policy::load_str(&udp_allowed()).unwrap();
    let tuning = Tuning {
        update_interval: Duration::from_millis(50),
        ..Tuning::default()
    };
    kernel.apply_compiled(compiled, &tuning);
    let mut ring = kernel.datapath.take_flow_events().unwrap();
    for (index, (web, app)) in web_and_app().into_iter().enumerate() {
        let port = 42000 + index as u16;
        let forward = Spec::udp(web, app, port, 8080);
        let reply = Spec::udp(app, web, 8080, port);
        let first = forward.frame();
        assert_eq!(kernel.run(PROG_FROM_POD, &first), PASS, "first datagram");
        let (mut charged, _) = mixed_traffic(&mut kernel, &mut rng, &forward, &reply, 300);
        // After the update interval, the next packet carries the totals in an update.
        std::thread::sleep(Duration::from_millis(80));
        let last = forward.frame();
        assert_eq!(kernel.run(PROG_FROM_POD, &last), PASS, "last datagram");
        charged[0].packets += 2;
        charged[0].bytes += (first.len() + last.len()) as u64;

        let events = drain(&mut ring);
        assert_eq!(events.first().map(|event| event.kind), Some(EVENT_START));
        let update = events.last().unwrap();
        assert_eq!(update.kind, EVENT_UPDATE, "{events:?}");
        assert_eq!(
            [update.packets, update.bytes],
            [
                [charged[0].packets, charged[1].packets],
                [charged[0].bytes, charged[1].bytes]
            ],
            "totals (forward, reply) in the last update"
        );
    }
}

#[test]
fn an_expired_flow_is_judged_again() {
    if !privileged("an_expired_flow_is_judged_again") {
        return;
    }
    let allow = udp_allowed();
    let tuning = Tuning {
        udp_timeout: Duration::from_millis(200),
        ..Tuning::default()
    };
    let mut kernel = Kernel::load();
    for (web, app) in web_and_app() {
        kernel.apply_compiled(firewall_agent::policy::load_str(&allow).unwrap(), &tuning);
        let datagram = Spec::udp(web, app, 43000, 8080).frame();
        assert_eq!(kernel.run(PROG_FROM_POD, &datagram), PASS, "allowed");
        // The policy no longer allows it: the tracked flow goes on while it is fresh...
        kernel.apply_compiled(
            firewall_agent::policy::load_str(THREE_ZONES).unwrap(),
            &tuning,
        );
        assert_eq!(kernel.run(PROG_FROM_POD, &datagram), PASS, "tracked");
        // ...and is judged again once it has been idle longer than its timeout.
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            kernel.run(PROG_FROM_POD, &datagram),
            DROP,
            "expired, denied"
        );
    }
}

#[test]
fn new_flows_always_see_the_policy_in_force() {
    if !privileged("new_flows_always_see_the_policy_in_force") {
        return;
    }
    let allowed = THREE_ZONES;
    // The dmz -> trusted rule moved to another port: 8080 falls to the default deny.
    let moved = THREE_ZONES.replace("protocol: TCP, port: 8080", "protocol: TCP, port: 9090");
    // An explicit deny of 8080 between the same zones.
    let denied = THREE_ZONES.replace("action: Allow\n---", "action: Deny\n---");
    assert_ne!(denied, THREE_ZONES);
    let mut kernel = Kernel::load();
    let (web, app) = (ip("198.18.0.10"), ip("198.18.0.20"));
    // Policies alternate between two slots; this order puts different answers in the
    // same slot, and asks the same question (zone pair, protocol, port) every time.
    let steps = [
        (allowed, PASS),
        (allowed, PASS),
        (moved.as_str(), DROP),
        (allowed, PASS),
        (denied.as_str(), DROP),
        (denied.as_str(), DROP),
        (allowed, PASS),
        (moved.as_str(), DROP),
        (moved.as_str(), DROP),
        (allowed, PASS),
    ];
    for (step, (yaml, expected)) in steps.into_iter().enumerate() {
        kernel.apply(yaml);
        for attempt in 0..3u16 {
            let port = 44000 + step as u16 * 8 + attempt;
            let frame = Spec::tcp(web, app, port, 8080, SYN).frame();
            assert_eq!(
                kernel.run(PROG_FROM_POD, &frame),
                expected,
                "step {step}, new connection {attempt}"
            );
        }
    }
}
