//! `cargo xtask setup`: installs what building and testing zonewall need and is missing.
//! Idempotent and quick when everything is there.
//!
//! - Debian packages for the tests, the demo and the benchmarks (apt-get, as root).
//! - The pinned nightly toolchain that builds the eBPF crate ([`EBPF_TOOLCHAIN`]), with
//!   `rust-src` for `-Z build-std=core`.
//! - `bpf-linker`, built against that nightly's own libLLVM so their LLVM majors agree and
//!   no system LLVM is needed.
//! - Last, the Kubernetes control plane, built from source with Go once per machine (see
//!   [`crate::controlplane`]; `ZONEWALL_SKIP_CONTROLPLANE=1` skips it).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// The Debian packages the tests, the demo and the benchmarks use.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "iperf3",
    "netcat-openbsd",
    "socat",
    "bpftool",
    "nftables",
    "iptables",
    "ipset",
    "rsyslog",
    "rsyslog-openssl",
    "openssl",
    "python3",
    "python3-pip",
    "hyperfine",
    // VLAN offload switches in the real-traffic VLAN test.
    "ethtool",
];

/// Python packages of the SIEM tests: the published OCSF schema releases and a JSON
/// schema validator.
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("ocsf-json-schema", "ocsf_json_schema"),
    ("jsonschema", "jsonschema"),
];

/// The toolchain that builds the eBPF crate: rustc 1.97.0-nightly (e50aa6fba 2026-05-19),
/// LLVM 22. Pinned, so that every machine builds the same object and bpf-linker keeps the
/// LLVM it was built against; firewall-agent/build.rs names the same one. To move it,
/// change both and run `cargo xtask setup` (it rebuilds bpf-linker when the LLVM major
/// changes).
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

pub fn run() -> Result<()> {
    debian_packages()?;
    python_packages()?;
    ebpf_toolchain()?;
    bpf_linker()?;
    crate::controlplane::setup()?;
    println!("setup: everything is in place");
    Ok(())
}

fn debian_packages() -> Result<()> {
    if zonewall_testbed::preflight::find_on_path("dpkg-query").is_none() {
        println!(
            "setup: not a Debian system; install the equivalents of {} yourself",
            DEBIAN_PACKAGES.join(", ")
        );
        return Ok(());
    }
    // dpkg-query exits non-zero when it does not know a package: read its output anyway.
    let listing = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package}\t${db:Status-Abbrev}\n"])
        .args(DEBIAN_PACKAGES)
        .output()
        .context("run dpkg-query")?;
    let missing = missing_packages(&String::from_utf8_lossy(&listing.stdout), DEBIAN_PACKAGES);
    if missing.is_empty() {
        println!("setup: Debian packages present");
        return Ok(());
    }
    println!("setup: installing Debian packages {}", missing.join(" "));
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "installing {} needs root: run `sudo apt-get install {}` or run this as root",
            missing.join(" "),
            missing.join(" ")
        );
    }
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}

fn python_packages() -> Result<()> {
    let Some(python) = zonewall_testbed::preflight::find_on_path("python3") else {
        bail!("python3 is missing; install it (Debian: python3, python3-pip)");
    };
    let missing: Vec<&str> = PYTHON_PACKAGES
        .iter()
        .filter(|(_, module)| {
            !Command::new(&python)
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|output| output.status.success())
        })
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        println!("setup: Python packages present");
        return Ok(());
    }
    println!("setup: installing Python packages {}", missing.join(" "));
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "-q"]).args(&missing);
    // Debian's Python refuses system-wide installs without this flag (PEP 668).
    if cmd::run(&mut pip).is_err() {
        cmd::run(
            Command::new(&python)
                .args(["-m", "pip", "install", "-q", "--break-system-packages"])
                .args(&missing),
        )?;
    }
    Ok(())
}

/// The packages of `wanted` that the `dpkg-query` listing does not show as installed.
fn missing_packages(listing: &str, wanted: &[&str]) -> Vec<String> {
    wanted
        .iter()
        .filter(|package| {
            !listing.lines().any(|line| {
                let mut fields = line.split('\t');
                fields.next() == Some(**package)
                    && fields.next().is_some_and(|status| status.starts_with("ii"))
            })
        })
        .map(|package| package.to_string())
        .collect()
}

/// Installs the pinned eBPF toolchain with rust-src when it is missing, or adds rust-src
/// to it.
fn ebpf_toolchain() -> Result<()> {
    let toolchains = cmd::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to install the eBPF toolchain: see https://rustup.rs")?;
    if !lists_toolchain(&toolchains, EBPF_TOOLCHAIN) {
        println!("setup: installing the eBPF toolchain {EBPF_TOOLCHAIN} with rust-src");
        return cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        println!("setup: eBPF toolchain {EBPF_TOOLCHAIN} with rust-src present");
        return Ok(());
    }
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
}

/// Whether `rustup toolchain list` shows `toolchain`, listed with its host triple (e.g.
/// `nightly-2026-05-20-x86_64-unknown-linux-gnu (active)`). A triple starts with a letter,
/// a date with a digit: `nightly` is not `nightly-2026-05-20-x86_64-…`.
fn lists_toolchain(listing: &str, toolchain: &str) -> bool {
    listing.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or_default();
        name == toolchain
            || name
                .strip_prefix(toolchain)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|host| host.starts_with(|c: char| c.is_ascii_alphabetic()))
    })
}

fn bpf_linker() -> Result<()> {
    let version =
        cmd::output(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "-vV"]))?;
    let wanted = llvm_major_of_rustc(&version).with_context(|| {
        format!("no `LLVM version` in `rustc +{EBPF_TOOLCHAIN} -vV`:\n{version}")
    })?;
    match installed_bpf_linker() {
        Some(path) => match linked_llvm_major(&path) {
            Linked::Major(major) if major == wanted => {
                println!(
                    "setup: bpf-linker present ({}, LLVM {major})",
                    path.display()
                );
                return Ok(());
            }
            Linked::Major(major) => {
                println!(
                    "setup: bpf-linker uses LLVM {major}, the {EBPF_TOOLCHAIN} LLVM {wanted}: rebuilding"
                );
            }
            Linked::Unknown => {
                println!(
                    "setup: bpf-linker present ({}); its LLVM is linked statically, assumed to be {wanted}",
                    path.display()
                );
                return Ok(());
            }
            Linked::Broken => println!("setup: bpf-linker does not run: rebuilding"),
        },
        None => {
            println!("setup: bpf-linker missing: building it against the {EBPF_TOOLCHAIN} libLLVM")
        }
    }
    build_bpf_linker(wanted)
}

/// `22` from the `LLVM version: 22.1.4` line of `rustc -vV`.
fn llvm_major_of_rustc(version: &str) -> Option<u32> {
    version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .and_then(|rest| rest.trim().split('.').next())
        .and_then(|major| major.parse().ok())
}

fn installed_bpf_linker() -> Option<PathBuf> {
    zonewall_testbed::preflight::find_on_path("bpf-linker").or_else(|| {
        let candidate = cargo_home()?.join("bin/bpf-linker");
        candidate.is_file().then_some(candidate)
    })
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| Some(Path::new(&std::env::var_os("HOME")?).join(".cargo")))
}

enum Linked {
    Major(u32),
    /// It runs, but links no shared libLLVM.
    Unknown,
    /// It does not run (e.g. the libLLVM it was linked against is gone).
    Broken,
}

fn linked_llvm_major(bpf_linker: &Path) -> Linked {
    if cmd::output(Command::new(bpf_linker).arg("--version")).is_err() {
        return Linked::Broken;
    }
    match cmd::output(Command::new("ldd").arg(bpf_linker)) {
        Ok(libraries) => llvm_major_of_ldd(&libraries).map_or(Linked::Unknown, Linked::Major),
        Err(_) => Linked::Unknown,
    }
}

/// `22` from a `libLLVM.so.22.1-rust-…` (or `libLLVM-22.so`) line of `ldd`.
fn llvm_major_of_ldd(libraries: &str) -> Option<u32> {
    libraries.lines().find_map(|line| {
        let name = line.split_whitespace().next()?;
        let rest = name
            .strip_prefix("libLLVM.so.")
            .or_else(|| name.strip_prefix("libLLVM-"))?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// Builds bpf-linker against the eBPF toolchain's libLLVM, through a private prefix
/// that holds links to it (the binary gets an rpath to that prefix).
fn build_bpf_linker(llvm_major: u32) -> Result<()> {
    let sysroot = cmd::output(Command::new("rustup").args([
        "run",
        EBPF_TOOLCHAIN,
        "rustc",
        "--print",
        "sysroot",
    ]))?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let names: Vec<String> = std::fs::read_dir(&sysroot_lib)
        .with_context(|| format!("read {}", sysroot_lib.display()))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    let library = llvm_library(&names)
        .with_context(|| format!("no libLLVM in {}", sysroot_lib.display()))?
        .to_string();
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home).join(".local/share/zonewall/llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("create {}", prefix_lib.display()))?;
    for link in ["libLLVM.so", library.as_str()] {
        let link = prefix_lib.join(link);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot_lib.join(&library), &link)
            .with_context(|| format!("link {}", link.display()))?;
    }
    cmd::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{llvm_major}")]),
    )
}

/// The toolchain's libLLVM among the names of its `lib` folder: the shared object named
/// by its soname (`libLLVM.so.22.1-rust-…`), which the linked binary asks for, before a
/// `libLLVM-22-rust-….so`, which in rustup's toolchains is a linker script pointing to it.
fn llvm_library(names: &[String]) -> Option<&str> {
    names
        .iter()
        .find(|name| name.starts_with("libLLVM.so."))
        .or_else(|| names.iter().find(|name| name.starts_with("libLLVM-")))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llvm_major_of_rustc() {
        let version = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major_of_rustc(version), Some(22));
        assert_eq!(llvm_major_of_rustc("rustc 1.0\n"), None);
    }

    #[test]
    fn reads_llvm_major_of_ldd() {
        let ldd = "\tlinux-vdso.so.1 (0x00007fd6e0b98000)\n\tlibLLVM.so.22.1-rust-1.97.0-nightly => /x/lib/libLLVM.so.22.1-rust-1.97.0-nightly (0x00007fd6d6000000)\n\tlibc.so.6 => /lib/libc.so.6\n";
        assert_eq!(llvm_major_of_ldd(ldd), Some(22));
        assert_eq!(
            llvm_major_of_ldd("\tlibLLVM-19.so => /usr/lib/libLLVM-19.so\n"),
            Some(19)
        );
        assert_eq!(llvm_major_of_ldd("\tlibc.so.6 => /lib/libc.so.6\n"), None);
    }

    #[test]
    fn picks_the_shared_object_of_libllvm() {
        let names = |list: &[&str]| list.iter().map(|name| name.to_string()).collect::<Vec<_>>();
        let rustup_lib = names(&[
            "libLLVM-22-rust-1.97.0-nightly.so",
            "librustc_driver-0123.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
        ]);
        assert_eq!(
            llvm_library(&rustup_lib),
            Some("libLLVM.so.22.1-rust-1.97.0-nightly")
        );
        assert_eq!(
            llvm_library(&names(&["libLLVM-19.so"])),
            Some("libLLVM-19.so")
        );
        assert_eq!(llvm_library(&names(&["librustc_driver-0123.so"])), None);
    }

    #[test]
    fn finds_toolchains_in_rustup_listing() {
        let listing = "stable-x86_64-unknown-linux-gnu (active, default)\nnightly-x86_64-unknown-linux-gnu\nnightly-2026-05-20-x86_64-unknown-linux-gnu\n";
        assert!(lists_toolchain(listing, "nightly-2026-05-20"));
        assert!(lists_toolchain(listing, "nightly"));
        assert!(!lists_toolchain(listing, "nightly-2026-05-2"));
        assert!(!lists_toolchain(listing, "nightly-2026-05-21"));
        assert!(!lists_toolchain(
            "nightly-x86_64-unknown-linux-gnu\n",
            "nightly-2026-05-20"
        ));
        assert!(lists_toolchain(
            "nightly-2026-05-20\n",
            "nightly-2026-05-20"
        ));
        assert!(!lists_toolchain(
            "nightly-2026-05-20-x86_64-unknown-linux-gnu\n",
            "nightly"
        ));
    }

    #[test]
    fn the_agent_and_its_image_build_with_the_same_nightly() {
        let build_script = include_str!("../../firewall-agent/build.rs");
        assert!(
            build_script.contains(&format!(
                "const EBPF_TOOLCHAIN: &str = \"{EBPF_TOOLCHAIN}\";"
            )),
            "firewall-agent/build.rs names another eBPF toolchain than {EBPF_TOOLCHAIN}"
        );
        let containerfile = include_str!("../../deploy/Containerfile");
        assert!(
            containerfile.contains(&format!("ARG EBPF_TOOLCHAIN={EBPF_TOOLCHAIN}\n")),
            "deploy/Containerfile installs another eBPF toolchain than {EBPF_TOOLCHAIN}"
        );
    }

    #[test]
    fn finds_missing_packages() {
        let listing = "iproute2\tii \nsocat\tun \nbpftool\tii \n";
        assert_eq!(
            missing_packages(listing, &["iproute2", "socat", "bpftool", "iperf3"]),
            ["socat", "iperf3"]
        );
    }
}
