//! Constrained labels: every answer is one of the choices, scores are probabilities, decoding stops
//! as soon as the choice is determined, bad choice sets are refused.

mod common;

use distill_engine::{TextModel, WeightFormat};

const LABELS: [&str; 4] = ["Add new line", "Closing account", "Roaming fees", "Slow data speed"];

fn model() -> &'static TextModel {
    static M: std::sync::OnceLock<TextModel> = std::sync::OnceLock::new();
    M.get_or_init(|| common::smollm2_with(WeightFormat::Q8_0))
}

fn labels() -> Vec<String> {
    LABELS.iter().map(|s| s.to_string()).collect()
}

fn test_tickets() -> Vec<(String, String)> {
    let path = common::repo_root().join("data/support_tickets/test.csv");
    let mut r = csv::Reader::from_path(path).unwrap();
    r.records().map(|rec| rec.unwrap()).map(|rec| (rec[1].to_string(), rec[2].to_string())).collect()
}

fn prompt(request: &str) -> String {
    format!(
        "Classify this customer request into one of: {}. Reply with the category only.\nRequest: {request}",
        LABELS.join(", ")
    )
}

/// The base model, untuned, on all 27 test tickets: every answer is a label (accuracy is printed).
#[test]
fn base_model_answers_within_the_label_set() {
    let tickets = test_tickets();
    let mut correct = 0;
    for (request, label) in &tickets {
        let c = model().choose_with(&prompt(request), &labels(), false, None).unwrap();
        assert!(LABELS.contains(&c.text.as_str()), "{c:?}");
        assert_eq!(LABELS[c.index], c.text);
        correct += (c.text == *label) as usize;
    }
    eprintln!("base model with choices: {correct}/{} correct", tickets.len());
}

#[test]
fn scores_are_probabilities_and_pick_the_most_likely() {
    let (request, _) = &test_tickets()[0];
    let c = model().choose_with(&prompt(request), &labels(), true, None).unwrap();
    let scores = c.scores.clone().unwrap();
    assert_eq!(scores.len(), LABELS.len());
    assert!((scores.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{scores:?}");
    assert!(scores.iter().all(|&p| (0.0..=1.0).contains(&p)));
    let best = (0..scores.len()).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
    assert_eq!(c.index, best);
    // The scores are the model's own: a choice it would generate unconstrained gets the most mass.
    let free = model().complete(&prompt(request), &Default::default()).unwrap().text;
    if let Some(i) = LABELS.iter().position(|l| free.trim() == *l) {
        assert_eq!(c.index, i, "free generation said {free:?}, scores {scores:?}");
    }
}

#[test]
fn decoding_stops_once_the_choice_is_determined() {
    // These labels differ in their first token: one forward pass after the prompt decides.
    let (request, _) = &test_tickets()[0];
    let c = model().choose_with(&prompt(request), &labels(), false, None).unwrap();
    assert_eq!(c.steps, 0, "{c:?}");
    // A choice that is a prefix of another is still reachable, through EOS.
    let nested = vec!["Roaming".to_string(), "Roaming fees".to_string(), "Roaming fees refund".to_string()];
    let c = model().choose_with(&prompt(request), &nested, true, None).unwrap();
    assert!(nested.contains(&c.text));
    assert!(c.scores.unwrap().iter().all(|&p| p > 0.0));
    assert!(c.steps >= 2, "the nested choices share tokens: {}", c.steps);
}

#[test]
fn one_choice_needs_no_decoding() {
    let c = model().choose_with("Anything", &["Only".to_string()], true, None).unwrap();
    assert_eq!((c.index, c.text.as_str(), c.scores), (0, "Only", Some(vec![1.0])));
}

#[test]
fn bad_choice_sets_are_refused() {
    let m = model();
    let err = |choices: &[&str]| {
        let v: Vec<String> = choices.iter().map(|s| s.to_string()).collect();
        m.choose_with("hi", &v, false, None).unwrap_err().to_string()
    };
    assert_eq!(err(&[]), "choices must not be empty");
    assert_eq!(err(&["a", " "]), "choices must not contain an empty string");
    assert_eq!(err(&["a", "b", "a"]), "choices must be distinct: \"a\" appears twice");
}
