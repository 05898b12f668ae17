//! What every configuration block shares: values that remember their YAML position
//! (`Spanned`), durations, and the context a connector's config is checked in (`PlanCx`).
//!
//! This is the bottom layer of the pipeline format: the spec (the whole file) and every
//! connector's `config.rs` build on it, and it imports neither.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::Span;
use serde::{Deserialize, Deserializer};

use crate::sql::SqlPlanner;

/// A value read from the pipeline file with the span it was read from, so that a later error
/// (a bad SQL expression, a missing file) can name `file:line:column`. In the JSON Schema it
/// is the value itself.
#[derive(Clone, Debug)]
pub struct Spanned<T>(marked_yaml::Spanned<T>);

impl<T> Spanned<T> {
    pub fn new(span: Span, inner: T) -> Self {
        Spanned(marked_yaml::Spanned::new(span, inner))
    }

    pub fn span(&self) -> &Span {
        self.0.span()
    }
}

impl<T> Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: fmt::Display> fmt::Display for Spanned<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Spanned<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: PartialEq> PartialEq<T> for Spanned<T> {
    fn eq(&self, other: &T) -> bool {
        **self == *other
    }
}

impl PartialEq<&str> for Spanned<String> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Borrow<str> for Spanned<String> {
    fn borrow(&self) -> &str {
        self
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        marked_yaml::Spanned::deserialize(d).map(Spanned)
    }
}

impl<T: schemars::JsonSchema> schemars::JsonSchema for Spanned<T> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

/// Parses `250ms`, `2s`, `1m`, `2h`, `30d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {t:?} needs a unit (ms, s, m, h, d)"))?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("duration {t:?} must start with a number"))?;
    let secs = |per: u64| {
        n.checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {t:?} is too long"))
    };
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        u => Err(format!("unknown duration unit {u:?} (ms, s, m, h, d)")),
    }
}

/// What a connector's config is checked and planned against: the pipeline around it, and
/// where its findings go. Every finding is kept (not only the first), at its YAML span.
pub struct PlanCx<'a> {
    /// Relative paths resolve against this (the pipeline file's directory).
    pub base_dir: &'a Path,
    pub pipeline: &'a str,
    /// The pipeline has a `kafka:` connection block.
    pub has_kafka: bool,
    /// The pipeline has a `schema_registry:` block.
    pub has_registry: bool,
    /// The dead letters go to a topic.
    pub has_dlq_topic: bool,
    pub sql: &'a SqlPlanner,
    pub errors: Vec<(Span, String)>,
}

impl PlanCx<'_> {
    pub fn err<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.errors.push((*at.span(), message.into()));
    }

    /// A path written in the pipeline (relative to the pipeline file; `-` stays stdin).
    pub fn resolve(&self, p: &str) -> PathBuf {
        resolve(self.base_dir, p)
    }

    /// A duration setting, or `default` when absent (a bad value is reported at its place).
    pub fn duration_or(&mut self, v: &Option<Spanned<String>>, default: Duration) -> Duration {
        match v {
            Some(t) => parse_duration(t).unwrap_or_else(|e| {
                self.err(t, e);
                default
            }),
            None => default,
        }
    }
}

/// `p` relative to `base` (absolute paths and `-`, stdin, as they are).
pub fn resolve(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if p == "-" || path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("2").is_err());
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("2w").is_err());
        // Too long for seconds in a u64: an error, not a wrapped value.
        assert!(parse_duration("9999999999999999999h").is_err());
    }
}
