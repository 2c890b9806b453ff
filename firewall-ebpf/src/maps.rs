//! The maps, named as they are pinned. Sizes are defaults; the agent sets its own at load.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use firewall_common::*;

#[map(name = "ENDPOINTS")]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointValue> =
    HashMap::pinned(ENDPOINTS_MAX_ENTRIES, 0);

#[map(name = "NETWORKS")]
pub static NETWORKS: LpmTrie<NetworkKey, NetworkValue> = LpmTrie::pinned(NETWORKS_MAX_ENTRIES, 0);

#[map(name = "POLICY")]
pub static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(POLICY_MAX_ENTRIES, 0);

/// Answers of `POLICY` by (generation, slot, zone pair, protocol, port); see
/// `PolicyCacheKey`. Per-CPU LRU lists keep inserts free of a global lock.
#[map(name = "POLICY_CACHE")]
pub static POLICY_CACHE: LruHashMap<PolicyCacheKey, PolicyValue> =
    LruHashMap::pinned(POLICY_CACHE_MAX_ENTRIES, BPF_F_NO_COMMON_LRU);

/// `map_flags` bit of LRU maps: one LRU list per CPU.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// Pod interfaces with bound addresses (see `InterfaceValue`), by ifindex.
#[map(name = "INTERFACES")]
pub static INTERFACES: HashMap<u32, InterfaceValue> = HashMap::pinned(INTERFACES_MAX_ENTRIES, 0);

#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(CONNTRACK_MAX_ENTRIES, 0);

#[map(name = "FLOW_EVENTS")]
pub static FLOW_EVENTS: RingBuf = RingBuf::pinned(FLOW_EVENTS_BYTES, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_MAX, 0);

#[map(name = "DENY_LIMIT")]
pub static DENY_LIMIT: LruHashMap<EndpointKey, DenyLimitValue> =
    LruHashMap::pinned(DENY_LIMIT_MAX_ENTRIES, 0);

#[map(name = "FRAGMENTS")]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentValue> =
    LruHashMap::pinned(FRAGMENTS_MAX_ENTRIES, 0);

/// Per-CPU working memory of one packet's run: the parsed packet, its conntrack key and
/// the entry being built live here because the BPF stack (512 bytes) cannot hold them.
pub struct Scratch {
    pub headers: crate::parse::Headers,
    pub packet: crate::parse::Packet,
    /// The packet an ICMP error quotes, and its conntrack key.
    pub quoted: crate::parse::Packet,
    pub quoted_key: CtKey,
    pub key: CtKey,
    pub ct: CtValue,
    pub run: Run,
}

/// Facts about the current packet that several stages need.
pub struct Run {
    pub now: u64,
    pub bytes: u64,
    pub ifindex: u32,
    /// The interface the packet entered the node on (`skb->skb_iif`): for a packet from a
    /// local pod to another, the sender's host-side interface.
    pub ingress_ifindex: u32,
    /// The live slot of POLICY, ENDPOINTS and NETWORKS and its generation, read once.
    pub slot: u32,
    pub generation: u32,
    pub hook: u8,
    /// This hook counts the packet (see `pipeline`).
    pub counting: bool,
    /// The packet's source is the `hi` end of the conntrack key.
    pub src_is_hi: bool,
    pub src_endpoint: crate::identity::Endpoint,
    pub dst_endpoint: crate::identity::Endpoint,
}

#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The coarse clock as last read on this CPU, and the jiffy it was read in.
pub struct Clock {
    pub jiffies: u64,
    pub ns: u64,
}

#[map(name = "CLOCK")]
pub static CLOCK: PerCpuArray<Clock> = PerCpuArray::with_max_entries(1, 0);

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, owned by this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}
