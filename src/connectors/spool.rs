//! The spool: a durable local queue (write-ahead log) between a network listener and the
//! flow. A listener may acknowledge a message only once it is here: appended and fsynced.
//! The flow then reads it like a Kafka partition and commits what it finished, so a
//! `kill -9` loses nothing that was acknowledged, and a restart processes the unfinished tail.
//!
//! Appends go to one writer thread that takes every append waiting, writes them and fsyncs
//! once (group commit: many connections share one fsync). The spool is bounded: when the
//! records not yet processed exceed `max_bytes`, or the oldest has waited longer than
//! `max_age`, appends are refused (the listener answers "busy") until the flow catches up.
//!
//! On disk: segment files named by the offset of their first byte (`<20 digits>.spool`) and a
//! `commit` file with the offset to resume from. A record is
//! `len: u32 LE, crc32(body): u32 LE, body = [at_ms: u64 LE, origin_len: u16 LE, origin,
//! payload]`; its offset is the position of its first byte in the whole log.
//! A torn tail (a crash mid-write, before the fsync that would have allowed its ACK) is cut off
//! at open.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Record header: length and checksum.
const HEADER: usize = 8;
/// Body prefix: timestamp and origin length.
const BODY_PREFIX: usize = 10;
/// Appends taken into one write + fsync at most.
const GROUP_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool full: {pending} bytes waiting to be processed (limit {limit})")]
    Full { pending: u64, limit: u64 },
    #[error("spool stalled: the oldest message has waited {waited_s} s (limit {limit_s} s)")]
    Stalled { waited_s: u64, limit_s: u64 },
    #[error("spool {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("spool {path}: record at offset {offset}: {why}")]
    Corrupt {
        path: String,
        offset: u64,
        why: String,
    },
    #[error("spool closed")]
    Closed,
    /// The Kafka hand-off (`connectors::handoff`) did not get the brokers' acknowledgement.
    #[error("hand-off to topic {topic}: {why}")]
    Handoff { topic: String, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Limits and layout.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Records not yet processed, in bytes, before appends are refused.
    pub max_bytes: u64,
    /// How long the oldest unprocessed record may wait before appends are refused.
    pub max_age: Duration,
    /// A new segment file starts past this size (processed segments are deleted whole).
    pub segment_bytes: u64,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
            segment_bytes: 64 << 20,
        }
    }
}

/// A listener's `spool`, `spool_max_bytes` and `spool_max_age` keys, planned: the directory
/// (default `<pipeline>.spool` beside the pipeline) and the limits.
pub fn plan_spool(
    cx: &mut crate::config::PlanCx<'_>,
    dir: &Option<crate::config::Spanned<String>>,
    max_bytes: &Option<crate::config::Spanned<u64>>,
    max_age: &Option<crate::config::Spanned<String>>,
) -> (PathBuf, SpoolOptions) {
    let defaults = SpoolOptions::default();
    let options = SpoolOptions {
        max_bytes: max_bytes.as_deref().copied().unwrap_or(defaults.max_bytes),
        max_age: cx.duration_or(max_age, defaults.max_age),
        ..defaults
    };
    let dir = match dir {
        Some(p) => cx.resolve(p),
        None => cx.resolve(&format!("{}.spool", cx.pipeline)),
    };
    (dir, options)
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct SpoolRecord {
    pub offset: u64,
    /// Offset of the next record.
    pub end: u64,
    pub at_ms: i64,
    pub origin: String,
    pub payload: Vec<u8>,
}

/// What the writer, the reader and the appenders share.
#[derive(Default)]
struct State {
    /// Everything below is written and fsynced.
    durable_end: u64,
    /// Everything below is processed (the `commit` file holds it).
    committed: u64,
    /// When the oldest unprocessed record was appended (None: nothing waits).
    oldest_pending_ms: Option<i64>,
    closed: bool,
}

struct Shared {
    dir: PathBuf,
    options: SpoolOptions,
    state: Mutex<State>,
    /// Signalled when `durable_end` moves or the spool closes.
    grown: Condvar,
}

/// Records written together (in one group, so all or none are durable): (origin, payload).
struct Append {
    records: Vec<(String, Vec<u8>)>,
    /// Each record's offset, once durable.
    reply: tokio::sync::oneshot::Sender<Result<Vec<u64>, SpoolError>>,
}

/// The appending side (cheap to clone: one per connection).
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
    tx: tokio::sync::mpsc::Sender<Append>,
    writer_failed: Arc<AtomicBool>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.spool"))
}

/// Segment bases, ascending.
fn segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = name
            .strip_suffix(".spool")
            .and_then(|b| b.parse::<u64>().ok())
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn encode(out: &mut Vec<u8>, at_ms: i64, origin: &str, payload: &[u8]) {
    let origin = &origin.as_bytes()[..origin.len().min(u16::MAX as usize)];
    let body_len = BODY_PREFIX + origin.len() + payload.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&at_ms.to_le_bytes());
    out.extend_from_slice(&(origin.len() as u16).to_le_bytes());
    out.extend_from_slice(origin);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads the record at the reader's position; Ok(None) at a clean end of file, Err(why) for a
/// torn or corrupt record.
/// A record as read: (appended at, origin, payload, bytes on disk).
type Read1 = (i64, String, Vec<u8>, u64);

fn read_record(r: &mut impl Read) -> Result<Option<Read1>, String> {
    let mut header = [0u8; HEADER];
    match read_full(r, &mut header) {
        Ok(0) => return Ok(None),
        Ok(n) if n < HEADER => return Err(format!("header cut after {n} bytes")),
        Ok(_) => {}
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len < BODY_PREFIX {
        return Err(format!("length {len} is too short"));
    }
    let mut body = vec![0u8; len];
    match read_full(r, &mut body) {
        Ok(n) if n < len => return Err(format!("body cut at {n} of {len} bytes")),
        Ok(_) => {}
        Err(e) => return Err(e.to_string()),
    }
    if crc32fast::hash(&body) != crc {
        return Err("checksum mismatch".into());
    }
    let at_ms = i64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    let origin_len = u16::from_le_bytes(body[8..10].try_into().expect("2 bytes")) as usize;
    if BODY_PREFIX + origin_len > len {
        return Err(format!("origin length {origin_len} exceeds the record"));
    }
    let origin = String::from_utf8_lossy(&body[BODY_PREFIX..BODY_PREFIX + origin_len]).into_owned();
    let payload = body.split_off(BODY_PREFIX + origin_len);
    Ok(Some((at_ms, origin, payload, (HEADER + len) as u64)))
}

/// Like `read_exact`, but returns how much was read before the end of the file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`: cuts a torn tail, then starts the writer thread.
    /// Returns the spool and a reader positioned at the first unprocessed record.
    pub fn open(dir: &Path, options: SpoolOptions) -> Result<(Spool, SpoolReader), SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let committed = read_commit(dir)?;
        let mut bases = segments(dir)?;
        // Segments wholly before the commit were processed (a crash may have kept them).
        while bases.len() > 1 && bases[1] <= committed {
            let _ = std::fs::remove_file(segment_path(dir, bases.remove(0)));
        }
        let (tail_base, tail_len) = match bases.last() {
            Some(&base) => (base, recover_tail(dir, base)?),
            None => {
                let base = committed;
                File::create(segment_path(dir, base)).map_err(io_err(dir))?;
                sync_dir(dir)?;
                (base, 0)
            }
        };
        let durable_end = tail_base + tail_len;
        if committed > durable_end {
            return Err(SpoolError::Corrupt {
                path: dir.display().to_string(),
                offset: committed,
                why: format!("the commit is past the end of the log ({durable_end})"),
            });
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            options,
            state: Mutex::new(State {
                durable_end,
                committed,
                // Unknown until the reader sees it; a restart gives the tail a fresh max_age.
                oldest_pending_ms: (durable_end > committed).then(now_ms),
                closed: false,
            }),
            grown: Condvar::new(),
        });
        let (tx, rx) = tokio::sync::mpsc::channel::<Append>(GROUP_MAX);
        let writer_failed = Arc::new(AtomicBool::new(false));
        let path = segment_path(dir, tail_base);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let writer = Writer {
            shared: shared.clone(),
            file,
            base: tail_base,
            len: tail_len,
            failed: writer_failed.clone(),
        };
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(dir))?;
        let reader = SpoolReader {
            shared: shared.clone(),
            position: committed,
            file: None,
            in_flight: VecDeque::new(),
        };
        Ok((
            Spool {
                shared,
                tx,
                writer_failed,
            },
            reader,
        ))
    }

    /// Appends a record and resolves once it is durable, with its offset. Waits (does not
    /// buffer) while the writer is busy: that is the listener's backpressure.
    pub async fn append(&self, origin: String, payload: Vec<u8>) -> Result<u64, SpoolError> {
        let offsets = self.append_all(vec![(origin, payload)]).await?;
        Ok(offsets[0])
    }

    /// Appends records (origin, payload) atomically: all are durable, or none is written.
    /// Resolves with each one's offset.
    pub async fn append_all(
        &self,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<u64>, SpoolError> {
        if self.writer_failed.load(Ordering::Relaxed) {
            return Err(SpoolError::Closed);
        }
        let (reply, done) = tokio::sync::oneshot::channel();
        let append = Append { records, reply };
        // The channel is bounded: a full one means the disk is the bottleneck; wait for it.
        self.tx.send(append).await.map_err(|_| SpoolError::Closed)?;
        done.await.unwrap_or(Err(SpoolError::Closed))
    }

    /// Bytes appended but not processed yet.
    pub fn pending_bytes(&self) -> u64 {
        let s = self.shared.state.lock().expect("spool state");
        s.durable_end - s.committed
    }
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    file: File,
    base: u64,
    len: u64,
    failed: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, mut rx: tokio::sync::mpsc::Receiver<Append>) {
        let mut buf = Vec::new();
        let mut group: Vec<(Append, Vec<u64>)> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut appends = vec![first];
            while appends.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(a) => appends.push(a),
                    Err(_) => break,
                }
            }
            buf.clear();
            group.clear();
            let at = now_ms();
            let (start, limit_check) = {
                let s = self.shared.state.lock().expect("spool state");
                (s.durable_end, (s.committed, s.oldest_pending_ms))
            };
            for a in appends {
                let offset = start + buf.len() as u64;
                if let Err(e) = self.admit(offset, limit_check, at) {
                    let _ = a.reply.send(Err(e));
                    continue;
                }
                let mut offsets = Vec::with_capacity(a.records.len());
                for (origin, payload) in &a.records {
                    offsets.push(start + buf.len() as u64);
                    encode(&mut buf, at, origin, payload);
                }
                group.push((a, offsets));
            }
            if group.is_empty() {
                continue;
            }
            let written = self
                .file
                .write_all(&buf)
                .and_then(|()| self.file.sync_data());
            if let Err(e) = written {
                // A failed fsync leaves the file's state unknown: stop taking appends.
                tracing::error!(error = %e, "spool write failed; refusing further messages");
                self.failed.store(true, Ordering::Relaxed);
                for (a, _) in group.drain(..) {
                    let _ = a.reply.send(Err(SpoolError::Closed));
                }
                return;
            }
            self.len += buf.len() as u64;
            {
                let mut s = self.shared.state.lock().expect("spool state");
                s.durable_end = start + buf.len() as u64;
                s.oldest_pending_ms.get_or_insert(at);
            }
            self.shared.grown.notify_all();
            for (a, offsets) in group.drain(..) {
                let _ = a.reply.send(Ok(offsets));
            }
            if self.len >= self.shared.options.segment_bytes
                && let Err(e) = self.roll()
            {
                tracing::error!(error = %e, "spool segment roll failed; refusing further messages");
                self.failed.store(true, Ordering::Relaxed);
                return;
            }
        }
        let mut s = self.shared.state.lock().expect("spool state");
        s.closed = true;
        drop(s);
        self.shared.grown.notify_all();
    }

    /// Whether one more record fits the limits.
    fn admit(
        &self,
        offset: u64,
        (committed, oldest): (u64, Option<i64>),
        at: i64,
    ) -> Result<(), SpoolError> {
        let o = &self.shared.options;
        let pending = offset - committed;
        if pending >= o.max_bytes {
            return Err(SpoolError::Full {
                pending,
                limit: o.max_bytes,
            });
        }
        if let Some(t) = oldest {
            let waited = (at - t).max(0) as u64 / 1000;
            if waited > o.max_age.as_secs() {
                return Err(SpoolError::Stalled {
                    waited_s: waited,
                    limit_s: o.max_age.as_secs(),
                });
            }
        }
        Ok(())
    }

    fn roll(&mut self) -> Result<(), SpoolError> {
        let base = self.base + self.len;
        let path = segment_path(&self.shared.dir, base);
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(&self.shared.dir)?;
        self.base = base;
        self.len = 0;
        Ok(())
    }
}

/// Scans the last segment; cuts it after its last whole record. Returns its valid length.
fn recover_tail(dir: &Path, base: u64) -> Result<u64, SpoolError> {
    let path = segment_path(dir, base);
    let file = File::open(&path).map_err(io_err(&path))?;
    let size = file.metadata().map_err(io_err(&path))?.len();
    let mut r = std::io::BufReader::new(file);
    let mut valid = 0u64;
    loop {
        match read_record(&mut r) {
            Ok(Some((.., len))) => valid += len,
            Ok(None) => break,
            Err(why) => {
                // Never acknowledged: its fsync did not complete.
                tracing::warn!(
                    offset = base + valid,
                    cut_bytes = size - valid,
                    why = %why,
                    "spool: cutting a torn tail left by a crash"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(valid).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
                break;
            }
        }
    }
    Ok(valid)
}

fn read_commit(dir: &Path) -> Result<u64, SpoolError> {
    let path = dir.join("commit");
    match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().map_err(|_| SpoolError::Corrupt {
            path: path.display().to_string(),
            offset: 0,
            why: format!("commit file holds {:?}, not an offset", s.trim()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// The flow's side: reads durable records in order and commits processed offsets.
pub struct SpoolReader {
    shared: Arc<Shared>,
    position: u64,
    /// (segment base, reader at `position`).
    file: Option<(u64, std::io::BufReader<File>)>,
    /// First offset and append time of batches read but not committed.
    in_flight: VecDeque<(u64, i64)>,
}

impl SpoolReader {
    /// Up to `max_records` / `max_bytes` durable records from the current position, waiting up
    /// to `wait` for the first one. Empty: nothing arrived in time (or the spool closed).
    pub fn read(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Vec<SpoolRecord>, SpoolError> {
        let end = {
            let s = self.shared.state.lock().expect("spool state");
            let (s, _) = self
                .shared
                .grown
                .wait_timeout_while(s, wait, |s| s.durable_end <= self.position && !s.closed)
                .expect("spool state");
            s.durable_end
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        while self.position < end && out.len() < max_records && bytes < max_bytes {
            let rec = self.next_record()?;
            bytes += rec.payload.len();
            out.push(rec);
        }
        if let Some(first) = out.first() {
            self.in_flight.push_back((first.offset, first.at_ms));
        }
        Ok(out)
    }

    fn next_record(&mut self) -> Result<SpoolRecord, SpoolError> {
        let dir = self.shared.dir.clone();
        loop {
            if self.file.is_none() {
                self.open_at_position()?;
            }
            let (base, r) = self.file.as_mut().expect("opened above");
            let base = *base;
            let corrupt = |why: String| SpoolError::Corrupt {
                path: segment_path(&dir, base).display().to_string(),
                offset: self.position,
                why,
            };
            match read_record(r).map_err(corrupt)? {
                Some((at_ms, origin, payload, len)) => {
                    let offset = self.position;
                    self.position += len;
                    return Ok(SpoolRecord {
                        offset,
                        end: self.position,
                        at_ms,
                        origin,
                        payload,
                    });
                }
                // This segment is done: the writer rolled over to one starting here.
                None if base != self.position && segment_path(&dir, self.position).exists() => {
                    self.file = None;
                }
                None => return Err(corrupt("the log ends before its durable end".into())),
            }
        }
    }

    fn open_at_position(&mut self) -> Result<(), SpoolError> {
        let dir = &self.shared.dir;
        let base = segments(dir)?
            .iter()
            .rev()
            .find(|&&b| b <= self.position)
            .copied()
            .ok_or_else(|| SpoolError::Corrupt {
                path: dir.display().to_string(),
                offset: self.position,
                why: "no segment holds it".into(),
            })?;
        let path = segment_path(dir, base);
        let mut f = File::open(&path).map_err(io_err(&path))?;
        f.seek(SeekFrom::Start(self.position - base))
            .map_err(io_err(&path))?;
        self.file = Some((base, std::io::BufReader::with_capacity(256 << 10, f)));
        Ok(())
    }

    /// Everything below `offset` is processed: records it durably, deletes whole processed
    /// segments and frees their room for appends.
    pub fn commit(&mut self, offset: u64) -> Result<(), SpoolError> {
        let dir = self.shared.dir.clone();
        let tmp = dir.join("commit.tmp");
        let path = dir.join("commit");
        (|| -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(offset.to_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })()
        .map_err(io_err(&path))?;
        sync_dir(&dir)?;
        while self.in_flight.front().is_some_and(|(o, _)| *o < offset) {
            self.in_flight.pop_front();
        }
        {
            let mut s = self.shared.state.lock().expect("spool state");
            s.committed = offset;
            s.oldest_pending_ms = if offset >= s.durable_end {
                None
            } else {
                // The next batch read, else the time it was committed from (not yet read).
                Some(self.in_flight.front().map_or_else(now_ms, |(_, at)| *at))
            };
        }
        let bases = segments(&dir)?;
        for pair in bases.windows(2) {
            if pair[1] <= offset {
                let _ = std::fs::remove_file(segment_path(&dir, pair[0]));
            }
        }
        Ok(())
    }

    /// The offset of the next record to read.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Whether everything durable has been read.
    pub fn caught_up(&self) -> bool {
        self.shared.state.lock().expect("spool state").durable_end <= self.position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn appends_are_read_back_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let options = SpoolOptions {
            segment_bytes: 200,
            ..SpoolOptions::default()
        };
        let (spool, mut reader) = Spool::open(dir.path(), options.clone()).unwrap();
        let offsets: Vec<u64> = rt.block_on(async {
            let mut out = Vec::new();
            for i in 0..20 {
                out.push(
                    spool
                        .append(format!("peer{i}"), format!("MSH|{i}").into_bytes())
                        .await
                        .unwrap(),
                );
            }
            out
        });
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        let first = reader.read(12, usize::MAX, Duration::ZERO).unwrap();
        assert_eq!(first.len(), 12);
        assert_eq!(first[3].payload, b"MSH|3");
        assert_eq!(first[3].origin, "peer3");
        assert_eq!(first[3].offset, offsets[3]);
        reader.commit(first[11].end).unwrap();
        // Small segments (about 7 records each): processed ones are gone.
        assert!(segments(dir.path()).unwrap()[0] > 0);
        drop(spool);
        drop(reader);
        let (_spool, mut reader) = Spool::open(dir.path(), options).unwrap();
        let rest = reader.read(100, usize::MAX, Duration::ZERO).unwrap();
        let got: Vec<String> = rest
            .iter()
            .map(|r| String::from_utf8(r.payload.clone()).unwrap())
            .collect();
        assert_eq!(
            got,
            (12..20).map(|i| format!("MSH|{i}")).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_torn_tail_is_cut_and_what_was_durable_stays() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let (spool, _reader) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
        rt.block_on(async {
            spool.append("a".into(), b"one".to_vec()).await.unwrap();
            spool.append("a".into(), b"two".to_vec()).await.unwrap();
        });
        drop(spool);
        // A crash in the middle of the next write.
        let path = segment_path(dir.path(), 0);
        let mut partial = Vec::new();
        encode(&mut partial, 0, "a", b"three");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&partial[..partial.len() - 2]).unwrap();
        drop(f);
        let (spool, mut reader) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
        let got = reader.read(10, usize::MAX, Duration::ZERO).unwrap();
        assert_eq!(got.len(), 2);
        // Appends continue after the cut.
        rt.block_on(spool.append("a".into(), b"four".to_vec()))
            .unwrap();
        let got = reader.read(10, usize::MAX, Duration::from_secs(1)).unwrap();
        assert_eq!(got[0].payload, b"four");
    }

    #[test]
    fn a_full_spool_refuses_until_the_flow_commits() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let options = SpoolOptions {
            max_bytes: 100,
            ..SpoolOptions::default()
        };
        let (spool, mut reader) = Spool::open(dir.path(), options).unwrap();
        let payload = vec![b'x'; 40];
        rt.block_on(spool.append("a".into(), payload.clone()))
            .unwrap();
        rt.block_on(spool.append("a".into(), payload.clone()))
            .unwrap();
        let err = rt
            .block_on(spool.append("a".into(), payload.clone()))
            .unwrap_err();
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
        let got = reader.read(10, usize::MAX, Duration::ZERO).unwrap();
        reader.commit(got.last().unwrap().end).unwrap();
        rt.block_on(spool.append("a".into(), payload)).unwrap();
    }
}
