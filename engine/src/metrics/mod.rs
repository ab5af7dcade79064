//! Classification metrics of a model's replies against expected completions, for `distill.evaluate()`
//! and for the validation set of a finished fine-tuning job.
//!
//! Replies and expected completions are compared after trimming whitespace. Every distinct expected
//! or predicted string is a label; macro-F1 averages over all of them (scikit-learn's default for
//! `f1_score(average="macro")`, with a label never predicted scoring 0 precision).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::error::Result;
use crate::text_model::TextModel;

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
}
