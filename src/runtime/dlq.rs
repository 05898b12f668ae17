//! A pipeline's dead letters, read back and replayed: what `plexus dlq`, `plexus replay` and
//! the server's dead-letter routes share.
//!
//! Replay is idempotent. Every dead letter replayed is recorded (after its re-injected copy
//! is acknowledged by the brokers) in a ledger topic `<dlq topic>.replayed`, keyed by the
//! dead letter's partition/offset; a later replay skips what the ledger holds. Copies of one
//! failure that a crash-recovery wrote twice (same original record, same attempt) are
//! replayed once. A record that fails again after its replay is a new dead letter (attempt
//! n+1) and can be replayed again.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::connectors::kafka::{KafkaConnection, Origin, headers, is_plexus_header};
use crate::spec::PipelineSpec;

/// A dead letter read back from its topic or file. Serialized, it is the metadata only:
/// the original record (patient data) is never part of it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub stage: String,
    pub rule: String,
    pub error: String,
    pub attempt: i64,
    pub first_failed_at: String,
    pub failed_at: String,
    pub source_topic: Option<String>,
    pub source_partition: Option<i64>,
    pub source_offset: Option<i64>,
    pub correlation_id: Option<String>,
    #[serde(skip)]
    pub record: Vec<u8>,
    /// The original record's Kafka key and headers, restored on replay.
    #[serde(skip)]
    pub origin: Origin,
}

/// A DLQ topic and what replays to it need.
pub struct DlqTopic {
    pub conn: KafkaConnection,
    pub topic: String,
    pub pipeline: String,
}

/// Where a pipeline's dead letters are.
pub enum DlqLocation {
    Topic(DlqTopic),
    /// An NDJSON file (file-mode pipelines), and the source's format (for a replay file).
    File {
        path: PathBuf,
        format: Option<String>,
    },
}

impl DlqLocation {
    /// Where `spec` puts its dead letters; `output` is `plexus run --output`, if given.
    pub fn of(spec: &PipelineSpec, output: Option<&Path>) -> Result<DlqLocation> {
        let Some(topic) = spec
            .dlq
            .as_ref()
            .and_then(|d| d.topic.as_ref())
            .map(|t| t.to_string())
        else {
            // As `plexus run` places it: the `dlq.path`, else `<name>.dlq.ndjson`, moved
            // into the `--output` directory when one is given.
            let path = spec
                .dlq
                .as_ref()
                .and_then(|d| d.path.as_ref())
                .map(|p| spec.resolve(p))
                .unwrap_or_else(|| PathBuf::from(format!("{}.dlq.ndjson", spec.name.as_str())));
            let path = match output {
                Some(d) => d.join(path.file_name().unwrap_or_default()),
                None => path,
            };
            let format = Some(spec.source.format().to_string());
            return Ok(DlqLocation::File { path, format });
        };
        let k = spec.kafka.as_ref().context("no `kafka:` block")?;
        let conn = KafkaConnection {
            brokers: k.brokers.as_ref().map(|b| b.to_string()),
            properties: k
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            secrets: k
                .secrets
                .iter()
                .map(|(k, v)| {
                    crate::net::secret::SecretRef::parse(v)
                        .map(|r| (k.clone(), r))
                        .map_err(anyhow::Error::msg)
                })
                .collect::<Result<_>>()?,
            max_outage: None,
        };
        Ok(DlqLocation::Topic(DlqTopic {
            conn,
            topic,
            pipeline: spec.name.to_string(),
        }))
    }

    /// Every dead letter, oldest first.
    pub fn read(&self) -> Result<Vec<DeadLetter>> {
        match self {
            DlqLocation::Topic(t) => read_dead_letters(&t.conn, &t.topic),
            DlqLocation::File { path, .. } => read_dlq_file(path),
        }
    }

    /// A dead letter's address: `PARTITION:OFFSET` on a topic, the line number in a file.
    pub fn address(&self, d: &DeadLetter) -> String {
        match self {
            DlqLocation::Topic(_) => format!("{}:{}", d.partition, d.offset),
            DlqLocation::File { .. } => d.offset.to_string(),
        }
    }

    /// The dead letter at `at` (as `address` gives it; `line N` is taken for a file).
    pub fn find<'a>(&self, all: &'a [DeadLetter], at: &str) -> Result<Option<&'a DeadLetter>> {
        Ok(match self {
            DlqLocation::Topic(_) => {
                let (p, o) = at
                    .split_once(':')
                    .and_then(|(p, o)| Some((p.parse::<i32>().ok()?, o.parse::<i64>().ok()?)))
                    .context("a DLQ topic's dead letter is PARTITION:OFFSET, e.g. 0:42")?;
                all.iter().find(|d| d.partition == p && d.offset == o)
            }
            DlqLocation::File { .. } => {
                let line: i64 = at
                    .trim_start_matches("line")
                    .trim()
                    .parse()
                    .context("a DLQ file's dead letter is its LINE number, e.g. 3")?;
                all.iter().find(|d| d.offset == line)
            }
        })
    }

    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            DlqLocation::Topic(t) => t.topic.clone(),
            DlqLocation::File { path, .. } => path.display().to_string(),
        }
    }
}

/// The dead letters of a DLQ file, as `DeadLetter`s: `offset` is the line number (1-based),
/// `source_topic`/`source_offset` the input file and byte offset the record came from. A line
/// that does not read is an error naming it (the file is ours; it must not be skipped).
pub fn read_dlq_file(path: &Path) -> Result<Vec<DeadLetter>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        // A clean run leaves no DLQ file behind.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let r: crate::connectors::dlq::DeadLetterRecord = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a dead letter", path.display(), i + 1))?;
        let record = match (&r.record, &r.record_hex) {
            (Some(t), _) => t.as_bytes().to_vec(),
            (None, Some(h)) => (0..h.len() / 2)
                .map(|j| u8::from_str_radix(&h[2 * j..2 * j + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .with_context(|| format!("{}:{}: bad record_hex", path.display(), i + 1))?,
            (None, None) => Vec::new(),
        };
        out.push(DeadLetter {
            partition: 0,
            offset: i as i64 + 1,
            key: r
                .record_index
                .map(|x| format!("{}#{x}", r.source.as_deref().unwrap_or_default()))
                .unwrap_or_else(|| format!("line {}", i + 1)),
            stage: r.stage,
            rule: r.rule,
            error: r.reason,
            attempt: 1,
            first_failed_at: r.failed_at.clone(),
            failed_at: r.failed_at,
            source_topic: r.source,
            source_partition: None,
            source_offset: r.offset,
            correlation_id: r.control_id,
            record,
            origin: Origin::default(),
        });
    }
    Ok(out)
}

/// Reads a whole topic from the beginning to its end as of now (each partition's high
/// watermark, read first) with `f` per message. Ends by offsets, not by partition-EOF events
/// or a quiet pause: librdkafka reports EOF as an error event (logged at ERROR), and a pause
/// cannot tell a slow broker from the end.
fn read_topic(
    conn: &KafkaConnection,
    topic: &str,
    mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<()> {
    let mut cc = conn.client_config().map_err(anyhow::Error::msg)?;
    cc.set("group.id", "plexus-dlq-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer<crate::connectors::kafka::Quiet> = cc
        .create_with_context(crate::connectors::kafka::Quiet)
        .context("creating a consumer")?;
    let timeout = Duration::from_secs(10);
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading metadata of {topic}"))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    // Where each partition ends now; partitions already empty are not read at all.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .with_context(|| format!("reading the end offsets of {topic}/{p}"))?;
        if high > low {
            ends.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
        }
    }
    if ends.is_empty() {
        // A topic that does not exist yet, or is empty, holds no dead letters.
        return Ok(());
    }
    consumer.assign(&tpl)?;
    let mut last = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let (p, o) = (m.partition(), m.offset());
                if ends.get(&p).is_some_and(|&end| o < end) {
                    f(&m);
                }
                // Transaction markers take offsets too: the end is reached at end - 1 or
                // beyond, whichever record comes last.
                if ends.get(&p).is_some_and(|&end| o + 1 >= end) {
                    ends.remove(&p);
                }
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None => {
                // The rest of a partition may be control records (transaction markers) that
                // are never delivered: its position tells.
                let positions = consumer.position()?;
                for e in positions.elements() {
                    if let Offset::Offset(o) = e.offset()
                        && ends.get(&e.partition()).is_some_and(|&end| o >= end)
                    {
                        ends.remove(&e.partition());
                    }
                }
                if last.elapsed() > Duration::from_secs(30) {
                    bail!("reading {topic}: no progress for 30 s before its end");
                }
            }
        }
    }
    Ok(())
}

fn header<'a>(m: &'a rdkafka::message::BorrowedMessage<'_>, key: &str) -> Option<&'a str> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

fn dead_letter(m: &rdkafka::message::BorrowedMessage<'_>) -> DeadLetter {
    let s = |k| header(m, k).unwrap_or_default().to_string();
    let n = |k| header(m, k).and_then(|v| v.parse::<i64>().ok());
    DeadLetter {
        partition: m.partition(),
        offset: m.offset(),
        key: m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default(),
        stage: s(headers::STAGE),
        rule: s(headers::RULE),
        error: s(headers::ERROR),
        attempt: n(headers::ATTEMPT).unwrap_or(1),
        first_failed_at: s(headers::FIRST_FAILED_AT),
        failed_at: s(headers::FAILED_AT),
        source_topic: header(m, headers::SOURCE_TOPIC).map(str::to_string),
        source_partition: n(headers::SOURCE_PARTITION),
        source_offset: n(headers::SOURCE_OFFSET),
        correlation_id: header(m, headers::CORRELATION_ID).map(str::to_string),
        record: m.payload().unwrap_or_default().to_vec(),
        origin: Origin {
            key: m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == headers::SOURCE_KEY)
                    .and_then(|h| h.value.map(<[u8]>::to_vec))
            }),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .filter(|h| !is_plexus_header(h.key))
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        },
    }
}

/// Every dead letter on the pipeline's DLQ topic, oldest first per partition.
pub fn read_dead_letters(conn: &KafkaConnection, topic: &str) -> Result<Vec<DeadLetter>> {
    let mut out = Vec::new();
    read_topic(conn, topic, |m| out.push(dead_letter(m)))?;
    out.sort_by_key(|d| (d.failed_at.clone(), d.partition, d.offset));
    Ok(out)
}

/// Creates the replay ledger (compacted: one entry per dead letter) unless it exists.
async fn ensure_ledger(conn: &KafkaConnection, topic: &str) -> Result<()> {
    crate::connectors::kafka::ensure_topics(conn, &[(topic.to_string(), 1, true)])
        .await
        .with_context(|| format!("creating the replay ledger {topic}"))
}

/// The columns a filter sees (`record` only when `with_record`).
fn filter_batch(dead: &[DeadLetter], with_record: bool) -> Result<RecordBatch> {
    let text = |f: &dyn Fn(&DeadLetter) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(dead.iter().map(f).collect::<Vec<_>>()))
    };
    let int = |f: &dyn Fn(&DeadLetter) -> Option<i64>| -> ArrayRef {
        Arc::new(Int64Array::from(dead.iter().map(f).collect::<Vec<_>>()))
    };
    let mut fields = vec![
        Field::new("stage", DataType::Utf8, true),
        Field::new("rule", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("attempt", DataType::Int64, true),
        Field::new("source_topic", DataType::Utf8, true),
        Field::new("source_partition", DataType::Int64, true),
        Field::new("source_offset", DataType::Int64, true),
        Field::new("correlation_id", DataType::Utf8, true),
        Field::new("failed_at", DataType::Utf8, true),
    ];
    let mut columns = vec![
        text(&|d| Some(d.stage.clone())),
        text(&|d| Some(d.rule.clone())),
        text(&|d| Some(d.error.clone())),
        int(&|d| Some(d.attempt)),
        text(&|d| d.source_topic.clone()),
        int(&|d| d.source_partition),
        int(&|d| d.source_offset),
        text(&|d| d.correlation_id.clone()),
        text(&|d| Some(d.failed_at.clone())),
    ];
    if with_record {
        fields.push(Field::new("record", DataType::Utf8, true));
        columns.push(text(&|d| {
            Some(String::from_utf8_lossy(&d.record).into_owned())
        }));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Which dead letters a filter keeps (all without one).
pub fn filtered(all: &[DeadLetter], filter: Option<&str>, on_record: bool) -> Result<Vec<bool>> {
    match filter {
        Some(sql) => {
            let batch = filter_batch(all, on_record)?;
            let planner = crate::sql::SqlPlanner::new();
            let pred = planner
                .predicate("filter", sql, &batch.schema())
                .map_err(|e| anyhow::anyhow!("filter: {e}"))?;
            let mask = pred.evaluate(&batch)?;
            let mask = crate::operators::true_mask(mask.as_boolean());
            Ok((0..all.len()).map(|i| mask.value(i)).collect())
        }
        None => Ok(vec![true; all.len()]),
    }
}

/// What to replay and how.
#[derive(Debug, Default, Clone)]
pub struct ReplayRequest {
    /// A SQL condition over the columns `filter_columns` names.
    pub filter: Option<String>,
    /// Whether the filter may see the original record (the `record` column): callers
    /// without the right to read patient data filter on the metadata only.
    pub filter_on_record: bool,
    /// A topic DLQ: where to re-inject (default: each record's original topic).
    pub to_topic: Option<String>,
    /// A file DLQ: where to write the original records (default: beside the DLQ file).
    pub to_file: Option<PathBuf>,
    pub dry_run: bool,
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Default, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ReplayReport {
    /// Dead letters in the DLQ.
    pub dead_letters: usize,
    /// Those the filter kept.
    pub matched: usize,
    /// Records re-injected (or written to the replay file).
    pub replayed: usize,
    /// Kept but replayed by an earlier replay (the ledger holds them).
    pub replayed_before: usize,
    /// Kept but copies of a failure already counted (replayed once).
    pub duplicates: usize,
    /// Each record replayed (or to be) and where to.
    pub targets: Vec<ReplayTarget>,
    /// A file DLQ: the file written, to re-run with `plexus run --input`.
    pub file: Option<String>,
    pub dry_run: bool,
}

/// One dead letter replayed: its address in the DLQ and where its record went.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ReplayTarget {
    pub at: String,
    pub to: String,
}

/// Replays `loc`'s dead letters as `req` says.
pub fn replay(loc: &DlqLocation, req: &ReplayRequest) -> Result<ReplayReport> {
    match loc {
        DlqLocation::Topic(t) => replay_topic(t, req),
        DlqLocation::File { path, format } => replay_file(path, format.as_deref(), req),
    }
}

/// A file DLQ's replay: the original records (each once, in DLQ order) written to a file that
/// a re-run takes as its input. The re-run is the user's: it replaces its outputs, so it
/// belongs in a directory of its own (`--output`).
fn replay_file(path: &Path, format: Option<&str>, req: &ReplayRequest) -> Result<ReplayReport> {
    let ext = match format.unwrap_or("hl7") {
        "hl7" => "hl7",
        "ndjson" | "json" => "ndjson",
        other => bail!(
            "replaying {other} dead letters is not supported (a {other} record needs its file's header): fix the input and re-run"
        ),
    };
    let all = read_dlq_file(path)?;
    let keep = filtered(&all, req.filter.as_deref(), req.filter_on_record)?;
    let mut report = ReplayReport {
        dead_letters: all.len(),
        dry_run: req.dry_run,
        ..ReplayReport::default()
    };
    let mut seen = HashSet::new();
    let mut picked = Vec::new();
    for (d, keep) in all.iter().zip(keep) {
        if !keep {
            continue;
        }
        report.matched += 1;
        // A record dead-lettered at two stages (or twice) is replayed once.
        if !d.record.is_empty() && seen.insert(d.key.clone()) {
            picked.push(d);
        } else {
            report.duplicates += 1;
        }
    }
    let to = req.to_file.clone().unwrap_or_else(|| {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        path.with_file_name(format!("{name}.replay.{ext}"))
    });
    report.file = Some(to.display().to_string());
    report.replayed = picked.len();
    report.targets = picked
        .iter()
        .map(|d| ReplayTarget {
            at: d.offset.to_string(),
            to: to.display().to_string(),
        })
        .collect();
    if req.dry_run {
        return Ok(report);
    }
    let mut out = Vec::new();
    for d in &picked {
        out.extend_from_slice(&d.record);
        if !matches!(d.record.last(), Some(b'\r' | b'\n')) {
            out.push(if ext == "hl7" { b'\r' } else { b'\n' });
        }
        if ext == "hl7" {
            // Messages apart on their own lines, as in a batch file.
            out.push(b'\n');
        }
    }
    // An integration that never ran has no output directory yet.
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&to, &out).with_context(|| format!("writing {}", to.display()))?;
    Ok(report)
}

fn replay_topic(t: &DlqTopic, req: &ReplayRequest) -> Result<ReplayReport> {
    let ledger_topic = format!("{}.replayed", t.topic);
    let all = read_dead_letters(&t.conn, &t.topic)?;
    let mut replayed: HashSet<(i32, i64)> = HashSet::new();
    read_topic(&t.conn, &ledger_topic, |m| {
        if let Some(k) = m.key().and_then(|k| std::str::from_utf8(k).ok())
            && let Some((p, o)) = k.split_once(':')
            && let (Ok(p), Ok(o)) = (p.parse(), o.parse())
        {
            replayed.insert((p, o));
        }
    })?;
    let keep = filtered(&all, req.filter.as_deref(), req.filter_on_record)?;
    let mut report = ReplayReport {
        dead_letters: all.len(),
        dry_run: req.dry_run,
        ..ReplayReport::default()
    };
    let mut seen_failures: HashSet<(String, i64)> = HashSet::new();
    let mut todo = Vec::new();
    for (d, keep) in all.iter().zip(keep) {
        if !keep {
            continue;
        }
        report.matched += 1;
        if replayed.contains(&(d.partition, d.offset)) {
            report.replayed_before += 1;
            continue;
        }
        if !seen_failures.insert((d.key.clone(), d.attempt)) {
            report.duplicates += 1;
            todo.push((d, false));
            continue;
        }
        todo.push((d, true));
    }
    for (d, send) in &todo {
        if !*send {
            continue;
        }
        let Some(topic) = req.to_topic.as_deref().or(d.source_topic.as_deref()) else {
            bail!(
                "dead letter {}:{} has no source topic header: name a topic to replay to",
                d.partition,
                d.offset
            );
        };
        report.targets.push(ReplayTarget {
            at: format!("{}:{}", d.partition, d.offset),
            to: topic.to_string(),
        });
    }
    report.replayed = report.targets.len();
    if req.dry_run {
        return Ok(report);
    }
    let producer = crate::connectors::kafka::producer(&t.conn)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(ensure_ledger(&t.conn, &ledger_topic))?;
    let mut deliveries = Vec::new();
    for ((d, _), target) in todo.iter().filter(|(_, send)| *send).zip(&report.targets) {
        let topic = target.to.as_str();
        let attempt = (d.attempt + 1).to_string();
        let of = format!("{}/{}/{}", t.topic, d.partition, d.offset);
        // The record's own headers first, as it was produced; then plexus's.
        let mut h = OwnedHeaders::new_with_capacity(d.origin.headers.len() + 4);
        for (name, value) in &d.origin.headers {
            h = h.insert(Header {
                key: name.as_str(),
                value: value.as_deref(),
            });
        }
        let h = h
            .insert(Header {
                key: headers::ATTEMPT,
                value: Some(attempt.as_str()),
            })
            .insert(Header {
                key: headers::FIRST_FAILED_AT,
                value: Some(d.first_failed_at.as_str()),
            })
            .insert(Header {
                key: headers::REPLAY_OF,
                value: Some(of.as_str()),
            })
            .insert(Header {
                key: headers::PIPELINE,
                value: Some(t.pipeline.as_str()),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .payload(d.record.as_slice())
            .headers(h);
        if let Some(k) = &d.origin.key {
            record = record.key(k.as_slice());
        }
        // Back to its own partition when replayed to its own topic: the key's partition
        // under the original producer's partitioner (Java clients hash with murmur2,
        // librdkafka with CRC32), so per-key order holds whoever produced it.
        if req.to_topic.is_none()
            && let Some(p) = d.source_partition
        {
            record = record.partition(p as i32);
        }
        deliveries.push(crate::connectors::kafka::send(&producer, record)?);
    }
    rt.block_on(crate::connectors::kafka::all_delivered(
        deliveries,
        "replay".into(),
    ))?;
    // Only now, with the copies acknowledged, are the dead letters marked replayed
    // (duplicate copies too, so they are not replayed by a later run).
    let mut marks = Vec::new();
    for (d, _) in &todo {
        let key = format!("{}:{}", d.partition, d.offset);
        let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&ledger_topic)
            .key(key.as_bytes())
            .payload(b"".as_slice());
        marks.push(crate::connectors::kafka::send(&producer, record)?);
    }
    rt.block_on(crate::connectors::kafka::all_delivered(
        marks,
        ledger_topic.clone(),
    ))?;
    producer.flush(Duration::from_secs(30))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;

    #[test]
    fn filter_columns_plan() {
        let d = DeadLetter {
            partition: 0,
            offset: 1,
            key: "t/0/5".into(),
            stage: "checks".into(),
            rule: "mrn_present".into(),
            error: "MRN missing".into(),
            attempt: 1,
            first_failed_at: "2026-11-26T00:00:00Z".into(),
            failed_at: "2026-11-26T00:00:00Z".into(),
            source_topic: Some("t".into()),
            source_partition: Some(0),
            source_offset: Some(5),
            correlation_id: None,
            record: b"MSH|".to_vec(),
            origin: Origin::default(),
        };
        let batch = filter_batch(
            &[
                d.clone(),
                DeadLetter {
                    rule: "x".into(),
                    ..d
                },
            ],
            true,
        )
        .unwrap();
        let p = crate::sql::SqlPlanner::new()
            .predicate("f", "rule = 'mrn_present' AND attempt < 3", &batch.schema())
            .unwrap();
        let m = p.evaluate(&batch).unwrap();
        let m = m.as_boolean();
        assert!(m.value(0) && !m.value(1));
        assert!(m.is_valid(0));
    }
}
