//! Tests of the lookup tables (the layouts are checked by the size assertions beside them).

use crate::*;

/// A config whose timeouts are all different, so an answer names its field.
fn distinct_timeouts() -> Config {
    Config {
        ct_timeout_tcp_syn_ns: 1,
        ct_timeout_tcp_established_ns: 2,
        ct_timeout_tcp_closing_ns: 3,
        ct_timeout_udp_ns: 4,
        ct_timeout_icmp_ns: 5,
        ct_timeout_other_ns: 6,
        ..Config::default()
    }
}

#[test]
fn each_protocol_and_state_lives_by_its_own_timeout() {
    let cases = [
        (IPPROTO_TCP, CT_STATE_NEW, CtTimeout::TcpSyn),
        (IPPROTO_TCP, CT_STATE_SYN_SENT, CtTimeout::TcpSyn),
        (IPPROTO_TCP, CT_STATE_ESTABLISHED, CtTimeout::TcpEstablished),
        (IPPROTO_TCP, CT_STATE_CLOSING, CtTimeout::TcpClosing),
        (IPPROTO_TCP, CT_STATE_CLOSED, CtTimeout::TcpClosing),
        (IPPROTO_TCP, 200, CtTimeout::TcpSyn),
        (IPPROTO_UDP, CT_STATE_ESTABLISHED, CtTimeout::Udp),
        (IPPROTO_SCTP, CT_STATE_ESTABLISHED, CtTimeout::Udp),
        (IPPROTO_ICMP, CT_STATE_ESTABLISHED, CtTimeout::Icmp),
        (IPPROTO_ICMPV6, CT_STATE_ESTABLISHED, CtTimeout::Icmp),
        (47, CT_STATE_ESTABLISHED, CtTimeout::Other),
        // Only TCP has states that matter.
        (IPPROTO_UDP, CT_STATE_CLOSING, CtTimeout::Udp),
    ];
    let config = distinct_timeouts();
    for (proto, state, timeout) in cases {
        assert_eq!(
            config.ct_timeout_ns(proto, state),
            config.ct_timeout_of(timeout),
            "proto {proto} state {state}: {timeout:?}"
        );
    }
}

#[test]
fn each_timeout_names_its_own_field() {
    let config = distinct_timeouts();
    let answers = CtTimeout::ALL.map(|timeout| config.ct_timeout_of(timeout));
    assert_eq!(answers, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn default_timeouts_are_the_documented_ones() {
    let defaults = CtTimeout::ALL.map(CtTimeout::default_secs);
    assert_eq!(defaults, [60, 21_600, 10, 60, 30, 60]);
}

#[test]
fn named_protocols_have_both_spellings() {
    for (number, record, policy) in PROTOCOLS {
        assert_eq!(protocol_name(number), Some(record));
        assert_eq!(protocol_policy_name(number), Some(policy));
        assert!(policy.eq_ignore_ascii_case(record), "{policy} / {record}");
    }
    assert_eq!(protocol_name(47), None);
    assert_eq!(protocol_policy_name(0), None);
    assert_eq!(protocol_name(IPPROTO_ICMPV6), Some("icmpv6"));
    assert_eq!(protocol_policy_name(IPPROTO_ICMPV6), Some("ICMPv6"));
    let with_ports: std::vec::Vec<u8> = (0..=255u8).filter(|p| protocol_has_ports(*p)).collect();
    assert_eq!(with_ports, [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP]);
}

#[test]
fn every_tcp_flag_bit_has_one_name() {
    let mut bits = 0u8;
    for (index, (bit, name)) in TCP_FLAG_NAMES.iter().enumerate() {
        assert_eq!(*bit, 1 << index, "{name} out of bit order");
        bits |= bit;
    }
    assert_eq!(bits, 0xff);
}

#[test]
fn every_counter_has_a_name_and_a_slot() {
    assert!(COUNTER_NAMES.len() as u32 <= COUNTER_MAX);
    assert_eq!(
        COUNTER_NAMES[COUNTER_UNJUDGED_EGRESS_DROPPED as usize],
        "unjudged_egress_dropped"
    );
    assert_eq!(
        COUNTER_NAMES.len(),
        COUNTER_UNJUDGED_EGRESS_DROPPED as usize + 1
    );
}
