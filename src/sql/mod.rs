//! SQL planned once with DataFusion into physical expressions, then evaluated per batch.
//!
//! Stages never plan SQL per batch: the planner calls `SqlPlanner` at startup, and operators keep
//! the resulting `PhysicalExpr`s. Type coercion and constant folding happen here, once.

pub mod read_only;
pub mod udfs;

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

/// A planned expression with the name and type it produces.
#[derive(Debug, Clone)]
pub struct PlannedExpr {
    pub name: String,
    pub expr: Arc<dyn PhysicalExpr>,
    pub data_type: DataType,
    pub nullable: bool,
}

impl PlannedExpr {
    /// Evaluates over a batch with the schema it was planned against.
    pub fn evaluate(&self, batch: &RecordBatch) -> datafusion::error::Result<ArrayRef> {
        self.expr.evaluate(batch)?.into_array(batch.num_rows())
    }
}

/// `SELECT <exprs> FROM input [WHERE <predicate>]`, planned.
#[derive(Debug, Clone)]
pub struct PlannedSelect {
    pub projection: Vec<PlannedExpr>,
    pub filter: Option<PlannedExpr>,
}

/// Plans SQL against schemas; holds the session with plexus' UDFs registered.
pub struct SqlPlanner {
    ctx: SessionContext,
}

impl Default for SqlPlanner {
    fn default() -> Self {
        Self::new()
    }
}

impl SqlPlanner {
    pub fn new() -> Self {
        let ctx = SessionContext::new();
        udfs::register(&ctx);
        SqlPlanner { ctx }
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Logical → physical: type coercion and simplification (constant folding; rewrites such
    /// as `coalesce` → `CASE` that physical planning expects), done once here. DataFusion folds
    /// `now()`/`current_date()` into the planning time, so in a pipeline they mean "when the
    /// pipeline started"; `age_years` and other plexus UDFs read the clock per batch.
    fn physical(&self, expr: Expr, df_schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>, String> {
        let state = self.ctx.state();
        let context = SimplifyContext::builder()
            .with_schema(Arc::new(df_schema.clone()))
            .with_config_options(Arc::clone(state.config_options()))
            .with_query_execution_start_time(Some(chrono::Utc::now()))
            .build();
        let simplifier = ExprSimplifier::new(context);
        let expr = simplifier.coerce(expr, df_schema).map_err(clean_error)?;
        let expr = simplifier.simplify(expr).map_err(clean_error)?;
        self.ctx
            .create_physical_expr(expr, df_schema)
            .map_err(clean_error)
    }

    /// Plans one scalar expression (e.g. a validate `check` or a route `when`).
    pub fn expr(&self, name: &str, sql: &str, schema: &SchemaRef) -> Result<PlannedExpr, String> {
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| e.to_string())?;
        let logical = self
            .ctx
            .parse_sql_expr(sql, &df_schema)
            .map_err(clean_error)?;
        let expr = self.physical(logical, &df_schema)?;
        let data_type = expr.data_type(schema).map_err(clean_error)?;
        let nullable = expr.nullable(schema).unwrap_or(true);
        Ok(PlannedExpr {
            name: name.to_string(),
            expr,
            data_type,
            nullable,
        })
    }

    /// Plans a boolean predicate; a non-boolean expression is an error naming its type.
    pub fn predicate(
        &self,
        name: &str,
        sql: &str,
        schema: &SchemaRef,
    ) -> Result<PlannedExpr, String> {
        let p = self.expr(name, sql, schema)?;
        if p.data_type != DataType::Boolean && p.data_type != DataType::Null {
            return Err(format!(
                "`{sql}` is {} but a condition must be boolean",
                p.data_type
            ));
        }
        Ok(p)
    }

    /// Plans `SELECT ... FROM input [WHERE ...]` over `schema` (the stage's input).
    pub async fn select(&self, sql: &str, schema: &SchemaRef) -> Result<PlannedSelect, String> {
        let table = MemTable::try_new(schema.clone(), vec![vec![]]).map_err(clean_error)?;
        // The session is shared by all stages; `input` is re-bound to this stage's schema.
        let _ = self.ctx.deregister_table("input");
        self.ctx
            .register_table("input", Arc::new(table))
            .map_err(clean_error)?;
        let plan = self
            .ctx
            .state()
            .create_logical_plan(sql)
            .await
            .map_err(clean_error)?;
        let unsupported = || {
            "a map stage runs `SELECT <expressions> FROM input [WHERE <condition>]` per batch; \
             joins, aggregates, ORDER BY and LIMIT belong to lookup/route/window stages"
                .to_string()
        };
        let LogicalPlan::Projection(projection) = &plan else {
            return Err(unsupported());
        };
        let (scan_input, filter) = match projection.input.as_ref() {
            LogicalPlan::Filter(f) => (f.input.as_ref(), Some(f.predicate.clone())),
            other => (other, None),
        };
        let df_schema = match scan_input {
            LogicalPlan::TableScan(scan) if scan.table_name.table() == "input" => {
                scan.projected_schema.clone()
            }
            LogicalPlan::SubqueryAlias(alias) => match alias.input.as_ref() {
                LogicalPlan::TableScan(scan) if scan.table_name.table() == "input" => {
                    alias.schema.clone()
                }
                _ => return Err(unsupported()),
            },
            _ => return Err(unsupported()),
        };
        let mut out = Vec::with_capacity(projection.expr.len());
        for (expr, field) in projection.expr.iter().zip(projection.schema.fields()) {
            let physical = self.physical(expr.clone(), &df_schema)?;
            out.push(PlannedExpr {
                name: field.name().clone(),
                data_type: field.data_type().clone(),
                nullable: field.is_nullable(),
                expr: physical,
            });
        }
        let filter = match filter {
            Some(f) => {
                let expr = self.physical(f, &df_schema)?;
                Some(PlannedExpr {
                    name: "where".into(),
                    data_type: DataType::Boolean,
                    nullable: true,
                    expr,
                })
            }
            None => None,
        };
        let _ = self.ctx.deregister_table("input");
        Ok(PlannedSelect {
            projection: out,
            filter,
        })
    }
}

/// DataFusion errors carry a backtrace-like prefix chain; keep the message users can act on.
fn clean_error(e: datafusion::error::DataFusionError) -> String {
    let text = e.to_string();
    let text = text
        .trim_start_matches("Error during planning: ")
        .trim_start_matches("Schema error: ")
        .trim_start_matches("SQL error: ");
    // sqlparser's errors arrive as a debug dump (`ParserError("…")`): say what they are.
    for (kind, prefix) in [
        ("ParserError(\"", "SQL syntax error: "),
        ("TokenizerError(\"", "SQL syntax error: "),
    ] {
        if let Some(inner) = text.strip_prefix(kind).and_then(|t| t.strip_suffix("\")")) {
            return format!("{prefix}{}", inner.replace("\\\"", "\"").replace('\n', " "));
        }
    }
    // The list of valid fields can be long; it helps, so it stays, but on one line.
    text.replace('\n', " ")
}

/// Where in its SQL text a syntax error is, 1-based (line, column): sqlparser's `at Line: L,
/// Column: C`, or the end of the text for an error at EOF. Also returns the message without
/// the location (the caller names the place in the file instead).
pub fn error_position(message: &str, sql: &str) -> Option<(usize, usize, String)> {
    if let Some(i) = message.find(" at Line: ") {
        let rest = &message[i + " at Line: ".len()..];
        let (line, rest) = rest.split_once(", Column: ")?;
        let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let tail = &rest[column.len()..];
        return Some((
            line.trim().parse().ok()?,
            column.parse().ok()?,
            format!("{}{tail}", &message[..i]),
        ));
    }
    if message.contains("found: EOF") {
        let lines: Vec<&str> = sql.split('\n').collect();
        let last = lines.last().map_or(0, |l| l.chars().count());
        return Some((lines.len().max(1), last + 1, message.to_string()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("mrn", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]))
    }

    #[test]
    fn syntax_errors_are_words_with_a_position() {
        let p = SqlPlanner::new();
        let e = p.expr("x", "mrn = = 1", &schema()).err().unwrap();
        assert!(
            e.starts_with("SQL syntax error: Expected: an expression"),
            "{e}"
        );
        let (line, column, message) = error_position(&e, "mrn = = 1").unwrap();
        assert_eq!((line, column), (1, 7));
        assert!(!message.contains("Line:"), "{message}");
        let e = p.expr("x", "(mrn <>", &schema()).err().unwrap();
        assert_eq!(
            error_position(&e, "(mrn <>").map(|p| (p.0, p.1)),
            Some((1, 8))
        );
    }

    #[tokio::test]
    async fn plans_select_with_filter_and_evaluates() {
        let p = SqlPlanner::new();
        let s = p
            .select(
                "SELECT upper(mrn) AS m, n * 2 AS twice FROM input WHERE n > 1",
                &schema(),
            )
            .await
            .unwrap();
        assert_eq!(s.projection[0].name, "m");
        assert_eq!(s.projection[1].data_type, DataType::Int64);
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let twice = s.projection[1].evaluate(&batch).unwrap();
        assert_eq!(
            twice
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values(),
            &[2, 4]
        );
        assert!(s.filter.is_some());
    }

    #[tokio::test]
    async fn errors_name_the_problem() {
        let p = SqlPlanner::new();
        let e = p.expr("x", "nope + 1", &schema()).unwrap_err();
        assert!(e.contains("nope"), "{e}");
        let e = p.predicate("x", "n + 1", &schema()).unwrap_err();
        assert!(e.contains("must be boolean"), "{e}");
        let e = p
            .select("SELECT count(*) FROM input", &schema())
            .await
            .unwrap_err();
        assert!(e.contains("map stage"), "{e}");
        let e = p
            .select("SELEC mrn FROM input", &schema())
            .await
            .unwrap_err();
        assert!(e.to_lowercase().contains("selec"), "{e}");
    }
}
