//! A source fed by network listeners through the spool: the listener (the "front": MLLP
//! connections, HTTP requests) appends each record durably and answers its sender; the flow
//! reads the spool like a partition and commits what it finished, so a restart processes
//! the rest. Shared by the `mllp` and `http` sources.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{BinaryBuilder, Int64Builder, StringBuilder};
use arrow::record_batch::RecordBatch;

use super::checkpoint::Position;
use super::spool::{SpoolReader, SpoolRecord};
use super::{BatchSource, Batching, ConnectorError};
use crate::record::raw_record_schema;

/// The listening side of a spooled source.
pub trait Front: Send {
    /// Stops taking new work: answers what it holds, then closes. Blocks until done.
    fn stop(&mut self);
    /// Senders still connected (an idle exit waits until there are none).
    fn open(&self) -> usize;
    /// One line for the run summary (counters, never record content).
    fn describe(&self) -> String;
}

/// The flow's side of a listener: raw-record batches from the spool.
pub struct SpooledSource<F: Front> {
    front: F,
    reader: SpoolReader,
    stop: Arc<AtomicBool>,
    batching: Batching,
    exit_when_idle: Option<Duration>,
    last_record: Instant,
    read: u64,
    bytes: u64,
    last_end: Option<u64>,
    draining: bool,
}

impl<F: Front> SpooledSource<F> {
    pub fn new(
        front: F,
        reader: SpoolReader,
        batching: Batching,
        stop: Arc<AtomicBool>,
        exit_when_idle: Option<Duration>,
    ) -> Self {
        SpooledSource {
            front,
            reader,
            stop,
            batching,
            exit_when_idle,
            last_record: Instant::now(),
            read: 0,
            bytes: 0,
            last_end: None,
            draining: false,
        }
    }

    fn stop_listening(&mut self) {
        self.front.stop();
        self.draining = true;
    }

    fn batch(&mut self, records: Vec<SpoolRecord>) -> RecordBatch {
        let n = records.len();
        let mut raw =
            BinaryBuilder::with_capacity(n, records.iter().map(|r| r.payload.len()).sum());
        let mut source = StringBuilder::with_capacity(n, n * 48);
        let mut offset = Int64Builder::with_capacity(n);
        let mut index = Int64Builder::with_capacity(n);
        for r in &records {
            raw.append_value(&r.payload);
            source.append_value(&r.origin);
            offset.append_value(r.offset as i64);
            index.append_value(self.read as i64);
            self.read += 1;
            self.bytes += r.payload.len() as u64;
        }
        self.last_end = records.last().map(|r| r.end);
        RecordBatch::try_new(
            raw_record_schema(),
            vec![
                Arc::new(raw.finish()),
                Arc::new(source.finish()),
                Arc::new(offset.finish()),
                Arc::new(index.finish()),
            ],
        )
        .expect("raw schema matches")
    }
}

impl<F: Front> BatchSource for SpooledSource<F> {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, ConnectorError> {
        loop {
            let limit_hit = self.batching.limit.is_some_and(|l| self.read >= l);
            if !self.draining && (self.stop.load(Ordering::Relaxed) || limit_hit) {
                self.stop_listening();
            }
            let mut max = self.batching.max_rows;
            if let Some(l) = self.batching.limit {
                max = max.min(l.saturating_sub(self.read) as usize);
                if max == 0 {
                    return Ok(None);
                }
            }
            let wait = if self.draining {
                Duration::ZERO
            } else {
                Duration::from_millis(100)
            };
            let records = self
                .reader
                .read(max, self.batching.max_bytes, wait)
                .map_err(|e| ConnectorError::Other(e.to_string()))?;
            if !records.is_empty() {
                self.last_record = Instant::now();
                return Ok(Some(self.batch(records)));
            }
            if self.draining {
                return Ok(None);
            }
            if let Some(idle) = self.exit_when_idle
                && self.last_record.elapsed() >= idle
                && self.front.open() == 0
            {
                self.stop_listening();
            }
        }
    }

    fn progress(&self) -> (u64, Option<u64>) {
        (self.bytes, None)
    }

    fn warnings(&self) -> Vec<String> {
        vec![self.front.describe()]
    }

    fn positions(&mut self) -> Option<Vec<Position>> {
        let end = self.last_end.take()?;
        Some(vec![("spool".into(), 0, end as i64)])
    }

    fn commit(&mut self, positions: &[Position], _last: bool) -> Result<(), ConnectorError> {
        let Some(end) = positions.iter().map(|p| p.2).max() else {
            return Ok(());
        };
        self.reader
            .commit(end as u64)
            .map_err(|e| ConnectorError::Other(e.to_string()))
    }
}

/// A listener's counters, as its front reports them.
pub trait Counters: Send + Sync + 'static {
    /// Senders connected (or requests in progress) now.
    fn open(&self) -> usize;
    /// One summary line for the listener at `at`.
    fn describe(&self, at: &str) -> String;
}

/// The front of a network listener: its counters, its address and its task.
pub struct ListenerFront<C: Counters> {
    pub stats: Arc<C>,
    pub at: String,
    pub listening: Listening,
}

impl<C: Counters> Front for ListenerFront<C> {
    /// Stops accepting; what is in progress is answered first.
    fn stop(&mut self) {
        self.listening.stop();
    }

    fn open(&self) -> usize {
        self.stats.open()
    }

    fn describe(&self) -> String {
        self.stats.describe(&self.at)
    }
}

/// Opens a listener's spool (cutting what a crash tore); says when a tail waits.
pub fn open_spool(
    what: &str,
    dir: &std::path::Path,
    options: super::spool::SpoolOptions,
) -> Result<(super::spool::Spool, SpoolReader), ConnectorError> {
    let (spool, reader) = super::spool::Spool::open(dir, options)
        .map_err(|e| ConnectorError::Other(format!("{what}: {e}")))?;
    let pending = spool.pending_bytes();
    if pending > 0 {
        tracing::info!(
            pending_bytes = pending,
            "{what}: processing the spool's unprocessed tail first"
        );
    }
    Ok((spool, reader))
}

/// Binds `addr` for the runtime (call within it); returns the listener and the address
/// it got (port 0 picks one).
pub fn bind(
    what: &str,
    addr: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, String), ConnectorError> {
    let failed =
        |e: std::io::Error| ConnectorError::Other(format!("{what}: listen on {addr}: {e}"));
    let std_listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(failed)?;
    let listener = tokio::net::TcpListener::from_std(std_listener).map_err(failed)?;
    let at = listener
        .local_addr()
        .map_or_else(|_| addr.to_string(), |a| a.to_string());
    Ok((listener, at))
}

/// A listener task and the switch that stops it: what both fronts hold.
pub struct Listening {
    pub stop: tokio::sync::watch::Sender<bool>,
    pub task: Option<tokio::task::JoinHandle<()>>,
    pub handle: tokio::runtime::Handle,
}

impl Listening {
    /// Starts `task` (given the stop signal) on the current runtime.
    pub fn spawn<Fut>(task: impl FnOnce(tokio::sync::watch::Receiver<bool>) -> Fut) -> Self
    where
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, rx) = tokio::sync::watch::channel(false);
        Listening {
            stop,
            task: Some(tokio::spawn(task(rx))),
            handle: tokio::runtime::Handle::current(),
        }
    }

    /// Signals the stop and waits for the task to finish what it holds.
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = self.handle.block_on(t);
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
