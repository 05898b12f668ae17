//! The HTTP connector: `type: http` sinks (webhooks, REST endpoints) and sources (webhooks
//! in: `source.rs`, verified by `verify.rs`, deduplicated by `idempotency.rs`). The client itself
//! (signing, idempotency keys, outcomes, auth and TLS) is `net::http`, shared with the FHIR
//! client, the Kafka retry worker and alert webhooks.

pub mod config;
pub mod https;
pub mod idempotency;
pub mod sink;
pub mod source;
pub mod source_config;
pub mod verify;

pub use crate::net::http::{HttpTarget, Outcome, Request};
pub use config::{HttpSinkConfig, HttpSinkPlan};
pub use sink::{HttpSink, HttpSinkParts};
