//! The generation metrics against the reference packages' own numbers: rouge-score's ROUGE-1/2/L F1
//! per item and sacrebleu's corpus BLEU and chrF, from tests/fixtures/generation_metrics.json
//! (written by tests/fixtures/make_generation_metrics.py; tricky hand-written cases and 60 E2E NLG
//! meaning representations with all their references). Then hand-computed checks of the JSON
//! metrics and of the default metric kind.

mod common;

use distill_engine::metrics::generation::{corpus_bleu, corpus_chrf, rouge};
use distill_engine::metrics::{default_metric_kind, generation_metrics, group_references, json_metrics, MetricKind};
use serde_json::Value;

const TOLERANCE: f64 = 1e-9;

fn close(what: &str, ours: f64, theirs: &Value) {
    let theirs = theirs.as_f64().unwrap_or_else(|| panic!("{what}: not a number in the fixture"));
    assert!((ours - theirs).abs() <= TOLERANCE, "{what}: ours {ours}, reference {theirs}");
}

struct Item {
    prompt: String,
    prediction: String,
    references: Vec<String>,
    value: Value,
}

fn items(fixture: &Value) -> Vec<Item> {
    let strings =
        |v: &Value| -> Vec<String> { v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect() };
    fixture["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| Item {
            prompt: it["prompt"].as_str().unwrap().to_string(),
            prediction: it["prediction"].as_str().unwrap().to_string(),
            references: strings(&it["references"]),
            value: it.clone(),
        })
        .collect()
}

#[test]
fn matches_rouge_score_and_sacrebleu() {
    let fixture = common::fixture("generation_metrics.json");
    let items = items(&fixture);
    assert!(items.len() > 60, "fixture has {} items", items.len());
    let pairs: Vec<(&str, Vec<&str>)> =
        items.iter().map(|it| (it.prediction.as_str(), it.references.iter().map(String::as_str).collect())).collect();

    // Per item: ROUGE (score_multi) and BLEU/chrF of the item alone, a one-sentence corpus.
    for (it, pair) in items.iter().zip(&pairs) {
        let what = |m: &str| format!("{m} of {:?} vs {:?}", it.prediction, it.references);
        let r = rouge(pair.0, &pair.1);
        close(&what("rouge1"), r.rouge1, &it.value["rouge1"]);
        close(&what("rouge2"), r.rouge2, &it.value["rouge2"]);
        close(&what("rougeL"), r.rouge_l, &it.value["rougeL"]);
        close(&what("bleu"), corpus_bleu(std::slice::from_ref(pair)), &it.value["bleu"]);
        close(&what("chrf"), corpus_chrf(std::slice::from_ref(pair)), &it.value["chrf"]);
    }

    // The corpus, with its ragged references.
    let corpus = &fixture["corpus"];
    let m = generation_metrics(&pairs);
    close("mean rouge1", m.rouge1, &corpus["rouge1"]);
    close("mean rouge2", m.rouge2, &corpus["rouge2"]);
    close("mean rougeL", m.rouge_l, &corpus["rougeL"]);
    close("corpus bleu", m.bleu, &corpus["bleu"]);
    close("corpus chrf", m.chrf, &corpus["chrf"]);
    assert_eq!(m.predictions as u64, corpus["predictions"].as_u64().unwrap());
    // Neither trivially 0 nor 100: the scores check something.
    assert!(m.bleu > 10.0 && m.bleu < 95.0 && m.chrf > 10.0 && m.chrf < 95.0, "{m:?}");
    let json = serde_json::to_value(&m).unwrap();
    assert!(json["rougeL"].is_f64() && json["predictions"].is_u64(), "{json}");
}

/// The fixture as evaluate() sees it, one row per (prompt, reference) with the reply repeated (only
/// the first row's counts), regrouped into the same items and scores.
#[test]
fn grouped_rows_score_the_same() {
    let fixture = common::fixture("generation_metrics.json");
    let items = items(&fixture);
    let mut rows: Vec<(&str, &str, &str)> = Vec::new();
    for it in &items {
        for (i, r) in it.references.iter().enumerate() {
            rows.push((&it.prompt, r, if i == 0 { &it.prediction } else { "not the first row's reply" }));
        }
    }
    let grouped = group_references(rows);
    assert_eq!(grouped.len(), items.len());
    for (g, it) in grouped.iter().zip(&items) {
        assert_eq!(g.0, it.prediction);
        assert_eq!(g.1, it.references.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let m = generation_metrics(&grouped);
    close("corpus bleu (grouped)", m.bleu, &fixture["corpus"]["bleu"]);
    close("corpus chrf (grouped)", m.chrf, &fixture["corpus"]["chrf"]);
    close("mean rougeL (grouped)", m.rouge_l, &fixture["corpus"]["rougeL"]);
}

#[test]
fn json_fields() {
    let expected = [
        r#"{"name": "Aromi", "food": "Chinese", "area": "riverside"}"#,
        r#"{"name": "The Eagle", "food": "French"}"#,
        r#"{"name": "Zizzi", "priceRange": "cheap", "rating": 5}"#,
        r#"{"name": "Loch Fyne"}"#,
    ];
    let predicted = [
        // Same object, other key order and spacing: exact.
        r#"{"area":"riverside","name":"Aromi","food":"Chinese"}"#,
        // One field wrong.
        r#"{"name": "The Eagle", "food": "Italian"}"#,
        // Not JSON at all.
        r#"name: Zizzi"#,
        // Valid, right field, one extra key: not exact.
        r#"{"name": "Loch Fyne", "food": "Indian"}"#,
    ];
    let m = json_metrics(expected.iter().copied().zip(predicted.iter().copied()));
    assert_eq!(m.rows, 4);
    assert_eq!(m.valid_json, 0.75);
    assert_eq!(m.exact_match, 0.25);
    // name: right in rows 1, 2, 4 of 4; food: row 1 of rows 1-2; area: 1/1; priceRange, rating: 0/1.
    assert_eq!(m.per_field["name"], 0.75);
    assert_eq!(m.per_field["food"], 0.5);
    assert_eq!(m.per_field["area"], 1.0);
    assert_eq!(m.per_field["priceRange"], 0.0);
    assert_eq!(m.per_field["rating"], 0.0);
    assert_eq!(m.per_field.len(), 5);
    // A JSON array or string is valid JSON but not an object.
    let m =
        json_metrics([(r#"{"a": 1}"#, "[1]"), (r#"{"a": 1}"#, r#""{\"a\": 1}""#), (r#"{"a": 1}"#, r#"{"a": 1.0}"#)]);
    assert_eq!((m.valid_json, m.exact_match, m.per_field["a"]), (1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0));
    let m = json_metrics(std::iter::empty());
    assert_eq!((m.rows, m.valid_json, m.exact_match, m.per_field.len()), (0, 0.0, 0.0, 0));
}

#[test]
fn default_metric_kinds() {
    let json = [r#"{"a": "x"}"#, r#" {"a": "y", "b": 2} "#];
    assert_eq!(default_metric_kind(&json), MetricKind::Json);
    // Repeated JSON objects are still JSON, not labels.
    assert_eq!(default_metric_kind(&[r#"{"a": 1}"#, r#"{"a": 1}"#, r#"{"b": 1}"#, r#"{"b": 1}"#]), MetricKind::Json);
    // One non-object (an array) among them: not JSON.
    assert_eq!(default_metric_kind(&[r#"{"a": "x"}"#, "[1, 2]"]), MetricKind::Generation);
    let labels = ["positive", "negative", "positive", "neutral", "negative", "neutral"];
    assert_eq!(default_metric_kind(&labels), MetricKind::Labels);
    // A value seen once among repeated ones: still labels (3 distinct in 6 rows).
    assert_eq!(
        default_metric_kind(&["positive", "negative", "positive", "neutral", "positive", "positive"]),
        MetricKind::Labels
    );
    // Mostly distinct short texts (3 distinct in 4 rows): generation.
    assert_eq!(default_metric_kind(&["positive", "negative", "positive", "neutral"]), MetricKind::Generation);
    // A long value: not a label.
    assert_eq!(default_metric_kind(&[&"x".repeat(65), &"x".repeat(65)]), MetricKind::Generation);
    let text = ["Aromi is a Chinese coffee shop by the river.", "The Eagle serves French food."];
    assert_eq!(default_metric_kind(&text), MetricKind::Generation);
    assert_eq!(default_metric_kind(&[]), MetricKind::Generation);
    assert_eq!(serde_json::to_value(MetricKind::Json).unwrap(), "json");
}
