//! Shared by every integration test: the `plexus` binary and how to run it, the repository's
//! files, the services `scripts/dev-services up` starts (Apache Kafka on 127.0.0.1:9092, the
//! FHIR server on 8089, PostgreSQL on 5432, the schema registry on 8081, an S3-compatible store
//! on 9010; a test that needs one and does not find it says which and how to start it), and
//! helpers to produce, read topics back, and build HL7 messages.
#![allow(dead_code)]

pub mod listener;
pub mod registry;
pub mod webhook;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Serves `app` on an ephemeral 127.0.0.1 port on its own thread; returns `http://addr`.
pub fn serve(app: axum::Router) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    url
}

pub const BIN: &str = env!("CARGO_BIN_EXE_plexus");

pub fn brokers() -> String {
    let brokers =
        std::env::var("PLEXUS_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_string());
    need(
        "Apache Kafka",
        brokers.split(',').next().unwrap_or_default(),
    );
    brokers
}

/// Fails the test, saying what to start, when nothing listens at `addr` (`host:port`).
/// Checked once per address and test binary.
pub fn need(service: &str, addr: &str) {
    use std::sync::{Mutex, OnceLock};
    static UP: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let up = UP.get_or_init(Mutex::default);
    if up.lock().unwrap().iter().any(|a| a == addr) {
        return;
    }
    let listening = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok());
    assert!(
        listening,
        "this test needs {service} on {addr}, and nothing answers there: start the services \
         with `scripts/dev-services up` (the test command `scripts/test` does it first)"
    );
    up.lock().unwrap().push(addr.to_string());
}

/// The FHIR R4 server (sekmet) `scripts/dev-services up` starts.
pub const FHIR: &str = "http://127.0.0.1:8089/fhir";

/// Checks the FHIR server is there (see `need`).
pub fn need_fhir() {
    need("the FHIR R4 server (sekmet-fhir)", "127.0.0.1:8089");
}

/// The PostgreSQL database of the tests (`PLEXUS_TEST_DATABASE_URL` overrides), checked to
/// be there (see `need`).
pub fn database_url() -> String {
    need("PostgreSQL", "127.0.0.1:5432");
    std::env::var("PLEXUS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Runs SQL on the tests' database.
pub fn psql(sql: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&database_url()).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut c)
            .await
            .unwrap();
    });
}

/// A file of the third-party HL7 corpus (`tests/data/corpus/`).
pub fn corpus(name: &str) -> String {
    format!("{}/tests/data/corpus/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `plexus` in `dir` (relative paths in its arguments resolve there).
pub fn plexus_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run plexus")
}

/// Runs `plexus` with `stdin` on its standard input (closed at once when None).
pub fn plexus_stdin(args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run plexus");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// A topic name no other test (or earlier run on the same broker) uses.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers());
    c
}

/// Creates topics (the broker does not auto-create them).
pub fn create_topics(topics: &[(&str, i32)]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = config().create().unwrap();
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
            .collect();
        let results = admin
            .create_topics(&new, &AdminOptions::new())
            .await
            .expect("create topics");
        for r in results {
            if let Err((t, e)) = r {
                panic!("creating topic {t}: {e}");
            }
        }
    });
}

/// A record to produce: key, value, headers.
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub partition: Option<i32>,
}

impl Rec {
    pub fn value(v: impl Into<Vec<u8>>) -> Rec {
        Rec {
            key: None,
            value: v.into(),
            headers: Vec::new(),
            partition: None,
        }
    }
}

/// Produces records as a real producer does — batched (linger, up to thousands of records per
/// record batch, compressed) — and waits for every delivery report. Consumers that resume from
/// a committed offset therefore start inside record batches, as they do in production.
pub fn produce(topic: &str, records: Vec<Rec>) {
    produce_with(
        topic,
        records,
        &[
            ("linger.ms", "20"),
            ("batch.size", "1000000"),
            ("batch.num.messages", "10000"),
            ("compression.type", "lz4"),
        ],
    )
}

fn produce_with(topic: &str, records: Vec<Rec>, settings: &[(&str, &str)]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cfg = config();
        for (k, v) in settings {
            cfg.set(*k, *v);
        }
        let p: FutureProducer = cfg
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .unwrap();
        let mut futures = Vec::new();
        for r in &records {
            let mut h = OwnedHeaders::new();
            for (k, v) in &r.headers {
                h = h.insert(Header {
                    key: k,
                    value: Some(v.as_str()),
                });
            }
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .payload(r.value.as_slice())
                .headers(h);
            if let Some(k) = &r.key {
                rec = rec.key(k.as_slice());
            }
            if let Some(p) = r.partition {
                rec = rec.partition(p);
            }
            loop {
                match p.send_result(rec) {
                    Ok(f) => {
                        futures.push(f);
                        break;
                    }
                    Err((_, back)) => {
                        rec = back;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
        for f in futures {
            f.await.unwrap().expect("delivered");
        }
    });
}

/// A message read back.
#[derive(Debug, Clone)]
pub struct Msg {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).expect("json value")
    }
    pub fn header(&self, k: &str) -> &str {
        self.headers
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no header {k} in {:?}", self.headers))
    }
}

/// A consumer assigned every partition of `topic` from its beginning (no group offsets).
fn from_beginning(topic: &str) -> BaseConsumer {
    let c: BaseConsumer = config()
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    c.assign(&tpl).unwrap();
    c
}

/// Reads a topic from the beginning until `expected` messages arrived and nothing more came
/// for `quiet`, or `timeout` passed.
pub fn read_topic(topic: &str, expected: usize, timeout: Duration) -> Vec<Msg> {
    let c = from_beginning(topic);
    let started = Instant::now();
    let mut out = Vec::new();
    let mut last = Instant::now();
    let quiet = Duration::from_millis(1500);
    while started.elapsed() < timeout {
        if out.len() >= expected && last.elapsed() > quiet {
            break;
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Msg {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// Waits until `topic` holds at least `min` messages (one consumer, polled continuously).
pub fn wait_for(topic: &str, min: usize, timeout: Duration) -> usize {
    let c = from_beginning(topic);
    let started = Instant::now();
    let mut n = 0;
    while n < min && started.elapsed() < timeout {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(20)) {
            n += 1;
        }
    }
    n
}

/// Committed offsets of a group (partition → next offset), for `topic`.
pub fn committed(group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    CommittedReader::new(group).read(topic, partitions)
}

/// Reads a group's committed offsets again and again over one connection (a new client per
/// read takes long enough for a fast pipeline to commit many times in between).
pub struct CommittedReader(BaseConsumer);

impl CommittedReader {
    pub fn new(group: &str) -> CommittedReader {
        CommittedReader(config().set("group.id", group).create().unwrap())
    }

    pub fn read(&self, topic: &str, partitions: i32) -> HashMap<i32, i64> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = self
            .0
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        got.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }
}

/// Adds a `kafka:` block for the test brokers to the pipeline file at `p`.
pub fn add_kafka_block(p: &Path) {
    let text = std::fs::read_to_string(p).unwrap().replace(
        "source:\n",
        &format!("kafka: {{brokers: \"{}\"}}\nsource:\n", brokers()),
    );
    std::fs::write(p, text).unwrap();
}

/// Writes a pipeline file into `dir`.
pub fn pipeline(dir: &Path, name: &str, yaml: &str) -> std::path::PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, yaml).unwrap();
    p
}

/// Runs `plexus` to completion (log level from `PLEXUS_TEST_LOG`, default warn).
pub fn plexus(args: &[&str]) -> Output {
    plexus_logging(
        args,
        &std::env::var("PLEXUS_TEST_LOG").unwrap_or("warn".into()),
    )
}

/// Runs `plexus` to completion with `PLEXUS_LOG=filter` (for tests that read its log).
pub fn plexus_logging(args: &[&str], filter: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("PLEXUS_LOG", filter)
        .output()
        .expect("run plexus")
}

pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "plexus failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON run summary of `plexus run --json`, after checking that the run finished and
/// that its exit code is the one its summary calls for (README, "Exit codes").
pub fn summary(out: &Output) -> serde_json::Value {
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "summary: {e} ({})\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        out.status.code(),
        Some(expected_exit_code(&s)),
        "exit code vs summary {s}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s
}

/// The exit code a run summary calls for: 5 interrupted or incomplete, 4 a sink unreachable,
/// 3 records dead-lettered, 0 all delivered or filtered.
pub fn expected_exit_code(s: &serde_json::Value) -> i32 {
    let n = |k: &str| s[k].as_i64().unwrap_or(0);
    let pending =
        n("records_in") - n("delivered") - n("dead_lettered") - n("filtered") - n("parked");
    let retried_unavailable: i64 = s["retries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["unavailable"].as_i64().unwrap_or(0))
        .sum();
    if s["interrupted"] == true || pending != 0 {
        5
    } else if n("unavailable") > 0 || retried_unavailable > 0 {
        4
    } else if n("dead_lettered") > 0 {
        3
    } else {
        0
    }
}

/// An ADT^A01 with the given control id and MRN (MRN empty → fails the `mrn` rule).
pub fn adt(control_id: &str, mrn: &str) -> String {
    format!(
        "MSH|^~\\&|EPIC|GHH|PLEXUS|GHH|20260105120000||ADT^A01|{control_id}|P|2.5\r\
         PID|1||{mrn}^^^GHH^MR||DOE^JANE||19800102|F\r\
         PV1|1|I|4E^1^A^GHH\r"
    )
}

/// The system of the corpus message's visit numbers (PV1-19 `^^^AccMgr^VN`): a local
/// authority name, scoped to the sender (MSH-4 `1`) as an absolute URI.
pub const VISIT_SYSTEM: &str = "urn:plexus:v2:1:authority:AccMgr";

/// The OID system the corpus-based FHIR tests give their MRNs.
pub const MRN_SYSTEM: &str = "urn:oid:2.16.840.1.113883.19.5";

/// The corpus ADT^A01 (FHIR-Converter's `ADT01-23.hl7`) as trigger `event`, for our MRN (under
/// [`MRN_SYSTEM`]), visit number `V<mrn>` and patient family name: both identifiers are what
/// the FHIR sync keys Patient and Encounter on.
pub fn corpus_adt(mrn: &str, event: &str, family: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus/ADT01-23.hl7"),
    )
    .unwrap()
    .trim_start_matches('\u{feff}')
    .replace("ADT^A01|599102", &format!("ADT^{event}|{mrn}{event}"))
    .replace(
        "10006579^^^1^MR^1",
        &format!("{mrn}^^^&{}&ISO^MR", &MRN_SYSTEM[8..]),
    )
    .replace("40007716^^^AccMgr^VN", &format!("V{mrn}^^^AccMgr^VN"))
    .replace("DUCK^DONALD", &format!("{family}^DONALD"))
        + "\n"
}

/// Whether `text` shows `value` as a whole token: an MRN like `100067` is not "shown" by the
/// microseconds of a log timestamp (`07.100067Z`).
pub fn shows_token(text: &str, value: &str) -> bool {
    text.match_indices(value).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + value.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// Where `scripts/dev-services` keeps its state and virtualenvs.
pub fn services_dir() -> std::path::PathBuf {
    let state = std::env::var("PLEXUS_SERVICES_DIR").unwrap_or_else(|_| {
        format!(
            "{}/plexus-services",
            std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into())
        )
    });
    std::path::PathBuf::from(state)
}

/// The Python of a virtualenv `scripts/dev-services up` installs (`fhir-validator-venv`,
/// `schema-validator-venv`); panics saying how to get it when it is absent.
pub fn venv_python(venv: &str) -> std::path::PathBuf {
    let p = services_dir().join(venv).join("bin/python");
    assert!(
        p.exists(),
        "{} is missing: run `scripts/dev-services up` (it installs {venv})",
        p.display()
    );
    p
}

/// The repository's root (pipelines/, schemas/, sql/).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A private CA, a server certificate for 127.0.0.1 and a client certificate, by openssl.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let sh = |args: &[&str]| {
            let o = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        sh(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=plexus test CA",
        ]);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (who, cn) in [("server", "127.0.0.1"), ("client", "plexus-integration")] {
            sh(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ]);
            sh(&[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ]);
        }
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self, f: &str) -> String {
        self.dir.join(f).to_str().unwrap().to_string()
    }
}
