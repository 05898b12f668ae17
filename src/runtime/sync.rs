//! A pipeline's FHIR sync conflicts, listed and settled: what `plexus sync` and the server's
//! conflict routes share. Everything comes from the pipeline's syncing `fhir` sink: the
//! integration, where the sync state lives, the EHR's base, credentials and TLS, and where
//! sync events go.

use anyhow::{Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::connectors::fhir::sync::store::{StateLocation, SyncStore};
use crate::connectors::fhir::sync::{
    ConflictPolicy, Resolution, Status, SyncEvents, SyncOutcome, Syncer,
};
use crate::net::fhir_client::{ClientConfig, FhirClient};
use crate::plan::Plan;

/// What a sync command acts on.
pub struct SyncTarget {
    pub integration: String,
    pub state: StateLocation,
    /// The EHR client settings (base, credentials, TLS) when the pipeline gives them.
    pub client: Option<ClientConfig>,
    pub events: Option<SyncEvents>,
}

impl SyncTarget {
    /// `plan`'s syncing fhir sink (`sink` names it when there are several).
    pub fn of(plan: &Plan, sink: Option<&str>) -> Result<SyncTarget> {
        let syncing: Vec<_> = plan
            .sinks
            .iter()
            .filter_map(|s| {
                let crate::connectors::registry::SinkPlan::Fhir(f) = &s.connector else {
                    return None;
                };
                Some((s.name.as_str(), &f.http, f.sync.as_ref()?))
            })
            .filter(|(n, ..)| sink.is_none_or(|want| want == *n))
            .collect();
        let (name, h, sync) = match syncing.as_slice() {
            [one] => *one,
            [] => anyhow::bail!(
                "no fhir sink with `sync:`{}",
                sink.map(|s| format!(" named {s}")).unwrap_or_default()
            ),
            _ => anyhow::bail!("several syncing fhir sinks: name one"),
        };
        let in_sink = |e: String| anyhow::anyhow!("sink {name}: {e}");
        let client = h.fhir_client_config().map_err(in_sink)?;
        let events = sync.open_events(plan.kafka.as_ref()).map_err(in_sink)?;
        Ok(SyncTarget {
            integration: plan.integration_id.clone(),
            state: sync.state.location().map_err(in_sink)?,
            client: Some(client),
            events: Some(events),
        })
    }

    /// Entities with an open conflict: (type, key).
    pub async fn conflicts(&self) -> Result<Vec<(String, String)>> {
        let store = SyncStore::open(&self.state).await?;
        Ok(store.list(&self.integration, Status::Conflict).await?)
    }

    /// An open conflict's record (fields, both sides, when detected), if there is one.
    pub async fn conflict(&self, kind: &str, key: &str) -> Result<Option<Value>> {
        let store = SyncStore::open(&self.state).await?;
        let r = store.get((&self.integration, kind, key)).await?;
        Ok(r.filter(|r| r.status == Some(Status::Conflict))
            .and_then(|r| r.conflict))
    }

    /// Settles one conflict on the server (at the version seen now), records it as the
    /// agreed state and audits it with `actor`.
    pub async fn resolve(
        self,
        kind: &str,
        key: &str,
        how: &Resolution,
        actor: &str,
    ) -> Result<SyncOutcome> {
        let client = self
            .client
            .context("the EHR's FHIR base is needed to resolve a conflict")?;
        let syncer = Syncer {
            integration: self.integration,
            owner: format!("resolve:{actor}"),
            store: SyncStore::open(&self.state).await?,
            client: FhirClient::new(client)?,
            policy: ConflictPolicy::Manual,
            lease: std::time::Duration::from_secs(30),
            events: self.events,
        };
        let outcome = syncer.resolve(kind, key, how, actor).await;
        if let Some(e) = &syncer.events {
            e.finish()?;
        }
        Ok(outcome?)
    }
}

/// An opaque id for a conflict's entity: the key is a patient identifier (PHI), so routes
/// and logs name the entity by this instead.
pub fn conflict_id(kind: &str, key: &str) -> String {
    let h = Sha256::digest(format!("{kind}/{key}").as_bytes());
    h.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
