//! The MLLP connector: HL7 v2 over TCP, the way most hospital systems send it. The source
//! (`type: mllp`) listens, spools each message durably and acknowledges it (see `source`).

pub mod config;
pub mod source;

pub use config::{MllpSourceConfig, MllpSourcePlan};
pub use source::MllpSource;
