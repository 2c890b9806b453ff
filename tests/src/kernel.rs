//! The real eBPF programs loaded for a test or a benchmark: maps pinned in a private
//! bpffs, policy written through the agent's own sync, verdicts and kernel timings through
//! BPF_PROG_TEST_RUN.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::programs::TestRun as _;
use firewall_agent::datapath::{Datapath, MapSizes, SyncReport, Tuning, binding::Bindings};
use firewall_agent::policy::{self, compiled::CompiledPolicy};

/// Folders named `/run/zonewall-test-<pid>-<random>`.
const BPFFS_PREFIX: &str = "zonewall-test-";

/// What the programs return.
pub const PASS: i32 = -1;
pub const DROP: i32 = 2;

/// The interface BPF_PROG_TEST_RUN runs a classifier on: loopback, unless the context
/// names another.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// Every address of `compiled` bound to [`TEST_RUN_IFINDEX`]: the anti-spoofing check
/// then accepts any of them as the source of a test run, as if all pods sat behind one
/// interface.
pub fn test_run_bindings(compiled: &CompiledPolicy) -> Bindings {
    compiled
        .endpoints
        .keys()
        .map(|ip| (*ip, TEST_RUN_IFINDEX))
        .collect()
}

/// The `__sk_buff` a test run starts from: entered the node on [`TEST_RUN_IFINDEX`]
/// (`ingress_ifindex`, offset 36), so a local sender crossed its own interface.
pub const TEST_RUN_CONTEXT: [u8; 40] = {
    let mut context = [0u8; 40];
    let index = TEST_RUN_IFINDEX.to_ne_bytes();
    context[36] = index[0];
    context[37] = index[1];
    context[38] = index[2];
    context[39] = index[3];
    context
};

/// True when this process may load BPF programs and create namespaces. Outside CI a test
/// that cannot run says so and returns; under `CI=true` it fails instead.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!(
            "{test}: needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) and CI=true: failing instead of skipping"
        );
    }
    eprintln!("{test}: skipped, needs root");
    false
}

pub struct Kernel {
    pub datapath: Datapath,
    bpffs: PathBuf,
    pub compiled: Option<CompiledPolicy>,
}

impl Kernel {
    /// Loads the programs with a fresh set of maps.
    pub fn load() -> Self {
        Self::load_with(MapSizes {
            endpoints: 65_536,
            networks: 16_384,
            policy: 262_144,
            conntrack: 65_536,
        })
    }

    /// Loads the programs with a fresh set of maps of these sizes.
    pub fn load_with(sizes: MapSizes) -> Self {
        Self::load_in(BPFFS_PREFIX, sizes)
    }

    /// Loads the programs with a fresh set of maps of these sizes, pinned under
    /// `/run/<prefix><pid>-<random>`; first removes what runs of the same prefix whose
    /// process is gone left pinned there.
    pub fn load_in(prefix: &str, sizes: MapSizes) -> Self {
        zonewall_testbed::bpffs::cleanup_stale(prefix, |bpffs| {
            let _ = firewall_agent::datapath::detach_all(bpffs);
        });
        let bpffs = PathBuf::from(format!(
            "/run/{prefix}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let datapath = Datapath::load(&bpffs, sizes)
            .unwrap_or_else(|error| panic!("loading the datapath: {error}"));
        Self {
            datapath,
            bpffs,
            compiled: None,
        }
    }

    /// Compiles `yaml` and writes it into the maps; every endpoint counts as local.
    pub fn apply(&mut self, yaml: &str) -> &CompiledPolicy {
        let compiled = policy::load_str(yaml).unwrap_or_else(|error| panic!("policy: {error}"));
        self.apply_compiled(compiled, &Tuning::default())
    }

    pub fn apply_compiled(&mut self, compiled: CompiledPolicy, tuning: &Tuning) -> &CompiledPolicy {
        self.sync(&compiled, tuning);
        self.compiled.insert(compiled)
    }

    /// Writes `compiled` into the maps, every endpoint counted as local, and returns what
    /// the sync did.
    pub fn sync(&mut self, compiled: &CompiledPolicy, tuning: &Tuning) -> SyncReport {
        self.datapath
            .sync(compiled, tuning, |_| true, &test_run_bindings(compiled))
            .unwrap_or_else(|error| panic!("sync: {error}"))
    }

    /// Runs one frame through a program (`firewall_common::PROG_*`) and returns its verdict.
    pub fn run(&mut self, program: &str, frame: &[u8]) -> i32 {
        self.test_run(program, frame, 0).0
    }

    /// Kernel duration of one run averaged over `repeat` runs.
    pub fn time(&mut self, program: &str, frame: &[u8], repeat: u32) -> Duration {
        self.test_run(program, frame, repeat).1
    }

    /// BPF_PROG_TEST_RUN of `frame` through `program`, `repeat` times (0: once): the
    /// verdict and the kernel's own time of one run (1 ns resolution).
    pub fn test_run(&mut self, program: &str, frame: &[u8], repeat: u32) -> (i32, Duration) {
        let program = self
            .datapath
            .program(program)
            .unwrap_or_else(|| panic!("program {program} missing"));
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(aya::TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&TEST_RUN_CONTEXT),
                repeat,
                ..Default::default()
            })
            .unwrap_or_else(|error| {
                panic!("BPF_PROG_TEST_RUN of {} bytes: {error:?}", frame.len())
            });
        (result.return_value as i32, result.duration)
    }

    pub fn counter(&self, index: u32) -> u64 {
        self.datapath.counters().expect("counters")[index as usize]
    }
}

/// Drains a flow-event ring buffer and returns the decoded events.
pub fn drain_events(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
) -> Vec<firewall_common::FlowEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.push(firewall_agent::flows::decode(&item).expect("event of the right size"));
    }
    events
}

impl Drop for Kernel {
    fn drop(&mut self) {
        unpin_and_unmount(&self.bpffs);
    }
}

fn unpin_and_unmount(bpffs: &Path) {
    let _ = firewall_agent::datapath::detach_all(bpffs);
    zonewall_testbed::bpffs::unmount(bpffs);
    let _ = std::fs::remove_dir_all(bpffs);
}
