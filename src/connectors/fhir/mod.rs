//! The FHIR connector: `type: fhir` sinks to a FHIR R4 server.

pub mod config;
pub mod sink;
pub mod sync;

pub use config::{FhirSinkConfig, FhirSinkPlan, SyncPlan, SyncStatePlan};
pub use sink::FhirSyncSink;
