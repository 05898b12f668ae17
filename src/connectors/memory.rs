//! In-memory sources and sinks: `plexus test` runs a pipeline's graph with these in place
//! of its files.

use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;

use super::dlq::{DeadLetterRecord, records};
use super::{BatchSink, BatchSource, ConnectorError, DeadLetterSink};
use crate::formats::framing::{SourceFormat, frame};
use crate::record::DeadLetters;
use crate::record::raw_batch;

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

/// A source over bytes held in memory (test inputs).
pub struct MemorySource {
    batches: std::vec::IntoIter<RecordBatch>,
    len: u64,
}

impl MemorySource {
    pub fn new(data: &[u8], format: SourceFormat, max_rows: usize) -> Self {
        let mut warnings = Vec::new();
        let spans = frame(data, format, "test", &mut warnings);
        let records: Vec<(usize, &[u8])> = spans.iter().map(|&(s, e)| (s, &data[s..e])).collect();
        let batches = records
            .chunks(max_rows.max(1))
            .enumerate()
            .map(|(i, chunk)| raw_batch("test", chunk, i * max_rows.max(1)))
            .collect::<Vec<_>>();
        MemorySource {
            batches: batches.into_iter(),
            len: data.len() as u64,
        }
    }
}

impl BatchSource for MemorySource {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, ConnectorError> {
        Ok(self.batches.next())
    }
    fn progress(&self) -> (u64, Option<u64>) {
        (self.len, Some(self.len))
    }
}
