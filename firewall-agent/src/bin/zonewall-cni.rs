//! `zonewall-cni`: the chained CNI plugin (run by the container runtime with `CNI_COMMAND`
//! set; see `firewall_agent::cni`) and its installer (`zonewall-cni install`, run by the
//! DaemonSet's init container).

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use firewall_agent::cni::{self, install, spec};

#[derive(Parser, Debug)]
#[command(
    name = "zonewall-cni",
    version,
    about = "zonewall's chained CNI plugin: a pod starts only once zonewall enforces its interface. \
             Run by the container runtime (CNI_COMMAND set); the subcommands install it."
)]
struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Copy this binary into the CNI bin folder and chain the plugin after the main plugin
    /// of the node's CNI configuration (again: nothing changes).
    Install {
        /// The node's CNI configuration folder.
        #[arg(long, env = "ZONEWALL_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The node's CNI plugin folder.
        #[arg(long, env = "ZONEWALL_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// The agent's --bpffs, written into the plugin's configuration.
        #[arg(long, env = "ZONEWALL_BPFFS", default_value = spec::DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// Wait this long for the main plugin to write its configuration.
        #[arg(long, env = "ZONEWALL_CNI_WAIT_SECONDS", default_value_t = 0)]
        wait_seconds: u64,
    },
    /// Take the plugin out of the node's CNI configuration and remove the binary.
    Uninstall {
        #[arg(long, env = "ZONEWALL_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        #[arg(long, env = "ZONEWALL_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    // A runtime always sets CNI_COMMAND; the installer is run by hand or by a manifest.
    if std::env::var_os("CNI_COMMAND").is_some() {
        return plugin();
    }
    match Cli::parse().command {
        Action::Install {
            conf_dir,
            bin_dir,
            bpffs,
            wait_seconds,
        } => installer(conf_dir, bin_dir, bpffs, Duration::from_secs(wait_seconds)),
        Action::Uninstall { conf_dir, bin_dir } => match install::uninstall(&conf_dir, &bin_dir) {
            Ok(changed) => {
                println!(
                    "zonewall-cni {}",
                    if changed {
                        "uninstalled"
                    } else {
                        "was not installed"
                    }
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("zonewall-cni uninstall: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

/// One CNI invocation: the result or nothing on stdout and exit 0, or the spec's error
/// object on stdout and exit 1.
fn plugin() -> ExitCode {
    let invocation = spec::Invocation::from_lookup(|name| std::env::var(name).ok());
    let mut stdin = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut stdin) {
        return fail(
            &spec::CniError::new(
                spec::code::IO_FAILURE,
                "cannot read stdin",
                error.to_string(),
            ),
            spec::DEFAULT_VERSION,
        );
    }
    let version = spec::NetConf::parse(&stdin)
        .map(|conf| conf.cni_version)
        .unwrap_or_else(|_| spec::DEFAULT_VERSION.to_owned());
    match cni::run(&invocation, &stdin) {
        Ok(output) => {
            if let Some(output) = output {
                let mut stdout = std::io::stdout().lock();
                if writeln!(stdout, "{output}")
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error, &version),
    }
}

fn fail(error: &spec::CniError, version: &str) -> ExitCode {
    // Runtimes read the error object from stdout; stderr lands in their logs.
    eprintln!("zonewall-cni: {error}");
    println!("{}", error.to_json(version));
    ExitCode::FAILURE
}

fn installer(conf_dir: PathBuf, bin_dir: PathBuf, bpffs: PathBuf, wait: Duration) -> ExitCode {
    let binary = match std::env::current_exe() {
        Ok(binary) => binary,
        Err(error) => {
            eprintln!("zonewall-cni install: cannot find this binary: {error}");
            return ExitCode::FAILURE;
        }
    };
    let options = install::InstallOptions {
        conf_dir,
        bin_dir,
        bpffs,
        binary,
    };
    let deadline = Instant::now() + wait;
    let mut waiting = false;
    loop {
        match install::install(&options) {
            Ok(report) => {
                println!(
                    "zonewall-cni installed: {} ({}), binary in {} ({})",
                    report.conf_file.display(),
                    if report.conf_changed {
                        "updated"
                    } else {
                        "unchanged"
                    },
                    options.bin_dir.display(),
                    if report.binary_changed {
                        "copied"
                    } else {
                        "unchanged"
                    },
                );
                return ExitCode::SUCCESS;
            }
            Err(install::InstallError::NoConfiguration(dir)) if Instant::now() < deadline => {
                if !waiting {
                    eprintln!(
                        "zonewall-cni install: no CNI configuration in {} yet; waiting",
                        dir.display()
                    );
                    waiting = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(error) => {
                eprintln!("zonewall-cni install: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
}
