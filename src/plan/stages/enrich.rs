//! `type: enrich`: computed columns added to the row.

use super::*;

pub(crate) fn plan(
    cx: &mut Ctx<'_>,
    sql: &SqlPlanner,
    e: &crate::spec::EnrichStage,
    input: &SchemaRef,
) -> Option<Box<dyn Operator>> {
    let mut fields = Vec::new();
    for (name, value) in &e.fields {
        if let Some(p) = expr(cx, sql, name, value, input, false) {
            fields.push(p);
        }
    }
    if fields.len() != e.fields.len() {
        return None;
    }
    match Enrich::new(fields, input) {
        Ok(op) => Some(Box::new(op)),
        Err(msg) => {
            cx.err(&e.name, msg);
            None
        }
    }
}
