//! `type: route`: rows to named outputs by ordered predicates.

use super::*;

pub(crate) fn plan(
    cx: &mut Ctx<'_>,
    sql: &SqlPlanner,
    r: &crate::spec::RouteStage,
    input: &SchemaRef,
) -> Option<Box<dyn Operator>> {
    let mode = match r.mode.as_ref().map(|m| m.as_str()) {
        None | Some("first_match") => RouteMode::FirstMatch,
        Some("all_matches") => RouteMode::AllMatches,
        Some(other) => {
            cx.err(
                r.mode.as_ref().expect("some"),
                format!("unknown route mode {other:?} (first_match, all_matches)"),
            );
            return None;
        }
    };
    let mut routes = Vec::new();
    for route in &r.routes {
        if routes
            .iter()
            .any(|x: &PlannedExpr| x.name == route.name.as_str())
            || r.default
                .as_ref()
                .is_some_and(|d| d.as_str() == route.name.as_str())
        {
            cx.err(
                &route.name,
                format!("output {:?} is declared twice", route.name.as_str()),
            );
        }
        if let Some(p) = expr(cx, sql, &route.name, &route.when, input, true) {
            routes.push(p);
        }
    }
    if r.routes.is_empty() {
        cx.err(&r.name, "a route stage needs at least one route");
        return None;
    }
    if routes.len() != r.routes.len() {
        return None;
    }
    Some(Box::new(Route::new(
        routes,
        r.default.as_ref().map(|d| d.to_string()),
        mode,
        input,
    )))
}
