//! What of zonewall's TC programs compiles for the host as well as for the kernel: the
//! packet parser, which the agent's fuzz targets drive with arbitrary bytes. The programs
//! themselves are the binary target (src/main.rs), built for bpfel-unknown-none; this
//! library is also what lets the agent declare a build dependency on the crate.
#![no_std]

pub mod parse;
