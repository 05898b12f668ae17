//! FHIR R4: HL7v2 → FHIR mapping (`v2`, per the HL7 v2-to-FHIR IG) and the Bundles that write
//! its resources idempotently (`bundle`).

pub mod bundle;
pub mod client;
pub mod v2;
