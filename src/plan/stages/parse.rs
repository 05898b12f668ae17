//! `type: parse`: raw records → columns (HL7 paths, NDJSON/CSV with a schema, Avro from the registry).

use super::*;

pub(crate) fn plan(
    cx: &mut Ctx<'_>,
    _sql: &SqlPlanner,
    p: &crate::spec::ParseStage,
    _input: &SchemaRef,
) -> Option<Box<dyn Operator>> {
    let format = match SourceFormat::parse(&p.format) {
        Ok(f) => f,
        Err(e) => {
            cx.err(&p.format, e);
            return None;
        }
    };
    if format != cx.spec.source.record_format().unwrap_or(format) {
        cx.err(
            &p.format,
            format!(
                "parse format {:?} differs from the source format {:?}",
                p.format.as_str(),
                cx.spec.source.format().as_str()
            ),
        );
    }
    match format {
        SourceFormat::Hl7 => {
            if p.columns.is_empty() {
                cx.err(&p.name, "an hl7 parse stage needs `columns`");
                return None;
            }
            if let Some(s) = &p.schema {
                cx.err(s, "hl7 columns are declared with `columns`, not `schema`");
            }
            let mut columns = Vec::new();
            for c in &p.columns {
                let ty = match &c.data_type {
                    Some(t) => match t.parse::<ColumnType>() {
                        Ok(t) => t,
                        Err(e) => {
                            cx.err(t, e);
                            continue;
                        }
                    },
                    None => ColumnType::Utf8,
                };
                if columns
                    .iter()
                    .any(|x: &ColumnSpec| x.name == c.name.as_str())
                {
                    cx.err(
                        &c.name,
                        format!("column {:?} is declared twice", c.name.as_str()),
                    );
                }
                if c.name.starts_with('_') {
                    cx.err(
                        &c.name,
                        "names starting with '_' are reserved for provenance",
                    );
                }
                match ColumnSpec::new(c.name.as_str(), &c.path, ty) {
                    Ok(spec) => columns.push(spec),
                    Err(e) => cx.err(&c.path, e.kind.to_string()),
                }
            }
            let offset = default_zone(cx, &p.default_timezone)?;
            (columns.len() == p.columns.len()).then(|| {
                // Stream records are addressed by source and offset, not by position in a file.
                let per_record = cx.spec.source.kind.as_str() != "file";
                Box::new(Parse::hl7(columns, offset).per_record(per_record)) as Box<dyn Operator>
            })
        }
        SourceFormat::Avro => {
            let Some(schema_path) = &p.schema else {
                cx.err(
                    &p.name,
                    "an avro parse stage needs a reader `schema` (.avsc)",
                );
                return None;
            };
            let path = cx.spec.resolve(schema_path);
            let reader = match std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|t| {
                    apache_avro::Schema::parse_str(&t)
                        .map_err(|e| format!("{}: {e}", path.display()))
                }) {
                Ok(r) => r,
                Err(e) => {
                    cx.err(schema_path, e);
                    return None;
                }
            };
            let arrow = match crate::formats::avro::arrow_schema(&reader) {
                Ok(a) => std::sync::Arc::new(a),
                Err(e) => {
                    cx.err(schema_path, format!("{}: {e}", path.display()));
                    return None;
                }
            };
            let registry = registry(cx, &p.name)?;
            Some(Box::new(Parse::avro(reader, arrow, registry)) as Box<dyn Operator>)
        }
        SourceFormat::Ndjson | SourceFormat::Csv => {
            if !p.columns.is_empty() {
                cx.err(
                    &p.name,
                    "ndjson/csv records are typed by a `schema` file, not `columns`",
                );
            }
            let Some(schema_path) = &p.schema else {
                cx.err(&p.name, "an ndjson/csv parse stage needs a `schema` file");
                return None;
            };
            match crate::formats::schema::load(&cx.spec.resolve(schema_path)) {
                Ok(schema) => Some(if format == SourceFormat::Csv {
                    Box::new(Parse::csv(schema)) as Box<dyn Operator>
                } else {
                    Box::new(Parse::ndjson(schema))
                }),
                Err(e) => {
                    cx.err(schema_path, e);
                    None
                }
            }
        }
    }
}
