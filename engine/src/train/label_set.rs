//! Whether a job's training completions are a closed label set: what a classifier is tuned on. Such a
//! model then answers from its labels by default (`complete()` takes the constrained `choices` path),
//! so it can never reply with a label it invented, and answers faster.
//!
//! Closed means, precisely: between [`MIN_LABELS`] and [`MAX_LABELS`] distinct completions, each seen
//! at least [`MIN_EXAMPLES_PER_LABEL`] times, each at most [`MAX_LABEL_BYTES`] bytes on one line. Free
//! text (summaries, extractions, generated messages) fails at least one of these: its completions are
//! long, or nearly all distinct.

use std::collections::BTreeMap;

use crate::infer::choices;

/// Fewest distinct completions that make a label set (one value is a constant, not a classifier).
pub const MIN_LABELS: usize = 2;
/// Most distinct completions of a label set (BANKING77's 77 intents fit).
pub const MAX_LABELS: usize = 100;
/// Each label is seen at least this often: a value seen once is more likely free text than a class.
pub const MIN_EXAMPLES_PER_LABEL: usize = 2;
/// Longest label, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;

/// The training completions' label set, sorted (byte order), when they form one; labels are the
/// completions exactly as trained (the model learnt to say them so).
pub fn closed_label_set<'a>(completions: impl IntoIterator<Item = &'a str>) -> Option<Vec<String>> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in completions {
        if c.len() > MAX_LABEL_BYTES || c.contains('\n') || c.trim().is_empty() {
            return None;
        }
        *counts.entry(c).or_default() += 1;
        if counts.len() > MAX_LABELS {
            return None;
        }
    }
    if counts.len() < MIN_LABELS || counts.values().any(|&n| n < MIN_EXAMPLES_PER_LABEL) {
        return None;
    }
    let labels: Vec<String> = counts.into_keys().map(str::to_string).collect();
    // Two labels that differ only in surrounding blanks score as one (metrics trim): ambiguous.
    let mut trimmed: Vec<&str> = labels.iter().map(|l| l.trim()).collect();
    trimmed.sort_unstable();
    trimmed.dedup();
    if trimmed.len() < labels.len() {
        return None;
    }
    choices::validate(&labels).ok()?;
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_seen_often_are_a_label_set() {
        let c = ["b", "a", "b", "a", "c", "c", "c"];
        assert_eq!(closed_label_set(c), Some(vec!["a".into(), "b".into(), "c".into()]));
    }

    #[test]
    fn free_text_and_edge_cases_are_not() {
        // Nearly all distinct (a value seen once).
        assert_eq!(closed_label_set(["a", "a", "b"]), None);
        // One value only.
        assert_eq!(closed_label_set(["a", "a", "a"]), None);
        // Too long, or more than one line.
        let long = "x".repeat(MAX_LABEL_BYTES + 1);
        assert_eq!(closed_label_set([long.as_str(), long.as_str(), "a", "a"]), None);
        assert_eq!(closed_label_set(["a\nb", "a\nb", "a", "a"]), None);
        // Too many distinct values, each seen twice.
        let many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("l{i}")).collect();
        assert_eq!(closed_label_set(many.iter().chain(&many).map(String::as_str)), None);
        // Exactly MAX_LABELS is still a label set.
        assert_eq!(
            closed_label_set(many[..MAX_LABELS].iter().chain(&many[..MAX_LABELS]).map(String::as_str)).map(|l| l.len()),
            Some(MAX_LABELS)
        );
        // Labels that differ only in surrounding blanks are ambiguous.
        assert_eq!(closed_label_set(["a", "a", " a", " a"]), None);
    }
}
