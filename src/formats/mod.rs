//! Wire formats: how bytes become rows.

#[cfg(feature = "pipeline")]
pub mod avro;
pub mod framing;
pub mod hl7;
pub mod mllp;
pub mod schema;
