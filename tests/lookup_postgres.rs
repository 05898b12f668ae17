//! Lookup stage with a reference table in a real PostgreSQL (127.0.0.1:5432, database `test`,
//! started by `scripts/dev-services up`; `PLEXUS_TEST_DATABASE_URL` overrides the URL).

mod support;

use std::process::Command;

use support::{BIN, database_url, psql};

#[test]
fn lookup_reads_a_postgres_table_and_misses_go_to_the_dlq() {
    let table = format!("plexus_facilities_{}", std::process::id());
    psql(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (code text PRIMARY KEY, facility_name text, beds int);
         INSERT INTO {table} VALUES ('GHH', 'Good Health Hospital', 120), ('007', 'Bond Clinic', 7);"
    ));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.hl7");
    std::fs::write(
        &input,
        "MSH|^~\\&|A|F|B|G|20260105||ADT^A01|M1|P|2.5\rPV1|1|I|4E^1^A^GHH\r\
         MSH|^~\\&|A|F|B|G|20260105||ADT^A01|M2|P|2.5\rPV1|1|I|4E^1^A^007\r\
         MSH|^~\\&|A|F|B|G|20260105||ADT^A01|M3|P|2.5\rPV1|1|I|4E^1^A^NOPE\r",
    )
    .unwrap();
    let spec = format!(
        "name: pg
integration: {{id: pg-test}}
source: {{type: file, path: in.hl7, format: hl7}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns: [{{name: facility, path: PV1-3.4}}]
  - name: facility
    type: lookup
    postgres: {{url_env: PLEXUS_PG_LOOKUP_URL, query: \"SELECT code, facility_name, beds FROM {table}\"}}
    key: {{input: facility, table: code}}
    columns: [facility_name, beds]
    on_miss: dlq
sinks:
  - {{name: out, type: file, path: out.ndjson, provenance: true}}
dlq: {{path: dlq.ndjson}}
"
    );
    let pipeline = dir.path().join("pg.yaml");
    std::fs::write(&pipeline, spec).unwrap();

    // Without the URL the pipeline does not validate, and says which variable is missing.
    let o = Command::new(BIN)
        .args(["validate", pipeline.to_str().unwrap()])
        .env_remove("PLEXUS_PG_LOOKUP_URL")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("PLEXUS_PG_LOOKUP_URL"));

    let o = Command::new(BIN)
        .args(["run", pipeline.to_str().unwrap(), "--json"])
        .env("PLEXUS_PG_LOOKUP_URL", database_url())
        .output()
        .unwrap();
    psql(&format!("DROP TABLE {table};"));
    // One record is dead-lettered on purpose (a missed lookup): exit 3 (README, "Exit codes").
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = std::fs::read_to_string(dir.path().join("out.ndjson")).unwrap();
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["facility_name"], "Good Health Hospital");
    assert_eq!(rows[0]["beds"], "120", "values are read as text");
    assert_eq!(
        rows[1]["facility_name"], "Bond Clinic",
        "codes keep their leading zeros"
    );
    let dlq = std::fs::read_to_string(dir.path().join("dlq.ndjson")).unwrap();
    let dead: Vec<serde_json::Value> = dlq
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["control_id"], "M3");
    assert_eq!(dead[0]["stage"], "facility");
    // The key's shape, not its value (a lookup key can be an MRN); the record holds it.
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("a value of 4 letters") && !reason.contains("NOPE"),
        "{reason}"
    );
    assert!(dead[0]["record"].as_str().unwrap().contains("NOPE"));
}
