//! Errors in a pipeline spec, located at `file:line:column` of the YAML (or SQL) they are in.

use std::fmt;
use std::path::{Path, PathBuf};

use marked_yaml::Span;

/// A position in a spec file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecLocation {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for SpecLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct SpecError {
    pub location: SpecLocation,
    pub message: String,
}

impl SpecError {
    pub fn at(file: &Path, span: &Span, message: impl Into<String>) -> Self {
        let (line, column) = span
            .start()
            .map(|m| (m.line(), m.column()))
            .unwrap_or((1, 1));
        Self::at_line(file, line, column, message)
    }

    pub fn at_line(file: &Path, line: usize, column: usize, message: impl Into<String>) -> Self {
        SpecError {
            location: SpecLocation {
                file: file.to_path_buf(),
                line,
                column,
            },
            message: message.into(),
        }
    }
}

/// Every problem found, in file order; validation reports them all at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

impl From<SpecError> for SpecErrors {
    fn from(e: SpecError) -> Self {
        SpecErrors(vec![e])
    }
}
