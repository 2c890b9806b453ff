//! `zonewall-cni`: the chained CNI plugin, run by the container runtime with `CNI_COMMAND`
//! set (see `firewall_agent::cni`).

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use firewall_agent::cni::{self, spec};

/// One CNI invocation: the result or nothing on stdout and exit 0, or the spec's error
/// object on stdout and exit 1.
fn main() -> ExitCode {
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
