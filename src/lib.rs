//! plexus: a streaming dataflow engine for healthcare integration.
//!
//! Integration flows are declared as graphs of Arrow-batched operators. This crate holds the
//! whole engine; `src/main.rs` is only the command line.

pub mod cli;
pub mod formats;
