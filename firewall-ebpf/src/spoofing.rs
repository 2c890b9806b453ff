//! Anti-spoofing: which pod interface may send (and receive) which addresses.
use crate::{identity, scratch::Run};

/// Anti-spoofing on a pod's own hook: the source must be bound to this interface. An
/// address the agent has not bound yet is left to `--unknown-source` (see `policy::new_flow`)
/// unless this interface already has bound addresses, in which case the pod is known and
/// the address is not its own.
#[inline(never)]
pub fn source_is_spoofed(run: &Run) -> bool {
    let source = &run.src_endpoint;
    if source.is_local() && source.ifindex == run.ifindex {
        false
    } else if source.is_local() && source.ifindex == 0 || !source.present() {
        identity::interface_has_bindings(run.ifindex)
    } else {
        // A node, a Service, a remote pod or a pod bound to another interface.
        true
    }
}

/// On a receiving hook: a local sender must have entered the node on its own interface,
/// and a local receiver must be this interface's pod.
#[inline(always)]
pub fn crosses_wrong_interface(run: &Run) -> bool {
    let (sender, receiver) = (&run.src_endpoint, &run.dst_endpoint);
    let sender_elsewhere =
        sender.is_local() && sender.ifindex != 0 && sender.ifindex != run.ingress_ifindex;
    let receiver_elsewhere =
        receiver.is_local() && receiver.ifindex != 0 && receiver.ifindex != run.ifindex;
    sender_elsewhere || receiver_elsewhere
}
