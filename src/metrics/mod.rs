//! Metrics: event-time windows over outcome rows (`window`) and the latency sketch they use
//! (`sketch`), and the outcome stream sinks report calls on (`outcome`). Breakers and alerts
//! read the window rows; analysts query them.

pub mod outcome;
pub mod sketch;
pub mod window;
