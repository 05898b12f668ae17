//! Resilience: how plexus treats a system that fails — retry policies (`retry`) and the
//! circuit breaker state machine (`breaker`).

pub mod breaker;
pub mod retry;
