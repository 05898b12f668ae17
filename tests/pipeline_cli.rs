//! `plexus run|validate|test` on the shipped pipelines and on broken ones, as a user runs them.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use plexus::formats::hl7::Splitter;

use support::BIN;

fn root() -> PathBuf {
    support::repo().to_path_buf()
}

/// `plexus` run from the repository's root, as the README's commands are.
fn plexus(args: &[&str]) -> Output {
    support::plexus_in(support::repo(), args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ndjson(path: &Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Checks that a run finished: exit 0, or 3 when some records were dead-lettered (the sample
/// feeds carry bad records on purpose; README, "Exit codes").
fn assert_finished(o: &Output) {
    assert!(
        matches!(o.status.code(), Some(0 | 3)),
        "{}: {}",
        o.status,
        text(&o.stderr)
    );
}

/// Runs the shipped ADT pipeline over its sample feed with outputs in `out`; checks it ran
/// (exit 3: the feed has records that are dead-lettered).
fn run_sample(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "pipelines/adt_to_patient.yaml",
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = plexus(&args);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    o
}

#[test]
fn shipped_pipelines_validate() {
    let o = plexus(&[
        "validate",
        "pipelines/adt_to_patient.yaml",
        "pipelines/facility_events.yaml",
        "pipelines/adt_to_ehr.yaml",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("ok: pipelines/adt_to_patient.yaml: 6 stages, 4 sinks"));
}

#[test]
fn adt_pipeline_accounts_for_every_record() {
    let out = tempfile::tempdir().unwrap();
    let o = run_sample(out.path(), &["--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let n = |k: &str| summary[k].as_u64().unwrap();

    // Independent count of what the input holds.
    let input = std::fs::read(root().join("data/samples/adt_feed.hl7")).unwrap();
    let records: Vec<_> = Splitter::new(&input).collect();
    assert_eq!(n("records_in"), records.len() as u64);
    assert_eq!(
        n("records_in"),
        n("delivered") + n("dead_lettered") + n("filtered")
    );
    assert_eq!(n("filtered"), 0, "route has a default output");

    let admissions = ndjson(&out.path().join("admissions.ndjson"));
    let registrations = ndjson(&out.path().join("registrations.ndjson"));
    let other = ndjson(&out.path().join("other_events.ndjson"));
    let dlq = ndjson(&out.path().join("adt_to_patient.dlq.ndjson"));
    assert!(out.path().join("patient_updates.parquet").exists());
    assert_eq!(dlq.len() as u64, n("dead_lettered"));
    assert!(!admissions.is_empty() && !registrations.is_empty() && !other.is_empty());

    // Every A01 that was not dead-lettered is in admissions, with its data.
    let dead_ids: Vec<&str> = dlq
        .iter()
        .filter_map(|d| d["control_id"].as_str())
        .collect();
    let a01: Vec<String> = records
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|m| m.message.trigger_event() == "A01")
        .map(|m| m.message.control_id().into_owned())
        .filter(|id| !dead_ids.contains(&id.as_str()))
        .collect();
    let got: Vec<&str> = admissions
        .iter()
        .map(|r| r["_control_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, a01);
    for r in &admissions {
        assert!(r["mrn"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(r["phone"].as_str().unwrap().starts_with("+1"));
        assert!(
            r.get("_raw").is_none(),
            "the original record stays out of outputs"
        );
    }
    // Registrations were written without provenance.
    assert!(registrations[0].get("_control_id").is_none());
    // Unknown facility XYZ is a warning, not a failure.
    let xyz: Vec<_> = admissions
        .iter()
        .chain(&registrations)
        .filter(|r| r["facility_code"] == "XYZ")
        .collect();
    assert!(!xyz.is_empty());
    assert!(xyz.iter().all(|r| r["facility_name"].is_null()));

    // Dead letters carry the original bytes unchanged, the stage, rule and reason.
    for d in &dlq {
        let offset = d["offset"].as_u64().unwrap() as usize;
        let record = d["record"].as_str().unwrap().as_bytes();
        assert_eq!(&input[offset..offset + record.len()], record);
        assert!(!d["reason"].as_str().unwrap().is_empty());
    }
    let rules: Vec<&str> = dlq.iter().map(|d| d["rule"].as_str().unwrap()).collect();
    for expected in [
        "parse",
        "parse:birth_date",
        "mrn_present",
        "birth_date_not_in_future",
        "sex_in_hl7_0001",
    ] {
        assert!(
            rules.iter().any(|r| r.split(',').any(|x| x == expected)),
            "{expected} in {rules:?}"
        );
    }
    let garbage = dlq
        .iter()
        .find(|d| d["record"] == "THIS IS NOT HL7")
        .unwrap();
    assert_eq!(garbage["stage"], "parse");
}

#[test]
fn pipeline_tests_pass() {
    // Every shipped pipeline has test cases (#15 item 20); Kafka and FHIR sinks are replaced
    // by memory, so none needs a broker or an EHR.
    for (pipeline, cases) in [
        ("adt_to_patient", 3),
        ("adt_kafka", 2),
        ("adt_to_ehr", 2),
        ("facility_events", 3),
    ] {
        let o = plexus(&["test", &format!("pipelines/{pipeline}.yaml")]);
        assert!(
            o.status.success(),
            "{pipeline}: {}\n{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        assert!(
            text(&o.stdout).contains(&format!("{cases} passed, 0 failed")),
            "{pipeline}: {}",
            text(&o.stdout)
        );
    }
}

#[test]
fn failing_pipeline_test_reports_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let spec = std::fs::read_to_string(root().join("pipelines/adt_to_patient.yaml"))
        .unwrap()
        .replace("../", &format!("{}/", root().display()));
    std::fs::write(dir.path().join("p.yaml"), spec).unwrap();
    std::fs::write(
        dir.path().join("p.test.yaml"),
        "tests:\n  - name: wrong expectation\n    input: \"MSH|^~\\\\&|A|GHH|P|H|20260105||ADT^A01|T1|P|2.5.1\\rPID|1||5^^^GHH^MR||DOE^JOHN||19700101|M\\rPV1|1|I|4E^1^A^GHH\\r\"\n    expect:\n      admissions:\n        - {mrn: \"6\"}\n",
    )
    .unwrap();
    let o = plexus(&["test", dir.path().join("p.yaml").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = text(&o.stdout);
    assert!(out.contains("FAIL wrong expectation"), "{out}");
    assert!(out.contains("mrn: expected \"6\", got \"5\""), "{out}");
}

#[test]
fn facility_events_dead_letters_bad_json_and_unknown_facilities() {
    let out = tempfile::tempdir().unwrap();
    let o = plexus(&[
        "run",
        "pipelines/facility_events.yaml",
        "--output",
        out.path().to_str().unwrap(),
        "--json",
    ]);
    assert_finished(&o);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let lines =
        std::fs::read_to_string(root().join("data/samples/facility_events.ndjson")).unwrap();
    let total = lines.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    assert_eq!(summary["records_in"].as_u64().unwrap(), total);
    let dlq = ndjson(&out.path().join("facility_events.dlq.ndjson"));
    let parse_failures = dlq.iter().filter(|d| d["stage"] == "parse").count();
    assert_eq!(parse_failures, 3, "bad time, bad json, missing event_id");
    let unknown = lines.lines().filter(|l| l.contains("\"XYZ\"")).count();
    let lookup_failures = dlq.iter().filter(|d| d["stage"] == "facility").count();
    assert_eq!(lookup_failures, unknown);
    // #15 item 2: reasons name fields and the shape of values, never the values (the record
    // itself is beside them): decoder errors and lookup misses alike.
    for d in &dlq {
        let reason = d["reason"].as_str().unwrap();
        assert!(
            !reason.contains("not a time") && !reason.contains("XYZ"),
            "{reason}"
        );
    }
    assert!(
        dlq.iter().any(|d| d["reason"]
            .as_str()
            .unwrap()
            .contains("field 'occurred_at'")),
        "{dlq:?}"
    );
    let s = |k: &str| summary[k].as_u64().unwrap();
    assert_eq!(
        s("records_in"),
        s("delivered") + s("dead_lettered") + s("filtered")
    );
    let alerts = ndjson(&out.path().join("facility_alerts.ndjson"));
    assert!(
        alerts
            .iter()
            .all(|a| a["severity"] == "high" || a["severity"] == "critical")
    );
    // The Arrow IPC output reads back.
    let f = std::fs::File::open(out.path().join("facility_occupancy.arrow")).unwrap();
    let reader = arrow::ipc::reader::FileReader::try_new(f, None).unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert!(rows > 0);
}

#[test]
fn run_reads_stdin_and_overrides_input() {
    let out = tempfile::tempdir().unwrap();
    let msg = "MSH|^~\\&|A|GHH|P|H|20260105||ADT^A04|S1|P|2.5.1\rPID|1||5^^^GHH^MR||DOE^JOHN||19700101|M\rPV1|1|I|4E^1^A^GHH\r";
    let mut child = Command::new(BIN)
        .args([
            "run",
            "pipelines/adt_to_patient.yaml",
            "--input",
            "-",
            "--json",
            "--output",
        ])
        .arg(out.path())
        .current_dir(root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(msg.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let regs = ndjson(&out.path().join("registrations.ndjson"));
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0]["mrn"], "5");
    assert!(
        !out.path().join("adt_to_patient.dlq.ndjson").exists(),
        "no dead letters, no file"
    );
}

#[test]
fn validate_reports_every_error_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let r = root().display().to_string();
    let spec = format!(
        "name: broken
integration: {{id: x}}
source: {{type: file, path: {r}/data/samples/adt_feed.hl7, format: hl7}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: mrn, path: PID-3.1}}
      - {{name: dob, path: PID-7, type: date}}
  - name: m
    type: map
    select:
      mrn: mrn
      age: dob + 'x'
      nope: no_such_column
  - name: v
    type: validate
    rules:
      - {{name: r1, check: mrn}}
      - {{name: r2, check: \"mrn = = 1\"}}
sinks:
  - {{name: out, type: file, path: {r}/out/x.ndjson}}
"
    );
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, &spec).unwrap();
    let o = plexus(&["validate", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    let p = path.display().to_string();
    assert!(
        err.contains(&format!("{p}:16:")),
        "unknown column at its line: {err}"
    );
    assert!(err.contains("no_such_column"), "{err}");
    // Planning stops at the first broken stage (downstream schemas are unknown).
    assert!(!err.contains("r1"), "{err}");

    let spec2 = spec
        .replace("      age: dob + 'x'\n      nope: no_such_column\n", "")
        .replace("adt_feed.hl7", "missing.hl7");
    std::fs::write(&path, &spec2).unwrap();
    let err = text(&plexus(&["validate", path.to_str().unwrap()]).stderr);
    assert!(
        err.contains(&format!("{p}:3:")) && err.contains("missing.hl7"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}:18:")) && err.contains("must be boolean"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}:19:")),
        "syntax error located: {err}"
    );

    let spec3 = spec2
        .replace("missing.hl7", "adt_feed.hl7")
        .replace(
            "      - {name: r1, check: mrn}\n      - {name: r2, check: \"mrn = = 1\"}\n",
            "      - {name: r1, check: mrn IS NOT NULL}\n",
        )
        .replace(
            "  - {name: out, type: file, path:",
            "  - {name: out, input: m, type: file, path:",
        );
    std::fs::write(&path, &spec3).unwrap();
    let err = text(&plexus(&["validate", path.to_str().unwrap()]).stderr);
    assert!(
        err.contains("goes nowhere"),
        "unreachable output of v: {err}"
    );
    assert!(err.contains(&format!("{p}:15:")), "{err}");

    // Two sinks of one name: the second is an error at its place.
    let spec4 = format!("{spec3}  - {{name: out, input: v, type: file, path: {r}/out/y.ndjson}}\n");
    std::fs::write(&path, &spec4).unwrap();
    let err = text(&plexus(&["validate", path.to_str().unwrap()]).stderr);
    assert!(
        err.contains(&format!("{p}:21:")) && err.contains("sink name \"out\" is used twice"),
        "{err}"
    );
}

/// A `fhir` stage's options are checked where they are written: a profile that does not
/// exist names its line and the ones that do.
#[test]
fn a_fhir_stage_with_an_unknown_profile_is_refused_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let r = root().display().to_string();
    let spec = format!(
        "name: f
integration: {{id: f}}
source: {{type: file, path: {r}/data/samples/adt_feed.hl7, format: hl7}}
stages:
  - name: fhir
    type: fhir
    profile: us-cor
sinks:
  - {{name: out, type: file, path: {r}/out/f.ndjson}}
"
    );
    let path = dir.path().join("f.yaml");
    std::fs::write(&path, &spec).unwrap();
    let o = plexus(&["validate", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!("{}:7:", path.display())) && err.contains("`us-core`"),
        "{err}"
    );
    std::fs::write(&path, spec.replace("us-cor\n", "us-core\n")).unwrap();
    let o = plexus(&["validate", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

/// `plexus validate pipelines/*.yaml`, as a user types it, meets the test-case files too:
/// they are skipped (with a word), the pipelines validated.
#[test]
fn validate_over_the_shipped_glob_skips_test_case_files() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("pipelines"))
        .unwrap()
        .map(|e| format!("pipelines/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    assert!(files.iter().any(|f| f.ends_with(".test.yaml")));
    let args: Vec<&str> = std::iter::once("validate")
        .chain(files.iter().map(String::as_str))
        .collect();
    let o = plexus(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("skipped: pipelines/adt_to_patient.test.yaml"),
        "{out}"
    );
    assert!(out.contains("ok: pipelines/adt_to_patient.yaml"), "{out}");
}

#[test]
fn run_over_a_glob_of_the_third_party_corpus() {
    let out = tempfile::tempdir().unwrap();
    let o = plexus(&[
        "run",
        "pipelines/adt_to_patient.yaml",
        "--input",
        "tests/data/corpus/ADT*.hl7",
        "--output",
        out.path().to_str().unwrap(),
        "--json",
    ]);
    assert_finished(&o);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let n = |k: &str| summary[k].as_u64().unwrap();
    assert_eq!(
        n("records_in"),
        5,
        "ADT-A01-01, ADT-A04-01, ADT-A08-01, ADT-A40-01, ADT01-23"
    );
    assert_eq!(
        n("records_in"),
        n("delivered") + n("dead_lettered") + n("filtered")
    );
    let admissions = ndjson(&out.path().join("admissions.ndjson"));
    let mrns: Vec<&str> = admissions
        .iter()
        .map(|r| r["mrn"].as_str().unwrap())
        .collect();
    assert_eq!(mrns, ["PATID1234", "10006579"]);
    assert_eq!(admissions[1]["family_name"], "DUCK");
}

/// The sample feed's patient data: MRNs, family and given names, birth dates (values of at
/// least 5 characters, so that a short one cannot match by chance).
fn sample_phi() -> Vec<String> {
    let input = std::fs::read(root().join("data/samples/adt_feed.hl7")).unwrap();
    let mut phi = Vec::new();
    for r in Splitter::new(&input).filter_map(Result::ok) {
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
    assert!(
        phi.len() > 50,
        "the sample feed has patient data to look for"
    );
    phi
}

/// `plexus query` is read-only (no DDL, DML, COPY, SET, file or URL tables), and none of the
/// tables it serves hold patient data, after a run over the sample feed.
#[test]
fn query_is_read_only_and_serves_no_patient_data() {
    let out = tempfile::tempdir().unwrap();
    run_sample(out.path(), &[]);
    let query = |sql: &str| {
        plexus(&[
            "query",
            "--pipeline",
            "pipelines/adt_to_patient.yaml",
            "--output",
            out.path().to_str().unwrap(),
            "--format",
            "csv",
            sql,
        ])
    };
    let victim = out.path().join("victim.csv");
    std::fs::write(&victim, "untouched\n").unwrap();
    for sql in [
        format!("COPY (SELECT 'x') TO '{}' STORED AS CSV", victim.display()),
        "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'".to_string(),
        "DROP VIEW metrics".to_string(),
        "DROP TABLE dead_letters".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
        "SELECT * FROM '/etc/passwd'".to_string(),
        format!("SELECT * FROM '{}'", victim.display()),
        "SELECT 1; DROP VIEW metrics".to_string(),
    ] {
        let o = query(&sql);
        assert!(!o.status.success(), "{sql} was run: {}", text(&o.stdout));
        assert!(!text(&o.stdout).contains("root:"), "{sql}");
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    // The tables are all still there, and queries work.
    let mut served = String::new();
    for table in [
        "metrics",
        "feed_health",
        "alerts",
        "breaker_events",
        "dead_letters",
    ] {
        let o = query(&format!("SELECT * FROM {table}"));
        assert!(o.status.success(), "{table}: {}", text(&o.stderr));
        served.push_str(&text(&o.stdout));
        served.push_str(&text(&o.stderr));
    }
    let dead = text(&query("SELECT sum(records) AS n FROM dead_letters").stdout);
    assert!(
        dead.lines().nth(1).is_some_and(|n| n.trim() == "15"),
        "{dead}"
    );
    for v in sample_phi() {
        assert!(
            !support::shows_token(&served, &v),
            "query tables show patient data ({} chars)",
            v.len()
        );
    }
}

/// A pipeline name decides default output paths: `../` in it is refused at its place, and
/// nothing is written outside the working directory.
#[test]
fn a_pipeline_name_cannot_escape_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::copy(
        root().join("data/samples/adt_feed.hl7"),
        work.join("in.hl7"),
    )
    .unwrap();
    let yaml = "name: ../escape\nintegration: {id: x}\n\
                source: {type: file, path: in.hl7, format: hl7}\n\
                stages:\n  - {name: parse, type: parse, format: hl7, columns: [{name: mrn, path: PID-3.1}]}\n\
                sinks:\n  - {name: out, type: file, format: ndjson, path: out.ndjson}\n";
    std::fs::write(work.join("p.yaml"), yaml).unwrap();
    for cmd in ["validate", "run"] {
        let o = Command::new(BIN)
            .args([cmd, "p.yaml"])
            .current_dir(&work)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{cmd} accepted the name");
        let err = text(&o.stderr);
        assert!(err.contains("p.yaml:1:7"), "{cmd}: located: {err}");
        assert!(err.contains("pipeline name"), "{cmd}: {err}");
    }
    let outside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside,
        vec![std::ffi::OsString::from("work")],
        "nothing written beside"
    );
}

/// At trace level (through `RUST_LOG`, the conventional variable), the shipped file pipelines
/// log plenty, in plain text when stderr is not a terminal, and none of the sample feed's
/// patient data.
#[test]
fn trace_logs_hold_no_patient_data() {
    let phi = sample_phi();
    // The EHR pipeline runs against the FHIR server (scripts/dev-services), from a copy so its
    // sync state stays out of the repository.
    let ehr_dir = tempfile::tempdir().unwrap();
    let ehr = ehr_dir.path().join("adt_to_ehr.yaml");
    std::fs::write(
        &ehr,
        std::fs::read_to_string(root().join("pipelines/adt_to_ehr.yaml"))
            .unwrap()
            .replace(
                "../data/samples/adt_feed.hl7",
                &root()
                    .join("data/samples/adt_feed.hl7")
                    .display()
                    .to_string(),
            ),
    )
    .unwrap();
    let ehr = ehr.display().to_string();
    // The facility feed's free text (`message`) stands in for patient data there.
    let free_text: Vec<String> =
        std::fs::read_to_string(root().join("data/samples/facility_events.ndjson"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|e| e["message"].as_str().map(str::to_string))
            .filter(|m| m.chars().count() >= 5)
            .collect();
    assert!(!free_text.is_empty());
    for (pipeline, feed_values) in [
        ("pipelines/adt_to_patient.yaml", &phi),
        (ehr.as_str(), &phi),
        ("pipelines/facility_events.yaml", &free_text),
    ] {
        let out = tempfile::tempdir().unwrap();
        let o = Command::new(BIN)
            .args(["run", pipeline, "--output", out.path().to_str().unwrap()])
            .current_dir(root())
            .env_remove("PLEXUS_LOG")
            .env("RUST_LOG", "trace")
            .env("EHR_TOKEN", "trace-test-token")
            .output()
            .unwrap();
        assert_finished(&o);
        let log = text(&o.stderr);
        assert!(
            log.lines()
                .filter(|l| l.contains("TRACE") || l.contains("DEBUG"))
                .count()
                > 20,
            "{pipeline}: RUST_LOG=trace is honoured"
        );
        assert!(
            !log.contains('\u{1b}'),
            "{pipeline}: no ANSI colours in a pipe"
        );
        for v in feed_values {
            assert!(
                !support::shows_token(&log, v),
                "{pipeline}: the log shows patient data ({} chars)",
                v.len()
            );
        }
        assert!(
            !log.contains("trace-test-token"),
            "{pipeline}: a secret in the log"
        );
    }
}

/// The quick start's log is not buried in alerts: one warning per alert rule, while every
/// alert is in the alert output.
#[test]
fn alerts_are_announced_once_per_rule() {
    let out = tempfile::tempdir().unwrap();
    let o = run_sample(out.path(), &[]);
    let log = text(&o.stderr);
    let raised: Vec<&str> = log.lines().filter(|l| l.contains("alert raised")).collect();
    let alerts = ndjson(&out.path().join("alerts.ndjson"));
    let mut rules: Vec<&str> = alerts.iter().filter_map(|a| a["alert"].as_str()).collect();
    rules.sort_unstable();
    rules.dedup();
    assert!(
        alerts.len() > rules.len(),
        "the sample raises a rule more than once"
    );
    assert_eq!(raised.len(), rules.len(), "{log}");
}

/// #15 item 9: running the same pipeline over the same input twice does not double its
/// metrics or alerts: a window row is identified by (window, key, window start) and the latest
/// emission wins; an alert is raised once, and carries the run that raised it.
#[test]
fn a_rerun_replaces_metrics_and_does_not_repeat_alerts() {
    let out = tempfile::tempdir().unwrap();
    let query = |sql: &str| {
        let o = plexus(&[
            "query",
            "--pipeline",
            "pipelines/adt_to_patient.yaml",
            "--output",
            out.path().to_str().unwrap(),
            "--format",
            "csv",
            sql,
        ]);
        assert!(o.status.success(), "{sql}: {}", text(&o.stderr));
        text(&o.stdout)
            .lines()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    let sql = "SELECT count(*), sum(total) FROM metrics";
    run_sample(out.path(), &[]);
    let first = query(sql);
    let alerts_first = ndjson(&out.path().join("alerts.ndjson"));
    assert!(!alerts_first.is_empty());
    let run_id = alerts_first[0]["run_id"].as_str().unwrap().to_string();
    assert!(!run_id.is_empty());

    let o = run_sample(out.path(), &[]);
    assert_eq!(query(sql), first, "metrics after a re-run");
    assert_eq!(
        query("SELECT count(*) FROM feed_health"),
        first.split(',').next().unwrap()
    );
    // Every emission stays readable, for audits: the files hold both runs.
    let emissions = query("SELECT count(*) FROM _feed_health_emissions");
    assert_eq!(
        emissions.parse::<u64>().unwrap(),
        2 * first.split(',').next().unwrap().parse::<u64>().unwrap()
    );
    let alerts = ndjson(&out.path().join("alerts.ndjson"));
    assert_eq!(alerts.len(), alerts_first.len(), "alerts after a re-run");
    assert!(alerts.iter().all(|a| a["run_id"] == run_id.as_str()));
    assert_eq!(
        query("SELECT count(*) FROM alerts"),
        alerts.len().to_string()
    );
    assert!(
        text(&o.stderr).contains("raised before, not sent again"),
        "{}",
        text(&o.stderr)
    );
}

/// #15 item 21: `dlq list|show` and `replay` work on a file-mode pipeline's DLQ file: the
/// listing matches the file, `show` prints a dead letter's original record, and `replay`
/// writes the originals (filtered, each once) to a file that a re-run takes as its input.
#[test]
fn file_dlq_list_show_and_replay_into_a_rerun() {
    let out = tempfile::tempdir().unwrap();
    run_sample(out.path(), &[]);
    let dir = out.path().to_str().unwrap();
    let dlq = ndjson(&out.path().join("adt_to_patient.dlq.ndjson"));
    let o = plexus(&[
        "dlq",
        "list",
        "pipelines/adt_to_patient.yaml",
        "--output",
        dir,
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let listed: Vec<serde_json::Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), dlq.len());
    for (l, d) in listed.iter().zip(&dlq) {
        assert_eq!(l["stage"], d["stage"]);
        assert_eq!(l["rule"], d["rule"]);
        assert_eq!(l["source_offset"], d["offset"]);
    }
    let table = plexus(&[
        "dlq",
        "list",
        "pipelines/adt_to_patient.yaml",
        "--output",
        dir,
    ]);
    assert!(
        text(&table.stdout).contains("line 1"),
        "{}",
        text(&table.stdout)
    );

    let o = plexus(&[
        "dlq",
        "show",
        "pipelines/adt_to_patient.yaml",
        "--output",
        dir,
        "--at",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let first = dlq[0]["record"].as_str().unwrap().replace('\r', "\n");
    assert!(
        text(&o.stdout).contains(first.trim_end()),
        "{}",
        text(&o.stdout)
    );

    // Replay the records that lacked an MRN into a re-run: they fail the same rule again
    // (the data is still bad), and nothing else comes along.
    let missing: Vec<&serde_json::Value> =
        dlq.iter().filter(|d| d["rule"] == "mrn_present").collect();
    assert!(!missing.is_empty());
    let replay_file = out.path().join("again.hl7");
    let o = plexus(&[
        "replay",
        "--pipeline",
        "pipelines/adt_to_patient.yaml",
        "--output",
        dir,
        "--filter",
        "rule = 'mrn_present'",
        "--to-file",
        replay_file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("plexus run"),
        "{}",
        text(&o.stdout)
    );
    let rerun = tempfile::tempdir().unwrap();
    let o = plexus(&[
        "run",
        "pipelines/adt_to_patient.yaml",
        "--input",
        replay_file.to_str().unwrap(),
        "--output",
        rerun.path().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["records_in"].as_u64().unwrap(), missing.len() as u64);
    let again = ndjson(&rerun.path().join("adt_to_patient.dlq.ndjson"));
    assert_eq!(again.len(), missing.len());
    let ids = |v: &[&serde_json::Value]| -> Vec<String> {
        v.iter().map(|d| d["control_id"].to_string()).collect()
    };
    assert_eq!(ids(&again.iter().collect::<Vec<_>>()), ids(&missing));
}

/// #15 item 18: batch sizes out of range say the range (not "invalid digit"); output paths
/// that cannot be files are refused by `validate`, at their line.
#[test]
fn validate_checks_batch_bounds_and_output_paths() {
    let dir = tempfile::tempdir().unwrap();
    let r = root().display().to_string();
    let blocker = dir.path().join("a_file");
    std::fs::write(&blocker, "x").unwrap();
    let spec = |batch: &str, path: &str| {
        format!(
            "name: bounds
integration: {{id: x}}
source: {{type: file, path: {r}/data/samples/adt_feed.hl7, format: hl7}}
batch: {batch}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: mrn, path: PID-3.1}}
sinks:
  - {{name: out, type: file, format: ndjson, path: {path}}}
"
        )
    };
    let check = |name: &str, yaml: String| {
        let p = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&p, yaml).unwrap();
        let o = plexus(&["validate", p.to_str().unwrap()]);
        (o.status.code(), text(&o.stderr), p.display().to_string())
    };
    let (code, err, p) = check("neg", spec("{max_rows: -1}", "out.ndjson"));
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("{p}:4:")), "{err}");
    assert!(
        err.contains("max_rows is between 1 and 1048576, not -1"),
        "{err}"
    );
    let (_, err, _) = check("huge", spec("{max_rows: 1000000000000}", "out.ndjson"));
    assert!(err.contains("not 1000000000000"), "{err}");
    let (code, err, p) = check("proc", spec("{max_rows: 10}", "/proc/x"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("{p}:12:")) && err.contains("pseudo file system"),
        "{err}"
    );
    let under_file = format!("{}/sub/out.ndjson", blocker.display());
    let (code, err, _) = check("blocked", spec("{max_rows: 10}", &under_file));
    assert_eq!(code, Some(1));
    assert!(err.contains("is a file, not a directory"), "{err}");
    let (code, err, _) = check(
        "dir",
        spec("{max_rows: 10}", &dir.path().display().to_string()),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("is a directory"), "{err}");
    let p = dir.path().join("good.yaml");
    std::fs::write(&p, spec("{max_rows: 10}", "new_dir/out.ndjson")).unwrap();
    let o = plexus(&["validate", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Not silently: validate says which output directories the run will create.
    assert!(
        text(&o.stdout).contains("the run creates") && text(&o.stdout).contains("new_dir"),
        "{}",
        text(&o.stdout)
    );
}

/// #15 item 19: on a terminal the progress line is ended before any other line: log lines
/// and the summary start at column 0 of their own line. (`script` gives the run a terminal.)
#[test]
fn the_progress_line_never_swallows_a_log_line() {
    let out = tempfile::tempdir().unwrap();
    // Long enough (a second or so) for the progress line to be drawn.
    let feed = std::fs::read(root().join("data/samples/adt_feed.hl7")).unwrap();
    let big = out.path().join("big.hl7");
    std::fs::write(&big, feed.repeat(1500)).unwrap();
    let cmd = format!(
        "{} run pipelines/adt_to_patient.yaml --input {} --output {}",
        env!("CARGO_BIN_EXE_plexus"),
        big.display(),
        out.path().display()
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(root())
        .env("PLEXUS_LOG", "warn")
        .output()
        .unwrap();
    let screen = text(&o.stdout);
    assert!(screen.contains("alert raised"), "{screen}");
    assert!(
        screen.contains(" MB at "),
        "no progress line was drawn: {screen}"
    );
    // Whatever was drawn, each log or summary line begins after an erase or a newline.
    for marker in ["WARN", "pipeline adt_to_patient", "records: "] {
        for (i, _) in screen.match_indices(marker) {
            let before = &screen[..i];
            let line_start = before.rfind('\n').map_or(0, |n| n + 1);
            let on_line = &before[line_start..];
            let visible = on_line.rsplit("\r\x1b[2K").next().unwrap();
            assert!(
                !visible.contains(" MB, "),
                "{marker} drawn on the progress line: {on_line:?}"
            );
        }
    }
}

/// #15 item 18: a SQL syntax error is reported at its own line and column in the pipeline
/// file (or in the `.sql` file), in words — not as a debug dump at the start of the value.
#[test]
fn sql_syntax_errors_point_at_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = root().display().to_string();
    std::fs::write(
        dir.path().join("bad.sql"),
        "SELECT mrn,\n  upper(mrn) AS m2 m3\nFROM input\n",
    )
    .unwrap();
    let p = dir.path().join("sql.yaml");
    std::fs::write(
        &p,
        format!(
            "name: sqlerr
integration: {{id: x}}
source: {{type: file, path: {r}/data/samples/adt_feed.hl7, format: hl7}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: mrn, path: PID-3.1}}
  - name: checks
    type: validate
    rules:
      - name: eq
        check: \"mrn IS NOT NULL AND mrn = = 1\"
      - name: open
        check: mrn IS NOT NULL AND (mrn <>
sinks:
  - {{name: out, type: stdout}}
"
        ),
    )
    .unwrap();
    let o = plexus(&["validate", p.to_str().unwrap()]);
    let err = text(&o.stderr);
    let f = p.display().to_string();
    // `= =`: the second `=` is column 27 of the SQL, which starts at column 17 (after the quote).
    assert!(
        err.contains(&format!(
            "{f}:14:43: eq: SQL syntax error: Expected: an expression, found: ="
        )),
        "{err}"
    );
    // At the end of an unquoted value: column 16 + its 27 characters.
    assert!(
        err.contains(&format!("{f}:16:43: open: SQL syntax error")),
        "{err}"
    );
    assert!(!err.contains("ParserError"), "{err}");
    // In a `.sql` file: the place in that file.
    let text_of = std::fs::read_to_string(&p).unwrap();
    let cut = text_of.find("  - name: checks").unwrap();
    std::fs::write(
        &p,
        format!(
            "{}  - {{name: m, type: map, sql: bad.sql}}\nsinks:\n  - {{name: out, type: stdout}}\n",
            &text_of[..cut]
        ),
    )
    .unwrap();
    let err = text(&plexus(&["validate", p.to_str().unwrap()]).stderr);
    let sql = dir.path().join("bad.sql").display().to_string();
    assert!(err.contains(&format!("{sql}:2:")), "{err}");
    assert!(err.contains("SQL syntax error"), "{err}");
}
