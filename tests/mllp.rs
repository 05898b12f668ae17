//! The MLLP listener (`type: mllp` source) against a third-party sender: python-hl7's
//! MLLPClient (`scripts/dev-services up` installs it), and raw sockets for the edge cases.
//! Real processes, real sockets, a real spool on disk; `kill -9` for the durability claim.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::listener::{free_port, rows, serve, stop, wait_for_port};
use support::{BIN, repo, venv_python};

/// A pipeline listening on `port`: parse, one NDJSON output with provenance, a DLQ.
fn pipeline(dir: &Path, port: u16, source_extra: &str) -> PathBuf {
    let p = dir.join("mllp.yaml");
    std::fs::write(
        &p,
        format!(
            r#"name: mllp_t
integration: {{id: mllp-test}}
source:
  type: mllp
  listen: "127.0.0.1:{port}"
  format: hl7
  spool: spool
{source_extra}
batch: {{max_rows: 500, max_delay: 50ms}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: mrn, path: PID-3.1}}
sinks:
  - {{name: out, input: parse, type: file, format: ndjson, path: out.ndjson, provenance: true}}
dlq: {{path: dlq.ndjson}}
"#
        ),
    )
    .unwrap();
    p
}

fn sender(port: u16, conns: usize, n: usize, dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(venv_python("hl7-venv"));
    c.arg(repo().join("tests/support/mllp_sender.py"))
        .args([
            "127.0.0.1",
            &port.to_string(),
            &conns.to_string(),
            &n.to_string(),
            dir.to_str().unwrap(),
        ])
        .args(extra);
    c
}

/// python-hl7's client sends `n` messages over 4 connections, the 8th not HL7; returns the
/// directory of its ACK logs (see `acks`).
fn send_with_one_bad(port: u16, n: usize, dir: &Path) -> PathBuf {
    let acks_dir = dir.join("acks");
    std::fs::create_dir(&acks_dir).unwrap();
    let sent = sender(port, 4, n, &acks_dir, &["--bad", "7"])
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    acks_dir
}

/// (control id, MSA-1, MSA-2, MSH-3..6, attempts) for each message the sender finished.
fn acks(dir: &Path) -> Vec<(String, String, String, String, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if !p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("acks-")
        {
            continue;
        }
        for line in std::fs::read_to_string(&p).unwrap().lines() {
            let f: Vec<&str> = line.split('\t').collect();
            out.push((
                f[0].into(),
                f[1].into(),
                f[2].into(),
                f[3].into(),
                f[4].parse().unwrap(),
            ));
        }
    }
    out
}

fn frame(m: &[u8]) -> Vec<u8> {
    [&[0x0b][..], m, &[0x1c, 0x0d]].concat()
}

/// Reads one framed reply (None: closed or timed out first). Byte by byte, so a reply that
/// came in the same packet as this one stays for the next call.
fn read_frame(s: &mut TcpStream) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(&[0x1c, 0x0d]) {
        match s.read(&mut byte) {
            Ok(0) | Err(_) => return None,
            Ok(_) => buf.push(byte[0]),
        }
    }
    let start = buf.iter().position(|&b| b == 0x0b)? + 1;
    let end = buf.iter().position(|&b| b == 0x1c)?;
    Some(String::from_utf8_lossy(&buf[start..end]).into_owned())
}

fn field<'a>(ack: &'a str, seg: &str, n: usize) -> &'a str {
    ack.split('\r')
        .find(|s| s.starts_with(seg))
        .and_then(|s| s.split('|').nth(if seg == "MSH" { n - 1 } else { n }))
        .unwrap_or("")
}

fn adt(control: &str, extra_msh: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|SENDAPP|SENDFAC|PLEXUS|HUB|20260105143000||ADT^A01^ADT_A01|{control}|P|2.5.1{extra_msh}\rPID|1||{control}^^^GHH^MR||DOE^JOHN||19800102|M\r"
    )
    .into_bytes()
}

#[test]
fn a_third_party_sender_gets_acks_and_every_message_is_processed_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let p = pipeline(dir.path(), port, "");
    let server = serve(&p, port);
    let n = 400;
    let acks_dir = send_with_one_bad(port, n, dir.path());
    let (code, summary, stderr) = stop(server);

    let acks = acks(&acks_dir);
    assert_eq!(acks.len(), n);
    for (control, code, msa2, msh, attempts) in &acks {
        assert_eq!(*attempts, 1, "{control}: answered the first time");
        if control == "C7" {
            // Not HL7: an application error naming no control id it could not read.
            assert_eq!(code, "AE", "{control}");
            continue;
        }
        assert_eq!(code, "AA", "{control}");
        assert_eq!(msa2, control, "MSA-2 echoes MSH-10");
        // MSH-3/4 and MSH-5/6 swapped: the ACK comes from PLEXUS^HUB to SENDAPP^SENDFAC.
        assert_eq!(msh, "PLEXUS^HUB^SENDAPP^SENDFAC", "{control}");
    }

    // Every message read once, the bad one dead-lettered with its bytes.
    assert_eq!(summary["records_in"], n as u64, "{summary}");
    assert_eq!(summary["delivered"], (n - 1) as u64, "{summary}");
    assert_eq!(summary["dead_lettered"], 1, "{summary}");
    assert_eq!(code, Some(3), "finished with a dead letter: {stderr}");
    let out = rows(&dir.path().join("out.ndjson"));
    let ids: HashSet<&str> = out
        .iter()
        .map(|r| r["_control_id"].as_str().unwrap())
        .collect();
    assert_eq!((out.len(), ids.len()), (n - 1, n - 1), "each once");
    let origin = format!("mllp://127.0.0.1:{port}/127.0.0.1:");
    assert!(
        out.iter()
            .all(|r| r["_source"].as_str().unwrap().starts_with(&origin)),
        "{}",
        out[0]
    );
    let offsets: HashSet<i64> = out.iter().map(|r| r["_offset"].as_i64().unwrap()).collect();
    assert_eq!(offsets.len(), n - 1, "spool offsets are distinct");
    let dlq = rows(&dir.path().join("dlq.ndjson"));
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["record"], "THIS IS NOT HL7 7\r");
    // The listener's counts are in the summary; no patient data in the logs.
    let line = summary["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .find(|w| w.starts_with("mllp "))
        .unwrap()
        .to_string();
    assert!(
        line.contains(&format!("{n} messages")) && line.contains("AA 399, AE 1"),
        "{line}"
    );
    assert!(!stderr.contains("DOE"), "{stderr}");
    // Processed messages leave the spool: a restart finds nothing to do.
    let server = serve(&p, port);
    let (_, again, _) = stop(server);
    assert_eq!(again["records_in"], 0, "{again}");
}

#[test]
fn kill_dash_9_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let p = pipeline(dir.path(), port, "");
    let mut server = serve(&p, port);
    let acks_dir = dir.path().join("acks");
    std::fs::create_dir(&acks_dir).unwrap();
    let n = 10_000;
    let client = sender(port, 4, n, &acks_dir, &["--deadline", "240"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill mid-stream, once a good part was acknowledged.
    let started = Instant::now();
    while acks(&acks_dir).len() < 3_000 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "sender too slow"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let acked_at_kill: HashSet<String> = acks(&acks_dir).into_iter().map(|a| a.0).collect();
    let committed_at_kill: i64 = std::fs::read_to_string(dir.path().join("spool/commit"))
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(0);
    let out_at_kill = rows(&dir.path().join("out.ndjson")).len();
    std::thread::sleep(Duration::from_millis(500));
    let server = serve(&p, port);
    let sent = client.wait_with_output().unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let (_, summary, stderr) = stop(server);
    assert_eq!(
        summary["delivered"], summary["records_in"],
        "{summary}\n{stderr}"
    );

    let out = rows(&dir.path().join("out.ndjson"));
    let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
    for r in &out {
        seen.entry(r["_control_id"].as_str().unwrap().to_string())
            .or_default()
            .push(r["_offset"].as_i64().unwrap());
    }
    // Nothing acknowledged is lost: every message was acknowledged in the end, and each is
    // in the output.
    let acks = acks(&acks_dir);
    assert_eq!(acks.len(), n);
    assert!(acks.iter().all(|a| a.1 == "AA"));
    let missing: Vec<&String> = acked_at_kill
        .iter()
        .filter(|c| !seen.contains_key(*c))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the kill, not in the output: {missing:?}"
    );
    assert_eq!(seen.len(), n, "every message in the output");
    // Duplicates come only from messages sent again (no ACK before the kill) or from the
    // spool's tail processed but not yet committed at the kill (read again at restart, same
    // offset).
    let resent: HashSet<String> = std::fs::read_to_string(acks_dir.join("resent.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let mut dup_resent = 0;
    let mut dup_uncommitted = 0;
    for (id, offsets) in seen.iter().filter(|(_, o)| o.len() > 1) {
        if resent.contains(id) {
            dup_resent += 1;
        } else {
            let same = offsets.iter().all(|o| *o == offsets[0]);
            assert!(
                same && offsets[0] >= committed_at_kill,
                "{id}: duplicated at offsets {offsets:?}, commit at the kill {committed_at_kill}"
            );
            dup_uncommitted += 1;
        }
    }
    eprintln!(
        "kill -9: {} acknowledged at the kill, {out_at_kill} output rows at the kill, {} resent, duplicates: {dup_resent} resent + {dup_uncommitted} uncommitted",
        acked_at_kill.len(),
        resent.len()
    );
}

#[test]
fn framing_limits_and_ack_modes_at_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let p = pipeline(
        dir.path(),
        port,
        "  max_message_bytes: 2000\n  max_connections: 2\n",
    );
    let server = serve(&p, port);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Junk before a frame, and a frame split over two writes.
    let m = frame(&adt("J1", ""));
    s.write_all(b"\r\nnoise").unwrap();
    s.write_all(&m[..20]).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&m[20..]).unwrap();
    let ack = read_frame(&mut s).unwrap();
    assert_eq!(
        (field(&ack, "MSA", 1), field(&ack, "MSA", 2)),
        ("AA", "J1"),
        "{ack}"
    );
    // Two frames in one write: two ACKs, in order.
    s.write_all(&[frame(&adt("J2", "")), frame(&adt("J3", ""))].concat())
        .unwrap();
    let (a2, a3) = (read_frame(&mut s).unwrap(), read_frame(&mut s).unwrap());
    assert_eq!((field(&a2, "MSA", 2), field(&a3, "MSA", 2)), ("J2", "J3"));
    // A pipelining sender: 40 frames in one write, one of them unparsable. They share one
    // group commit; each gets its own ACK, in order.
    let burst: Vec<Vec<u8>> = (0..40)
        .map(|i| match i {
            17 => {
                b"MSH|^~\\&|SENDAPP|SENDFAC|PLEXUS|HUB|20260105||ADT^A01|P17|P|2.5.1\rP\r".to_vec()
            }
            _ => adt(&format!("P{i}"), ""),
        })
        .collect();
    s.write_all(&burst.iter().map(|m| frame(m)).collect::<Vec<_>>().concat())
        .unwrap();
    for i in 0..40 {
        let ack = read_frame(&mut s).unwrap();
        let want = if i == 17 { "AE" } else { "AA" };
        assert_eq!(
            (field(&ack, "MSA", 1), field(&ack, "MSA", 2)),
            (want, format!("P{i}").as_str()),
            "{ack}"
        );
    }
    // Enhanced mode: MSH-15 AL gets a commit ACK (CA); NE gets none; ER gets none on success.
    s.write_all(&frame(&adt("E1", "|||AL|NE"))).unwrap();
    let ca = read_frame(&mut s).unwrap();
    assert_eq!(
        (field(&ca, "MSA", 1), field(&ca, "MSA", 2)),
        ("CA", "E1"),
        "{ca}"
    );
    s.write_all(
        &[
            frame(&adt("E2", "|||NE|NE")),
            frame(&adt("E3", "|||ER|NE")),
            frame(&adt("E4", "|||SU|NE")),
        ]
        .concat(),
    )
    .unwrap();
    let next = read_frame(&mut s).unwrap();
    assert_eq!(
        (field(&next, "MSA", 1), field(&next, "MSA", 2)),
        ("CA", "E4"),
        "E2 and E3 unanswered: {next}"
    );
    // A segment that breaks parsing: AE with an ERR naming where.
    s.write_all(&frame(
        b"MSH|^~\\&|SENDAPP|SENDFAC|PLEXUS|HUB|20260105||ADT^A01|B1|P|2.5.1\rP\r",
    ))
    .unwrap();
    let ae = read_frame(&mut s).unwrap();
    assert_eq!(
        (field(&ae, "MSA", 1), field(&ae, "MSA", 2)),
        ("AE", "B1"),
        "{ae}"
    );
    assert!(ae.contains("\rERR|"), "{ae}");

    // The connection limit: a third connection is closed at once.
    let _second = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut third = TcpStream::connect(("127.0.0.1", port)).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = third.write_all(&frame(&adt("X1", "")));
    assert_eq!(
        third.read(&mut [0u8; 16]).unwrap_or(0),
        0,
        "closed without an answer"
    );

    // Over the size limit: AR, then the connection is closed.
    let mut big = adt("BIG", "");
    big.extend(std::iter::repeat_n(b'x', 3000));
    s.write_all(&frame(&big)).unwrap();
    let ar = read_frame(&mut s).unwrap();
    assert_eq!(field(&ar, "MSA", 1), "AR", "{ar}");
    assert!(ar.contains("size limit"), "{ar}");
    assert_eq!(s.read(&mut [0u8; 16]).unwrap_or(0), 0, "closed after AR");
    drop(s);

    let (_, summary, _) = stop(server);
    // J1-3, P0-39, E1-4 and B1 were spooled and processed; the frame over the limit was not.
    assert_eq!(summary["records_in"], 48, "{summary}");
    assert_eq!(summary["dead_lettered"], 2, "{summary}");
    let line = summary["warnings"][0].as_str().unwrap();
    for want in [
        "1 refused over the limit",
        "7 bytes outside frames",
        "1 over the size limit",
        "AA 42",
        "AE 2",
        "AR 1",
        "CA 2",
    ] {
        assert!(line.contains(want), "{want:?} in {line}");
    }
}

/// A pipeline that validates what it parsed: MRN required (answered AE), sex in table 0001
/// (dead-lettered but answered AA), ACKs once the pipeline has settled each message.
fn checked_pipeline(dir: &Path, port: u16) -> PathBuf {
    let p = pipeline(
        dir,
        port,
        "  ack: {after: processed, reject: [checks.mrn_present, parse]}\n",
    );
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "      - {name: mrn, path: PID-3.1}\n",
        "      - {name: mrn, path: PID-3.1}\n      - {name: sex, path: PID-8}\n  - name: checks\n    type: validate\n    rules:\n      - {name: mrn_present, check: \"mrn IS NOT NULL AND mrn <> ''\", message: MRN (PID-3) is required}\n      - {name: sex_known, check: \"sex IN ('F', 'M', 'O', 'U')\", message: sex (PID-8) is not in table 0001}\n",
    ).replace("input: parse, type: file", "input: checks, type: file");
    std::fs::write(&p, text).unwrap();
    p
}

fn adt_with(control: &str, extra_msh: &str, mrn: &str, sex: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|SENDAPP|SENDFAC|PLEXUS|HUB|20260105143000||ADT^A01^ADT_A01|{control}|P|2.5.1{extra_msh}\rPID|1||{mrn}^^^GHH^MR||DOE^JOHN||19800102|{sex}\r"
    )
    .into_bytes()
}

/// MSA-1, MSA-2, ERR-4 (severity) and MSA-3 of the next reply.
fn next_ack(s: &mut TcpStream) -> (String, String, String, String) {
    let a = read_frame(s).expect("an ACK");
    let f = |seg, n| field(&a, seg, n).to_string();
    (f("MSA", 1), f("MSA", 2), f("ERR", 4), f("MSA", 3))
}

#[test]
fn acks_after_processing_and_application_acks_carry_the_pipelines_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let p = checked_pipeline(dir.path(), port);
    let server = serve(&p, port);
    let out = dir.path().join("out.ndjson");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();

    // Original mode, `after: processed`: the AA comes once the row is in the output.
    s.write_all(&frame(&adt_with("P1", "", "MRN1", "F")))
        .unwrap();
    let (code, id, _, _) = next_ack(&mut s);
    assert_eq!((code.as_str(), id.as_str()), ("AA", "P1"));
    assert!(
        rows(&out).iter().any(|r| r["mrn"] == "MRN1"),
        "delivered before its ACK"
    );
    // A rule listed in `reject`: AE, the rule's message in MSA-3 and ERR.
    s.write_all(&frame(&adt_with("P2", "", "", "F"))).unwrap();
    let (code, id, severity, text) = next_ack(&mut s);
    assert_eq!(
        (code.as_str(), id.as_str(), severity.as_str()),
        ("AE", "P2", "E")
    );
    assert_eq!(text, "checks: MRN (PID-3) is required");
    // A rule not listed: AA with a warning ERR; dead-lettered all the same.
    s.write_all(&frame(&adt_with("P3", "", "MRN3", "X")))
        .unwrap();
    let (code, id, severity, _) = next_ack(&mut s);
    assert_eq!(
        (code.as_str(), id.as_str(), severity.as_str()),
        ("AA", "P3", "W")
    );
    // Unparsable: AE at once (the parse stage dead-letters it too).
    s.write_all(&frame(
        b"MSH|^~\\&|SENDAPP|SENDFAC|PLEXUS|HUB|20260105||ADT^A01|B1|P|2.5.1\rP\r",
    ))
    .unwrap();
    assert_eq!(next_ack(&mut s).0, "AE");

    // Enhanced mode: a commit ACK now, the application ACK as MSH-16 asks.
    s.write_all(&frame(&adt_with("E1", "|||AL|AL", "MRN4", "M")))
        .unwrap();
    assert_eq!(next_ack(&mut s).0, "CA");
    let (code, id, _, _) = next_ack(&mut s);
    assert_eq!((code.as_str(), id.as_str()), ("AA", "E1"));
    // ER: no application ACK on success; AE on a refusal.
    s.write_all(&frame(&adt_with("E2", "|||AL|ER", "MRN5", "M")))
        .unwrap();
    assert_eq!(next_ack(&mut s).0, "CA");
    s.write_all(&frame(&adt_with("E3", "|||AL|ER", "", "M")))
        .unwrap();
    let (code, id, _, _) = next_ack(&mut s);
    assert_eq!(
        (code.as_str(), id.as_str()),
        ("CA", "E3"),
        "E2's AA not sent"
    );
    let (code, id, _, text) = next_ack(&mut s);
    assert_eq!((code.as_str(), id.as_str()), ("AE", "E3"));
    assert!(text.contains("MRN"), "{text}");
    // SU: an application ACK on success only; NE: never.
    s.write_all(&frame(&adt_with("E4", "|||NE|SU", "", "M")))
        .unwrap();
    s.write_all(&frame(&adt_with("E5", "|||NE|NE", "MRN6", "M")))
        .unwrap();
    s.write_all(&frame(&adt_with("E6", "|||NE|SU", "MRN7", "M")))
        .unwrap();
    let (code, id, _, _) = next_ack(&mut s);
    assert_eq!(
        (code.as_str(), id.as_str()),
        ("AA", "E6"),
        "E4, E5 unanswered"
    );
    // A sender's ACK of our application ACK is neither data nor answered.
    s.write_all(&frame(
        b"MSH|^~\\&|SENDAPP|SENDFAC|PLEXUS|HUB|20260105||ACK^A01^ACK|C1|P|2.5.1\rMSA|CA|123\r",
    ))
    .unwrap();
    s.write_all(&frame(&adt_with("P4", "", "MRN8", "F")))
        .unwrap();
    let (code, id, _, _) = next_ack(&mut s);
    assert_eq!((code.as_str(), id.as_str()), ("AA", "P4"));
    drop(s);

    let (status, summary, stderr) = stop(server);
    assert_eq!(status, Some(3), "dead letters: exit 3\n{stderr}");
    // P1-4, B1, E1-6; not the ACK.
    assert_eq!(summary["records_in"], 11, "{summary}");
    assert_eq!(summary["dead_lettered"], 5, "P2, P3, B1, E3, E4: {summary}");
    let line = summary["warnings"][0].as_str().unwrap();
    assert!(line.contains("1 ACKs received"), "{line}");
    let dead = rows(&dir.path().join("dlq.ndjson"));
    assert_eq!(dead.len(), 5);
    assert!(!stderr.contains("DOE"), "no PHI in logs");
}

/// Polls `path` until it holds `n` rows (or `limit` passes); returns them.
fn rows_when(path: &Path, n: usize, limit: Duration) -> Vec<serde_json::Value> {
    let started = Instant::now();
    loop {
        let r = rows(path);
        if r.len() >= n || started.elapsed() > limit {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kafka_handoff_acks_once_the_topic_has_the_message() {
    let topic = support::unique("mllp-in");
    support::create_topics(&[(&topic, 2)]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let group = support::unique("mllp-group");
    let p = pipeline(
        dir.path(),
        port,
        &format!("  handoff: {{topic: {topic}, group: {group}}}\n"),
    );
    support::add_kafka_block(&p);
    let server = serve(&p, port);
    let n = 300;
    let acks_dir = send_with_one_bad(port, n, dir.path());
    let acks = acks(&acks_dir);
    assert_eq!(acks.len(), n);
    assert_eq!(acks.iter().filter(|a| a.1 == "AA").count(), n - 1);

    // Every acknowledged message is on the topic, keyed and labelled by its connection.
    let on_topic = support::read_topic(&topic, n, Duration::from_secs(30));
    assert_eq!(on_topic.len(), n, "all {n} on the topic");
    let origin = format!("mllp://127.0.0.1:{port}/127.0.0.1:");
    for m in &on_topic {
        let source = m.header("plexus.record-source");
        assert!(source.starts_with(&origin), "{source}");
        assert_eq!(m.key.as_deref(), Some(source.as_bytes()));
    }
    let connections: HashSet<&str> = on_topic
        .iter()
        .map(|m| m.header("plexus.record-source"))
        .collect();
    assert_eq!(connections.len(), 4, "4 connections, each one key");

    // The flow reads the topic back through its group.
    let out = rows_when(
        &dir.path().join("out.ndjson"),
        n - 1,
        Duration::from_secs(60),
    );
    let (code, summary, stderr) = stop(server);
    assert_eq!(code, Some(3), "a dead letter: {stderr}");
    let ids: HashSet<&str> = out
        .iter()
        .map(|r| r["_control_id"].as_str().unwrap())
        .collect();
    assert_eq!((out.len(), ids.len()), (n - 1, n - 1), "each once");
    assert!(
        out.iter().all(|r| r["_source"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{topic}/"))),
        "{}",
        out[0]
    );
    assert_eq!(summary["records_in"], n as u64, "{summary}");
    assert_eq!(summary["dead_lettered"], 1, "{summary}");
    assert!(!stderr.contains("DOE"), "{stderr}");
    // The group committed every message: a restart would find nothing to do.
    let committed: i64 = support::committed(&group, &topic, 2).values().sum();
    assert_eq!(committed, n as i64);
}

#[test]
fn peers_outside_allow_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let p = pipeline(dir.path(), port, "  allow: [10.0.0.0/8, \"192.168.1.7\"]\n");
    let server = serve(&p, port);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = s.write_all(&frame(&adt("N1", "")));
    assert_eq!(read_frame(&mut s), None, "closed, no ACK");
    let (_, summary, _) = stop(server);
    assert_eq!(summary["records_in"], 0);
    // Two: `serve`'s probe that the port is up, and ours.
    assert!(
        summary["warnings"][0]
            .as_str()
            .unwrap()
            .contains("2 refused peers"),
        "{summary}"
    );
}

#[test]
fn validate_locates_mllp_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(
        dir.path(),
        1,
        "  allow: [nowhere]\n  unparsable: XX\n  idle_timeout: soon\n",
    );
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("127.0.0.1:1", "localhost");
    std::fs::write(&p, text).unwrap();
    let out = Command::new(BIN)
        .args(["validate", p.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for want in [
        "mllp.yaml:5:11: \"localhost\" is not host:port",
        "mllp.yaml:8:11: \"nowhere\" is not an address or CIDR range",
        "mllp.yaml:9:15: unparsable: \"XX\" is not AE or AA",
        "mllp.yaml:10:17:",
    ] {
        assert!(err.contains(want), "{want:?} in:\n{err}");
    }
}

fn plexus(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn mllp_send_prints_acks_from_the_listener_and_mllp_listen_prints_messages() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.hl7");
    std::fs::write(
        &feed,
        [b"garbage\r".to_vec(), adt("S1", ""), adt("S2", "")].concat(),
    )
    .unwrap();
    // plexus mllp listen on one side, plexus mllp send on the other.
    let port = free_port();
    let listener = Command::new(BIN)
        .args(["mllp", "listen", &port.to_string(), "--count", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_port(port, Duration::from_secs(10));
    let to = format!("127.0.0.1:{port}");
    let sent = plexus(&[
        "mllp",
        "send",
        feed.to_str().unwrap(),
        "--to",
        &to,
        "--brief",
    ]);
    let acks = String::from_utf8_lossy(&sent.stdout);
    let lines: Vec<&str> = acks.lines().collect();
    assert_eq!(lines.len(), 3, "{acks}");
    assert!(lines[0].starts_with("0\tAR"), "{acks}");
    assert!(lines[1].starts_with("1\tAA\tS1"), "{acks}");
    assert!(lines[2].starts_with("2\tAA\tS2"), "{acks}");
    assert_eq!(sent.status.code(), Some(1), "a message was rejected");
    let heard = listener.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&heard.stdout);
    assert!(
        text.contains("|S1|P|2.5.1\nPID|1||S1") && text.contains("garbage\n"),
        "{text}"
    );

    // Against the pipeline's listener: full ACKs printed, exit 0 when all accepted.
    let port = free_port();
    let p = pipeline(dir.path(), port, "");
    let server = serve(&p, port);
    let ok = dir.path().join("ok.hl7");
    std::fs::write(&ok, [adt("T1", ""), adt("T2", "")].concat()).unwrap();
    let sent = plexus(&[
        "mllp",
        "send",
        ok.to_str().unwrap(),
        "--to",
        &format!("127.0.0.1:{port}"),
    ]);
    let out = String::from_utf8_lossy(&sent.stdout);
    assert_eq!(sent.status.code(), Some(0), "{out}");
    assert!(
        out.contains("MSA|AA|T1") && out.contains("MSA|AA|T2"),
        "{out}"
    );
    let (code, summary, _) = stop(server);
    assert_eq!(
        (code, summary["delivered"].as_u64()),
        (Some(0), Some(2)),
        "{summary}"
    );
}

/// python-hl7's asyncio MLLP server on `port`, answering as `script` says; its log in `log`.
fn receiver(port: u16, log: &Path, script: &str, extra: &[String]) -> Child {
    let mut child = Command::new(venv_python("hl7-venv"))
        .arg(repo().join("tests/support/mllp_receiver.py"))
        .args([&port.to_string(), log.to_str().unwrap(), script])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "listening");
    child
}

/// `plexus run P --json` in `dir`, to its end.
fn run_in(dir: &Path, p: &Path) -> Output {
    Command::new(BIN)
        .args(["run", p.to_str().unwrap(), "--json"])
        .current_dir(dir)
        .output()
        .unwrap()
}

fn sink_pipeline(dir: &Path, port: u16, retry: &str) -> PathBuf {
    let input = dir.join("in.hl7");
    std::fs::write(
        &input,
        (1..=5)
            .flat_map(|i| adt(&format!("M{i}"), ""))
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let p = dir.join("send.yaml");
    std::fs::write(
        &p,
        format!(
            r#"name: mllp_send
integration: {{id: mllp-test}}
source: {{type: file, path: in.hl7, format: hl7}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: mrn, path: PID-3.1}}
sinks:
  - {{name: lab, input: parse, type: mllp, to: "127.0.0.1:{port}", timeout: 2s, retry: {retry}}}
dlq: {{path: dlq.ndjson}}
"#
        ),
    )
    .unwrap();
    p
}

#[test]
fn a_sink_pool_keeps_each_keys_messages_in_order_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("received.tsv");
    let mut server = receiver(port, &log, "", &["--peers".to_string()]);
    // sink_pipeline writes 5 messages; these replace them.
    let p = sink_pipeline(dir.path(), port, "{max_attempts: 2, base: 10ms}");
    // 240 messages for 12 patients, interleaved.
    let input = dir.path().join("in.hl7");
    let messages: Vec<u8> = (0..240)
        .flat_map(|i| {
            String::from_utf8(adt(&format!("Q{i}"), ""))
                .unwrap()
                .replace(&format!("PID|1||Q{i}^"), &format!("PID|1||P{}^", i % 12))
                .into_bytes()
        })
        .collect();
    std::fs::write(&input, messages).unwrap();
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("timeout: 2s,", "timeout: 2s, connections: 4, key: mrn,");
    std::fs::write(&p, text).unwrap();
    let out = run_in(dir.path(), &p);
    server.kill().unwrap();
    let _ = server.wait();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["delivered"], 240, "{summary}");
    let received = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Vec<&str>> = received.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 240);
    let mut connection_of: HashMap<&str, &str> = HashMap::new();
    let mut last: HashMap<&str, usize> = HashMap::new();
    for l in &lines {
        let (control, mrn, peer) = (l[0], l[2], l[3]);
        let n: usize = control[1..].parse().unwrap();
        // One connection per patient, and that patient's messages in the order sent.
        assert_eq!(*connection_of.entry(mrn).or_insert(peer), peer, "{mrn}");
        if let Some(prev) = last.insert(mrn, n) {
            assert!(prev < n, "{mrn}: Q{prev} before Q{n}");
        }
    }
    let connections: HashSet<&str> = connection_of.values().copied().collect();
    assert!(
        connections.len() > 1,
        "several connections: {connections:?}"
    );
    assert_eq!(connection_of.len(), 12);
}

#[test]
fn the_sink_sends_in_order_and_handles_ae_ar_and_dropped_connections() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("received.tsv");
    let mut server = receiver(port, &log, "AA,AE,AR,AA,DROP,AA", &[]);
    let p = sink_pipeline(dir.path(), port, "{max_attempts: 3, base: 50ms}");
    let out = run_in(dir.path(), &p);
    server.kill().unwrap();
    let _ = server.wait();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // What the receiver saw, in order: M3 again after AR, M4 again after the dropped connection.
    let received = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        received, "M1\tAA\nM2\tAE\nM3\tAR\nM3\tAA\nM4\tDROP\nM4\tAA\nM5\tAA\n",
        "{stderr}"
    );
    assert_eq!(summary["delivered"], 4, "{summary}");
    assert_eq!(summary["dead_lettered"], 1, "{summary}");
    assert_eq!(summary["unavailable"], 0, "{summary}");
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let dlq = rows(&dir.path().join("dlq.ndjson"));
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["control_id"], "M2");
    let reason = dlq[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("AE from 127.0.0.1:{port}")) && reason.contains("scripted AE"),
        "{reason}"
    );

    // Nobody listening: retried, then dead letters counted as unavailable (exit 4).
    let dead_port = free_port();
    let p = sink_pipeline(dir.path(), dead_port, "{max_attempts: 2, base: 10ms}");
    let out = run_in(dir.path(), &p);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            summary["dead_lettered"].as_u64(),
            summary["unavailable"].as_u64()
        ),
        (Some(5), Some(5)),
        "{summary}"
    );
    assert_eq!(out.status.code(), Some(4));
    let dlq = rows(&dir.path().join("dlq.ndjson"));
    assert!(
        dlq[0]["reason"]
            .as_str()
            .unwrap()
            .contains("(after 2 attempts)"),
        "{}",
        dlq[0]
    );
}

#[test]
fn mutual_tls_against_python_peers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = support::Pki::new(dir.path());
    let port = free_port();
    let tls = format!(
        "  tls: {{cert: {}, key: {}, client_ca: {}}}\n",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem")
    );
    let p = pipeline(dir.path(), port, &tls);
    let server = serve(&p, port);
    // Python's ssl (OpenSSL) with a client certificate: accepted.
    let acks_dir = dir.path().join("acks");
    std::fs::create_dir(&acks_dir).unwrap();
    let tls_args = [
        "--tls".to_string(),
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    ];
    let args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let sent = sender(port, 2, 50, &acks_dir, &args).output().unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(acks(&acks_dir).iter().all(|a| a.1 == "AA"));
    // Without a client certificate, and in plain TCP: refused, nothing processed.
    let feed = dir.path().join("one.hl7");
    std::fs::write(&feed, adt("NOCERT", "")).unwrap();
    let to = format!("127.0.0.1:{port}");
    let ca = pki.path("ca.pem");
    let out = plexus(&[
        "mllp",
        "send",
        feed.to_str().unwrap(),
        "--to",
        &to,
        "--tls-ca",
        &ca,
    ]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = plain.write_all(&frame(&adt("PLAIN", "")));
    assert_eq!(read_frame(&mut plain), None);
    drop(plain);
    // With the certificate, `plexus mllp send` gets through too.
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let ok = plexus(&[
        "mllp",
        "send",
        feed.to_str().unwrap(),
        "--to",
        &to,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--brief",
    ]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let (_, summary, _) = stop(server);
    assert_eq!(summary["records_in"], 51, "{summary}");
    let line = summary["warnings"][0].as_str().unwrap();
    // The probe in `serve`, the client without a certificate, the plain TCP one.
    assert!(line.contains("3 failed TLS handshakes"), "{line}");

    // The sink over TLS to python-hl7's server (Python's ssl, client certificate required).
    let rport = free_port();
    let log = dir.path().join("tls-received.tsv");
    let tls_files = ["--tls", "server.pem", "server.key", "ca.pem"];
    let extra: Vec<String> = tls_files
        .iter()
        .map(|f| {
            if f.starts_with("--") {
                f.to_string()
            } else {
                pki.path(f)
            }
        })
        .collect();
    let mut rx = receiver(rport, &log, "", &extra);
    let p = sink_pipeline(dir.path(), rport, "{max_attempts: 1}");
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "timeout: 2s,",
        &format!("timeout: 2s, tls: {{ca: {ca}, cert: {cert}, key: {key}}},"),
    );
    std::fs::write(&p, text).unwrap();
    let out = run_in(dir.path(), &p);
    rx.kill().unwrap();
    let _ = rx.wait();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["delivered"],
        5,
        "{summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 5);
}
