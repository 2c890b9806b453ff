//! Fragments: a first fragment that was allowed records its ports, so later fragments
//! (which carry no L4 header) are judged as the packet they belong to.
use firewall_common::{COUNTER_FRAGMENT_PASSED, FragmentKey, FragmentValue};

use crate::{
    maps::{FRAGMENTS, count},
    parse::Packet,
};

#[inline(always)]
fn fragment_key(packet: &Packet) -> FragmentKey {
    FragmentKey {
        src: packet.src,
        dst: packet.dst,
        id: packet.fragment_id,
        proto: packet.proto,
        _pad: [0; 3],
    }
}

/// A later fragment takes the ports its first fragment recorded; false when there is none.
#[inline(never)]
pub fn later_fragment_ports(packet: &mut Packet) -> bool {
    match FRAGMENTS.get_ptr(fragment_key(packet)) {
        Some(ports) => {
            // SAFETY: pointer from a successful lookup, read at once.
            let ports = unsafe { *ports };
            packet.src_port = ports.src_port;
            packet.dst_port = ports.dst_port;
            count(COUNTER_FRAGMENT_PASSED);
            true
        }
        None => false,
    }
}

/// Records the ports of an allowed first fragment for the fragments that follow it.
#[inline(never)]
pub fn remember_fragment(packet: &Packet) {
    let ports = FragmentValue {
        src_port: packet.src_port,
        dst_port: packet.dst_port,
        _pad: 0,
    };
    let _ = FRAGMENTS.insert(fragment_key(packet), ports, 0);
}
