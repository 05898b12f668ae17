//! The MLLP connector: HL7 v2 over TCP, the way most hospital systems send it. The source
//! (`type: mllp`) listens, spools each message durably and acknowledges it (see `source`);
//! the sink sends rows' messages to a receiver and waits for each ACK (see `sink`).

pub mod config;
pub mod sink;
pub mod source;

pub use config::{MllpSinkConfig, MllpSinkPlan, MllpSourceConfig, MllpSourcePlan};
pub use sink::MllpSink;
pub use source::MllpSource;
