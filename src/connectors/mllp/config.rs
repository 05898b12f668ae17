//! The MLLP connector's configuration: `source: {type: mllp, ...}`, how it is checked and what
//! it plans to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::{PlanCx, Spanned};
use crate::connectors::spool::SpoolOptions;
use crate::formats::framing::SourceFormat;

/// `source: {type: mllp, listen: "127.0.0.1:2575", format: hl7}`: an MLLP listener. Each
/// message is made durable in a local spool before it is acknowledged, then processed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MllpSourceConfig {
    /// `host:port` to listen on (`0.0.0.0:2575` for every interface).
    pub listen: Spanned<String>,
    /// MLLP carries HL7 v2: always `hl7`.
    #[schemars(extend("enum" = ["hl7"]))]
    pub format: Spanned<String>,
    /// The spool directory (relative to the pipeline file); default `<pipeline>.spool`.
    pub spool: Option<Spanned<String>>,
    /// Largest message in bytes (default 16 MiB): a larger one gets AR and its connection
    /// is closed.
    pub max_message_bytes: Option<Spanned<usize>>,
    /// Connections served at once (default 256); more are closed at once and counted.
    pub max_connections: Option<Spanned<usize>>,
    /// A connection with nothing to read for this long is closed (default `10m`).
    pub idle_timeout: Option<Spanned<String>>,
    /// Peers allowed to connect: addresses or CIDR ranges (`10.0.0.0/8`). Default: any.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// Unprocessed bytes the spool may hold (default 1 GiB); past it messages get AR "busy".
    pub spool_max_bytes: Option<Spanned<u64>>,
    /// How long the oldest unprocessed message may wait (default `1h`); past it, AR "busy".
    pub spool_max_age: Option<Spanned<String>>,
    /// The answer to a message that does not parse: `AE` (default; with an ERR segment naming
    /// the segment and field) or `AA`. Either way it goes to the dead letters with its bytes.
    #[schemars(extend("enum" = ["AE", "AA"]))]
    pub unparsable: Option<Spanned<String>>,
    /// When the listener answers, and which refusals are AE.
    pub ack: Option<AckSpec>,
    /// Hand each message to this Kafka topic instead of the spool: AA once every in-sync
    /// replica has it; the flow reads it back through its consumer group.
    pub handoff: Option<crate::connectors::handoff::HandoffSpec>,
    /// MLLP over TLS: the listener's certificate and key (PEM), and optionally the CA whose
    /// client certificates it requires.
    pub tls: Option<ListenerTlsSpec>,
}

/// `ack: {after: processed, reject: [checks.mrn_present, parse]}`.
///
/// Enhanced-mode senders (MSH-15/16 valued) get a commit ACK once the message is in the
/// spool, and an application ACK as MSH-16 asks (AL, ER, SU) once the pipeline has settled
/// it, whatever `after` says.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AckSpec {
    /// `received` (default): answer AA once the message is durable in the spool.
    /// `processed`: answer once the pipeline has settled it (delivered, filtered, parked
    /// for retry or dead-lettered), so that a later stage's refusal can be answered AE.
    #[schemars(extend("enum" = ["received", "processed"]))]
    pub after: Option<Spanned<String>>,
    /// The refusals answered AE, as `stage` (any of its rules, or a sink) or `stage.rule`.
    /// Others are answered AA with a warning ERR, and go to the dead letters all the same.
    /// Default: every refusal is AE.
    pub reject: Option<Vec<Spanned<String>>>,
}

/// `tls:` of an MLLP listener (and of an HTTP source).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSpec {
    /// The certificate chain (PEM).
    pub cert: Spanned<String>,
    /// Its private key (PEM, PKCS#8 or RSA).
    pub key: Spanned<String>,
    /// Require client certificates issued by this CA (PEM): mutual TLS.
    pub client_ca: Option<Spanned<String>>,
}

/// `tls:` of an MLLP sink.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SenderTlsSpec {
    /// The CA to trust (PEM); default: the system's.
    pub ca: Option<Spanned<String>>,
    /// A client certificate and key (PEM), for receivers that require one.
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    /// The name the receiver's certificate must carry (default: the host of `to`).
    pub server_name: Option<Spanned<String>>,
}

/// TLS files of a planned listener or sink (read when it starts).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Listener: the clients' CA; sink: the CA to trust.
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// A listener's acceptor (reads the files now); `what` names the listener in errors.
    pub fn acceptor(
        &self,
        what: &str,
    ) -> Result<tokio_rustls::TlsAcceptor, crate::connectors::ConnectorError> {
        let fail =
            |e: String| crate::connectors::ConnectorError::Other(format!("{what}: tls: {e}"));
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Err(fail("a listener needs cert and key".into()));
        };
        let config = crate::net::tls::server_config(cert, key, self.ca.as_deref()).map_err(fail)?;
        Ok(tokio_rustls::TlsAcceptor::from(config))
    }
}

/// Resolves and checks that the files exist (their content is read at start).
fn tls_file(cx: &mut PlanCx<'_>, v: &Option<Spanned<String>>) -> Option<PathBuf> {
    let v = v.as_ref()?;
    let p = cx.resolve(v);
    if !p.is_file() {
        cx.err(v, format!("{} is not a file", p.display()));
    }
    Some(p)
}

impl ListenerTlsSpec {
    /// Also the HTTP source's `tls:`.
    pub(crate) fn plan(&self, cx: &mut PlanCx<'_>) -> TlsFiles {
        TlsFiles {
            cert: tls_file(cx, &Some(self.cert.clone())),
            key: tls_file(cx, &Some(self.key.clone())),
            ca: tls_file(cx, &self.client_ca),
            server_name: None,
        }
    }
}

impl SenderTlsSpec {
    fn plan(&self, cx: &mut PlanCx<'_>) -> TlsFiles {
        if self.cert.is_some() != self.key.is_some() {
            let at = self
                .cert
                .as_ref()
                .or(self.key.as_ref())
                .expect("one is set");
            cx.err(at, "a client certificate needs both cert and key");
        }
        TlsFiles {
            cert: tls_file(cx, &self.cert),
            key: tls_file(cx, &self.key),
            ca: tls_file(cx, &self.ca),
            server_name: self.server_name.as_ref().map(|s| s.to_string()),
        }
    }
}

/// A planned MLLP listener.
#[derive(Debug, Clone)]
pub struct MllpSourcePlan {
    pub listen: SocketAddr,
    pub spool: PathBuf,
    pub spool_options: SpoolOptions,
    pub max_message_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub allow: Vec<ipnet::IpNet>,
    /// Answer AE (else AA) to a message that does not parse.
    pub nack_unparsable: bool,
    /// Answer once the pipeline has settled the message (else once it is spooled).
    pub ack_processed: bool,
    /// Refusals answered AE (`stage` or `stage.rule`); None: all.
    pub reject: Option<Vec<String>>,
    /// Kafka instead of the local spool.
    pub handoff: Option<crate::connectors::handoff::HandoffPlan>,
    pub tls: Option<TlsFiles>,
}

impl MllpSourcePlan {
    /// Whether a dead letter from `stage` for `rules` (comma-separated) is answered AE.
    pub fn rejects(&self, stage: &str, rules: &str) -> bool {
        self.reject.as_ref().is_none_or(|patterns| {
            patterns.iter().any(|p| {
                p == stage
                    || p.strip_prefix(stage)
                        .and_then(|r| r.strip_prefix('.'))
                        .is_some_and(|r| rules.split(',').any(|rule| rule.trim() == r))
            })
        })
    }
}

impl MllpSourceConfig {
    pub fn plan(&self, cx: &mut PlanCx<'_>, format: SourceFormat) -> Option<MllpSourcePlan> {
        if format != SourceFormat::Hl7 {
            cx.err(&self.format, "MLLP carries HL7 v2: format must be hl7");
        }
        let listen = match self.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                cx.err(
                    &self.listen,
                    format!(
                        "{:?} is not host:port (e.g. 127.0.0.1:2575)",
                        self.listen.as_str()
                    ),
                );
                None
            }
        };
        let mut allow = Vec::new();
        for a in &self.allow {
            let net = a
                .parse::<ipnet::IpNet>()
                .or_else(|_| a.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match net {
                Ok(n) => allow.push(n),
                Err(_) => cx.err(
                    a,
                    format!("{:?} is not an address or CIDR range", a.as_str()),
                ),
            }
        }
        let nack_unparsable = match self.unparsable.as_ref().map(|u| u.as_str()) {
            None | Some("AE") => true,
            Some("AA") => false,
            Some(other) => {
                let at = self.unparsable.as_ref().expect("matched Some");
                cx.err(at, format!("unparsable: {other:?} is not AE or AA"));
                true
            }
        };
        let ack = self.ack.as_ref();
        let ack_processed = match ack.and_then(|a| a.after.as_ref()) {
            None => false,
            Some(a) if a.as_str() == "received" => false,
            Some(a) if a.as_str() == "processed" => true,
            Some(a) => {
                cx.err(
                    a,
                    format!("after: {:?} is received or processed", a.as_str()),
                );
                false
            }
        };
        let reject = ack
            .and_then(|a| a.reject.as_ref())
            .map(|r| r.iter().map(|p| p.to_string()).collect());
        let handoff = self.handoff.as_ref().map(|h| h.plan(cx));
        if let (Some(h), true) = (&self.handoff, ack_processed) {
            // Another listener's consumer may process what this one took in.
            cx.err(
                &h.topic,
                "ack after: processed needs the local spool, not a Kafka hand-off",
            );
        }
        let positive = |cx: &mut PlanCx<'_>, v: &Option<Spanned<usize>>, default: usize| match v {
            Some(n) if **n == 0 => {
                cx.err(n, "must be at least 1");
                default
            }
            Some(n) => **n,
            None => default,
        };
        let max_message_bytes = positive(cx, &self.max_message_bytes, 16 << 20);
        let max_connections = positive(cx, &self.max_connections, 256);
        let idle_timeout = cx.duration_or(&self.idle_timeout, Duration::from_secs(600));
        let (spool, spool_options) = crate::connectors::spool::plan_spool(
            cx,
            &self.spool,
            &self.spool_max_bytes,
            &self.spool_max_age,
        );
        Some(MllpSourcePlan {
            listen: listen?,
            spool,
            spool_options,
            max_message_bytes,
            max_connections,
            idle_timeout,
            allow,
            nack_unparsable,
            ack_processed,
            reject,
            handoff,
            tls: self.tls.as_ref().map(|t| t.plan(cx)),
        })
    }
}

/// `{name: lab, input: route.lab, type: mllp, to: "10.1.2.3:2575"}`: each row's HL7 message
/// sent over MLLP, one at a time and in order, waiting for its ACK.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MllpSinkConfig {
    /// The receiver, `host:port`.
    pub to: Spanned<String>,
    /// The column holding the message (text or bytes); default `_raw`, the message as
    /// received.
    pub message: Option<Spanned<String>>,
    /// How long to wait for each ACK (default `30s`); then the attempt counts as failed.
    pub timeout: Option<Spanned<String>>,
    /// Connections sending at once (default 1: every row in order on one connection).
    pub connections: Option<Spanned<usize>>,
    /// With several connections: the column whose value picks the connection (an MRN, a
    /// visit number), so each key's messages arrive in order. Without it rows are spread
    /// in contiguous runs and order holds per connection only.
    pub key: Option<Spanned<String>>,
    /// What an AE/CE answer does: `dead_letter` (default: the receiver refused this message)
    /// or `retry` (as AR/CR, timeouts and refused connections always are).
    #[schemars(extend("enum" = ["dead_letter", "retry"]))]
    pub on_error: Option<Spanned<String>>,
    /// Retries of transient failures, in place (`topic` is not available here).
    pub retry: Option<crate::connectors::http::config::RetrySpec>,
    /// A circuit breaker gating the sends.
    pub breaker: Option<crate::connectors::http::config::BreakerSpec>,
    /// MLLP over TLS.
    pub tls: Option<SenderTlsSpec>,
}

/// A planned MLLP sink.
#[derive(Debug, Clone)]
pub struct MllpSinkPlan {
    pub to: String,
    pub message: String,
    pub connections: usize,
    pub key: Option<String>,
    pub timeout: Duration,
    /// AE/CE answers are retried (else dead-lettered at once).
    pub retry_errors: bool,
    pub retry: crate::resilience::retry::RetryPolicy,
    pub breaker: Option<crate::resilience::breaker::BreakerConfig>,
    pub tls: Option<TlsFiles>,
}

impl MllpSinkConfig {
    pub fn plan(
        &self,
        cx: &mut PlanCx<'_>,
        schema: &arrow::datatypes::SchemaRef,
    ) -> Option<MllpSinkPlan> {
        use crate::connectors::http::config::{plan_breaker, plan_retry};
        use arrow::datatypes::DataType;
        if !self.to.contains(':') {
            cx.err(&self.to, format!("{:?} is not host:port", self.to.as_str()));
        }
        let message = self
            .message
            .as_ref()
            .map_or(crate::record::RAW.to_string(), |m| m.to_string());
        match schema.field_with_name(&message).map(|f| f.data_type()) {
            Ok(DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::LargeBinary) => {
            }
            Ok(other) => {
                let at = self.message.as_ref().unwrap_or(&self.to);
                cx.err(
                    at,
                    format!("column {message} is {other}, not text or bytes"),
                );
            }
            Err(_) => {
                let at = self.message.as_ref().unwrap_or(&self.to);
                cx.err(at, format!("no column {message} in the sink's input"));
            }
        }
        let connections = match &self.connections {
            Some(n) if **n == 0 || **n > 64 => {
                cx.err(n, "connections: from 1 to 64");
                1
            }
            Some(n) => **n,
            None => 1,
        };
        if let Some(k) = &self.key
            && schema.field_with_name(k).is_err()
        {
            cx.err(k, format!("no column {} in the sink's input", k.as_str()));
        }
        let retry_errors = match self.on_error.as_ref().map(|o| o.as_str()) {
            None | Some("dead_letter") => false,
            Some("retry") => true,
            Some(other) => {
                let at = self.on_error.as_ref().expect("matched Some");
                cx.err(at, format!("on_error: {other:?} is dead_letter or retry"));
                false
            }
        };
        let (retry, topic) = plan_retry(cx, self.retry.as_ref());
        if topic.is_some() {
            let at = self
                .retry
                .as_ref()
                .and_then(|r| r.topic.as_ref())
                .expect("a topic");
            cx.err(
                at,
                "an mllp sink retries in place (order matters): no retry topic",
            );
        }
        Some(MllpSinkPlan {
            to: self.to.to_string(),
            message,
            connections,
            key: self.key.as_ref().map(|k| k.to_string()),
            timeout: cx.duration_or(&self.timeout, Duration::from_secs(30)),
            retry_errors,
            retry,
            breaker: self.breaker.as_ref().map(|b| plan_breaker(cx, b)),
            tls: self.tls.as_ref().map(|t| t.plan(cx)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_patterns_name_a_stage_or_one_of_its_rules() {
        let yaml = "listen: 127.0.0.1:2575\nformat: hl7\nack: {after: processed, reject: [parse, checks.mrn_present]}\n";
        let node = marked_yaml::parse_yaml(0, yaml).unwrap();
        let config = marked_yaml::from_node::<MllpSourceConfig>(&node).unwrap();
        let ack = config.ack.as_ref().unwrap();
        assert_eq!(ack.after.as_ref().unwrap().as_str(), "processed");
        let plan = MllpSourcePlan {
            listen: "127.0.0.1:0".parse().unwrap(),
            spool: PathBuf::new(),
            spool_options: SpoolOptions::default(),
            max_message_bytes: 1,
            max_connections: 1,
            idle_timeout: Duration::from_secs(1),
            allow: Vec::new(),
            nack_unparsable: true,
            ack_processed: true,
            reject: Some(vec!["parse".into(), "checks.mrn_present".into()]),
            handoff: None,
            tls: None,
        };
        assert!(plan.rejects("parse", "parse:dob"));
        assert!(plan.rejects("checks", "sex_in_hl7_0001,mrn_present"));
        assert!(!plan.rejects("checks", "sex_in_hl7_0001"));
        assert!(!plan.rejects("checks_more", "mrn_present"));
        assert!(!plan.rejects("admissions", ""));
        let all = MllpSourcePlan {
            reject: None,
            ..plan
        };
        assert!(all.rejects("admissions", ""));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let yaml = "listen: 127.0.0.1:2575\nformat: hl7\nspol: x\n";
        let node = marked_yaml::parse_yaml(0, yaml).unwrap();
        let err = marked_yaml::from_node::<MllpSourceConfig>(&node).unwrap_err();
        assert!(err.to_string().contains("spol"), "{err}");
    }
}
