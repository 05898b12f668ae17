//! Secrets by reference: a pipeline names where a secret is (`env:NAME`, `file:/path`), never
//! the secret itself; it is read when the run starts, and never logged or echoed.

/// A secret property's origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(std::path::PathBuf),
}

impl SecretRef {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(name) = s.strip_prefix("env:") {
            Ok(SecretRef::Env(name.to_string()))
        } else if let Some(path) = s.strip_prefix("file:") {
            Ok(SecretRef::File(path.into()))
        } else {
            // Not even part of the value is shown: it may be the secret itself.
            Err("a secret is `env:NAME` or `file:/path` (the value written is not shown)".into())
        }
    }

    pub fn read(&self) -> Result<String, String> {
        match self {
            SecretRef::Env(n) => {
                std::env::var(n).map_err(|_| format!("environment variable {n} is not set"))
            }
            SecretRef::File(p) => std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("secret file {}: {e}", p.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_values_are_never_echoed() {
        assert_eq!(
            SecretRef::parse("env:KAFKA_PASSWORD").unwrap(),
            SecretRef::Env("KAFKA_PASSWORD".into())
        );
        let e = SecretRef::parse("hunter2").unwrap_err();
        assert!(!e.contains("hunt"), "{e}");
    }
}
