//! The HTTP connector: `type: http` sinks (webhooks, REST endpoints). The client itself
//! (signing, idempotency keys, outcomes, auth and TLS) is `net::http`, shared with the FHIR
//! client, the Kafka retry worker and alert webhooks.

pub mod config;
pub mod sink;

pub use crate::net::http::{HttpTarget, Outcome, Request};
pub use config::{HttpSinkConfig, HttpSinkPlan};
pub use sink::{HttpSink, HttpSinkParts};
