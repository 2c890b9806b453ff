//! Pod links handed between the CNI plugin (`zonewall-cni`) and the agent.
//!
//! The agent pins its loaded pod programs under `<pin_dir>/programs/<name>`. The plugin,
//! run by the container runtime before the pod's containers start, attaches those very
//! programs (and so the agent's pinned maps) to the pod's host-side interface and pins
//! the links under `<pin_dir>/links` with the agent's own naming. The agent then finds
//! links that run its own programs (same program ids) and adopts them as they are: no
//! second attach, no gap. Links of another program (an earlier agent's) are replaced as
//! before, the new one in front.
//!
//! Both sides take an exclusive `flock` on the links folder while they attach, adopt or
//! prune, so neither acts on a half-made attach of the other (the agent would otherwise
//! prune a pin made between its interface listing and its pruning).

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use aya::programs::{
    LinkOrder, SchedClassifier,
    links::FdLink,
    tc::{NlOptions, TcAttachOptions},
};
use firewall_common::{Config, MAP_CONFIG, PROG_FROM_POD, PROG_TO_POD};

use super::uplink::pinned_program_id;
use super::{
    AttachMode, AttachedInterface, DIRECTIONS, Hook, TC_HANDLE, TC_PRIORITY, is_errno, pin_name,
    pins_in, prepare_clsact, record_name, record_tc_filter, tc_dir, unpin,
};
use crate::datapath::{Datapath, DatapathError, bpffs};

/// Where the agent pins the programs the plugin attaches.
fn programs_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("programs")
}

/// An exclusive lock on the pod links' pin folder, released when dropped.
pub struct LinksLock {
    _folder: OwnedFd,
}

/// Takes the lock on `links_dir`, waiting for the other side to finish.
fn lock(links_dir: &Path) -> std::io::Result<LinksLock> {
    let folder: OwnedFd = std::fs::File::open(links_dir)?.into();
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(folder.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(LinksLock { _folder: folder });
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

impl Datapath {
    /// Pins the pod programs for the CNI plugin, replacing an earlier agent's pins in one
    /// step each (a rename), so the plugin always finds a loaded program.
    pub fn pin_programs(&mut self) -> Result<(), DatapathError> {
        let dir = programs_dir(&self.pin_dir);
        let error = |reason: String| DatapathError::Bpffs {
            path: dir.clone(),
            reason,
        };
        std::fs::create_dir_all(&dir)
            .map_err(|source| error(format!("cannot create it: {source}")))?;
        for (name, _, _) in DIRECTIONS {
            let program = self.classifier(name).ok_or(DatapathError::Program {
                name,
                source: aya::programs::ProgramError::NotLoaded,
            })?;
            let temporary = dir.join(format!("{name}@new"));
            let _ = std::fs::remove_file(&temporary);
            program
                .pin(&temporary)
                .map_err(|pin| error(format!("pinning {name}: {pin}")))?;
            std::fs::rename(&temporary, dir.join(name))
                .map_err(|rename| error(format!("replacing the pin of {name}: {rename}")))?;
        }
        Ok(())
    }

    /// Takes the lock the CNI plugin takes too (`None`, logged, if the folder cannot be
    /// opened: the attach or prune that follows reports its own error then).
    pub fn lock_links(&self) -> Option<LinksLock> {
        match lock(&self.links_dir()) {
            Ok(lock) => Some(lock),
            Err(error) => {
                tracing::warn!(path = %self.links_dir().display(), %error, "cannot lock the links folder");
                None
            }
        }
    }

    /// Adopts the links of `ifname` if both directions run this agent's own programs
    /// (the CNI plugin attached them): they stay as they are. Only for TCX links; a TC
    /// filter is replaced in place anyway.
    pub(super) fn adopt(&mut self, ifname: &str, ifindex: u32) -> Option<Hook> {
        if self.attach_mode == AttachMode::Tc {
            return None;
        }
        let pins = pins_in(&self.links_dir());
        let mut adopted = Vec::new();
        for (program_name, _, direction) in DIRECTIONS {
            let own = self.classifier(program_name)?.info().ok()?.id();
            let mut found = pins.iter().filter(|(_, pin)| {
                pin.ifname == ifname && pin.ifindex == ifindex && pin.direction == direction
            });
            // One link per direction, running this agent's program.
            let (path, _) = found.next()?;
            if found.next().is_some() || pinned_program_id(path) != Some(own) {
                return None;
            }
            adopted.push(path.clone());
        }
        tracing::info!(
            interface = ifname,
            ifindex,
            hook = Hook::Tcx.as_str(),
            "adopted the links the CNI plugin attached"
        );
        self.interfaces.insert(
            ifname.to_owned(),
            AttachedInterface {
                ifindex,
                hook: Hook::Tcx,
                pins: adopted,
            },
        );
        Some(Hook::Tcx)
    }
}

/// Why the CNI plugin could not attach.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The agent has not pinned its programs or enforced a policy yet: worth retrying.
    #[error("{0}")]
    NotReady(String),
    #[error("interface {interface}: {reason}")]
    Attach { interface: String, reason: String },
}

/// What the plugin's attach found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// The agent's programs were attached now.
    Attached(Hook),
    /// They were attached already (the agent was quicker): nothing done.
    AlreadyAttached,
}

/// The pinned program `name`, or why the plugin cannot use it yet.
fn pinned_program(pin_dir: &Path, name: &str) -> Result<SchedClassifier, HandoffError> {
    let path = programs_dir(pin_dir).join(name);
    SchedClassifier::from_pin(&path).map_err(|error| {
        HandoffError::NotReady(format!(
            "no zonewall program pinned at {} ({error}): is the zonewall agent running on \
             this node with this bpffs folder?",
            path.display()
        ))
    })
}

/// Checks that the agent enforced a policy: until then the datapath drops every new flow.
fn check_policy_enforced(pin_dir: &Path) -> Result<(), HandoffError> {
    let path = pin_dir.join(MAP_CONFIG);
    let not_ready = |why: String| HandoffError::NotReady(format!("{}: {why}", path.display()));
    let data = aya::maps::MapData::from_pin(&path).map_err(|error| {
        not_ready(format!(
            "no pinned policy ({error}); the agent has not run on this node"
        ))
    })?;
    let config: aya::maps::Array<_, Config> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data))
            .map_err(|error| not_ready(error.to_string()))?;
    let current = config
        .get(&0, 0)
        .map_err(|error| not_ready(error.to_string()))?;
    if current.ready == 0 {
        return Err(not_ready("the agent has not enforced a policy yet".into()));
    }
    Ok(())
}

/// The CNI plugin's attach: puts the agent's pinned pod programs on `ifname`, pinned so
/// the agent adopts them, unless they run there already. `mode` as `--attach-mode`.
pub fn attach_pinned(
    bpffs_root: &Path,
    ifname: &str,
    mode: AttachMode,
) -> Result<Handoff, HandoffError> {
    let pin_dir = bpffs::versioned(bpffs_root);
    let attach_error = |reason: String| HandoffError::Attach {
        interface: ifname.to_owned(),
        reason,
    };
    let mut programs: Programs = Vec::new();
    for (name, attach_type, direction) in DIRECTIONS {
        programs.push((pinned_program(&pin_dir, name)?, attach_type, direction));
    }
    check_policy_enforced(&pin_dir)?;
    let links_dir = pin_dir.join("links");
    let _lock = lock(&links_dir).map_err(|error| {
        HandoffError::NotReady(format!("locking {}: {error}", links_dir.display()))
    })?;
    let ifindex = nix::net::if_::if_nametoindex(ifname)
        .map_err(|errno| attach_error(format!("no such interface in this namespace ({errno})")))?;
    let mut current = 0;
    for (program, _, direction) in &programs {
        let own = program.info().ok().map(|info| info.id());
        if pins_in(&links_dir).iter().any(|(path, pin)| {
            pin.ifname == ifname
                && pin.ifindex == ifindex
                && pin.direction == *direction
                && own.is_some()
                && pinned_program_id(path) == own
        }) {
            current += 1;
        }
    }
    if current == programs.len() {
        return Ok(Handoff::AlreadyAttached);
    }
    let tcx = match mode {
        AttachMode::Tc => None,
        AttachMode::Tcx | AttachMode::Auto => {
            Some(attach_tcx(&links_dir, ifname, ifindex, &mut programs))
        }
    };
    match tcx {
        Some(Ok(())) => Ok(Handoff::Attached(Hook::Tcx)),
        Some(Err(error)) if mode == AttachMode::Tcx => Err(attach_error(error)),
        Some(Err(tcx_error)) => attach_tc(&pin_dir, ifname, ifindex, &mut programs)
            .map(|()| Handoff::Attached(Hook::Tc))
            .map_err(|tc_error| {
                attach_error(format!("TCX: {tcx_error}; clsact fallback: {tc_error}"))
            }),
        None => attach_tc(&pin_dir, ifname, ifindex, &mut programs)
            .map(|()| Handoff::Attached(Hook::Tc))
            .map_err(attach_error),
    }
}

type Programs = Vec<(
    SchedClassifier,
    aya::programs::tc::TcAttachType,
    &'static str,
)>;

fn attach_tcx(
    links_dir: &Path,
    ifname: &str,
    ifindex: u32,
    programs: &mut Programs,
) -> Result<(), String> {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    let earlier = pins_in(links_dir);
    // Ingress first: what the pod sends is judged as early as possible. (Each TCX attach
    // waits for an RCU grace period under the RTNL lock, so the two cannot overlap.)
    for (program, attach_type, direction) in programs.iter_mut() {
        let link_id = program
            .attach_with_options(
                ifname,
                *attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .map_err(|error| format!("TCX attach {direction}: {error}"))?;
        let link: FdLink = program
            .take_link(link_id)
            .map_err(|error| format!("take link {direction}: {error}"))?
            .try_into()
            .map_err(|error| format!("link {direction} is not a TCX link: {error}"))?;
        let path = links_dir.join(pin_name(ifname, ifindex, direction, nonce));
        link.pin(&path)
            .map_err(|error| format!("pin {}: {error}", path.display()))?;
        // In front now: what ran there before (an earlier agent's program) can go.
        for (old, pin) in &earlier {
            if pin.ifname == ifname && pin.ifindex == ifindex && pin.direction == *direction {
                unpin(old);
            }
        }
    }
    Ok(())
}

/// The clsact fallback, with the agent's fixed priority and handle and its records, so
/// the agent later swaps the program of the same filter in place.
fn attach_tc(
    pin_dir: &Path,
    ifname: &str,
    ifindex: u32,
    programs: &mut Programs,
) -> Result<(), String> {
    let records = tc_dir(pin_dir);
    prepare_clsact(&records, ifname)?;
    for (program, attach_type, direction) in programs.iter_mut() {
        record_tc_filter(&records, ifname, ifindex, direction)?;
        let options = NlOptions {
            priority: TC_PRIORITY,
            handle: TC_HANDLE,
            classid: None,
        };
        let link_id = match program.attach_with_options(
            ifname,
            *attach_type,
            TcAttachOptions::Netlink(options),
        ) {
            Ok(link_id) => link_id,
            Err(error) if is_errno(&error, libc::EEXIST) => {
                // A filter of ours is there (the agent was quicker): it already runs
                // zonewall's program and is the agent's to swap.
                continue;
            }
            Err(error) => return Err(format!("TC filter {direction}: {error}")),
        };
        let link = program
            .take_link(link_id)
            .map_err(|error| format!("take TC link {direction}: {error}"))?;
        // The filter must outlive this process, as the agent's do.
        std::mem::forget(link);
    }
    Ok(())
}

/// Removes the pod link pins whose interface is gone (the plugin's DEL and GC; the agent
/// prunes them too). Returns how many.
pub fn release_gone(bpffs_root: &Path) -> usize {
    let links_dir = bpffs::versioned(bpffs_root).join("links");
    let Ok(_lock) = lock(&links_dir) else {
        return 0;
    };
    let mut released = 0;
    for (path, pin) in pins_in(&links_dir) {
        let exists = nix::net::if_::if_nametoindex(pin.ifname.as_str())
            .is_ok_and(|index| index == pin.ifindex);
        if !exists {
            unpin(&path);
            released += 1;
        }
    }
    released
}

/// Whether both pod programs are attached to `ifname` through links pinned under
/// `bpffs_root` (the plugin's CHECK); the error says what is missing.
pub fn check_attached(bpffs_root: &Path, ifname: &str) -> Result<(), HandoffError> {
    let pin_dir = bpffs::versioned(bpffs_root);
    let attach_error = |reason: String| HandoffError::Attach {
        interface: ifname.to_owned(),
        reason,
    };
    let ifindex = nix::net::if_::if_nametoindex(ifname)
        .map_err(|errno| attach_error(format!("no such interface in this namespace ({errno})")))?;
    let pins = pins_in(&pin_dir.join("links"));
    let records_dir = tc_dir(&pin_dir);
    for (_, _, direction) in DIRECTIONS {
        let linked = pins.iter().any(|(path, pin)| {
            pin.ifname == ifname
                && pin.ifindex == ifindex
                && pin.direction == direction
                && pinned_program_id(path).is_some()
        });
        let filtered = records_dir
            .join(record_name(ifname, ifindex, direction))
            .is_dir();
        if !linked && !filtered {
            return Err(attach_error(format!(
                "no zonewall program on its {direction} hook"
            )));
        }
    }
    Ok(())
}

/// Removes the program pins (for `firewall-agent detach`); returns how many.
pub(in crate::datapath) fn remove_all(pin_dir: &Path) -> usize {
    let dir = programs_dir(pin_dir);
    let mut removed = 0;
    for name in [PROG_FROM_POD, PROG_TO_POD] {
        if std::fs::remove_file(dir.join(name)).is_ok() {
            removed += 1;
        }
    }
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let _ = std::fs::remove_dir(&dir);
    removed
}

/// Whether the plugin can attach now: the agent's programs are pinned and it enforces a
/// policy (the plugin's STATUS).
pub fn ready(bpffs_root: &Path) -> Result<(), HandoffError> {
    let pin_dir = bpffs::versioned(bpffs_root);
    for (name, _, _) in DIRECTIONS {
        pinned_program(&pin_dir, name)?;
    }
    check_policy_enforced(&pin_dir)
}
