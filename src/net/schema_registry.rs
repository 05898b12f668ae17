//! A Confluent-compatible schema registry (Confluent, Karapace, Redpanda, Apicurio's ccompat
//! API), through `schema_registry_converter`.
//!
//! Avro records on Kafka carry the Confluent wire format: byte 0 is the magic byte `0x00`,
//! bytes 1..5 the writer schema id (big-endian u32), then the Avro binary datum. Readers fetch
//! the writer schema by id once (`GET /schemas/ids/{id}`) and keep it; writers register their
//! schema under a subject (`POST /subjects/{subject}/versions`) and prefix what they write
//! with the id it returns.
//!
//! Operators are synchronous, so fetching is split from decoding: `prefetch` (async, before a
//! batch is processed) resolves the ids a batch uses, then `writer` reads the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::Schema;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::{SrSettings, post_schema};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

/// The Confluent wire format's magic byte.
pub const MAGIC: u8 = 0;

/// Splits a Confluent-framed record into (schema id, Avro datum).
pub fn split_wire(record: &[u8]) -> Result<(u32, &[u8]), String> {
    match record {
        [] => Err("empty record: expected the Confluent wire format (magic byte 0x00)".into()),
        [m, ..] if *m != MAGIC => Err(format!(
            "offset 0: magic byte is 0x{m:02x}, expected 0x00 (not Confluent-framed Avro)"
        )),
        [_, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => Err(format!(
            "record is {} bytes: too short for the 5-byte Confluent header",
            record.len()
        )),
    }
}

/// Frames an Avro datum with the Confluent header.
pub fn frame_wire(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// What is known about a schema id.
#[derive(Clone)]
enum Entry {
    Schema(Arc<Schema>),
    /// The registry answered, and not with a schema (unknown id, not Avro, unparsable).
    Missing(String),
}

/// A registry client with a cache of writer schemas by id.
pub struct SchemaRegistry {
    url: String,
    settings: SrSettings,
    decoder: AvroDecoder,
    cache: Mutex<HashMap<u32, Entry>>,
}

/// Registry connection settings (from the pipeline's `schema_registry:`).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub url: String,
    pub username_env: Option<String>,
    pub password_env: Option<String>,
}

impl SchemaRegistry {
    pub fn new(config: &RegistryConfig) -> Result<Self, String> {
        let mut b = SrSettings::new_builder(config.url.clone());
        b.set_timeout(Duration::from_secs(10));
        if let Some(user_env) = &config.username_env {
            let user = std::env::var(user_env).map_err(|_| {
                format!("schema registry: environment variable {user_env} is not set")
            })?;
            let pass = match &config.password_env {
                Some(p) => Some(std::env::var(p).map_err(|_| {
                    format!("schema registry: environment variable {p} is not set")
                })?),
                None => None,
            };
            b.set_basic_authorization(&user, pass.as_deref());
        }
        let settings = b
            .build()
            .map_err(|e| format!("schema registry {}: {}", config.url, e.error))?;
        Ok(SchemaRegistry {
            url: config.url.clone(),
            decoder: AvroDecoder::new(settings.clone()),
            settings,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fetches the schemas of `ids` not yet known. Transient failures (registry down, 5xx)
    /// are retried with backoff and then returned as errors: the batch must not be decoded
    /// without its schemas, nor its records dead-lettered for the registry's outage.
    pub async fn prefetch(&self, ids: impl IntoIterator<Item = u32>) -> Result<(), String> {
        let missing: Vec<u32> = {
            let cache = self.cache.lock().expect("registry cache");
            let mut m: Vec<u32> = ids
                .into_iter()
                .filter(|id| !cache.contains_key(id))
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        for id in missing {
            let mut delay = Duration::from_millis(200);
            let entry = loop {
                let got = self.decoder.get_schema(id).await;
                tracing::debug!(
                    id,
                    ok = got.is_ok(),
                    "writer schema fetched from the registry"
                );
                match got {
                    Ok(s) => break Entry::Schema(Arc::new(s.parsed.clone())),
                    Err(e) if e.retriable && delay < Duration::from_secs(10) => {
                        tracing::warn!(id, error = %e.error, "schema registry unavailable; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                    Err(e) if e.retriable => {
                        return Err(format!(
                            "schema registry {}: schema id {id}: {}",
                            self.url, e.error
                        ));
                    }
                    Err(e) => {
                        break Entry::Missing(format!(
                            "schema id {id}: the registry has no usable Avro schema ({})",
                            e.error
                        ));
                    }
                }
            };
            self.cache.lock().expect("registry cache").insert(id, entry);
        }
        Ok(())
    }

    /// The writer schema for `id`, if `prefetch` saw it.
    pub fn writer(&self, id: u32) -> Result<Arc<Schema>, String> {
        match self.cache.lock().expect("registry cache").get(&id) {
            Some(Entry::Schema(s)) => Ok(s.clone()),
            Some(Entry::Missing(why)) => Err(why.clone()),
            None => Err(format!("schema id {id} was not fetched")),
        }
    }

    /// Registers `schema` (Avro JSON) under `subject` and returns its id (the registry returns
    /// the existing id when the schema is already registered).
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, String> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_string());
        let registered = post_schema(&self.settings, subject.to_string(), supplied)
            .await
            .map_err(|e| {
                format!(
                    "schema registry {}: registering subject {subject}: {}",
                    self.url, e.error
                )
            })?;
        Ok(registered.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_round_trip_and_errors() {
        let framed = frame_wire(0x0102_0304, b"datum");
        assert_eq!(&framed[..5], &[0, 1, 2, 3, 4]);
        assert_eq!(split_wire(&framed).unwrap(), (0x0102_0304, &b"datum"[..]));
        assert!(split_wire(b"{\"a\":1}").unwrap_err().contains("0x7b"));
        assert!(split_wire(&[0, 1]).unwrap_err().contains("too short"));
        assert!(split_wire(&[]).unwrap_err().contains("empty"));
    }
}
