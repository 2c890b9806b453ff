//! Decisions: verdicts, reserved rule ids, and the `POLICY` and `POLICY_CACHE` map
//! layouts.

use core::mem::size_of;

pub const VERDICT_ALLOW: u8 = 1;
pub const VERDICT_DENY: u8 = 2;

/// No rule (e.g. a packet that was not judged by policy).
pub const RULE_NONE: u32 = 0;
/// The default: traffic inside one zone is allowed.
pub const RULE_DEFAULT_INTRA_ALLOW: u32 = 1;
/// The default: traffic between zones is denied.
pub const RULE_DEFAULT_INTER_DENY: u32 = 2;
/// `--unknown-source` decided.
pub const RULE_UNKNOWN_SOURCE: u32 = 3;
/// A non-first fragment whose first fragment was never seen or was denied.
pub const RULE_FRAGMENT: u32 = 4;
/// A connection to a Service address whose pods span several zones: passed at the
/// client's interface, judged at the destination pod's interface after the DNAT.
pub const RULE_SERVICE_DEFERRED: u32 = 5;
/// The source address is not one of the sending interface's addresses (anti-spoofing).
pub const RULE_SPOOFED: u32 = 6;
/// The uplink saw a packet forwarded from a local interface that no zonewall program
/// judged (an interface the programs were not attached to yet).
pub const RULE_UNJUDGED_EGRESS: u32 = 7;
/// Compiled policies get rule ids >= FIRST_USER_RULE_ID.
pub const FIRST_USER_RULE_ID: u32 = 16;

/// `POLICY` LPM key data. All fields are big-endian so that bit prefixes make sense:
/// `slot | src_zone | dst_zone | proto | pad | port`.
///
/// For every zone pair it knows, the compiler covers (proto, port) with the fewest nested
/// prefixes whose longest match gives each port its decision, so the longest-prefix match
/// is the answer, in one lookup, whatever the number of rules.
/// `slot` lets a new policy be written beside the active one and switched on atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyKey {
    pub slot: [u8; 4],
    pub src_zone: [u8; 4],
    pub dst_zone: [u8; 4],
    pub proto: u8,
    pub _pad: u8,
    pub port: [u8; 2],
}
const _: () = assert!(size_of::<PolicyKey>() == 16);

/// Prefix length covering slot and zone pair: the pair's entry for every other protocol.
pub const POLICY_PREFIX_PAIR: u32 = 96;
/// Prefix length covering slot, pair, protocol and pad: every port of one protocol.
pub const POLICY_PREFIX_PROTO: u32 = 112;
/// Full key (one port).
pub const POLICY_PREFIX_FULL: u32 = 128;

impl PolicyKey {
    #[inline(always)]
    pub const fn new(slot: u32, src_zone: u32, dst_zone: u32, proto: u8, port: u16) -> Self {
        Self {
            slot: slot.to_be_bytes(),
            src_zone: src_zone.to_be_bytes(),
            dst_zone: dst_zone.to_be_bytes(),
            proto,
            _pad: 0,
            port: port.to_be_bytes(),
        }
    }
}

/// `POLICY` value: the enforced verdict and, when an `Audit` policy would deny what is
/// enforced as allowed, the audit rule to report.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyValue {
    pub verdict: u8,
    /// 1: an Audit-mode policy would deny this; log it, drop nothing.
    pub audit: u8,
    pub _pad: [u8; 2],
    pub rule: u32,
    pub audit_rule: u32,
    pub _pad2: u32,
}
const _: () = assert!(size_of::<PolicyValue>() == 16);

/// `POLICY_CACHE` key: one (zone pair, protocol, port) question asked of `POLICY` in one
/// policy generation and slot. The datapath remembers the answer of the trie there (an
/// exact-match hash lookup costs a fraction of an LPM lookup), so a new flow asks the trie
/// only for a question not seen since the policy last changed.
///
/// Sound because of an invariant of user space: what a slot holds never changes while
/// `Config.generation` stays the same (a policy change is written into the other slot and
/// switched on together with a new generation). Both generation and slot are in the key,
/// so a reader that sees a half-written `CONFIG` during a switch caches under a
/// combination no consistent reader asks for. The generation only grows while the pinned
/// maps exist (it continues from the pinned `CONFIG`), and removing the pins removes the
/// cache with them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyCacheKey {
    pub generation: u32,
    pub src_zone: u32,
    pub dst_zone: u32,
    pub proto: u8,
    pub slot: u8,
    pub port: u16,
}
const _: () = assert!(size_of::<PolicyCacheKey>() == 16);

/// A `POLICY_CACHE` value whose verdict is this says the trie had no entry (the default
/// for the pair applies).
pub const VERDICT_NONE: u8 = 0;
