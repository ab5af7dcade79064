//! Classification metrics of a model's replies against expected completions, for `distill.evaluate()`
//! and for the validation set of a finished fine-tuning job.
//!
//! Replies and expected completions are compared after trimming whitespace. Every distinct expected
//! or predicted string is a label; macro-F1 averages over all of them (scikit-learn's default for
//! `f1_score(average="macro")`, with a label never predicted scoring 0 precision).
//!
//! Free-text completions are scored by [`generation`] (ROUGE, BLEU, chrF), JSON-object ones by
//! [`json_fields`]; [`default_metric_kind`] picks which of the three fits a set of expected
//! completions.

pub mod generation;
pub mod json_fields;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::error::Result;
use crate::text_model::TextModel;

pub use generation::{generation_metrics, group_references, GenerationMetrics};
pub use json_fields::{completions_are_json_objects, json_metrics, JsonMetrics};

/// Which metrics suit a set of expected completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// [`classification_metrics`]: accuracy, macro-F1, confusion.
    Labels,
    /// [`json_metrics`]: valid JSON, exact match, per-field accuracy.
    Json,
    /// [`generation_metrics`]: ROUGE, BLEU, chrF.
    Generation,
}

/// The metrics `distill.evaluate()` reports by default for these expected completions, checked in
/// this order:
/// 1. [`MetricKind::Json`] when every one is a JSON object ([`completions_are_json_objects`]): an
///    extraction task, scored per field (a fixed set of JSON replies is also scored this way, not
///    as labels);
/// 2. [`MetricKind::Labels`] when they are repeated short labels: each at most 64 bytes on one line,
///    and at most half as many distinct values as rows (so an evaluation set where some label
///    happens to appear once still scores as labels; looser than fine-tuning's
///    [`crate::train::label_set::closed_label_set`], which decides what a model may answer);
/// 3. [`MetricKind::Generation`] otherwise (free text, including an empty set).
pub fn default_metric_kind(expected: &[&str]) -> MetricKind {
    if completions_are_json_objects(expected.iter().copied()) {
        return MetricKind::Json;
    }
    let short = |e: &&str| {
        let t = e.trim();
        !t.is_empty() && t.len() <= 64 && !t.contains('\n')
    };
    let distinct: std::collections::HashSet<&str> = expected.iter().map(|e| e.trim()).collect();
    if !expected.is_empty() && expected.iter().all(short) && distinct.len() <= (expected.len() / 2).max(1) {
        MetricKind::Labels
    } else {
        MetricKind::Generation
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Rows whose expected completion is this label.
    pub support: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    pub expected: String,
    pub predicted: String,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    pub rows: usize,
    /// Rows whose reply equals the expected completion (both trimmed).
    pub exact_match: usize,
    /// `exact_match / rows`.
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_label: BTreeMap<String, LabelMetrics>,
    /// Every (expected, predicted) pair that occurred, most frequent first; the diagonal included.
    pub confusion: Vec<Confusion>,
}

/// Metrics of `(expected, predicted)` pairs.
pub fn classification_metrics<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Metrics {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (expected, predicted) in pairs {
        *counts.entry((expected.trim().to_string(), predicted.trim().to_string())).or_default() += 1;
    }
    let rows: usize = counts.values().sum();
    let exact_match: usize = counts.iter().filter(|((e, p), _)| e == p).map(|(_, n)| n).sum();
    let labels: BTreeSet<&String> = counts.keys().flat_map(|(e, p)| [e, p]).collect();
    let per_label: BTreeMap<String, LabelMetrics> = labels
        .iter()
        .map(|&label| {
            let tp = counts.get(&(label.clone(), label.clone())).copied().unwrap_or(0);
            let support: usize = counts.iter().filter(|((e, _), _)| e == label).map(|(_, n)| n).sum();
            let predicted: usize = counts.iter().filter(|((_, p), _)| p == label).map(|(_, n)| n).sum();
            let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
            let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
            (label.clone(), LabelMetrics { precision, recall, f1, support })
        })
        .collect();
    let macro_f1 =
        if per_label.is_empty() { 0.0 } else { per_label.values().map(|m| m.f1).sum::<f64>() / per_label.len() as f64 };
    let mut confusion: Vec<Confusion> =
        counts.into_iter().map(|((expected, predicted), count)| Confusion { expected, predicted, count }).collect();
    // Most frequent first; ties in (expected, predicted) order, so the output is deterministic.
    confusion.sort_by(|a, b| {
        b.count.cmp(&a.count).then_with(|| (&a.expected, &a.predicted).cmp(&(&b.expected, &b.predicted)))
    });
    Metrics {
        rows,
        exact_match,
        accuracy: if rows == 0 { 0.0 } else { exact_match as f64 / rows as f64 },
        macro_f1,
        per_label,
        confusion,
    }
}

/// Tokens to allow a reply when scoring against `expected` completions: the longest of them plus a
/// margin, so a model that does not stop is cut off soon after it has gone wrong.
pub fn reply_budget<'a>(model: &TextModel, expected: impl IntoIterator<Item = &'a str>) -> Result<usize> {
    let mut longest = 0;
    for e in expected {
        crate::interrupt::check()?;
        longest = longest.max(model.count_tokens(e.trim())?);
    }
    Ok(longest + 16)
}

impl MetricKind {
    /// A name in `evaluate()`'s `"metrics"` option: the kind, or one of its metrics.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "labels" | "accuracy" | "f1" => Some(Self::Labels),
            "json" | "fields" => Some(Self::Json),
            "generation" | "rouge" | "bleu" | "chrf" => Some(Self::Generation),
            _ => None,
        }
    }
}

/// Most ROUGE-L work ([`generation::rouge_l_work`]) [`score`] takes on: about a second of CPU.
pub const MAX_ROUGE_L_WORK: u64 = 500_000_000;

/// `(prompt, expected, predicted)` rows scored by each of `kinds` (an error when generation metrics
/// would take more than [`MAX_ROUGE_L_WORK`]), as `evaluate()` and DESCRIBE's
/// `validation_metrics` report them: classification's fields at the top level (their shape since
/// the first release), the JSON and generation metrics under `json` and `generation`; `rows` and
/// `metrics` (the kinds) always. Generation metrics group rows by prompt: each prompt's expected
/// completions are the references of its one reply.
pub fn score(kinds: &[MetricKind], rows: &[(&str, &str, &str)]) -> Result<serde_json::Value> {
    score_within(kinds, rows, MAX_ROUGE_L_WORK)
}

fn score_within(kinds: &[MetricKind], rows: &[(&str, &str, &str)], max_work: u64) -> Result<serde_json::Value> {
    let mut out = serde_json::Map::new();
    for kind in kinds {
        match kind {
            MetricKind::Labels => {
                let m = classification_metrics(rows.iter().map(|r| (r.1, r.2)));
                if let serde_json::Value::Object(fields) = serde_json::to_value(m).expect("metrics serialise") {
                    out.extend(fields);
                }
            }
            MetricKind::Json => {
                let m = json_metrics(rows.iter().map(|r| (r.1, r.2)));
                out.insert("json".into(), serde_json::to_value(m).expect("metrics serialise"));
            }
            MetricKind::Generation => {
                let items = group_references(rows.iter().copied());
                // Checked before the work: the metrics cannot be interrupted midway.
                let work = generation::rouge_l_work(&items);
                if work > max_work {
                    return Err(crate::error::Error::InvalidInput(format!(
                        "too much text to score as generation: ROUGE-L would compare {work} token pairs, more than \
                         {max_work}; score fewer or shorter rows, or pick other metrics"
                    )));
                }
                out.insert("generation".into(), serde_json::to_value(generation_metrics(&items)).expect("serialise"));
            }
        }
    }
    out.insert("rows".into(), rows.len().into());
    out.insert("metrics".into(), serde_json::to_value(kinds).expect("serialise"));
    Ok(serde_json::Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_empty() {
        let m = classification_metrics([("a", "a"), ("b", " b\n")]);
        assert_eq!((m.rows, m.exact_match, m.accuracy, m.macro_f1), (2, 2, 1.0, 1.0));
        let m = classification_metrics(std::iter::empty());
        assert_eq!((m.rows, m.accuracy, m.macro_f1), (0, 0.0, 0.0));
    }

    /// Checked against scikit-learn: y_true = [a, a, a, b, b, c], y_pred = [a, a, b, b, c, x]
    /// gives precision a 1.0, b 0.5, c 0.0, x 0.0; recall a 2/3, b 0.5, c 0, x 0; macro-F1 0.325.
    #[test]
    fn matches_scikit_learn() {
        let m = classification_metrics([("a", "a"), ("a", "a"), ("a", "b"), ("b", "b"), ("b", "c"), ("c", "x")]);
        assert_eq!(m.rows, 6);
        assert_eq!(m.exact_match, 3);
        assert!((m.accuracy - 0.5).abs() < 1e-12);
        assert!((m.per_label["a"].recall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.per_label["a"].precision, 1.0);
        assert_eq!(m.per_label["b"].precision, 0.5);
        assert_eq!(m.per_label["x"].support, 0);
        assert!((m.macro_f1 - 0.325).abs() < 1e-12, "{}", m.macro_f1);
        assert_eq!(m.confusion[0], Confusion { expected: "a".into(), predicted: "a".into(), count: 2 });
        assert_eq!(m.confusion.len(), 5);
    }

    #[test]
    fn generation_scoring_is_refused_above_its_work_limit() {
        // "a b c" against "a b" and "c d e f": 3 x 2 + 3 x 4 = 18 token pairs.
        let rows = [("p", "a b", "a b c"), ("p", "c d e f", "a b c")];
        let items = group_references(rows.iter().copied());
        assert_eq!(generation::rouge_l_work(&items), 18);
        assert!(score_within(&[MetricKind::Generation], &rows, 18).is_ok());
        let e = score_within(&[MetricKind::Generation], &rows, 17).unwrap_err().to_string();
        assert!(e.contains("too much text") && e.contains("18"), "{e}");
        // Other metrics are linear: no limit.
        assert!(score_within(&[MetricKind::Labels], &rows, 0).is_ok());
    }
}
