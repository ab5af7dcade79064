//! Constrained labels: the reply restricted to exactly one of a fixed set of choices.
//!
//! Each choice is tokenized the way training renders a completion (its tokens, then EOS), and
//! decoding only ever picks a token that continues some still-possible choice, so the output is
//! always one of them. Decoding stops as soon as one choice remains: for labels that differ in
//! their first token, that is a single forward pass after the prompt.
//!
//! Scores are the model's probability of saying each choice and then stopping (the product of the
//! full-vocabulary softmax along the choice's tokens, EOS included), normalised over the choices.
//! With scores, the answer is the most probable choice; without, the greedy path through the choices
//! (the same in all but close calls), which needs fewer forward passes.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::lora::LoraAdapter;
use crate::models::llama::KvCache;
use crate::text_model::TextModel;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    /// Index into the choices given.
    pub index: usize,
    pub text: String,
    /// Per-choice probabilities (in the order given, summing to 1), when asked for.
    pub scores: Option<Vec<f64>>,
    /// Forward passes after the prompt's (how soon the choice was determined).
    pub steps: usize,
    pub prompt_tokens: usize,
}

/// Most choices one call takes: each costs tokenizing and a share of the forward passes, and a label
/// set this large is more likely a mistake (or a way to tie up the server) than a classification.
pub const MAX_CHOICES: usize = 1000;
/// Longest choice in bytes, checked before anything is tokenized.
pub const MAX_CHOICE_BYTES: usize = 1024;
/// Most tokens in one choice (its closing EOS not counted): with scores, each is a forward pass.
pub const MAX_CHOICE_TOKENS: usize = 256;

/// Checks a set of choices: at least one and at most [`MAX_CHOICES`], none empty or longer than
/// [`MAX_CHOICE_BYTES`], no duplicates. Needs no model: nothing is tokenized yet.
pub fn validate(choices: &[String]) -> Result<()> {
    if choices.is_empty() {
        return Err(Error::InvalidInput("choices must not be empty".into()));
    }
    if choices.len() > MAX_CHOICES {
        return Err(Error::InvalidInput(format!(
            "too many choices: {} given, at most {MAX_CHOICES} are allowed",
            choices.len()
        )));
    }
    if let Some((i, c)) = choices.iter().enumerate().find(|(_, c)| c.len() > MAX_CHOICE_BYTES) {
        return Err(Error::InvalidInput(format!(
            "choice {i} (counting from 0) is {} bytes long, at most {MAX_CHOICE_BYTES} bytes per choice are allowed",
            c.len()
        )));
    }
    if choices.iter().any(|c| c.trim().is_empty()) {
        return Err(Error::InvalidInput("choices must not contain an empty string".into()));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = choices.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(Error::InvalidInput(format!("choices must be distinct: \"{dup}\" appears twice")));
    }
    Ok(())
}

/// Each choice's tokens as decoding follows them: the choice, then EOS. Refuses one longer than
/// [`MAX_CHOICE_TOKENS`].
pub fn tokenize(model: &TextModel, choices: &[String]) -> Result<Vec<Vec<u32>>> {
    choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut ids = model.tokenizer.encode(c)?;
            if ids.len() > MAX_CHOICE_TOKENS {
                return Err(Error::InvalidInput(format!(
                    "choice {i} (counting from 0) is {} tokens long, at most {MAX_CHOICE_TOKENS} tokens per choice are allowed",
                    ids.len()
                )));
            }
            ids.push(model.tokenizer.eos_id);
            Ok(ids)
        })
        .collect()
}

/// Which of `choices` the model answers after `prompt` (token ids of a fully rendered prompt).
pub fn choose(
    model: &TextModel,
    prompt: &[u32],
    choices: &[String],
    scores: bool,
    adapter: Option<&LoraAdapter>,
) -> Result<Choice> {
    validate(choices)?;
    let context = model.llama.config.max_position_embeddings;
    let seqs = tokenize(model, choices)?;
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
    if prompt.len() + longest >= context {
        return Err(Error::PromptTooLong { tokens: prompt.len() + longest, context });
    }
    let (logits, mut cache) = crate::infer::generation::prefill(model, prompt, adapter)?;
    let (index, probs, steps) = if scores {
        let (logp, steps) = log_probs(model, adapter, &seqs, logits, &mut cache)?;
        let max = logp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = logp.iter().map(|l| (l - max).exp()).sum();
        let probs: Vec<f64> = logp.iter().map(|l| (l - max).exp() / total).collect();
        // Ties go to the first choice given.
        let best = (0..probs.len()).fold(0, |b, i| if probs[i] > probs[b] { i } else { b });
        (best, Some(probs), steps)
    } else {
        let (best, steps) = greedy(model, adapter, &seqs, logits, &mut cache)?;
        (best, None, steps)
    };
    Ok(Choice { index, text: choices[index].clone(), scores: probs, steps, prompt_tokens: prompt.len() })
}

/// Follows the highest-logit token among those that continue a still-possible choice.
fn greedy(
    model: &TextModel,
    adapter: Option<&LoraAdapter>,
    seqs: &[Vec<u32>],
    mut logits: Tensor,
    cache: &mut KvCache,
) -> Result<(usize, usize)> {
    let mut alive: Vec<usize> = (0..seqs.len()).collect();
    let (mut steps, mut pos) = (0, 0);
    loop {
        if alive.len() == 1 {
            return Ok((alive[0], steps));
        }
        let values = to_vec(&logits)?;
        // Distinct sequences end in EOS, so while two are alive both have a token at `pos`.
        let best = alive.iter().map(|&c| seqs[c][pos]).fold(None, |b: Option<u32>, t| match b {
            Some(b) if values[b as usize] >= values[t as usize] => Some(b),
            _ => Some(t),
        });
        let token = best.expect("at least two alive");
        alive.retain(|&c| seqs[c][pos] == token);
        if alive.len() > 1 {
            crate::interrupt::check()?;
            logits = model.llama.forward_with(&[token], cache, adapter)?;
            steps += 1;
        }
        pos += 1;
    }
}

/// The model's log-probability of saying each of `seqs` (token ids, none empty) next, where `logits`
/// are the next token's logits after the positions held in `cache`; and the forward passes that took.
/// Choices that share their first tokens share those passes. `cache` grows by one branch at a time
/// and ends as it started, so memory stays that of the prompt plus the longest choice.
pub fn log_probs(
    model: &TextModel,
    adapter: Option<&LoraAdapter>,
    seqs: &[Vec<u32>],
    logits: Tensor,
    cache: &mut KvCache,
) -> Result<(Vec<f64>, usize)> {
    if seqs.iter().any(Vec::is_empty) {
        return Err(Error::InvalidInput("a choice has no tokens".into()));
    }
    let mut logp = vec![f64::NEG_INFINITY; seqs.len()];
    let all: Vec<usize> = (0..seqs.len()).collect();
    let mut steps = 0;
    score_subtree(model, adapter, seqs, &all, 0, logits, cache, 0.0, &mut logp, &mut steps)?;
    Ok((logp, steps))
}

/// Adds the log-probability of every choice in `group` (which share their first `pos` tokens and
/// whose next-token logits are `logits`) to `logp`. Depth first through one shared `cache`: each
/// branch appends its token, and the cache is cut back before the next (a copy per branch would hold
/// one cache per position of a long choice at once: quadratic in its length).
#[allow(clippy::too_many_arguments)]
fn score_subtree(
    model: &TextModel,
    adapter: Option<&LoraAdapter>,
    seqs: &[Vec<u32>],
    group: &[usize],
    pos: usize,
    logits: Tensor,
    cache: &mut KvCache,
    prefix: f64,
    logp: &mut [f64],
    steps: &mut usize,
) -> Result<()> {
    let mut by_token: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for &c in group {
        by_token.entry(seqs[c][pos]).or_default().push(c);
    }
    // The log-probabilities this level needs, so the vocabulary-sized logits are freed before the
    // recursion (one set per level of a long choice would add up).
    let branches: Vec<(u32, f64, Vec<usize>)> = {
        let values = to_vec(&logits)?;
        drop(logits);
        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_total = max + values.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        by_token.into_iter().map(|(t, members)| (t, prefix + values[t as usize] as f64 - log_total, members)).collect()
    };
    let start = cache.len();
    for (token, lp, members) in branches {
        let (done, more): (Vec<usize>, Vec<usize>) = members.into_iter().partition(|&c| pos + 1 == seqs[c].len());
        for c in done {
            logp[c] = lp;
        }
        if !more.is_empty() {
            crate::interrupt::check()?;
            let next = model.llama.forward_with(&[token], cache, adapter)?;
            *steps += 1;
            score_subtree(model, adapter, seqs, &more, pos + 1, next, cache, lp, logp, steps)?;
            cache.truncate(start);
        }
    }
    Ok(())
}

fn to_vec(logits: &Tensor) -> Result<Vec<f32>> {
    Ok(logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}
