#![no_std]
// The library target exists so the agent can declare a build dependency on this crate;
// the programs live in the binary target (src/main.rs), built for bpfel-unknown-none.
