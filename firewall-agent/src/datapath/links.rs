//! Attachments: one TCX link per direction on each pod interface, pinned under
//! `<pin_dir>/links` so enforcement survives the agent. Pin files are named
//! `<ifname>@<ifindex>@<direction>@<nonce>` with dots of the interface name written as
//! colons (bpffs refuses names with dots; interface names never contain colons): a new
//! link is attached in front of the old one
//! and pinned under a new nonce before the old one is removed, so replacing a program (a
//! restarted or upgraded agent) never leaves an interface without one.

use std::path::{Path, PathBuf};

use aya::programs::{
    LinkOrder, SchedClassifier,
    links::{FdLink, PinnedLink},
    tc::{TcAttachOptions, TcAttachType},
};
use firewall_common::{PROG_FROM_POD, PROG_TO_POD};

use super::{Datapath, DatapathError};

/// What this agent attached to one interface.
#[derive(Debug, Clone)]
pub struct AttachedInterface {
    pub ifindex: u32,
    pub pins: Vec<PathBuf>,
}

const DIRECTIONS: [(&str, TcAttachType, &str); 2] = [
    (PROG_FROM_POD, TcAttachType::Ingress, "ingress"),
    (PROG_TO_POD, TcAttachType::Egress, "egress"),
];

/// A parsed pin file name.
struct PinName {
    ifname: String,
    ifindex: u32,
    direction: String,
}

fn pin_name(ifname: &str, ifindex: u32, direction: &str, nonce: u128) -> String {
    format!("{}@{ifindex}@{direction}@{nonce}", ifname.replace('.', ":"))
}

fn parse_pin_name(file_name: &str) -> Option<PinName> {
    // An interface name may itself contain '@', so split from the right.
    let mut parts = file_name.rsplitn(4, '@');
    let _nonce = parts.next()?;
    let direction = parts.next()?.to_owned();
    let ifindex = parts.next()?.parse().ok()?;
    let ifname = parts.next()?.replace(':', ".");
    Some(PinName {
        ifname,
        ifindex,
        direction,
    })
}

fn pins(links_dir: &Path) -> Vec<(PathBuf, PinName)> {
    let Ok(entries) = std::fs::read_dir(links_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            Some((entry.path(), parse_pin_name(&name)?))
        })
        .collect()
}

/// Interfaces of the current network namespace: (name, index).
pub fn interfaces() -> Vec<(String, u32)> {
    match nix::net::if_::if_nameindex() {
        Ok(list) => list
            .iter()
            .filter_map(|interface| {
                Some((
                    interface.name().to_str().ok()?.to_owned(),
                    interface.index(),
                ))
            })
            .collect(),
        Err(errno) => {
            tracing::warn!(%errno, "cannot list interfaces");
            Vec::new()
        }
    }
}

fn unpin(path: &Path) {
    match PinnedLink::from_pin(path) {
        // Dropping the unpinned link releases it: the program leaves that hook.
        Ok(link) => match link.unpin() {
            Ok(link) => drop(link),
            Err(error) => tracing::warn!(path = %path.display(), %error, "cannot unpin link"),
        },
        Err(_) => {
            // A link whose interface vanished, or a stray file: just remove it.
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Datapath {
    fn links_dir(&self) -> PathBuf {
        self.pin_dir.join("links")
    }

    /// Attaches both programs to `ifname`, replacing (without a gap) whatever an earlier
    /// agent pinned there.
    pub fn attach(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default();
        let links_dir = self.links_dir();
        let existing = pins(&links_dir);
        let mut new_pins = Vec::new();
        for (program_name, attach_type, direction) in DIRECTIONS {
            let attach_error = |reason: String| DatapathError::Attach {
                interface: ifname.to_owned(),
                reason,
            };
            let program: &mut SchedClassifier = self
                .ebpf
                .program_mut(program_name)
                .and_then(|program| program.try_into().ok())
                .ok_or_else(|| attach_error(format!("program {program_name} not loaded")))?;
            let link_id = program
                .attach_with_options(
                    ifname,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .map_err(|error| attach_error(format!("attach {direction}: {error}")))?;
            let link = program
                .take_link(link_id)
                .map_err(|error| attach_error(format!("take link {direction}: {error}")))?;
            let link: FdLink = link.try_into().map_err(|error| {
                attach_error(format!("link {direction} is not a TCX link: {error}"))
            })?;
            let pin_path = links_dir.join(pin_name(ifname, ifindex, direction, nonce));
            link.pin(&pin_path)
                .map_err(|error| attach_error(format!("pin {}: {error:?}", pin_path.display())))?;
            // The new link runs first; now the old ones of this hook can go.
            for (path, pin) in &existing {
                if pin.ifname == ifname && pin.ifindex == ifindex && pin.direction == direction {
                    unpin(path);
                }
            }
            new_pins.push(pin_path);
        }
        tracing::info!(interface = ifname, ifindex, "attached");
        self.interfaces.insert(
            ifname.to_owned(),
            super::AttachedInterface {
                ifindex,
                pins: new_pins,
            },
        );
        Ok(())
    }

    /// Whether this agent attached `ifname` with this index.
    pub fn is_attached(&self, ifname: &str, ifindex: u32) -> bool {
        self.interfaces
            .get(ifname)
            .is_some_and(|attached| attached.ifindex == ifindex)
    }

    /// Forgets interfaces that vanished and removes pins of interfaces that no longer exist
    /// or are no longer wanted. `wanted` holds (name, index) of interfaces to keep.
    pub fn prune(&mut self, wanted: &[(String, u32)]) {
        let keep = |name: &str, index: u32| wanted.iter().any(|(n, i)| n == name && *i == index);
        self.interfaces
            .retain(|name, attached| keep(name, attached.ifindex));
        for (path, pin) in pins(&self.links_dir()) {
            if !keep(&pin.ifname, pin.ifindex) {
                tracing::info!(interface = %pin.ifname, ifindex = pin.ifindex, "detached (gone or no longer matched)");
                unpin(&path);
            }
        }
    }
}

/// Removes everything zonewall pinned under `bpffs_root`: links first (programs leave the
/// interfaces), then maps. Used by `firewall-agent detach`.
pub fn detach_all(bpffs_root: &Path) -> std::io::Result<usize> {
    let pin_dir = super::bpffs::versioned(bpffs_root);
    let mut removed = 0;
    for (path, _) in pins(&pin_dir.join("links")) {
        unpin(&path);
        removed += 1;
    }
    let _ = std::fs::remove_dir(pin_dir.join("links"));
    if let Ok(entries) = std::fs::read_dir(&pin_dir) {
        for entry in entries.flatten() {
            std::fs::remove_file(entry.path())?;
        }
    }
    match std::fs::remove_dir(&pin_dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip_without_dots() {
        let name = pin_name("veth.a@b", 12, "ingress", 99);
        assert!(!name.contains('.'), "{name}");
        let pin = parse_pin_name(&name).unwrap();
        assert_eq!(pin.ifname, "veth.a@b");
        assert_eq!(pin.ifindex, 12);
        assert_eq!(pin.direction, "ingress");
        assert!(parse_pin_name("garbage").is_none());
        assert!(parse_pin_name("veth0@notanumber@ingress@1").is_none());
    }
}
