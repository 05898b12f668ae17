//! `type: validate`: named SQL predicates; a failing row is dead-lettered or warned.

use super::*;

pub(crate) fn plan(
    cx: &mut Ctx<'_>,
    sql: &SqlPlanner,
    v: &crate::spec::ValidateStage,
    input: &SchemaRef,
) -> Option<Box<dyn Operator>> {
    let mut rules = Vec::new();
    for r in &v.rules {
        let severity = match r.severity.as_ref().map(|s| s.as_str()) {
            None | Some("error") => Severity::Error,
            Some("warning") | Some("warn") => Severity::Warning,
            Some(other) => {
                let at = r.severity.as_ref().expect("some");
                cx.err(at, format!("unknown severity {other:?} (error, warning)"));
                continue;
            }
        };
        if rules.iter().any(|x: &Rule| x.name == r.name.as_str()) {
            cx.err(
                &r.name,
                format!("rule {:?} is declared twice", r.name.as_str()),
            );
        }
        if let Some(check) = expr(cx, sql, &r.name, &r.check, input, true) {
            rules.push(Rule {
                name: r.name.to_string(),
                message: r
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("failed: {}", r.check.as_str())),
                severity,
                check,
            });
        }
    }
    if rules.len() != v.rules.len() {
        return None;
    }
    match Validate::new(rules, input) {
        Ok(op) => Some(Box::new(op)),
        Err(e) => {
            cx.err(&v.name, e);
            None
        }
    }
}
