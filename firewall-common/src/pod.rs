//! `aya::Pod` for every map key and value, so user space can read and write the maps.

use crate::*;

// SAFETY: every type below is #[repr(C)], Copy, has no implicit padding (fields are
// laid out to their natural alignment and sizes are asserted) and holds plain integers.
unsafe impl aya::Pod for EndpointKey {}
// SAFETY: see above.
unsafe impl aya::Pod for EndpointValue {}
// SAFETY: see above.
unsafe impl aya::Pod for EndpointSlot {}
// SAFETY: see above.
unsafe impl aya::Pod for InterfaceValue {}
// SAFETY: see above.
unsafe impl aya::Pod for NetworkKey {}
// SAFETY: see above.
unsafe impl aya::Pod for NetworkValue {}
// SAFETY: see above.
unsafe impl aya::Pod for PolicyKey {}
// SAFETY: see above.
unsafe impl aya::Pod for PolicyValue {}
// SAFETY: see above.
unsafe impl aya::Pod for Config {}
// SAFETY: see above.
unsafe impl aya::Pod for CtKey {}
// SAFETY: see above.
unsafe impl aya::Pod for CtValue {}
// SAFETY: see above.
unsafe impl aya::Pod for FragmentKey {}
// SAFETY: see above.
unsafe impl aya::Pod for FragmentValue {}
// SAFETY: see above.
unsafe impl aya::Pod for DenyLimitValue {}
// SAFETY: see above.
unsafe impl aya::Pod for FlowEvent {}
