//! The maps, named as they are pinned (sizes are defaults; the agent sets its own at
//! load), the per-CPU clock cache, and `count`, which adds to a counter.
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
