//! `firewall-agent`: the zonewall node agent. See `firewall-agent --help`.

use clap::Parser;
use firewall_agent::config::{Cli, Command};

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a node's log collector stores escape codes verbatim.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Some(Command::Check { config }) => check(&config),
        Some(Command::Detach { bpffs }) => match firewall_agent::datapath::detach_all(&bpffs) {
            Ok(links) => {
                println!(
                    "detached: {links} links removed, pins under {} deleted",
                    bpffs.display()
                );
                std::process::ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("detach {}: {error}", bpffs.display());
                std::process::ExitCode::FAILURE
            }
        },
        None => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("cannot start the runtime: {error}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match runtime.block_on(firewall_agent::agent::run(cli.run)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "agent stopped");
                    eprintln!("firewall-agent: {error}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(path: &std::path::Path) -> std::process::ExitCode {
    let content = match std::fs::read_to_string(path) {
        Ok(content) => content,
        Err(error) => {
            eprintln!("cannot read {}: {error}", path.display());
            return std::process::ExitCode::FAILURE;
        }
    };
    match firewall_agent::policy::load_str(&content) {
        Ok(compiled) => {
            print!("{}", firewall_agent::policy::render_check(&compiled));
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{}: {error}", path.display());
            std::process::ExitCode::FAILURE
        }
    }
}
