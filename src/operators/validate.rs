//! `validate`: named SQL predicates. A row passes a rule when the predicate is true (NULL is a
//! failure: a check on a missing value must not pass silently).
//!
//! Failing an `error` rule sends the row to the dead-letter output with the rule's name and
//! message (all failed error rules are listed). Failing a `warning` rule keeps the row and adds
//! the message to its `_warnings` list.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::{DeadLetters, Operator, OperatorError, StageOutput, WARNINGS};
use crate::sql::PlannedExpr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

pub struct Rule {
    pub name: String,
    pub message: String,
    pub severity: Severity,
    pub check: PlannedExpr,
}

pub struct Validate {
    rules: Vec<Rule>,
    schema: SchemaRef,
    /// Index of an existing `_warnings` column in the input, if any.
    warnings_in: Option<usize>,
}

/// The `_warnings` column type.
pub fn warnings_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

impl Validate {
    pub fn new(rules: Vec<Rule>, input: &SchemaRef) -> Result<Self, String> {
        let warnings_in = input.index_of(WARNINGS).ok();
        if let Some(i) = warnings_in
            && input.field(i).data_type() != &warnings_type()
        {
            return Err(format!("column {WARNINGS} must be list<utf8>"));
        }
        let has_warning_rules = rules.iter().any(|r| r.severity == Severity::Warning);
        let schema = if warnings_in.is_none() && has_warning_rules {
            let mut fields: Vec<Field> =
                input.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(WARNINGS, warnings_type(), true));
            Arc::new(Schema::new(fields))
        } else {
            input.clone()
        };
        Ok(Validate {
            rules,
            schema,
            warnings_in,
        })
    }
}

impl Operator for Validate {
    fn outputs(&self) -> Vec<(String, SchemaRef)> {
        vec![(String::new(), self.schema.clone())]
    }

    fn process(&mut self, batch: RecordBatch) -> Result<StageOutput, OperatorError> {
        let n = batch.num_rows();
        let mut results: Vec<BooleanArray> = Vec::with_capacity(self.rules.len());
        for rule in &self.rules {
            let value = rule.check.evaluate(&batch)?;
            let value = match value.data_type() {
                // A literal NULL check: never true.
                DataType::Null => BooleanArray::from(vec![false; n]),
                _ => super::true_mask(value.as_boolean()),
            };
            results.push(value);
        }
        let mut keep = BooleanBufferBuilder::new(n);
        let mut dead_rules = Vec::new();
        let mut dead_reasons = Vec::new();
        for row in 0..n {
            let failed: Vec<&Rule> = self
                .rules
                .iter()
                .zip(&results)
                .filter(|(r, ok)| r.severity == Severity::Error && !ok.value(row))
                .map(|(r, _)| r)
                .collect();
            keep.append(failed.is_empty());
            if !failed.is_empty() {
                dead_rules.push(
                    failed
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                );
                dead_reasons.push(
                    failed
                        .iter()
                        .map(|r| r.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                );
            }
        }
        let keep = BooleanArray::new(keep.finish(), None);
        let batch = self.with_warnings(&batch, &results)?;
        let (kept, rejected) = super::split_by_mask(&batch, &keep)?;
        let dead = (rejected.num_rows() > 0).then(|| DeadLetters {
            rows: rejected,
            rule: dead_rules,
            reason: dead_reasons,
        });
        Ok(StageOutput {
            outputs: vec![Some(kept)],
            dead,
            filtered: 0,
        })
    }
}

impl Validate {
    /// Adds failed warning rules' messages to `_warnings` (extending an existing list).
    fn with_warnings(
        &self,
        batch: &RecordBatch,
        results: &[BooleanArray],
    ) -> Result<RecordBatch, OperatorError> {
        if !self.rules.iter().any(|r| r.severity == Severity::Warning) {
            return Ok(batch.clone());
        }
        let warnings = super::extend_warnings(batch, self.warnings_in, |row, push| {
            for (rule, ok) in self.rules.iter().zip(results) {
                if rule.severity == Severity::Warning && !ok.value(row) {
                    push(&format!("{}: {}", rule.name, rule.message));
                }
            }
        });
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        match self.warnings_in {
            Some(i) => columns[i] = warnings,
            None => columns.push(warnings),
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}
