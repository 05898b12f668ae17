//! The file connector: the embedded default, no services needed.

pub mod sink;
pub mod source;

pub use sink::FileSink;
pub use source::FileSource;
