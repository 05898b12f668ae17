//! In-memory sinks: `plexus test` runs a pipeline's graph with these in place of its files.

use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;

use super::dlq::{DeadLetterRecord, records};
use super::{BatchSink, ConnectorError, DeadLetterSink};
use crate::operators::DeadLetters;

/// Collects batches.
#[derive(Clone, Default)]
pub struct MemorySink {
    pub batches: Arc<Mutex<Vec<RecordBatch>>>,
}

impl BatchSink for MemorySink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        self.batches.lock().expect("sink lock").push(batch.clone());
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// Collects dead letters.
#[derive(Clone, Default)]
pub struct MemoryDlq {
    pub records: Arc<Mutex<Vec<DeadLetterRecord>>>,
}

impl DeadLetterSink for MemoryDlq {
    fn write(&mut self, stage: &str, dead: &DeadLetters) -> Result<(), ConnectorError> {
        self.records
            .lock()
            .expect("dlq lock")
            .extend(records("test", "test", stage, dead));
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}
