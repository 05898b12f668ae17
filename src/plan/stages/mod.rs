//! Planning of each stage kind, one file each: the stage's spec against its input's schema
//! → the operator that runs it (SQL planned here, once). `plan_stage` dispatches on the kind.

mod enrich;
mod fhir;
mod lookup;
mod map;
mod parse;
mod route;
mod validate;

// The stage planners share these names (a glob import keeps each file's list short).
pub(super) use arrow::datatypes::SchemaRef;
pub(super) use datafusion::scalar::ScalarValue;

pub(super) use super::graph::Ctx;
pub(super) use crate::config::Spanned;
pub(super) use crate::formats::framing::SourceFormat;
pub(super) use crate::formats::hl7::Zone;
pub(super) use crate::formats::hl7::extract::{ColumnSpec, ColumnType};
pub(super) use crate::net::schema_registry::{RegistryConfig, SchemaRegistry};
pub(super) use crate::operators::Operator;
pub(super) use crate::operators::enrich::Enrich;
pub(super) use crate::operators::lookup::{JoinKind, Lookup, OnMiss, ReferenceTable};
pub(super) use crate::operators::map::Map;
pub(super) use crate::operators::parse::Parse;
pub(super) use crate::operators::route::{Route, RouteMode};
pub(super) use crate::operators::validate::{Rule, Severity, Validate};
pub(super) use crate::spec::{SpecError, StageSpec};
pub(super) use crate::sql::{PlannedExpr, SqlPlanner};

/// The operator of one stage, or None (the errors are in `cx`).
pub(super) async fn plan_stage(
    cx: &mut Ctx<'_>,
    sql: &SqlPlanner,
    stage: &StageSpec,
    input: &SchemaRef,
) -> Option<Box<dyn Operator>> {
    match stage {
        StageSpec::Fhir(s) => fhir::plan(cx, sql, s, input),
        StageSpec::Parse(s) => parse::plan(cx, sql, s, input),
        StageSpec::Map(s) => map::plan(cx, sql, s, input).await,
        StageSpec::Enrich(s) => enrich::plan(cx, sql, s, input),
        StageSpec::Validate(s) => validate::plan(cx, sql, s, input),
        StageSpec::Route(s) => route::plan(cx, sql, s, input),
        StageSpec::Lookup(s) => lookup::plan(cx, sql, s, input).await,
    }
}

/// Plans an expression, recording an error at `at` on failure.
pub(super) fn expr(
    cx: &mut Ctx<'_>,
    sql: &SqlPlanner,
    name: &str,
    at: &Spanned<String>,
    schema: &SchemaRef,
    predicate: bool,
) -> Option<PlannedExpr> {
    let r = if predicate {
        sql.predicate(name, at, schema)
    } else {
        sql.expr(name, at, schema)
    };
    r.map_err(|e| cx.sql_err(at, at, None, format!("{name}: {e}")))
        .ok()
}

pub(super) fn literal(sql: &SqlPlanner, text: &str) -> Result<ScalarValue, String> {
    let empty: SchemaRef = std::sync::Arc::new(arrow::datatypes::Schema::empty());
    let e = sql.expr("default", text, &empty)?;
    let batch = arrow::record_batch::RecordBatch::try_new_with_options(
        empty,
        vec![],
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(1)),
    )
    .map_err(|e| e.to_string())?;
    let v = e.evaluate(&batch).map_err(|e| e.to_string())?;
    ScalarValue::try_from_array(&v, 0).map_err(|e| e.to_string())
}

/// The pipeline's schema registry client (one per plan, shared by its stages).
pub(super) fn registry(
    cx: &mut Ctx<'_>,
    at: &Spanned<String>,
) -> Option<std::sync::Arc<SchemaRegistry>> {
    if let Some(r) = &cx.registry {
        return Some(r.clone());
    }
    let Some(spec) = &cx.spec.schema_registry else {
        cx.err(
            at,
            "avro needs a `schema_registry:` block (url of a Confluent-compatible registry)",
        );
        return None;
    };
    let config = RegistryConfig {
        url: spec.url.to_string(),
        username_env: spec.username_env.as_ref().map(|s| s.to_string()),
        password_env: spec.password_env.as_ref().map(|s| s.to_string()),
    };
    match SchemaRegistry::new(&config) {
        Ok(r) => {
            let r = std::sync::Arc::new(r);
            cx.registry = Some(r.clone());
            Some(r)
        }
        Err(e) => {
            cx.err(&spec.url, e);
            None
        }
    }
}

/// `default_timezone:` of a parse or fhir stage (UTC when absent).
pub(super) fn default_zone(cx: &mut Ctx<'_>, tz: &Option<Spanned<String>>) -> Option<Zone> {
    match tz {
        Some(tz) => Zone::parse(tz)
            .map_err(|e| cx.err(tz, format!("default_timezone: {e}")))
            .ok(),
        None => Some(Zone::default()),
    }
}
