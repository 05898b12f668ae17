//! `plexus serve --config server.yaml`: the server's settings in a file. Every key is
//! optional, a flag given on the command line wins over the file, and relative paths are
//! taken from the file's directory. Unknown keys are errors, located.
//!
//! ```yaml
//! listen: 0.0.0.0:8700
//! state: /var/lib/plexus
//! pipelines: pipelines            # hosted from files too
//! registry: postgres://plexus@db/plexus   # shared by several servers (default: SQLite)
//! reconcile_every: 2s
//! health_every: 30s               # unless an integration's healthCheckInterval says
//! master_key_file: master.key
//! api: {rate: 20, burst: 40, max_body_bytes: 2097152}
//! tls: {cert: server.pem, key: server.key}
//! jwt: {jwks: "https://idp.example.org/.well-known/jwks.json", issuer: "https://idp.example.org/", audience: plexus}
//! ingest: {rate: 100, burst: 200}   # per sender, on HTTP ingest routes without their own
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<SocketAddr>,
    pub state: Option<PathBuf>,
    pub pipelines: Option<PathBuf>,
    pub registry: Option<String>,
    pub reconcile_every: Option<String>,
    pub health_every: Option<String>,
    pub master_key_file: Option<PathBuf>,
    #[serde(default)]
    pub api: ApiFile,
    pub tls: Option<TlsFile>,
    pub jwt: Option<JwtFile>,
    pub ingest: Option<IngestFile>,
}

/// The default rate limit of hosted integrations' HTTP ingest routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestFile {
    /// Requests per second per sender.
    pub rate: u32,
    /// Default: `rate`.
    pub burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiFile {
    /// Requests per second per key (or token subject).
    pub rate: Option<u32>,
    pub burst: Option<u32>,
    pub max_body_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    /// A JWKS file or an `https://` URL.
    pub jwks: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl ServerFile {
    /// Reads `path`; errors are `path:line:column: what`.
    pub fn load(path: &Path) -> Result<ServerFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let root =
            marked_yaml::parse_yaml(0, &text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut f: ServerFile = marked_yaml::from_node(&root).map_err(|e| {
            let (line, column) = e
                .start_mark()
                .map(|m| (m.line(), m.column()))
                .unwrap_or((1, 1));
            let at = match e.path() {
                Some(p) if !p.is_empty() && p != "." => format!("{p}: "),
                _ => String::new(),
            };
            format!("{}:{line}:{column}: {at}{}", path.display(), *e)
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let rel = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        for p in [&mut f.state, &mut f.pipelines, &mut f.master_key_file]
            .into_iter()
            .flatten()
        {
            rel(p);
        }
        if let Some(t) = &mut f.tls {
            rel(&mut t.cert);
            rel(&mut t.key);
        }
        if let Some(j) = &mut f.jwt
            && !j.jwks.contains("://")
            && Path::new(&j.jwks).is_relative()
        {
            j.jwks = dir.join(&j.jwks).display().to_string();
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_resolves_paths_beside_it_and_names_unknown_keys_with_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("server.yaml");
        std::fs::write(
            &p,
            "listen: 127.0.0.1:9000\nstate: st\napi: {rate: 5}\ntls: {cert: c.pem, key: /k.pem}\njwt: {jwks: keys.json}\n",
        )
        .unwrap();
        let f = ServerFile::load(&p).unwrap();
        assert_eq!(f.listen, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(f.state, Some(dir.path().join("st")));
        assert_eq!(f.api.rate, Some(5));
        let t = f.tls.unwrap();
        assert_eq!(
            (t.cert, t.key),
            (dir.path().join("c.pem"), PathBuf::from("/k.pem"))
        );
        assert_eq!(
            f.jwt.unwrap().jwks,
            dir.path().join("keys.json").display().to_string()
        );
        std::fs::write(&p, "state: st\napi:\n  rate: 5\n  burts: 9\n").unwrap();
        let e = ServerFile::load(&p).unwrap_err();
        assert!(e.contains("server.yaml:4:3") && e.contains("burts"), "{e}");
    }
}
