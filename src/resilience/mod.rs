//! Resilience: how plexus treats a system that fails — retry policies (and, with the windows
//! of the metrics issue, circuit breakers).

pub mod retry;
