//! Finds a pod's host-side interface: the other end of the veth `CNI_IFNAME` in
//! `CNI_NETNS`, asked over rtnetlink inside the pod's namespace (on a thread of its own:
//! `setns` moves only the calling thread) and checked from the node's side.

use std::path::Path;

use crate::datapath::netlink_watch::{LinkQuery, get_link};

/// The pod's host-side interface: (name, ifindex) in the caller's namespace.
pub fn host_side(netns: &Path, ifname: &str) -> Result<(String, u32), String> {
    let handle = std::fs::File::open(netns).map_err(|error| {
        format!(
            "cannot open the pod's network namespace {}: {error}",
            netns.display()
        )
    })?;
    let inside = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|errno| format!("cannot enter {}: {errno}", netns.display()))?;
                get_link(LinkQuery::Name(ifname)).map_err(|error| error.to_string())
            })
            .join()
            .map_err(|_| "the namespace lookup panicked".to_string())?
    })?;
    let inside = inside.ok_or_else(|| format!("no interface {ifname} in {}", netns.display()))?;
    let peer = inside.peer.ok_or_else(|| {
        format!(
            "{ifname} in {} is not a veth: it has no peer on the node",
            netns.display()
        )
    })?;
    let host = get_link(LinkQuery::Index(peer))
        .map_err(|error| error.to_string())?
        .ok_or_else(|| {
            format!("the peer of {ifname} (index {peer}) is not in the node's network namespace")
        })?;
    // The same index may name another interface here if the peer lives elsewhere.
    if host.peer != Some(inside.index) {
        return Err(format!(
            "interface {} (index {peer}) of the node is not the peer of {ifname} in {}",
            host.name,
            netns.display()
        ));
    }
    Ok((host.name, host.index))
}
