//! Scalar SQL functions for HL7/FHIR mapping work, registered on every planner session.
//!
//! | function                           | returns                    |
//! |------------------------------------|----------------------------|
//! | `hl7_ts(text)`                     | `timestamp(µs, UTC)`       |
//! | `hl7_date(text)`                   | `date`                     |
//! | `normalize_phone(text [, cc])`     | E.164 text (`+15551234567`)|
//! | `age_years(date [, as_of date])`   | `bigint` full years        |
//!
//! All are strict (NULL in, NULL out) and turn bad input into NULL rather than failing the
//! batch: a mapping over a million messages must not stop on one malformed timestamp. Checks that
//! must reject such rows belong in a validate stage (`hl7_ts(x) IS NOT NULL`).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use chrono::{Datelike, FixedOffset, NaiveDate};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

use crate::formats::hl7::datatypes::{Ts, Zone};

/// Registers plexus' scalar functions on `ctx`.
pub fn register(ctx: &SessionContext) {
    for kind in [
        Kind::Hl7Ts,
        Kind::Hl7Date,
        Kind::NormalizePhone,
        Kind::AgeYears,
        Kind::JsonGet,
    ] {
        ctx.register_udf(ScalarUDF::from(PlexusUdf::new(kind)));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Hl7Ts,
    Hl7Date,
    NormalizePhone,
    AgeYears,
    JsonGet,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct PlexusUdf {
    kind: Kind,
    signature: Signature,
}

/// Values sent without an offset are taken as UTC here: SQL sees instants; the parse stage's
/// `default_timezone` is where a sender's zone is set for its timestamp columns.
const UTC: Zone = Zone::Fixed(FixedOffset::east_opt(0).unwrap());
/// Days from 0001-01-01 (CE day 1) to 1970-01-01: converts chrono dates to Arrow `Date32`.
const UNIX_EPOCH_FROM_CE: i32 = 719_163;

impl PlexusUdf {
    fn new(kind: Kind) -> Self {
        // `age_years` reads the clock: Volatile keeps DataFusion from folding
        // `age_years(DATE '...')` into a constant at planning time, which would go stale in a
        // long-running pipeline (Stable functions are folded).
        let volatility = match kind {
            Kind::AgeYears => Volatility::Volatile,
            _ => Volatility::Immutable,
        };
        PlexusUdf {
            kind,
            signature: Signature::user_defined(volatility),
        }
    }

    fn arity(&self) -> (usize, usize) {
        match self.kind {
            Kind::Hl7Ts | Kind::Hl7Date => (1, 1),
            Kind::NormalizePhone | Kind::AgeYears => (1, 2),
            Kind::JsonGet => (2, 2),
        }
    }

    fn usage(&self) -> &'static str {
        match self.kind {
            Kind::Hl7Ts => "hl7_ts(text)",
            Kind::Hl7Date => "hl7_date(text)",
            Kind::NormalizePhone => "normalize_phone(text [, default_country_code text])",
            Kind::AgeYears => "age_years(date [, as_of date])",
            Kind::JsonGet => "json_get(json_text, path)",
        }
    }
}

impl ScalarUDFImpl for PlexusUdf {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Hl7Ts => "hl7_ts",
            Kind::Hl7Date => "hl7_date",
            Kind::NormalizePhone => "normalize_phone",
            Kind::AgeYears => "age_years",
            Kind::JsonGet => "json_get",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.kind {
            Kind::Hl7Ts => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Hl7Date => DataType::Date32,
            Kind::NormalizePhone | Kind::JsonGet => DataType::Utf8,
            Kind::AgeYears => DataType::Int64,
        })
    }

    fn is_strict(&self) -> bool {
        true
    }

    /// Text functions take any string or integer (HL7 timestamps often arrive as numbers from
    /// CSV/JSON); `age_years` takes dates and timestamps. Text is not implicitly cast to a date:
    /// that cast fails the whole batch on one bad value (use `hl7_date` instead).
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let (min, max) = self.arity();
        if arg_types.len() < min || arg_types.len() > max {
            return plan_err!(
                "{} takes {} argument(s), got {}",
                self.usage(),
                if min == max {
                    min.to_string()
                } else {
                    format!("{min} or {max}")
                },
                arg_types.len()
            );
        }
        arg_types
            .iter()
            .map(|t| {
                let ok = match self.kind {
                    Kind::AgeYears => is_date_like(t),
                    _ => is_text_like(t),
                };
                if ok {
                    Ok(match self.kind {
                        Kind::AgeYears => DataType::Date32,
                        _ => DataType::Utf8,
                    })
                } else {
                    plan_err!("{}: unsupported argument type {t}", self.usage())
                }
            })
            .collect()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (min, max) = self.arity();
        if args.args.len() < min || args.args.len() > max {
            return exec_err!("{}: wrong number of arguments", self.usage());
        }
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        // All-scalar calls become 1-row arrays, so one array path serves both cases.
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let out: ArrayRef = match self.kind {
            Kind::Hl7Ts => {
                let text = as_utf8(&arrays[0])?;
                let text = text.as_string::<i32>();
                Arc::new(
                    text.iter()
                        .map(|s| s.and_then(hl7_ts))
                        .collect::<TimestampMicrosecondArray>()
                        .with_timezone("UTC"),
                )
            }
            Kind::Hl7Date => {
                let text = as_utf8(&arrays[0])?;
                let text = text.as_string::<i32>();
                Arc::new(
                    text.iter()
                        .map(|s| s.and_then(hl7_date))
                        .collect::<Date32Array>(),
                )
            }
            Kind::NormalizePhone => {
                let text = as_utf8(&arrays[0])?;
                let text = text.as_string::<i32>();
                let out: StringArray = match arrays.get(1) {
                    None => text
                        .iter()
                        .map(|s| s.and_then(|s| normalize_phone(s, "1")))
                        .collect(),
                    Some(cc) => {
                        let cc = as_utf8(cc)?;
                        let cc = cc.as_string::<i32>();
                        text.iter()
                            .zip(cc.iter())
                            .map(|(s, cc)| match (s, cc) {
                                (Some(s), Some(cc)) => {
                                    country_code(cc).and_then(|cc| normalize_phone(s, &cc))
                                }
                                _ => None,
                            })
                            .collect()
                    }
                };
                Arc::new(out)
            }
            Kind::JsonGet => {
                let text = as_utf8(&arrays[0])?;
                let path = as_utf8(&arrays[1])?;
                let out: StringArray = text
                    .as_string::<i32>()
                    .iter()
                    .zip(path.as_string::<i32>().iter())
                    .map(|(t, p)| json_get(t?, p?))
                    .collect();
                Arc::new(out)
            }
            Kind::AgeYears => {
                let dates = as_date32(&arrays[0])?;
                let dates = dates.as_primitive::<arrow::datatypes::Date32Type>();
                let out: Int64Array = match arrays.get(1) {
                    None => {
                        let today = chrono::Utc::now().date_naive();
                        dates
                            .iter()
                            .map(|d| d.and_then(|d| age_years(from_date32(d)?, today)))
                            .collect()
                    }
                    Some(as_of) => {
                        let as_of = as_date32(as_of)?;
                        let as_of = as_of.as_primitive::<arrow::datatypes::Date32Type>();
                        dates
                            .iter()
                            .zip(as_of.iter())
                            .map(|(d, a)| age_years(from_date32(d?)?, from_date32(a?)?))
                            .collect()
                    }
                };
                Arc::new(out)
            }
        };
        if all_scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

/// The value at `path` (`name.0.family`, or a JSON pointer `/name/0/family`) of a JSON
/// text: strings as themselves, other values as JSON text; None when absent, null or when
/// the text is not JSON.
fn json_get(text: &str, path: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let found = if path.starts_with('/') || path.is_empty() {
        value.pointer(path)?
    } else {
        path.split('.').try_fold(&value, |v, key| match v {
            serde_json::Value::Array(items) => items.get(key.parse::<usize>().ok()?),
            _ => v.get(key),
        })?
    };
    match found {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn is_text_like(t: &DataType) -> bool {
    match t {
        DataType::Dictionary(_, v) => is_text_like(v),
        _ => {
            t.is_null()
                || t.is_integer()
                || matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        }
    }
}

fn is_date_like(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Null | DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
    )
}

/// Coercion normally delivers Utf8 already; the cast covers direct callers.
fn as_utf8(a: &ArrayRef) -> Result<ArrayRef> {
    if a.data_type() == &DataType::Utf8 {
        Ok(Arc::clone(a))
    } else {
        Ok(arrow::compute::cast(a, &DataType::Utf8)?)
    }
}

fn as_date32(a: &ArrayRef) -> Result<ArrayRef> {
    if a.data_type() == &DataType::Date32 {
        Ok(Arc::clone(a))
    } else {
        Ok(arrow::compute::cast(a, &DataType::Date32)?)
    }
}

/// The TS/DTM text to parse: component 1 when a (pre-2.6) TS with its degree-of-precision
/// component arrives unsplit, e.g. `200601021230^M`.
fn ts_text(s: &str) -> &str {
    s.split('^').next().unwrap_or(s)
}

fn hl7_ts(s: &str) -> Option<i64> {
    Ts::parse(ts_text(s)).ok().map(|ts| ts.to_utc_micros(UTC))
}

fn hl7_date(s: &str) -> Option<i32> {
    Ts::parse(ts_text(s))
        .ok()
        .map(|ts| ts.date().num_days_from_ce() - UNIX_EPOCH_FROM_CE)
}

fn from_date32(days: i32) -> Option<NaiveDate> {
    NaiveDate::from_num_days_from_ce_opt(days.checked_add(UNIX_EPOCH_FROM_CE)?)
}

/// Full years from `born` to `as_of`; None when `born` is after `as_of`. A 29 February birthday
/// counts from 1 March in common years.
fn age_years(born: NaiveDate, as_of: NaiveDate) -> Option<i64> {
    if born > as_of {
        return None;
    }
    let mut years = i64::from(as_of.year() - born.year());
    if (as_of.month(), as_of.day()) < (born.month(), born.day()) {
        years -= 1;
    }
    Some(years)
}

/// A country calling code as written in config (`44`, `+44`): 1-3 digits.
fn country_code(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    (!s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.to_string())
}

/// E.164 for `text`, with `cc` as the country calling code of numbers written without one.
///
/// Only digits count, plus a `+` if it comes before the first digit. International numbers
/// (`+`, or `00` outside North America) keep their own code. With `cc` = 1 (NANP), 10 digits
/// get `+1` and 11 digits starting with 1 get `+`; elsewhere one leading trunk `0` is dropped
/// and `cc` prefixed. The result must have 8-15 digits (E.164 allows at most 15).
fn normalize_phone(text: &str, cc: &str) -> Option<String> {
    let plus = text.chars().find(|c| *c == '+' || c.is_ascii_digit()) == Some('+');
    let digits: String = text.chars().filter(|c| c.is_ascii_digit()).collect();
    let e164 = |d: &str| (8..=15).contains(&d.len()).then(|| format!("+{d}"));
    if plus {
        return e164(&digits);
    }
    if cc == "1" {
        return match digits.len() {
            10 => Some(format!("+1{digits}")),
            11 if digits.starts_with('1') => Some(format!("+{digits}")),
            _ => None,
        };
    }
    if let Some(international) = digits.strip_prefix("00") {
        return e164(international);
    }
    let national = digits.strip_prefix('0').unwrap_or(&digits);
    if national.is_empty() {
        return None;
    }
    e164(&format!("{cc}{national}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::RecordBatch;
    use arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;

    fn ctx() -> SessionContext {
        let ctx = SessionContext::new();
        register(&ctx);
        ctx
    }

    /// Runs `sql` and returns the single column of the result, all batches concatenated.
    async fn column(ctx: &SessionContext, sql: &str) -> ArrayRef {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let cols: Vec<ArrayRef> = batches.iter().map(|b| b.column(0).clone()).collect();
        let refs: Vec<&dyn Array> = cols.iter().map(|c| c.as_ref()).collect();
        arrow::compute::concat(&refs).unwrap()
    }

    async fn scalar(sql: &str) -> ArrayRef {
        column(&ctx(), sql).await
    }

    fn micros(a: &ArrayRef) -> Vec<Option<i64>> {
        a.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
            .iter()
            .collect()
    }

    fn strings(a: &ArrayRef) -> Vec<Option<String>> {
        // `CAST(.. AS VARCHAR)` yields Utf8View.
        let a = as_utf8(a).unwrap();
        a.as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_string))
            .collect()
    }

    fn date(y: i32, m: u32, d: u32) -> i32 {
        NaiveDate::from_ymd_opt(y, m, d).unwrap().num_days_from_ce() - UNIX_EPOCH_FROM_CE
    }

    #[tokio::test]
    async fn hl7_ts_converts_to_utc() {
        let a = scalar("SELECT hl7_ts('20260105143000-0500')").await;
        assert_eq!(
            a.data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        // 2026-01-05T19:30:00Z
        assert_eq!(micros(&a), vec![Some(1_767_641_400_000_000)]);

        // No offset: UTC. Year precision: 1 January, midnight.
        let a = scalar("SELECT hl7_ts('2026')").await;
        assert_eq!(micros(&a), vec![Some(1_767_225_600_000_000)]);
        // +02:15 is subtracted: 1988-08-18T09:11:00Z.
        let a = scalar("SELECT hl7_ts('198808181126+0215')").await;
        let expected = NaiveDate::from_ymd_opt(1988, 8, 18)
            .unwrap()
            .and_hms_opt(9, 11, 0)
            .unwrap()
            .and_utc()
            .timestamp_micros();
        assert_eq!(micros(&a), vec![Some(expected)]);
        // Old TS with a degree-of-precision component.
        let a = scalar("SELECT hl7_ts('20260105143000-0500^S')").await;
        assert_eq!(micros(&a), vec![Some(1_767_641_400_000_000)]);
        // Fractional seconds.
        let a = scalar("SELECT hl7_ts('20260105193000.25')").await;
        assert_eq!(micros(&a), vec![Some(1_767_641_400_250_000)]);
    }

    #[tokio::test]
    async fn hl7_ts_null_and_garbage_are_null() {
        for sql in [
            "SELECT hl7_ts(NULL)",
            "SELECT hl7_ts('')",
            "SELECT hl7_ts('not a date')",
            "SELECT hl7_ts('20261305')",
            "SELECT hl7_ts('2026010')",
            "SELECT hl7_ts('^S')",
        ] {
            let a = scalar(sql).await;
            assert_eq!(a.len(), 1, "{sql}");
            assert!(a.is_null(0), "{sql}");
        }
        // Still usable in expressions: the result is a real timestamp type.
        let a = scalar("SELECT hl7_ts('20260105') < hl7_ts('20260106')").await;
        assert!(a.as_boolean().value(0));
    }

    #[tokio::test]
    async fn hl7_date_keeps_the_written_date() {
        let a = scalar("SELECT hl7_date('19880818')").await;
        assert_eq!(a.data_type(), &DataType::Date32);
        assert_eq!(
            a.as_primitive::<arrow::datatypes::Date32Type>().value(0),
            date(1988, 8, 18)
        );
        // The offset does not move the date: a birth date stays on its day.
        let a = scalar("SELECT hl7_date('20260105233000-0500')").await;
        assert_eq!(
            a.as_primitive::<arrow::datatypes::Date32Type>().value(0),
            date(2026, 1, 5)
        );
        let a = scalar("SELECT hl7_date('198808')").await;
        assert_eq!(
            a.as_primitive::<arrow::datatypes::Date32Type>().value(0),
            date(1988, 8, 1)
        );
        let a = scalar("SELECT CAST(hl7_date('20240229') AS VARCHAR)").await;
        assert_eq!(strings(&a), vec![Some("2024-02-29".to_string())]);
        for sql in [
            "SELECT hl7_date(NULL)",
            "SELECT hl7_date('20230229')",
            "SELECT hl7_date('x')",
        ] {
            assert!(scalar(sql).await.is_null(0), "{sql}");
        }
    }

    #[tokio::test]
    async fn normalize_phone_to_e164() {
        let cases = [
            ("(555) 123-4567", Some("+15551234567")),
            ("1-555-123-4567", Some("+15551234567")),
            ("+44 20 7946 0958", Some("+442079460958")),
            ("(+44) 20 7946 0958", Some("+442079460958")),
            ("555-1234", None),
            ("2-555-123-4567", None),
            ("+1234567", None),
            ("+1234567890123456", None),
            ("unknown", None),
            ("", None),
        ];
        for (input, want) in cases {
            let a = scalar(&format!("SELECT normalize_phone('{input}')")).await;
            assert_eq!(strings(&a), vec![want.map(str::to_string)], "{input}");
        }
        assert!(scalar("SELECT normalize_phone(NULL)").await.is_null(0));
    }

    #[tokio::test]
    async fn normalize_phone_with_default_country_code() {
        let cases = [
            ("020 7946 0958", "44", Some("+442079460958")),
            ("020 7946 0958", "+44", Some("+442079460958")),
            ("0044 20 7946 0958", "44", Some("+442079460958")),
            ("+1 555 123 4567", "44", Some("+15551234567")),
            ("555 123 4567", "1", Some("+15551234567")),
            ("0", "44", None),
            ("020 7946 0958", "4444", None),
            ("020 7946 0958", "x", None),
        ];
        for (input, cc, want) in cases {
            let a = scalar(&format!("SELECT normalize_phone('{input}', '{cc}')")).await;
            assert_eq!(
                strings(&a),
                vec![want.map(str::to_string)],
                "{input} / {cc}"
            );
        }
        assert!(
            scalar("SELECT normalize_phone('020 7946 0958', NULL)")
                .await
                .is_null(0)
        );
    }

    #[tokio::test]
    async fn json_get_reads_paths_and_pointers() {
        let doc =
            r#"'{"resourceType":"Patient","id":"p1","name":[{"family":"Ng"}],"active":true}'"#;
        for (path, want) in [
            ("id", Some("p1")),
            ("name.0.family", Some("Ng")),
            ("/name/0/family", Some("Ng")),
            ("active", Some("true")),
            ("name.0", Some(r#"{"family":"Ng"}"#)),
            ("name.3.family", None),
            ("missing", None),
        ] {
            let got = strings(&scalar(&format!("SELECT json_get({doc}, '{path}')")).await);
            assert_eq!(got, vec![want.map(str::to_string)], "{path}");
        }
        let got = strings(&scalar("SELECT json_get('not json', 'id')").await);
        assert_eq!(got, vec![None]);
    }

    #[tokio::test]
    async fn age_years_counts_full_years() {
        let a = scalar("SELECT age_years(DATE '1988-08-18', DATE '2026-08-17')").await;
        assert_eq!(a.as_primitive::<arrow::datatypes::Int64Type>().value(0), 37);
        let a = scalar("SELECT age_years(DATE '1988-08-18', DATE '2026-08-18')").await;
        assert_eq!(a.as_primitive::<arrow::datatypes::Int64Type>().value(0), 38);
        // Leap-day birthday: a year older from 1 March in common years.
        let a = scalar("SELECT age_years(DATE '2000-02-29', DATE '2001-02-28')").await;
        assert_eq!(a.as_primitive::<arrow::datatypes::Int64Type>().value(0), 0);
        let a = scalar("SELECT age_years(DATE '2000-02-29', DATE '2001-03-01')").await;
        assert_eq!(a.as_primitive::<arrow::datatypes::Int64Type>().value(0), 1);
        // Future date, NULLs.
        for sql in [
            "SELECT age_years(DATE '2026-01-02', DATE '2026-01-01')",
            "SELECT age_years(NULL)",
            "SELECT age_years(DATE '2000-01-01', NULL)",
            "SELECT age_years(DATE '9999-01-01')",
        ] {
            assert!(scalar(sql).await.is_null(0), "{sql}");
        }
        // Against today: someone born 1 January 1900 is at least 126 years old.
        let a = scalar("SELECT age_years(DATE '1900-01-01')").await;
        assert!(a.as_primitive::<arrow::datatypes::Int64Type>().value(0) >= 126);
        // Chains with hl7_date and accepts timestamps.
        let a = scalar("SELECT age_years(hl7_date('19880818'), hl7_date('20260101'))").await;
        assert_eq!(a.as_primitive::<arrow::datatypes::Int64Type>().value(0), 37);
        let a = scalar("SELECT age_years(hl7_ts('19880818'), DATE '2026-01-01')").await;
        assert_eq!(a.as_primitive::<arrow::datatypes::Int64Type>().value(0), 37);
    }

    #[tokio::test]
    async fn column_inputs() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Utf8, true),
            Field::new("phone", DataType::Utf8, true),
            Field::new("cc", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("20260105143000-0500"),
                    None,
                    Some("garbage"),
                    Some("19880818"),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("555.123.4567"),
                    Some("020 7946 0958"),
                    None,
                    Some("12"),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("1"),
                    Some("44"),
                    Some("44"),
                    None,
                ])),
                Arc::new(Int64Array::from(vec![
                    Some(20260105),
                    None,
                    Some(1),
                    Some(19880818),
                ])),
            ],
        )
        .unwrap();
        let ctx = ctx();
        ctx.register_table(
            "t",
            Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap()),
        )
        .unwrap();

        let a = column(&ctx, "SELECT hl7_ts(ts) FROM t").await;
        assert_eq!(
            micros(&a),
            vec![
                Some(1_767_641_400_000_000),
                None,
                None,
                Some(
                    NaiveDate::from_ymd_opt(1988, 8, 18)
                        .unwrap()
                        .and_hms_opt(0, 0, 0)
                        .unwrap()
                        .and_utc()
                        .timestamp_micros()
                ),
            ]
        );
        let a = column(&ctx, "SELECT hl7_date(ts) FROM t").await;
        let got: Vec<Option<i32>> = a
            .as_primitive::<arrow::datatypes::Date32Type>()
            .iter()
            .collect();
        assert_eq!(
            got,
            vec![Some(date(2026, 1, 5)), None, None, Some(date(1988, 8, 18))]
        );

        // Integers are read as their text.
        let a = column(&ctx, "SELECT hl7_date(n) FROM t").await;
        let got: Vec<Option<i32>> = a
            .as_primitive::<arrow::datatypes::Date32Type>()
            .iter()
            .collect();
        assert_eq!(
            got,
            vec![Some(date(2026, 1, 5)), None, None, Some(date(1988, 8, 18))]
        );

        let a = column(&ctx, "SELECT normalize_phone(phone) FROM t").await;
        assert_eq!(
            strings(&a),
            vec![Some("+15551234567".to_string()), None, None, None]
        );
        let a = column(&ctx, "SELECT normalize_phone(phone, cc) FROM t").await;
        assert_eq!(
            strings(&a),
            vec![
                Some("+15551234567".to_string()),
                Some("+442079460958".to_string()),
                None,
                None
            ]
        );
        // Utf8View (DataFusion's VARCHAR) and dictionary text are coerced.
        let a = column(&ctx, "SELECT hl7_ts(CAST(ts AS VARCHAR)) FROM t").await;
        assert_eq!(micros(&a)[0], Some(1_767_641_400_000_000));
        let a = column(
            &ctx,
            "SELECT hl7_date(arrow_cast(ts, 'Dictionary(Int32, Utf8)')) FROM t",
        )
        .await;
        assert_eq!(
            a.as_primitive::<arrow::datatypes::Date32Type>().value(3),
            date(1988, 8, 18)
        );

        // Column with a scalar second argument.
        let a = column(&ctx, "SELECT normalize_phone(phone, '44') FROM t").await;
        assert_eq!(strings(&a)[1].as_deref(), Some("+442079460958"));

        let a = column(
            &ctx,
            "SELECT age_years(hl7_date(ts), DATE '2026-06-01') FROM t",
        )
        .await;
        let got: Vec<Option<i64>> = a
            .as_primitive::<arrow::datatypes::Int64Type>()
            .iter()
            .collect();
        assert_eq!(got, vec![Some(0), None, None, Some(37)]);
    }

    #[tokio::test]
    async fn planning_errors_name_the_function() {
        let ctx = ctx();
        let e = ctx
            .sql("SELECT hl7_ts('a', 'b')")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("hl7_ts(text)"), "{e}");
        let e = ctx
            .sql("SELECT age_years('1988-08-18')")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("age_years"), "{e}");
        let e = ctx
            .sql("SELECT hl7_date(1.5)")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("hl7_date"), "{e}");
    }
}
