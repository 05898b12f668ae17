//! A schema registry stand-in for tests, at the HTTP level: the parts of Confluent's REST API
//! that producers and consumers use, with its status codes, error bodies and content type.
//!
//! - `POST /subjects/{subject}/versions` `{"schema": "...", "schemaType"?: "AVRO"}` → `{"id": n}`;
//!   the same schema (by Avro canonical form) registered again returns the same id.
//! - `GET /schemas/ids/{id}` → `{"schema": "..."}`, or 404 `{"error_code": 40403, ...}`.
//! - `GET /subjects/{subject}/versions/latest` → `{"subject","version","id","schema"}`, or
//!   404 `{"error_code": 40401, ...}`.
//! - `GET /subjects` → the subject names.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Default)]
struct Inner {
    /// (id, canonical form, schema text).
    schemas: Vec<(u32, String, String)>,
    /// (subject, version, id).
    versions: Vec<(String, u32, u32)>,
}

#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    pub gets_by_id: Arc<AtomicUsize>,
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

async fn register(
    State(r): State<Registry>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let Some(text) = body.get("schema").and_then(Value::as_str) else {
        return reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error_code": 42201, "message": "Either the input schema or one of its references is invalid"}),
        );
    };
    if body
        .get("schemaType")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "AVRO")
    {
        return reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error_code": 42201, "message": "only AVRO in this stand-in"}),
        );
    }
    let canonical = match apache_avro::Schema::parse_str(text) {
        Ok(s) => s.canonical_form(),
        Err(e) => {
            return reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error_code": 42201, "message": format!("Invalid schema: {e}")}),
            );
        }
    };
    let mut g = r.inner.lock().unwrap();
    let id = match g.schemas.iter().find(|(_, c, _)| *c == canonical) {
        Some((id, _, _)) => *id,
        None => {
            let id = g.schemas.len() as u32 + 1;
            g.schemas.push((id, canonical, text.to_string()));
            id
        }
    };
    if !g.versions.iter().any(|(s, _, i)| *s == subject && *i == id) {
        let version = g.versions.iter().filter(|(s, _, _)| *s == subject).count() as u32 + 1;
        g.versions.push((subject, version, id));
    }
    reply(StatusCode::OK, json!({ "id": id }))
}

async fn by_id(State(r): State<Registry>, Path(id): Path<u32>) -> Response {
    r.gets_by_id.fetch_add(1, Ordering::Relaxed);
    let g = r.inner.lock().unwrap();
    match g.schemas.iter().find(|(i, _, _)| *i == id) {
        Some((_, _, text)) => reply(StatusCode::OK, json!({ "schema": text })),
        None => reply(
            StatusCode::NOT_FOUND,
            json!({"error_code": 40403, "message": "Schema not found"}),
        ),
    }
}

async fn latest(State(r): State<Registry>, Path(subject): Path<String>) -> Response {
    let g = r.inner.lock().unwrap();
    match g.versions.iter().rev().find(|(s, _, _)| *s == subject) {
        Some((s, v, id)) => {
            let text = &g.schemas.iter().find(|(i, _, _)| i == id).unwrap().2;
            reply(
                StatusCode::OK,
                json!({"subject": s, "version": v, "id": id, "schema": text}),
            )
        }
        None => reply(
            StatusCode::NOT_FOUND,
            json!({"error_code": 40401, "message": format!("Subject '{subject}' not found.")}),
        ),
    }
}

async fn subjects(State(r): State<Registry>) -> Response {
    let g = r.inner.lock().unwrap();
    let mut names: Vec<&String> = g.versions.iter().map(|(s, _, _)| s).collect();
    names.dedup();
    reply(StatusCode::OK, json!(names))
}

impl Registry {
    /// Starts the stand-in on an ephemeral port; returns it and its base URL.
    pub fn start() -> (Registry, String) {
        let r = Registry::default();
        let app = axum::Router::new()
            .route("/subjects", get(subjects))
            .route("/subjects/{subject}/versions", post(register))
            .route("/subjects/{subject}/versions/latest", get(latest))
            .route("/schemas/ids/{id}", get(by_id))
            .with_state(r.clone());
        let url = super::serve(app);
        (r, url)
    }

    /// Registers a schema directly (as another producer would) and returns its id.
    pub fn add(&self, subject: &str, schema: &str) -> u32 {
        let canonical = apache_avro::Schema::parse_str(schema)
            .unwrap()
            .canonical_form();
        let mut g = self.inner.lock().unwrap();
        if let Some((id, _, _)) = g.schemas.iter().find(|(_, c, _)| *c == canonical) {
            return *id;
        }
        let id = g.schemas.len() as u32 + 1;
        g.schemas.push((id, canonical, schema.to_string()));
        let version = g.versions.iter().filter(|(s, _, _)| s == subject).count() as u32 + 1;
        g.versions.push((subject.to_string(), version, id));
        id
    }

    /// The schema text registered under `id`.
    pub fn schema(&self, id: u32) -> Option<String> {
        let g = self.inner.lock().unwrap();
        g.schemas
            .iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, _, t)| t.clone())
    }
}
