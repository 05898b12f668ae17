//! SQL that comes from outside a pipeline file — `plexus query`, and the REST API after it —
//! runs read-only: exactly one query (`SELECT`, `WITH`, `VALUES`, or `EXPLAIN` of one) over the
//! tables the caller registered. No DDL (`CREATE EXTERNAL TABLE … LOCATION` would read any
//! file), no DML or `COPY … TO` (would write any file), no `SET`/`RESET`, no URL tables.
//!
//! Two locks: the statement is checked on the parsed AST before planning, and the plan is then
//! built with DataFusion's `SQLOptions` refusing DDL, DML and statements, so a statement kind
//! this check does not know about is still refused by the planner.

use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast::Statement as Ast;
use datafusion::sql::sqlparser::dialect::GenericDialect;

/// Why a SQL text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadOnlyError {
    #[error("{0}")]
    Syntax(String),
    #[error("only one query can be run at a time ({0} statements given)")]
    Several(usize),
    #[error("no statement given")]
    Empty,
    #[error("only queries are allowed here (SELECT, WITH, VALUES, EXPLAIN): {0} is not a query")]
    NotAQuery(String),
    #[error("{0}")]
    Plan(String),
}

/// The options every outside query is planned with.
pub fn options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Checks that `sql` is exactly one read-only query (see the module docs).
pub fn check(sql: &str) -> Result<(), ReadOnlyError> {
    let statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})
        .map_err(|e| ReadOnlyError::Syntax(e.to_string()))?;
    match statements.len() {
        0 => return Err(ReadOnlyError::Empty),
        1 => {}
        n => return Err(ReadOnlyError::Several(n)),
    }
    let statement = &statements[0];
    if is_query(statement) {
        Ok(())
    } else {
        Err(ReadOnlyError::NotAQuery(kind(statement)))
    }
}

fn is_query(s: &Statement) -> bool {
    match s {
        Statement::Statement(ast) => match ast.as_ref() {
            Ast::Query(_) => true,
            Ast::Explain { statement, .. } => matches!(statement.as_ref(), Ast::Query(_)),
            _ => false,
        },
        Statement::Explain(e) => is_query(&e.statement),
        Statement::CreateExternalTable(_) | Statement::CopyTo(_) | Statement::Reset(_) => false,
    }
}

/// The statement's leading keywords, for the error (never its arguments: paths and values
/// stay out of messages).
fn kind(s: &Statement) -> String {
    match s {
        Statement::CreateExternalTable(_) => "CREATE EXTERNAL TABLE".into(),
        Statement::CopyTo(_) => "COPY".into(),
        Statement::Reset(_) => "RESET".into(),
        Statement::Explain(e) => format!("EXPLAIN {}", kind(&e.statement)),
        Statement::Statement(ast) => ast
            .to_string()
            .split_whitespace()
            .take_while(|w| w.chars().all(|c| c.is_ascii_alphabetic() || c == '_'))
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
            .to_uppercase(),
    }
}

/// Plans `sql` as a read-only query against `ctx`'s tables.
pub async fn query(ctx: &SessionContext, sql: &str) -> Result<DataFrame, ReadOnlyError> {
    check(sql)?;
    ctx.sql_with_options(sql, options())
        .await
        .map_err(|e| ReadOnlyError::Plan(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_pass() {
        for sql in [
            "SELECT 1",
            "select * from metrics where total > 3 order by 1 limit 5",
            "WITH t AS (SELECT 1 AS x) SELECT x FROM t",
            "VALUES (1), (2)",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT 1",
            "SELECT 1;",
        ] {
            assert_eq!(check(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn everything_else_is_refused() {
        for (sql, kind) in [
            ("COPY (SELECT 'x') TO '/tmp/x' STORED AS CSV", "COPY"),
            (
                "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'",
                "CREATE EXTERNAL TABLE",
            ),
            ("DROP VIEW metrics", "DROP VIEW"),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("CREATE TABLE t AS SELECT 1", "CREATE TABLE"),
            ("INSERT INTO metrics VALUES (1)", "INSERT INTO"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
            ("RESET datafusion.execution.batch_size", "RESET"),
            ("EXPLAIN COPY (SELECT 1) TO '/tmp/x'", "EXPLAIN COPY"),
        ] {
            match check(sql) {
                Err(ReadOnlyError::NotAQuery(k)) => assert!(k.starts_with(kind), "{sql}: {k}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
        assert_eq!(check("SELECT 1; SELECT 2"), Err(ReadOnlyError::Several(2)));
        assert_eq!(check(""), Err(ReadOnlyError::Empty));
        // The refusal names the kind of statement, never its paths.
        let e = check("COPY (SELECT 1) TO '/home/secret/out.csv'").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[tokio::test]
    async fn files_and_urls_are_out_of_reach() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.csv");
        std::fs::write(&target, "a\n1\n").unwrap();
        let ctx = SessionContext::new();
        // A path as a table name: no URL tables in a plain session.
        let e = query(&ctx, &format!("SELECT * FROM '{}'", target.display()))
            .await
            .unwrap_err();
        assert!(matches!(e, ReadOnlyError::Plan(_)), "{e}");
        // Writing is refused before anything runs; the file is untouched.
        let copy = format!("COPY (SELECT 'x') TO '{}' STORED AS CSV", target.display());
        assert!(query(&ctx, &copy).await.is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "a\n1\n");
        // The planner's own lock holds too (for statements `check` might not know).
        assert!(ctx.sql_with_options(&copy, options()).await.is_err());
        let df = query(&ctx, "SELECT 40 + 2 AS x").await.unwrap();
        let rows = df.collect().await.unwrap();
        assert_eq!(rows[0].num_rows(), 1);
    }
}
