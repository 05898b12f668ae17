//! Metrics: event-time windows over outcome rows (`window`) and the latency sketch they use
//! (`sketch`). Breakers and alerts read the window rows; analysts query them.

pub mod sketch;
pub mod window;
