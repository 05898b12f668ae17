//! `type: lookup`: a join with a reference table (CSV/Parquet file or PostgreSQL).

use super::*;

pub(crate) async fn plan(
    cx: &mut Ctx<'_>,
    sql: &SqlPlanner,
    l: &crate::spec::LookupStage,
    input: &SchemaRef,
) -> Option<Box<dyn Operator>> {
    let loaded = match (&l.table, &l.postgres) {
        (Some(table), None) => ReferenceTable::load(&cx.spec.resolve(table), &l.key.table)
            .map_err(|e| (*table.span(), e)),
        (None, Some(pg)) => {
            let var = pg.url_env.as_ref().map_or("DATABASE_URL", |v| v.as_str());
            match std::env::var(var) {
                Ok(url) => ReferenceTable::load_postgres(&url, &pg.query, &l.key.table)
                    .await
                    .map_err(|e| (*pg.query.span(), e)),
                Err(_) => Err((
                    *pg.url_env.as_ref().map_or(pg.query.span(), |v| v.span()),
                    format!("environment variable {var} (the PostgreSQL URL) is not set"),
                )),
            }
        }
        _ => Err((
            *l.name.span(),
            "a lookup needs exactly one of `table` (a file) or `postgres`".to_string(),
        )),
    };
    let table = match loaded {
        Ok(t) => t,
        Err((span, e)) => {
            cx.errors.push(SpecError::at(&cx.spec.file, &span, e));
            return None;
        }
    };
    let join = match l.join.as_ref().map(|j| j.as_str()) {
        None | Some("left") => JoinKind::Left,
        Some("inner") => JoinKind::Inner,
        Some(other) => {
            cx.err(
                l.join.as_ref().expect("some"),
                format!("unknown join {other:?} (left, inner)"),
            );
            return None;
        }
    };
    let on_miss = match l.on_miss.as_ref().map(|m| m.as_str()) {
        None | Some("null") => OnMiss::Null,
        Some("warn") => OnMiss::Warn,
        Some("default") => OnMiss::Default,
        Some("dlq") => OnMiss::DeadLetter,
        Some(other) => {
            cx.err(
                l.on_miss.as_ref().expect("some"),
                format!("unknown on_miss {other:?} (null, warn, default, dlq)"),
            );
            return None;
        }
    };
    let mut defaults = Vec::new();
    for (col, value) in &l.defaults {
        match literal(sql, value) {
            Ok(v) => defaults.push((col.clone(), v)),
            Err(e) => cx.err(value, e),
        }
    }
    if on_miss == OnMiss::Default && l.defaults.is_empty() {
        cx.err(&l.name, "on_miss: default needs `defaults`");
    }
    match Lookup::new(
        &l.name,
        input.clone(),
        table,
        &l.key.input,
        l.columns.iter().map(|c| c.to_string()).collect(),
        join,
        on_miss,
        defaults,
    ) {
        Ok(op) => Some(Box::new(op)),
        Err(e) => {
            cx.err(&l.key.input, e);
            None
        }
    }
}
