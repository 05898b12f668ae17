//! Who may post to an HTTP source: HMAC-SHA256 signatures (plexus' timestamped scheme, or
//! the plain hex HMAC of the body that many partners send), API keys, bearer tokens. Every
//! comparison of a secret is constant-time; a reason never contains a secret.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::source_config::{AuthPlan, HmacScheme};

/// A request that passed.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The API key's or token's name: who the rate limit counts against (else the peer).
    pub sender: Option<String>,
}

/// Checks requests against the source's secrets (read once, at start).
pub struct Verifier {
    hmac: Option<Hmac1>,
    api_keys: Vec<(String, [u8; 32])>,
    api_key_header: String,
    bearer: Vec<(String, [u8; 32])>,
    /// Timestamped signatures seen within the tolerance: an identical one is a replay.
    seen: Mutex<HashMap<String, i64>>,
}

struct Hmac1 {
    secret: Vec<u8>,
    scheme: HmacScheme,
    header: String,
    tolerance: std::time::Duration,
}

/// Why a request was refused: `Replayed` may still be answered from the idempotency store.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Unauthorized(String),
    Replayed,
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Equal digests, in time that does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Verifier {
    /// Reads the secrets the plan refers to.
    pub fn new(plan: &AuthPlan) -> Result<Verifier, String> {
        let read = |list: &[(String, crate::net::secret::SecretRef)]| {
            list.iter()
                .map(|(name, s)| Ok((name.clone(), digest(s.read()?.as_bytes()))))
                .collect::<Result<Vec<_>, String>>()
        };
        let hmac = match &plan.hmac {
            Some(h) => Some(Hmac1 {
                secret: h.secret.read()?.into_bytes(),
                scheme: h.scheme,
                header: h.header.clone(),
                tolerance: h.tolerance,
            }),
            None => None,
        };
        Ok(Verifier {
            hmac,
            api_keys: read(&plan.api_keys)?,
            api_key_header: plan.api_key_header.clone(),
            bearer: read(&plan.bearer)?,
            seen: Mutex::new(HashMap::new()),
        })
    }

    fn is_open(&self) -> bool {
        self.hmac.is_none() && self.api_keys.is_empty() && self.bearer.is_empty()
    }

    /// Admits the request or says why not. `now`: unix seconds.
    pub fn check(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<Admitted, Refused> {
        if self.is_open() {
            return Ok(Admitted::default());
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(key) = header(&self.api_key_header) {
            let d = digest(key.as_bytes());
            if let Some((name, _)) = self.api_keys.iter().find(|(_, k)| same(k, &d)) {
                return Ok(Admitted {
                    sender: Some(name.clone()),
                });
            }
        }
        if let Some(token) = header("authorization").and_then(|a| {
            a.strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("bearer "))
        }) {
            let d = digest(token.trim().as_bytes());
            if let Some((name, _)) = self.bearer.iter().find(|(_, k)| same(k, &d)) {
                return Ok(Admitted {
                    sender: Some(name.clone()),
                });
            }
        }
        let Some(h) = &self.hmac else {
            return Err(Refused::Unauthorized(
                "no valid API key or bearer token".into(),
            ));
        };
        match h.scheme {
            HmacScheme::Timestamped => {
                let Some(sig) = header(&h.header) else {
                    return Err(Refused::Unauthorized(format!("no {} header", h.header)));
                };
                crate::net::http::verify(&h.secret, sig, body, now, h.tolerance)
                    .map_err(Refused::Unauthorized)?;
                self.first_use(sig, now, h.tolerance.as_secs() as i64)?;
            }
            HmacScheme::Hex => {
                // The seed's partners: `X-Signature` or `Signature`, hex of HMAC(body).
                let sig = header(&h.header)
                    .or_else(|| header("x-signature"))
                    .or_else(|| header("signature"));
                let Some(sig) = sig else {
                    return Err(Refused::Unauthorized(format!("no {} header", h.header)));
                };
                let hex = sig.trim();
                let hex = hex.strip_prefix("sha256=").unwrap_or(hex);
                let bytes = crate::net::http::decode_hex(hex)
                    .ok_or_else(|| Refused::Unauthorized("signature is not hex".into()))?;
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(&h.secret).expect("HMAC takes any key length");
                mac.update(body);
                mac.verify_slice(&bytes)
                    .map_err(|_| Refused::Unauthorized("no signature matches".into()))?;
            }
        }
        Ok(Admitted::default())
    }

    /// Remembers a timestamped signature until it is too old to pass anyway.
    fn first_use(&self, sig: &str, now: i64, tolerance: i64) -> Result<(), Refused> {
        let mut seen = self.seen.lock().expect("seen signatures");
        if seen.len() > 4096 {
            seen.retain(|_, t| now - *t <= tolerance);
        }
        match seen.insert(sig.to_string(), now) {
            Some(t) if now - t <= tolerance => Err(Refused::Replayed),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::http::source_config::HmacPlan;
    use crate::net::secret::SecretRef;
    use std::time::Duration;

    fn verifier(scheme: HmacScheme) -> Verifier {
        // SAFETY: tests in this module are the only users of this variable.
        unsafe { std::env::set_var("PLEXUS_TEST_VERIFY_SECRET", "s3cret") };
        unsafe { std::env::set_var("PLEXUS_TEST_VERIFY_KEY", "key-a") };
        let plan = AuthPlan {
            hmac: Some(HmacPlan {
                secret: SecretRef::Env("PLEXUS_TEST_VERIFY_SECRET".into()),
                scheme,
                header: match scheme {
                    HmacScheme::Timestamped => "X-Plexus-Signature".into(),
                    HmacScheme::Hex => "X-Signature".into(),
                },
                tolerance: Duration::from_secs(300),
            }),
            api_keys: vec![(
                "partner_a".into(),
                SecretRef::Env("PLEXUS_TEST_VERIFY_KEY".into()),
            )],
            api_key_header: "X-API-Key".into(),
            bearer: vec![],
        };
        Verifier::new(&plan).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn timestamped_signatures_pass_once_and_only_when_fresh() {
        let v = verifier(HmacScheme::Timestamped);
        let body = br#"{"id":"e1"}"#;
        let sig = crate::net::http::sign(b"s3cret", 1_700_000_000, body);
        let h = headers(&[("x-plexus-signature", &sig)]);
        assert!(v.check(&h, body, 1_700_000_010).is_ok());
        // The same request again: a replay.
        assert_eq!(
            v.check(&h, body, 1_700_000_020).unwrap_err(),
            Refused::Replayed
        );
        // Too old, tampered, or unsigned.
        assert!(matches!(
            v.check(&h, body, 1_700_001_000),
            Err(Refused::Unauthorized(r)) if r.contains("tolerance")
        ));
        let sig2 = crate::net::http::sign(b"s3cret", 1_700_000_100, body);
        let h2 = headers(&[("x-plexus-signature", &sig2)]);
        assert!(v.check(&h2, br#"{"id":"e2"}"#, 1_700_000_100).is_err());
        assert!(v.check(&HeaderMap::new(), body, 1_700_000_100).is_err());
    }

    #[test]
    fn hex_signatures_and_api_keys() {
        let v = verifier(HmacScheme::Hex);
        let body = b"MSH|^~\\&|A\r";
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let hex = crate::net::http::to_hex(&mac.finalize().into_bytes());
        assert!(v.check(&headers(&[("signature", &hex)]), body, 0).is_ok());
        let prefixed = format!("sha256={hex}");
        assert!(
            v.check(&headers(&[("x-signature", &prefixed)]), body, 0)
                .is_ok()
        );
        assert!(
            v.check(&headers(&[("x-signature", &hex)]), b"other", 0)
                .is_err()
        );
        let a = v
            .check(&headers(&[("x-api-key", "key-a")]), b"", 0)
            .unwrap();
        assert_eq!(a.sender.as_deref(), Some("partner_a"));
        let refused = v
            .check(&headers(&[("x-api-key", "key-b")]), b"", 0)
            .unwrap_err();
        assert!(!format!("{refused:?}").contains("key-"), "{refused:?}");
    }
}
