//! Wire formats: how bytes become rows.

pub mod hl7;
