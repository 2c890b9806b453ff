//! What a packet's outcome does: the two actions a TC program returns, and the outcomes
//! decided before policy, each counted under its own reason.
use firewall_common::*;

use crate::{maps::count, parse::ParseError};

/// Let the packet continue (TCX_NEXT / TC_ACT_UNSPEC): later programs, if any, still run
/// and the default is to pass.
pub const PASS: i32 = -1;
/// Drop the packet (TC_ACT_SHOT / TCX_DROP).
pub const DROP: i32 = 2;

/// Outcomes decided before policy; each one is counted and has a fixed action.
///
/// Four bytes wide like the `i32` of `Ok`, so that no part of a `Result<i32, Early>` is
/// left undefined: LLVM fills undefined bits from any register, which the verifier
/// rejects as a read of an uninitialised register.
#[repr(u32)]
pub enum Early {
    NonIp,
    Vlan,
    Malformed,
    HeaderChain,
    NeighborDiscovery,
    NoConfig,
    /// The source is not bound to the sending interface (deny event already emitted).
    Spoofed,
    /// A link-local or unspecified IPv6 source from a pod, other than NDP/MLD.
    LinkLocal,
    /// A local end of the packet is bound to another interface than the one it crosses.
    WrongInterface,
    /// An ICMP error that quotes no tracked flow, or whose outer addresses do not match it.
    IcmpError,
}

impl From<ParseError> for Early {
    #[inline(always)]
    fn from(error: ParseError) -> Self {
        match error {
            ParseError::NonIp => Early::NonIp,
            ParseError::Vlan => Early::Vlan,
            ParseError::Malformed => Early::Malformed,
            ParseError::HeaderChain => Early::HeaderChain,
        }
    }
}

impl Early {
    #[inline(always)]
    pub fn counted_action(self) -> i32 {
        let (counter, action) = match self {
            Early::NonIp => (COUNTER_NON_IP_PASSED, PASS),
            Early::Vlan => (COUNTER_VLAN_DROPPED, DROP),
            Early::Malformed => (COUNTER_MALFORMED_DROPPED, DROP),
            Early::HeaderChain => (COUNTER_IPV6_HEADER_CHAIN_DROPPED, DROP),
            Early::NeighborDiscovery => (COUNTER_NEIGHBOR_DISCOVERY_PASSED, PASS),
            // Fail closed: without configuration nothing is known.
            Early::NoConfig => (COUNTER_NOT_READY_DROPPED, DROP),
            Early::Spoofed => (COUNTER_SPOOFED_DROPPED, DROP),
            Early::LinkLocal => (COUNTER_LINK_LOCAL_DROPPED, DROP),
            Early::WrongInterface => (COUNTER_WRONG_INTERFACE_DROPPED, DROP),
            Early::IcmpError => (COUNTER_ICMP_ERROR_DROPPED, DROP),
        };
        count(counter);
        action
    }
}
