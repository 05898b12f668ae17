//! Observability outputs that leave the machine: window metrics written to an S3-compatible
//! object store (moto's server, started by `scripts/dev-services` on 127.0.0.1:9010) and read
//! back by `plexus query`; the stage spans exported over OTLP/HTTP to a collector.

mod support;

use std::sync::{Arc, Mutex};

use support::*;

const S3: &str = "http://127.0.0.1:9010";

/// The `AWS_*` environment that points plexus at the local S3-compatible store.
fn s3_env(cmd: &mut std::process::Command) -> &mut std::process::Command {
    cmd.env("AWS_ENDPOINT", S3)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "plexus-test")
        .env("AWS_SECRET_ACCESS_KEY", "plexus-test-secret")
        .env("AWS_REGION", "us-east-1")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A pipeline whose window metrics go to `metrics` (a URL or a path).
fn windowed(metrics: &str) -> String {
    format!(
        r#"
name: adt
integration: {{id: ghh-adt}}
source: {{type: file, path: in.hl7, format: hl7}}
batch: {{max_rows: 10}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: event, path: MSH-9.2}}
      - {{name: at, path: MSH-7, type: timestamp}}
      - {{name: mrn, path: PID-3.1}}
  - name: checks
    type: validate
    rules:
      - {{name: mrn_present, check: "mrn IS NOT NULL AND mrn <> ''", severity: warning}}
sinks:
  - {{name: out, type: file, format: ndjson, path: rows.ndjson}}
windows:
  - name: feed
    input: checks
    key: {{event: event}}
    time: at
    size: 1h
monitoring:
  metrics: {{path: "{metrics}"}}
"#
    )
}

/// `n` ADT messages (all at 2026-01-05 12:00); every 4th without an MRN.
fn input(dir: &std::path::Path, n: usize) {
    let msgs: String = (0..n)
        .map(|i| {
            adt(
                &format!("C{i}"),
                &if i % 4 == 0 {
                    String::new()
                } else {
                    format!("M{i}")
                },
            )
        })
        .collect();
    std::fs::write(dir.join("in.hl7"), msgs).unwrap();
}

#[test]
fn window_metrics_go_to_an_s3_store_and_plexus_query_reads_them_there() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    input(dir.path(), 60);
    let bucket = unique("metrics").to_lowercase().replace('_', "-");
    let rt = rt();
    // Buckets are the operator's to create; plexus writes objects under the prefix.
    rt.block_on(async {
        let r = reqwest::Client::new()
            .put(format!("{S3}/{bucket}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "creating bucket: {}", r.status());
    });
    let url = format!("s3://{bucket}/plexus/metrics");
    let p = pipeline(dir.path(), "adt", &windowed(&url));
    let s = summary(
        &s3_env(&mut std::process::Command::new(BIN))
            .args([
                "run",
                p.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ])
            .arg("--json")
            .output()
            .unwrap(),
    );
    assert_eq!(s["delivered"], 60, "{s}");
    // Nothing local: the metrics are in the store (state is beside the pipeline, not in S3).
    assert!(!out.join("adt.metrics").exists());

    // Read the store directly (not through plexus): partitioned objects whose rows add up.
    let (objects, total, quality) = rt.block_on(async {
        use futures::TryStreamExt;
        use object_store::{ObjectStore, ObjectStoreExt};
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(S3)
            .with_allow_http(true)
            .with_bucket_name(&bucket)
            .with_region("us-east-1")
            .with_access_key_id("k")
            .with_secret_access_key("s")
            .build()
            .unwrap();
        let listed: Vec<_> = store
            .list(Some(&"plexus/metrics".into()))
            .try_collect()
            .await
            .unwrap();
        let (mut total, mut quality) = (0i64, Vec::new());
        for o in &listed {
            let bytes = store.get(&o.location).await.unwrap().bytes().await.unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .unwrap()
                    .build()
                    .unwrap();
            for b in reader {
                use arrow::array::AsArray;
                use arrow::datatypes::{Float64Type, Int64Type};
                let b = b.unwrap();
                let t = b
                    .column_by_name("total")
                    .unwrap()
                    .as_primitive::<Int64Type>();
                total += t.values().iter().sum::<i64>();
                let q = b.column_by_name("data_quality_rate").unwrap();
                quality.extend(q.as_primitive::<Float64Type>().values().iter().copied());
            }
        }
        let names: Vec<String> = listed.iter().map(|o| o.location.to_string()).collect();
        (names, total, quality)
    });
    assert!(!objects.is_empty(), "no objects under {url}");
    for o in &objects {
        assert!(
            o.starts_with("plexus/metrics/feed/date=2026-01-05/hour=12/part-")
                && o.ends_with(".parquet"),
            "{o}"
        );
    }
    // One key, one window: 60 rows, 15 of them with a warning.
    assert_eq!((total, quality), (60, vec![0.75]), "{objects:?}");

    // And plexus query reads them from the store.
    let q = s3_env(&mut std::process::Command::new(BIN))
        .args(["query", "--pipeline", p.to_str().unwrap(), "--output"])
        .arg(&out)
        .args([
            "--format",
            "json",
            "SELECT \"window\", sum(total) AS total, max(data_quality_rate) AS quality, \
             min(hour) AS hour FROM metrics GROUP BY \"window\"",
        ])
        .output()
        .unwrap();
    assert_ok(&q);
    let row: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&q.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(row["window"], "feed", "{row}");
    assert_eq!(row["total"], 60, "{row}");
    assert_eq!(row["quality"], 0.75, "{row}");
    assert_eq!(row["hour"], "12", "{row}");
}

#[test]
fn metrics_locations_other_than_a_directory_or_s3_are_rejected_at_validate() {
    let dir = tempfile::tempdir().unwrap();
    for (metrics, expected) in [
        ("gs://bucket/m", "not gs://"),
        ("s3:///m", "names no bucket"),
    ] {
        let p = pipeline(dir.path(), "bad", &windowed(metrics));
        let o = plexus(&["validate", p.to_str().unwrap()]);
        assert!(!o.status.success(), "{metrics} accepted");
        let err =
            String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
        assert!(err.contains(expected), "{metrics}: {err}");
        assert!(err.contains("bad.yaml"), "names the file: {err}");
    }
}

/// One OTLP/JSON span: name, ids and integer/string attributes.
#[derive(Debug)]
struct Span {
    name: String,
    id: String,
    parent: String,
    attrs: serde_json::Map<String, serde_json::Value>,
}

fn spans(bodies: &[Vec<u8>]) -> Vec<Span> {
    let mut out = Vec::new();
    for body in bodies {
        let v: serde_json::Value = serde_json::from_slice(body).expect("OTLP/JSON body");
        for rs in v["resourceSpans"].as_array().into_iter().flatten() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .map(|a| a["value"]["stringValue"].clone());
            assert_eq!(service, Some("plexus".into()), "{rs}");
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let mut attrs = serde_json::Map::new();
                    for a in s["attributes"].as_array().into_iter().flatten() {
                        let v = &a["value"];
                        let v = match (&v["intValue"], &v["stringValue"]) {
                            // proto3 JSON writes int64 as a string; accept either.
                            (serde_json::Value::String(i), _) => i.parse::<i64>().unwrap().into(),
                            (serde_json::Value::Number(i), _) => i.clone().into(),
                            (_, s) => s.clone(),
                        };
                        attrs.insert(a["key"].as_str().unwrap().to_string(), v);
                    }
                    out.push(Span {
                        name: s["name"].as_str().unwrap().to_string(),
                        id: s["spanId"].as_str().unwrap_or_default().to_string(),
                        parent: s["parentSpanId"].as_str().unwrap_or_default().to_string(),
                        attrs,
                    });
                }
            }
        }
    }
    out
}

#[test]
fn stage_and_batch_spans_are_exported_over_otlp_without_record_content() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    input(dir.path(), 45);
    let p = pipeline(dir.path(), "adt", &windowed("metrics"));

    // A collector: OTLP/HTTP with JSON bodies on /v1/traces.
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(body.to_vec());
                ([("content-type", "application/json")], "{}")
            }
        }),
    );
    let collector = serve(app);
    let s = summary(
        &std::process::Command::new(BIN)
            .args([
                "run",
                p.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ])
            .arg("--json")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
            .output()
            .unwrap(),
    );
    assert_eq!(s["delivered"], 45, "{s}");
    // The exporter flushes before the process exits.
    let bodies = bodies.lock().unwrap().clone();
    assert!(!bodies.is_empty(), "no traces reached the collector");
    let all = spans(&bodies);

    let stage = |name: &str| {
        all.iter()
            .find(|s| s.name == "stage" && s.attrs.get("name") == Some(&name.into()))
            .unwrap_or_else(|| panic!("no span for stage {name}: {all:#?}"))
    };
    for (name, kind) in [("parse", "parse"), ("checks", "validate")] {
        let st = stage(name);
        assert_eq!(st.attrs.get("kind"), Some(&kind.into()), "{st:?}");
        // Each batch of the stage is a child span; their rows add up to the input.
        let batches: Vec<&Span> = all
            .iter()
            .filter(|s| s.name == "batch" && s.parent == st.id)
            .collect();
        assert_eq!(batches.len(), 5, "45 rows in batches of 10: {batches:#?}");
        let rows: i64 = batches
            .iter()
            .map(|b| {
                b.attrs["rows_in"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("{b:?}"))
            })
            .sum();
        assert_eq!(rows, 45);
    }
    let sink_rows: i64 = all
        .iter()
        .filter(|s| s.name == "sink_batch" && s.attrs.get("sink") == Some(&"out".into()))
        .map(|s| s.attrs["rows"].as_i64().unwrap())
        .sum();
    assert_eq!(sink_rows, 45);
    // Names and counts only: no patient data in what left the process.
    let text: String = bodies.iter().map(|b| String::from_utf8_lossy(b)).collect();
    for phi in ["DOE", "JANE", "M1", "19800102"] {
        assert!(!text.contains(phi), "{phi} exported in traces");
    }
}
