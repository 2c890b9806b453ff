//! The datapath's errors, and how a refused map write becomes one (a full map is named
//! with its size, so the operator knows which `--max-…` to raise).

use std::path::PathBuf;

/// Errors of the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("bpffs at {path}: {reason}")]
    Bpffs { path: PathBuf, reason: String },
    #[error(
        "this agent was built without its eBPF object (AYA_BUILD_SKIP); rebuild without it after `cargo xtask setup`"
    )]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("interface {interface}: {reason}")]
    Attach { interface: String, reason: String },
    #[error("map {name} is full ({entries} entries); raise its size")]
    MapFull { name: &'static str, entries: usize },
}

impl DatapathError {
    /// The map a failed write was refused by, if the error names one.
    pub fn map(&self) -> Option<&'static str> {
        match self {
            DatapathError::MapFull { name, .. } | DatapathError::Map { name, .. } => Some(name),
            DatapathError::MissingMap(name) => Some(name),
            _ => None,
        }
    }
}

pub(super) fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

pub(super) fn map_full(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::E2BIG) | Some(libc::ENOSPC) | Some(libc::ENOMEM)
    )
}

/// The outcome of removing a map entry: one that is not there is removed already.
pub(super) fn removed(
    result: Result<(), aya::maps::MapError>,
    name: &'static str,
) -> Result<(), DatapathError> {
    match result {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(error) => Err(map_error(name)(error)),
    }
}

pub(super) fn full_or(
    name: &'static str,
    entries: usize,
) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |error| match &error {
        aya::maps::MapError::SyscallError(syscall)
            if matches!(
                syscall.io_error.raw_os_error(),
                Some(libc::E2BIG) | Some(libc::ENOSPC) | Some(libc::ENOMEM)
            ) =>
        {
            DatapathError::MapFull { name, entries }
        }
        _ => DatapathError::Map {
            name,
            source: error,
        },
    }
}
