//! The protocol vocabulary of kernel and user space: IP protocol numbers, their names as
//! flow records and policies spell them, and TCP flag bits with their names.

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

/// The protocols zonewall knows by name, in the order policies list them: (number, name in
/// flow records, name in a policy's `ports[].protocol`). Any other protocol is written as
/// its number and is selected by no port rule.
pub const PROTOCOLS: [(u8, &str, &str); 5] = [
    (IPPROTO_TCP, "tcp", "TCP"),
    (IPPROTO_UDP, "udp", "UDP"),
    (IPPROTO_SCTP, "sctp", "SCTP"),
    (IPPROTO_ICMP, "icmp", "ICMP"),
    (IPPROTO_ICMPV6, "icmpv6", "ICMPv6"),
];

/// The position of `proto` in [`PROTOCOLS`].
pub const fn protocol_index(proto: u8) -> Option<usize> {
    let mut index = 0;
    while index < PROTOCOLS.len() {
        if PROTOCOLS[index].0 == proto {
            return Some(index);
        }
        index += 1;
    }
    None
}

/// The name of `proto` in flow records (`tcp`, `icmpv6`), if it has one.
pub const fn protocol_name(proto: u8) -> Option<&'static str> {
    match protocol_index(proto) {
        Some(index) => Some(PROTOCOLS[index].1),
        None => None,
    }
}

/// The name of `proto` in policies (`TCP`, `ICMPv6`), if it has one.
pub const fn protocol_policy_name(proto: u8) -> Option<&'static str> {
    match protocol_index(proto) {
        Some(index) => Some(PROTOCOLS[index].2),
        None => None,
    }
}

/// Whether `proto` has ports that policies select and conntrack keys carry (ICMP echo
/// carries its identifier instead, which no policy selects).
#[inline(always)]
pub const fn protocol_has_ports(proto: u8) -> bool {
    matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

/// Every TCP flag bit with its name in flow records, in bit order.
pub const TCP_FLAG_NAMES: [(u8, &str); 8] = [
    (TCP_FIN, "FIN"),
    (TCP_SYN, "SYN"),
    (TCP_RST, "RST"),
    (TCP_PSH, "PSH"),
    (TCP_ACK, "ACK"),
    (TCP_URG, "URG"),
    (TCP_ECE, "ECE"),
    (TCP_CWR, "CWR"),
];
