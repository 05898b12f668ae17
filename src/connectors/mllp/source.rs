//! The MLLP listener as a source. Connections are served on the runtime; each message is
//! appended to the spool and fsynced (shared with other connections' messages: group commit)
//! before its ACK is written, so an acknowledged message survives a `kill -9`. The flow reads
//! the spool like a partition and commits what it finished; a restart processes the rest.
//!
//! A connection reads no further until the ACKs of what it read are out, so a slow disk or a
//! full spool slows senders down instead of filling memory. Frames that arrived together (a
//! sender that does not wait for each ACK) are spooled in one group and answered in one write.
//!
//! With `ack: {after: processed}` the ACK waits for the pipeline's verdict on the message
//! (`spooled::Settle`), and enhanced-mode senders get an application ACK after the commit
//! ACK as MSH-16 asks. With `handoff:` the durable store is a Kafka topic instead of the
//! spool (`connectors::handoff`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::config::MllpSourcePlan;
use crate::connectors::handoff::{self, Handoff};
use crate::connectors::registry::SourceCx;
use crate::connectors::spool::SpoolError;
use crate::connectors::spooled::{
    Counters, ListenerFront, Listening, Settle, SpooledSource, Verdict, bind,
};
use crate::connectors::{BatchSource, ConnectorError};
use crate::formats::hl7::{
    AckCode, AckError, AckOptions, Message, build_ack, build_nack_for_unparsed,
};
use crate::formats::mllp::{Deframer, Event, frame};

/// The listener's counters (the run summary reports them).
#[derive(Default)]
pub struct ListenerStats {
    pub connections: AtomicU64,
    /// Closed at once: over `max_connections`.
    pub refused_busy: AtomicU64,
    /// Closed at once: the peer is not in `allow`.
    pub refused_peer: AtomicU64,
    pub idle_closed: AtomicU64,
    pub messages: AtomicU64,
    /// ACKs sent, by code (AA, AE, AR, CA, CE, CR).
    pub acks: [AtomicU64; 6],
    pub junk_bytes: AtomicU64,
    /// ACK messages received (a sender's commit ACK of an application ACK): not spooled.
    pub acks_in: AtomicU64,
    pub truncated: AtomicU64,
    pub too_large: AtomicU64,
    /// TLS handshakes that failed (no or a wrong client certificate, plain TCP, ...).
    pub tls_failed: AtomicU64,
    pub open: AtomicUsize,
}

const CODES: [AckCode; 6] = [
    AckCode::AA,
    AckCode::AE,
    AckCode::AR,
    AckCode::CA,
    AckCode::CE,
    AckCode::CR,
];

impl ListenerStats {
    fn acked(&self, code: AckCode) {
        let i = CODES.iter().position(|c| *c == code).expect("every code");
        self.acks[i].fetch_add(1, Ordering::Relaxed);
    }

    /// One line for the run summary.
    pub fn describe(&self, listen: &str) -> String {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let acks: Vec<String> = CODES
            .iter()
            .zip(&self.acks)
            .filter(|(_, a)| n(a) > 0)
            .map(|(c, a)| format!("{} {}", c.as_str(), n(a)))
            .collect();
        format!(
            "mllp {listen}: {} connections ({} refused over the limit, {} refused peers, {} failed TLS handshakes, {} closed idle), {} messages, ACKs [{}], {} ACKs received, {} bytes outside frames, {} truncated frames, {} over the size limit",
            n(&self.connections),
            n(&self.refused_busy),
            n(&self.refused_peer),
            n(&self.tls_failed),
            n(&self.idle_closed),
            n(&self.messages),
            acks.join(", "),
            n(&self.acks_in),
            n(&self.junk_bytes),
            n(&self.truncated),
            n(&self.too_large),
        )
    }
}

/// What every connection shares.
struct Cx {
    plan: MllpSourcePlan,
    spool: Handoff,
    stats: Arc<ListenerStats>,
    listen: String,
    stop: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    settle: Option<Arc<Settle>>,
}

impl Counters for ListenerStats {
    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn describe(&self, at: &str) -> String {
        ListenerStats::describe(self, at)
    }
}

/// A running listener: the front of a spooled source.
pub type MllpFront = ListenerFront<ListenerStats>;

/// The MLLP source: the listener in front of its spool.
pub type MllpSource = SpooledSource<MllpFront>;

/// Opens the spool (recovering what a crash left) and starts listening. Call within the
/// runtime.
pub fn start(
    plan: &MllpSourcePlan,
    source: SourceCx<'_>,
) -> Result<Box<dyn BatchSource>, ConnectorError> {
    let (spool, reader) = handoff::open(
        "mllp",
        &plan.spool,
        plan.spool_options.clone(),
        plan.handoff.as_ref(),
        source.kafka,
    )?;
    let (listener, listen) = bind("mllp", plan.listen)?;
    let tls = plan.tls.as_ref().map(|t| t.acceptor("mllp")).transpose()?;
    let stats = Arc::new(ListenerStats::default());
    // Application ACKs wait for verdicts by spool offset: only the local spool settles here.
    let settle = spool.settles().then(|| Arc::new(Settle::default()));
    let (plan2, stats2, listen2, settle2) =
        (plan.clone(), stats.clone(), listen.clone(), settle.clone());
    let listening = Listening::spawn(move |stop| {
        let cx = Arc::new(Cx {
            plan: plan2,
            spool,
            stats: stats2,
            listen: listen2,
            stop,
            tls,
            settle: settle2,
        });
        accept_loop(listener, cx)
    });
    tracing::info!(listen = %listen, "mllp: listening");
    eprintln!("mllp: listening on {listen}");
    let front = MllpFront {
        stats,
        at: listen,
        listening,
        settle,
    };
    handoff::source(front, reader, plan.handoff.as_ref(), source)
}

async fn accept_loop(listener: TcpListener, cx: Arc<Cx>) {
    let mut stop = cx.stop.clone();
    let limit = Arc::new(tokio::sync::Semaphore::new(cx.plan.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "mllp: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        cx.stats.connections.fetch_add(1, Ordering::Relaxed);
        if !cx.plan.allow.is_empty() && !cx.plan.allow.iter().any(|n| n.contains(&peer.ip())) {
            cx.stats.refused_peer.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %peer, "mllp: connection refused: peer not in allow");
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            cx.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %peer, limit = cx.plan.max_connections, "mllp: connection refused: too many connections");
            continue;
        };
        let cx = cx.clone();
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            cx.stats.open.fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = %peer, "mllp: connection opened");
            let served = match &cx.tls {
                None => serve(stream, peer, &cx).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await;
                    match handshake {
                        Ok(Ok(tls)) => serve(tls, peer, &cx).await,
                        failed => {
                            cx.stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                            Err(match failed {
                                Ok(Err(e)) => e,
                                _ => std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "TLS handshake timed out",
                                ),
                            })
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::info!(peer = %peer, error = %e, "mllp: connection ended");
            } else {
                tracing::info!(peer = %peer, "mllp: connection closed");
            }
            cx.stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
        // Reap finished connections so the set does not grow with every one ever served.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Serves one connection until the peer closes it, it idles out, or the listener stops.
async fn serve<S>(mut stream: S, peer: SocketAddr, cx: &Cx) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let origin = format!("mllp://{}/{peer}", cx.listen);
    let mut stop = cx.stop.clone();
    let mut deframer = Deframer::new(cx.plan.max_message_bytes);
    let mut buf = vec![0u8; 64 << 10];
    let mut events = Vec::new();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let n = tokio::select! {
            r = tokio::time::timeout(cx.plan.idle_timeout, stream.read(&mut buf)) => match r {
                Ok(r) => r?,
                Err(_) => {
                    cx.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        if n == 0 {
            deframer.finish(&mut events);
        } else {
            deframer.push(&buf[..n], &mut events);
        }
        // Frames that came in together (a sender that does not wait for each ACK) are
        // spooled together: one group commit, then their ACKs in order.
        let mut frames = Vec::new();
        for event in events.drain(..) {
            if let Event::Frame(message) = event {
                cx.stats.messages.fetch_add(1, Ordering::Relaxed);
                frames.push(message);
                continue;
            }
            if !frames.is_empty()
                && !answer_frames(&mut stream, cx, std::mem::take(&mut frames), &origin).await?
            {
                return Ok(());
            }
            match event {
                Event::Frame(_) => unreachable!("frames are gathered above"),
                Event::Junk(bytes) => {
                    cx.stats
                        .junk_bytes
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                    tracing::warn!(peer = %peer, bytes, "mllp: bytes outside a frame skipped");
                }
                Event::Truncated(bytes) => {
                    cx.stats.truncated.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %peer, bytes, "mllp: a frame was cut short and dropped (not acknowledged)");
                }
                Event::TooLarge(bytes) => {
                    cx.stats.too_large.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %peer, bytes, limit = cx.plan.max_message_bytes, "mllp: message over the size limit; closing the connection");
                    let text = format!(
                        "message over the size limit ({} bytes)",
                        cx.plan.max_message_bytes
                    );
                    let ack = reject(&[], AckCode::AR, &text);
                    cx.stats.acked(AckCode::AR);
                    stream.write_all(&frame(&ack)).await?;
                    stream.shutdown().await?;
                    return Ok(());
                }
            }
        }
        if !frames.is_empty() && !answer_frames(&mut stream, cx, frames, &origin).await? {
            return Ok(());
        }
        if n == 0 {
            return Ok(());
        }
    }
}

/// Spools `frames` and writes their answers in order. Returns false when the connection
/// was closed instead (stopping before a message settled: the sender resends it).
async fn answer_frames<S>(
    stream: &mut S,
    cx: &Cx,
    frames: Vec<Vec<u8>>,
    origin: &str,
) -> std::io::Result<bool>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    for answer in answer_all(cx, frames, origin).await {
        if let Some(ack) = answer.now {
            out.extend_from_slice(&frame(&ack));
        }
        let Some(mut later) = answer.later else {
            continue;
        };
        // What is answered goes out before waiting on this message's verdict.
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        let verdict = (&mut later.verdict).await.unwrap_or(Verdict::Unknown);
        if verdict == Verdict::Unknown {
            if later.enhanced.is_none() {
                // Stopping before it settled: no answer, the sender resends.
                stream.shutdown().await?;
                return Ok(false);
            }
            continue;
        }
        if let Some(ack) = settled_ack(cx, &later, &verdict) {
            out.extend_from_slice(&frame(&ack));
        }
    }
    if !out.is_empty() {
        stream.write_all(&out).await?;
    }
    Ok(true)
}

/// A negative ACK for `message` (or for nothing readable) with an ERR segment.
fn reject(message: &[u8], code: AckCode, text: &str) -> Vec<u8> {
    let options = AckOptions::new(code)
        .text(text)
        .error(AckError::internal(Some(text.to_string())));
    match Message::parse(message) {
        Ok(m) => build_ack(&m, &options),
        Err(e) => build_nack_for_unparsed(message, &e, &options),
    }
}

/// What to answer a message: an ACK now (None: the sender asked for none), and maybe one
/// more once the pipeline has settled it.
struct Answer {
    now: Option<Vec<u8>>,
    later: Option<Later>,
}

/// An answer that waits for the message's verdict.
struct Later {
    verdict: tokio::sync::oneshot::Receiver<Verdict>,
    message: Vec<u8>,
    /// Enhanced mode: the application ACK, sent as MSH-16 asks (AL, ER, SU).
    enhanced: Option<String>,
}

/// Whether an enhanced-mode sender asked for an ACK with `code`: MSH-15 (commit) and MSH-16
/// (application) take table 0155 — AL always (also when empty), NE never, ER on errors, SU
/// on success.
fn asked_for(accept_type: &str, code: AckCode) -> bool {
    match accept_type {
        "NE" => false,
        "ER" => code.is_negative(),
        "SU" => !code.is_negative(),
        _ => true,
    }
}

/// An HL7 ID field of `m`, trimmed and upper-cased ("" when empty).
fn id_field(m: &Message<'_>, field: &str) -> String {
    m.query(field)
        .ok()
        .flatten()
        .map(|v| v.trim().to_ascii_uppercase())
        .unwrap_or_default()
}

/// Spools the messages (one atomic append), then builds each one's ACK.
async fn answer_all(cx: &Cx, frames: Vec<Vec<u8>>, origin: &str) -> Vec<Answer> {
    let parsed: Vec<_> = frames.iter().map(|f| Message::parse(f)).collect();
    // A sender's commit ACK of our application ACK: not data, and never answered.
    let is_ack = |p: &Result<Message<'_>, _>| matches!(p, Ok(m) if id_field(m, "MSH-9.1") == "ACK");
    let records: Vec<(String, Vec<u8>)> = frames
        .iter()
        .zip(&parsed)
        .filter(|(_, p)| !is_ack(p))
        .map(|(f, _)| (origin.to_string(), f.clone()))
        .collect();
    let spooled = if records.is_empty() {
        Ok(Vec::new())
    } else {
        cx.spool.append_all(records).await
    };
    let mut offsets = spooled.as_ref().map(|o| o.iter().copied());
    let mut answers = Vec::with_capacity(frames.len());
    for (message, parsed) in frames.iter().zip(&parsed) {
        if is_ack(parsed) {
            cx.stats.acks_in.fetch_add(1, Ordering::Relaxed);
            answers.push(Answer {
                now: None,
                later: None,
            });
            continue;
        }
        let spooled = match &mut offsets {
            Ok(o) => Ok(o.next().expect("an offset per record")),
            Err(e) => Err(*e),
        };
        answers.push(answer(cx, message, parsed, spooled));
    }
    answers
}

/// The ACK for one spooled message (or one the spool refused).
fn answer(
    cx: &Cx,
    message: &[u8],
    parsed: &Result<Message<'_>, crate::formats::hl7::Hl7Error>,
    spooled: Result<u64, &SpoolError>,
) -> Answer {
    // Enhanced mode when MSH-15 or MSH-16 is valued (HL7 v2.5 2.9.3): commit ACKs, sent as
    // MSH-15 asks (AL always, NE never, ER on errors, SU on success), and application ACKs
    // as MSH-16 asks.
    let (enhanced, msh15, msh16) = match &parsed {
        Ok(m) => {
            let msh15 = id_field(m, "MSH-15");
            let msh16 = id_field(m, "MSH-16");
            (!msh15.is_empty() || !msh16.is_empty(), msh15, msh16)
        }
        Err(_) => (false, String::new(), String::new()),
    };
    let code = |original: AckCode| match (enhanced, original) {
        (false, c) => c,
        (true, AckCode::AA) => AckCode::CA,
        (true, AckCode::AE) => AckCode::CE,
        (true, _) => AckCode::CR,
    };
    let mut later = None;
    let (ack_code, ack) = match (spooled, &parsed) {
        (Err(e), _) => {
            let c = code(AckCode::AR);
            let busy = matches!(e, SpoolError::Full { .. } | SpoolError::Stalled { .. });
            if !busy {
                tracing::error!(error = %e, "mllp: spool append failed");
            }
            let text = if busy {
                format!("busy, try again later: {e}")
            } else {
                "message not stored; send it again".to_string()
            };
            (c, reject(message, c, &text))
        }
        (Ok(offset), Ok(m)) => {
            let wait = if enhanced {
                matches!(msh16.as_str(), "AL" | "ER" | "SU").then(|| Some(msh16.clone()))
            } else {
                cx.plan.ack_processed.then_some(None)
            };
            if let (Some(enhanced), Some(settle)) = (wait, &cx.settle) {
                let original_mode = enhanced.is_none();
                later = Some(Later {
                    verdict: settle.wait(offset),
                    message: message.to_vec(),
                    enhanced,
                });
                if original_mode {
                    // The one ACK waits for the verdict.
                    return Answer { now: None, later };
                }
            }
            let c = code(AckCode::AA);
            (c, build_ack(m, &AckOptions::new(c)))
        }
        (Ok(_), Err(e)) => {
            if cx.plan.nack_unparsable {
                let c = code(AckCode::AE);
                (c, build_nack_for_unparsed(message, e, &AckOptions::new(c)))
            } else {
                // Accepted as configured; the ERR says why it will be dead-lettered.
                let c = code(AckCode::AA);
                let mut warning = AckError::from_error(e, None);
                warning.severity = 'W';
                let options = AckOptions::new(c).error(warning);
                (c, build_nack_for_unparsed(message, e, &options))
            }
        }
    };
    let send = !enhanced || asked_for(&msh15, ack_code);
    if send {
        cx.stats.acked(ack_code);
    }
    Answer {
        now: send.then_some(ack),
        later,
    }
}

/// The ACK for a settled message (None: none is sent, or the verdict never came).
fn settled_ack(cx: &Cx, later: &Later, verdict: &Verdict) -> Option<Vec<u8>> {
    let m = Message::parse(&later.message).ok()?;
    let options = match verdict {
        Verdict::Unknown => return None,
        Verdict::Accepted => AckOptions::new(AckCode::AA),
        Verdict::Dead {
            stage,
            rule,
            reason,
        } => {
            let text = format!("{stage}: {reason}");
            let mut error = AckError::internal(Some(text.clone()));
            if cx.plan.rejects(stage, rule) {
                AckOptions::new(AckCode::AE).text(text).error(error)
            } else {
                // Accepted as configured; the ERR says it was dead-lettered, and why.
                error.severity = 'W';
                AckOptions::new(AckCode::AA).error(error)
            }
        }
    };
    // Original mode: the one ACK always goes.
    let send = later
        .enhanced
        .as_deref()
        .is_none_or(|asks| asked_for(asks, options.code));
    if !send {
        return None;
    }
    cx.stats.acked(options.code);
    Some(build_ack(&m, &options))
}
