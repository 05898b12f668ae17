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
    /// Stops taking new work; what it holds is still answered (see `finished`).
    fn begin_stop(&mut self);
    /// Whether it has answered all it held and closed.
    fn finished(&self) -> bool;
    /// Waits until it is finished.
    fn stop(&mut self);
    /// Senders still connected (an idle exit waits until there are none).
    fn open(&self) -> usize;
    /// One line for the run summary (counters, never record content).
    fn describe(&self) -> String;
    /// Senders waiting for their records' fate (application ACKs), if any.
    fn settle(&self) -> Option<&Arc<Settle>> {
        None
    }
}

/// How long a stopping listener may wait for its senders' records to settle before it
/// closes their connections unanswered (they resend).
const SETTLE_ON_STOP: Duration = Duration::from_secs(30);

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
    /// Since when it stops taking new records.
    draining: Option<Instant>,
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
            draining: None,
        }
    }

    fn stop_listening(&mut self) {
        self.front.begin_stop();
        self.draining = Some(Instant::now());
    }

    /// Gathers more records until the batch is full or `max_delay` has passed since its
    /// first: a batch per message would cost the outputs a flush and an fsync each, and
    /// take the cores and the disk from the listener under load. ACKs do not wait for it
    /// (only `ack: after: processed` does).
    fn linger(
        &mut self,
        mut records: Vec<SpoolRecord>,
        max: usize,
    ) -> Result<Vec<SpoolRecord>, ConnectorError> {
        let deadline = Instant::now() + self.batching.max_delay;
        let mut bytes: usize = records.iter().map(|r| r.payload.len()).sum();
        while self.draining.is_none() && records.len() < max && bytes < self.batching.max_bytes {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let more = self
                .reader
                .read(max - records.len(), self.batching.max_bytes - bytes, left)
                .map_err(|e| ConnectorError::Other(e.to_string()))?;
            if more.is_empty() {
                break;
            }
            bytes += more.iter().map(|r| r.payload.len()).sum::<usize>();
            records.extend(more);
        }
        Ok(records)
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
    /// While stopping, senders may still wait for their records to settle (application
    /// ACKs): until the front has closed, an empty batch hands control back so the runtime
    /// commits, and commits settle them.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, ConnectorError> {
        loop {
            let limit_hit = self.batching.limit.is_some_and(|l| self.read >= l);
            if self.draining.is_none() && (self.stop.load(Ordering::Relaxed) || limit_hit) {
                self.stop_listening();
            }
            let mut max = self.batching.max_rows;
            if let Some(l) = self.batching.limit {
                max = max.min(l.saturating_sub(self.read) as usize);
            }
            let front_done = self.draining.is_some() && self.front.finished();
            let wait = if front_done {
                Duration::ZERO
            } else {
                Duration::from_millis(100)
            };
            let records = if max == 0 {
                // At the limit: nothing more is read, only what was read settles.
                std::thread::sleep(wait);
                Vec::new()
            } else {
                self.reader
                    .read(max, self.batching.max_bytes, wait)
                    .map_err(|e| ConnectorError::Other(e.to_string()))?
            };
            if !records.is_empty() {
                let records = self.linger(records, max)?;
                self.last_record = Instant::now();
                return Ok(Some(self.batch(records)));
            }
            if let Some(since) = self.draining {
                if front_done {
                    self.front.stop();
                    return Ok(None);
                }
                if since.elapsed() >= SETTLE_ON_STOP
                    && let Some(settle) = self.front.settle()
                {
                    settle.give_up();
                }
                return Ok(Some(RecordBatch::new_empty(raw_record_schema())));
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

    fn settlement(&self) -> Option<Arc<dyn super::Settlement>> {
        self.front
            .settle()
            .map(|s| s.clone() as Arc<dyn super::Settlement>)
    }
}

/// What became of a spooled record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered, filtered or parked for retry: nothing refused it.
    Accepted,
    /// Dead-lettered by `stage` (a stage or sink) for `rule`, with the located `reason`.
    Dead {
        stage: String,
        rule: String,
        reason: String,
    },
    /// The listener stopped before the record settled.
    Unknown,
}

/// Senders waiting for their records to settle, by spool offset. The dead-letter writer
/// reports refusals before the epoch covering them completes, and its completion settles
/// the rest as accepted.
#[derive(Default)]
pub struct Settle {
    state: std::sync::Mutex<SettleState>,
}

#[derive(Default)]
struct SettleState {
    waiting: std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<Verdict>>,
    /// Refusals, kept a while after they settled for a sender that registers late.
    dead: std::collections::BTreeMap<u64, (Instant, Verdict)>,
    settled_below: u64,
}

/// How long a refusal is remembered after its commit.
const DEAD_KEPT: Duration = Duration::from_secs(60);

impl Settle {
    /// The verdict on the record at `offset`, once its epoch completes.
    pub fn wait(&self, offset: u64) -> tokio::sync::oneshot::Receiver<Verdict> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut s = self.state.lock().expect("settle");
        tracing::debug!(offset, settled_below = s.settled_below, "settle: waiting");
        if offset < s.settled_below {
            // Settled between the spool append and now.
            let v = s
                .dead
                .get(&offset)
                .map_or(Verdict::Accepted, |(_, v)| v.clone());
            let _ = tx.send(v);
        } else {
            s.waiting.insert(offset, tx);
        }
        rx
    }

    /// Everything below `end` has settled: answers its waiters.
    pub fn settled(&self, end: u64) {
        let mut s = self.state.lock().expect("settle");
        let s = &mut *s;
        tracing::debug!(
            end,
            dead = s.dead.len(),
            waiting = s.waiting.len(),
            "settle: settled"
        );
        s.settled_below = s.settled_below.max(end);
        let rest = s.waiting.split_off(&end);
        for (offset, tx) in std::mem::replace(&mut s.waiting, rest) {
            let v = s
                .dead
                .get(&offset)
                .map_or(Verdict::Accepted, |(_, v)| v.clone());
            let _ = tx.send(v);
        }
        s.dead
            .retain(|&offset, (at, _)| offset >= end || at.elapsed() < DEAD_KEPT);
    }

    /// Answers every waiter `Unknown` (the listener is closing).
    pub fn give_up(&self) {
        let mut s = self.state.lock().expect("settle");
        for (_, tx) in std::mem::take(&mut s.waiting) {
            let _ = tx.send(Verdict::Unknown);
        }
    }
}

impl super::Settlement for Settle {
    fn complete(&self, positions: &[Position]) {
        if let Some(end) = positions.iter().map(|p| p.2).max() {
            self.settled(end.max(0) as u64);
        }
    }

    fn dead_letter(&self, offset: i64, stage: &str, rule: &str, reason: &str) {
        let Ok(offset) = u64::try_from(offset) else {
            return;
        };
        let mut s = self.state.lock().expect("settle");
        tracing::debug!(offset, stage, "settle: dead letter");
        s.dead.entry(offset).or_insert_with(|| {
            (
                Instant::now(),
                Verdict::Dead {
                    stage: stage.to_string(),
                    rule: rule.to_string(),
                    reason: reason.to_string(),
                },
            )
        });
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
    pub settle: Option<Arc<Settle>>,
}

impl<C: Counters> Front for ListenerFront<C> {
    /// Stops accepting; what is in progress is answered first.
    fn begin_stop(&mut self) {
        let _ = self.listening.stop.send(true);
    }

    fn finished(&self) -> bool {
        self.listening.task.as_ref().is_none_or(|t| t.is_finished())
    }

    fn stop(&mut self) {
        self.listening.stop();
    }

    fn settle(&self) -> Option<&Arc<Settle>> {
        self.settle.as_ref()
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
