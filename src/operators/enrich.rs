//! `enrich`: computed columns added to the row (the seed's `calculate`/`enrich` rules), e.g.
//! age from birth date or a normalised phone number. A field named like an existing column
//! replaces it in place; new fields go after the data columns, before provenance.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::{Operator, OperatorError, StageOutput, is_provenance};
use crate::sql::PlannedExpr;

/// Where each output column comes from.
#[derive(Debug, Clone)]
enum Slot {
    Input(usize),
    Computed(usize),
}

pub struct Enrich {
    fields: Vec<PlannedExpr>,
    layout: Vec<Slot>,
    schema: SchemaRef,
}

impl Enrich {
    pub fn new(fields: Vec<PlannedExpr>, input: &SchemaRef) -> Result<Self, String> {
        let mut layout: Vec<Slot> = Vec::new();
        let mut out: Vec<Field> = Vec::new();
        let data: Vec<usize> = (0..input.fields().len())
            .filter(|&i| !is_provenance(input.field(i).name()))
            .collect();
        let provenance: Vec<usize> = (0..input.fields().len())
            .filter(|&i| is_provenance(input.field(i).name()))
            .collect();
        for &i in &data {
            let f = input.field(i);
            match fields.iter().position(|e| &e.name == f.name()) {
                Some(k) => {
                    layout.push(Slot::Computed(k));
                    out.push(Field::new(
                        f.name(),
                        fields[k].data_type.clone(),
                        fields[k].nullable,
                    ));
                }
                None => {
                    layout.push(Slot::Input(i));
                    out.push(f.clone());
                }
            }
        }
        for (k, e) in fields.iter().enumerate() {
            if is_provenance(&e.name) {
                return Err(format!(
                    "field {:?}: names starting with '_' are reserved for provenance",
                    e.name
                ));
            }
            if !data.iter().any(|&i| input.field(i).name() == &e.name) {
                layout.push(Slot::Computed(k));
                out.push(Field::new(&e.name, e.data_type.clone(), e.nullable));
            }
        }
        for &i in &provenance {
            layout.push(Slot::Input(i));
            out.push(input.field(i).clone());
        }
        Ok(Enrich {
            fields,
            layout,
            schema: Arc::new(Schema::new(out)),
        })
    }
}

impl Operator for Enrich {
    fn outputs(&self) -> Vec<(String, SchemaRef)> {
        vec![(String::new(), self.schema.clone())]
    }

    fn process(&mut self, batch: RecordBatch) -> Result<StageOutput, OperatorError> {
        let computed: Vec<ArrayRef> = self
            .fields
            .iter()
            .map(|e| e.evaluate(&batch))
            .collect::<Result<_, _>>()?;
        let columns: Vec<ArrayRef> = self
            .layout
            .iter()
            .map(|s| match s {
                Slot::Input(i) => batch.column(*i).clone(),
                Slot::Computed(k) => computed[*k].clone(),
            })
            .collect();
        Ok(StageOutput::single(RecordBatch::try_new(
            self.schema.clone(),
            columns,
        )?))
    }
}
