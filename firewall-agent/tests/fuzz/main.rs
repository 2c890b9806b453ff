//! Fuzz targets, driven by proptest: the eBPF packet parser compiled for the host
//! (`packet`), the YAML policy decoder with the validator and compiler behind it
//! (`policy_yaml`), and the flow-event decoder of ring-buffer bytes with the enricher
//! and the record encoders behind it (`flow_events`, against the encoders' old
//! `serde_json::Value` form kept in `oracle`).
//!
//! `cargo test` (so `cargo xtask test`) runs every target for a few hundred cases;
//! `cargo xtask fuzz` runs them for as many as asked (`ZONEWALL_FUZZ_CASES`). Each run
//! draws new cases; a failure prints the shrunk input, which belongs in a named
//! regression test next to the code it broke.
//!
//! The targets live with the agent rather than with the privileged integration tests:
//! they need no root, no kernel and no network namespace, only the agent library and
//! the parser (firewall-ebpf's library target, which compiles for the host).

mod flow_events;
mod oracle;
mod packet;
mod policy_yaml;

// The policy files the integration tests use, as seeds for the YAML mutations.
use zonewall_testbed::fixtures;

use proptest::test_runner::Config;

/// The proptest settings of a target: `ZONEWALL_FUZZ_CASES` cases, or `default_cases`
/// (chosen so that each target takes a few seconds in a debug build).
pub fn config(default_cases: u32) -> Config {
    let cases = match std::env::var("ZONEWALL_FUZZ_CASES") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("ZONEWALL_FUZZ_CASES={text:?} is not a number")),
        Err(_) => default_cases,
    };
    Config {
        cases,
        // A few percent of the generated cases do not fit a property (`prop_assume!`);
        // proptest's fixed limit would end long runs early.
        max_global_rejects: cases.max(1024),
        // Failures are reported with their shrunk input; nothing is written next to the
        // sources.
        failure_persistence: None,
        ..Config::default()
    }
}
