//! `plexus mllp send|listen`: MLLP from the shell, for testing an interface by hand.
//!
//! `send` exit codes: 0 when every message got a positive ACK (AA/CA), 1 when some got a
//! negative one (or none in time), 2 on usage or connection errors.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::formats::framing::{SourceFormat, frame as split_records};
use crate::formats::hl7::{AckCode, AckOptions, Message, build_ack, build_nack_for_unparsed};
use crate::formats::mllp::{Deframer, Event, frame};

#[derive(Debug, Subcommand)]
pub enum MllpCommand {
    /// Sends a file's messages (plain or FHS/BHS batch) one at a time, waiting for each ACK,
    /// and prints the ACKs.
    Send {
        /// HL7 file; `-` for stdin.
        file: String,
        /// Where to: HOST:PORT.
        #[arg(long, value_name = "HOST:PORT")]
        to: String,
        /// How long to wait for each ACK.
        #[arg(long, default_value = "30s", value_name = "DURATION")]
        timeout: String,
        /// Print one line per ACK (index, MSA-1, MSA-2, MSA-3) instead of the whole ACK.
        #[arg(long)]
        brief: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Listens, prints each message that arrives (segments one per line, a blank line
    /// after each) and answers it.
    Listen {
        /// Port to listen on.
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// MSA-1 for messages that parse (those that do not get AR).
        #[arg(long, default_value = "AA")]
        code: AckCode,
        /// Exit after this many messages.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

/// MLLP over TLS (any of these turns it on).
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    /// Use TLS, trusting this CA (PEM); `--tls` alone trusts the system's CAs.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    /// Use TLS with the system's CAs.
    #[arg(long)]
    tls: bool,
    /// A client certificate and key (PEM) for receivers that require one.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// The name the receiver's certificate must carry (default: the host of --to).
    #[arg(long)]
    server_name: Option<String>,
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Io for T {}

async fn connect(to: &str, tls: &TlsArgs) -> Result<Box<dyn Io>> {
    let tcp = tokio::net::TcpStream::connect(to)
        .await
        .with_context(|| format!("connect to {to}"))?;
    tcp.set_nodelay(true)?;
    if !tls.tls && tls.tls_ca.is_none() && tls.tls_cert.is_none() {
        return Ok(Box::new(tcp));
    }
    let identity = tls.tls_cert.as_deref().zip(tls.tls_key.as_deref());
    let config = crate::net::tls::client_config(tls.tls_ca.as_deref(), identity)
        .map_err(|e| anyhow::anyhow!("tls: {e}"))?;
    let name = crate::net::tls::server_name(to, tls.server_name.as_deref())
        .map_err(|e| anyhow::anyhow!("tls: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS with {to}"))?;
    Ok(Box::new(stream))
}

pub fn run(cmd: MllpCommand) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        MllpCommand::Send {
            file,
            to,
            timeout,
            brief,
            tls,
        } => {
            let timeout = crate::config::parse_duration(&timeout)
                .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
            rt.block_on(send(&file, &to, timeout, brief, &tls))
        }
        MllpCommand::Listen {
            port,
            host,
            code,
            count,
        } => rt.block_on(listen(&host, port, code, count)),
    }
}

/// MSA-1, MSA-2 and MSA-3 of an ACK.
fn msa(ack: &[u8]) -> (String, String, String) {
    let Ok(m) = Message::parse(ack) else {
        return ("?".into(), String::new(), "unreadable ACK".into());
    };
    let get = |p: &str| {
        m.query(p)
            .ok()
            .flatten()
            .map(|v| v.into_owned())
            .unwrap_or_default()
    };
    (get("MSA-1"), get("MSA-2"), get("MSA-3"))
}

async fn send(
    file: &str,
    to: &str,
    timeout: Duration,
    brief: bool,
    tls: &TlsArgs,
) -> Result<ExitCode> {
    let input = crate::cli::read_input(file)?;
    let mut warnings = Vec::new();
    let spans = split_records(&input, SourceFormat::Hl7, file, &mut warnings);
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let mut stream = connect(to, tls).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut deframer = Deframer::new(64 << 20);
    let mut buf = vec![0u8; 64 << 10];
    let mut events = Vec::new();
    let (mut positive, mut negative, mut missing) = (0u64, 0u64, 0u64);
    for (i, (start, end)) in spans.into_iter().enumerate() {
        stream.write_all(&frame(&input[start..end])).await?;
        let ack = loop {
            if let Some(pos) = events.iter().position(|e| matches!(e, Event::Frame(_))) {
                let Event::Frame(a) = events.remove(pos) else {
                    unreachable!()
                };
                break Some(a);
            }
            match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break None,
                Ok(Ok(n)) => deframer.push(&buf[..n], &mut events),
            }
        };
        let Some(ack) = ack else {
            missing += 1;
            eprintln!("message {i}: no ACK within {timeout:?} (connection closed or timed out)");
            break;
        };
        let (code, control, text) = msa(&ack);
        if matches!(code.as_str(), "AA" | "CA") {
            positive += 1;
        } else {
            negative += 1;
        }
        if brief {
            writeln!(out, "{i}\t{code}\t{control}\t{text}")?;
        } else {
            for seg in ack.split(|&b| b == b'\r').filter(|s| !s.is_empty()) {
                out.write_all(seg)?;
                out.write_all(b"\n")?;
            }
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    eprintln!(
        "sent to {to}: {positive} accepted, {negative} rejected or errored, {missing} without an ACK"
    );
    Ok(if negative + missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn listen(host: &str, port: u16, code: AckCode, count: Option<u64>) -> Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("listen on {host}:{port}"))?;
    eprintln!("listening on {}", listener.local_addr()?);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                eprintln!("connection from {peer}");
                let mut deframer = Deframer::new(64 << 20);
                let mut buf = vec![0u8; 64 << 10];
                let mut events = Vec::new();
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    deframer.push(&buf[..n], &mut events);
                    for e in events.drain(..) {
                        let Event::Frame(m) = e else {
                            eprintln!("{peer}: {e:?}");
                            continue;
                        };
                        let ack = match Message::parse(&m) {
                            Ok(parsed) => build_ack(&parsed, &AckOptions::new(code)),
                            Err(err) => {
                                build_nack_for_unparsed(&m, &err, &AckOptions::new(AckCode::AR))
                            }
                        };
                        if stream.write_all(&frame(&ack)).await.is_err()
                            || tx.send(m).await.is_err()
                        {
                            return;
                        }
                    }
                }
                eprintln!("{peer} closed");
            });
        }
    });
    let stdout = std::io::stdout();
    let mut n = 0u64;
    while let Some(m) = rx.recv().await {
        let mut out = stdout.lock();
        for seg in m
            .split(|&b| b == b'\r' || b == b'\n')
            .filter(|s| !s.is_empty())
        {
            out.write_all(seg)?;
            out.write_all(b"\n")?;
        }
        out.write_all(b"\n")?;
        out.flush()?;
        n += 1;
        if count.is_some_and(|c| n >= c) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
