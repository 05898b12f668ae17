//! Pipelines on a real Kafka broker (tansu, started by `scripts/dev-services`): HL7, JSON and
//! Avro in; output and dead-letter topics checked record by record; at-least-once across
//! kill -9; two processes in one group; graceful stop; replay from the dead-letter topic.
//! Each test uses its own topics and consumer groups.

// Tests build Avro datums with the simple (deprecated in 0.22) free functions.
#![allow(deprecated)]

mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
        records.push(Rec::value(adt(&format!("C{i:04}"), &mrn)));
    }
    // Garbage and an empty message: parse failures.
    records.push(Rec::value("this is not HL7"));
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
    assert_eq!(s["records_in"], 205, "{s}");
    assert_eq!(s["delivered"], 183, "{s}");
    assert_eq!(s["dead_lettered"], 22, "{s}");

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

    let dead = read_topic(&dlq, 22, WAIT);
    assert_eq!(dead.len(), 22);
    let rules: Vec<&str> = dead.iter().map(|m| m.header("plexus.dlq.rule")).collect();
    assert_eq!(rules.iter().filter(|r| **r == "mrn_present").count(), 20);
    assert_eq!(rules.iter().filter(|r| **r == "parse").count(), 2);
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
    assert_eq!(total, 203, "committed {c:?}");
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
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 22);
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
    let (registry, url) = Registry::start();
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
    let s = summary(&plexus(&[
        "run",
        p.to_str().unwrap(),
        "--json",
        "--exit-when-idle",
        "3s",
    ]));
    assert_eq!(
        (s["delivered"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(50), Some(3)),
        "{s}"
    );
    // Writer schemas are fetched once per id, not per record.
    assert!(
        registry
            .gets_by_id
            .load(std::sync::atomic::Ordering::Relaxed)
            <= 3
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

#[test]
fn kill_dash_9_mid_stream_loses_nothing() {
    let (input, output, dlq) = (unique("crash-in"), unique("crash-out"), unique("crash-dlq"));
    let group = unique("g");
    create_topics(&[(&input, 2), (&output, 2), (&dlq, 1)]);
    let n = 40_000;
    // One record per batch: tansu skips the rest of a batch when a fetch starts inside it.
    produce_unbatched(
        &input,
        (0..n)
            .map(|i| Rec::value(adt(&format!("K{i:06}"), &format!("M{i}"))))
            .collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(
        dir.path(),
        "crash",
        // Static membership: the restarted process takes over the killed one's partitions.
        &hl7_pipeline(&input, &output, &dlq, &group, 2).replace(
            "format: hl7}",
            &format!("format: hl7, instance: {group}-1}}"),
        ),
    );
    let killed_log = dir.path().join("killed.log");
    let mut child = Command::new(BIN)
        .args(["run", p.to_str().unwrap()])
        .env("PLEXUS_LOG", "plexus=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&killed_log).unwrap())
        .spawn()
        .unwrap();
    // Kill mid-stream, with batches in flight (small batches keep the run long enough).
    assert!(wait_for(&output, 1_000, WAIT) >= 1_000, "output started");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let committed_at_kill: i64 = committed(&group, &input, 2).values().sum();
    eprintln!("killed; committed {committed_at_kill}");
    let before = read_topic(&output, 0, Duration::from_secs(2)).len();
    assert!(before < n, "killed mid-stream ({before} of {n} out)");

    let restart = plexus(&[
        "run",
        p.to_str().unwrap(),
        "--json",
        "--exit-when-idle",
        "5s",
    ]);
    for l in String::from_utf8_lossy(&restart.stderr).lines() {
        if l.contains("first record") || l.contains("partitions") {
            eprintln!("restart: {l}");
        }
    }
    let s = summary(&restart);
    eprintln!(
        "restart read {}; committed now {:?}",
        s["records_in"],
        committed(&group, &input, 2)
    );
    let out = read_topic(&output, n, Duration::from_secs(180));
    let (ids, dup) = control_ids(&out);
    if ids.len() != n {
        // Where the missing records sat in the input: (partition, first..last offset, count).
        let mut missing: Vec<(i32, i64)> = read_topic(&input, n, WAIT)
            .iter()
            .filter(|m| {
                let text = m.text();
                let cid = text.split('|').nth(9).unwrap_or_default().to_string();
                !ids.contains(&cid)
            })
            .map(|m| (m.partition, m.offset))
            .collect();
        missing.sort();
        let mut ranges: Vec<(i32, i64, i64, usize)> = Vec::new();
        for (p, o) in missing {
            match ranges.last_mut() {
                Some(r) if r.0 == p && r.2 + 1 == o => {
                    r.2 = o;
                    r.3 += 1;
                }
                _ => ranges.push((p, o, o, 1)),
            }
        }
        eprintln!("missing input ranges (partition, from, to, count): {ranges:?}");
        // Output offsets per partition: gaps mean the reader skipped stored records.
        let mut per: std::collections::BTreeMap<i32, (usize, i64)> = Default::default();
        for m in &out {
            let e = per.entry(m.partition).or_default();
            e.0 += 1;
            e.1 = e.1.max(m.offset + 1);
        }
        eprintln!("output per partition (count, end offset): {per:?}");
        let log = std::fs::read_to_string(&killed_log).unwrap_or_default();
        let kept = std::env::temp_dir().join("plexus-crash-killed.log");
        let _ = std::fs::write(&kept, &log);
        eprintln!("killed process log: {}", kept.display());
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("committing")
                    || l.contains("delivery reports")
                    || l.contains("epoch complete")
            })
            .collect();
        for l in lines.iter().rev().take(12).rev() {
            eprintln!("killed: {l}");
        }
        eprintln!(
            "output messages: {} seen after the kill, {} delivered by the restart, {} on the topic now",
            before,
            s["delivered"],
            out.len()
        );
    }
    assert_eq!(ids.len(), n, "every record present after the restart");
    eprintln!(
        "kill -9 after {before} outputs: restart read {} records, {dup} duplicates (the uncommitted window)",
        s["records_in"]
    );
    assert_eq!(out.len(), n + dup);
    // Duplicates come only from the window delivered but not committed before the kill.
    assert!(
        dup as i64 <= before as i64 - committed_at_kill,
        "{dup} duplicates, {before} outputs at the kill, {committed_at_kill} committed"
    );
}

#[test]
fn two_processes_in_one_group_split_the_partitions() {
    let (input, output, dlq) = (unique("grp-in"), unique("grp-out"), unique("grp-dlq"));
    let group = unique("g");
    create_topics(&[(&input, 4), (&output, 4), (&dlq, 1)]);
    let n = 8_000;
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(
        dir.path(),
        "grp",
        &hl7_pipeline(&input, &output, &dlq, &group, 100),
    );
    let spawn = || {
        Command::new(BIN)
            .args([
                "run",
                p.to_str().unwrap(),
                "--json",
                "--exit-when-idle",
                "15s",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
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
    produce_unbatched(
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
#[ignore = "fails on tansu 0.6 (memory engine): a fetch from inside a batch returns the next \
            batch (Kafka returns the containing batch). Run: cargo test --release --test kafka -- --ignored fetch_from"]
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
