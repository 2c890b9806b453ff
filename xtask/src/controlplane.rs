//! The real Kubernetes control plane the Kubernetes tests start: etcd, kube-apiserver,
//! kube-controller-manager, kube-proxy and kubectl, built from source with Go at pinned
//! releases (the Go modules under `xtask/controlplane/`), once per machine.
//!
//! Where the binaries are is a contract with the tests, which compute the same folder:
//! one subfolder per release, named by its version, in
//! - `$ZONEWALL_CONTROLPLANE_DIR` when it is set,
//! - else `$XDG_CACHE_HOME/zonewall/controlplane`,
//! - else `$HOME/.cache/zonewall/controlplane`.
//!
//! A stamp file in each release's folder holds the version, the SHA-256 of the Go module
//! that built it and the link flags: a change of any rebuilds, a match skips in
//! milliseconds.

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Overrides the folder that holds one subfolder per release.
pub const DIR_VARIABLE: &str = "ZONEWALL_CONTROLPLANE_DIR";
/// Set (to anything but `0`) to skip the build, e.g. on a machine without Go.
pub const SKIP_VARIABLE: &str = "ZONEWALL_SKIP_CONTROLPLANE";
/// The stamp file in a release's folder.
const STAMP: &str = ".zonewall-build";

/// A Kubernetes release and the commands built from its Go module.
pub struct Release {
    /// The `k8s.io/kubernetes` version the module requires; names the release's folder.
    pub version: &'static str,
    /// The Go module's folder, relative to xtask's.
    module: &'static str,
    tools: &'static [Tool],
}

/// A command of a release: a Go `main` package and the file name it gets.
struct Tool {
    package: &'static str,
    binary: &'static str,
}

const ETCD: Tool = Tool {
    package: "go.etcd.io/etcd/server/v3",
    binary: "etcd",
};
const KUBE_APISERVER: Tool = Tool {
    package: "k8s.io/kubernetes/cmd/kube-apiserver",
    binary: "kube-apiserver",
};
const KUBE_CONTROLLER_MANAGER: Tool = Tool {
    package: "k8s.io/kubernetes/cmd/kube-controller-manager",
    binary: "kube-controller-manager",
};
const KUBE_PROXY: Tool = Tool {
    package: "k8s.io/kubernetes/cmd/kube-proxy",
    binary: "kube-proxy",
};
const KUBECTL: Tool = Tool {
    package: "k8s.io/kubernetes/cmd/kubectl",
    binary: "kubectl",
};

/// The control plane the tests run, etcd included (the etcd release is the one this
/// Kubernetes release's module requires).
pub const CONTROL_PLANE: Release = Release {
    version: "v1.34.3",
    module: "controlplane",
    tools: &[
        ETCD,
        KUBE_APISERVER,
        KUBE_CONTROLLER_MANAGER,
        KUBE_PROXY,
        KUBECTL,
    ],
};

/// The newest release's API server, for the CRD schema tests; it runs against the etcd
/// of [`CONTROL_PLANE`].
pub const NEWEST_APISERVER: Release = Release {
    version: "v1.37.2",
    module: "controlplane/v1.37",
    tools: &[KUBE_APISERVER],
};

const RELEASES: [&Release; 2] = [&CONTROL_PLANE, &NEWEST_APISERVER];

/// Builds every release whose folder is missing or out of date.
pub fn setup() -> Result<()> {
    if skipped(std::env::var_os(SKIP_VARIABLE).as_deref()) {
        println!(
            "setup: {SKIP_VARIABLE} is set: the Kubernetes control plane is not built, and the \
             Kubernetes tests will fail without it"
        );
        return Ok(());
    }
    let root = cache_root(|name| std::env::var_os(name))?;
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    // One build at a time per machine: a second setup waits, then finds the stamps.
    let lock_path = root.join(".lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("create {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        println!("setup: waiting for another setup that is building the control plane");
        lock.lock()
            .with_context(|| format!("lock {}", lock_path.display()))?;
    }
    for release in RELEASES {
        setup_release(release, &root)?;
    }
    Ok(())
}

fn skipped(value: Option<&OsStr>) -> bool {
    value.is_some_and(|value| !value.is_empty() && value != "0")
}

/// The folder that holds one subfolder per release (see the module's documentation).
/// `variable` reads the environment.
pub fn cache_root(variable: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    let set = |name: &str| variable(name).filter(|value| !value.is_empty());
    if let Some(folder) = set(DIR_VARIABLE) {
        return Ok(PathBuf::from(folder));
    }
    let cache = match set("XDG_CACHE_HOME") {
        Some(cache) => PathBuf::from(cache),
        None => PathBuf::from(set("HOME").with_context(|| {
            format!("neither {DIR_VARIABLE}, XDG_CACHE_HOME nor HOME is set: set {DIR_VARIABLE}")
        })?)
        .join(".cache"),
    };
    Ok(cache.join("zonewall").join("controlplane"))
}

fn setup_release(release: &Release, root: &Path) -> Result<()> {
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join(release.module);
    let ldflags = ldflags(release.version)?;
    let stamp = stamp(release.version, &module_digest(&module)?, &ldflags);
    let folder = root.join(release.version);
    let names = release
        .tools
        .iter()
        .map(|tool| tool.binary)
        .collect::<Vec<_>>()
        .join(", ");
    if is_built(&folder, release, &stamp) {
        println!(
            "setup: Kubernetes {} present ({names} in {})",
            release.version,
            folder.display()
        );
        return Ok(());
    }
    if zonewall_testbed::preflight::find_on_path("go").is_none() {
        bail!(
            "go is not on PATH: the Kubernetes tests need {names} of Kubernetes {}, built with \
             Go 1.26 or newer; install Go, or set {SKIP_VARIABLE}=1 to go without those tests",
            release.version
        );
    }
    println!(
        "setup: building {names} of Kubernetes {} with Go into {}; the first build takes \
         about 5 minutes (up to 10 on a busy machine), later ones seconds",
        release.version,
        folder.display()
    );
    let started = Instant::now();
    build(release, &module, &folder, &ldflags, &stamp)?;
    println!(
        "setup: Kubernetes {} built in {:.0?}",
        release.version,
        started.elapsed()
    );
    Ok(())
}

/// What a release's stamp file holds: the version, the digest of its module and the link
/// flags.
fn stamp(version: &str, module_digest: &str, ldflags: &str) -> String {
    format!("kubernetes {version}\ngo-module-sha256 {module_digest}\nldflags {ldflags}\n")
}

/// Whether `folder` holds every binary of `release`, built from the module `stamp` names.
fn is_built(folder: &Path, release: &Release, stamp: &str) -> bool {
    std::fs::read_to_string(folder.join(STAMP)).is_ok_and(|found| found == stamp)
        && release
            .tools
            .iter()
            .all(|tool| folder.join(tool.binary).is_file())
}

/// The SHA-256 of the module's go.mod followed by its go.sum, in hex.
fn module_digest(module: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    for file in ["go.mod", "go.sum"] {
        let path = module.join(file);
        bytes.extend(std::fs::read(&path).with_context(|| format!("read {}", path.display()))?);
    }
    let mut sha256sum = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start sha256sum (coreutils)")?;
    sha256sum
        .stdin
        .take()
        .context("sha256sum's input")?
        .write_all(&bytes)
        .context("write to sha256sum")?;
    let output = sha256sum.wait_with_output().context("wait for sha256sum")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let digest = text.split_whitespace().next().unwrap_or_default();
    if !output.status.success()
        || digest.len() != 64
        || !digest.chars().all(|c| c.is_ascii_hexdigit())
    {
        bail!("sha256sum of {} gave `{}`", module.display(), text.trim());
    }
    Ok(digest.to_string())
}

/// Builds `release` in a temporary folder beside `folder`, then puts it in place in one
/// rename: a test never sees a half-built release.
fn build(
    release: &Release,
    module: &Path,
    folder: &Path,
    ldflags: &str,
    stamp: &str,
) -> Result<()> {
    let root = folder.parent().context("a release's folder has a parent")?;
    let staging_prefix = format!(".{}-", release.version);
    // Left by a build that was interrupted (the lock is ours: no build is running).
    for entry in std::fs::read_dir(root)
        .with_context(|| format!("read {}", root.display()))?
        .flatten()
    {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&staging_prefix)
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let staging = tempfile::Builder::new()
        .prefix(&staging_prefix)
        .tempdir_in(root)
        .with_context(|| format!("create a temporary folder in {}", root.display()))?;
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", staging.path().display()))?;
    // A trailing slash: one output folder for several commands.
    let mut output = staging.path().as_os_str().to_owned();
    output.push("/");
    let mut go = Command::new("go");
    go.current_dir(module)
        .env("GOFLAGS", go_flags(std::env::var_os("GOFLAGS").as_deref()))
        .args(["build", "-trimpath"])
        .arg(format!("-ldflags={ldflags}"))
        .arg("-o")
        .arg(&output)
        .args(release.tools.iter().map(|tool| tool.package));
    cmd::run(&mut go)?;
    for tool in release.tools {
        let built = staging.path().join(go_binary_name(tool.package));
        let binary = staging.path().join(tool.binary);
        if built != binary {
            std::fs::rename(&built, &binary)
                .with_context(|| format!("rename {} to {}", built.display(), binary.display()))?;
        }
        if !binary.is_file() {
            bail!("go build left no {}", binary.display());
        }
    }
    let stamp_path = staging.path().join(STAMP);
    std::fs::write(&stamp_path, stamp)
        .with_context(|| format!("write {}", stamp_path.display()))?;
    swap_into_place(staging.path(), folder)
    // The staging guard now removes the previous build, if there was one.
}

/// Moves `staging` to `folder`, or exchanges the two when `folder` exists (an older
/// build), atomically either way.
fn swap_into_place(staging: &Path, folder: &Path) -> Result<()> {
    match std::fs::rename(staging, folder) {
        Ok(()) => Ok(()),
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::ENOTEMPTY) | Some(libc::EEXIST)
            ) =>
        {
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                staging,
                nix::fcntl::AT_FDCWD,
                folder,
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )
            .with_context(|| {
                format!(
                    "exchange {} with the older build {}",
                    staging.display(),
                    folder.display()
                )
            })
        }
        Err(error) => Err(error)
            .with_context(|| format!("rename {} to {}", staging.display(), folder.display())),
    }
}

/// The user's GOFLAGS with `-mod=mod`: go may then complete the module's requirements
/// itself instead of refusing to build.
fn go_flags(user: Option<&OsStr>) -> OsString {
    let mut flags = user
        .filter(|flags| !flags.is_empty())
        .map(|flags| {
            let mut flags = flags.to_owned();
            flags.push(" ");
            flags
        })
        .unwrap_or_default();
    flags.push("-mod=mod");
    flags
}

/// The link flags: no symbols or debug information (a third of the size), and the `-X`
/// flags that give the binaries the version Kubernetes' own build stamps in
/// (`kube-apiserver --version`, the API's /version); a plain `go build` says
/// `v0.0.0-master`.
fn ldflags(version: &str) -> Result<String> {
    let mut numbers = version
        .strip_prefix('v')
        .with_context(|| format!("Kubernetes version {version} does not start with v"))?
        .split('.');
    let (Some(major), Some(minor)) = (numbers.next(), numbers.next()) else {
        bail!("Kubernetes version {version} is not vMAJOR.MINOR.PATCH");
    };
    let mut flags = vec!["-s".to_string(), "-w".to_string()];
    for package in [
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ] {
        for (variable, value) in [
            ("gitVersion", version),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
        ] {
            flags.push(format!("-X {package}.{variable}={value}"));
        }
    }
    Ok(flags.join(" "))
}

/// The file name `go build -o folder/` gives the command `package`: its last path
/// element, or the one before a major-version suffix (`go.etcd.io/etcd/server/v3` ->
/// `server`).
fn go_binary_name(package: &str) -> &str {
    let mut elements = package.rsplit('/');
    let last = elements.next().unwrap_or(package);
    let is_major_suffix = last
        .strip_prefix('v')
        .is_some_and(|number| !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()));
    match elements.next() {
        Some(before) if is_major_suffix => before,
        _ => last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        }
    }

    #[test]
    fn cache_root_follows_the_variables_in_order() {
        let all = [
            (DIR_VARIABLE, "/srv/controlplane"),
            ("XDG_CACHE_HOME", "/home/dev/.xdg-cache"),
            ("HOME", "/home/dev"),
        ];
        assert_eq!(
            cache_root(environment(&all)).unwrap(),
            Path::new("/srv/controlplane")
        );
        assert_eq!(
            cache_root(environment(&all[1..])).unwrap(),
            Path::new("/home/dev/.xdg-cache/zonewall/controlplane")
        );
        assert_eq!(
            cache_root(environment(&all[2..])).unwrap(),
            Path::new("/home/dev/.cache/zonewall/controlplane")
        );
        // Empty counts as unset.
        assert_eq!(
            cache_root(environment(&[
                (DIR_VARIABLE, ""),
                ("XDG_CACHE_HOME", ""),
                ("HOME", "/root")
            ]))
            .unwrap(),
            Path::new("/root/.cache/zonewall/controlplane")
        );
        assert!(cache_root(environment(&[])).is_err());
    }

    #[test]
    fn skip_variable_is_off_when_unset_empty_or_zero() {
        assert!(!skipped(None));
        assert!(!skipped(Some(OsStr::new(""))));
        assert!(!skipped(Some(OsStr::new("0"))));
        assert!(skipped(Some(OsStr::new("1"))));
        assert!(skipped(Some(OsStr::new("true"))));
    }

    #[test]
    fn a_release_is_built_when_its_stamp_matches_and_every_binary_is_there() {
        let folder = tempfile::tempdir().unwrap();
        let current = stamp(CONTROL_PLANE.version, &"ab".repeat(32), "-s -w");
        assert!(!is_built(folder.path(), &CONTROL_PLANE, &current), "empty");
        for tool in CONTROL_PLANE.tools {
            std::fs::write(folder.path().join(tool.binary), b"").unwrap();
        }
        assert!(
            !is_built(folder.path(), &CONTROL_PLANE, &current),
            "no stamp"
        );
        std::fs::write(folder.path().join(STAMP), &current).unwrap();
        assert!(is_built(folder.path(), &CONTROL_PLANE, &current));
        let bumped_module = stamp(CONTROL_PLANE.version, &"cd".repeat(32), "-s -w");
        assert!(!is_built(folder.path(), &CONTROL_PLANE, &bumped_module));
        let bumped_version = stamp("v1.34.4", &"ab".repeat(32), "-s -w");
        assert!(!is_built(folder.path(), &CONTROL_PLANE, &bumped_version));
        let other_flags = stamp(CONTROL_PLANE.version, &"ab".repeat(32), "-s");
        assert!(!is_built(folder.path(), &CONTROL_PLANE, &other_flags));
        std::fs::remove_file(folder.path().join("kubectl")).unwrap();
        assert!(
            !is_built(folder.path(), &CONTROL_PLANE, &current),
            "a binary is missing"
        );
    }

    #[test]
    fn module_digest_covers_go_mod_and_go_sum() {
        let module = tempfile::tempdir().unwrap();
        std::fs::write(module.path().join("go.mod"), "module example\n").unwrap();
        std::fs::write(module.path().join("go.sum"), "").unwrap();
        let first = module_digest(module.path()).unwrap();
        // SHA-256 of "module example\n".
        assert_eq!(
            first,
            "77bacaf2d4182e8340ecdfc2a897458290f030d95468f8437ce085b1695367e2"
        );
        std::fs::write(module.path().join("go.sum"), "example v1.0.0 h1:x=\n").unwrap();
        assert_ne!(module_digest(module.path()).unwrap(), first);
    }

    #[test]
    fn each_release_folder_is_named_by_the_version_its_module_requires() {
        for release in RELEASES {
            let go_mod = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(release.module)
                .join("go.mod");
            let go_mod = std::fs::read_to_string(&go_mod).unwrap();
            assert!(
                go_mod
                    .lines()
                    .any(|line| line == format!("require k8s.io/kubernetes {}", release.version)),
                "{} does not require k8s.io/kubernetes {}",
                release.module,
                release.version
            );
            for tool in release.tools {
                assert!(
                    go_mod.lines().any(|line| line.trim() == tool.package
                        || line == format!("tool {}", tool.package)),
                    "{} has no tool directive for {}",
                    release.module,
                    tool.package
                );
            }
        }
    }

    #[test]
    fn names_binaries_as_go_build_does() {
        assert_eq!(go_binary_name("go.etcd.io/etcd/server/v3"), "server");
        assert_eq!(
            go_binary_name("k8s.io/kubernetes/cmd/kube-apiserver"),
            "kube-apiserver"
        );
        assert_eq!(go_binary_name("example.com/tools/v"), "v");
        assert_eq!(go_binary_name("kubectl"), "kubectl");
    }

    #[test]
    fn link_flags_stamp_the_release() {
        let flags = ldflags("v1.34.3").unwrap();
        assert!(flags.starts_with("-s -w "));
        assert!(flags.contains("-X k8s.io/component-base/version.gitVersion=v1.34.3"));
        assert!(flags.contains("-X k8s.io/component-base/version.gitMajor=1"));
        assert!(flags.contains("-X k8s.io/client-go/pkg/version.gitMinor=34"));
        assert!(ldflags("1.34.3").is_err());
        assert!(ldflags("v1").is_err());
    }

    #[test]
    fn go_flags_keep_the_users() {
        assert_eq!(go_flags(None), "-mod=mod");
        assert_eq!(go_flags(Some(OsStr::new(""))), "-mod=mod");
        assert_eq!(
            go_flags(Some(OsStr::new("-buildvcs=false"))),
            "-buildvcs=false -mod=mod"
        );
    }
}
