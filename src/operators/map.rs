//! `map`: a SQL projection (`SELECT ... FROM input [WHERE ...]` or `name: expression` pairs):
//! the seed's field mappings, type conversions, defaults (`coalesce`) and transform functions.
//!
//! Provenance columns the projection does not name are appended unchanged, so a mapping never
//! has to remember to carry `_raw` and friends. Rows a `WHERE` drops are counted as filtered.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::{Operator, OperatorError, StageOutput, is_provenance};
use crate::sql::{PlannedExpr, PlannedSelect};

pub struct Map {
    select: PlannedSelect,
    /// Input columns appended after the projection (provenance not already projected).
    passthrough: Vec<usize>,
    schema: SchemaRef,
}

impl Map {
    pub fn new(select: PlannedSelect, input: &SchemaRef) -> Result<Self, String> {
        let mut fields: Vec<Field> = Vec::new();
        for p in &select.projection {
            if fields.iter().any(|f| f.name() == &p.name) {
                return Err(format!("column {:?} is produced twice", p.name));
            }
            // Nullability as DataFusion derives it: a column that can never be null stays
            // non-null downstream (an Avro sink's derived schema, Parquet) instead of becoming
            // an optional field.
            fields.push(Field::new(&p.name, p.data_type.clone(), p.nullable));
        }
        let mut passthrough = Vec::new();
        for (i, f) in input.fields().iter().enumerate() {
            if is_provenance(f.name()) && !fields.iter().any(|o| o.name() == f.name()) {
                passthrough.push(i);
                fields.push(f.as_ref().clone());
            }
        }
        Ok(Map {
            select,
            passthrough,
            schema: Arc::new(Schema::new(fields)),
        })
    }
}

/// Evaluates planned expressions and appends the pass-through columns.
pub(crate) fn project(
    exprs: &[PlannedExpr],
    passthrough: &[usize],
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, OperatorError> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for e in exprs {
        columns.push(e.evaluate(batch)?);
    }
    for &i in passthrough {
        columns.push(batch.column(i).clone());
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

impl Operator for Map {
    fn outputs(&self) -> Vec<(String, SchemaRef)> {
        vec![(String::new(), self.schema.clone())]
    }

    fn process(&mut self, batch: RecordBatch) -> Result<StageOutput, OperatorError> {
        let (batch, filtered) = match &self.select.filter {
            Some(f) => {
                let mask = f.evaluate(&batch)?;
                // NULL is not true: the row is dropped, as SQL's WHERE does.
                let mask = super::true_mask(mask.as_boolean());
                let kept = arrow::compute::filter_record_batch(&batch, &mask)?;
                let dropped = batch.num_rows() - kept.num_rows();
                (kept, dropped)
            }
            None => (batch, 0),
        };
        let out = project(
            &self.select.projection,
            &self.passthrough,
            &batch,
            &self.schema,
        )?;
        Ok(StageOutput {
            outputs: vec![Some(out)],
            dead: None,
            filtered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::SqlPlanner;
    use arrow::datatypes::DataType;

    /// A column that can never be null stays non-null (an Avro sink derives `"string"`, not
    /// `["null", "string"]`); an expression that can be null is nullable.
    #[tokio::test]
    async fn nullability_follows_the_expressions() {
        let input: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("severity", DataType::Utf8, true),
            Field::new("census", DataType::Int64, false),
        ]));
        let planner = SqlPlanner::new();
        let select = planner
            .select(
                "SELECT event_id, upper(event_id) AS up, severity, \
                 coalesce(severity, 'info') AS sev, census + 1 AS next, \
                 CASE WHEN census > 0 THEN census END AS positive FROM input",
                &input,
            )
            .await
            .unwrap();
        let map = Map::new(select, &input).unwrap();
        let schema = &map.outputs()[0].1;
        let nullable = |n: &str| schema.field_with_name(n).unwrap().is_nullable();
        assert!(!nullable("event_id"));
        assert!(!nullable("sev"));
        assert!(!nullable("next"));
        assert!(nullable("severity"));
        assert!(nullable("positive"));
        let avro = crate::formats::avro::avro_schema_json(schema, "E", None).unwrap();
        let avro: serde_json::Value = serde_json::from_str(&avro).unwrap();
        let ty = |n: &str| {
            avro["fields"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["name"] == n)
                .unwrap()["type"]
                .clone()
        };
        assert_eq!(ty("event_id"), serde_json::json!("string"));
        assert_eq!(ty("severity"), serde_json::json!(["null", "string"]));
    }
}
