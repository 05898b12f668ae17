//! `type: map`: a SQL projection (`sql:` inline or a `.sql` file, or `select:` pairs).

use super::*;

pub(crate) async fn plan(
    cx: &mut Ctx<'_>,
    sql: &SqlPlanner,
    m: &crate::spec::MapStage,
    input: &SchemaRef,
) -> Option<Box<dyn Operator>> {
    let planned = match (&m.sql, &m.select) {
        (Some(text), None) => {
            let (query, file) = if text.trim_end().ends_with(".sql") {
                let path = cx.spec.resolve(text.trim());
                match std::fs::read_to_string(&path) {
                    Ok(q) => (q, Some(path)),
                    Err(e) => {
                        cx.err(text, format!("cannot read {}: {e}", path.display()));
                        return None;
                    }
                }
            } else {
                (text.to_string(), None)
            };
            match sql.select(&query, input).await {
                Ok(s) => s,
                Err(e) => {
                    let origin = file
                        .as_ref()
                        .map(|p| format!(" (in {})", p.display()))
                        .unwrap_or_default();
                    cx.sql_err(text, &query, file.as_deref(), format!("{e}{origin}"));
                    return None;
                }
            }
        }
        (None, Some(select)) => {
            let mut projection = Vec::new();
            for (name, e) in select {
                if let Some(p) = expr(cx, sql, name, e, input, false) {
                    projection.push(p);
                }
            }
            if projection.len() != select.len() {
                return None;
            }
            crate::sql::PlannedSelect {
                projection,
                filter: None,
            }
        }
        _ => {
            cx.err(
                &m.name,
                "a map stage needs exactly one of `sql` or `select`",
            );
            return None;
        }
    };
    match Map::new(planned, input) {
        Ok(op) => Some(Box::new(op)),
        Err(e) => {
            cx.err(&m.name, e);
            None
        }
    }
}
