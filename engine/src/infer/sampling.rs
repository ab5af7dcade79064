//! Picking the next token from logits: argmax, or seeded sampling with temperature and nucleus (top-p).
//!
//! Written here rather than taken from candle-transformers' `LogitsProcessor`: that crate compiles all
//! of candle's model zoo (minutes of every build on two cores) for these few lines.

use rand::{Rng, SeedableRng};

use llguidance::toktrie::SimpleVob;

use crate::error::{Error, Result};

pub struct Sampler {
    rng: rand::rngs::StdRng,
    temperature: f64,
    top_p: f64,
}

impl Sampler {
    /// `temperature <= 0` is greedy; `top_p` in (0, 1] keeps the smallest set of tokens whose
    /// probabilities add up to at least `top_p`.
    pub fn new(seed: u64, temperature: f64, top_p: Option<f64>) -> Self {
        Self { rng: rand::rngs::StdRng::seed_from_u64(seed), temperature, top_p: top_p.unwrap_or(1.0) }
    }

    /// `allowed`, when given, masks the logits first (structured outputs): only its tokens can be picked.
    pub fn sample(&mut self, mut logits: Vec<f32>, allowed: Option<&SimpleVob>) -> Result<u32> {
        if let Some(allowed) = allowed {
            if allowed.is_zero() {
                return Err(Error::InvalidInput("the response_format allows no token here".into()));
            }
            for (id, l) in logits.iter_mut().enumerate() {
                if !allowed.is_allowed(id as u32) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        if self.temperature <= 0.0 {
            return Ok(argmax(&logits));
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, (((l - max) as f64) / self.temperature).exp()))
            .collect();
        if self.top_p < 1.0 {
            let total: f64 = probs.iter().map(|p| p.1).sum();
            probs.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut cum = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cum += p.1 / total;
                    cum >= self.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let mut r = self.rng.random::<f64>() * total;
        for &(id, p) in &probs {
            if r < p {
                return Ok(id);
            }
            r -= p;
        }
        Ok(probs.last().map(|p| p.0).unwrap_or(0))
    }
}

/// Index of the largest logit; on a tie the last one, as candle's `LogitsProcessor` does (the greedy
/// reference outputs were checked against it).
pub fn argmax(logits: &[f32]) -> u32 {
    logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap_or(0)
}
