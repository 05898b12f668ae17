//! plexus: a streaming dataflow engine for healthcare integration.
//!
//! Integration flows are declared as graphs of Arrow-batched operators. The modules follow the
//! data: `spec` (pipeline YAML) → `plan` (graph, SQL planned once) → `runtime` (tasks and
//! channels) running `operators` between `connectors`; `formats` decodes the wire formats
//! (HL7v2 first). `src/main.rs` is only the command line.

#[cfg(feature = "pipeline")]
pub mod cli;
#[cfg(feature = "pipeline")]
pub mod config;
#[cfg(feature = "pipeline")]
pub mod connectors;
#[cfg(feature = "pipeline")]
pub mod fhir;
pub mod formats;
#[cfg(feature = "pipeline")]
pub mod metrics;
#[cfg(feature = "pipeline")]
pub mod net;
#[cfg(feature = "pipeline")]
pub mod operators;
#[cfg(feature = "pipeline")]
pub mod plan;
#[cfg(feature = "pipeline")]
pub mod record;
#[cfg(feature = "pipeline")]
pub mod resilience;
#[cfg(feature = "pipeline")]
pub mod runtime;
#[cfg(feature = "pipeline")]
pub mod serve;
#[cfg(feature = "pipeline")]
pub mod spec;
#[cfg(feature = "pipeline")]
pub mod sql;
