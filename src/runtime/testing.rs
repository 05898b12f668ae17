//! Test cases against a pipeline's real graph, with memory in place of its source, sinks and
//! dead-letter output: what `plexus test` and `plexus serve`'s dry run
//! (`POST /api/v1/integrations/{id}/test`) share. A case passes when each named sink (or
//! `dlq`) received exactly the expected rows, each a subset of a row's columns, and every
//! record was accounted for.

use arrow::record_batch::RecordBatch;

use crate::connectors::BatchSink;
use crate::connectors::memory::{MemoryDlq, MemorySink, MemorySource};
use crate::spec::{PipelineSpec, SpecErrors, TestCaseSpec};

/// How one case went.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    /// What differed (empty when it passed).
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The pipeline does not plan.
    #[error("{0}")]
    Plan(SpecErrors),
    #[error("the run failed: {0:#}")]
    Run(anyhow::Error),
}

/// Plans `spec` afresh and runs `case` through it. Afresh on purpose: a run consumes its
/// plan, and operators hold state (dedup keys, open windows) that must not carry from one
/// case into the next.
pub async fn run_case(spec: &PipelineSpec, case: &TestCaseSpec) -> Result<CaseResult, CaseError> {
    let plan = crate::plan::build(spec).await.map_err(CaseError::Plan)?;
    let sink_names: Vec<String> = plan.sinks.iter().map(|s| s.name.clone()).collect();
    let memory: Vec<MemorySink> = sink_names.iter().map(|_| MemorySink::default()).collect();
    let sinks: Vec<Box<dyn BatchSink>> = memory
        .iter()
        .map(|m| Box::new(m.clone()) as Box<dyn BatchSink>)
        .collect();
    let dlq = MemoryDlq::default();
    let source = Box::new(MemorySource::new(
        case.input.as_bytes(),
        plan.source.format,
        plan.max_rows,
    ));
    let summary = super::run(
        plan,
        source,
        sinks,
        Box::new(dlq.clone()),
        super::RunOptions::default(),
    )
    .await
    .map_err(CaseError::Run)?;
    let mut problems = Vec::new();
    for (target, expected_rows) in &case.expect {
        let actual: Vec<serde_json::Map<String, serde_json::Value>> = if target == "dlq" {
            dlq.records
                .lock()
                .expect("dlq")
                .iter()
                .map(|r| match serde_json::to_value(r) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                })
                .collect()
        } else {
            match sink_names.iter().position(|n| n == target) {
                Some(i) => rows_as_json(&memory[i].batches.lock().expect("sink"))
                    .map_err(CaseError::Run)?,
                None => {
                    problems.push(format!("expect: no sink named {target:?}"));
                    continue;
                }
            }
        };
        if actual.len() != expected_rows.len() {
            problems.push(format!(
                "{target}: expected {} rows, got {}",
                expected_rows.len(),
                actual.len()
            ));
            continue;
        }
        for (i, (want, got)) in expected_rows.iter().zip(&actual).enumerate() {
            if let Err(e) = matches(want, got) {
                problems.push(format!("{target} row {}: {e}", i + 1));
            }
        }
    }
    if summary.pending() != 0 {
        problems.push(format!("{} records unaccounted for", summary.pending()));
    }
    Ok(CaseResult {
        name: case.name.to_string(),
        passed: problems.is_empty(),
        problems,
    })
}

/// Rows of batches as JSON objects (what the NDJSON sink would write).
fn rows_as_json(
    batches: &[RecordBatch],
) -> anyhow::Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
        for b in batches {
            let keep: Vec<usize> = (0..b.num_columns())
                .filter(|&i| b.schema().field(i).name() != crate::operators::RAW)
                .collect();
            w.write(&b.project(&keep)?)?;
        }
        w.finish()?;
    }
    buf.split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| Ok(serde_json::from_slice(l)?))
        .collect()
}

/// Whether `actual` has every expected key with an equal value. Test files are YAML, where
/// `42` and `"42"` read the same, so values compare as text; for `reason`, containment.
fn matches(
    expected: &indexmap::IndexMap<String, serde_json::Value>,
    actual: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for (k, want) in expected {
        let Some(got) = actual.get(k) else {
            return Err(format!("no column {k:?}"));
        };
        let (w, g) = (text(want), text(got));
        let ok = if k == "reason" {
            g.contains(&w)
        } else {
            w == g
        };
        if !ok {
            return Err(format!("{k}: expected {w:?}, got {g:?}"));
        }
    }
    Ok(())
}
