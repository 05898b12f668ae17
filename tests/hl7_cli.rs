//! `plexus hl7 split|extract|ack` run as a user would, on real files and stdin.

mod support;

use std::process::Output;

use support::corpus;

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    support::plexus_stdin(args, stdin)
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A batch file: two batches, the second with a wrong BTS count, plus one broken message.
fn batch_file(dir: &tempfile::TempDir) -> String {
    let msg = |id: &str, family: &str| {
        format!(
            "MSH|^~\\&|ADT|H|R|F|20260105143000-0500||ADT^A01^ADT_A01|{id}|P|2.5.1\rPID|1||{id}^^^H^MR~S{id}^^^SSA^SS||{family}^ANN||19800102|F\r"
        )
    };
    let text = format!(
        "FHS|^~\\&|SRC\rBHS|^~\\&|SRC\r{}{}BTS|2\rBHS|^~\\&|SRC\r{}MSH|^~\\&|TRUNC\rBTS|5\rFTS|2\r",
        msg("M1", "DOE"),
        msg("M2", "O\\F\\NEIL"),
        msg("M3", "ROE"),
    );
    let path = dir.path().join("batch.hl7");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn split_lists_messages_with_offsets() {
    let o = run(&["hl7", "split", &corpus("ADT01-23.hl7")], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The file starts with a UTF-8 BOM: the message begins after it.
    assert_eq!(stdout(&o), "0\t3\tADT^A01\t599102\n");

    let dir = tempfile::tempdir().unwrap();
    let file = batch_file(&dir);
    let o = run(&["hl7", "split", &file], None);
    assert_eq!(o.status.code(), Some(1), "one record failed");
    let lines: Vec<_> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines[0].starts_with("0\t26\tADT^A01^ADT_A01\tM1"),
        "{}",
        lines[0]
    );
    assert!(lines[3].ends_with("\t-\t-"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("MSH-9"), "{err}");
    assert!(
        err.contains("BTS-1 declares 5 messages but 2 were found"),
        "{err}"
    );
}

#[test]
fn split_reads_stdin() {
    let bytes = std::fs::read(corpus("ORU-R01-01.hl7")).unwrap();
    let o = run(&["hl7", "split", "-"], Some(&bytes));
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("0\t0\tORU^R01^ORU_R01\t2.16.840.1.114222"));
}

#[test]
fn extract_ndjson_with_arrays_types_and_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let file = batch_file(&dir);
    let o = run(
        &[
            "hl7",
            "extract",
            &file,
            "--field",
            "mrn=PID-3.1",
            "--field",
            "family=PID-5.1",
            "--field",
            "dob=PID-7:date",
            "--field",
            "sent=MSH-7:timestamp",
            "--field",
            "first_id=PID-3(1).1",
            "--field",
            "ids=PID-3(*).1",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    let rows: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    // #15 item 15: PID-3 repeats, yet `mrn` stays the first repetition (not an array that
    // pulls in the SSN); every value only when asked.
    assert_eq!(rows[0]["mrn"], "M1");
    assert_eq!(rows[0]["ids"], serde_json::json!(["M1", "SM1"]));
    assert_eq!(rows[0]["first_id"], "M1");
    assert_eq!(rows[1]["family"], "O|NEIL");
    assert_eq!(rows[0]["dob"], "1980-01-02");
    assert!(
        rows[0]["sent"]
            .as_str()
            .unwrap()
            .starts_with("2026-01-05T19:30:00")
    );
    assert_eq!(rows[2]["_control_id"], "M3");
    assert_eq!(rows[2]["_message_type"], "ADT^A01^ADT_A01");
    assert!(rows[2]["_offset"].as_i64().unwrap() > 0);
    assert_eq!(rows[2]["_source"], file.as_str());
}

#[test]
fn extract_csv_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let file = batch_file(&dir);
    let csv_path = dir.path().join("out.csv");
    let o = run(
        &[
            "hl7",
            "extract",
            &file,
            "-f",
            "ids=PID-3(*).1",
            "-f",
            "family=PID-5.1",
            "--format",
            "csv",
            "--output",
            csv_path.to_str().unwrap(),
            "--no-provenance",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let lines: Vec<_> = csv.lines().collect();
    assert_eq!(lines[0], "ids,family");
    assert_eq!(lines[1], "\"[\"\"M1\"\",\"\"SM1\"\"]\",DOE");
    assert_eq!(lines.len(), 4);

    let pq = dir.path().join("out.parquet");
    let o = run(
        &[
            "hl7",
            "extract",
            &file,
            "-f",
            "mrn=PID-3(1).1",
            "-f",
            "dob=PID-7:date",
            "--format",
            "parquet",
            "-o",
            pq.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&pq).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 3);
    let b = &batches[0];
    assert_eq!(
        b.schema().field(1).data_type(),
        &arrow::datatypes::DataType::Date32
    );
    let mrn = arrow::array::AsArray::as_string::<i32>(b.column(0));
    assert_eq!(mrn.value(2), "M3");
}

#[test]
fn extract_rejects_bad_specs() {
    let o = run(
        &["hl7", "extract", &corpus("ADT01-23.hl7"), "-f", "x=PID-0"],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1-based"));
}

#[test]
fn ack_answers_each_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = batch_file(&dir);
    let o = run(
        &[
            "hl7",
            "ack",
            &file,
            "--code",
            "AE",
            "--text",
            "check PID",
            "--terminator",
            "cr",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    let out = o.stdout;
    let acks: Vec<&[u8]> = out
        .split(|&b| b == b'\n')
        .filter(|a| !a.is_empty())
        .collect();
    assert_eq!(acks.len(), 4);
    let first = plexus::formats::hl7::Message::parse(acks[0]).unwrap();
    assert_eq!(first.query("MSH-3").unwrap().as_deref(), Some("R"));
    assert_eq!(first.query("MSH-5").unwrap().as_deref(), Some("ADT"));
    assert_eq!(first.message_type(), "ACK^A01^ACK");
    assert_eq!(first.query("MSA-1").unwrap().as_deref(), Some("AE"));
    assert_eq!(first.query("MSA-2").unwrap().as_deref(), Some("M1"));
    assert_eq!(first.query("MSA-3").unwrap().as_deref(), Some("check PID"));
    assert_eq!(first.query("ERR-3.1").unwrap().as_deref(), Some("207"));
    let broken = plexus::formats::hl7::Message::parse(acks[3]).unwrap();
    assert_eq!(broken.query("MSA-1").unwrap().as_deref(), Some("AR"));
    assert_eq!(broken.query("ERR-3.1").unwrap().as_deref(), Some("101"));
    assert_eq!(broken.query("ERR-2.1").unwrap().as_deref(), Some("MSH"));

    let bytes = std::fs::read(corpus("ADT01-23.hl7")).unwrap();
    let o = run(&["hl7", "ack", "-", "--terminator", "lf"], Some(&bytes));
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(text.starts_with("MSH|^~\\&|||AccMgr|1|"), "{text}");
    assert!(text.contains("\nMSA|AA|599102\n"), "{text}");
}
