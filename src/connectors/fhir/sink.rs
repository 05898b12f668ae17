//! The `fhir` sink with `sync:`: each resource row of a `fhir` stage goes through the sync
//! state (`connectors::fhir::sync`) instead of a blind conditional update — under a lease, with the
//! versions both sides agreed on remembered, so that a change made on the server since the
//! last sync is detected and never overwritten.
//!
//! Per row: created, updated, unchanged or the server's version adopted → delivered; a
//! conflict → recorded in the sync state for `plexus sync resolve` *and* sent to the
//! dead-letter output (rule `sync:conflict`), so the run's counts show it; an entity another
//! worker holds → retried after a pause, dead-lettered (`sync:contended`) if it stays held;
//! any other failure → dead-lettered (`sync`) with the reason. References between resources
//! of the feed (`Encounter.subject` → `Patient/<plexus id>`) are rewritten to the server's
//! ids as the sink learns them.
//!
//! Concurrency: the rows of a batch are grouped by patient (a message's resources go with
//! its Patient's identifier), and up to `concurrency` patients sync at once. Within a group
//! rows keep their order, so one patient's messages reach the EHR in feed order and an
//! encounter follows the patient it refers to. An ADT^A40's Patients refer to each other:
//! the survivor is written first without its `replaces` link, then again with it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use serde_json::Value;

use super::config::SyncPlan;
use crate::connectors::fhir::sync::{SyncError, SyncOutcome, Syncer};
use crate::connectors::http::HttpSinkPlan;
use crate::connectors::http::Outcome;
use crate::connectors::http::sink::report_call;
use crate::connectors::{BatchSink, BuildCx, ConnectorError, SinkOutcome};
use crate::fhir::v2::Resource;
use crate::metrics::outcome::OutcomeTap;
use crate::net::fhir_client::FhirError;
use crate::record::{DeadLetters, RECORD_INDEX};

/// How often a held entity is tried before the row is dead-lettered.
const CONTENDED_TRIES: u32 = 10;

/// Starts a `fhir` sink with `sync:`: every resource through the sync state.
pub fn build(
    h: &HttpSinkPlan,
    sync: &SyncPlan,
    name: &str,
    cx: &BuildCx<'_>,
) -> Result<FhirSyncSink, ConnectorError> {
    use crate::net::fhir_client::FhirClient;
    let in_sink = |e: String| ConnectorError::Other(format!("sink {name}: {e}"));
    let state = sync.state.location().map_err(in_sink)?;
    let config = h.fhir_client_config().map_err(in_sink)?;
    let mut client = FhirClient::new(config).map_err(|e| in_sink(e.to_string()))?;
    if let Some(c) = h.breaker.clone() {
        client = client.with_breaker(cx.breaker(name, c));
    }
    let store = cx
        .rt
        .block_on(crate::connectors::fhir::sync::store::SyncStore::open(
            &state,
        ))
        .map_err(|e| in_sink(e.to_string()))?;
    let events = sync.open_events(cx.kafka).map_err(in_sink)?;
    let syncer = Syncer {
        integration: cx.integration.to_string(),
        owner: format!("{}-{}", cx.pipeline, std::process::id()),
        store,
        client,
        policy: sync.policy,
        lease: sync.lease,
        events: Some(events),
    };
    Ok(FhirSyncSink::new(
        name,
        syncer,
        cx.rt.clone(),
        cx.outcomes.clone(),
        h.concurrency,
    ))
}

pub struct FhirSyncSink {
    name: String,
    syncer: Syncer,
    handle: tokio::runtime::Handle,
    outcomes: OutcomeTap,
    outcome: SinkOutcome,
    /// `Type/plexus-id` → `Type/server-id`, learnt from synced resources.
    references: Mutex<HashMap<String, String>>,
    /// Patients synced at once.
    concurrency: usize,
    delivered: u64,
    /// One lock per directory resource (`Type/plexus-id`): many patients name the same
    /// doctor or ward, and the tasks of this process share one lease owner, so they take
    /// turns; the first syncs it, the rest reuse the server id it learnt.
    directory: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// One row to sync.
struct Row<'a> {
    kind: &'a str,
    id: &'a str,
    /// The business identifier: (system, value).
    key: (String, String),
    body: &'a str,
    /// Elements the message deletes (`delete_elements`).
    deleted: Vec<String>,
}

/// Why a row is dead-lettered: (rule, reason).
type Failure = (&'static str, String);

/// The rows of a group not synced yet: `Type/plexus-id` → (type, business identifier).
type Pending<'a> = HashMap<String, (&'a str, &'a (String, String))>;

/// The references (`reference` values) in a resource that `keep` picks.
fn references(v: &Value, keep: &dyn Fn(&str) -> bool, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                match (k.as_str(), child) {
                    ("reference", Value::String(r)) => {
                        if keep(r) {
                            out.push(r.clone());
                        }
                    }
                    _ => references(child, keep, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| references(c, keep, out)),
        _ => {}
    }
}

/// Removes what holds a reference to one of `to`: the list entry it is in, or the element
/// that is the Reference. Lists and elements left empty go too (FHIR has no empty ones).
fn strip_references(v: &mut Value, to: &HashSet<String>) {
    fn names(v: &Value, to: &HashSet<String>) -> bool {
        v.get("reference")
            .and_then(Value::as_str)
            .is_some_and(|r| to.contains(r))
    }
    fn holds(v: &Value, to: &HashSet<String>) -> bool {
        match v {
            Value::Object(o) => names(v, to) || o.values().any(|c| holds(c, to)),
            Value::Array(a) => a.iter().any(|c| holds(c, to)),
            _ => false,
        }
    }
    match v {
        Value::Object(o) => {
            o.retain(|_, c| !names(c, to));
            for c in o.values_mut() {
                strip_references(c, to);
            }
            o.retain(|_, c| match c {
                Value::Array(a) => !a.is_empty(),
                Value::Object(m) => !m.is_empty(),
                _ => true,
            });
        }
        Value::Array(a) => a.retain(|c| !holds(c, to)),
        _ => {}
    }
}

/// Rows synced one after the other: a patient's, or a message's without a patient.
#[derive(Hash, PartialEq, Eq)]
enum Group<'a> {
    Patient(&'a (String, String)),
    Message(i64),
}

impl FhirSyncSink {
    pub fn new(
        name: &str,
        syncer: Syncer,
        handle: tokio::runtime::Handle,
        outcomes: OutcomeTap,
        concurrency: usize,
    ) -> Self {
        FhirSyncSink {
            name: name.to_string(),
            syncer,
            handle,
            outcomes,
            outcome: SinkOutcome::default(),
            references: Mutex::new(HashMap::new()),
            concurrency: concurrency.max(1),
            delivered: 0,
            directory: Mutex::new(HashMap::new()),
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Other(format!("sink {}: {e}", self.name))
    }

    /// Rewrites references to resources the server knows by another id.
    fn rewrite(&self, v: &mut Value) {
        let known = self.references.lock().unwrap_or_else(|p| p.into_inner());
        crate::fhir::bundle::rewrite_references(v, &known);
    }

    fn learn(&self, resource_type: &str, id: &str, server_id: &str) {
        self.references
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                format!("{resource_type}/{id}"),
                format!("{resource_type}/{server_id}"),
            );
    }

    /// Resolves the references to rows of the group not synced yet (`pending`) from the sync
    /// state of earlier runs; those it cannot resolve are removed, and `true` says the row is
    /// to be synced again once they are. Only a merge refers forward (the survivor
    /// `replaces` the prior record written after it); a server that checks references would
    /// refuse a dangling one.
    async fn forward_references(
        &self,
        json: &mut Value,
        pending: &Pending<'_>,
    ) -> Result<bool, Failure> {
        // Nearly every row refers only backwards: nothing to look up, nothing to rewrite.
        let mut refs = Vec::new();
        references(json, &|r| pending.contains_key(r), &mut refs);
        if refs.is_empty() {
            return Ok(false);
        }
        let refs: HashSet<String> = refs.into_iter().collect();
        let mut unresolved = HashSet::new();
        for r in refs {
            let Some((kind, (system, value))) = pending.get(r.as_str()) else {
                continue;
            };
            let entity = format!("{system}|{value}");
            match self.syncer.external_id(kind, &entity).await {
                Ok(Some(server_id)) => {
                    let (kind, id) = r.split_once('/').unwrap_or_default();
                    self.learn(kind, id, &server_id);
                }
                Ok(None) => {
                    unresolved.insert(r);
                }
                Err(e) => return Err(("sync", e.to_string())),
            }
        }
        self.rewrite(json);
        if unresolved.is_empty() {
            return Ok(false);
        }
        strip_references(json, &unresolved);
        Ok(true)
    }

    /// Syncs one row; `Ok(true)`: synced without its forward references (sync it again
    /// after the rest of its group); `Err(rule, reason)` dead-letters it.
    async fn sync_row(&self, row: &Row<'_>, pending: &Pending<'_>) -> Result<bool, Failure> {
        let Row {
            kind,
            id,
            ref key,
            body,
            ref deleted,
        } = *row;
        let resource_type: &'static str = match kind {
            "Bundle" => {
                return Err((
                    "sync",
                    "a Bundle row cannot be synced: use a `fhir` stage without `bundle:`".into(),
                ));
            }
            k => match crate::fhir::v2::RESOURCE_TYPES
                .iter()
                .copied()
                .find(|t| *t == k)
            {
                Some(t) => t,
                None => return Err(("sync", format!("no sync for {k} resources"))),
            },
        };
        let _turn = match crate::fhir::v2::Write::of(resource_type) {
            crate::fhir::v2::Write::CreateOnce => {
                let name = format!("{resource_type}/{id}");
                let lock = self
                    .directory
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(name.clone())
                    .or_default()
                    .clone();
                let turn = lock.lock_owned().await;
                let known = self.references.lock().unwrap_or_else(|p| p.into_inner());
                if known.contains_key(&name) {
                    // Synced earlier in this run: the server has it; nothing to send.
                    return Ok(false);
                }
                Some(turn)
            }
            crate::fhir::v2::Write::Update => None,
        };
        let mut json: Value =
            serde_json::from_str(body).map_err(|e| ("sync", format!("resource JSON: {e}")))?;
        self.rewrite(&mut json);
        let forward = self.forward_references(&mut json, pending).await?;
        let resource = Resource {
            resource_type,
            id: id.to_string(),
            identifier: Some(key.clone()),
            body: json,
            deleted: deleted.clone(),
        };
        let now = chrono::Utc::now();
        for _ in 0..CONTENDED_TRIES {
            let started = Instant::now();
            let result = self.syncer.sync(&resource, now).await;
            let took = started.elapsed();
            let call = match &result {
                Ok(SyncOutcome::Contended) => None,
                Ok(SyncOutcome::Conflict { .. }) | Err(_) => Some(Outcome::Permanent {
                    reason: String::new(),
                    status: None,
                }),
                Ok(_) => Some(Outcome::Delivered {
                    status: 200,
                    latency: took,
                }),
            };
            if let Some(call) = &call {
                report_call(
                    &self.outcomes,
                    &Arc::from(self.name.as_str()),
                    id,
                    1,
                    call,
                    took,
                );
            }
            match result {
                Ok(SyncOutcome::Contended) => {
                    tokio::time::sleep(
                        (self.syncer.lease / 10)
                            .clamp(Duration::from_millis(50), Duration::from_secs(3)),
                    )
                    .await;
                }
                Ok(SyncOutcome::Conflict {
                    id: server_id,
                    fields,
                }) => {
                    // Later rows still refer to the resource by the server's id.
                    self.learn(resource_type, id, &server_id);
                    return Err((
                        "sync:conflict",
                        format!(
                            "the server changed since the last sync and so did this record ({}): recorded, not overwritten; see `plexus sync list`",
                            fields.join(", ")
                        ),
                    ));
                }
                Ok(o) => {
                    // A merged-away Patient: its references now mean the survivor.
                    if let Some(server_id) = o.external_id() {
                        self.learn(resource_type, id, server_id);
                    }
                    return Ok(forward);
                }
                Err(e @ SyncError::Fhir(FhirError::Unavailable { .. })) => {
                    return Err(("sync:unavailable", e.to_string()));
                }
                Err(e) => return Err(("sync", e.to_string())),
            }
        }
        Err((
            "sync:contended",
            format!("another worker held the entity through {CONTENDED_TRIES} tries"),
        ))
    }
}

impl BatchSink for FhirSyncSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>().cloned())
                .ok_or_else(|| self.err(format!("reads the `{name}` column of a `fhir` stage")))
        };
        let (kinds, ids, systems, values, bodies) = (
            col("resource_type")?,
            col("resource_id")?,
            col("identifier_system")?,
            col("identifier_value")?,
            col("resource")?,
        );
        // Optional: rows written by an older stage, or by hand, delete nothing.
        let deletes = batch
            .column_by_name("delete_elements")
            .and_then(|c| c.as_string_opt::<i32>().cloned());
        let indexes = batch
            .column_by_name(RECORD_INDEX)
            .and_then(|c| c.as_primitive_opt::<Int64Type>());
        let mut dead: Vec<(u32, &'static str, String)> = Vec::new();
        let mut rows: Vec<(usize, Row<'_>)> = Vec::new();
        for r in 0..batch.num_rows() {
            let key = match (systems.is_valid(r), values.is_valid(r)) {
                (true, true) => (systems.value(r).to_string(), values.value(r).to_string()),
                _ => {
                    dead.push((
                        r as u32,
                        "sync",
                        "the resource has no business identifier to sync on".into(),
                    ));
                    continue;
                }
            };
            let row = Row {
                kind: kinds.value(r),
                id: ids.value(r),
                key,
                body: bodies.value(r),
                deleted: deletes
                    .as_ref()
                    .filter(|d| d.is_valid(r))
                    .map(|d| d.value(r).split(',').map(str::to_string).collect())
                    .unwrap_or_default(),
            };
            rows.push((r, row));
        }
        // A message's resources go with its Patient; a message without one is its own group.
        let message = |r: usize| indexes.map_or(r as i64, |ix| ix.value(r));
        let mut patient_of: HashMap<i64, &(String, String)> = HashMap::new();
        for (r, row) in &rows {
            if row.kind == "Patient" {
                patient_of.entry(message(*r)).or_insert(&row.key);
            }
        }
        let mut groups: Vec<Vec<&(usize, Row<'_>)>> = Vec::new();
        let mut group_of: HashMap<Group<'_>, usize> = HashMap::new();
        for item in &rows {
            let m = message(item.0);
            // Rows of one patient share a group whatever the message; others by message.
            let g = match patient_of.get(&m) {
                Some(p) => Group::Patient(p),
                None => Group::Message(m),
            };
            let n = *group_of.entry(g).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[n].push(item);
        }
        // A message's resources are written or held together: once one of them fails (its
        // Patient in conflict, say), the rest of that message is not written on its own —
        // the message goes to the dead-letter output whole and a replay syncs it again.
        let failed_early: std::collections::HashSet<i64> =
            dead.iter().map(|d| message(d.0 as usize)).collect();
        let this = &*self;
        let results: Vec<(usize, Result<(), Failure>)> = self.handle.block_on(
            futures::stream::iter(groups.into_iter().map(|group| {
                let mut failed = failed_early.clone();
                async move {
                    let mut pending: Pending<'_> = group
                        .iter()
                        .map(|(_, row)| (format!("{}/{}", row.kind, row.id), (row.kind, &row.key)))
                        .collect();
                    let mut out = Vec::with_capacity(group.len());
                    let mut again = Vec::new();
                    for (r, row) in &group {
                        pending.remove(&format!("{}/{}", row.kind, row.id));
                        let m = message(*r);
                        if failed.contains(&m) {
                            out.push((
                                *r,
                                Err((
                                    "sync:held",
                                    "not written: another resource of the same message was not synced".to_string(),
                                )),
                            ));
                            continue;
                        }
                        let result = this.sync_row(row, &pending).await;
                        match result {
                            Err(_) => {
                                failed.insert(m);
                            }
                            Ok(true) => again.push((out.len(), row)),
                            Ok(false) => {}
                        }
                        out.push((*r, result.map(|_| ())));
                    }
                    // What referred forward, now that the group's rows are on the server.
                    for (i, row) in again {
                        if out[i].1.is_ok() && !failed.contains(&message(out[i].0)) {
                            out[i].1 = this.sync_row(row, &pending).await.map(|_| ());
                        }
                    }
                    out
                }
            }))
            .buffer_unordered(self.concurrency)
            .flat_map(futures::stream::iter)
            .collect(),
        );
        for (r, result) in results {
            match result {
                Ok(()) => self.delivered += 1,
                // Held with its message, which is dead-lettered once (by the failed row).
                Err(("sync:held", _)) => {}
                Err((rule, reason)) => {
                    if rule == "sync:unavailable" {
                        self.outcome.unavailable += 1;
                    }
                    dead.push((r as u32, rule, reason))
                }
            }
        }
        dead.sort_by_key(|d| d.0);
        if !dead.is_empty() {
            let rows = arrow::array::UInt32Array::from_iter_values(dead.iter().map(|d| d.0));
            let rows = arrow::compute::take_record_batch(batch, &rows).map_err(|e| self.err(e))?;
            self.outcome.dead.push(DeadLetters {
                rows,
                rule: dead.iter().map(|d| d.1.to_string()).collect(),
                reason: dead.into_iter().map(|d| d.2).collect(),
            });
        }
        Ok(())
    }

    fn take_outcome(&mut self) -> SinkOutcome {
        std::mem::take(&mut self.outcome)
    }

    /// The sync state is written as each row syncs; what remains is the events.
    fn barrier(&mut self) -> Result<Option<crate::connectors::Durable>, ConnectorError> {
        match &self.syncer.events {
            Some(e) => e.barrier(),
            None => Ok(None),
        }
    }

    fn finish(&mut self) -> Result<(), ConnectorError> {
        if let Some(e) = &self.syncer.events {
            e.finish()?;
        }
        tracing::info!(sink = %self.name, synced = self.delivered, "fhir sync sink done");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forward_references_are_found_and_stripped_with_what_holds_them() {
        let mut v = json!({
            "resourceType": "Patient",
            "link": [{"other": {"reference": "Patient/prior"}, "type": "replaces"}],
            "generalPractitioner": [{"reference": "Practitioner/known"}],
            "managingOrganization": {"reference": "Patient/prior"},
            "active": true
        });
        let mut refs = Vec::new();
        references(&v, &|_| true, &mut refs);
        assert_eq!(
            refs,
            ["Practitioner/known", "Patient/prior", "Patient/prior"]
        );
        strip_references(&mut v, &HashSet::from(["Patient/prior".to_string()]));
        assert_eq!(
            v,
            json!({
                "resourceType": "Patient",
                "generalPractitioner": [{"reference": "Practitioner/known"}],
                "active": true
            }),
            "the emptied link list goes too"
        );
    }
}
