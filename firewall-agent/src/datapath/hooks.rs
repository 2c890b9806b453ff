//! What an attachment is: how the agent hooks its programs (`--attach-mode`), how each
//! interface ended up hooked, and the fixed TC filter identity that lets a later attach
//! replace a filter instead of stacking a second one.

use std::path::PathBuf;

use aya::programs::tc::{TcAttachType, TcHandle};
use firewall_common::{PROG_FROM_POD, PROG_TO_POD};

/// How the agent attaches its programs (`--attach-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX links; a clsact qdisc with TC filters where the kernel has no TCX.
    #[default]
    Auto,
    /// TCX links only (Linux 6.6 and later).
    Tcx,
    /// A clsact qdisc with TC filters, even where TCX exists.
    Tc,
}

/// How one interface ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// Pinned TCX links.
    Tcx,
    /// cls_bpf filters under a clsact qdisc, recorded under `<pin_dir>/tc`.
    Tc,
}

impl Hook {
    /// The label of metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Tcx => "tcx",
            Hook::Tc => "tc",
        }
    }
}

/// What this agent attached to one interface.
#[derive(Debug, Clone)]
pub struct AttachedInterface {
    pub ifindex: u32,
    pub hook: Hook,
    /// TCX pins or TC records.
    pub pins: Vec<PathBuf>,
}

/// (program, TC hook, direction as pin names spell it) of both programs.
pub(super) const DIRECTIONS: [(&str, TcAttachType, &str); 2] = [
    (PROG_FROM_POD, TcAttachType::Ingress, "ingress"),
    (PROG_TO_POD, TcAttachType::Egress, "egress"),
];

/// Priority of zonewall's TC filters: 1 runs before filters other tools add with the
/// default priorities, so nothing can redirect a packet around the firewall.
pub(super) const TC_PRIORITY: u16 = 1;
/// Handle of zonewall's TC filters ("zw"). Fixed, with the priority, so that attaching
/// again replaces the program of the filter instead of stacking a second filter.
pub(super) const TC_HANDLE: TcHandle = TcHandle::new(0, 0x7a77);
