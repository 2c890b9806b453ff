//! `cargo xtask test`: every test of the workspace, failing on any failure.
//!
//! - The eBPF crate is left out of the host test run (it is `no_std`/`no_main` for
//!   `bpfel-unknown-none`); the agent's build script builds it, so a broken eBPF program
//!   fails the run anyway.
//! - The fuzz targets (`firewall-agent/tests/fuzz`) run in the first run, a few hundred
//!   cases per property (`ZONEWALL_FUZZ_CASES` overrides; `cargo xtask fuzz` runs more).
//! - The integration tests (crate `zonewall-tests`) create network namespaces, attach
//!   programs and start agents: they run one at a time.
//! - Their tests find the agent's binary in `ZONEWALL_AGENT_BIN`, the CNI plugin's in
//!   `ZONEWALL_CNI_BIN`.
//! - Under `CI=true` (inherited) a privileged test that cannot run fails instead of
//!   skipping.

use anyhow::{Result, bail};

use crate::{build, cmd};

/// The package of the privileged integration tests.
const INTEGRATION_TESTS: &str = "zonewall-tests";

pub fn run(test_args: &[String]) -> Result<()> {
    let agent = build::built_binary(&[], "firewall-agent")?;
    let cni = build::built_binary(&[], "zonewall-cni")?;
    let mut failed = Vec::new();

    let mut unit = cmd::cargo();
    unit.current_dir(crate::workspace_root())
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(["--exclude", "firewall-ebpf", "--exclude", INTEGRATION_TESTS])
        .arg("--")
        .args(test_args);
    if let Err(error) = cmd::run(&mut unit) {
        failed.push(error);
    }

    let mut integration = cmd::cargo();
    integration
        .current_dir(crate::workspace_root())
        .env("ZONEWALL_AGENT_BIN", &agent)
        .env("ZONEWALL_CNI_BIN", &cni)
        .args(["test", "-p", INTEGRATION_TESTS, "--no-fail-fast"])
        .args(["--", "--test-threads=1"])
        .args(test_args);
    if let Err(error) = cmd::run(&mut integration) {
        failed.push(error);
    }

    if !failed.is_empty() {
        for error in &failed {
            eprintln!("FAILED: {error}");
        }
        bail!("{} of 2 test runs failed", failed.len());
    }
    println!("all tests passed");
    Ok(())
}
