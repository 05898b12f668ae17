//! `type: fhir`: HL7v2 → FHIR R4 resources (or Bundles) per the v2-to-FHIR IG.

use super::*;

pub(crate) fn plan(
    cx: &mut Ctx<'_>,
    _sql: &SqlPlanner,
    f: &crate::spec::FhirStage,
    _input: &SchemaRef,
) -> Option<Box<dyn Operator>> {
    if cx.spec.source.record_format().ok() != Some(SourceFormat::Hl7) {
        cx.err(
            &f.name,
            "a `fhir` stage maps HL7v2: the source format must be hl7",
        );
        return None;
    }
    let bundle = match f.bundle.as_ref().map(|b| b.as_str()) {
        None => None,
        Some("transaction") => Some(crate::fhir::bundle::BundleType::Transaction),
        Some("batch") => Some(crate::fhir::bundle::BundleType::Batch),
        Some(_) => {
            let b = f.bundle.as_ref().expect("some");
            cx.err(b, "bundle is `transaction` or `batch`");
            return None;
        }
    };
    let offset = default_zone(cx, &f.default_timezone)?;
    let systems = f
        .systems
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    let profile = match &f.profile {
        None => crate::fhir::v2::Profile::Base,
        Some(p) => match crate::fhir::v2::Profile::parse(p.as_str()) {
            Some(p) => p,
            None => {
                cx.err(p, "profile is `base` or `us-core`");
                return None;
            }
        },
    };
    let opts = crate::fhir::v2::Options {
        default_zone: offset,
        profile,
        ..Default::default()
    }
    .with_systems(systems);
    // Stream records are addressed by source and offset, not by position in a file.
    let per_record = cx.spec.source.kind.as_str() != "file";
    Some(
        Box::new(crate::operators::fhir::ToFhir::new(opts, bundle).per_record(per_record))
            as Box<dyn Operator>,
    )
}
