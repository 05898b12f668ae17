//! Pipelines on a real Kafka broker (Apache Kafka 4.x, started by `scripts/dev-services`): HL7, JSON and
//! Avro in; output and dead-letter topics checked record by record; at-least-once across
//! kill -9; two processes in one group; graceful stop; replay from the dead-letter topic.
//! Each test uses its own topics and consumer groups.

// Tests build Avro datums with the simple (deprecated in 0.22) free functions.
#![allow(deprecated)]

mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::listener::free_port;
use support::registry::Registry;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// An HL7 pipeline: parse → map → validate → Kafka sink keyed by MRN, DLQ topic.
fn hl7_pipeline(input: &str, output: &str, dlq: &str, group: &str, max_rows: usize) -> String {
    format!(
        r#"
name: adt_stream
integration: {{id: ghh-adt}}
kafka:
  brokers: {brokers}
  properties: {{client.id: plexus-test}}
source: {{type: kafka, topics: [{input}], group: {group}, format: hl7}}
batch: {{max_rows: {max_rows}, max_delay: 100ms}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: event, path: MSH-9.2}}
      - {{name: mrn, path: PID-3.1}}
      - {{name: family, path: PID-5.1}}
  - name: shape
    type: map
    select:
      mrn: mrn
      family: family
      event: event
  - name: checks
    type: validate
    rules:
      - {{name: mrn_present, check: "mrn IS NOT NULL AND mrn <> ''", message: MRN is required}}
sinks:
  - {{name: patients, type: kafka, topic: {output}, key: mrn, format: json}}
dlq: {{topic: {dlq}}}
"#,
        brokers = brokers()
    )
}

#[test]
fn hl7_topic_to_output_and_dead_letter_topics() {
    let (input, output, dlq) = (unique("adt-in"), unique("adt-out"), unique("adt-dlq"));
    let group = unique("g");
    create_topics(&[(&input, 2), (&output, 2), (&dlq, 1)]);
    let mut records = Vec::new();
    for i in 0..200 {
        // Every 10th message lacks its MRN: rule failure.
        let mrn = if i % 10 == 9 {
            String::new()
        } else {
            format!("MRN{i:04}")
        };
        // Keyed and with headers of the producer's own: dead letters keep them for replay.
        let mut r = Rec::value(adt(&format!("C{i:04}"), &mrn));
        r.key = Some(format!("key-{i}").into_bytes());
        r.headers = vec![
            ("trace-id".into(), format!("t{i}")),
            ("facility".into(), "GHH".into()),
        ];
        records.push(r);
    }
    // Garbage and an empty message: parse failures.
    records.push(Rec::value("this is not HL7"));
    // Readable MSH, broken later (a lower-case segment id): a parse failure whose dead letter
    // still carries MSH-10, located inside its record.
    let mut broken = Rec::value(format!("{}pid|x\r", adt("BROKEN1", "MRNX")));
    broken.key = Some(b"key-broken".to_vec());
    records.push(broken);
    records.push(Rec::value(b"\x00\x01binary".to_vec()));
    // A batch file in one message: three messages.
    records.push(Rec::value(format!(
        "FHS|^~\\&\rBHS|^~\\&\r{}{}{}BTS|3\rFTS|1\r",
        adt("B1", "MRNB1"),
        adt("B2", "MRNB2"),
        adt("B3", "MRNB3")
    )));
    produce(&input, records);

    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(
        dir.path(),
        "adt",
        &hl7_pipeline(&input, &output, &dlq, &group, 64),
    );
    let s = summary(&plexus(&[
        "run",
        p.to_str().unwrap(),
        "--json",
        "--exit-when-idle",
        "3s",
    ]));
    assert_eq!(s["records_in"], 206, "{s}");
    assert_eq!(s["delivered"], 183, "{s}");
    assert_eq!(s["dead_lettered"], 23, "{s}");

    let out = read_topic(&output, 183, WAIT);
    assert_eq!(out.len(), 183);
    let ids: HashSet<String> = out
        .iter()
        .map(|m| m.header("plexus.correlation-id").to_string())
        .collect();
    assert_eq!(ids.len(), 183, "each message once");
    for m in &out {
        let row = m.json();
        let mrn = row["mrn"].as_str().unwrap();
        assert_eq!(m.key.as_deref(), Some(mrn.as_bytes()), "keyed by MRN");
        assert_eq!(row["family"], "DOE");
        assert_eq!(m.header("plexus.source.topic"), input);
        assert_eq!(m.header("plexus.pipeline"), "adt_stream");
        assert!(row.get("_raw").is_none(), "no provenance in the payload");
    }
    // Ordering per key/partition: within a source partition, offsets rise in output order.
    let mut last: HashMap<(i32, String), i64> = HashMap::new();
    for m in &out {
        let src = m.header("plexus.source.partition").to_string();
        let off: i64 = m.header("plexus.source.offset").parse().unwrap();
        let prev = last.insert((m.partition, src), off);
        assert!(prev.is_none_or(|p| p <= off), "order kept");
    }

    let dead = read_topic(&dlq, 23, WAIT);
    assert_eq!(dead.len(), 23);
    let rules: Vec<&str> = dead.iter().map(|m| m.header("plexus.dlq.rule")).collect();
    assert_eq!(rules.iter().filter(|r| **r == "mrn_present").count(), 20);
    assert_eq!(rules.iter().filter(|r| **r == "parse").count(), 3);
    let broken = dead
        .iter()
        .find(|m| m.text().contains("BROKEN1"))
        .expect("broken message dead-lettered");
    assert_eq!(
        broken.header("plexus.correlation-id"),
        "BROKEN1",
        "MSH-10 read from the bytes"
    );
    assert_eq!(broken.header("plexus.source.key"), "key-broken");
    let error = broken.header("plexus.dlq.error");
    let at = format!(
        "record at {input}/{} offset {}:",
        broken.header("plexus.source.partition"),
        broken.header("plexus.source.offset")
    );
    assert!(error.starts_with(&at), "names the record: {error}");
    assert!(
        !error.contains("message "),
        "no run-wide message number: {error}"
    );
    let segment_at = adt("BROKEN1", "MRNX").len();
    assert!(
        error.contains(&format!("byte offset {segment_at}")),
        "byte offset inside the record ({segment_at}): {error}"
    );
    for m in &dead {
        assert_eq!(m.header("plexus.attempt"), "1");
        assert_eq!(m.header("plexus.source.topic"), input);
        assert!(!m.header("plexus.first-failed-at").is_empty());
        if m.header("plexus.dlq.rule") == "mrn_present" {
            assert_eq!(m.header("plexus.dlq.stage"), "checks");
            assert!(m.text().starts_with("MSH|"), "original bytes");
            let cid = m.header("plexus.correlation-id");
            let i: usize = cid[1..].parse().unwrap();
            assert_eq!(m.text(), adt(cid, ""), "unchanged, message {i}");
            assert_eq!(m.header("plexus.source.key"), format!("key-{i}"));
            assert_eq!(
                m.header("trace-id"),
                format!("t{i}"),
                "producer's headers kept"
            );
            assert_eq!(m.header("facility"), "GHH");
        }
    }
    let garbage = dead
        .iter()
        .find(|m| m.value.starts_with(b"\x00\x01"))
        .expect("binary garbage dead-lettered byte for byte");
    assert_eq!(garbage.value, b"\x00\x01binary");

    // Offsets are committed to the end: a second run reads nothing.
    let c = committed(&group, &input, 2);
    let total: i64 = c.values().sum();
    assert_eq!(total, 204, "committed {c:?}");
    let again = summary(&plexus(&[
        "run",
        p.to_str().unwrap(),
        "--json",
        "--exit-when-idle",
        "2s",
    ]));
    assert_eq!(again["records_in"], 0, "{again}");

    // `plexus dlq list` shows them; replay re-injects the rule failures once.
    let listed = plexus(&["dlq", "list", p.to_str().unwrap(), "--json"]);
    assert_ok(&listed);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 23);
    let listed_err = String::from_utf8_lossy(&listed.stderr);
    assert!(
        !listed_err.contains("ERROR") && !listed_err.contains("PartitionEOF"),
        "a normal end is not an error: {listed_err}"
    );
    // `dlq show --at P:O`: one dead letter's headers and its original record.
    let g = &dead[0];
    let shown = plexus(&[
        "dlq",
        "show",
        p.to_str().unwrap(),
        "--at",
        &format!("{}:{}", g.partition, g.offset),
    ]);
    assert_ok(&shown);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains(g.header("plexus.dlq.rule")), "{text}");
    assert!(
        text.contains(&format!("original record ({} bytes)", g.value.len())),
        "{text}"
    );
    let missing = plexus(&["dlq", "show", p.to_str().unwrap(), "--at", "0:999999"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no dead letter at 0:999999"));
    let replay_to = unique("adt-replay");
    create_topics(&[(&replay_to, 1)]);
    let args = [
        "replay",
        "--pipeline",
        p.to_str().unwrap(),
        "--filter",
        "rule = 'mrn_present'",
        "--to-topic",
        &replay_to,
    ];
    let r = plexus(&args);
    assert_ok(&r);
    assert!(String::from_utf8_lossy(&r.stdout).contains("replayed 20"));
    let replayed = read_topic(&replay_to, 20, WAIT);
    assert_eq!(replayed.len(), 20);
    for m in &replayed {
        assert_eq!(m.header("plexus.attempt"), "2");
        assert!(m.text().starts_with("MSH|"));
        // The original key and headers come back with it.
        let i: usize = m.text().split('|').nth(9).unwrap()[1..].parse().unwrap();
        assert_eq!(m.key.as_deref(), Some(format!("key-{i}").as_bytes()));
        assert_eq!(m.header("trace-id"), format!("t{i}"));
        assert_eq!(m.header("facility"), "GHH");
    }
    // Idempotent: a second replay sends nothing more.
    let r2 = plexus(&args);
    assert_ok(&r2);
    assert!(
        String::from_utf8_lossy(&r2.stdout).contains("replayed 0"),
        "{}",
        String::from_utf8_lossy(&r2.stderr)
    );
    assert_eq!(read_topic(&replay_to, 20, Duration::from_secs(5)).len(), 20);

    // Replayed to its own topic, a dead letter goes back to its own partition with its key.
    let r3 = plexus(&[
        "replay",
        "--pipeline",
        p.to_str().unwrap(),
        "--filter",
        "correlation_id = 'BROKEN1'",
    ]);
    assert_ok(&r3);
    assert!(String::from_utf8_lossy(&r3.stdout).contains("replayed 1"));
    let back: Vec<Msg> = read_topic(&input, 207, WAIT)
        .into_iter()
        .filter(|m| m.headers.contains_key("plexus.replay-of"))
        .collect();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].key.as_deref(), Some(b"key-broken".as_slice()));
    assert_eq!(
        back[0].partition.to_string(),
        broken.header("plexus.source.partition"),
        "same partition as the original"
    );
    assert_eq!(back[0].value, broken.value);
}

const EVENT_V1: &str = r#"{"type":"record","name":"FacilityEvent","namespace":"org.plexus",
 "fields":[{"name":"event_id","type":"string"},{"name":"facility","type":"string"},
           {"name":"occupied_beds","type":"int"}]}"#;
/// The reader: adds a field with a default (a compatible evolution).
const EVENT_V2: &str = r#"{"type":"record","name":"FacilityEvent","namespace":"org.plexus",
 "fields":[{"name":"event_id","type":"string"},{"name":"facility","type":"string"},
           {"name":"occupied_beds","type":"int"},
           {"name":"unit","type":"string","default":"ICU"}]}"#;

fn avro_record(id: u32, schema: &str, event: &str, facility: &str, beds: i32) -> Vec<u8> {
    use apache_avro::types::Value;
    let s = apache_avro::Schema::parse_str(schema).unwrap();
    let v = Value::Record(vec![
        ("event_id".into(), Value::String(event.into())),
        ("facility".into(), Value::String(facility.into())),
        ("occupied_beds".into(), Value::Int(beds)),
    ]);
    let datum = apache_avro::to_avro_datum(&s, v).unwrap();
    let mut out = vec![0u8];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&datum);
    out
}

#[test]
fn avro_and_json_events_with_schema_evolution_and_bad_records() {
    let registry = Registry::connect();
    let url = registry.url().to_string();
    let (avro_in, avro_out, json_in, dlq) = (
        unique("fac-avro"),
        unique("fac-out"),
        unique("fac-json"),
        unique("fac-dlq"),
    );
    create_topics(&[(&avro_in, 1), (&avro_out, 1), (&json_in, 1), (&dlq, 1)]);
    let v1 = registry.add(&format!("{avro_in}-value"), EVENT_V1);
    let mut recs: Vec<Rec> = (0..50)
        .map(|i| Rec::value(avro_record(v1, EVENT_V1, &format!("E{i}"), "GHH", i)))
        .collect();
    recs.push(Rec::value(br#"{"event_id":"x"}"#.to_vec())); // wrong magic byte
    let mut truncated = avro_record(v1, EVENT_V1, "T", "GHH", 1);
    truncated.truncate(8);
    recs.push(Rec::value(truncated)); // undecodable datum
    recs.push(Rec::value(avro_record(999, EVENT_V1, "U", "GHH", 1))); // unknown schema id
    produce(&avro_in, recs);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("event.avsc"), EVENT_V2).unwrap();
    let yaml = format!(
        r#"
name: facility_avro
integration: {{id: facilities}}
kafka: {{brokers: {brokers}}}
schema_registry: {{url: "{url}"}}
source: {{type: kafka, topics: [{avro_in}], format: avro, group: {group}}}
batch: {{max_rows: 16, max_delay: 50ms}}
stages:
  - {{name: parse, type: parse, format: avro, schema: event.avsc}}
  - name: busy
    type: enrich
    fields: {{busy: "occupied_beds >= 25"}}
sinks:
  - {{name: out, type: kafka, topic: {avro_out}, format: avro, key: facility}}
dlq: {{topic: {dlq}}}
"#,
        brokers = brokers(),
        group = unique("g")
    );
    let p = pipeline(dir.path(), "avro", &yaml);
    let run = plexus_logging(
        &[
            "run",
            p.to_str().unwrap(),
            "--json",
            "--exit-when-idle",
            "3s",
        ],
        "plexus=debug",
    );
    let s = summary(&run);
    assert_eq!(
        (s["delivered"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(50), Some(3)),
        "{s}"
    );
    // Writer schemas are fetched once per id (v1 and the unknown 999), not per record.
    let fetches = String::from_utf8_lossy(&run.stderr)
        .matches("writer schema fetched")
        .count();
    assert_eq!(fetches, 2, "one fetch per schema id");
    // The schema derived for the sink keeps the rows' nullability: columns that are never
    // null are plain types, not ["null", T] unions.
    let derived = registry
        .latest(&format!("{avro_out}-value"))
        .expect("sink registered its schema");
    let field = |name: &str| {
        derived["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {derived}"))["type"]
            .clone()
    };
    assert_eq!(field("event_id"), serde_json::json!("string"), "{derived}");
    assert_eq!(
        field("occupied_beds"),
        serde_json::json!("int"),
        "{derived}"
    );
    assert_eq!(
        field("unit"),
        serde_json::json!("string"),
        "a reader default is never null: {derived}"
    );
    assert_eq!(
        field("busy"),
        serde_json::json!("boolean"),
        "an enrich expression over non-null columns is non-null: {derived}"
    );

    let out = read_topic(&avro_out, 50, WAIT);
    assert_eq!(out.len(), 50);
    for m in &out {
        assert_eq!(m.value[0], 0, "Confluent magic byte");
        let id = u32::from_be_bytes(m.value[1..5].try_into().unwrap());
        let schema =
            apache_avro::Schema::parse_str(&registry.schema(id).expect("registered")).unwrap();
        let v = apache_avro::from_avro_datum(&schema, &mut &m.value[5..], None).unwrap();
        let apache_avro::types::Value::Record(fields) = v else {
            panic!("record")
        };
        let f: HashMap<String, apache_avro::types::Value> = fields.into_iter().collect();
        use apache_avro::types::Value;
        assert_eq!(
            f["unit"],
            Value::String("ICU".into()),
            "reader default applied"
        );
        let beds = match &f["occupied_beds"] {
            Value::Int(b) => *b,
            other => panic!("{other:?}"),
        };
        let busy = match &f["busy"] {
            Value::Union(_, b) => (**b).clone(),
            other => other.clone(),
        };
        assert_eq!(busy, Value::Boolean(beds >= 25));
        assert_eq!(m.key.as_deref(), Some(&b"GHH"[..]));
    }
    let dead = read_topic(&dlq, 3, WAIT);
    let mut errors: Vec<String> = dead
        .iter()
        .map(|m| m.header("plexus.dlq.error").to_string())
        .collect();
    errors.sort();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("magic byte is 0x7b")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("schema id 999")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("Avro datum")),
        "{errors:?}"
    );
    assert!(dead.iter().any(|m| m.value == br#"{"event_id":"x"}"#));

    // JSON events: a declared schema; invalid JSON and wrong types dead-letter.
    std::fs::write(
        dir.path().join("event.json"),
        r#"{"fields":[{"name":"event_id","type":"utf8","nullable":false},
                     {"name":"facility","type":"utf8"},{"name":"occupied_beds","type":"int64"}]}"#,
    )
    .unwrap();
    let mut recs: Vec<Rec> = (0..30)
        .map(|i| {
            Rec::value(format!(
                r#"{{"event_id":"J{i}","facility":"NCH","occupied_beds":{i}}}"#
            ))
        })
        .collect();
    recs.push(Rec::value("{not json"));
    recs.push(Rec::value(r#"{"event_id":"J99","occupied_beds":"many"}"#));
    produce(&json_in, recs);
    let json_out = dir.path().join("events.ndjson");
    let yaml = format!(
        r#"
name: facility_json
integration: {{id: facilities}}
kafka: {{brokers: {brokers}}}
source: {{type: kafka, topics: [{json_in}], format: json, group: {group}}}
stages:
  - {{name: parse, type: parse, format: json, schema: event.json}}
sinks:
  - {{name: out, type: file, format: ndjson, path: {out}}}
dlq: {{topic: {dlq}}}
"#,
        brokers = brokers(),
        group = unique("g"),
        out = json_out.display()
    );
    let p = pipeline(dir.path(), "json", &yaml);
    let s = summary(&plexus(&[
        "run",
        p.to_str().unwrap(),
        "--json",
        "--exit-when-idle",
        "3s",
    ]));
    assert_eq!(
        (s["delivered"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(30), Some(2)),
        "{s}"
    );
    let lines = std::fs::read_to_string(&json_out).unwrap();
    assert_eq!(lines.lines().count(), 30);
    assert_eq!(read_topic(&dlq, 5, WAIT).len(), 5);
}

/// Control ids in an output topic: (distinct, duplicates).
fn control_ids(msgs: &[Msg]) -> (HashSet<String>, usize) {
    let mut set = HashSet::new();
    let mut dup = 0;
    for m in msgs {
        if !set.insert(m.header("plexus.correlation-id").to_string()) {
            dup += 1;
        }
    }
    (set, dup)
}

/// Where a crash test kills the pipeline.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// Records read and batches in flight, nothing committed yet (batches are held for
    /// seconds, so the kill lands before the first commit).
    BeforeFirstCommit,
    /// The moment the group's first commit is seen.
    RightAfterACommit,
    /// Mid-stream: pipeline batches (137 records) in flight, the committed offsets in the
    /// middle of the producer's record batches.
    MidBatch,
}

/// Inputs keyed by MRN (10 patients), produced in realistic record batches; the pipeline is
/// killed with SIGKILL at `point`, restarted, and must leave every input control id on the
/// output topic, with duplicates only from the window delivered but not committed at the
/// kill, and each patient's messages in input order.
fn crash_and_restart(point: KillPoint) {
    let tag = format!("{point:?}").to_lowercase();
    let (input, output, dlq) = (
        unique(&format!("crash-{tag}-in")),
        unique(&format!("crash-{tag}-out")),
        unique(&format!("crash-{tag}-dlq")),
    );
    let group = unique("g");
    create_topics(&[(&input, 2), (&output, 2), (&dlq, 1)]);
    let n = 60_000;
    produce(
        &input,
        (0..n)
            .map(|i| {
                let mut r = Rec::value(adt(&format!("K{i:06}"), &format!("MRN{}", i % 10)));
                r.key = Some(format!("MRN{}", i % 10).into_bytes());
                r
            })
            .collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let (max_rows, batch) = match point {
        KillPoint::BeforeFirstCommit => (100_000, "max_delay: 8s, max_bytes: 100000000"),
        _ => (137, "max_delay: 100ms"),
    };
    let p = pipeline(
        dir.path(),
        "crash",
        // Static membership: the restarted process takes the killed one's partitions back.
        &hl7_pipeline(&input, &output, &dlq, &group, max_rows)
            .replace(
                "format: hl7}",
                &format!("format: hl7, instance: {group}-1}}"),
            )
            .replace("max_delay: 100ms", batch),
    );
    let mut child = Command::new(BIN)
        .args(["run", p.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    match point {
        KillPoint::BeforeFirstCommit => {
            // The source has joined and is buffering its first (8 s) batch.
            std::thread::sleep(Duration::from_secs(4));
        }
        KillPoint::RightAfterACommit => {
            let reader = CommittedReader::new(&group);
            while reader.read(&input, 2).is_empty() {
                assert!(started.elapsed() < WAIT, "no commit seen");
            }
        }
        KillPoint::MidBatch => {
            // A quarter of the way: the kill lands mid-stream even on a fast machine.
            assert!(wait_for(&output, n / 4, WAIT) >= n / 4, "output under way");
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let committed_at_kill: i64 = committed(&group, &input, 2).values().sum();
    let before = read_topic(&output, 0, Duration::from_secs(2)).len();
    eprintln!("{point:?}: killed with {before} outputs, {committed_at_kill} committed");
    assert!(before < n, "killed mid-stream ({before} of {n} out)");
    match point {
        KillPoint::BeforeFirstCommit => assert_eq!(committed_at_kill, 0, "killed before a commit"),
        _ => assert!(committed_at_kill > 0, "killed after a commit"),
    }

    let restart = plexus(&[
        "run",
        p.to_str().unwrap(),
        "--json",
        "--exit-when-idle",
        "3s",
    ]);
    let s = summary(&restart);
    assert!(
        s["warnings"].as_array().is_none_or(|w| w.is_empty()),
        "a restart on Kafka resumes exactly at the committed offset: {}",
        s["warnings"]
    );
    let out = read_topic(&output, n, Duration::from_secs(180));
    let (ids, dup) = control_ids(&out);
    assert_eq!(
        ids.len(),
        n,
        "{point:?}: every record present after the restart"
    );
    assert_eq!(out.len(), n + dup);
    // Duplicates come only from the window delivered but not committed before the kill.
    assert!(
        dup as i64 <= before as i64 - committed_at_kill,
        "{point:?}: {dup} duplicates, {before} outputs at the kill, {committed_at_kill} committed"
    );
    assert_eq!(
        s["records_in"].as_i64().unwrap(),
        n as i64 - committed_at_kill,
        "the restart read exactly the uncommitted rest"
    );
    // Per key (one output partition per MRN), messages come in input order: a redelivered
    // window repeats a run of messages but never reorders them, so the first copies of the
    // messages are in order.
    let mut last: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut seen = HashSet::new();
    let mut in_order: Vec<&Msg> = out.iter().collect();
    in_order.sort_by_key(|m| (m.partition, m.offset));
    for m in in_order {
        let id = m.header("plexus.correlation-id");
        if !seen.insert(id.to_string()) {
            continue;
        }
        let seq: u64 = id[1..].parse().unwrap();
        let key = m.key.clone().expect("keyed by MRN");
        if let Some(prev) = last.insert(key.clone(), seq) {
            assert!(
                seq > prev,
                "{point:?}: {} out of order ({seq} after {prev})",
                String::from_utf8_lossy(&key)
            );
        }
    }
    eprintln!(
        "{point:?}: restart read {} records, {dup} duplicates (uncommitted window {})",
        s["records_in"],
        before as i64 - committed_at_kill
    );
}

#[test]
fn kill_dash_9_before_the_first_commit_loses_nothing() {
    crash_and_restart(KillPoint::BeforeFirstCommit);
}

#[test]
fn kill_dash_9_right_after_a_commit_loses_nothing() {
    crash_and_restart(KillPoint::RightAfterACommit);
}

#[test]
fn kill_dash_9_mid_batch_loses_nothing() {
    crash_and_restart(KillPoint::MidBatch);
}

/// Topics (input and output with `partitions` each, a DLQ), a group and the HL7 pipeline
/// over them, for tests that run several `plexus run` processes in one group.
struct GroupSetup {
    input: String,
    output: String,
    _dir: tempfile::TempDir,
    pipeline: std::path::PathBuf,
}

impl GroupSetup {
    fn new(tag: &str, partitions: i32, max_rows: usize) -> GroupSetup {
        let (input, output, dlq) = (
            unique(&format!("{tag}-in")),
            unique(&format!("{tag}-out")),
            unique(&format!("{tag}-dlq")),
        );
        create_topics(&[(&input, partitions), (&output, partitions), (&dlq, 1)]);
        let dir = tempfile::tempdir().unwrap();
        let yaml = hl7_pipeline(&input, &output, &dlq, &unique("g"), max_rows);
        let pipeline = pipeline(dir.path(), tag, &yaml);
        GroupSetup {
            input,
            output,
            _dir: dir,
            pipeline,
        }
    }

    /// One member: `plexus run --json --exit-when-idle IDLE`.
    fn spawn(&self, idle: &str) -> std::process::Child {
        Command::new(BIN)
            .args(["run", self.pipeline.to_str().unwrap(), "--json"])
            .args(["--exit-when-idle", idle])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// A second instance joins while the first has batches in flight, then the first leaves
/// (SIGTERM): partitions move twice mid-stream, and every record comes out exactly once —
/// a revoked partition's in-flight batches are finished and committed before it moves.
#[test]
fn rebalance_with_batches_in_flight_loses_and_repeats_nothing() {
    let n = 60_000;
    let g = GroupSetup::new("reb", 6, 200);
    let (input, output) = (g.input.clone(), g.output.clone());
    let spawn = |idle: &str| g.spawn(idle);
    // The stream: 60 chunks of 1,000 records over ~12 s, keyed by MRN.
    let producer = {
        let input = input.clone();
        std::thread::spawn(move || {
            for c in 0..60 {
                produce(
                    &input,
                    (c * 1000..(c + 1) * 1000)
                        .map(|i| {
                            let mut r =
                                Rec::value(adt(&format!("R{i:06}"), &format!("P{}", i % 97)));
                            r.key = Some(format!("P{}", i % 97).into_bytes());
                            r
                        })
                        .collect(),
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let a = spawn("60s");
    assert!(wait_for(&output, 5_000, WAIT) >= 5_000, "A is processing");
    let b = spawn("6s");
    assert!(
        wait_for(&output, 30_000, WAIT) >= 30_000,
        "A and B processing"
    );
    assert!(
        Command::new("kill")
            .args(["-TERM", &a.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let sa = summary(&a.wait_with_output().unwrap());
    producer.join().unwrap();
    let sb = summary(&b.wait_with_output().unwrap());
    let (ra, rb) = (
        sa["records_in"].as_u64().unwrap(),
        sb["records_in"].as_u64().unwrap(),
    );
    eprintln!("A read {ra} (then left), B read {rb} (joined mid-stream)");
    let out = read_topic(&output, n, WAIT);
    let (ids, dup) = control_ids(&out);
    assert_eq!(ids.len(), n, "every record delivered");
    assert_eq!(
        dup, 0,
        "no record twice: revoked partitions were committed first"
    );
    assert_eq!(
        ra + rb,
        n as u64,
        "each record read once across the two members"
    );
    assert!(ra > 5_000 && rb > 0, "both members worked: {ra} / {rb}");
}

#[test]
fn two_processes_in_one_group_split_the_partitions() {
    let n = 8_000;
    let g = GroupSetup::new("grp", 4, 100);
    let (input, output) = (g.input.clone(), g.output.clone());
    let spawn = || g.spawn("15s");
    let a = spawn();
    let b = spawn();
    // Both members join (and the group settles) before the records arrive.
    std::thread::sleep(Duration::from_secs(8));
    produce(
        &input,
        (0..n)
            .map(|i| {
                let mut r = Rec::value(adt(&format!("G{i:06}"), &format!("M{i}")));
                r.partition = Some(i as i32 % 4);
                r
            })
            .collect(),
    );
    let sa = summary(&a.wait_with_output().unwrap());
    let sb = summary(&b.wait_with_output().unwrap());
    let (ra, rb) = (
        sa["records_in"].as_u64().unwrap(),
        sb["records_in"].as_u64().unwrap(),
    );
    eprintln!("process A read {ra}, process B read {rb}");
    let out = read_topic(&output, n, WAIT);
    let (ids, dup) = control_ids(&out);
    assert_eq!(ids.len(), n, "all records processed");
    assert_eq!(dup, 0, "each record once");
    assert_eq!(ra + rb, n as u64, "split without overlap");
    assert!(ra > 0 && rb > 0, "both members got partitions: {ra} / {rb}");
}

#[test]
fn sigterm_drains_commits_and_exits_cleanly() {
    let (input, output, dlq) = (unique("term-in"), unique("term-out"), unique("term-dlq"));
    let group = unique("g");
    create_topics(&[(&input, 1), (&output, 1), (&dlq, 1)]);
    let n = 10_000;
    produce(
        &input,
        (0..n)
            .map(|i| Rec::value(adt(&format!("T{i:06}"), &format!("M{i}"))))
            .collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(
        dir.path(),
        "term",
        &hl7_pipeline(&input, &output, &dlq, &group, 100),
    );
    let child = Command::new(BIN)
        .args(["run", p.to_str().unwrap(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while read_topic(&output, 0, Duration::from_millis(300)).is_empty() && started.elapsed() < WAIT
    {
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let first = summary(&child.wait_with_output().unwrap());
    let first_in = first["records_in"].as_u64().unwrap();
    let accounted = first["delivered"].as_u64().unwrap()
        + first["dead_lettered"].as_u64().unwrap()
        + first["filtered"].as_u64().unwrap();
    assert_eq!(accounted, first_in, "drained, nothing pending: {first}");
    assert_eq!(
        committed(&group, &input, 1).get(&0).copied(),
        Some(first_in as i64),
        "committed exactly what was processed"
    );
    let second = summary(&plexus(&[
        "run",
        p.to_str().unwrap(),
        "--json",
        "--exit-when-idle",
        "3s",
    ]));
    assert_eq!(first_in + second["records_in"].as_u64().unwrap(), n as u64);
    let (ids, dup) = control_ids(&read_topic(&output, n, WAIT));
    assert_eq!(
        (ids.len(), dup),
        (n, 0),
        "no loss, no duplicate after a graceful stop"
    );
}

/// Broker conformance: a consumer starting at an offset inside a produced record batch must get
/// that record first (the broker returns the whole batch; the client skips the earlier ones).
#[test]
fn fetch_from_an_offset_inside_a_batch_starts_there() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let topic = unique("midbatch");
    create_topics(&[(&topic, 1)]);
    let n = 20_000;
    produce(
        &topic,
        (0..n)
            .map(|i| Rec::value(format!("record {i:06} {}", "x".repeat(100))))
            .collect(),
    );
    for start in [1i64, 777, 5_000, 12_345, 19_999] {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", unique("probe"))
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(start))
            .unwrap();
        c.assign(&tpl).unwrap();
        let t = Instant::now();
        let first = loop {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                break m.offset();
            }
            assert!(t.elapsed() < WAIT, "nothing fetched from {start}");
        };
        eprintln!("asked for {start}, first record {first}");
        assert_eq!(first, start, "fetch from {start}");
    }
}

/// A TCP forwarder to the broker on a fixed local port, started late: the brokers are
/// unreachable at first (the bootstrap address refuses connections), then reachable.
fn late_bootstrap(port: u16, after: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect("127.0.0.1:9092") else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c, mut s) = (client, server);
            std::thread::spawn(move || std::io::copy(&mut c, &mut s2));
            std::thread::spawn(move || std::io::copy(&mut s, &mut c2));
        }
    });
}

/// #15 item 12: brokers down is one clear line, not a flood; `--exit-when-idle` (or
/// `kafka.max_outage`) ends a run whose brokers never answer with a non-zero exit; brokers
/// that come back are announced once and the run completes.
#[test]
fn unreachable_brokers_are_reported_once_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |brokers: &str, topic: &str, group: &str, extra: &str| {
        format!(
            r#"
name: outage
integration: {{id: ghh-outage}}
kafka:
  brokers: {brokers}
{extra}
source: {{type: kafka, topics: [{topic}], group: {group}, format: hl7}}
batch: {{max_rows: 50, max_delay: 100ms}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: mrn, path: PID-3.1}}
sinks:
  - {{name: out, type: file, format: ndjson, path: out.ndjson}}
dlq: {{path: dlq.ndjson}}
"#
        )
    };
    let run = |p: &std::path::Path, idle: &str| {
        let started = Instant::now();
        let o = Command::new(BIN)
            .args([
                "run",
                p.to_str().unwrap(),
                "--json",
                "--exit-when-idle",
                idle,
            ])
            .env_remove("PLEXUS_KAFKA_BROKERS")
            .env("PLEXUS_LOG", "warn")
            .output()
            .unwrap();
        (o, started.elapsed())
    };

    // Nothing ever answers: one warning, then a clear failure when the idle limit passes.
    let dead = free_port();
    let p = pipeline(
        dir.path(),
        "dead",
        &spec(&format!("127.0.0.1:{dead}"), "t-none", "g-none", ""),
    );
    let (o, took) = run(&p, "4s");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(
        err.matches("kafka brokers unreachable;").count(),
        1,
        "{err}"
    );
    assert!(err.contains("kafka brokers unreachable for"), "{err}");
    assert!(err.lines().count() <= 6, "a flood of lines:\n{err}");

    // kafka.max_outage bounds it too, without --exit-when-idle being the limit.
    let p = pipeline(
        dir.path(),
        "bounded",
        &spec(
            &format!("127.0.0.1:{dead}"),
            "t-none",
            "g-none",
            "  max_outage: 2s",
        ),
    );
    let (o, took) = run(&p, "60s");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(err.contains("kafka.max_outage"), "{err}");

    // The brokers come back after 3 s: announced once, and every record arrives.
    let topic = unique("late");
    create_topics(&[(&topic, 1)]);
    produce(
        &topic,
        (0..20)
            .map(|i| Rec::value(adt(&format!("L{i}"), &format!("M{i}"))))
            .collect(),
    );
    let port = free_port();
    late_bootstrap(port, Duration::from_secs(3));
    let p = pipeline(
        dir.path(),
        "late",
        &spec(&format!("127.0.0.1:{port}"), &topic, &unique("g"), ""),
    );
    let (o, _) = run(&p, "8s");
    let s = summary(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(s["delivered"], 20, "{err}");
    assert_eq!(
        err.matches("kafka brokers unreachable;").count(),
        1,
        "{err}"
    );
    assert_eq!(
        err.matches("kafka brokers reachable again").count(),
        1,
        "{err}"
    );
}

/// #15 item 3: the shipped Kafka pipeline, run at trace level over the sample feed, logs no
/// patient identifier, name or birth date (a copy with this test's own topics and group).
#[test]
fn the_shipped_kafka_pipeline_logs_no_patient_data_at_trace_level() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let feed = std::fs::read(root.join("data/samples/adt_feed.hl7")).unwrap();
    let mut phi = Vec::new();
    let mut records = Vec::new();
    for r in plexus::formats::hl7::Splitter::new(&feed).filter_map(Result::ok) {
        records.push(Rec::value(r.message.raw().to_vec()));
        for path in [
            "PID-3.1", "PID-5.1", "PID-5.2", "PID-7", "PID-11.1", "PID-13.1",
        ] {
            if let Ok(Some(v)) = r.message.query(path) {
                let v = v.trim().to_string();
                if v.chars().count() >= 5 && !phi.contains(&v) {
                    phi.push(v);
                }
            }
        }
    }
    assert!(phi.len() > 50 && records.len() > 100);
    let (input, output, dlq, group) = (
        unique("trace-in"),
        unique("trace-out"),
        unique("trace-dlq"),
        unique("g"),
    );
    create_topics(&[(&input, 1), (&output, 1), (&dlq, 1)]);
    let n = records.len();
    produce(&input, records);
    let dir = tempfile::tempdir().unwrap();
    let yaml = std::fs::read_to_string(root.join("pipelines/adt_kafka.yaml"))
        .unwrap()
        .replace("hl7.adt.in", &input)
        .replace("patients.out", &output)
        .replace("hl7.adt.dlq", &dlq)
        .replace("plexus-adt-registry", &group)
        .replace("../sql/", &format!("{}/sql/", root.display()));
    let p = pipeline(dir.path(), "adt_kafka", &yaml);
    let o = Command::new(BIN)
        .args([
            "run",
            p.to_str().unwrap(),
            "--json",
            "--exit-when-idle",
            "3s",
        ])
        .env_remove("PLEXUS_LOG")
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let s = summary(&o);
    assert_eq!(s["records_in"].as_u64(), Some(n as u64), "{s}");
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.lines().filter(|l| l.contains("TRACE")).count() > 20);
    for v in &phi {
        assert!(
            !shows_token(&log, v),
            "the log shows patient data ({} chars)",
            v.len()
        );
    }
}
