//! Builds the eBPF object with aya-build and embeds it in the agent.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// The pinned nightly that builds the eBPF crate: rustc 1.97.0-nightly (e50aa6fba
/// 2026-05-19), LLVM 22, the LLVM bpf-linker is built against. `cargo xtask setup`
/// installs the same one (xtask's `EBPF_TOOLCHAIN`): change both together.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        // User-space-only builds (e.g. policy work without the eBPF toolchain): an empty
        // object that the loader refuses with a clear message at run time.
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
        std::fs::write(out.join("firewall-ebpf"), b"").context("write placeholder object")?;
        println!("cargo:warning=AYA_BUILD_SKIP set: the agent is built WITHOUT its eBPF object");
        return Ok(());
    }
    // The eBPF build needs the pinned nightly with rust-src and bpf-linker; say what to run
    // instead of failing deep inside cargo when they are missing.
    if !has_ebpf_toolchain() {
        return Err(anyhow!(
            "the eBPF toolchain {EBPF_TOOLCHAIN} is not installed: run `cargo xtask setup` once (installs it with rust-src, and bpf-linker)"
        ));
    }
    if which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker not found: run `cargo xtask setup` once (installs the eBPF toolchain {EBPF_TOOLCHAIN} with rust-src, and bpf-linker)"
        ));
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "firewall-ebpf")
        .ok_or_else(|| anyhow!("firewall-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}

/// Whether rustup has the eBPF toolchain. Without rustup, aya-build uses the toolchain at
/// hand, and so does this check.
fn has_ebpf_toolchain() -> bool {
    match std::process::Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "rustc", "--version"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
    {
        Ok(output) => output.status.success(),
        Err(_) => true,
    }
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            let candidate = std::path::Path::new(&home).join(".cargo/bin/bpf-linker");
            candidate.is_file().then_some(candidate)
        })
}
