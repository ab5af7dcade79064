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

/// A choice's log-probability the plain way: its own fresh cache, the prompt, then one token at a
/// time, summing the log-softmax of each next token (EOS included). No sharing between choices.
fn independent_log_prob(m: &TextModel, prompt: &[u32], seq: &[u32]) -> f64 {
    let mut cache = distill_engine::models::llama::KvCache::new(&m.llama.config);
    let mut logits = m.llama.forward(prompt, &mut cache).unwrap();
    let mut total = 0.0;
    for &t in seq {
        let v: Vec<f32> = logits.to_vec1().unwrap();
        let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_sum = max + v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        total += v[t as usize] as f64 - log_sum;
        logits = m.llama.forward(&[t], &mut cache).unwrap();
    }
    total
}

/// Scores of long choices (two of ~200 tokens that part only at their end, two short ones) equal
/// each choice scored alone, and scoring leaves the prompt's cache as it found it: the branches
/// share one cache, cut back after each, rather than a copy per position.
#[test]
fn long_choices_score_as_independent_passes_in_one_cache() {
    use distill_engine::infer::choices;
    let m = model();
    let mut long = String::new();
    while m.count_tokens(&long).unwrap() < 200 {
        long += "Roaming fees on the last bill are wrong; check them. ";
    }
    assert!(long.len() + 10 <= choices::MAX_CHOICE_BYTES, "{} bytes", long.len());
    let choices: Vec<String> =
        [format!("{long}Refund."), format!("{long}Escalate."), "Roaming fees".into(), "Closing account".into()].into();
    let seqs = choices::tokenize(m, &choices).unwrap();
    assert!((200..=choices::MAX_CHOICE_TOKENS).contains(&(seqs[0].len() - 1)), "{} tokens", seqs[0].len() - 1);
    let ids = m.chat_prompt(&[distill_engine::Message::user(&prompt("My bill shows roaming charges"))]).unwrap();

    let want: Vec<f64> = seqs.iter().map(|s| independent_log_prob(m, &ids, s)).collect();
    let (logits, mut cache) = distill_engine::infer::generation::prefill(m, &ids, None).unwrap();
    let (got, steps) = choices::log_probs(m, None, &seqs, logits, &mut cache).unwrap();
    assert_eq!(cache.len(), ids.len(), "the cache holds the prompt again");
    // The long pair shares its passes up to where it parts.
    assert!(steps < seqs.iter().map(|s| s.len() - 1).sum::<usize>(), "{steps} passes");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() < 1e-3 * w.abs().max(1.0), "choice {i}: {g} vs {w} scored alone");
    }

    let c = m
        .choose_chat(&[distill_engine::Message::user(&prompt("My bill shows roaming charges"))], &choices, true, None)
        .unwrap();
    let max = want.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = want.iter().map(|l| (l - max).exp()).sum();
    for (p, w) in c.scores.unwrap().iter().zip(&want) {
        assert!((p - (w - max).exp() / total).abs() < 1e-4, "{p} vs {}", (w - max).exp() / total);
    }
}

/// Limits on choices, the first two checked before anything is tokenized (by `validate`, which
/// needs no model).
#[test]
fn choice_limits() {
    use distill_engine::infer::choices::{validate, MAX_CHOICES, MAX_CHOICE_BYTES, MAX_CHOICE_TOKENS};
    let many: Vec<String> = (0..=MAX_CHOICES).map(|i| format!("label {i}")).collect();
    assert_eq!(validate(&many).unwrap_err().to_string(), "too many choices: 1001 given, at most 1000 are allowed");
    assert!(validate(&many[..MAX_CHOICES]).is_ok());
    let long = vec!["yes".to_string(), "x".repeat(MAX_CHOICE_BYTES + 1)];
    assert_eq!(
        validate(&long).unwrap_err().to_string(),
        "choice 1 (counting from 0) is 1025 bytes long, at most 1024 bytes per choice are allowed"
    );
    assert!(validate(&["x".repeat(MAX_CHOICE_BYTES)]).is_ok());
    // Short in bytes, long in tokens.
    let digits = "0123456789".repeat(40);
    let tokens = model().count_tokens(&digits).unwrap();
    assert!(tokens > MAX_CHOICE_TOKENS && digits.len() <= MAX_CHOICE_BYTES, "{tokens} tokens");
    let err = model().choose_with("hi", &["no".to_string(), digits], true, None).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("choice 1 (counting from 0) is {tokens} tokens long, at most 256 tokens per choice are allowed")
    );
}
