//! What talks to other services, shared by connectors, the FHIR client and the monitor:
//! secrets by reference, the HTTP client with auth and TLS, the FHIR R4 client, the schema
//! registry client.

pub mod auth;
pub mod fhir_client;
pub mod http;
pub mod schema_registry;
pub mod secret;
pub mod tls;
