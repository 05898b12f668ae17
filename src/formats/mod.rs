//! Wire formats: how bytes become rows.

pub mod hl7;
pub mod schema;
