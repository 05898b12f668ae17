//! The real schema registry the Avro tests use: Apicurio Registry started by
//! `scripts/dev-services` on 127.0.0.1:8081, through its Confluent-compatible API
//! (`PLEXUS_TEST_REGISTRY` overrides the base URL). Tests register schemas as another
//! producer would and read back what plexus registered.

use serde_json::{Value, json};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub struct Registry {
    url: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Registry {
    /// The registry, checked to answer (the test fails here, not in plexus, when it is down).
    pub fn connect() -> Registry {
        let url = std::env::var("PLEXUS_TEST_REGISTRY")
            .unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".to_string());
        let r = Registry {
            url,
            http: reqwest::Client::new(),
            rt: tokio::runtime::Runtime::new().unwrap(),
        };
        r.get("/subjects")
            .unwrap_or_else(|| panic!("no schema registry at {} (scripts/dev-services up)", r.url));
        r
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.rt.block_on(async {
            let resp = self
                .http
                .get(format!("{}{path}", self.url))
                .send()
                .await
                .expect("registry reachable");
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                return None;
            }
            let status = resp.status();
            let body: Value = resp.json().await.expect("registry JSON");
            assert!(status.is_success(), "GET {path}: {status} {body}");
            Some(body)
        })
    }

    /// Registers a schema under `subject` (as another producer would) and returns its id.
    pub fn add(&self, subject: &str, schema: &str) -> u32 {
        self.rt.block_on(async {
            let resp = self
                .http
                .post(format!("{}/subjects/{subject}/versions", self.url))
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(json!({ "schema": schema }).to_string())
                .send()
                .await
                .expect("registry reachable");
            let status = resp.status();
            let body: Value = resp.json().await.expect("registry JSON");
            assert!(
                status.is_success(),
                "registering {subject}: {status} {body}"
            );
            body["id"].as_u64().expect("id") as u32
        })
    }

    /// The schema text registered under `id`.
    pub fn schema(&self, id: u32) -> Option<String> {
        self.get(&format!("/schemas/ids/{id}"))
            .and_then(|b| b["schema"].as_str().map(str::to_string))
    }

    /// The latest schema registered under `subject`, parsed as JSON.
    pub fn latest(&self, subject: &str) -> Option<Value> {
        let b = self.get(&format!("/subjects/{subject}/versions/latest"))?;
        serde_json::from_str(b["schema"].as_str()?).ok()
    }
}
