//! Operators: small structs that turn one Arrow `RecordBatch` into output batches.
//!
//! Every operator is built once by the planner (SQL already planned into physical expressions)
//! and then called per batch. Rows it rejects are returned as `DeadLetters` with the rule and
//! reason; rows it drops on purpose (a route without a default, an inner-join miss) are counted
//! as `filtered`. So every input row is accounted for: out + dead + filtered.
//!
//! Provenance columns (names starting with `_`) travel with every row from the source to the
//! sinks and the dead-letter output; operators pass them through untouched.

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

pub mod enrich;
pub mod fhir;
pub mod lookup;
pub mod map;
pub mod parse;
pub mod route;
pub mod validate;
pub mod window;

pub use crate::record::{
    CONTROL_ID, DeadLetters, MESSAGE_TYPE, OFFSET, RAW, RECORD_INDEX, SOURCE, WARNINGS,
    is_provenance,
};

/// What one call of `Operator::process` produced.
#[derive(Debug, Default)]
pub struct StageOutput {
    /// One entry per output port (same order as `Operator::outputs`); None = nothing this time.
    pub outputs: Vec<Option<RecordBatch>>,
    pub dead: Option<DeadLetters>,
    /// Rows dropped on purpose.
    pub filtered: usize,
}

impl StageOutput {
    /// The common case: one port, everything passes.
    pub fn single(batch: RecordBatch) -> Self {
        StageOutput {
            outputs: vec![Some(batch)],
            dead: None,
            filtered: 0,
        }
    }
}

/// Failures of a whole batch (bugs or resource errors, not bad rows: those are dead letters).
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    #[error("sql: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("{0}")]
    Other(String),
}

/// One stage of a pipeline at run time.
pub trait Operator: Send {
    /// Output ports, by name, with their schemas. Single-output operators have one port
    /// named `""`.
    fn outputs(&self) -> Vec<(String, SchemaRef)>;

    /// Async work `process` needs first (e.g. fetching Avro writer schemas from the
    /// registry), so that `process` itself stays synchronous and CPU-only. Most need none.
    fn prepare<'a>(
        &'a mut self,
        _batch: &'a RecordBatch,
    ) -> Option<futures::future::BoxFuture<'a, Result<(), OperatorError>>> {
        None
    }

    /// Processes one batch.
    fn process(&mut self, batch: RecordBatch) -> Result<StageOutput, OperatorError>;

    // Hooks of stateful operators (windows), with no-op defaults (Arroyo's operator shape).

    /// How long without a batch before `on_tick` runs (processing-time windows fire while
    /// the input is idle). None: never.
    fn tick_every(&self) -> Option<std::time::Duration> {
        None
    }

    fn on_tick(&mut self) -> Result<(), OperatorError> {
        Ok(())
    }

    /// Whether a checkpoint must cover the operator's state: then it is a party to every
    /// barrier (acknowledged when `on_barrier`'s flush resolves), and its calls may block.
    fn is_checkpointed(&self) -> bool {
        false
    }

    /// At a checkpoint barrier: saves the state; the future resolves once what the operator
    /// wrote so far is durable.
    fn on_barrier(&mut self, _epoch: u64) -> Result<Option<Flushed>, OperatorError> {
        Ok(None)
    }

    /// The input ended (or the stream stopped): last output, final state.
    fn on_end(&mut self) -> Result<(), OperatorError> {
        Ok(())
    }
}

/// Resolves when an operator's outputs are durable (see `Operator::on_barrier`).
pub type Flushed = futures::future::BoxFuture<'static, Result<(), String>>;

/// Splits `batch` into (kept rows, rejected rows) by a boolean mask (true = keep).
pub fn split_by_mask(
    batch: &RecordBatch,
    keep: &arrow::array::BooleanArray,
) -> Result<(RecordBatch, RecordBatch), ArrowError> {
    let kept = arrow::compute::filter_record_batch(batch, keep)?;
    let rejected = arrow::compute::filter_record_batch(batch, &arrow::compute::not(keep)?)?;
    Ok((kept, rejected))
}

/// A filter mask where NULL counts as false (SQL `WHERE` semantics).
/// A decoder's error with the values it quotes replaced by their shape (`"19871340"` → `a
/// value of 8 digits`): reasons reach the run summary and the query tables, which hold no
/// patient data. Field and column names (quoted after `field`, `column` or `{`) are kept.
pub fn redact_values(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    while let Some(i) = rest.find(['"', '\'']) {
        let quote = rest[i..].chars().next().unwrap_or('"');
        let Some(len) = rest[i + 1..].find(quote) else {
            break;
        };
        let (before, inner) = (&rest[..i], &rest[i + 1..i + 1 + len]);
        out.push_str(before);
        let word = before
            .trim_end()
            .rsplit(char::is_whitespace)
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if word.ends_with("field") || word.ends_with("column") || word.ends_with('{') {
            out.push(quote);
            out.push_str(inner);
            out.push(quote);
        } else {
            out.push_str(&crate::formats::hl7::error::shape(inner));
        }
        rest = &rest[i + 1 + len + 1..];
    }
    out.push_str(rest);
    out
}

pub fn true_mask(values: &arrow::array::BooleanArray) -> arrow::array::BooleanArray {
    use arrow::array::Array;
    if values.null_count() == 0 {
        values.clone()
    } else {
        arrow::compute::prep_null_mask_filter(values)
    }
}

/// Builds a `_warnings` column: each row's existing list (from column `existing` of `batch`,
/// NULL read as empty) followed by what `add(row, push)` pushes for that row.
pub(crate) fn extend_warnings(
    batch: &RecordBatch,
    existing: Option<usize>,
    mut add: impl FnMut(usize, &mut dyn FnMut(&str)),
) -> arrow::array::ArrayRef {
    use arrow::array::{Array, AsArray, ListBuilder, StringBuilder};
    let existing = existing.map(|i| batch.column(i).as_list::<i32>().clone());
    let mut b = ListBuilder::new(StringBuilder::new());
    for row in 0..batch.num_rows() {
        if let Some(list) = &existing
            && !list.is_null(row)
        {
            let items = list.value(row);
            for item in items.as_string::<i32>().iter() {
                b.values().append_option(item);
            }
        }
        add(row, &mut |w: &str| b.values().append_value(w));
        b.append(true);
    }
    std::sync::Arc::new(b.finish())
}

#[cfg(test)]
mod tests {
    #[test]
    fn decoder_reasons_name_fields_but_not_values() {
        let r = super::redact_values(
            "Json error: whilst decoding field 'occurred_at': failed to parse \"not a time\" as Timestamp(µs, \"UTC\"): Error parsing timestamp from 'not a time'",
        );
        assert!(r.contains("field 'occurred_at'"), "{r}");
        assert!(!r.contains("not a time"), "{r}");
        assert!(r.contains("a value of 10 characters"), "{r}");
        assert_eq!(super::redact_values("no quotes"), "no quotes");
        assert_eq!(super::redact_values("odd \" quote"), "odd \" quote");
    }
}
