//! Sync state against the real FHIR server (sekmet) and PostgreSQL: a patient synced from an
//! ADT feed, changed on the server and locally → a conflict recorded (the server's change is
//! not overwritten), resolved each way with `plexus sync resolve`, audited; leases so two
//! workers never sync one entity at once; a crashed holder's lease expiring.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use plexus::connectors::fhir::sync::store::SyncStore;
use plexus::connectors::fhir::sync::{
    ConflictPolicy, Side, Status, SyncError, SyncOutcome, Syncer,
};
use plexus::fhir::v2::{Options, Resource, convert};
use plexus::formats::hl7::Message;
use plexus::net::fhir_client::{ClientConfig, FhirClient};
use serde_json::{Value, json};

use support::FHIR;

/// The tests' PostgreSQL (checked to be there).
fn db() -> String {
    support::database_url()
}
const SYSTEM: &str = support::MRN_SYSTEM;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The Patient of the corpus A01 with our MRN and a family name.
fn patient(mrn: &str, family: &str) -> Resource<Value> {
    let raw = support::corpus_adt(mrn, "A01", family);
    let m = Message::parse(raw.as_bytes()).unwrap();
    convert(&m, &Options::default())
        .unwrap()
        .into_iter()
        .find(|r| r.resource_type == "Patient")
        .unwrap()
        .into_value()
}

async fn syncer(integration: &str, owner: &str, policy: ConflictPolicy) -> Syncer {
    syncer_on(&db(), integration, owner, policy).await
}

/// A worker on the sync state at `db` (a PostgreSQL URL or a SQLite file).
async fn syncer_on(db: &str, integration: &str, owner: &str, policy: ConflictPolicy) -> Syncer {
    Syncer {
        integration: integration.into(),
        owner: owner.into(),
        store: SyncStore::connect(db).await.unwrap(),
        client: FhirClient::new(ClientConfig::new(FHIR)).unwrap(),
        policy,
        lease: Duration::from_secs(30),
        events: None,
    }
}

/// Someone edits the patient on the server: a new phone number.
async fn edit_on_server(c: &FhirClient, mrn: &str, phone: &str) {
    let found = c
        .search("Patient", &format!("identifier={SYSTEM}|{mrn}"))
        .await
        .unwrap();
    let mut p = found[0].clone();
    p["telecom"] = json!([{"system": "phone", "value": phone, "use": "mobile"}]);
    c.update(&p, p["meta"]["versionId"].as_str()).await.unwrap();
}

async fn on_server(c: &FhirClient, mrn: &str) -> Value {
    c.search("Patient", &format!("identifier={SYSTEM}|{mrn}"))
        .await
        .unwrap()
        .remove(0)
}

fn resolve(integration: &str, entity: &str, args: &[&str]) -> String {
    let o = Command::new(support::BIN)
        .args([
            "sync",
            "resolve",
            "--integration",
            integration,
            "--entity",
            entity,
        ])
        .args(["--fhir-base", FHIR, "--actor", "dr.ops"])
        .args(args)
        .env("DATABASE_URL", db())
        .output()
        .unwrap();
    support::assert_ok(&o);
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn concurrent_changes_become_conflicts_and_are_resolved_each_way_with_an_audit_trail() {
    let rt = rt();
    let integration = support::unique("ehr-sync");
    let mrn = support::unique("S").replace(['-', '_'], "");
    let entity = format!("Patient/{SYSTEM}|{mrn}");
    let s = rt.block_on(syncer(&integration, "worker-1", ConflictPolicy::Manual));
    let now = chrono::Utc::now();
    rt.block_on(async {
        // First sync creates; a repeat changes nothing.
        let created = s.sync(&patient(&mrn, "DUCK"), now).await.unwrap();
        assert!(
            matches!(created, SyncOutcome::Created { .. }),
            "{created:?}"
        );
        let r = s.sync(&patient(&mrn, "DUCK"), now).await.unwrap();
        assert!(matches!(r, SyncOutcome::Unchanged { .. }), "{r:?}");
        // Only our side changes: pushed with If-Match.
        let updated = s.sync(&patient(&mrn, "DRAKE"), now).await.unwrap();
        assert!(
            matches!(updated, SyncOutcome::Updated { .. }),
            "{updated:?}"
        );
        // Only the server changes: adopted.
        edit_on_server(&s.client, &mrn, "555-0100").await;
        let adopted = s.sync(&patient(&mrn, "DRAKE"), now).await.unwrap();
        assert!(
            matches!(adopted, SyncOutcome::AdoptedExternal { .. }),
            "{adopted:?}"
        );

        // Both change: a conflict, and the server's edit is not overwritten.
        edit_on_server(&s.client, &mrn, "555-0101").await;
        let conflict = s.sync(&patient(&mrn, "MALLARD"), now).await.unwrap();
        let SyncOutcome::Conflict { fields, .. } = conflict else {
            panic!("{conflict:?}")
        };
        assert_eq!(fields, ["name", "telecom"]);
        let server = on_server(&s.client, &mrn).await;
        assert_eq!(server["name"][0]["family"], "DRAKE");
        assert_eq!(server["telecom"][0]["value"], "555-0101");
        let state = s
            .store
            .get((&integration, "Patient", &format!("{SYSTEM}|{mrn}")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state.status, Some(Status::Conflict));
        assert_eq!(
            state.conflict.as_ref().unwrap()["local"]["name"][0]["family"],
            "MALLARD"
        );
        assert_eq!(
            state.conflict.as_ref().unwrap()["external"]["telecom"][0]["value"],
            "555-0101"
        );
    });
    // The conflict is listed, then resolved with the local side.
    let listed = Command::new(support::BIN)
        .args(["sync", "list", "--integration", &integration])
        .env("DATABASE_URL", db())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&format!("Patient\t{SYSTEM}|{mrn}")));
    assert!(resolve(&integration, &entity, &["--strategy", "use_local"]).contains("in sync"));
    rt.block_on(async {
        let server = on_server(&s.client, &mrn).await;
        assert_eq!(server["name"][0]["family"], "MALLARD");
        // The same local content again: nothing to do.
        let r = s.sync(&patient(&mrn, "MALLARD"), now).await.unwrap();
        assert!(matches!(r, SyncOutcome::Unchanged { .. }), "{r:?}");

        // Again both sides; this time the server wins.
        edit_on_server(&s.client, &mrn, "555-0102").await;
        let c = s.sync(&patient(&mrn, "TEAL"), now).await.unwrap();
        assert!(matches!(c, SyncOutcome::Conflict { .. }), "{c:?}");
    });
    resolve(&integration, &entity, &["--strategy", "use_external"]);
    rt.block_on(async {
        let server = on_server(&s.client, &mrn).await;
        assert_eq!(server["name"][0]["family"], "MALLARD");
        assert_eq!(server["telecom"][0]["value"], "555-0102");
        // #15 item 6: the resolved message replayed changes nothing: the decision stands.
        let r = s.sync(&patient(&mrn, "TEAL"), now).await.unwrap();
        assert!(matches!(r, SyncOutcome::Unchanged { .. }), "{r:?}");
        let again = on_server(&s.client, &mrn).await;
        assert_eq!(again["name"][0]["family"], "MALLARD");
        assert_eq!(again["meta"]["versionId"], server["meta"]["versionId"]);
        edit_on_server(&s.client, &mrn, "555-0103").await;
        let c = s.sync(&patient(&mrn, "WIGEON"), now).await.unwrap();
        assert!(matches!(c, SyncOutcome::Conflict { .. }), "{c:?}");
    });
    // A merge: our name, the server's phone.
    resolve(
        &integration,
        &entity,
        &["--strategy", "merge", "--take", "name=local"],
    );
    rt.block_on(async {
        let server = on_server(&s.client, &mrn).await;
        assert_eq!(server["name"][0]["family"], "WIGEON");
        assert_eq!(server["telecom"][0]["value"], "555-0103");
        // Replayed after the merge: nothing changes, the server's phone stays.
        let r = s.sync(&patient(&mrn, "WIGEON"), now).await.unwrap();
        assert!(matches!(r, SyncOutcome::Unchanged { .. }), "{r:?}");
        let again = on_server(&s.client, &mrn).await;
        assert_eq!(again["telecom"][0]["value"], "555-0103");
        assert_eq!(again["meta"]["versionId"], server["meta"]["versionId"]);
        let log = s
            .store
            .audit_log((&integration, "Patient", &format!("{SYSTEM}|{mrn}")))
            .await
            .unwrap();
        let strategies: Vec<(String, String, Value)> = log
            .into_iter()
            .map(|(action, actor, d)| (action, actor, d["strategy"].clone()))
            .collect();
        assert_eq!(
            strategies,
            [
                ("resolved".into(), "dr.ops".into(), json!("use_local")),
                ("resolved".into(), "dr.ops".into(), json!("use_external")),
                (
                    "resolved".into(),
                    "dr.ops".into(),
                    json!({"merge": {"name": "local"}})
                ),
            ]
        );
    });
}

#[test]
fn a_configured_policy_settles_conflicts_itself() {
    let rt = rt();
    rt.block_on(async {
        let integration = support::unique("ehr-prio");
        let mrn = support::unique("P").replace(['-', '_'], "");
        let s = syncer(
            &integration,
            "w",
            ConflictPolicy::SourcePriority(Side::Local),
        )
        .await;
        let now = chrono::Utc::now();
        s.sync(&patient(&mrn, "DUCK"), now).await.unwrap();
        edit_on_server(&s.client, &mrn, "555-0199").await;
        let r = s.sync(&patient(&mrn, "DRAKE"), now).await.unwrap();
        assert!(matches!(r, SyncOutcome::Updated { .. }), "{r:?}");
        let server = on_server(&s.client, &mrn).await;
        assert_eq!(server["name"][0]["family"], "DRAKE");
        let log = s
            .store
            .audit_log((&integration, "Patient", &format!("{SYSTEM}|{mrn}")))
            .await
            .unwrap();
        assert_eq!(log[0].0, "auto_resolved");
        assert_eq!(log[0].2["winner"], "local");
    });
}

#[test]
fn leases_keep_two_workers_off_one_entity_and_expire_when_a_holder_dies() {
    leases_on(&db());
}

/// The same on the embedded default: two workers (two connection pools) on one SQLite file.
#[test]
fn leases_work_the_same_on_the_embedded_sqlite_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state/sync.db");
    leases_on(db.to_str().unwrap());
    // A real SQLite database, readable by anything that reads SQLite.
    let header = std::fs::read(&db).unwrap();
    assert!(header.starts_with(b"SQLite format 3\0"));
}

fn leases_on(db: &str) {
    let rt = rt();
    rt.block_on(async {
        let integration = support::unique("ehr-lease");
        let mrn = support::unique("L").replace(['-', '_'], "");
        let key_text = format!("{SYSTEM}|{mrn}");
        let key = (integration.as_str(), "Patient", key_text.as_str());
        let a = syncer_on(db, &integration, "worker-a", ConflictPolicy::Manual).await;
        let b = syncer_on(db, &integration, "worker-b", ConflictPolicy::Manual).await;
        let now = chrono::Utc::now();
        // Worker A holds the entity (mid-sync, then it crashes: it never releases).
        assert!(
            a.store
                .acquire(key, "worker-a", Duration::from_secs(2))
                .await
                .unwrap()
        );
        assert_eq!(
            b.sync(&patient(&mrn, "DUCK"), now).await.unwrap(),
            SyncOutcome::Contended
        );
        // After the lease expires, B proceeds.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let r = b.sync(&patient(&mrn, "DUCK"), now).await.unwrap();
        assert!(matches!(r, SyncOutcome::Created { .. }), "{r:?}");
        // A wakes up and tries to write its stale result: fenced off.
        let stale = a
            .store
            .save(
                key,
                "worker-a",
                &plexus::connectors::fhir::sync::store::Update {
                    status: Status::InSync,
                    local_hash: Some("stale"),
                    local_resource: None,
                    external_id: None,
                    external_version: Some("999"),
                    conflict: None,
                    synced: true,
                    retry_in: None,
                },
            )
            .await;
        assert!(matches!(stale, Err(SyncError::LeaseLost)), "{stale:?}");

        // Both race on every round: never both inside; no update lost.
        let mut contended = 0;
        for round in 0..10 {
            let (pa, pb) = (
                patient(&mrn, &format!("A{round}")),
                patient(&mrn, &format!("B{round}")),
            );
            let (ra, rb) = tokio::join!(a.sync(&pa, now), b.sync(&pb, now));
            for r in [ra.unwrap(), rb.unwrap()] {
                if r == SyncOutcome::Contended {
                    contended += 1;
                }
            }
        }
        // What the state says was agreed is what the server has.
        let state = a.store.get(key).await.unwrap().unwrap();
        let server = on_server(&a.client, &mrn).await;
        assert_eq!(
            state.external_version.as_deref(),
            server["meta"]["versionId"].as_str()
        );
        assert_eq!(
            state.local_resource.unwrap()["name"],
            server["name"],
            "the agreed content is the server's ({contended} contended)"
        );
    });
}

#[test]
fn a_pipeline_syncing_an_adt_feed_records_a_conflict_instead_of_overwriting() {
    support::need_fhir();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let integration = support::unique("ehr-pipe");
    let mrn = support::unique("Q").replace(['-', '_'], "");
    let message = |event: &str, family: &str| support::corpus_adt(&mrn, event, family);
    std::fs::write(dir.path().join("a01.hl7"), message("A01", "DUCK")).unwrap();
    // The A08 also moves the patient (PV1-3): its Encounter changes with its Patient.
    std::fs::write(
        dir.path().join("a08.hl7"),
        message("A08", "DRAKE").replace("PREOP^101", "ICU^7"),
    )
    .unwrap();
    let p = support::pipeline(
        dir.path(),
        "adt_sync",
        &format!(
            r#"
name: adt_sync
integration: {{id: {integration}}}
source: {{type: file, path: a01.hl7, format: hl7}}
stages:
  - {{name: fhir, type: fhir}}
sinks:
  - {{name: ehr, type: fhir, url: "{FHIR}", concurrency: 1,
     sync: {{state: postgres, conflicts: manual, events: {{path: sync_events.ndjson}}}}}}
"#
        ),
    );
    let run = |input: &str| {
        support::summary(
            &Command::new(support::BIN)
                .args(["run", p.to_str().unwrap(), "--input"])
                .arg(dir.path().join(input))
                .args(["--output", out.to_str().unwrap(), "--json"])
                .env("DATABASE_URL", db())
                .output()
                .unwrap(),
        )
    };
    let counts = |s: &Value| (s["delivered"].as_u64(), s["dead_lettered"].as_u64());
    assert_eq!(counts(&run("a01.hl7")), (Some(1), Some(0)));
    let rt = rt();
    let c = FhirClient::new(ClientConfig::new(FHIR)).unwrap();
    let patient_id = rt.block_on(async {
        let p = on_server(&c, &mrn).await;
        assert_eq!(p["name"][0]["family"], "DUCK");
        // The encounter refers to the server's patient, not to plexus's own id.
        let e = c
            .search(
                "Encounter",
                &format!("identifier={}|V{mrn}", support::VISIT_SYSTEM),
            )
            .await
            .unwrap();
        assert_eq!(
            e[0]["subject"]["reference"],
            format!("Patient/{}", p["id"].as_str().unwrap())
        );
        edit_on_server(&c, &mrn, "555-0142").await;
        p["id"].as_str().unwrap().to_string()
    });
    let encounter_version = || {
        rt.block_on(async {
            c.search(
                "Encounter",
                &format!("identifier={}|V{mrn}", support::VISIT_SYSTEM),
            )
            .await
            .unwrap()[0]["meta"]["versionId"]
                .clone()
        })
    };
    let before = encounter_version();
    // The A08 changes the name locally while the server changed the phone: a conflict.
    let s = run("a08.hl7");
    assert_eq!(counts(&s), (Some(0), Some(1)), "{s}");
    let dlq: Vec<Value> = std::fs::read_to_string(out.join("adt_sync.dlq.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // #15 item 7: one dead letter for the message, and its Encounter was held with its
    // Patient, not written on its own.
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0]["rule"], "sync:conflict");
    assert_eq!(
        encounter_version(),
        before,
        "the Encounter was written without its Patient"
    );
    assert!(
        dlq[0]["reason"].as_str().unwrap().contains("name"),
        "{}",
        dlq[0]
    );
    rt.block_on(async {
        let p = on_server(&c, &mrn).await;
        assert_eq!(p["name"][0]["family"], "DUCK", "not overwritten");
        assert_eq!(p["telecom"][0]["value"], "555-0142");
    });
    // Resolved for the local side; the replayed A08 is then in sync.
    resolve(
        &integration,
        &format!("Patient/{SYSTEM}|{mrn}"),
        &["--strategy", "use_local"],
    );
    rt.block_on(async {
        let p = on_server(&c, &mrn).await;
        assert_eq!(p["name"][0]["family"], "DRAKE");
        assert_eq!(p["id"], patient_id.as_str());
    });
    assert_eq!(counts(&run("a08.hl7")), (Some(1), Some(0)));
    assert_ne!(
        encounter_version(),
        before,
        "replayed, the message's Encounter is written"
    );
    // Sync events: one conflict; identifiers hashed, never in clear.
    let events = std::fs::read_to_string(out.join("sync_events.ndjson")).unwrap();
    assert_eq!(
        events.matches("integration.sync.conflict").count(),
        1,
        "{events}"
    );
    assert!(events.contains("integration.sync.completed"));
    assert!(!events.contains(&mrn), "{events}");
}

/// The embedded default: no `state:` → a SQLite file beside the pipeline; sync events to a
/// Kafka topic as well as the file; `plexus sync list|resolve --pipeline` finding the state,
/// the EHR and the events from the pipeline alone.
#[test]
fn the_default_sqlite_state_and_kafka_events_carry_a_conflict_through_to_its_resolution() {
    support::need_fhir();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let integration = support::unique("ehr-lite");
    let mrn = support::unique("E").replace(['-', '_'], "");
    let topic = support::unique("sync-events");
    support::create_topics(&[(&topic, 1)]);
    std::fs::write(
        dir.path().join("a01.hl7"),
        support::corpus_adt(&mrn, "A01", "DUCK"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("a08.hl7"),
        support::corpus_adt(&mrn, "A08", "DRAKE"),
    )
    .unwrap();
    let p = support::pipeline(
        dir.path(),
        "adt_lite",
        &format!(
            r#"
name: adt_lite
integration: {{id: {integration}}}
kafka: {{brokers: {brokers}}}
source: {{type: file, path: a01.hl7, format: hl7}}
stages:
  - {{name: fhir, type: fhir}}
sinks:
  - {{name: ehr, type: fhir, url: "{FHIR}", concurrency: 1,
     sync: {{conflicts: manual, events: {{topic: {topic}}}}}}}
"#,
            brokers = support::brokers()
        ),
    );
    let run = |input: &str| {
        support::summary(
            &Command::new(support::BIN)
                .args(["run", p.to_str().unwrap(), "--input"])
                .arg(dir.path().join(input))
                .args(["--output", out.to_str().unwrap(), "--json"])
                .env_remove("DATABASE_URL")
                .output()
                .unwrap(),
        )
    };
    let counts = |s: &Value| (s["delivered"].as_u64(), s["dead_lettered"].as_u64());
    assert_eq!(counts(&run("a01.hl7")), (Some(1), Some(0)));
    assert!(dir.path().join("adt_lite.sync.db").exists());
    let rt = rt();
    let c = FhirClient::new(ClientConfig::new(FHIR)).unwrap();
    rt.block_on(edit_on_server(&c, &mrn, "555-0177"));
    let s = run("a08.hl7");
    assert_eq!(counts(&s), (Some(0), Some(1)), "{s}");

    let sync = |args: &[&str]| {
        let o = Command::new(support::BIN)
            .arg("sync")
            .args(args)
            .args(["--pipeline", p.to_str().unwrap()])
            .env_remove("DATABASE_URL")
            .env_remove("PLEXUS_FHIR_BASE")
            .output()
            .unwrap();
        support::assert_ok(&o);
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let entity = format!("Patient/{SYSTEM}|{mrn}");
    assert_eq!(sync(&["list"]), format!("Patient\t{SYSTEM}|{mrn}\n"));
    let resolved = sync(&[
        "resolve",
        "--entity",
        &entity,
        "--strategy",
        "merge",
        "--take",
        "name=local",
        "--actor",
        "dr.lite",
    ]);
    assert!(resolved.contains("in sync"), "{resolved}");
    assert_eq!(sync(&["list"]), "");
    rt.block_on(async {
        let server = on_server(&c, &mrn).await;
        assert_eq!(server["name"][0]["family"], "DRAKE");
        assert_eq!(server["telecom"][0]["value"], "555-0177");
        // The audit row is in the SQLite file the pipeline used.
        let store = SyncStore::connect(dir.path().join("adt_lite.sync.db").to_str().unwrap())
            .await
            .unwrap();
        let log = store
            .audit_log((&integration, "Patient", &format!("{SYSTEM}|{mrn}")))
            .await
            .unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(
            (log[0].0.as_str(), log[0].1.as_str()),
            ("resolved", "dr.lite")
        );
        assert_eq!(log[0].2["strategy"], json!({"merge": {"name": "local"}}));
    });

    // On the topic: the A01's patient and encounter completed, the A08's conflict, then the
    // resolution — keyed by entity (hashed), in order; identifiers never in clear.
    let events = support::read_topic(&topic, 4, Duration::from_secs(20));
    let kinds: Vec<String> = events
        .iter()
        .map(|m| m.json()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "integration.sync.conflict")
            .count(),
        1,
        "{kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .filter(|k| *k == "integration.sync.completed")
            .count()
            >= 3,
        "{kinds:?}"
    );
    for m in &events {
        let key = String::from_utf8(m.key.clone().unwrap()).unwrap();
        assert!(key.starts_with(&format!("{integration}/")), "{key}");
        assert!(
            !m.text().contains(&mrn) && !key.contains(&mrn),
            "{}",
            m.text()
        );
    }
    let conflict = events
        .iter()
        .find(|m| m.json()["type"] == "integration.sync.conflict")
        .unwrap();
    let patient_key = conflict.key.clone();
    let last_for_patient = events.iter().rfind(|m| m.key == patient_key).unwrap();
    assert_eq!(
        last_for_patient.json()["type"],
        "integration.sync.completed"
    );
    // The file got the run's events too (the file is always written).
    let file = std::fs::read_to_string(out.join("adt_lite.sync_events.ndjson")).unwrap();
    assert_eq!(file.matches("integration.sync.conflict").count(), 1);
}

/// Patients sync in parallel (`concurrency: 8`), each patient's messages in feed order: ten
/// patients admitted then renamed end with the later name, version 2, and encounters that
/// point at the server's patients.
#[test]
fn patients_sync_in_parallel_and_each_patients_messages_in_order() {
    support::need_fhir();
    let dir = tempfile::tempdir().unwrap();
    let integration = support::unique("ehr-par");
    let mrns: Vec<String> = (0..10)
        .map(|i| support::unique(&format!("P{i}")).replace(['-', '_'], ""))
        .collect();
    let feed: String = mrns
        .iter()
        .map(|m| support::corpus_adt(m, "A01", "DUCK"))
        .chain(mrns.iter().map(|m| support::corpus_adt(m, "A08", "DRAKE")))
        .collect();
    std::fs::write(dir.path().join("feed.hl7"), feed).unwrap();
    let p = support::pipeline(
        dir.path(),
        "par",
        &format!(
            r#"
name: par
integration: {{id: {integration}}}
source: {{type: file, path: feed.hl7, format: hl7}}
stages:
  - {{name: fhir, type: fhir}}
sinks:
  - {{name: ehr, type: fhir, url: "{FHIR}", concurrency: 8, sync: {{conflicts: manual}}}}
"#
        ),
    );
    let s = support::summary(
        &Command::new(support::BIN)
            .args(["run", p.to_str().unwrap(), "--json", "--output"])
            .arg(dir.path().join("out"))
            .output()
            .unwrap(),
    );
    let dlq = std::fs::read_to_string(dir.path().join("out/par.dlq.ndjson")).unwrap_or_default();
    assert_eq!(
        (s["delivered"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(20), Some(0)),
        "{s} {dlq}"
    );
    let rt = rt();
    let c = FhirClient::new(ClientConfig::new(FHIR)).unwrap();
    rt.block_on(async {
        for m in &mrns {
            let p = on_server(&c, m).await;
            assert_eq!(p["name"][0]["family"], "DRAKE", "A08 after A01 for {m}");
            assert_eq!(p["meta"]["versionId"], "2");
            let e = c
                .search(
                    "Encounter",
                    &format!("identifier={}|V{m}", support::VISIT_SYSTEM),
                )
                .await
                .unwrap();
            assert_eq!(e.len(), 1);
            assert_eq!(
                e[0]["subject"]["reference"],
                format!("Patient/{}", p["id"].as_str().unwrap())
            );
        }
    });
}

/// A gateway in front of the FHIR server that answers 503 until `up` is set, then forwards
/// every call (method, path, query, headers that matter, body) and relays the answer: an
/// EHR behind a load balancer during a maintenance window.
fn outage_gateway(up: std::sync::Arc<std::sync::atomic::AtomicBool>) -> String {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (client, up) = (client.clone(), up.clone());
            async move {
                if !up.load(std::sync::atomic::Ordering::Relaxed) {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        HeaderMap::new(),
                        Vec::new(),
                    );
                }
                let path = uri.path_and_query().map_or("/", |p| p.as_str());
                let url = format!("http://127.0.0.1:8089{path}");
                let mut req = client.request(
                    reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap(),
                    url,
                );
                for (k, v) in &headers {
                    if !matches!(k.as_str(), "host" | "content-length") {
                        req = req.header(k.as_str(), v.as_bytes());
                    }
                }
                let r = req.body(body.to_vec()).send().await.unwrap();
                let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
                let mut out = HeaderMap::new();
                for (k, v) in r.headers() {
                    if matches!(
                        k.as_str(),
                        "etag" | "location" | "content-type" | "last-modified"
                    ) {
                        out.insert(
                            axum::http::HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
                            axum::http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
                        );
                    }
                }
                (status, out, r.bytes().await.unwrap().to_vec())
            }
        },
    );
    format!("{}/fhir", support::serve(app))
}

/// #15 item 8: in file mode an EHR outage is waited out. Records refused by the open breaker
/// and failed half-open probes use no attempt; the log says once that records wait; when the
/// server is back every record is delivered. An outage longer than `retry.max_outage`
/// dead-letters the records as unavailable (exit code 4), with that reason.
#[test]
fn a_file_run_waits_out_an_ehr_outage_and_gives_up_after_max_outage() {
    support::need_fhir();
    let dir = tempfile::tempdir().unwrap();
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gateway = outage_gateway(up.clone());
    let tag = support::unique("OUT").replace(['-', '_'], "");
    let feed: String = (0..12)
        .map(|i| support::corpus_adt(&format!("{tag}{i}"), "A01", "OUTAGE"))
        .collect();
    std::fs::write(dir.path().join("in.hl7"), feed).unwrap();
    let spec = |max_outage: &str| {
        format!(
            r#"
name: outage
integration: {{id: {tag}}}
source: {{type: file, path: in.hl7, format: hl7}}
stages:
  - {{name: fhir, type: fhir}}
sinks:
  - name: ehr
    type: fhir
    url: "{gateway}"
    concurrency: 2
    retry: {{max_attempts: 3, backoff: linear, base: 50ms, jitter: 0, max_outage: {max_outage}}}
    breaker: {{window: 10, minimum_calls: 2, failure_rate: 50, wait: 300ms, half_open_calls: 1}}
    sync: {{}}
dlq: {{path: outage.dlq.ndjson}}
"#
        )
    };
    let run = |p: &std::path::Path| {
        Command::new(support::BIN)
            .args(["run", p.to_str().unwrap(), "--json"])
            .env("PLEXUS_LOG", "warn")
            .output()
            .unwrap()
    };

    // An outage longer than max_outage: given up, as unavailable.
    let p = support::pipeline(dir.path(), "short", &spec("1500ms"));
    let started = std::time::Instant::now();
    let o = run(&p);
    let s = support::summary(&o);
    assert_eq!(o.status.code(), Some(4));
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(s["delivered"], 0, "{s}");
    assert_eq!(s["dead_lettered"], 12);
    assert_eq!(s["unavailable"], 12);
    let dlq = std::fs::read_to_string(dir.path().join("outage.dlq.ndjson")).unwrap();
    assert!(dlq.contains("retry.max_outage"), "{dlq}");
    assert!(dlq.contains("sync:unavailable"), "{dlq}");

    // The server comes back within max_outage: every record delivered, none dead.
    let p = support::pipeline(dir.path(), "long", &spec("60s"));
    let flip = {
        let up = up.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            up.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let started = std::time::Instant::now();
    let o = run(&p);
    flip.join().unwrap();
    let s = support::summary(&o);
    assert_eq!(o.status.code(), Some(0));
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(
        (s["delivered"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(12), Some(0)),
        "{s}"
    );
    let log = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        log.matches("records wait for it without using attempts")
            .count(),
        1,
        "{log}"
    );
    let transitions: Vec<&str> = s["breaker_transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert!(
        transitions.contains(&"OPEN") && transitions.last() == Some(&"CLOSED"),
        "{transitions:?}"
    );
    // More failed probes happened than a record has attempts: none of them used one up.
    let probes = transitions.iter().filter(|t| **t == "HALF_OPEN").count();
    assert!(probes > 3, "{transitions:?}");
}

/// #15 item 5: HL7 v2 update semantics against the FHIR server, through both FHIR sinks (with
/// sync state, and the plain conditional-update sink): A01 (full) → A08 that carries only the
/// name → A08 that nulls the address (`""`). What a message does not carry is kept; `""`
/// deletes; identifiers and contacts the server holds stay.
#[test]
fn partial_updates_keep_what_the_message_does_not_carry_and_nulls_delete() {
    support::need_fhir();
    let rt = rt();
    let c = FhirClient::new(ClientConfig::new(FHIR)).unwrap();
    for sync in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mrn = support::unique("U").replace(['-', '_'], "");
        let oid = &SYSTEM[8..];
        let a08 = |id: &str, pid_tail: &str| {
            format!(
                "MSH|^~\\&|AccMgr|1|||20050111045504+0700||ADT^A08|{mrn}{id}|P|2.3\r\
                 EVN|A08|20050111045502+0700\r\
                 PID|1||{mrn}^^^&{oid}&ISO^MR||DRAKE^DONALD^D||19241010|M{pid_tail}\r\
                 PV1|1|I|PREOP^101^1^1^^^S|3|||||||||||||||V{mrn}^^^AccMgr^VN\r"
            )
        };
        let steps = [
            ("a01.hl7", support::corpus_adt(&mrn, "A01", "DUCK")),
            ("a08.hl7", a08("P", "")),
            ("a08null.hl7", a08("N", "|||\"\"")),
        ];
        let sink = if sync {
            "{name: ehr, type: fhir, url: \"http://127.0.0.1:8089/fhir\", sync: {}}"
        } else {
            "{name: ehr, type: fhir, url: \"http://127.0.0.1:8089/fhir\"}"
        };
        let p = support::pipeline(
            dir.path(),
            "partial",
            &format!(
                "name: partial\nintegration: {{id: {mrn}}}\nsource: {{type: file, path: a01.hl7, format: hl7}}\nstages:\n  - {{name: fhir, type: fhir}}\nsinks:\n  - {sink}\ndlq: {{path: dlq.ndjson}}\n"
            ),
        );
        let mut seen = Vec::new();
        for (file, text) in &steps {
            std::fs::write(dir.path().join(file), text).unwrap();
            let o = Command::new(support::BIN)
                .args(["run", p.to_str().unwrap(), "--json", "--input"])
                .arg(dir.path().join(file))
                .output()
                .unwrap();
            let s = support::summary(&o);
            assert_eq!(s["delivered"], 1, "sync {sync}, {file}: {s}");
            seen.push(rt.block_on(on_server(&c, &mrn)));
        }
        let [full, partial, nulled] = &seen[..] else {
            unreachable!()
        };
        let what = format!("sync {sync}");
        assert_eq!(full["name"][0]["family"], "DUCK", "{what}");
        assert!(
            full["address"].is_array() && full["telecom"].is_array(),
            "{what}"
        );
        assert!(full["contact"].is_array(), "{what}: {full}");
        let ssn = |p: &Value| {
            p["identifier"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["system"] == "http://hl7.org/fhir/sid/us-ssn")
        };
        assert!(ssn(full), "{what}");
        // The partial A08 changed the name and nothing else.
        assert_eq!(partial["name"][0]["family"], "DRAKE", "{what}");
        for kept in ["address", "telecom", "contact"] {
            assert_eq!(partial[kept], full[kept], "{what}: {kept} lost");
        }
        assert!(
            ssn(partial),
            "{what}: an identifier the message did not repeat was lost"
        );
        // `""` in PID-11 deleted the address; the rest stayed.
        assert!(nulled.get("address").is_none(), "{what}: {nulled}");
        assert_eq!(nulled["telecom"], full["telecom"], "{what}");
        assert_eq!(nulled["contact"], full["contact"], "{what}");
        assert_eq!(nulled["name"][0]["family"], "DRAKE", "{what}");
        assert_eq!(nulled["id"], full["id"], "{what}: the same patient");
    }
}

/// A pipeline syncing to the FHIR server on the embedded SQLite state (`<name>.sync.db` in
/// `dir`); each run reads the file given with `--input`.
fn merge_pipeline(dir: &Path, name: &str, integration: &str) -> PathBuf {
    // The pipeline names a file that exists.
    std::fs::write(dir.join("x.hl7"), "").unwrap();
    support::pipeline(
        dir,
        name,
        &format!(
            "name: {name}\nintegration: {{id: {integration}}}\nsource: {{type: file, path: x.hl7, format: hl7}}\nstages:\n  - {{name: fhir, type: fhir}}\nsinks:\n  - {{name: ehr, type: fhir, url: \"{FHIR}\", sync: {{}}}}\ndlq: {{path: dlq.ndjson}}\n"
        ),
    )
}

/// Writes one message to `dir/file` and runs the pipeline on it: delivered, nothing dead.
fn run_message(pipeline: &Path, file: &str, text: &str) {
    let input = pipeline.with_file_name(file);
    std::fs::write(&input, text).unwrap();
    let s = support::summary(
        &Command::new(support::BIN)
            .args(["run", pipeline.to_str().unwrap(), "--json", "--input"])
            .arg(&input)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap(),
    );
    assert_eq!(
        (s["delivered"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(1), Some(0)),
        "{file}: {s}"
    );
}

/// An ADT^A40 merging `prior` into `survivor` (MRNs in the corpus A01's system).
fn a40(id: &str, survivor: &str, prior: &str) -> String {
    let oid = &SYSTEM[8..];
    format!(
        "MSH|^~\\&|AccMgr|1|||20050112045504+0700||ADT^A40|{id}|P|2.3\r\
         EVN|A40|20050112045502+0700\r\
         PID|1||{survivor}^^^&{oid}&ISO^MR||DUCK^DONALD||19241010|M\r\
         MRG|{prior}^^^&{oid}&ISO^MR\r"
    )
}

/// The corpus A08 for `mrn`, with visit number `visit`: a feed that has not caught up.
fn late_a08(mrn: &str, visit: &str) -> String {
    support::corpus_adt(mrn, "A08", "DUCK").replace(&format!("V{mrn}^"), &format!("{visit}^"))
}

/// The server's reference of the one Encounter with this visit number's subject.
fn visit_subject(c: &FhirClient, visit: &str) -> String {
    rt().block_on(async {
        let found = c
            .search(
                "Encounter",
                &format!("identifier={}|{visit}", support::VISIT_SYSTEM),
            )
            .await
            .unwrap();
        assert_eq!(found.len(), 1, "{visit}: {found:?}");
        found[0]["subject"]["reference"]
            .as_str()
            .unwrap()
            .to_string()
    })
}

/// `Patient/<server id>` of the patient with this MRN.
fn patient_ref(c: &FhirClient, mrn: &str) -> String {
    let p = rt().block_on(on_server(c, mrn));
    format!("Patient/{}", p["id"].as_str().unwrap())
}

/// The audit actions of one patient in the SQLite sync state, and the first one's details.
fn audit_actions(db: &Path, integration: &str, mrn: &str) -> (Vec<String>, Value) {
    let log = rt().block_on(async {
        let store = SyncStore::connect(db.to_str().unwrap()).await.unwrap();
        store
            .audit_log((integration, "Patient", &format!("{SYSTEM}|{mrn}")))
            .await
            .unwrap()
    });
    let first = log.first().map(|(_, _, d)| d.clone()).unwrap_or_default();
    (log.into_iter().map(|(a, _, _)| a).collect(), first)
}

/// #19: an ADT^A40 moves the sync state to the survivor. On the server the survivor
/// `replaces` the prior record (by its server id: written first without the link, then with
/// it) and the prior one is inactive, `replaced-by` the survivor; a replay writes nothing; a
/// late message on the merged-away MRN leaves the retired record alone and its visit lands
/// on the survivor. The embedded SQLite state remembers the merge, audited.
#[test]
fn a_merge_moves_the_sync_state_to_the_survivor() {
    support::need_fhir();
    let dir = tempfile::tempdir().unwrap();
    let integration = support::unique("ehr-merge");
    let tag = support::unique("M").replace(['-', '_'], "");
    let (prior, survivor) = (format!("P{tag}"), format!("S{tag}"));
    let p = merge_pipeline(dir.path(), "merge", &integration);
    let c = FhirClient::new(ClientConfig::new(FHIR)).unwrap();
    let both =
        || rt().block_on(async { (on_server(&c, &survivor).await, on_server(&c, &prior).await) });
    run_message(&p, "prior.hl7", &support::corpus_adt(&prior, "A01", "DUCK"));
    run_message(
        &p,
        "survivor.hl7",
        &support::corpus_adt(&survivor, "A01", "DUCK"),
    );
    run_message(&p, "a40.hl7", &a40(&format!("{tag}M"), &survivor, &prior));
    let (s, pr) = both();
    let id = |v: &Value| format!("Patient/{}", v["id"].as_str().unwrap());
    assert_eq!(s["active"], true);
    assert_eq!(
        s["link"],
        json!([{"other": {"reference": id(&pr)}, "type": "replaces"}])
    );
    assert_eq!(pr["active"], false);
    assert_eq!(
        pr["link"],
        json!([{"other": {"reference": id(&s)}, "type": "replaced-by"}])
    );
    assert_eq!(
        visit_subject(&c, &format!("V{prior}")),
        id(&pr),
        "the old visit is left as it was"
    );
    // A replay of the merge writes nothing.
    run_message(&p, "a40.hl7", &a40(&format!("{tag}M"), &survivor, &prior));
    let (s2, p2) = both();
    assert_eq!(
        (&s2["meta"]["versionId"], &p2["meta"]["versionId"]),
        (&s["meta"]["versionId"], &pr["meta"]["versionId"]),
        "a replayed merge wrote again"
    );
    // A late A08 on the prior MRN: the retired record is not written, and the new visit is
    // the survivor's.
    run_message(&p, "late.hl7", &late_a08(&prior, &format!("L{prior}")));
    let (_, p3) = both();
    assert_eq!(p3["meta"]["versionId"], pr["meta"]["versionId"]);
    assert_eq!(p3["active"], false);
    assert_eq!(visit_subject(&c, &format!("L{prior}")), id(&s));
    let (actions, first) = audit_actions(&dir.path().join("merge.sync.db"), &integration, &prior);
    assert_eq!(actions, ["merged_into", "followed_survivor"]);
    assert_eq!(first["survivor"], format!("{SYSTEM}|{survivor}"));
}

/// #19: merges of merges. P is merged into S, then S into T: a late message on P follows
/// the chain to T. Then T is merged into P (the merge undone the other way): P is live
/// again (`unmerged`), and a late message on S now lands on P.
#[test]
fn merges_of_merges_follow_the_last_survivor_and_a_survivor_is_live_again() {
    support::need_fhir();
    let dir = tempfile::tempdir().unwrap();
    let integration = support::unique("ehr-merge2");
    let tag = support::unique("C").replace(['-', '_'], "");
    let [p, s, t] = ["P", "S", "T"].map(|x| format!("{x}{tag}"));
    let pipeline = merge_pipeline(dir.path(), "chain", &integration);
    let c = FhirClient::new(ClientConfig::new(FHIR)).unwrap();
    for mrn in [&p, &s, &t] {
        run_message(
            &pipeline,
            &format!("{mrn}.hl7"),
            &support::corpus_adt(mrn, "A01", "DUCK"),
        );
    }
    run_message(&pipeline, "a40-1.hl7", &a40(&format!("{tag}1"), &s, &p));
    run_message(&pipeline, "a40-2.hl7", &a40(&format!("{tag}2"), &t, &s));
    run_message(&pipeline, "late-p.hl7", &late_a08(&p, &format!("L1{tag}")));
    assert_eq!(
        visit_subject(&c, &format!("L1{tag}")),
        patient_ref(&c, &t),
        "P → S → T"
    );
    // T merged into P: P survives, so it is live again, and S's chain now ends at P.
    run_message(&pipeline, "a40-3.hl7", &a40(&format!("{tag}3"), &p, &t));
    let back = rt().block_on(on_server(&c, &p));
    assert_eq!(back["active"], true, "{back}");
    run_message(&pipeline, "late-s.hl7", &late_a08(&s, &format!("L2{tag}")));
    assert_eq!(
        visit_subject(&c, &format!("L2{tag}")),
        patient_ref(&c, &p),
        "S → T → P"
    );
    let (actions, _) = audit_actions(&dir.path().join("chain.sync.db"), &integration, &p);
    assert_eq!(actions, ["merged_into", "followed_survivor", "unmerged"]);
}
