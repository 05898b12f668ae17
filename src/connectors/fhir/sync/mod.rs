//! Bidirectional sync with an EHR (the seed's SyncState and IntegrationOrchestrator): each
//! mapped resource is pushed to the FHIR server under a lease, with the versions both sides
//! last agreed on remembered, so that a change made on the server meanwhile is detected and
//! never silently overwritten.
//!
//! For one entity (a resource type and its business identifier):
//!
//! | local changed since last sync | server `versionId` moved | what happens |
//! |---|---|---|
//! | no  | no  | nothing (in sync) |
//! | yes | no  | update with `If-Match` on the agreed version (a racing write → conflict) |
//! | no  | yes | the server's version is adopted (in sync) |
//! | yes | yes | **conflict**: fields and both sides recorded; resolved by the integration's strategy (`timestamp_wins`, `source_priority`) or left for `plexus sync resolve` (`manual`) |
//!
//! A worker that cannot take the lease reports [`SyncOutcome::Contended`] (retry later, not
//! an error); every resolution is written to the audit log; every outcome is an event
//! (`integration.sync.completed|failed|conflict`).
//!
//! Merges (ADT^A40) move the state to the survivor. The merge's prior record is written
//! once, inactive and `replaced-by` the survivor, and the state remembers the merge; a later
//! message on the merged-away identifier (a feed that has not caught up) does not bring the
//! retired record back or write under it: it reports [`SyncOutcome::Merged`] with the
//! survivor's server id, so the rest of that message (visits, results) lands on the survivor.

pub mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::connectors::kafka::KafkaConnection;
use crate::connectors::monitoring::EventLog;
use crate::connectors::{ConnectorError, Durable};
use crate::fhir::v2::Resource;
use crate::net::fhir_client::{FhirClient, FhirError, Versioned};
use store::{SyncStore, Update};

/// Sync events (`integration.sync.completed|failed|conflict`), one JSON object per line to a
/// file and, when configured, to a topic. Shared by the clones of a [`Syncer`].
#[derive(Clone)]
pub struct SyncEvents(Arc<std::sync::Mutex<EventLog>>);

impl SyncEvents {
    pub fn open(
        path: &Path,
        topic: Option<&str>,
        kafka: Option<&KafkaConnection>,
    ) -> Result<Self, ConnectorError> {
        let topic = match (topic, kafka) {
            (Some(t), Some(k)) => Some((t, k)),
            (Some(t), None) => {
                return Err(ConnectorError::Other(format!(
                    "topic {t} needs a `kafka:` connection"
                )));
            }
            _ => None,
        };
        Ok(SyncEvents(Arc::new(std::sync::Mutex::new(EventLog::new(
            path, topic,
        )?))))
    }

    fn append(&self, key: &str, event: &Value) {
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // An event that cannot be written must not fail the sync it reports on; the
        // warning names the failure, never the event (it may describe patient data).
        if let Err(e) = log.append(key, event) {
            tracing::warn!(error = %e, "sync event not written");
        }
    }

    /// Makes the events so far durable (file flushed; topic deliveries to wait for).
    pub fn barrier(&self) -> Result<Option<Durable>, ConnectorError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }

    pub fn finish(&self) -> Result<(), ConnectorError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InSync,
    OutOfSync,
    Conflict,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InSync => "in_sync",
            Status::OutOfSync => "out_of_sync",
            Status::Conflict => "conflict",
            Status::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "in_sync" => Status::InSync,
            "out_of_sync" => Status::OutOfSync,
            "conflict" => Status::Conflict,
            "error" => Status::Error,
            _ => return None,
        })
    }
}

/// How a conflict is settled when it is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// The newer side wins: the local message time against the server's `meta.lastUpdated`.
    TimestampWins,
    /// The named side always wins.
    SourcePriority(Side),
    /// Recorded for a person to resolve (`plexus sync resolve`).
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Local,
    External,
}

/// How `resolve` settles a recorded conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    UseLocal,
    UseExternal,
    /// Per field: which side's value to keep (fields not named keep the server's).
    Merge(BTreeMap<String, Side>),
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync state: {0}")]
    Store(String),
    #[error("the lease expired during the sync: another worker holds the entity now")]
    LeaseLost,
    #[error(transparent)]
    Fhir(#[from] FhirError),
    #[error("{0}")]
    Invalid(String),
}

impl SyncOutcome {
    /// The server's id of the resource, when the sync settled it.
    pub fn external_id(&self) -> Option<&str> {
        match self {
            SyncOutcome::Created { id, .. }
            | SyncOutcome::Updated { id, .. }
            | SyncOutcome::Unchanged { id }
            | SyncOutcome::AdoptedExternal { id, .. }
            | SyncOutcome::Merged { id }
            | SyncOutcome::Conflict { id, .. } => Some(id),
            SyncOutcome::Contended => None,
        }
    }
}

/// What one sync of one entity came to.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncOutcome {
    Created {
        id: String,
        version: Option<String>,
    },
    Updated {
        id: String,
        version: Option<String>,
    },
    Unchanged {
        id: String,
    },
    AdoptedExternal {
        id: String,
        version: Option<String>,
    },
    /// Both sides changed; the differing fields.
    Conflict {
        id: String,
        fields: Vec<String>,
    },
    /// The entity was merged into another (ADT^A40): nothing written; `id` is the
    /// survivor's server id, which references to this entity now mean.
    Merged {
        id: String,
    },
    /// Another worker holds the entity: try again later.
    Contended,
}

/// The part a resource plays in a merge, read from its FHIR `link`s.
#[derive(Debug, PartialEq)]
enum MergeRole<'a> {
    None,
    /// It `replaces` records merged into it: whatever merged it away before is undone.
    Survivor,
    /// The merge's prior record, `replaced-by` the server's resource at this reference.
    Prior(&'a str),
}

fn merge_role(body: &Value) -> MergeRole<'_> {
    let links = body["link"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let of = |kind: &str| {
        links
            .iter()
            .find(|l| l["type"] == kind)
            .and_then(|l| l["other"]["reference"].as_str())
    };
    match (of("replaced-by"), of("replaces")) {
        (Some(survivor), _) => MergeRole::Prior(survivor),
        (None, Some(_)) => MergeRole::Survivor,
        (None, None) => MergeRole::None,
    }
}

pub struct Syncer {
    pub integration: String,
    /// This worker's name (lease owner).
    pub owner: String,
    pub store: SyncStore,
    pub client: FhirClient,
    pub policy: ConflictPolicy,
    pub lease: Duration,
    /// Where sync events go (none: not published).
    pub events: Option<SyncEvents>,
}

/// The resource as compared and hashed: without server-assigned `id` and `meta`, and the
/// narrative the server may generate.
fn content(resource: &Value) -> Value {
    let mut v = resource.clone();
    if let Value::Object(o) = &mut v {
        for k in ["id", "meta", "text"] {
            o.remove(k);
        }
    }
    v
}

/// A hash of the canonical JSON (keys sorted at every level).
fn hash(resource: &Value) -> String {
    fn canonical(v: &Value) -> Value {
        match v {
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (k.clone(), canonical(v)))
                    .collect::<BTreeMap<_, _>>()
                    .into_iter()
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }
    let mut h = Sha256::new();
    h.update(canonical(&content(resource)).to_string().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of what a message says: its content and the elements it deletes. This is what a
/// replay of the same message is compared with.
fn message_hash(local: &Value, deleted: &[String]) -> String {
    if deleted.is_empty() {
        return hash(local);
    }
    let mut v = local.clone();
    v["_plexus_delete"] = json!(deleted);
    hash(&v)
}

/// The server's side of a conflict, and the merge of the message into it.
struct Sides<'a> {
    merged: &'a Value,
    external: &'a Value,
    ext_id: &'a str,
    ext_version: Option<&'a str>,
    base_version: Option<&'a str>,
}

impl Syncer {
    fn key<'a>(&'a self, kind: &'a str, entity: &'a str) -> (&'a str, &'a str, &'a str) {
        (self.integration.as_str(), kind, entity)
    }

    fn event(&self, kind: &str, entity_type: &str, entity: &str, details: Value) {
        let Some(events) = &self.events else { return };
        // The business identifier is patient data: events carry its hash only.
        let entity = hash(&Value::from(entity));
        let line = json!({
            "type": format!("integration.sync.{kind}"),
            "integration": self.integration,
            "entity_type": entity_type,
            "entity": entity,
            "instance": self.owner,
            "at": chrono::Utc::now().to_rfc3339(),
            "details": details,
        });
        // Keyed by entity: one entity's events stay in order on a topic's partition.
        events.append(
            &format!("{}/{entity_type}/{entity}", self.integration),
            &line,
        );
    }

    /// Pushes one mapped resource (its business identifier names the entity), detecting a
    /// concurrent change on the server. `local_time` is when the local change happened
    /// (the message time), for `timestamp_wins`.
    pub async fn sync(
        &self,
        resource: &Resource<Value>,
        local_time: chrono::DateTime<chrono::Utc>,
    ) -> Result<SyncOutcome, SyncError> {
        let (system, value) = resource.identifier.as_ref().ok_or_else(|| {
            SyncError::Invalid(format!(
                "a {} without a business identifier cannot be synced",
                resource.resource_type
            ))
        })?;
        let entity = format!("{system}|{value}");
        let kind = resource.resource_type;
        let key = self.key(kind, &entity);
        if !self.store.acquire(key, &self.owner, self.lease).await? {
            return Ok(SyncOutcome::Contended);
        }
        let result = self.sync_merging(resource, &entity, local_time).await;
        let outcome = match &result {
            Ok(SyncOutcome::Conflict { fields, .. }) => {
                self.event("conflict", kind, &entity, json!({"fields": fields}));
                result
            }
            Ok(o) => {
                self.event(
                    "completed",
                    kind,
                    &entity,
                    json!({"outcome": format!("{o:?}").split(' ').next()}),
                );
                result
            }
            Err(e) => {
                // Counted and scheduled for a retry; the error text names no patient data.
                let retry = Duration::from_secs(30);
                let _ = self
                    .store
                    .save(
                        key,
                        &self.owner,
                        &Update {
                            status: Status::Error,
                            local_hash: None,
                            local_resource: None,
                            external_id: None,
                            external_version: None,
                            conflict: None,
                            synced: false,
                            retry_in: Some(retry),
                        },
                    )
                    .await;
                self.event("failed", kind, &entity, json!({"error": e.to_string()}));
                result
            }
        };
        self.store.release(key, &self.owner).await?;
        outcome
    }

    /// `sync_held`, with the merges the resource takes part in (see the module docs).
    async fn sync_merging(
        &self,
        resource: &Resource<Value>,
        entity: &str,
        local_time: chrono::DateTime<chrono::Utc>,
    ) -> Result<SyncOutcome, SyncError> {
        let kind = resource.resource_type;
        let key = self.key(kind, entity);
        let role = merge_role(&resource.body);
        // Only Patients are merged (A40); other types skip the look-up.
        if role == MergeRole::None
            && kind == "Patient"
            && let Some(survivor) = self.survivor(kind, entity).await?
        {
            let state = self.store.get(self.key(kind, &survivor)).await?;
            let Some(id) = state.and_then(|s| s.external_id) else {
                return Err(SyncError::Invalid(format!(
                    "this {kind} was merged into one that is not on the server yet"
                )));
            };
            let details = json!({"survivor": survivor, "survivor_id": id});
            self.store
                .audit(key, "followed_survivor", &self.owner, &details)
                .await?;
            return Ok(SyncOutcome::Merged { id });
        }
        // A 412 on our update means a write raced ours: the second pass sees the server's
        // new version and records the conflict.
        let mut result = self.sync_held(resource, entity, local_time).await;
        if matches!(&result, Err(SyncError::Fhir(e)) if e.is_conflict()) {
            result = self.sync_held(resource, entity, local_time).await;
        }
        let settled = matches!(
            result,
            Ok(SyncOutcome::Created { .. }
                | SyncOutcome::Updated { .. }
                | SyncOutcome::Unchanged { .. }
                | SyncOutcome::AdoptedExternal { .. })
        );
        match role {
            MergeRole::Survivor if settled && self.store.unmerge(key).await? => {
                let details = json!({"reason": "it survives a later merge"});
                self.store
                    .audit(key, "unmerged", &self.owner, &details)
                    .await?;
            }
            MergeRole::Prior(reference) if settled => {
                // The survivor was synced first (the message's first Patient), so its
                // reference is the server's id, which names its entity in the state.
                let survivor = match reference.split_once('/') {
                    Some((_, id)) => {
                        self.store
                            .by_external_id(&self.integration, kind, id)
                            .await?
                    }
                    None => None,
                };
                let Some(survivor) = survivor else {
                    return Err(SyncError::Invalid(format!(
                        "the {kind} this one was merged into is not in the sync state"
                    )));
                };
                if self.store.survivor(key).await?.as_deref() != Some(survivor.as_str()) {
                    self.store.merge(key, &survivor).await?;
                    let details = json!({"survivor": survivor});
                    self.store
                        .audit(key, "merged_into", &self.owner, &details)
                        .await?;
                }
            }
            _ => {}
        }
        result
    }

    /// The entity `entity` was last merged into, following merges of merges (none: it was
    /// not merged away).
    pub async fn survivor(&self, kind: &str, entity: &str) -> Result<Option<String>, SyncError> {
        let mut seen = vec![entity.to_string()];
        // A chain is as long as the merges of one person; the bound and `seen` stop a
        // cycle written by hand.
        for _ in 0..16 {
            let at = seen.last().map(String::as_str).unwrap_or(entity);
            match self.store.survivor(self.key(kind, at)).await? {
                Some(next) if !seen.contains(&next) => seen.push(next),
                _ => break,
            }
        }
        Ok((seen.len() > 1).then(|| seen.pop()).flatten())
    }

    /// The server's id of an entity synced before (none: never synced).
    pub async fn external_id(&self, kind: &str, entity: &str) -> Result<Option<String>, SyncError> {
        Ok(self
            .store
            .get(self.key(kind, entity))
            .await?
            .and_then(|s| s.external_id))
    }

    /// Saves the message and the server's version as agreed: nothing to write.
    async fn agreed(
        &self,
        key: (&str, &str, &str),
        local_hash: &str,
        local: &Value,
        ext_id: String,
        ext_version: Option<&str>,
    ) -> Result<SyncOutcome, SyncError> {
        let update = Update::in_sync(local_hash, local, Some(&ext_id), ext_version);
        self.store.save(key, &self.owner, &update).await?;
        Ok(SyncOutcome::Unchanged { id: ext_id })
    }

    /// Which side a configured policy lets win a conflict (None: manual).
    fn winner(&self, external: &Value, local_time: chrono::DateTime<chrono::Utc>) -> Option<Side> {
        match self.policy {
            ConflictPolicy::Manual => None,
            ConflictPolicy::SourcePriority(side) => Some(side),
            ConflictPolicy::TimestampWins => {
                let server_time = external["meta"]["lastUpdated"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                Some(match server_time {
                    Some(t) if t > local_time => Side::External,
                    _ => Side::Local,
                })
            }
        }
    }

    /// Records a conflict over `fields` for `plexus sync resolve`.
    async fn conflict(
        &self,
        key: (&str, &str, &str),
        resource: &Resource<Value>,
        local: &Value,
        sides: Sides<'_>,
        fields: Vec<String>,
    ) -> Result<SyncOutcome, SyncError> {
        let pick = |v: &Value| -> Value {
            fields
                .iter()
                .map(|f| (f.clone(), v.get(f).cloned().unwrap_or(Value::Null)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let conflict = json!({
            "fields": fields,
            "local": pick(sides.merged),
            "external": pick(sides.external),
            "local_resource": local,
            "deleted": resource.deleted,
            "external_id": sides.ext_id,
            "external_version": sides.ext_version,
            "base_version": sides.base_version,
            "detected_at": chrono::Utc::now().to_rfc3339(),
        });
        self.store
            .save(
                key,
                &self.owner,
                &Update {
                    status: Status::Conflict,
                    local_hash: None,
                    local_resource: None,
                    external_id: Some(sides.ext_id),
                    external_version: None,
                    conflict: Some(&conflict),
                    synced: false,
                    retry_in: None,
                },
            )
            .await?;
        Ok(SyncOutcome::Conflict {
            id: sides.ext_id.to_string(),
            fields,
        })
    }

    /// A directory resource (Practitioner, Location, Organization) belongs to the server once
    /// it exists: adopted, never overwritten. It is created with a conditional create
    /// (`If-None-Exist`), which the server decides atomically, so integrations naming the
    /// same doctor at once make one; duplicates made elsewhere are not this message's
    /// failure: the oldest (lowest id) is adopted.
    async fn sync_directory(
        &self,
        resource: &Resource<Value>,
        key: (&str, &str, &str),
        found: Vec<Value>,
        query: &str,
    ) -> Result<SyncOutcome, SyncError> {
        let oldest = found
            .into_iter()
            .min_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        if let Some(external) = oldest {
            let ext_id = external["id"].as_str().unwrap_or_default().to_string();
            let ext_version = external["meta"]["versionId"].as_str().map(str::to_string);
            return self.adopt(key, ext_id, ext_version).await;
        }
        let local = content(&resource.body);
        let v = self.client.conditional_create(&local, query).await?;
        let ext_id = v.id().unwrap_or_default().to_string();
        self.adopt(key, ext_id, v.version_id).await
    }

    /// The server's version is the agreed one.
    async fn adopt(
        &self,
        key: (&str, &str, &str),
        ext_id: String,
        ext_version: Option<String>,
    ) -> Result<SyncOutcome, SyncError> {
        self.store
            .save(
                key,
                &self.owner,
                &Update {
                    status: Status::InSync,
                    local_hash: None,
                    local_resource: None,
                    external_id: Some(&ext_id),
                    external_version: ext_version.as_deref(),
                    conflict: None,
                    synced: true,
                    retry_in: None,
                },
            )
            .await?;
        Ok(SyncOutcome::AdoptedExternal {
            id: ext_id,
            version: ext_version,
        })
    }

    async fn sync_held(
        &self,
        resource: &Resource<Value>,
        entity: &str,
        local_time: chrono::DateTime<chrono::Utc>,
    ) -> Result<SyncOutcome, SyncError> {
        let kind = resource.resource_type;
        let key = self.key(kind, entity);
        let state = self.store.get(key).await?.unwrap_or_default();
        let local = content(&resource.body);
        let local_hash = message_hash(&local, &resource.deleted);
        let query = crate::fhir::bundle::search_query(resource)
            .ok_or_else(|| SyncError::Invalid(format!("a {kind} without an identifier")))?;
        let found = self.client.search(kind, &query).await?;
        if resource.write() == crate::fhir::v2::Write::CreateOnce {
            return self.sync_directory(resource, key, found, &query).await;
        }
        if found.len() > 1 {
            return Err(SyncError::Invalid(format!(
                "{} {kind} resources on the server share the identifier",
                found.len()
            )));
        }
        let Some(external) = found.into_iter().next() else {
            let v = self.client.conditional_update(&local, &query).await?;
            self.saved(key, &local, &local_hash, &v).await?;
            return Ok(SyncOutcome::Created {
                id: v.id().unwrap_or_default().to_string(),
                version: v.version_id,
            });
        };
        let ext_id = external["id"].as_str().unwrap_or_default().to_string();
        let ext_version = external["meta"]["versionId"].as_str().map(str::to_string);
        // v2 update semantics: the message applied to the server's version — what it does
        // not carry stays, what it nulls goes (`crate::fhir::merge`) — and the elements that
        // would change on the server.
        let merged = crate::fhir::merge::merge(&external, &local, &resource.deleted);
        let would_change = crate::fhir::merge::changed_elements(&merged, &external);
        let local_changed = state.local_hash.as_deref() != Some(local_hash.as_str());
        let external_changed = match (&state.external_version, &ext_version) {
            (Some(base), Some(now)) => base != now,
            // Never synced, or a server without versions: nothing to compare against.
            _ => false,
        };
        match (local_changed, external_changed) {
            (false, false) => {
                self.agreed(key, &local_hash, &local, ext_id, ext_version.as_deref())
                    .await
            }
            (true, false) if would_change.is_empty() => {
                // A new message that the server already agrees with: nothing to write.
                self.agreed(key, &local_hash, &local, ext_id, ext_version.as_deref())
                    .await
            }
            (true, false) => {
                let base = state.external_version.clone().or(ext_version.clone());
                self.push(key, &merged, &local, &local_hash, &ext_id, base.as_deref())
                    .await
            }
            // The server moved on; our side did not: its version is the agreed one.
            (false, true) => self.adopt(key, ext_id, ext_version).await,
            (true, true) if would_change.is_empty() => {
                // Both moved, but the server already holds what the message says: no conflict.
                self.agreed(key, &local_hash, &local, ext_id, ext_version.as_deref())
                    .await
            }
            (true, true) => {
                let winner = self.winner(&external, local_time);
                // The conflict is over what this message would change, not over elements it
                // does not carry.
                let fields = would_change.clone();
                if let Some(side) = winner {
                    let side = if side == Side::Local {
                        "local"
                    } else {
                        "external"
                    };
                    let details = json!({"winner": side, "fields": fields});
                    self.store
                        .audit(key, "auto_resolved", &self.owner, &details)
                        .await?;
                }
                match winner {
                    Some(Side::Local) => {
                        self.push(
                            key,
                            &merged,
                            &local,
                            &local_hash,
                            &ext_id,
                            ext_version.as_deref(),
                        )
                        .await
                    }
                    Some(Side::External) => {
                        self.store
                            .save(
                                key,
                                &self.owner,
                                &Update::in_sync(
                                    &local_hash,
                                    &local,
                                    Some(&ext_id),
                                    ext_version.as_deref(),
                                ),
                            )
                            .await?;
                        Ok(SyncOutcome::AdoptedExternal {
                            id: ext_id,
                            version: ext_version,
                        })
                    }
                    None => {
                        let sides = Sides {
                            merged: &merged,
                            external: &external,
                            ext_id: &ext_id,
                            ext_version: ext_version.as_deref(),
                            base_version: state.external_version.as_deref(),
                        };
                        self.conflict(key, resource, &local, sides, fields).await
                    }
                }
            }
        }
    }

    /// Writes `write` (the message merged into the server's version) on version `base`; a
    /// write racing ours makes it a conflict on the next sync (the state keeps the old agreed
    /// version). The state records the message's own content and hash.
    async fn push(
        &self,
        key: (&str, &str, &str),
        write: &Value,
        local: &Value,
        local_hash: &str,
        ext_id: &str,
        base: Option<&str>,
    ) -> Result<SyncOutcome, SyncError> {
        let mut body = write.clone();
        body["id"] = Value::from(ext_id);
        let v = self.client.update(&body, base).await?;
        self.saved(key, local, local_hash, &v).await?;
        Ok(SyncOutcome::Updated {
            id: ext_id.to_string(),
            version: v.version_id,
        })
    }

    async fn saved(
        &self,
        key: (&str, &str, &str),
        local: &Value,
        local_hash: &str,
        v: &Versioned,
    ) -> Result<(), SyncError> {
        let update = Update::in_sync(local_hash, local, v.id(), v.version_id.as_deref());
        self.store.save(key, &self.owner, &update).await
    }

    /// Settles a recorded conflict: writes the chosen content to the server (on the version
    /// seen now, so a newer server change fails rather than being overwritten), records it
    /// as the agreed state, and audits who did what.
    pub async fn resolve(
        &self,
        kind: &str,
        entity: &str,
        how: &Resolution,
        actor: &str,
    ) -> Result<SyncOutcome, SyncError> {
        let key = self.key(kind, entity);
        if !self.store.acquire(key, &self.owner, self.lease).await? {
            return Ok(SyncOutcome::Contended);
        }
        let result = self.resolve_held(kind, entity, how, actor).await;
        self.store.release(key, &self.owner).await?;
        if result.is_ok() {
            self.event(
                "completed",
                kind,
                entity,
                json!({"resolved": format!("{how:?}").split('(').next()}),
            );
        }
        result
    }

    async fn resolve_held(
        &self,
        kind: &str,
        entity: &str,
        how: &Resolution,
        actor: &str,
    ) -> Result<SyncOutcome, SyncError> {
        let key = self.key(kind, entity);
        let state = self.store.get(key).await?.unwrap_or_default();
        let (Some(Status::Conflict), Some(conflict)) = (state.status, state.conflict.clone())
        else {
            return Err(SyncError::Invalid(format!(
                "{kind} {entity}: no open conflict"
            )));
        };
        let ext_id = conflict["external_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let current = self.client.read(kind, &ext_id).await?;
        let local = conflict["local_resource"].clone();
        let deleted: Vec<String> = conflict["deleted"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(str::to_string))
            .collect();
        let chosen = match how {
            // The message applied to the server's current version (v2 update semantics).
            Resolution::UseLocal => Some(content(&crate::fhir::merge::merge(
                &current.resource,
                &local,
                &deleted,
            ))),
            Resolution::UseExternal => None,
            Resolution::Merge(choices) => {
                let mut merged = content(&current.resource);
                for (field, side) in choices {
                    if *side == Side::Local {
                        match local.get(field) {
                            Some(v) => merged[field.as_str()] = v.clone(),
                            None => {
                                if let Value::Object(o) = &mut merged {
                                    o.remove(field);
                                }
                            }
                        }
                    }
                }
                Some(merged)
            }
        };
        let (agreed, version) = match &chosen {
            Some(c) => {
                let mut body = c.clone();
                body["id"] = Value::from(ext_id.as_str());
                let v = self
                    .client
                    .update(&body, current.version_id.as_deref())
                    .await?;
                (c.clone(), v.version_id)
            }
            None => (content(&current.resource), current.version_id.clone()),
        };
        // The state remembers the hash of the *message's* content, not of what was agreed:
        // that is what a replay of the same message is compared with, so a replayed message
        // that was settled by this decision changes nothing (it is not a new local change).
        let message_hash = message_hash(&local, &deleted);
        self.store
            .save(
                key,
                &self.owner,
                &Update::in_sync(&message_hash, &agreed, Some(&ext_id), version.as_deref()),
            )
            .await?;
        let strategy = match how {
            Resolution::UseLocal => json!("use_local"),
            Resolution::UseExternal => json!("use_external"),
            Resolution::Merge(c) => {
                json!({"merge": c.iter().map(|(f, s)| (f.clone(), Value::from(if *s == Side::Local { "local" } else { "external" }))).collect::<serde_json::Map<_, _>>()})
            }
        };
        self.store
            .audit(
                key,
                "resolved",
                actor,
                &json!({
                    "strategy": strategy,
                    "fields": conflict["fields"],
                    "from_version": current.version_id,
                    "to_version": version,
                }),
            )
            .await?;
        Ok(SyncOutcome::Updated {
            id: ext_id,
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_role_is_read_from_the_links() {
        let link =
            |kind: &str| json!({"link": [{"other": {"reference": "Patient/9"}, "type": kind}]});
        assert_eq!(
            merge_role(&link("replaced-by")),
            MergeRole::Prior("Patient/9")
        );
        assert_eq!(merge_role(&link("replaces")), MergeRole::Survivor);
        assert_eq!(merge_role(&link("seealso")), MergeRole::None);
        assert_eq!(merge_role(&json!({"active": true})), MergeRole::None);
    }

    #[test]
    fn hashes_ignore_key_order_and_server_fields() {
        let a = json!({"resourceType": "Patient", "gender": "male", "name": [{"family": "X"}]});
        let b = json!({"name": [{"family": "X"}], "id": "7", "meta": {"versionId": "3"}, "gender": "male", "resourceType": "Patient"});
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(
            hash(&a),
            hash(&json!({"resourceType": "Patient", "gender": "female"}))
        );
        assert_eq!(
            crate::fhir::merge::changed_elements(
                &a,
                &json!({"resourceType": "Patient", "gender": "female", "name": [{"family": "X"}]})
            ),
            ["gender"]
        );
    }
}
