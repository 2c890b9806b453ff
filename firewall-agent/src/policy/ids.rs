//! Stable ids of user zones: a hash of the name, above the reserved ids. The compiler
//! assigns them and the validator refuses two names with one id; this module depends on
//! nothing else in `policy`.

use firewall_common::FIRST_USER_ZONE_ID;

/// Stable id of a user zone: FNV-1a (32 bits) of its name, moved above the reserved ids.
/// Stable across restarts, so kernel state survives an agent restart.
pub fn zone_id(name: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    above_reserved(hash)
}

/// Moves a hash out of the reserved id range.
pub(super) fn above_reserved(hash: u32) -> u32 {
    if hash < FIRST_USER_ZONE_ID {
        hash + FIRST_USER_ZONE_ID
    } else {
        hash
    }
}
