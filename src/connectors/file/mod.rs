//! The file connector: the embedded default, no services needed.

pub mod config;
pub mod mapped;
pub mod sink;
pub mod source;

pub use config::{FileSinkConfig, FileSinkPlan, FileSourceConfig, SinkFormat, StdoutSinkConfig};
pub use sink::FileSink;
pub use source::FileSource;
