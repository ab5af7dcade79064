//! Metrics of JSON-object replies (extraction tasks: text in, a JSON object of fields out) against
//! expected JSON objects, for `distill.evaluate()`.
//!
//! No reference package defines these; they are the usual extraction scores: the share of replies
//! that are JSON objects at all, of replies equal to the expected object, and per top-level field of
//! rows that got that field's value right. Objects compare as parsed values: key order and
//! formatting are irrelevant, and numbers compare by value (`1` equals `1.0`, as Python's `==` on
//! `json.loads` output has it).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Number, Value};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonMetrics {
    pub rows: usize,
    /// Share of replies that parse as a JSON object.
    pub valid_json: f64,
    /// Share of replies whose object equals the expected one.
    pub exact_match: f64,
    /// Per key of any expected object: among rows whose expected object has the key, the share
    /// whose reply has an equal value under it (a reply that is not an object gets none right).
    pub per_field: BTreeMap<String, f64>,
}

fn object(text: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

fn numbers_equal(a: &Number, b: &Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    // A float on either side: by value. (Two integers that fit neither i64 nor u64 together are a
    // negative and a number above i64::MAX: different.)
    (a.is_f64() || b.is_f64()) && a.as_f64() == b.as_f64()
}

/// JSON equality with numbers by value; objects ignore key order.
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => numbers_equal(x, y),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| values_equal(x, y)),
        (Value::Object(x), Value::Object(y)) => objects_equal(x, y),
        _ => a == b,
    }
}

fn objects_equal(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| values_equal(v, w)))
}

/// Metrics of `(expected, predicted)` pairs whose expected completions are JSON objects. A row whose
/// expected completion is not one counts in `rows` (and `valid_json`) but matches nothing.
pub fn json_metrics<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> JsonMetrics {
    let (mut rows, mut valid, mut exact) = (0usize, 0usize, 0usize);
    // Per field: (rows expecting it, rows right).
    let mut fields: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (expected, predicted) in pairs {
        rows += 1;
        let predicted = object(predicted);
        valid += predicted.is_some() as usize;
        let Some(expected) = object(expected) else { continue };
        exact += predicted.as_ref().is_some_and(|p| objects_equal(&expected, p)) as usize;
        for (key, value) in &expected {
            let right = predicted.as_ref().and_then(|p| p.get(key)).is_some_and(|v| values_equal(value, v));
            let f = fields.entry(key.clone()).or_default();
            f.0 += 1;
            f.1 += right as usize;
        }
    }
    let share = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    JsonMetrics {
        rows,
        valid_json: share(valid, rows),
        exact_match: share(exact, rows),
        per_field: fields.into_iter().map(|(k, (n, right))| (k, share(right, n))).collect(),
    }
}

/// Whether every expected completion is a JSON object (and there is at least one).
pub fn completions_are_json_objects<'a>(expected: impl IntoIterator<Item = &'a str>) -> bool {
    let mut any = false;
    for e in expected {
        if object(e).is_none() {
            return false;
        }
        any = true;
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_by_value_and_key_order() {
        let m = json_metrics([(r#"{"a": 1, "b": [1, {"c": 2.0}]}"#, r#" {"b": [1.0, {"c": 2}], "a": 1.0} "#)]);
        assert_eq!((m.valid_json, m.exact_match), (1.0, 1.0));
        let m = json_metrics([(r#"{"a": 1}"#, r#"{"a": true}"#), (r#"{"a": -1}"#, r#"{"a": 18446744073709551615}"#)]);
        assert_eq!((m.exact_match, m.per_field["a"]), (0.0, 0.0));
    }
}
