//! `zonewall-crds`: the CustomResourceDefinitions of `Zone` and `ZonePolicy`, generated
//! from their Rust types by `firewall_agent::crds`. `cargo xtask codegen` runs it to
//! refresh `deploy/crds/`; the manifests test calls the same library code.
//!
//! ```text
//! zonewall-crds              both CRDs on stdout, as one YAML stream
//! zonewall-crds --out DIR    DIR/<group>_<plural>.yaml per CRD, DIR/kustomization.yaml
//! zonewall-crds --check DIR  exit status 1, naming the files, when DIR is out of date
//! ```

use std::path::Path;
use std::process::ExitCode;

use firewall_agent::crds::{self, Written};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: zonewall-crds [--out DIR | --check DIR]";
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => match crds::generated_files() {
            Ok(files) => {
                let crds: Vec<&str> = files
                    .iter()
                    .filter(|(name, _)| name != "kustomization.yaml")
                    .map(|(_, content)| content.as_str())
                    .collect();
                print!("{}", crds.join("---\n"));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("zonewall-crds: {error}");
                ExitCode::FAILURE
            }
        },
        ["--out", dir] => match crds::write(Path::new(dir)) {
            Ok(done) => {
                for (what, path) in done {
                    let verb = match what {
                        Written::Unchanged => "unchanged",
                        Written::Wrote => "wrote    ",
                        Written::Removed => "removed  ",
                    };
                    println!("{verb} {}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("zonewall-crds: cannot write the CRDs into {dir}: {error}");
                ExitCode::FAILURE
            }
        },
        ["--check", dir] => match crds::stale_files(Path::new(dir)) {
            Ok(stale) if stale.is_empty() => {
                println!("{dir}: up to date");
                ExitCode::SUCCESS
            }
            Ok(stale) => {
                eprintln!(
                    "{dir} is out of date with the Rust types:\n  {}\nrun `cargo xtask codegen`",
                    stale.join("\n  ")
                );
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("zonewall-crds: cannot read {dir}: {error}");
                ExitCode::FAILURE
            }
        },
        ["-h" | "--help"] => {
            println!("{usage}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{usage}");
            ExitCode::from(2)
        }
    }
}
