//! The JSON the mapper builds resources in: a tree like `serde_json::Value`, but its objects
//! are vectors of fields in insertion order with `&'static str` keys, serialized directly.
//!
//! Why not `serde_json::Value`: its objects are `BTreeMap<String, Value>`, so every field of
//! every resource allocated its key and paid a tree insert, and a profile of the converter put
//! a third of its time there. A mapped resource is written once and read rarely, in the order
//! the mapper built it — `resourceType` and `id` first, as FHIR's JSON examples are.
//!
//! Objects compare as maps (the order of their fields does not matter), and a tree converts
//! to and from `serde_json::Value` for the readers that need one (the sync sink's merges).

use std::borrow::Cow;
use std::fmt;
use std::ops::{Index, IndexMut};

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
pub use serde_json::Number;

/// A field name: nearly always a literal of the mapper, owned only when read from elsewhere.
pub type Key = Cow<'static, str>;

/// A string value: up to 24 bytes inline, a literal by reference (`Json::lit`), longer text
/// on the heap. Most values of a resource (codes, short names, literals) allocate nothing.
pub type Str = compact_str::CompactString;

#[derive(Debug, Clone, Default)]
pub enum Json {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(Str),
    Array(Vec<Json>),
    Object(Fields),
}

/// An object's fields in insertion order; keys are unique (`insert` replaces).
#[derive(Debug, Clone, Default)]
pub struct Fields(Vec<(Key, Json)>);

static NULL: Json = Json::Null;

impl Fields {
    pub fn new() -> Self {
        Fields(Vec::new())
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| k == key)
    }

    /// Sets `key`, replacing (in place) a value it had; returns that value.
    pub fn insert(&mut self, key: impl Into<Key>, value: Json) -> Option<Json> {
        let key = key.into();
        match self.position(&key) {
            Some(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            None => {
                self.0.push((key, value));
                None
            }
        }
    }

    /// Appends `key`, which the caller knows is not set yet (builders and `json!` literals
    /// set each key once): no search for a value to replace.
    #[inline]
    pub fn append(&mut self, key: &'static str, value: Json) {
        debug_assert!(!self.contains_key(key), "{key} set twice");
        self.0.push((Key::Borrowed(key), value));
    }

    pub fn with_capacity(n: usize) -> Self {
        Fields(Vec::with_capacity(n))
    }

    /// How many more fields fit without regrowth.
    pub fn spare(&self) -> usize {
        self.0.capacity() - self.0.len()
    }

    /// Moves the last `n` fields to the front.
    pub fn rotate_right(&mut self, n: usize) {
        self.0.rotate_right(n);
    }

    /// Appends `other`'s fields, whose keys are known not to be set here (as `append`).
    pub fn extend_unique(&mut self, other: Fields) {
        debug_assert!(other.0.iter().all(|(k, _)| !self.contains_key(k)));
        self.0.extend(other.0);
    }

    /// Sets `key` first (before every other field), replacing a value it had.
    pub fn insert_first(&mut self, key: &'static str, value: Json) {
        if let Some(i) = self.position(key) {
            self.0.remove(i);
        }
        self.0.insert(0, (Key::Borrowed(key), value));
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value at `key`, inserted by `make` if absent.
    pub fn entry(&mut self, key: &'static str, make: impl FnOnce() -> Json) -> &mut Json {
        let i = match self.position(key) {
            Some(i) => i,
            None => {
                self.0.push((Key::Borrowed(key), make()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }

    pub fn remove(&mut self, key: &str) -> Option<Json> {
        self.position(key).map(|i| self.0.remove(i).1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Json)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Json)> {
        self.0.iter_mut().map(|(k, v)| (&**k, v))
    }
}

impl<K: Into<Key>> FromIterator<(K, Json)> for Fields {
    fn from_iter<I: IntoIterator<Item = (K, Json)>>(iter: I) -> Self {
        let mut f = Fields::new();
        for (k, v) in iter {
            f.insert(k, v);
        }
        f
    }
}

impl PartialEq for Fields {
    /// As maps: the same keys with equal values, in any order.
    fn eq(&self, other: &Fields) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Json {
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.as_object()?.get(key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        self.as_object_mut()?.get_mut(key)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Json::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Vec<Json>> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_array_mut(&mut self) -> Option<&mut Vec<Json>> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Fields> {
        match self {
            Json::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_object_mut(&mut self) -> Option<&mut Fields> {
        match self {
            Json::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    pub fn is_array(&self) -> bool {
        matches!(self, Json::Array(_))
    }

    pub fn take(&mut self) -> Json {
        std::mem::take(self)
    }

    /// FHIR forbids empty values: `null`, `""`, `[]` and `{}` are left out of what is built.
    pub fn is_empty(&self) -> bool {
        match self {
            Json::Null => true,
            Json::String(s) => s.is_empty(),
            Json::Array(a) => a.is_empty(),
            Json::Object(o) => o.is_empty(),
            _ => false,
        }
    }

    /// The same tree as a `serde_json::Value` (its objects sorted by key).
    pub fn to_value(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::String(s) => Value::String(s.to_string()),
            Json::Array(a) => Value::Array(a.iter().map(Json::to_value).collect()),
            Json::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Json) -> bool {
        match (self, other) {
            (Json::Null, Json::Null) => true,
            (Json::Bool(a), Json::Bool(b)) => a == b,
            (Json::Number(a), Json::Number(b)) => a == b,
            (Json::String(a), Json::String(b)) => a == b,
            (Json::Array(a), Json::Array(b)) => a == b,
            (Json::Object(a), Json::Object(b)) => a == b,
            _ => false,
        }
    }
}

/// Tests compare a built tree with `serde_json::json!` literals.
impl PartialEq<serde_json::Value> for Json {
    fn eq(&self, other: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (self, other) {
            (Json::Null, Value::Null) => true,
            (Json::Bool(a), Value::Bool(b)) => a == b,
            (Json::Number(a), Value::Number(b)) => a == b,
            (Json::String(a), Value::String(b)) => a == b,
            (Json::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
            }
            (Json::Object(a), Value::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v == w))
            }
            _ => false,
        }
    }
}

impl PartialEq<str> for Json {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == Some(other)
    }
}

impl PartialEq<&str> for Json {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == Some(*other)
    }
}

impl PartialEq<String> for Json {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == Some(other.as_str())
    }
}

impl PartialEq<bool> for Json {
    fn eq(&self, other: &bool) -> bool {
        self.as_bool() == Some(*other)
    }
}

macro_rules! number_eq {
    ($($t:ty),*) => {$(
        impl PartialEq<$t> for Json {
            fn eq(&self, other: &$t) -> bool {
                match self {
                    Json::Number(n) => n.as_f64() == Some(*other as f64),
                    _ => false,
                }
            }
        }
        impl From<$t> for Json {
            fn from(n: $t) -> Json {
                Json::Number(Number::from(n))
            }
        }
    )*};
}
number_eq!(i32, i64, u32, u64, usize);

impl PartialEq<f64> for Json {
    fn eq(&self, other: &f64) -> bool {
        self.as_f64() == Some(*other)
    }
}

impl From<f64> for Json {
    /// A non-finite number (never valid FHIR) is `null`, as in `serde_json`.
    fn from(n: f64) -> Json {
        Number::from_f64(n).map_or(Json::Null, Json::Number)
    }
}

impl From<bool> for Json {
    fn from(b: bool) -> Json {
        Json::Bool(b)
    }
}

impl From<&str> for Json {
    fn from(s: &str) -> Json {
        Json::String(Str::from(s))
    }
}

impl From<String> for Json {
    fn from(s: String) -> Json {
        Json::String(Str::from(s))
    }
}

impl From<&String> for Json {
    fn from(s: &String) -> Json {
        Json::String(Str::from(s.as_str()))
    }
}

impl From<Str> for Json {
    fn from(s: Str) -> Json {
        Json::String(s)
    }
}

/// What a literal in `json!` becomes: a string literal is kept by reference (no copy), and
/// written as is, so it must need no JSON escaping (checked in debug builds by `write_clean`;
/// the mappers' literals are codes and URIs), as must a field name.
pub trait Lit {
    fn lit(self) -> Json;
}

impl Lit for &'static str {
    fn lit(self) -> Json {
        Json::String(Str::const_new(self))
    }
}

macro_rules! lit_by_from {
    ($($t:ty),*) => {$(
        impl Lit for $t {
            fn lit(self) -> Json {
                Json::from(self)
            }
        }
    )*};
}
lit_by_from!(bool, i32, i64, u32, u64, usize, f64);

impl Json {
    /// A literal (`Lit`): string literals by reference.
    pub fn lit(v: impl Lit) -> Json {
        v.lit()
    }
}

impl From<Vec<Json>> for Json {
    fn from(a: Vec<Json>) -> Json {
        Json::Array(a)
    }
}

impl From<Fields> for Json {
    fn from(o: Fields) -> Json {
        Json::Object(o)
    }
}

impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(v: Option<T>) -> Json {
        v.map_or(Json::Null, Into::into)
    }
}

impl From<&serde_json::Value> for Json {
    fn from(v: &serde_json::Value) -> Json {
        use serde_json::Value;
        match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(n.clone()),
            Value::String(s) => Json::from(s.as_str()),
            Value::Array(a) => Json::Array(a.iter().map(Json::from).collect()),
            Value::Object(o) => Json::Object(
                o.iter()
                    .map(|(k, v)| (Key::Owned(k.clone()), Json::from(v)))
                    .collect(),
            ),
        }
    }
}

impl From<serde_json::Value> for Json {
    fn from(v: serde_json::Value) -> Json {
        Json::from(&v)
    }
}

impl Index<&str> for Json {
    type Output = Json;
    /// `null` where there is no such field, as `serde_json::Value` does.
    fn index(&self, key: &str) -> &Json {
        self.get(key).unwrap_or(&NULL)
    }
}

impl Index<usize> for Json {
    type Output = Json;
    fn index(&self, i: usize) -> &Json {
        self.as_array().and_then(|a| a.get(i)).unwrap_or(&NULL)
    }
}

impl IndexMut<&'static str> for Json {
    /// The field, inserted as `null` if absent; a `null` becomes an object first.
    fn index_mut(&mut self, key: &'static str) -> &mut Json {
        if self.is_null() {
            *self = Json::Object(Fields::new());
        }
        match self {
            Json::Object(o) => o.entry(key, || Json::Null),
            other => panic!("cannot set field {key} of a non-object: {other}"),
        }
    }
}

impl IndexMut<usize> for Json {
    fn index_mut(&mut self, i: usize) -> &mut Json {
        match self {
            Json::Array(a) => &mut a[i],
            other => panic!("cannot index a non-array with {i}: {other}"),
        }
    }
}

impl Json {
    /// Compact JSON appended to `out`, the bytes `serde_json::to_writer` gives for the same
    /// tree (a test holds them equal), without serde's per-value dispatch: writing resources
    /// is most of what `fhir convert` does after mapping them.
    pub fn write(&self, out: &mut Vec<u8>) {
        write_value(self, out, &|_, _| false);
    }

    /// As `write`, for a resource inside a Bundle: the root object's `id` left out when
    /// `skip_id`, and each `reference` field's string offered to `reference`, which may write
    /// a replacement (JSON-safe text, without quotes) and return true.
    pub fn write_entry(
        &self,
        out: &mut Vec<u8>,
        skip_id: bool,
        reference: &dyn Fn(&str, &mut Vec<u8>) -> bool,
    ) {
        match self {
            Json::Object(o) if skip_id => write_object(o, out, Some("id"), reference),
            v => write_value(v, out, reference),
        }
    }
}

type OnReference<'f> = &'f dyn Fn(&str, &mut Vec<u8>) -> bool;

fn write_value(v: &Json, out: &mut Vec<u8>, reference: OnReference<'_>) {
    match v {
        Json::Null => out.extend_from_slice(b"null"),
        Json::Bool(true) => out.extend_from_slice(b"true"),
        Json::Bool(false) => out.extend_from_slice(b"false"),
        // Rare (quantities): serde_json's own formatting, so numbers read back the same.
        Json::Number(n) => {
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Json::String(s) => match s.as_static_str() {
            // A literal of the mapper (`Json::lit`), clean by construction: no escape scan.
            Some(lit) => write_clean(out, lit),
            None => write_str(out, s),
        },
        Json::Array(a) => {
            out.push(b'[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(v, out, reference);
            }
            out.push(b']');
        }
        Json::Object(o) => write_object(o, out, None, reference),
    }
}

fn write_object(o: &Fields, out: &mut Vec<u8>, skip: Option<&str>, reference: OnReference<'_>) {
    out.push(b'{');
    let mut first = true;
    for (k, v) in &o.0 {
        if skip == Some(&**k) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        match k {
            // A field name of the mapper: FHIR element names need no escaping.
            Key::Borrowed(k) => write_clean(out, k),
            Key::Owned(k) => write_str(out, k),
        }
        out.push(b':');
        if let (true, Json::String(r)) = (&**k == "reference", v) {
            let at = out.len();
            out.push(b'"');
            if reference(r, out) {
                out.push(b'"');
                continue;
            }
            out.truncate(at);
        }
        write_value(v, out, reference);
    }
    out.push(b'}');
}

/// A string known to need no escaping (a literal of the mapper), quoted.
#[inline]
fn write_clean(out: &mut Vec<u8>, s: &str) {
    debug_assert!(
        !s.bytes().any(|b| ESCAPE[usize::from(b)] != 0),
        "{s:?} needs escaping"
    );
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// A JSON string as serde_json writes it: `"` and `\` escaped, control characters as
/// `\b \f \n \r \t` or `\u00XX`, everything else (UTF-8 included) as is.
///
/// Clean text is found sixteen bytes at a time (`find_escape`) and copied in runs: a
/// byte-at-a-time loop was a sixth of a whole `fhir convert` run (perf), as nearly every byte
/// written is a string's.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    while let Some(i) = find_escape(bytes, start) {
        out.extend_from_slice(&bytes[start..i]);
        let b = bytes[i];
        let code = ESCAPE[usize::from(b)];
        if code == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        } else {
            out.extend_from_slice(&[b'\\', code]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The index of the first byte at or after `from` that JSON escapes (a control character,
/// `"` or `\`), if any.
#[inline]
fn find_escape(b: &[u8], from: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::find_escape(b, from)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        b[from..]
            .iter()
            .position(|&c| ESCAPE[usize::from(c)] != 0)
            .map(|p| p + from)
    }
}

/// Sixteen bytes per test with SSE2, which every x86_64 has (no runtime detection).
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };

    /// A bit per byte of `v` that JSON escapes: `v <= 0x1f` (as `max(v, 0x1f) == 0x1f`),
    /// `"` or `\`.
    #[inline(always)]
    fn to_escape(v: __m128i) -> u32 {
        // SAFETY (all intrinsics here): SSE2 is enabled on every x86_64 target.
        unsafe {
            let top = _mm_set1_epi8(0x1f);
            let control = _mm_cmpeq_epi8(_mm_max_epu8(v, top), top);
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            _mm_movemask_epi8(_mm_or_si128(control, _mm_or_si128(quote, backslash))) as u32
        }
    }

    #[inline(always)]
    fn load(b: &[u8; 16]) -> __m128i {
        // SAFETY: sixteen readable bytes; `loadu` needs no alignment.
        unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
    }

    #[inline]
    pub(super) fn find_escape(b: &[u8], mut i: usize) -> Option<usize> {
        if b.len() - i < 16 {
            // Shorter than a vector (most keys, codes and names): padded with spaces.
            let mut pad = [b' '; 16];
            pad[..b.len() - i].copy_from_slice(&b[i..]);
            let m = to_escape(load(&pad));
            return (m != 0).then(|| i + m.trailing_zeros() as usize);
        }
        while let Some(chunk) = b.get(i..i + 16) {
            let m = to_escape(load(chunk.try_into().ok()?));
            if m != 0 {
                return Some(i + m.trailing_zeros() as usize);
            }
            i += 16;
        }
        if i == b.len() {
            return None;
        }
        // The last, partial vector: the final sixteen bytes, without those already seen.
        let last = b.len() - 16;
        let m = to_escape(load(b[last..].try_into().ok()?)) >> (i - last);
        (m != 0).then(|| i + m.trailing_zeros() as usize)
    }
}

/// Per byte: 0 when written as is, else the letter after the backslash (`u` for `\u00XX`).
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b'u';
        b += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::String(v) => s.serialize_str(v),
            Json::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Json::Object(o) => o.serialize(s),
        }
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl fmt::Display for Json {
    /// Compact JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write(&mut out);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

/// A `Json` tree from JSON-like syntax, as `serde_json::json!`: `{"key": value, …}` with
/// literal keys, `[value, …]`, `null`, or any expression with `Into<Json>`.
#[doc(hidden)]
#[macro_export]
macro_rules! fhir_json {
    (null) => { $crate::fhir::json::Json::Null };
    ([]) => { $crate::fhir::json::Json::Array(Vec::new()) };
    ([ $($tt:tt)+ ]) => {
        $crate::fhir::json::Json::Array($crate::fhir_json!(@array [] () $($tt)+))
    };
    ({}) => { $crate::fhir::json::Json::Object($crate::fhir::json::Fields::new()) };
    ({ $($tt:tt)+ }) => {{
        let mut o = $crate::fhir::json::Fields::new();
        $crate::fhir_json!(@object o () () $($tt)+);
        $crate::fhir::json::Json::Object(o)
    }};
    ($l:literal) => { $crate::fhir::json::Json::lit($l) };
    ($e:expr) => { $crate::fhir::json::Json::from($e) };

    // Arrays: gather an element's tokens up to a top-level comma; the built elements
    // collect in `[…]` and become one `vec!`.
    (@array [$($done:expr,)*] ($($v:tt)+) , $($rest:tt)*) => {
        $crate::fhir_json!(@array [$($done,)* $crate::fhir_json!($($v)+),] () $($rest)*)
    };
    (@array [$($done:expr,)*] ($($v:tt)*) $t:tt $($rest:tt)*) => {
        $crate::fhir_json!(@array [$($done,)*] ($($v)* $t) $($rest)*)
    };
    (@array [$($done:expr,)*] ($($v:tt)+)) => {
        vec![$($done,)* $crate::fhir_json!($($v)+)]
    };
    (@array [$($done:expr,)*] ()) => { vec![$($done),*] };

    // Objects: a literal key, a colon, then the value's tokens up to a top-level comma.
    (@object $o:ident () () $k:literal : $($rest:tt)*) => {
        $crate::fhir_json!(@object $o ($k) () $($rest)*);
    };
    (@object $o:ident ($k:literal) ($($v:tt)+) , $($rest:tt)*) => {
        $o.append($k, $crate::fhir_json!($($v)+));
        $crate::fhir_json!(@object $o () () $($rest)*);
    };
    (@object $o:ident ($k:literal) ($($v:tt)*) $t:tt $($rest:tt)*) => {
        $crate::fhir_json!(@object $o ($k) ($($v)* $t) $($rest)*);
    };
    (@object $o:ident ($k:literal) ($($v:tt)+)) => {
        $o.append($k, $crate::fhir_json!($($v)+));
    };
    (@object $o:ident () ()) => {};
}

pub use crate::fhir_json as json;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_in_insertion_order_and_compares_as_a_map() {
        let who = "Patient/1";
        let a = json!({"b": 1, "a": [{"reference": format!("{who}")}, null, true], "c": {}});
        assert_eq!(
            a.to_string(),
            r#"{"b":1,"a":[{"reference":"Patient/1"},null,true],"c":{}}"#
        );
        let b = json!({"c": {}, "a": [{"reference": who}, null, true], "b": 1});
        assert_eq!(a, b);
        assert_eq!(
            a,
            serde_json::json!({"a": [{"reference": who}, null, true], "b": 1, "c": {}})
        );
        assert_ne!(a, json!({"b": 1}));
        assert_eq!(a["a"][0]["reference"], "Patient/1");
        assert!(a["missing"][3].is_null());
    }

    proptest::proptest! {
        /// `write` gives serde_json's bytes: any text (quotes, backslashes, every control
        /// character, non-ASCII), numbers, nesting.
        #[test]
        fn writes_what_serde_json_writes(
            text in "[\\x00-\\x7f\"\\\\é€😀]{0,40}",
            // Long clean runs with an escape anywhere: the writer tests sixteen bytes at a time.
            sparse in "[a-zA-Z0-9 é€😀]{0,70}[\\x00-\\x1f\x7f\"\\\\]?[a-zA-Z0-9 ]{0,70}",
            n in proptest::num::f64::NORMAL,
            i in proptest::num::i64::ANY,
        ) {
            let mut t = json!({"a": text.as_str(), "s": sparse.as_str(), "n": n, "i": i, "l": [text.as_str(), null, true, {}], "o": {"x": false}});
            t.as_object_mut().unwrap().insert(Key::Owned(text.clone()), json!([]));
            let mut out = Vec::new();
            t.write(&mut out);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&t).unwrap());
        }
    }

    #[test]
    fn entries_skip_the_root_id_and_rewrite_references() {
        let r = json!({"id": "1", "subject": {"reference": "Patient/2", "id": "kept"}, "x": [{"reference": "Other/3"}]});
        let mut out = Vec::new();
        r.write_entry(&mut out, true, &|r, out| {
            r.strip_prefix("Patient/")
                .map(|id| out.extend_from_slice(format!("urn:uuid:{id}").as_bytes()))
                .is_some()
        });
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"subject":{"reference":"urn:uuid:2","id":"kept"},"x":[{"reference":"Other/3"}]}"#
        );
    }

    #[test]
    fn insert_replaces_in_place_and_converts_both_ways() {
        let mut o = json!({"x": 1, "y": 2});
        o["x"] = Json::from("one");
        o["z"] = json!([1.5]);
        o.as_object_mut()
            .unwrap()
            .insert_first("resourceType", "Patient".into());
        assert_eq!(
            o.to_string(),
            r#"{"resourceType":"Patient","x":"one","y":2,"z":[1.5]}"#
        );
        let v = o.to_value();
        assert_eq!(Json::from(&v), o);
        assert_eq!(o, v);
    }
}
