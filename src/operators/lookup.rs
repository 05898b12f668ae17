//! `lookup`: joins each row with a reference table (code sets, facility lists, provider
//! directories) loaded into memory once at startup.
//!
//! Keys match as text: an input key typed `bigint` 42 finds the table row whose key reads `42`,
//! whatever types the two files inferred. CSV columns are all read as text so codes like `007`
//! keep their leading zeros. A NULL key never matches.
//!
//! A miss (no row, or a NULL key) does what `on_miss` says: leave the table columns NULL, also
//! note it in `_warnings`, fill per-column defaults, or dead-letter the row. An inner join drops
//! missed rows (counted as filtered) unless they are dead-lettered.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, StringArray, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;

use super::{DeadLetters, Operator, OperatorError, StageOutput, WARNINGS, is_provenance};

/// A reference table held in memory with a hash index on its key column.
#[derive(Debug, Clone)]
pub struct ReferenceTable {
    pub schema: SchemaRef,
    /// All rows, concatenated.
    batch: RecordBatch,
    /// Key text → row.
    index: HashMap<String, u32>,
    /// The key column's name and index in `schema`.
    key: String,
    key_index: usize,
    /// The file name (no directories), for warnings and dead-letter reasons.
    name: String,
}

impl ReferenceTable {
    /// Loads a CSV/TSV (header row, every column text) or Parquet file and indexes `key`.
    /// Errors name the file and the problem.
    pub fn load(path: &Path, key: &str) -> Result<ReferenceTable, String> {
        let shown = path.display();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let batch = match ext.as_str() {
            "csv" => read_csv(path, b',')?,
            "tsv" => read_csv(path, b'\t')?,
            "parquet" | "pq" => read_parquet(path)?,
            _ => {
                return Err(format!(
                    "reference table {shown}: unsupported file type; use .csv, .tsv, .parquet \
                     or .pq"
                ));
            }
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| shown.to_string());
        Self::from_batch(&shown.to_string(), name, batch, key)
    }

    /// Loads a reference table from PostgreSQL: `query`'s rows, every column read as text
    /// (cast in SQL, so codes keep their exact form), indexed on `key`. `url` comes from the
    /// environment, never from the pipeline file.
    pub async fn load_postgres(
        url: &str,
        query: &str,
        key: &str,
    ) -> Result<ReferenceTable, String> {
        use sqlx::Row;
        let shown = "postgres query";
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .map_err(|e| format!("reference table: cannot connect to PostgreSQL: {e}"))?;
        // Each row as a JSON object in column order: every type reads back as text the same
        // way (codes keep their exact form) without knowing the column types in advance.
        // The query is the pipeline author's own SQL, like any SQL in a pipeline.
        let wrapped = format!("SELECT row_to_json(q)::text FROM ({query}) AS q");
        let rows = sqlx::query(sqlx::AssertSqlSafe(wrapped))
            .fetch_all(&mut conn)
            .await
            .map_err(|e| format!("reference table query: {e}"))?;
        let mut names: Vec<String> = Vec::new();
        let mut builders: Vec<arrow::array::StringBuilder> = Vec::new();
        for (n, row) in rows.iter().enumerate() {
            let text: String = row
                .try_get(0)
                .map_err(|e| format!("reference table query: {e}"))?;
            let object: indexmap::IndexMap<String, serde_json::Value> = serde_json::from_str(&text)
                .map_err(|e| format!("reference table query, row {}: {e}", n + 1))?;
            if n == 0 {
                names = object.keys().cloned().collect();
                builders = names
                    .iter()
                    .map(|_| arrow::array::StringBuilder::new())
                    .collect();
            }
            for (i, name) in names.iter().enumerate() {
                match object.get(name) {
                    None | Some(serde_json::Value::Null) => builders[i].append_null(),
                    Some(serde_json::Value::String(v)) => builders[i].append_value(v),
                    Some(other) => builders[i].append_value(other.to_string()),
                }
            }
        }
        if names.is_empty() {
            return Err("reference table query returned no rows".into());
        }
        let schema = Arc::new(Schema::new(
            names
                .iter()
                .map(|n| arrow::datatypes::Field::new(n, DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ));
        let columns: Vec<arrow::array::ArrayRef> = builders
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as arrow::array::ArrayRef)
            .collect();
        let batch = RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())?;
        Self::from_batch(shown, "postgres".to_string(), batch, key)
    }

    /// Indexes an in-memory table on `key`. `shown` names the table in errors.
    pub fn from_batch(
        shown: &str,
        name: String,
        batch: RecordBatch,
        key: &str,
    ) -> Result<ReferenceTable, String> {
        let schema = batch.schema();
        let mut seen = std::collections::HashSet::new();
        for f in schema.fields() {
            if !seen.insert(f.name().as_str()) {
                return Err(format!(
                    "reference table {shown}: column `{}` appears more than once",
                    f.name()
                ));
            }
        }
        let key_index = schema.index_of(key).map_err(|_| {
            format!(
                "reference table {shown} has no key column `{key}`; columns: {}",
                column_list(&schema)
            )
        })?;
        if batch.num_rows() > u32::MAX as usize {
            return Err(format!("reference table {shown}: too many rows"));
        }
        let keys = cast(batch.column(key_index), &DataType::Utf8).map_err(|e| {
            format!("reference table {shown}: key column `{key}` cannot be read as text: {e}")
        })?;
        let keys = keys.as_string::<i32>();
        // Rows are numbered from 1 as data rows; a CSV header is not counted.
        let mut index = HashMap::with_capacity(keys.len());
        for (row, k) in keys.iter().enumerate() {
            // A NULL (or, in CSV, empty) key can never be matched: NULL input keys are misses.
            let Some(k) = k else { continue };
            match index.entry(k.to_string()) {
                Entry::Occupied(first) => {
                    return Err(format!(
                        "reference table {shown}: duplicate key {key} = \"{k}\" in data rows {} \
                         and {}",
                        *first.get() + 1,
                        row + 1
                    ));
                }
                Entry::Vacant(slot) => {
                    slot.insert(row as u32);
                }
            }
        }
        Ok(ReferenceTable {
            schema,
            batch,
            index,
            key: key.to_string(),
            key_index,
            name,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }

    /// The key column's name.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The file name (without directories).
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn open(path: &Path) -> Result<File, String> {
    File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("reference table {}: file not found", path.display())
        }
        _ => format!("reference table {}: {e}", path.display()),
    })
}

fn read_csv(path: &Path, delimiter: u8) -> Result<RecordBatch, String> {
    use arrow::csv::ReaderBuilder;
    use arrow::csv::reader::Format;
    let shown = path.display();
    let err = |e: arrow::error::ArrowError| format!("reference table {shown}: {e}");
    let format = Format::default()
        .with_header(true)
        .with_delimiter(delimiter);
    // Only the header is needed: every column is read as text.
    let (header, _) = format.infer_schema(open(path)?, Some(0)).map_err(err)?;
    if header.fields().is_empty() {
        return Err(format!("reference table {shown}: no header row"));
    }
    let fields: Vec<Field> = header
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let name = f.name().as_str();
            // Spreadsheet exports often start with a UTF-8 byte-order mark.
            let name = if i == 0 {
                name.trim_start_matches('\u{feff}')
            } else {
                name
            };
            Field::new(name, DataType::Utf8, true)
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let reader = ReaderBuilder::new(schema.clone())
        .with_format(format)
        .build(open(path)?)
        .map_err(err)?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(err)?;
    arrow::compute::concat_batches(&schema, &batches).map_err(err)
}

fn read_parquet(path: &Path) -> Result<RecordBatch, String> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let shown = path.display();
    let builder = ParquetRecordBatchReaderBuilder::try_new(open(path)?)
        .map_err(|e| format!("reference table {shown}: {e}"))?;
    let schema = builder.schema().clone();
    let reader = builder
        .build()
        .map_err(|e| format!("reference table {shown}: {e}"))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("reference table {shown}: {e}"))?;
    arrow::compute::concat_batches(&schema, &batches)
        .map_err(|e| format!("reference table {shown}: {e}"))
}

/// What a row without a match does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMiss {
    /// Table columns are NULL.
    Null,
    /// Table columns are NULL and the miss is noted in `_warnings`.
    Warn,
    /// Table columns take the stage's defaults (NULL where none is given).
    Default,
    /// The row goes to the dead-letter output.
    DeadLetter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// Every row goes on (unless dead-lettered).
    Left,
    /// Missed rows are dropped (counted as filtered), unless dead-lettered.
    Inner,
}

pub struct Lookup {
    stage: String,
    table: ReferenceTable,
    /// Input key column index.
    key_index: usize,
    key_name: String,
    /// Table column indices to add, in output order.
    columns: Vec<usize>,
    /// Per added column: the value for misses under `OnMiss::Default`.
    defaults: Vec<Option<ScalarValue>>,
    join: JoinKind,
    on_miss: OnMiss,
    /// Input columns copied to the output, in order (all but `_warnings` when warning).
    passthrough: Vec<usize>,
    /// The input's `_warnings` column, when this stage extends it.
    warnings_in: Option<usize>,
    schema: SchemaRef,
}

impl Lookup {
    /// Checks every name against the input schema and the table; errors name the column and
    /// list the available ones. `columns` empty = every table column but the key.
    /// `defaults` (column, value) apply to `OnMiss::Default` and are cast to the column's type.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stage_name: &str,
        input_schema: SchemaRef,
        table: ReferenceTable,
        input_key: &str,
        columns: Vec<String>,
        join: JoinKind,
        on_miss: OnMiss,
        defaults: Vec<(String, ScalarValue)>,
    ) -> Result<Lookup, String> {
        let key_index = input_schema.index_of(input_key).map_err(|_| {
            format!(
                "lookup key: the input has no column `{input_key}`; columns: {}",
                column_list(&input_schema)
            )
        })?;
        let key_type = input_schema.field(key_index).data_type();
        if !arrow::compute::can_cast_types(key_type, &DataType::Utf8) {
            return Err(format!(
                "lookup key `{input_key}` is {key_type}, which cannot be matched as text"
            ));
        }

        let columns: Vec<usize> = if columns.is_empty() {
            (0..table.schema.fields().len())
                .filter(|&i| i != table.key_index)
                .collect()
        } else {
            let mut out = Vec::with_capacity(columns.len());
            for c in &columns {
                let i = table.schema.index_of(c).map_err(|_| {
                    format!(
                        "reference table {} has no column `{c}`; columns: {}",
                        table.name,
                        column_list(&table.schema)
                    )
                })?;
                if out.contains(&i) {
                    return Err(format!("lookup column `{c}` is listed twice"));
                }
                out.push(i);
            }
            out
        };
        for &i in &columns {
            let name = table.schema.field(i).name();
            if is_provenance(name) {
                return Err(format!(
                    "reference table {} column `{name}`: names starting with `_` are reserved \
                     for provenance columns; list the columns to add without it",
                    table.name
                ));
            }
            if input_schema.index_of(name).is_ok() {
                return Err(format!(
                    "reference table {} column `{name}` is already an input column; drop or \
                     rename it before the lookup, or list the columns to add without it",
                    table.name
                ));
            }
        }

        let mut default_values: Vec<Option<ScalarValue>> = vec![None; columns.len()];
        if !defaults.is_empty() && on_miss != OnMiss::Default {
            return Err("lookup defaults only apply with on_miss: default".into());
        }
        for (name, value) in defaults {
            let Some(pos) = columns
                .iter()
                .position(|&i| table.schema.field(i).name() == &name)
            else {
                let added: Vec<&str> = columns
                    .iter()
                    .map(|&i| table.schema.field(i).name().as_str())
                    .collect();
                return Err(format!(
                    "lookup default for `{name}`: not a column this lookup adds; columns: {}",
                    added.join(", ")
                ));
            };
            let data_type = table.schema.field(columns[pos]).data_type();
            let value = value.cast_to(data_type).map_err(|e| {
                format!("lookup default for `{name}`: {value} cannot be {data_type}: {e}")
            })?;
            default_values[pos] = Some(value);
        }

        let warn = on_miss == OnMiss::Warn;
        let warnings_in = if warn {
            input_schema.index_of(WARNINGS).ok()
        } else {
            None
        };
        let warnings_field: FieldRef = match warnings_in {
            Some(i) => {
                let f = input_schema.fields()[i].clone();
                if f.data_type() != &warnings_type() {
                    return Err(format!(
                        "column {WARNINGS} must be list<utf8>, not {}",
                        f.data_type()
                    ));
                }
                f
            }
            None => Arc::new(Field::new(WARNINGS, warnings_type(), true)),
        };
        let passthrough: Vec<usize> = (0..input_schema.fields().len())
            .filter(|&i| Some(i) != warnings_in)
            .collect();
        let mut fields: Vec<FieldRef> = passthrough
            .iter()
            .map(|&i| input_schema.fields()[i].clone())
            .collect();
        fields.extend(
            columns
                .iter()
                .map(|&i| Arc::new(table.schema.field(i).clone().with_nullable(true))),
        );
        if warn {
            fields.push(warnings_field);
        }
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            input_schema.metadata().clone(),
        ));

        Ok(Lookup {
            stage: stage_name.to_string(),
            table,
            key_index,
            key_name: input_key.to_string(),
            columns,
            defaults: default_values,
            join,
            on_miss,
            passthrough,
            warnings_in,
            schema,
        })
    }

    /// Text of a missed key for messages (long values cut: a message is not a data copy).
    /// The key as reasons and warnings name it: its shape, never its value — a lookup key
    /// can be an MRN, and reasons reach the query tables (#15 item 2). The record itself is
    /// in the dead-letter output.
    fn shown_key(value: Option<&str>) -> String {
        match value {
            None => "NULL".to_string(),
            Some(v) => format!("({})", crate::formats::hl7::error::shape(v)),
        }
    }

    fn warning(&self, value: Option<&str>) -> String {
        format!(
            "lookup {}: no {} row for {} = {}",
            self.stage,
            self.table.name,
            self.key_name,
            Self::shown_key(value)
        )
    }

    /// Builds the output batch from the input and the taken table columns.
    fn assemble(
        &self,
        batch: &RecordBatch,
        added: Vec<ArrayRef>,
        keys: &StringArray,
        hit: &BooleanArray,
    ) -> Result<RecordBatch, OperatorError> {
        let mut columns: Vec<ArrayRef> = self
            .passthrough
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        columns.extend(added);
        if self.on_miss == OnMiss::Warn {
            columns.push(self.warnings(batch, keys, hit));
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// The `_warnings` column: the input's lists (NULL read as empty, as `validate` does) plus
    /// one entry per miss.
    fn warnings(&self, batch: &RecordBatch, keys: &StringArray, hit: &BooleanArray) -> ArrayRef {
        super::extend_warnings(batch, self.warnings_in, |row, push| {
            if !hit.value(row) {
                let key = (!keys.is_null(row)).then(|| keys.value(row));
                push(&self.warning(key));
            }
        })
    }
}

fn warnings_type() -> DataType {
    super::validate::warnings_type()
}

impl Operator for Lookup {
    fn outputs(&self) -> Vec<(String, SchemaRef)> {
        vec![(String::new(), self.schema.clone())]
    }

    fn process(&mut self, batch: RecordBatch) -> Result<StageOutput, OperatorError> {
        let keys = cast(batch.column(self.key_index), &DataType::Utf8)?;
        let keys = keys.as_string::<i32>();
        let indices: UInt32Array = keys
            .iter()
            .map(|k| k.and_then(|k| self.table.index.get(k).copied()))
            .collect();
        let misses = indices.null_count();
        // No nulls in the mask: a NULL key is a miss, not "unknown".
        let hit: BooleanArray = (0..indices.len())
            .map(|i| indices.is_valid(i))
            .collect::<Vec<bool>>()
            .into();

        let mut added = Vec::with_capacity(self.columns.len());
        for (&c, default) in self.columns.iter().zip(&self.defaults) {
            let taken = take(self.table.batch.column(c), &indices, None)?;
            let filled = match default {
                Some(value) if misses > 0 && self.on_miss == OnMiss::Default => {
                    arrow::compute::kernels::zip::zip(&hit, &taken, &value.to_scalar()?)?
                }
                _ => taken,
            };
            added.push(filled);
        }
        let out = self.assemble(&batch, added, keys, &hit)?;
        if misses == 0 {
            return Ok(StageOutput::single(out));
        }

        if self.on_miss == OnMiss::DeadLetter {
            let kept = arrow::compute::filter_record_batch(&out, &hit)?;
            let missed = arrow::compute::not(&hit)?;
            let rows = arrow::compute::filter_record_batch(&batch, &missed)?;
            let reason = (0..keys.len())
                .filter(|&i| !hit.value(i))
                .map(|i| {
                    let key = (!keys.is_null(i)).then(|| keys.value(i));
                    format!(
                        "no match for {} = {} in {}",
                        self.key_name,
                        Self::shown_key(key),
                        self.table.name
                    )
                })
                .collect::<Vec<_>>();
            return Ok(StageOutput {
                outputs: vec![Some(kept)],
                dead: Some(DeadLetters {
                    rows,
                    rule: vec![format!("lookup:{}", self.stage); reason.len()],
                    reason,
                }),
                filtered: 0,
            });
        }
        match self.join {
            JoinKind::Left => Ok(StageOutput::single(out)),
            JoinKind::Inner => Ok(StageOutput {
                outputs: vec![Some(arrow::compute::filter_record_batch(&out, &hit)?)],
                dead: None,
                filtered: misses,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, ListArray};
    use arrow::array::{ListBuilder, StringBuilder};
    use arrow::datatypes::UInt64Type;
    use std::io::Write;

    const CODES: &str = "code,display,system\n\
                         007,Bond,local\n\
                         42,Answer,\n\
                         A1,Alpha,snomed\n";

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.path().join(name);
        let mut f = File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        path
    }

    fn codes() -> (tempfile::TempDir, ReferenceTable) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "codes.csv", CODES);
        let t = ReferenceTable::load(&path, "code").unwrap();
        (dir, t)
    }

    /// Input: `_source`, `code` (utf8), `n`, with one NULL key.
    fn input() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("_source", DataType::Utf8, false),
            Field::new("code", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["f", "f", "f", "f"])),
                Arc::new(StringArray::from(vec![
                    Some("A1"),
                    Some("zz"),
                    None,
                    Some("007"),
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap()
    }

    fn lookup(on_miss: OnMiss, join: JoinKind, defaults: Vec<(String, ScalarValue)>) -> Lookup {
        let (_dir, table) = codes();
        Lookup::new(
            "codes",
            input().schema(),
            table,
            "code",
            vec![],
            join,
            on_miss,
            defaults,
        )
        .unwrap()
    }

    fn strings(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
        batch
            .column_by_name(name)
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_string))
            .collect()
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    fn names(schema: &Schema) -> Vec<&str> {
        schema.fields().iter().map(|f| f.name().as_str()).collect()
    }

    fn warnings_of(batch: &RecordBatch) -> Vec<Vec<String>> {
        let list = batch.column_by_name(WARNINGS).unwrap().as_list::<i32>();
        (0..list.len())
            .map(|i| {
                list.value(i)
                    .as_string::<i32>()
                    .iter()
                    .map(|s| s.unwrap().to_string())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn csv_is_all_text_and_keeps_leading_zeros() {
        let (_dir, t) = codes();
        assert_eq!(t.len(), 3);
        assert_eq!(t.name(), "codes.csv");
        assert!(
            t.schema
                .fields()
                .iter()
                .all(|f| f.data_type() == &DataType::Utf8)
        );
        assert_eq!(t.index.get("007"), Some(&0));
        assert_eq!(t.index.get("42"), Some(&1));
    }

    #[test]
    fn left_null_fills_nulls_and_passes_provenance() {
        let mut l = lookup(OnMiss::Null, JoinKind::Left, vec![]);
        let schema = l.outputs()[0].1.clone();
        assert_eq!(
            names(&schema),
            ["_source", "code", "n", "display", "system"]
        );
        assert!(schema.field(3).is_nullable());
        let out = l.process(input()).unwrap();
        assert_eq!(out.filtered, 0);
        assert!(out.dead.is_none());
        let b = out.outputs[0].clone().unwrap();
        assert_eq!(b.schema(), schema);
        assert_eq!(strings(&b, "display"), [s("Alpha"), None, None, s("Bond")]);
        assert_eq!(strings(&b, "system"), [s("snomed"), None, None, s("local")]);
        assert_eq!(strings(&b, "_source"), [s("f"), s("f"), s("f"), s("f")]);
        assert_eq!(b.column(2), input().column(2));
    }

    #[test]
    fn selected_columns_only() {
        let (_dir, table) = codes();
        let mut l = Lookup::new(
            "codes",
            input().schema(),
            table,
            "code",
            vec!["system".into()],
            JoinKind::Left,
            OnMiss::Null,
            vec![],
        )
        .unwrap();
        assert_eq!(names(&l.outputs()[0].1), ["_source", "code", "n", "system"]);
        let b = l.process(input()).unwrap().outputs[0].clone().unwrap();
        assert_eq!(strings(&b, "system"), [s("snomed"), None, None, s("local")]);
    }

    #[test]
    fn warn_adds_warnings_last() {
        let mut l = lookup(OnMiss::Warn, JoinKind::Left, vec![]);
        let schema = l.outputs()[0].1.clone();
        assert_eq!(
            names(&schema),
            ["_source", "code", "n", "display", "system", WARNINGS]
        );
        let b = l.process(input()).unwrap().outputs[0].clone().unwrap();
        assert_eq!(strings(&b, "display"), [s("Alpha"), None, None, s("Bond")]);
        let w = warnings_of(&b);
        assert!(w[0].is_empty() && w[3].is_empty());
        assert_eq!(
            w[1],
            ["lookup codes: no codes.csv row for code = (a value of 2 letters)"]
        );
        assert_eq!(w[2], ["lookup codes: no codes.csv row for code = NULL"]);
    }

    #[test]
    fn warn_extends_existing_warnings_and_moves_them_last() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("code", DataType::Utf8, true),
            Field::new(WARNINGS, warnings_type(), true),
            Field::new("_record_index", DataType::UInt64, false),
        ]));
        let mut prior = ListBuilder::new(StringBuilder::new());
        prior.values().append_value("earlier");
        prior.append(true);
        prior.append(false); // NULL list
        prior.values().append_value("earlier 2");
        prior.append(true);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["nope", "nope", "A1"])),
                Arc::new(prior.finish()),
                Arc::new(arrow::array::UInt64Array::from(vec![7, 8, 9])),
            ],
        )
        .unwrap();
        let (_dir, table) = codes();
        let mut l = Lookup::new(
            "codes",
            schema,
            table,
            "code",
            vec!["display".into()],
            JoinKind::Left,
            OnMiss::Warn,
            vec![],
        )
        .unwrap();
        assert_eq!(
            names(&l.outputs()[0].1),
            ["code", "_record_index", "display", WARNINGS]
        );
        let b = l.process(batch).unwrap().outputs[0].clone().unwrap();
        let miss = "lookup codes: no codes.csv row for code = (a value of 4 letters)";
        assert_eq!(
            warnings_of(&b),
            [vec!["earlier", miss], vec![miss], vec!["earlier 2"]]
        );
        let idx = b.column_by_name("_record_index").unwrap();
        assert_eq!(idx.as_primitive::<UInt64Type>().values(), &[7, 8, 9]);
        assert!(
            b.column_by_name(WARNINGS)
                .unwrap()
                .as_any()
                .is::<ListArray>()
        );
    }

    #[test]
    fn default_fills_misses() {
        let mut l = lookup(
            OnMiss::Default,
            JoinKind::Left,
            // An integer default is cast to the (text) column type.
            vec![("display".into(), ScalarValue::Int64(Some(0)))],
        );
        let b = l.process(input()).unwrap().outputs[0].clone().unwrap();
        assert_eq!(
            strings(&b, "display"),
            [s("Alpha"), s("0"), s("0"), s("Bond")]
        );
        // No default: stays NULL.
        assert_eq!(strings(&b, "system"), [s("snomed"), None, None, s("local")]);
    }

    #[test]
    fn dead_letter_sends_misses_to_the_dlq() {
        for join in [JoinKind::Left, JoinKind::Inner] {
            let mut l = lookup(OnMiss::DeadLetter, join, vec![]);
            let out = l.process(input()).unwrap();
            assert_eq!(out.filtered, 0);
            let b = out.outputs[0].clone().unwrap();
            assert_eq!(strings(&b, "code"), [s("A1"), s("007")]);
            assert_eq!(strings(&b, "display"), [s("Alpha"), s("Bond")]);
            let dead = out.dead.unwrap();
            // The rejected input rows, unchanged.
            assert_eq!(dead.rows.schema(), input().schema());
            assert_eq!(strings(&dead.rows, "code"), [s("zz"), None]);
            assert_eq!(dead.rule, ["lookup:codes", "lookup:codes"]);
            assert_eq!(
                dead.reason,
                [
                    "no match for code = (a value of 2 letters) in codes.csv",
                    "no match for code = NULL in codes.csv"
                ]
            );
        }
    }

    #[test]
    fn inner_drops_misses_as_filtered() {
        for on_miss in [OnMiss::Null, OnMiss::Warn, OnMiss::Default] {
            let mut l = lookup(on_miss, JoinKind::Inner, vec![]);
            let out = l.process(input()).unwrap();
            assert_eq!(out.filtered, 2);
            assert!(out.dead.is_none());
            let b = out.outputs[0].clone().unwrap();
            assert_eq!(strings(&b, "display"), [s("Alpha"), s("Bond")]);
        }
    }

    #[test]
    fn all_hits_pass_everything() {
        let mut l = lookup(OnMiss::DeadLetter, JoinKind::Inner, vec![]);
        let batch = input().slice(0, 1);
        let out = l.process(batch).unwrap();
        assert!(out.dead.is_none());
        assert_eq!(out.filtered, 0);
        assert_eq!(out.outputs[0].as_ref().unwrap().num_rows(), 1);
    }

    #[test]
    fn integer_key_matches_text() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![Some(42), Some(7), None]))],
        )
        .unwrap();
        let (_dir, table) = codes();
        let mut l = Lookup::new(
            "codes",
            schema,
            table,
            "id",
            vec![],
            JoinKind::Left,
            OnMiss::Null,
            vec![],
        )
        .unwrap();
        let b = l.process(batch).unwrap().outputs[0].clone().unwrap();
        // 7 is not "007": keys match as written.
        assert_eq!(strings(&b, "display"), [s("Answer"), None, None]);
        // An empty CSV cell is NULL.
        assert_eq!(strings(&b, "system"), [None, None, None]);
    }

    #[test]
    fn parquet_table_with_integer_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("facilities.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("beds", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow::array::Int32Array::from(vec![1, 42])),
                Arc::new(StringArray::from(vec!["North", "South"])),
                Arc::new(Int64Array::from(vec![Some(120), None])),
            ],
        )
        .unwrap();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(File::create(&path).unwrap(), schema, None)
                .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();

        let table = ReferenceTable::load(&path, "id").unwrap();
        assert_eq!(table.len(), 2);
        let input_schema = Arc::new(Schema::new(vec![Field::new("fac", DataType::Utf8, true)]));
        let mut l = Lookup::new(
            "fac",
            input_schema.clone(),
            table,
            "fac",
            vec![],
            JoinKind::Left,
            OnMiss::Default,
            vec![("beds".into(), ScalarValue::Int64(Some(-1)))],
        )
        .unwrap();
        let out_schema = l.outputs()[0].1.clone();
        assert_eq!(names(&out_schema), ["fac", "name", "beds"]);
        // Parquet keeps its types; table columns become nullable.
        assert_eq!(out_schema.field(2).data_type(), &DataType::Int64);
        assert!(out_schema.field(1).is_nullable());
        let batch = RecordBatch::try_new(
            input_schema,
            vec![Arc::new(StringArray::from(vec!["42", "1", "3"]))],
        )
        .unwrap();
        let b = l.process(batch).unwrap().outputs[0].clone().unwrap();
        assert_eq!(strings(&b, "name"), [s("South"), s("North"), None]);
        let beds: Vec<Option<i64>> = b
            .column_by_name("beds")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>()
            .iter()
            .collect();
        // 42 has NULL beds in the table: a hit keeps the table's NULL; only the miss gets -1.
        assert_eq!(beds, [None, Some(120), Some(-1)]);
    }

    #[test]
    fn load_errors_name_the_file_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let e = ReferenceTable::load(&dir.path().join("missing.csv"), "code").unwrap_err();
        assert!(e.contains("missing.csv") && e.contains("not found"), "{e}");

        let path = write(&dir, "dup.csv", "code,display\nA,x\nB,y\nA,z\n");
        let e = ReferenceTable::load(&path, "code").unwrap_err();
        assert!(e.contains("dup.csv"), "{e}");
        assert!(e.contains("\"A\"") && e.contains("rows 1 and 3"), "{e}");

        let e = ReferenceTable::load(&write(&dir, "codes.csv", CODES), "kode").unwrap_err();
        assert!(e.contains("codes.csv") && e.contains("`kode`"), "{e}");
        assert!(e.contains("code, display, system"), "{e}");

        let e = ReferenceTable::load(&write(&dir, "codes.xlsx", CODES), "code").unwrap_err();
        assert!(e.contains("unsupported"), "{e}");

        let e =
            ReferenceTable::load(&write(&dir, "bad.parquet", "not parquet"), "code").unwrap_err();
        assert!(e.contains("bad.parquet"), "{e}");
    }

    #[test]
    fn byte_order_mark_and_tsv() {
        let dir = tempfile::tempdir().unwrap();
        let t =
            ReferenceTable::load(&write(&dir, "bom.csv", "\u{feff}code,d\nA,x\n"), "code").unwrap();
        assert_eq!(t.key(), "code");
        let t = ReferenceTable::load(&write(&dir, "t.tsv", "code\td\nA,1\tx\n"), "code").unwrap();
        assert_eq!(t.index.get("A,1"), Some(&0));
    }

    #[test]
    fn new_errors_name_the_column() {
        let (_dir, table) = codes();
        let build = |key: &str, columns: Vec<String>, defaults: Vec<(String, ScalarValue)>| {
            Lookup::new(
                "codes",
                input().schema(),
                table.clone(),
                key,
                columns,
                JoinKind::Left,
                if defaults.is_empty() {
                    OnMiss::Null
                } else {
                    OnMiss::Default
                },
                defaults,
            )
            .err()
            .unwrap()
        };
        let e = build("kode", vec![], vec![]);
        assert!(
            e.contains("`kode`") && e.contains("_source, code, n"),
            "{e}"
        );
        let e = build("code", vec!["nope".into()], vec![]);
        assert!(
            e.contains("`nope`") && e.contains("code, display, system"),
            "{e}"
        );
        // The table's key column listed explicitly collides with the input's `code`.
        let e = build("code", vec!["code".into()], vec![]);
        assert!(
            e.contains("`code`") && e.contains("already an input column"),
            "{e}"
        );
        let e = build(
            "n",
            vec![],
            vec![("nope".into(), ScalarValue::Int64(Some(1)))],
        );
        assert!(e.contains("`nope`") && e.contains("display, system"), "{e}");

        let e = Lookup::new(
            "codes",
            input().schema(),
            table.clone(),
            "code",
            vec![],
            JoinKind::Left,
            OnMiss::Null,
            vec![("display".into(), ScalarValue::Int64(Some(1)))],
        )
        .err()
        .unwrap();
        assert!(e.contains("on_miss: default"), "{e}");
    }
}
