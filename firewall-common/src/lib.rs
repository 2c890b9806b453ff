//! The ABI shared by zonewall's eBPF programs and its user space: map names and layouts,
//! event records, verdicts, reserved ids, and the protocol vocabulary both sides use.
//!
//! Everything here is `#[repr(C)]`, `Copy`, padded explicitly and free of logic beyond
//! constructors and lookup tables. A layout change must bump [`SCHEMA_VERSION`], which
//! is part of the bpffs pin path, so an agent never adopts maps whose layout it does not
//! understand.
//!
//! Addresses are 16 bytes in network order; IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`)
//! so one map serves both families.
//!
//! Every item is re-exported at the crate root; the modules only group them.
#![no_std]

#[cfg(test)]
extern crate std;

mod config;
mod conntrack;
mod counters;
mod events;
mod identity;
mod maps;
mod policy;
mod protocol;

#[cfg(feature = "user")]
mod pod;
#[cfg(test)]
mod tests;

pub use config::*;
pub use conntrack::*;
pub use counters::*;
pub use events::*;
pub use identity::*;
pub use maps::*;
pub use policy::*;
pub use protocol::*;

/// Version of the map layouts; part of the pin path (`<bpffs>/v<SCHEMA_VERSION>`).
pub const SCHEMA_VERSION: u32 = 4;

/// IPv4 address as stored in the maps (IPv4-mapped IPv6).
#[inline(always)]
pub const fn ipv4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}
