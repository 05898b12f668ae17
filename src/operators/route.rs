//! `route`: ordered `when:` predicates send rows to named outputs.
//!
//! `first_match` (default): a row goes to the first route whose predicate is true.
//! `all_matches`: a row goes to every route whose predicate is true.
//! Rows no route takes go to the `default` output, or are counted as filtered when there is
//! none. NULL is not true.

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::{Operator, OperatorError, StageOutput};
use crate::sql::PlannedExpr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    FirstMatch,
    AllMatches,
}

pub struct Route {
    routes: Vec<PlannedExpr>,
    default: Option<String>,
    mode: RouteMode,
    schema: SchemaRef,
}

impl Route {
    /// `routes` are the predicates, named by their output.
    pub fn new(
        routes: Vec<PlannedExpr>,
        default: Option<String>,
        mode: RouteMode,
        input: &SchemaRef,
    ) -> Self {
        Route {
            routes,
            default,
            mode,
            schema: input.clone(),
        }
    }
}

impl Operator for Route {
    fn outputs(&self) -> Vec<(String, SchemaRef)> {
        let mut ports: Vec<(String, SchemaRef)> = self
            .routes
            .iter()
            .map(|r| (r.name.clone(), self.schema.clone()))
            .collect();
        if let Some(d) = &self.default {
            ports.push((d.clone(), self.schema.clone()));
        }
        ports
    }

    fn process(&mut self, batch: RecordBatch) -> Result<StageOutput, OperatorError> {
        let n = batch.num_rows();
        let mut taken = BooleanArray::from(vec![false; n]);
        let mut outputs = Vec::with_capacity(self.routes.len() + 1);
        for r in &self.routes {
            let value = r.evaluate(&batch)?;
            let matches = match value.data_type() {
                DataType::Null => BooleanArray::from(vec![false; n]),
                _ => super::true_mask(value.as_boolean()),
            };
            let take = match self.mode {
                RouteMode::FirstMatch => {
                    arrow::compute::and(&matches, &arrow::compute::not(&taken)?)?
                }
                RouteMode::AllMatches => matches,
            };
            taken = arrow::compute::or(&taken, &take)?;
            let rows = arrow::compute::filter_record_batch(&batch, &take)?;
            outputs.push((rows.num_rows() > 0).then_some(rows));
        }
        let rest = arrow::compute::not(&taken)?;
        let unrouted = rest.true_count();
        let mut filtered = 0;
        match &self.default {
            Some(_) => {
                let rows = arrow::compute::filter_record_batch(&batch, &rest)?;
                outputs.push((rows.num_rows() > 0).then_some(rows));
            }
            None => filtered = unrouted,
        }
        debug_assert!(taken.null_count() == 0);
        Ok(StageOutput {
            outputs,
            dead: None,
            filtered,
        })
    }
}
