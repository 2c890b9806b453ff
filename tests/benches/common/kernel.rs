//! The real eBPF programs loaded for a benchmark: the tests' [`Kernel`] with maps sized
//! for the scale under test and pinned under `/run/zonewall-bench-*`, its syncs returning
//! what they did and its runs their kernel time.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use firewall_agent::datapath::{MapSizes, SyncReport, Tuning};
use firewall_agent::policy::compiled::CompiledPolicy;
use zonewall_tests::kernel::Kernel;

/// Folders named `/run/zonewall-bench-<pid>-<random>`.
const BPFFS_PREFIX: &str = "zonewall-bench-";

/// A loaded datapath; dropping it detaches and unpins everything and unmounts its bpffs.
pub struct BenchDatapath(Kernel);

impl std::ops::Deref for BenchDatapath {
    type Target = Kernel;

    fn deref(&self) -> &Kernel {
        &self.0
    }
}

impl std::ops::DerefMut for BenchDatapath {
    fn deref_mut(&mut self) -> &mut Kernel {
        &mut self.0
    }
}

impl BenchDatapath {
    pub fn load(sizes: MapSizes) -> Self {
        Self(Kernel::load_in(BPFFS_PREFIX, sizes))
    }

    /// Writes `compiled` into the maps, every endpoint counted as local.
    pub fn sync(&mut self, compiled: &CompiledPolicy) -> SyncReport {
        self.0.sync(compiled, &Tuning::default())
    }

    pub fn sync_with(&mut self, compiled: &CompiledPolicy, tuning: &Tuning) -> SyncReport {
        self.0.sync(compiled, tuning)
    }

    /// One run; returns the verdict and the kernel time.
    pub fn run(&mut self, program: &str, frame: &[u8]) -> (i32, Duration) {
        self.0.test_run(program, frame, 0)
    }

    pub fn take_ring(&mut self) -> RingBuf<MapData> {
        self.0
            .datapath
            .take_flow_events()
            .expect("the flow event ring buffer is taken once")
    }
}

/// Reads every event waiting in the ring buffer; returns how many there were.
pub fn drain(ring: &mut RingBuf<MapData>) -> usize {
    let mut count = 0;
    while ring.next().is_some() {
        count += 1;
    }
    count
}
