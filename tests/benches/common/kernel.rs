//! The real eBPF programs loaded for a benchmark, with maps sized for the scale under test
//! and pinned in a private bpffs, timed through BPF_PROG_TEST_RUN.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use aya::programs::TestRun as _;
use firewall_agent::datapath::{Datapath, MapSizes, SyncReport, Tuning};
use firewall_agent::policy::compiled::CompiledPolicy;

/// Folders named `/run/zonewall-bench-<pid>-<random>`.
const BPFFS_PREFIX: &str = "zonewall-bench-";

/// A loaded datapath; dropping it detaches and unpins everything and unmounts its bpffs.
pub struct BenchDatapath {
    pub datapath: Datapath,
    bpffs: PathBuf,
}

impl BenchDatapath {
    pub fn load(sizes: MapSizes) -> Self {
        cleanup_stale();
        let bpffs = PathBuf::from(format!(
            "/run/{BPFFS_PREFIX}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let datapath = Datapath::load(&bpffs, sizes)
            .unwrap_or_else(|error| panic!("loading the datapath: {error}"));
        Self { datapath, bpffs }
    }

    /// Writes `compiled` into the maps, every endpoint counted as local.
    pub fn sync(&mut self, compiled: &CompiledPolicy) -> SyncReport {
        self.sync_with(compiled, &Tuning::default())
    }

    pub fn sync_with(&mut self, compiled: &CompiledPolicy, tuning: &Tuning) -> SyncReport {
        self.datapath
            .sync(
                compiled,
                tuning,
                |_| true,
                &zonewall_tests::kernel::test_run_bindings(compiled),
            )
            .unwrap_or_else(|error| panic!("sync: {error}"))
    }

    /// Kernel time of one run of `program` on `frame`, averaged over `repeat` runs (the
    /// kernel's own measurement, 1 ns resolution).
    pub fn time(&mut self, program: &str, frame: &[u8], repeat: u32) -> Duration {
        let program = self
            .datapath
            .program(program)
            .unwrap_or_else(|| panic!("program {program} missing"));
        let mut out = vec![0u8; frame.len() + 256];
        program
            .test_run(aya::TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&zonewall_tests::kernel::TEST_RUN_CONTEXT),
                repeat,
                ..Default::default()
            })
            .unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN: {error:?}"))
            .duration
    }

    /// One run; returns the verdict and the kernel time.
    pub fn run(&mut self, program: &str, frame: &[u8]) -> (i32, Duration) {
        let program = self
            .datapath
            .program(program)
            .unwrap_or_else(|| panic!("program {program} missing"));
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(aya::TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&zonewall_tests::kernel::TEST_RUN_CONTEXT),
                ..Default::default()
            })
            .unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN: {error:?}"));
        (result.return_value as i32, result.duration)
    }

    pub fn counter(&self, index: u32) -> u64 {
        self.datapath.counters().expect("counters")[index as usize]
    }

    pub fn take_ring(&mut self) -> RingBuf<MapData> {
        self.datapath
            .take_flow_events()
            .expect("the flow event ring buffer is taken once")
    }
}

impl Drop for BenchDatapath {
    fn drop(&mut self) {
        unpin_and_unmount(&self.bpffs);
    }
}

fn unpin_and_unmount(bpffs: &Path) {
    let _ = firewall_agent::datapath::detach_all(bpffs);
    let _ = nix::mount::umount2(bpffs, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(bpffs);
}

/// Unmounts the bpffs of benchmark runs whose process is gone (killed before cleaning up).
fn cleanup_stale() {
    let Ok(entries) = std::fs::read_dir("/run") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(BPFFS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            unpin_and_unmount(&entry.path());
        }
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
