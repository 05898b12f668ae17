//! FHIR R4: HL7v2 → FHIR mapping (`v2`, per the HL7 v2-to-FHIR IG), the JSON tree it builds
//! resources in and writes them from (`json`), the Bundles that write
//! its resources idempotently (`bundle`), v2 update semantics on
//! the server's resources (`merge`) and the reverse direction, FHIR resources as flat rows
//! (`rows`). The EHR client is `net::fhir_client`.

pub mod bundle;
pub mod json;
pub mod merge;
pub mod rows;
pub mod v2;
