//! From spec to runnable graph: schemas propagated stage by stage, SQL planned once with
//! DataFusion, every reference (column, file, output) checked before anything runs.

pub mod graph;
mod stages;
pub mod windows;

pub use graph::{Plan, PlannedSink, PlannedStage, build};
