//! plexus: a streaming dataflow engine for healthcare integration.
//!
//! Integration flows are declared as graphs of Arrow-batched operators. The modules follow the
//! data: `spec` (pipeline YAML) → `plan` (graph, SQL planned once) → `runtime` (tasks and
//! channels) running `operators` between `connectors`; `formats` decodes the wire formats
//! (HL7v2 first). `src/main.rs` is only the command line.

pub mod cli;
pub mod connectors;
pub mod formats;
pub mod operators;
pub mod plan;
pub mod runtime;
pub mod spec;
