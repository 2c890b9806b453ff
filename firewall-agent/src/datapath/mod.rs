//! The eBPF datapath: loading the programs with maps pinned under bpffs, attaching them to
//! pod interfaces with pinned TCX links or recorded TC filters (so enforcement outlives
//! the agent), binding pod addresses to their interfaces, writing the compiled policy
//! into the maps atomically, reading counters and ageing conntrack.
//!
//! `Datapath` is defined in `load`; each other module adds the methods of its concern:
//! `links` (attaching, with `hooks` and `pins`), `sync` (policy into the maps, with
//! `shadow` and `batch`), `conntrack`. `binding` finds which interface owns which pod
//! address (over `netlink`); `bpffs` prepares the pin folder. This file only declares and
//! re-exports.

mod batch;
pub mod binding;
pub mod bpffs;
mod conntrack;
mod error;
mod hooks;
mod links;
mod load;
mod netlink;
pub mod netlink_watch;
mod pins;
mod shadow;
mod sync;

pub use conntrack::monotonic_ns;
pub use error::DatapathError;
pub use hooks::{AttachMode, AttachedInterface, Hook};
pub use links::handoff;
pub use links::{detach_all, interfaces};
pub use load::{Datapath, MapSizes};
pub use sync::{SyncReport, Tuning};
