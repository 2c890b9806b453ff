//! Names of the maps and programs as the object file and the bpffs pins spell them, and
//! the default map sizes.

pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
pub const MAP_NETWORKS: &str = "NETWORKS";
pub const MAP_POLICY: &str = "POLICY";
pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_CONNTRACK: &str = "CONNTRACK";
pub const MAP_FLOW_EVENTS: &str = "FLOW_EVENTS";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_DENY_LIMIT: &str = "DENY_LIMIT";
pub const MAP_FRAGMENTS: &str = "FRAGMENTS";
pub const MAP_POLICY_CACHE: &str = "POLICY_CACHE";
pub const MAP_INTERFACES: &str = "INTERFACES";
/// Uplink interfaces of the node (ifindex -> 1): traffic between two of them is transit.
pub const MAP_UPLINKS: &str = "UPLINKS";
/// TC ingress of the host-side veth: what the pod sends (egress enforcement).
pub const PROG_FROM_POD: &str = "zonewall_from_pod";
/// TC egress of the host-side veth: what the pod receives.
pub const PROG_TO_POD: &str = "zonewall_to_pod";
/// An empty classifier (returns at once), the baseline of the per-packet benchmarks.
pub const PROG_BASELINE: &str = "zonewall_baseline";
/// TC egress of the node's uplinks: drops what a local pod sent that no program judged.
pub const PROG_UPLINK: &str = "zonewall_uplink";

// Default map sizes; the agent may override them at load time.
pub const ENDPOINTS_MAX_ENTRIES: u32 = 262_144;
pub const NETWORKS_MAX_ENTRIES: u32 = 65_536;
pub const POLICY_MAX_ENTRIES: u32 = 1_048_576;
pub const CONNTRACK_MAX_ENTRIES: u32 = 262_144;
pub const DENY_LIMIT_MAX_ENTRIES: u32 = 16_384;
pub const FRAGMENTS_MAX_ENTRIES: u32 = 8_192;
pub const POLICY_CACHE_MAX_ENTRIES: u32 = 65_536;
pub const INTERFACES_MAX_ENTRIES: u32 = 16_384;
pub const UPLINKS_MAX_ENTRIES: u32 = 64;
pub const FLOW_EVENTS_BYTES: u32 = 8 * 1024 * 1024;
