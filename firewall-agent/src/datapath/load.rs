//! Loading the programs, with their maps pinned under bpffs and reused when already there,
//! and the `Datapath` that holds what was loaded: the maps user space writes and reads,
//! the attachments and the shadow copy of the maps (`shadow`).

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::SchedClassifier,
};
use firewall_common::*;

use super::{
    bpffs,
    error::{DatapathError, map_error},
    hooks::{AttachMode, AttachedInterface},
    shadow::Shadow,
};

/// The eBPF object built by build.rs (aya-build).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/firewall-ebpf"));

/// The size of a loaded map; warns when a map pinned earlier has another size than asked.
fn capacity(map: &MapData, name: &'static str, requested: u32) -> usize {
    match map.info() {
        Ok(info) if info.max_entries() != requested => {
            tracing::warn!(
                map = name,
                requested,
                pinned = info.max_entries(),
                "this map was pinned earlier with another size and keeps it; \
                 `firewall-agent detach` and a restart apply the new size"
            );
            info.max_entries() as usize
        }
        Ok(_) => requested as usize,
        Err(error) => {
            tracing::warn!(map = name, %error, "cannot read the map's size; assuming the requested one");
            requested as usize
        }
    }
}

/// Sizes of the maps, settable at load (a pinned map keeps the size it was created with).
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub endpoints: u32,
    pub networks: u32,
    pub policy: u32,
    pub conntrack: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            endpoints: ENDPOINTS_MAX_ENTRIES,
            networks: NETWORKS_MAX_ENTRIES,
            policy: POLICY_MAX_ENTRIES,
            conntrack: CONNTRACK_MAX_ENTRIES,
        }
    }
}

/// The loaded programs and their maps.
pub struct Datapath {
    /// Keeps programs (and unpinned maps such as SCRATCH) alive.
    pub(super) ebpf: Ebpf,
    pub(super) pin_dir: PathBuf,
    pub(crate) endpoints: HashMap<MapData, EndpointKey, EndpointValue>,
    pub(crate) networks: LpmTrie<MapData, NetworkKey, NetworkValue>,
    pub(crate) policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    pub(crate) config: Array<MapData, Config>,
    pub(crate) interfaces_map: HashMap<MapData, u32, InterfaceValue>,
    pub(crate) conntrack: HashMap<MapData, CtKey, CtValue>,
    counters: PerCpuArray<MapData, u64>,
    flow_events: Option<RingBuf<MapData>>,
    pub(super) interfaces: std::collections::BTreeMap<String, AttachedInterface>,
    pub(super) attach_mode: AttachMode,
    pub(super) shadow: Shadow,
    pub(super) endpoint_capacity: usize,
    pub(super) network_capacity: usize,
    pub(super) policy_capacity: usize,
    pub(super) conntrack_capacity: usize,
    /// Entries seen by the last ageing pass.
    pub(super) conntrack_seen: usize,
}

impl Datapath {
    /// Loads the programs. Maps are pinned under `<bpffs_root>/v<schema>` and reused when
    /// already there, so a restarted agent continues with the state it left.
    pub fn load(bpffs_root: &Path, sizes: MapSizes) -> Result<Self, DatapathError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let pin_dir = bpffs::prepare(bpffs_root)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_max_entries(MAP_ENDPOINTS, sizes.endpoints)
            .map_max_entries(MAP_NETWORKS, sizes.networks)
            .map_max_entries(MAP_POLICY, sizes.policy)
            .map_max_entries(MAP_CONNTRACK, sizes.conntrack)
            .load(EBPF_OBJECT)?;
        for name in [PROG_FROM_POD, PROG_TO_POD, PROG_BASELINE, PROG_UPLINK] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DatapathError::Program {
                    name,
                    source: aya::programs::ProgramError::UnexpectedProgramType,
                })?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            program
                .load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name));
        let endpoints =
            HashMap::try_from(take(MAP_ENDPOINTS)?).map_err(map_error(MAP_ENDPOINTS))?;
        let networks = LpmTrie::try_from(take(MAP_NETWORKS)?).map_err(map_error(MAP_NETWORKS))?;
        let policy = LpmTrie::try_from(take(MAP_POLICY)?).map_err(map_error(MAP_POLICY))?;
        let config = Array::try_from(take(MAP_CONFIG)?).map_err(map_error(MAP_CONFIG))?;
        let interfaces_map =
            HashMap::try_from(take(MAP_INTERFACES)?).map_err(map_error(MAP_INTERFACES))?;
        let conntrack =
            HashMap::try_from(take(MAP_CONNTRACK)?).map_err(map_error(MAP_CONNTRACK))?;
        let counters =
            PerCpuArray::try_from(take(MAP_COUNTERS)?).map_err(map_error(MAP_COUNTERS))?;
        let flow_events =
            RingBuf::try_from(take(MAP_FLOW_EVENTS)?).map_err(map_error(MAP_FLOW_EVENTS))?;
        // A pinned map keeps the size it was created with, whatever was asked now.
        use aya::maps::IterableMap as _;
        let endpoint_capacity = capacity(endpoints.map(), MAP_ENDPOINTS, sizes.endpoints);
        let network_capacity = capacity(networks.map(), MAP_NETWORKS, sizes.networks);
        let policy_capacity = capacity(policy.map(), MAP_POLICY, sizes.policy);
        let conntrack_capacity = capacity(conntrack.map(), MAP_CONNTRACK, sizes.conntrack);
        Ok(Self {
            ebpf,
            pin_dir,
            endpoints,
            networks,
            policy,
            config,
            interfaces_map,
            conntrack,
            counters,
            flow_events: Some(flow_events),
            interfaces: Default::default(),
            attach_mode: AttachMode::default(),
            shadow: Default::default(),
            endpoint_capacity,
            network_capacity,
            policy_capacity,
            conntrack_capacity,
            conntrack_seen: 0,
        })
    }

    /// The versioned pin folder.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The ring buffer of flow events, once (the flow reader owns it).
    pub fn take_flow_events(&mut self) -> Option<RingBuf<MapData>> {
        self.flow_events.take()
    }

    /// The current CONFIG entry (zeroed when nothing was ever written).
    pub fn config(&self) -> Result<Config, DatapathError> {
        self.config.get(&0, 0).map_err(map_error(MAP_CONFIG))
    }

    /// Counters summed over CPUs, indexed like `COUNTER_*`.
    pub fn counters(&self) -> Result<Vec<u64>, DatapathError> {
        let mut totals = Vec::with_capacity(COUNTER_NAMES.len());
        for index in 0..COUNTER_NAMES.len() as u32 {
            let per_cpu = self
                .counters
                .get(&index, 0)
                .map_err(map_error(MAP_COUNTERS))?;
            totals.push(per_cpu.iter().sum());
        }
        Ok(totals)
    }

    /// Access to the programs (for BPF_PROG_TEST_RUN in tests and benchmarks).
    pub fn program(&mut self, name: &str) -> Option<&mut SchedClassifier> {
        self.ebpf.program_mut(name)?.try_into().ok()
    }

    /// Interfaces currently attached by this agent.
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.interfaces.keys().map(String::as_str)
    }
}
