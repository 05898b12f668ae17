//! JWT bearer tokens from an identity provider, verified against its JWKS (a file or an
//! `https://` URL), beside the server's own API keys.
//!
//! Only asymmetric signatures are accepted (RS*, PS*, ES*, EdDSA): a shared-secret `HS*`
//! token, or one whose `alg` differs from its key's, is refused. `exp` (and `nbf`) are
//! checked, and `iss`/`aud` when configured. The key set is cached; a token signed with a key
//! the cache does not know makes it reload (at most every few seconds), so a provider's key
//! rotation is picked up without a restart.
//!
//! The caller is the token's `sub`. Its role is the `role` claim (viewer, operator, admin)
//! or the highest `plexus:<role>` scope; the `phi` scope is `plexus:phi` (or `"phi": true`).

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::keys::{Caller, Role};

/// Where the keys are and what a token must say.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// A JWKS file, or an `http(s)://` URL.
    pub jwks: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// A reload for an unknown key id waits at least this long after the last one (a flood of
/// forged kids must not become a flood of requests to the provider).
const MIN_RELOAD: Duration = Duration::from_secs(2);
/// Keys are reloaded this often anyway.
const MAX_AGE: Duration = Duration::from_secs(300);

pub struct JwtVerifier {
    config: JwtConfig,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<(JwkSet, Instant)>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    phi: Option<bool>,
}

impl JwtVerifier {
    /// Loads the key set once: a server that cannot read it does not start.
    pub async fn new(config: JwtConfig) -> Result<JwtVerifier, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let keys = load(&http, &config.jwks).await?;
        Ok(JwtVerifier {
            config,
            http,
            keys: tokio::sync::Mutex::new((keys, Instant::now())),
        })
    }

    /// The caller a token names, or why it is refused (no token content in the reason).
    pub async fn verify(&self, token: &str) -> Result<Caller, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "not a readable JWT".to_string())?;
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(format!(
                "a JWT signed with {:?} is not accepted",
                header.alg
            ));
        }
        let kid = header.kid.ok_or("the JWT names no key (kid)")?;
        let key = self.key(&kid, header.alg).await?;
        let mut v = Validation::new(header.alg);
        v.validate_nbf = true;
        match &self.config.issuer {
            Some(i) => v.set_issuer(&[i]),
            None => v.iss = None,
        }
        match &self.config.audience {
            Some(a) => v.set_audience(&[a]),
            None => v.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind::*;
            match e.kind() {
                ExpiredSignature => "the JWT has expired".to_string(),
                ImmatureSignature => "the JWT is not valid yet".to_string(),
                InvalidIssuer => "the JWT's issuer is not the one configured".to_string(),
                InvalidAudience => "the JWT is not for this audience".to_string(),
                InvalidSignature => "the JWT's signature does not verify".to_string(),
                _ => "the JWT does not verify".to_string(),
            }
        })?;
        let c = data.claims;
        let scopes: Vec<&str> = c
            .scope
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let role = match c.role.as_deref() {
            Some(r) => Role::parse(r).map_err(|_| format!("the JWT's role {r:?} is unknown"))?,
            None => [Role::Admin, Role::Operator, Role::Viewer]
                .into_iter()
                .find(|r| scopes.contains(&format!("plexus:{}", r.as_str()).as_str()))
                .ok_or("the JWT grants no plexus role (a role claim or a plexus:<role> scope)")?,
        };
        Ok(Caller {
            key_id: format!("jwt:{}", c.sub),
            name: c.sub,
            role,
            phi: c.phi.unwrap_or(false) || scopes.contains(&"plexus:phi"),
        })
    }

    /// The key `kid`: from the cache, else after a reload.
    async fn key(&self, kid: &str, alg: Algorithm) -> Result<DecodingKey, String> {
        let mut keys = self.keys.lock().await;
        let stale = keys.1.elapsed() > MAX_AGE;
        if (keys.0.find(kid).is_none() && keys.1.elapsed() >= MIN_RELOAD) || stale {
            match load(&self.http, &self.config.jwks).await {
                Ok(set) => *keys = (set, Instant::now()),
                // The provider is down: the keys known keep working.
                Err(e) => tracing::warn!(error = %e, "serve: reloading the JWKS failed"),
            }
        }
        let jwk = keys.0.find(kid).ok_or("the JWT's key is not in the JWKS")?;
        // The key's own algorithm rules: a token cannot pick another.
        if let Some(a) = &jwk.common.key_algorithm
            && format!("{a:?}") != format!("{alg:?}")
        {
            return Err(format!("the JWT says {alg:?}; its key is for {a:?}"));
        }
        DecodingKey::from_jwk(jwk).map_err(|_| "the JWKS key cannot be used".to_string())
    }
}

async fn load(http: &reqwest::Client, at: &str) -> Result<JwkSet, String> {
    let text = if at.starts_with("https://") || at.starts_with("http://") {
        let r = http
            .get(at)
            .send()
            .await
            .map_err(|e| format!("JWKS {at}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("JWKS {at}: HTTP {}", r.status()));
        }
        r.text().await.map_err(|e| format!("JWKS {at}: {e}"))?
    } else {
        std::fs::read_to_string(at).map_err(|e| format!("JWKS {at}: {e}"))?
    };
    serde_json::from_str(&text).map_err(|e| format!("JWKS {at}: not a key set ({e})"))
}
