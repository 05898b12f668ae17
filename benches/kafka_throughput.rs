//! Kafka throughput, end to end against the raw consume rate, in one run on one broker.
//!
//!     scripts/dev-services up
//!     cargo bench --bench kafka_throughput            # PLEXUS_BENCH_MESSAGES=200000 by default
//!
//! 1. Produces N synthetic ADT messages to a fresh topic (4 partitions).
//! 2. Raw: librdkafka (rdkafka `BaseConsumer`) reads them all, touching every payload.
//! 3. End to end: the plexus runtime reads the same topic in a consumer group, parses HL7
//!    (10 columns), maps, validates and produces JSON to an output topic, committing offsets
//!    after the output is acknowledged.
//! 4. The same pipeline through the `plexus` binary, as a whole process under
//!    `/usr/bin/time` (start-up and group join included), with its peak RSS.
//!
//! Both rates are measured from the first record received to the last one handled (for the
//! pipeline: until its final commit), so group-join time counts for neither. Not a criterion
//! bench: one long run is the measurement.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use plexus::runtime::topology::{StartOptions, Topology};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --benches`) skips.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let brokers = std::env::var("PLEXUS_BENCH_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let n: usize = std::env::var("PLEXUS_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tag = std::process::id();
    let (input, output, dlq) = (
        format!("bench-in-{tag}"),
        format!("bench-out-{tag}"),
        format!("bench-dlq-{tag}"),
    );
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &brokers);
    rt.block_on(async {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<_> = cc.create().unwrap();
        let topics = [
            NewTopic::new(&input, 4, TopicReplication::Fixed(1)),
            NewTopic::new(&output, 4, TopicReplication::Fixed(1)),
            NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
        ];
        admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .unwrap();
    });

    // 1. Produce.
    let feed = plexus::formats::hl7::synth::synthetic_feed(n, 7);
    let messages: Vec<&[u8]> = plexus::formats::hl7::Splitter::new(&feed)
        .filter_map(Result::ok)
        .map(|m| m.message.raw())
        .collect();
    let bytes: usize = messages.iter().map(|m| m.len()).sum();
    let t = Instant::now();
    rt.block_on(async {
        let p: FutureProducer = cc
            .clone()
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "2000000")
            .create()
            .unwrap();
        let mut pending = Vec::with_capacity(messages.len());
        for m in &messages {
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&input).payload(*m);
            loop {
                match p.send_result(rec) {
                    Ok(f) => {
                        pending.push(f);
                        break;
                    }
                    Err((_, back)) => {
                        rec = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }
        for f in pending {
            f.await.unwrap().unwrap();
        }
    });
    println!(
        "produced {} messages ({:.1} MB) in {:.1} s",
        messages.len(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let n = messages.len();

    // 2. Raw consume.
    let consumer: BaseConsumer = cc
        .clone()
        .set("group.id", format!("bench-raw-{tag}"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset(&input, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let (mut got, mut checksum) = (0usize, 0u64);
    let mut first = None;
    while got < n {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            checksum = checksum.wrapping_add(m.payload().map_or(0, |p| p.len() as u64));
            got += 1;
        }
    }
    let raw_secs = first.unwrap().elapsed().as_secs_f64();
    drop(consumer);
    let raw_rate = n as f64 / raw_secs;
    println!(
        "raw consume (librdkafka):  {n} messages in {raw_secs:.2} s = {raw_rate:.0} msg/s ({:.1} MB/s; checksum {checksum})",
        bytes as f64 / 1e6 / raw_secs
    );

    // 3. The pipeline.
    let dir = std::env::temp_dir().join(format!("plexus-bench-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = format!(
        r#"
name: bench
integration: {{id: bench}}
kafka: {{brokers: "{brokers}"}}
source: {{type: kafka, topics: [{input}], group: bench-e2e-{tag}, format: hl7}}
batch: {{max_rows: 8192, max_delay: 100ms}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: event, path: MSH-9.2}}
      - {{name: mrn, path: PID-3.1}}
      - {{name: family, path: PID-5.1}}
      - {{name: given, path: PID-5.2}}
      - {{name: birth_date, path: PID-7, type: date}}
      - {{name: sex, path: PID-8}}
      - {{name: city, path: PID-11.3}}
      - {{name: state, path: PID-11.4}}
      - {{name: phone, path: PID-13.1}}
      - {{name: facility, path: PV1-3.4}}
  - name: shape
    type: map
    select:
      mrn: mrn
      name: concat_ws(' ', given, family)
      birth_date: birth_date
      sex: upper(sex)
      facility: facility
      event: event
  - name: checks
    type: validate
    rules:
      - {{name: mrn_present, check: "mrn IS NOT NULL"}}
sinks:
  - {{name: out, type: kafka, topic: {output}, key: mrn, format: json}}
dlq: {{topic: {dlq}}}
"#
    );
    let path = dir.join("bench.yaml");
    std::fs::write(&path, yaml).unwrap();
    let spec = plexus::spec::PipelineSpec::load(&path).unwrap();
    let plan = rt.block_on(plexus::plan::build(&spec)).unwrap();
    let first_read = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let fr = first_read.clone();
    let progress: plexus::runtime::Progress = Box::new(move |_, _, records| {
        if records > 0 && fr.load(Ordering::Relaxed) == 0 {
            fr.store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    });
    // The same topology `plexus run` builds.
    let topology = Topology::start(
        &rt,
        plan,
        StartOptions {
            max_records: Some(n as u64),
            progress: Some(progress),
            ..Default::default()
        },
    )
    .unwrap();
    let summary = topology.run(&rt).unwrap();
    let e2e_secs = started.elapsed().as_secs_f64()
        - Duration::from_nanos(first_read.load(Ordering::Relaxed)).as_secs_f64();
    let e2e_rate = summary.records_in as f64 / e2e_secs;
    println!(
        "end to end (Kafka → HL7 parse → map → validate → Kafka, committed): {} records in {e2e_secs:.2} s = {e2e_rate:.0} msg/s; delivered {}, dead-lettered {}",
        summary.records_in, summary.delivered, summary.dead_lettered
    );
    println!(
        "ratio end-to-end / raw consume: {:.0} %",
        100.0 * e2e_rate / raw_rate
    );

    // 4. What a user runs: the `plexus` binary on the same pipeline and topic (a fresh group),
    //    as a whole process — start-up and group join included — with its peak RSS.
    let cli_yaml = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&format!("bench-e2e-{tag}"), &format!("bench-cli-{tag}"));
    let cli_path = dir.join("bench_cli.yaml");
    std::fs::write(&cli_path, cli_yaml).unwrap();
    let t = Instant::now();
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "peak_rss_kb=%M"])
        .arg(env!("CARGO_BIN_EXE_plexus"))
        .args(["run", cli_path.to_str().unwrap(), "--json"])
        .args(["--max-records", &n.to_string()])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let wall = t.elapsed().as_secs_f64();
            let stderr = String::from_utf8_lossy(&o.stderr);
            let rss_mb = stderr
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("peak_rss_kb="))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map_or(f64::NAN, |kb| kb / 1024.0);
            let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            println!(
                "plexus run (whole process, start-up and group join included): {} records in {wall:.2} s = {:.0} msg/s; peak RSS {rss_mb:.0} MB",
                s["records_in"],
                n as f64 / wall
            );
        }
        Ok(o) => println!(
            "plexus run failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => println!("plexus run not measured (/usr/bin/time: {e})"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
