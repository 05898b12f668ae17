//! Secrets by reference: a pipeline names where a secret is (`env:NAME`, `file:/path`, or
//! `secret:NAME` in `plexus serve`'s encrypted store), never the secret itself; it is read
//! when the run starts, and never logged or echoed.

use std::sync::{Arc, OnceLock};

/// Where `secret:NAME` references are read (`plexus serve` installs its encrypted store).
pub trait SecretStore: Send + Sync {
    fn get(&self, name: &str) -> Result<String, String>;
}

static STORE: OnceLock<Arc<dyn SecretStore>> = OnceLock::new();

/// Installs the process's secret store (once; later calls are ignored).
pub fn install_store(store: Arc<dyn SecretStore>) {
    let _ = STORE.set(store);
}

/// A secret property's origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(std::path::PathBuf),
    /// `secret:NAME`: `plexus serve`'s encrypted store.
    Stored(String),
}

impl SecretRef {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(name) = s.strip_prefix("env:") {
            Ok(SecretRef::Env(name.to_string()))
        } else if let Some(path) = s.strip_prefix("file:") {
            Ok(SecretRef::File(path.into()))
        } else if let Some(name) = s.strip_prefix("secret:") {
            Ok(SecretRef::Stored(name.to_string()))
        } else {
            // Not even part of the value is shown: it may be the secret itself.
            Err("a secret is `env:NAME`, `file:/path` or `secret:NAME` (the value written is not shown)".into())
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
            SecretRef::Stored(name) => match STORE.get() {
                Some(store) => store.get(name),
                None => Err(format!(
                    "secret:{name} is read from `plexus serve`'s secret store; `plexus run` takes env: or file:"
                )),
            },
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
