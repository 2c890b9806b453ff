//! Who owns an address: the reserved zone ids, and the `ENDPOINTS`, `INTERFACES` and
//! `NETWORKS` map layouts.

use core::mem::size_of;

// Reserved zone ids; user zones get ids >= FIRST_USER_ZONE_ID.
/// No identity at all (only used in events for "nothing known").
pub const ZONE_NONE: u32 = 0;
/// Any address in no zone.
pub const ZONE_WORLD: u32 = 1;
/// A pod in no zone.
pub const ZONE_UNZONED: u32 = 2;
/// Node addresses.
pub const ZONE_HOST: u32 = 3;
/// A local-interface address the agent has not identified (see `--unknown-source`).
pub const ZONE_UNKNOWN: u32 = 4;
pub const FIRST_USER_ZONE_ID: u32 = 256;

/// `ENDPOINTS` key: one IP of a pod, node or service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EndpointKey {
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<EndpointKey>() == 16);

/// The endpoint lives on this node (its packets cross one of our hooks first).
pub const ENDPOINT_FLAG_LOCAL: u32 = 1;
/// The slot holds an identity for the address (an address absent from a slot is no
/// endpoint in that policy generation).
pub const ENDPOINT_FLAG_PRESENT: u32 = 2;
/// The endpoint is a pod (only pods are bound to interfaces).
pub const ENDPOINT_FLAG_POD: u32 = 4;

/// One policy slot's view of an endpoint (see [`EndpointValue`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointSlot {
    pub zone: u32,
    /// Changes whenever the IP changes owner; 0 for "no endpoint".
    pub epoch: u32,
    /// `ENDPOINT_FLAG_*`.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<EndpointSlot>() == 16);

/// `ENDPOINTS` value: the identity owning an IP, once per policy slot.
///
/// Identities are double-buffered like `POLICY`: user space writes the identity of the
/// next generation into the inactive slot of every entry and then switches
/// `Config.active_slot`, so a packet sees the zones and the policy of one generation,
/// never a mix. The datapath reads `slots[active_slot]`.
///
/// `ifindex` binds a local pod's address to its host-side interface: a packet from a pod
/// interface whose source is not bound to that interface is spoofed and dropped. It is
/// not part of the policy (changing it cannot allow what the policy denies), so it is
/// written in place, for both slots at once. 0: not bound (not local, or not found yet).
///
/// `epoch` is stored in conntrack entries; the datapath compares it again whenever the
/// generation changes, so a reused IP never inherits its previous owner's connections.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointValue {
    pub slots: [EndpointSlot; 2],
    pub ifindex: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<EndpointValue>() == 40);

/// `INTERFACES` value, keyed by the ifindex of a pod's host-side interface: how many
/// addresses are bound to it. A source that is no endpoint at all, sent from an
/// interface that has bound addresses, is spoofed (not an unknown new pod).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InterfaceValue {
    pub bound_addresses: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<InterfaceValue>() == 8);

/// `NETWORKS` LPM key data (the LPM prefix length is carried beside it). IPv4 prefixes are
/// stored IPv4-mapped with `96 + len` bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NetworkKey {
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<NetworkKey>() == 16);

/// `NETWORKS` value: the zone of a prefix, once per policy slot (double-buffered like
/// `ENDPOINTS`). A prefix that exists in one slot only holds, in the other slot, the
/// answer that slot's own prefixes give for it (the zone of the longest prefix covering
/// it there, or `ZONE_WORLD`), so the longest match answers correctly in both slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NetworkValue {
    pub zone: [u32; 2],
}
const _: () = assert!(size_of::<NetworkValue>() == 8);
