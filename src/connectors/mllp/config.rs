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
        let defaults = SpoolOptions::default();
        let spool_options = SpoolOptions {
            max_bytes: self
                .spool_max_bytes
                .as_deref()
                .copied()
                .unwrap_or(defaults.max_bytes),
            max_age: cx.duration_or(&self.spool_max_age, defaults.max_age),
            ..defaults
        };
        let spool = match &self.spool {
            Some(p) => cx.resolve(p),
            None => cx.resolve(&format!("{}.spool", cx.pipeline)),
        };
        Some(MllpSourcePlan {
            listen: listen?,
            spool,
            spool_options,
            max_message_bytes,
            max_connections,
            idle_timeout,
            allow,
            nack_unparsable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected() {
        let yaml = "listen: 127.0.0.1:2575\nformat: hl7\nspol: x\n";
        let node = marked_yaml::parse_yaml(0, yaml).unwrap();
        let err = marked_yaml::from_node::<MllpSourceConfig>(&node).unwrap_err();
        assert!(err.to_string().contains("spol"), "{err}");
    }
}
