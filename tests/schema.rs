//! The pipeline format's JSON Schema (`plexus schema`, kept as schemas/pipeline.schema.json):
//! current with the typed config, accepted by an independent validator (Python's
//! `jsonschema`, installed by `scripts/dev-services up`) for every shipped pipeline, and
//! strict: a misspelled key fails it, as it fails `plexus validate`.

mod support;

use std::process::{Command, Stdio};

use support::{plexus, repo, venv_python};

const SCHEMA: &str = "schemas/pipeline.schema.json";

#[test]
fn the_schema_file_is_what_plexus_schema_prints() {
    let o = plexus(&["schema"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join(SCHEMA)).unwrap()).unwrap();
    assert!(
        printed == kept,
        "{SCHEMA} is stale: run `cargo run --release -- schema > {SCHEMA}`"
    );
    let listed = plexus(&["schema", "--connectors"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    for kind in ["source file", "source kafka", "sink   fhir", "sink   http"] {
        assert!(text.contains(kind), "{text}");
    }
}

/// Validates YAML documents (paths) against the schema; prints `ok` or the first error
/// (with its path in the document) per file.
const CHECK: &str = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
for path in sys.argv[2:]:
    doc = yaml.safe_load(open(path))
    errors = sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        print(f"{path}: INVALID at {'/'.join(map(str, best.absolute_path))}: {best.message}")
    else:
        print(f"{path}: ok")
"#;

fn check(paths: &[std::path::PathBuf]) -> String {
    let o = Command::new(venv_python("schema-validator-venv"))
        .arg("-c")
        .arg(CHECK)
        .arg(repo().join(SCHEMA))
        .args(paths)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn shipped() -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(repo().join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".yaml") && !n.ends_with(".test.yaml")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_shipped_pipeline_validates_against_the_schema() {
    let pipelines = shipped();
    assert!(pipelines.len() >= 4, "{pipelines:?}");
    let out = check(&pipelines);
    for p in &pipelines {
        assert!(out.contains(&format!("{}: ok", p.display())), "{out}");
    }
}

#[test]
fn a_misspelled_key_fails_the_schema_and_validate_alike() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(repo().join("pipelines/adt_to_patient.yaml")).unwrap();
    // A key of a sink's connector, a key of a stage, a top-level key.
    let cases = [
        ("sink", "provenance:", "provenence:"),
        ("stage", "columns:", "colums:"),
        ("top", "integration:", "integraton:"),
    ];
    let mut paths = Vec::new();
    for (what, from, to) in cases {
        assert!(original.contains(from), "{from}");
        let text = original.replacen(from, to, 1);
        // An unknown key is refused when the file is read, before any path in it is used.
        let p = dir.path().join(format!("typo_{what}.yaml"));
        std::fs::write(&p, &text).unwrap();
        paths.push((p, to.trim_end_matches(':').to_string()));
    }
    let out = check(&paths.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>());
    for (p, key) in &paths {
        let line = out
            .lines()
            .find(|l| l.starts_with(&p.display().to_string()))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(line.contains("INVALID"), "{line}");
        let v = plexus(&["validate", p.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&v.stderr);
        assert_eq!(v.status.code(), Some(1), "{err}");
        assert!(err.contains(key.as_str()), "{key}: {err}");
    }
}
