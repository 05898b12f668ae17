//! How plexus authenticates to an endpoint (an EHR's FHIR API, a webhook receiver): the
//! integration's credentials and TLS settings, shared by the FHIR client and the HTTP sink.
//!
//! - Static credentials (basic, bearer, API key header) go on every request as they are.
//! - OAuth2 client credentials: the token is fetched once, reused until shortly before it
//!   expires, and fetched again when the endpoint answers `401` (revoked or expired early).
//! - TLS: an extra trusted CA (private PKI, common between hospitals and their EHRs) and a
//!   client certificate for mutual TLS.
//!
//! Secrets never appear in errors or logs: a failed token request reports the token URL,
//! the status and the OAuth2 error code only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;

/// How a client authenticates.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    ApiKey {
        header: String,
        value: String,
    },
    Bearer(String),
    /// OAuth2 client credentials (RFC 6749 §4.4; SMART backend services with a shared secret).
    ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
        /// The seed's `refreshConfig`: where a token with a `refresh_token` is refreshed
        /// (RFC 6749 §6; default: `token_url`), and a longest lifetime to give any token
        /// (it is refreshed after this even when its `expires_in` is longer).
        refresh_url: Option<String>,
        refresh_every: Option<Duration>,
    },
}

// Written by hand so that a `{:?}` of a config never prints a secret.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => write!(f, "None"),
            Auth::Basic { user, .. } => write!(f, "Basic({user}, ***)"),
            Auth::ApiKey { header, .. } => write!(f, "ApiKey({header}: ***)"),
            Auth::Bearer(_) => write!(f, "Bearer(***)"),
            Auth::ClientCredentials {
                token_url,
                client_id,
                ..
            } => write!(f, "ClientCredentials({client_id} at {token_url})"),
        }
    }
}

/// TLS beyond the system's defaults.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// Extra trusted CA certificates (PEM).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and private key (PEM, the key PKCS#8) for mutual TLS.
    pub identity_pem: Option<Vec<u8>>,
}

impl Tls {
    pub fn configure(
        &self,
        mut b: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, String> {
        if let Some(pem) = &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("CA certificate: {e}"))?;
            if certs.is_empty() {
                return Err("CA certificate: no certificate in the PEM".into());
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let Some(pem) = &self.identity_pem {
            let (cert, key) = split_pem(pem);
            if cert.is_empty() || key.is_empty() {
                return Err("client certificate: the PEM needs a certificate and a key".into());
            }
            let id = reqwest::Identity::from_pkcs8_pem(&cert, &key)
                .map_err(|e| format!("client certificate: {e}"))?;
            b = b.identity(id);
        }
        Ok(b)
    }
}

/// Why credentials could not be put on a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The token endpoint refused (bad client id/secret, scope not allowed): retrying the
    /// same credentials cannot help.
    #[error("token request to {url} refused ({status}): {code}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused {
        url: String,
        status: u16,
        code: String,
        description: Option<String>,
    },
    /// The token endpoint could not be reached or answered garbage: may pass.
    #[error("token request to {url}: {reason}")]
    Unavailable { url: String, reason: String },
}

struct Token {
    value: String,
    /// Refetch after this (the server's `expires_in` less a margin, or `refresh_every`).
    fresh_until: Instant,
    /// What the server gave to renew it without the client secret's grant, if anything.
    refresh_token: Option<String>,
}

/// Puts the integration's credentials on requests. Cheap to clone (the token is shared by
/// the clones, so concurrent requests fetch it once).
#[derive(Clone)]
pub struct Credentials {
    auth: Arc<Auth>,
    http: reqwest::Client,
    token: Arc<Mutex<Option<Token>>>,
}

impl Credentials {
    /// `http` is used for token requests (the same TLS settings as the calls).
    pub fn new(auth: Auth, http: reqwest::Client) -> Self {
        Credentials {
            auth: Arc::new(auth),
            http,
            token: Arc::new(Mutex::new(None)),
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(*self.auth, Auth::None)
    }

    /// Whether a `401` is worth one more try (a new token may be accepted).
    pub fn refreshes(&self) -> bool {
        matches!(*self.auth, Auth::ClientCredentials { .. })
    }

    pub async fn apply(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, AuthError> {
        Ok(match &*self.auth {
            Auth::None => req,
            Auth::Basic { user, password } => req.basic_auth(user, Some(password)),
            Auth::ApiKey { header, value } => req.header(header.as_str(), value.as_str()),
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::ClientCredentials { .. } => req.bearer_auth(self.access_token().await?),
        })
    }

    /// Drops the cached token (the endpoint said `401`): the next request fetches a new one.
    pub async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    /// The cached access token, fetched when absent or about to expire. The lock is held
    /// while fetching: concurrent requests wait for the one refresh and share its token.
    async fn access_token(&self) -> Result<String, AuthError> {
        let Auth::ClientCredentials {
            token_url,
            refresh_url,
            ..
        } = &*self.auth
        else {
            unreachable!("only called for client credentials");
        };
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && Instant::now() < t.fresh_until
        {
            return Ok(t.value.clone());
        }
        // A refresh token renews the access token (RFC 6749 §6); one the server no longer
        // honours falls back to the client credentials grant.
        if let Some(refresh) = cached.as_ref().and_then(|t| t.refresh_token.clone()) {
            let at = refresh_url.as_deref().unwrap_or(token_url);
            let form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
            ];
            match self.grant(at, &form).await {
                Ok(mut t) => {
                    // A server may keep the refresh token and not send it again.
                    t.refresh_token = t.refresh_token.or(Some(refresh));
                    let value = t.value.clone();
                    *cached = Some(t);
                    return Ok(value);
                }
                Err(AuthError::Refused { .. }) => {
                    tracing::info!("OAuth2 refresh token refused: requesting a new token");
                }
                Err(e) => return Err(e),
            }
        }
        let Auth::ClientCredentials { scope, .. } = &*self.auth else {
            unreachable!("matched above");
        };
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            form.push(("scope", s.as_str()));
        }
        let t = self.grant(token_url, &form).await?;
        let value = t.value.clone();
        *cached = Some(t);
        Ok(value)
    }

    /// One token request at `url` with the client's credentials.
    async fn grant(&self, url: &str, form: &[(&str, &str)]) -> Result<Token, AuthError> {
        let Auth::ClientCredentials {
            client_id,
            client_secret,
            refresh_every,
            ..
        } = &*self.auth
        else {
            unreachable!("only called for client credentials");
        };
        let unavailable = |reason: String| AuthError::Unavailable {
            url: url.to_string(),
            reason,
        };
        let resp = self
            .http
            .post(url)
            .basic_auth(client_id, Some(client_secret))
            .form(form)
            .send()
            .await
            .map_err(|e| {
                unavailable(if e.is_timeout() {
                    "timed out".into()
                } else {
                    "cannot connect".into()
                })
            })?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| unavailable(format!("token response: {e}")))?;
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(unavailable(format!("HTTP {status}")));
        }
        if !status.is_success() {
            // The error code is safe to report; the secret never is.
            return Err(AuthError::Refused {
                url: url.to_string(),
                status: status.as_u16(),
                code: body["error"].as_str().unwrap_or("token").to_string(),
                description: body["error_description"].as_str().map(str::to_string),
            });
        }
        let value = body["access_token"]
            .as_str()
            .ok_or_else(|| unavailable("token response without access_token".into()))?
            .to_string();
        let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(300));
        // Refresh a little early so a token never expires in flight.
        let margin = Duration::from_secs(30).min(lifetime / 2);
        let mut fresh_for = lifetime - margin;
        if let Some(every) = refresh_every {
            fresh_for = fresh_for.min(*every);
        }
        Ok(Token {
            value,
            fresh_until: Instant::now() + fresh_for,
            refresh_token: body["refresh_token"].as_str().map(str::to_string),
        })
    }
}

/// A PEM bundle as (certificates, private key).
fn split_pem(pem: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let text = String::from_utf8_lossy(pem);
    let (mut certs, mut key) = (String::new(), String::new());
    let mut current: Option<&mut String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN") {
            current = Some(if line.contains("PRIVATE KEY") {
                &mut key
            } else {
                &mut certs
            });
        }
        if let Some(c) = current.as_deref_mut() {
            c.push_str(line);
            c.push('\n');
        }
        if line.starts_with("-----END") {
            current = None;
        }
    }
    (certs.into_bytes(), key.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_bundles_split_into_certificates_and_key() {
        let pem = b"-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n";
        let (c, k) = split_pem(pem);
        assert!(String::from_utf8(c).unwrap().contains("AAA"));
        assert!(String::from_utf8(k).unwrap().contains("BBB"));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let a = Auth::ClientCredentials {
            token_url: "https://auth/token".into(),
            client_id: "plexus".into(),
            client_secret: "s3cr3t".into(),
            scope: None,
            refresh_url: None,
            refresh_every: None,
        };
        let b = Auth::Basic {
            user: "u".into(),
            password: "pw-123".into(),
        };
        let shown = format!("{a:?} {b:?} {:?}", Auth::Bearer("tok-9".into()));
        for secret in ["s3cr3t", "pw-123", "tok-9"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
