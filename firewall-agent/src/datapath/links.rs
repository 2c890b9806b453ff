//! Attachments: both programs on each pod interface, kept in place when the agent exits.
//!
//! The usual way is one TCX link per direction, pinned (see `pins`): a new link is
//! attached in front of the old one and pinned under a new nonce before the old one is
//! removed, so replacing a program (a restarted or upgraded agent) never leaves an
//! interface without one.
//!
//! Kernels without TCX (before 6.6), or `--attach-mode tc`, get classic TC instead: a
//! clsact qdisc and one cls_bpf filter per direction at a fixed priority and handle.
//! Netlink filters belong to the interface, not to a file descriptor, so they outlive the
//! agent by themselves; a later attach at the same priority and handle swaps the program
//! in place (no gap, no second filter). Each is recorded under bpffs (see `pins`) so a
//! restarted agent can prune them and `firewall-agent detach`, run in the same network
//! namespace, can remove them.

use std::path::{Path, PathBuf};

use aya::programs::{
    Link as _, LinkOrder, ProgramError, SchedClassifier,
    links::FdLink,
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError},
};

use super::{
    error::DatapathError,
    hooks::{AttachMode, AttachedInterface, DIRECTIONS, Hook, TC_HANDLE, TC_PRIORITY},
    load::Datapath,
    pins::{PinName, netns_inode, pin_name, pins_in, record_name, records, tc_dir, unpin},
};

pub mod handoff;
mod uplink;

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

/// Removes zonewall's TC filter of one direction from `ifname` if that name still has
/// index `ifindex` (a filter dies with its interface; a new interface of the same name
/// is not ours to touch), then its record.
fn remove_tc_filter(record: &Path, pin: &PinName) {
    let Some((_, attach_type, _)) = DIRECTIONS
        .iter()
        .find(|(_, _, direction)| *direction == pin.direction)
    else {
        tracing::warn!(path = %record.display(), "unknown direction in a TC record; left alone");
        return;
    };
    let same_interface =
        nix::net::if_::if_nametoindex(pin.ifname.as_str()).is_ok_and(|index| index == pin.ifindex);
    if same_interface {
        let detached =
            SchedClassifierLink::attached(&pin.ifname, *attach_type, TC_PRIORITY, TC_HANDLE, None)
                .map_err(ProgramError::from)
                .and_then(|link| link.detach());
        match detached {
            Ok(()) => {}
            Err(error) if is_errno(&error, libc::ENOENT) => {}
            Err(error) => {
                // The record stays, so the next prune or detach tries again.
                tracing::warn!(interface = %pin.ifname, direction = %pin.direction, %error, "cannot remove TC filter");
                return;
            }
        }
    }
    if let Err(error) = std::fs::remove_dir(record) {
        tracing::warn!(path = %record.display(), %error, "cannot remove TC record");
    }
}

/// Whether a program error carries the OS error `errno`.
/// The folder of TC filter records and the interface's clsact qdisc, for a classic TC
/// attach (the agent's and the CNI plugin's). The qdisc may be ours from an earlier agent,
/// or another tool's: either way the filter attach after this tells whether it takes
/// filters.
fn prepare_clsact(tc_dir: &Path, ifname: &str) -> Result<(), String> {
    std::fs::create_dir_all(tc_dir)
        .map_err(|error| format!("TC records folder {}: {error}", tc_dir.display()))?;
    match aya::programs::tc::qdisc_add_clsact(ifname) {
        Ok(()) => {
            tracing::debug!(interface = ifname, "clsact qdisc added");
            Ok(())
        }
        Err(TcError::NetlinkError(error)) if error.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(error) => Err(format!("adding the clsact qdisc: {error}")),
    }
}

/// Records the TC filter of one direction before it exists, so no filter of ours is ever
/// unrecorded; returns the record.
fn record_tc_filter(
    tc_dir: &Path,
    ifname: &str,
    ifindex: u32,
    direction: &str,
) -> Result<PathBuf, String> {
    let record = tc_dir.join(record_name(ifname, ifindex, direction));
    match std::fs::create_dir(&record) {
        Ok(()) => Ok(record),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(record),
        Err(error) => Err(format!(
            "recording the TC filter at {}: {error}",
            record.display()
        )),
    }
}

fn is_errno(error: &ProgramError, errno: i32) -> bool {
    match error {
        ProgramError::TcError(TcError::NetlinkError(netlink))
        | ProgramError::NetlinkError(netlink) => netlink.raw_os_error() == Some(errno),
        ProgramError::TcError(TcError::IoError(io)) | ProgramError::IOError(io) => {
            io.raw_os_error() == Some(errno)
        }
        ProgramError::SyscallError(syscall) => syscall.io_error.raw_os_error() == Some(errno),
        _ => false,
    }
}

/// Why a TCX attach failed: the kernel refused the link itself (no TCX there: the clsact
/// fallback can help), or a later step did.
enum TcxFailure {
    Link(DatapathError),
    Other(DatapathError),
}

impl Datapath {
    fn links_dir(&self) -> PathBuf {
        self.pin_dir.join("links")
    }

    fn tc_dir(&self) -> PathBuf {
        tc_dir(&self.pin_dir)
    }

    /// Chooses how interfaces attached from now on are hooked.
    pub fn set_attach_mode(&mut self, mode: AttachMode) {
        self.attach_mode = mode;
    }

    /// Attaches both programs to `ifname`, replacing (without a gap) whatever an earlier
    /// agent left there, and returns the hook used. In `auto` mode a kernel that refuses
    /// TCX links gets TC filters instead, with a warning naming the interface.
    pub fn attach(&mut self, ifname: &str, ifindex: u32) -> Result<Hook, DatapathError> {
        let _lock = self.lock_links();
        if let Some(hook) = self.adopt(ifname, ifindex) {
            return Ok(hook);
        }
        let (hook, pins) = match self.attach_mode {
            AttachMode::Tcx => match self.attach_tcx(ifname, ifindex) {
                Ok(pins) => (Hook::Tcx, pins),
                Err(TcxFailure::Link(error) | TcxFailure::Other(error)) => return Err(error),
            },
            AttachMode::Tc => (Hook::Tc, self.attach_tc(ifname, ifindex)?),
            AttachMode::Auto => match self.attach_tcx(ifname, ifindex) {
                Ok(pins) => (Hook::Tcx, pins),
                Err(TcxFailure::Other(error)) => return Err(error),
                Err(TcxFailure::Link(tcx_error)) => {
                    let pins = self.attach_tc(ifname, ifindex).map_err(|tc_error| {
                        DatapathError::Attach {
                            interface: ifname.to_owned(),
                            reason: format!("TCX: {tcx_error}; clsact fallback: {tc_error}"),
                        }
                    })?;
                    tracing::warn!(
                        interface = ifname,
                        ifindex,
                        tcx_error = %tcx_error,
                        "the kernel refused a TCX link; attached through a clsact qdisc instead"
                    );
                    (Hook::Tc, pins)
                }
            },
        };
        // The new programs are in place: what the other kind of hook still holds of an
        // earlier agent (another mode, or a kernel upgrade) can go now.
        match hook {
            Hook::Tcx => {
                for (record, pin) in records(&self.tc_dir()) {
                    if pin.ifname == ifname && pin.ifindex == ifindex {
                        remove_tc_filter(&record, &pin);
                    }
                }
            }
            Hook::Tc => {
                for (path, pin) in pins_in(&self.links_dir()) {
                    if pin.ifname == ifname && pin.ifindex == ifindex {
                        unpin(&path);
                    }
                }
            }
        }
        tracing::info!(
            interface = ifname,
            ifindex,
            hook = hook.as_str(),
            "attached"
        );
        self.interfaces.insert(
            ifname.to_owned(),
            AttachedInterface {
                ifindex,
                hook,
                pins,
            },
        );
        Ok(hook)
    }

    fn attach_tcx(&mut self, ifname: &str, ifindex: u32) -> Result<Vec<PathBuf>, TcxFailure> {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default();
        let links_dir = self.links_dir();
        let existing = pins_in(&links_dir);
        let mut new_pins = Vec::new();
        for (program_name, attach_type, direction) in DIRECTIONS {
            let attach_error = |reason: String| DatapathError::Attach {
                interface: ifname.to_owned(),
                reason,
            };
            let program = self.classifier(program_name).ok_or_else(|| {
                TcxFailure::Other(attach_error(format!("program {program_name} not loaded")))
            })?;
            let link_id = program
                .attach_with_options(
                    ifname,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .map_err(|error| {
                    TcxFailure::Link(attach_error(format!("TCX attach {direction}: {error}")))
                })?;
            let other = |reason: String| TcxFailure::Other(attach_error(reason));
            let link = program
                .take_link(link_id)
                .map_err(|error| other(format!("take link {direction}: {error}")))?;
            let link: FdLink = link
                .try_into()
                .map_err(|error| other(format!("link {direction} is not a TCX link: {error}")))?;
            let pin_path = links_dir.join(pin_name(ifname, ifindex, direction, nonce));
            // A link that cannot be pinned is released when `link` drops: the hook keeps
            // whatever an earlier agent pinned, and the caller sees the failure.
            link.pin(&pin_path)
                .map_err(|error| other(format!("pin {}: {error}", pin_path.display())))?;
            // The new link runs first; now the old ones of this hook can go.
            for (path, pin) in &existing {
                if pin.ifname == ifname && pin.ifindex == ifindex && pin.direction == direction {
                    unpin(path);
                }
            }
            new_pins.push(pin_path);
        }
        Ok(new_pins)
    }

    fn attach_tc(&mut self, ifname: &str, ifindex: u32) -> Result<Vec<PathBuf>, DatapathError> {
        let attach_error = |reason: String| DatapathError::Attach {
            interface: ifname.to_owned(),
            reason,
        };
        let tc_dir = self.tc_dir();
        prepare_clsact(&tc_dir, ifname).map_err(attach_error)?;
        let mut records = Vec::new();
        for (program_name, attach_type, direction) in DIRECTIONS {
            let record =
                record_tc_filter(&tc_dir, ifname, ifindex, direction).map_err(attach_error)?;
            let program = self
                .classifier(program_name)
                .ok_or_else(|| attach_error(format!("program {program_name} not loaded")))?;
            let options = NlOptions {
                priority: TC_PRIORITY,
                handle: TC_HANDLE,
                classid: None,
            };
            let link_id = match program.attach_with_options(
                ifname,
                attach_type,
                TcAttachOptions::Netlink(options),
            ) {
                Ok(link_id) => link_id,
                Err(error) if is_errno(&error, libc::EEXIST) => {
                    // Our filter is there already (an earlier agent's): swap its program,
                    // which the kernel does in one step.
                    let existing = SchedClassifierLink::attached(
                        ifname,
                        attach_type,
                        TC_PRIORITY,
                        TC_HANDLE,
                        None,
                    )
                    .map_err(|error| attach_error(format!("TC filter {direction}: {error}")))?;
                    program.attach_to_link(existing).map_err(|error| {
                        attach_error(format!("replacing the TC filter {direction}: {error}"))
                    })?
                }
                Err(error) => {
                    return Err(attach_error(format!("TC filter {direction}: {error}")));
                }
            };
            let link = program
                .take_link(link_id)
                .map_err(|error| attach_error(format!("take TC link {direction}: {error}")))?;
            // Dropping aya's handle would remove the filter; the filter must outlive this
            // process instead. The handle holds no file descriptor, so nothing leaks.
            std::mem::forget(link);
            records.push(record);
        }
        Ok(records)
    }

    fn classifier(&mut self, name: &str) -> Option<&mut SchedClassifier> {
        self.ebpf
            .program_mut(name)
            .and_then(|program| program.try_into().ok())
    }

    /// Whether this agent attached `ifname` with this index.
    pub fn is_attached(&self, ifname: &str, ifindex: u32) -> bool {
        self.interfaces
            .get(ifname)
            .is_some_and(|attached| attached.ifindex == ifindex)
    }

    /// Forgets interfaces that vanished and removes pins and TC filters of interfaces that
    /// no longer exist or are no longer wanted. `wanted` holds (name, index) of interfaces
    /// to keep.
    pub fn prune(&mut self, wanted: &[(String, u32)]) {
        let keep = |name: &str, index: u32| wanted.iter().any(|(n, i)| n == name && *i == index);
        self.interfaces
            .retain(|name, attached| keep(name, attached.ifindex));
        for (path, pin) in pins_in(&self.links_dir()) {
            if !keep(&pin.ifname, pin.ifindex) {
                tracing::info!(interface = %pin.ifname, ifindex = pin.ifindex, "detached (gone or no longer matched)");
                unpin(&path);
            }
        }
        for (record, pin) in records(&self.tc_dir()) {
            if !keep(&pin.ifname, pin.ifindex) {
                tracing::info!(interface = %pin.ifname, ifindex = pin.ifindex, hook = "tc", "detached (gone or no longer matched)");
                remove_tc_filter(&record, &pin);
            }
        }
    }

    /// How many interfaces this agent attached through each kind of hook.
    pub fn attached_by_hook(&self) -> [(Hook, usize); 2] {
        let count = |hook| {
            self.interfaces
                .values()
                .filter(|attached| attached.hook == hook)
                .count()
        };
        [(Hook::Tcx, count(Hook::Tcx)), (Hook::Tc, count(Hook::Tc))]
    }
}

/// Removes everything zonewall pinned under `bpffs_root`: links and TC filters first
/// (programs leave the interfaces), then maps. Used by `firewall-agent detach`.
pub fn detach_all(bpffs_root: &Path) -> std::io::Result<usize> {
    let pin_dir = super::bpffs::versioned(bpffs_root);
    let mut removed = 0;
    for (path, _) in pins_in(&pin_dir.join("links")) {
        unpin(&path);
        removed += 1;
    }
    let _ = std::fs::remove_dir(pin_dir.join("links"));
    removed += uplink::remove_all(&pin_dir);
    handoff::remove_all(&pin_dir);
    let own = tc_dir(&pin_dir);
    for (record, pin) in records(&own) {
        remove_tc_filter(&record, &pin);
        removed += 1;
    }
    let _ = std::fs::remove_dir(&own);
    // Records left: filters of another network namespace (or ones that could not be
    // removed). They are kept so a detach run there still finds them.
    let mut remaining = Vec::new();
    if let Ok(namespaces) = std::fs::read_dir(pin_dir.join("tc")) {
        for namespace in namespaces.flatten() {
            for (_, pin) in records(&namespace.path()) {
                remaining.push(format!(
                    "{} {} ({})",
                    pin.ifname,
                    pin.direction,
                    namespace.file_name().to_string_lossy()
                ));
            }
            let _ = std::fs::remove_dir(namespace.path());
        }
    }
    let _ = std::fs::remove_dir(pin_dir.join("tc"));
    if let Ok(entries) = std::fs::read_dir(&pin_dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            std::fs::remove_file(entry.path())?;
        }
    }
    if !remaining.is_empty() {
        return Err(std::io::Error::other(format!(
            "{removed} links removed, but TC filters remain on {}: they were attached in \
             another network namespace than this one (net-{}); run `firewall-agent detach` \
             in the agent's network namespace (e.g. `nsenter --net=/proc/<agent pid>/ns/net`)",
            remaining.join(", "),
            netns_inode()
        )));
    }
    match std::fs::remove_dir(&pin_dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    Ok(removed)
}
