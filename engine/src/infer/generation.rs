//! Turning a prompt into a completion: options, sampling, stop conditions.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lora::LoraAdapter;
use candle_core::Tensor;

use crate::infer::sampling::Sampler;
use crate::infer::structured::ResponseFormat;
use crate::models::llama::KvCache;
use crate::text_model::TextModel;

/// Completion options; the JSON keys of `complete(..., options)`. Unknown keys are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateOptions {
    /// Upper bound on generated tokens.
    pub max_tokens: usize,
    /// 0 means greedy (argmax), the default: classification should be deterministic.
    pub temperature: f64,
    /// Nucleus sampling; only used when temperature > 0.
    pub top_p: Option<f64>,
    /// Seed of the sampler; the same seed, prompt and options give the same output.
    pub seed: u64,
    /// Generation ends before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// The reply always matches this JSON schema or regex (see [`crate::infer::structured`]).
    pub response_format: Option<ResponseFormat>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_tokens: 256, temperature: 0.0, top_p: None, seed: 42, stop: Vec::new(), response_format: None }
    }
}

impl GenerateOptions {
    pub fn validate(&self) -> Result<()> {
        if self.max_tokens == 0 {
            return Err(Error::InvalidInput("max_tokens must be at least 1".into()));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(Error::InvalidInput(format!("temperature must be between 0 and 2, got {}", self.temperature)));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::InvalidInput(format!("top_p must be in (0, 1], got {p}")));
            }
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err(Error::InvalidInput("stop strings must not be empty".into()));
        }
        if self.response_format.is_some() && !self.stop.is_empty() {
            // A cut would leave an incomplete JSON value; the format itself says where the reply ends.
            return Err(Error::InvalidInput("stop does not apply with response_format".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The model ended its turn or a stop string was reached.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub finish_reason: FinishReason,
}

/// Prompts longer than this are run in pieces of this many tokens (each extending the cache), so
/// that a cancel is seen between pieces: on 2 cores a 256-token piece of the 135M model takes about
/// half a second, where a whole 2,000-token prompt took seconds that no cancel could cut short.
pub const PREFILL_CHUNK: usize = 256;

/// Runs `prompt` (all but what the model's [`PrefixCache`](crate::infer::prefix_cache::PrefixCache) already
/// holds of it); returns the next token's logits and the keys and values of the whole prompt.
pub fn prefill(model: &TextModel, prompt: &[u32], adapter: Option<&LoraAdapter>) -> Result<(Tensor, KvCache)> {
    crate::interrupt::check()?;
    let mut cache = model.prefix.start(&model.llama.config, prompt, adapter);
    let mut rest = &prompt[cache.len()..];
    while rest.len() > PREFILL_CHUNK {
        model.llama.forward_with(&rest[..PREFILL_CHUNK], &mut cache, adapter)?;
        crate::interrupt::check()?;
        rest = &rest[PREFILL_CHUNK..];
    }
    let logits = model.llama.forward_with(rest, &mut cache, adapter)?;
    model.prefix.keep(prompt, &cache, adapter);
    Ok((logits, cache))
}

/// Generates after `prompt` (token ids of a fully rendered prompt).
pub fn generate(model: &TextModel, prompt: &[u32], opts: &GenerateOptions) -> Result<Generation> {
    generate_with(model, prompt, opts, None)
}

/// [`generate`] with a LoRA adapter applied over the model's base weights.
pub fn generate_with(
    model: &TextModel,
    prompt: &[u32],
    opts: &GenerateOptions,
    adapter: Option<&LoraAdapter>,
) -> Result<Generation> {
    let (mut seq, logits) = Sequence::start(model, prompt, opts, adapter)?;
    let mut logits = logits.to_vec1::<f32>()?;
    while let Some(next) = seq.step(model, logits)? {
        crate::interrupt::check()?;
        logits = model.llama.forward_with(&[next], &mut seq.cache, adapter)?.to_vec1::<f32>()?;
    }
    seq.finish(model)
}

/// Sequences decoded together at most (rows of one weight pass); more prompts are run in waves.
pub const MAX_BATCH: usize = 64;

/// [`generate_with`] for several prompts at once (batched decoding): each prompt is run on its own
/// (through the prefix cache), then every unfinished sequence gets its next token from one shared
/// forward pass ([`Llama::forward_batch`](crate::models::llama::Llama::forward_batch)). Each
/// sequence keeps its own sampler (same seed, same text as alone), constraint and stop strings;
/// one prompt's error (too long, say) is its own result and does not stop the others. The outputs
/// equal [`generate_with`]'s up to float rounding: a row's matmul sums the same products whatever
/// the other rows (the kernels work row by row), so greedy text is the same.
pub fn generate_batch(
    model: &TextModel,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    adapter: Option<&LoraAdapter>,
) -> Result<Vec<Result<Generation>>> {
    let mut out: Vec<Option<Result<Generation>>> = (0..prompts.len()).map(|_| None).collect();
    for wave in (0..prompts.len()).collect::<Vec<_>>().chunks(MAX_BATCH) {
        // (row, sequence, its next token)
        let mut live: Vec<(usize, Sequence, u32)> = Vec::new();
        for &row in wave {
            crate::interrupt::check()?;
            let started = Sequence::start(model, &prompts[row], opts, adapter).and_then(|(mut seq, logits)| {
                let next = seq.step(model, logits.to_vec1::<f32>()?)?;
                Ok((seq, next))
            });
            match started {
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                Err(e) => out[row] = Some(Err(e)),
                Ok((seq, None)) => out[row] = Some(seq.finish(model)),
                Ok((seq, Some(next))) => live.push((row, seq, next)),
            }
        }
        while !live.is_empty() {
            crate::interrupt::check()?;
            let ids: Vec<u32> = live.iter().map(|l| l.2).collect();
            let mut caches: Vec<&mut KvCache> = live.iter_mut().map(|l| &mut l.1.cache).collect();
            let logits = model.llama.forward_batch(&ids, &mut caches, adapter)?;
            let mut still = Vec::with_capacity(live.len());
            for ((row, mut seq, _), logits) in live.into_iter().zip(logits) {
                match seq.step(model, logits) {
                    Err(e) => out[row] = Some(Err(e)),
                    Ok(None) => out[row] = Some(seq.finish(model)),
                    Ok(Some(next)) => still.push((row, seq, next)),
                }
            }
            live = still;
        }
    }
    Ok(out.into_iter().map(|r| r.expect("every row ends with a result")).collect())
}

/// One sequence being generated: what [`generate_with`] and [`generate_batch`] share.
struct Sequence<'o> {
    opts: &'o GenerateOptions,
    sampler: Sampler,
    constraint: Option<crate::infer::structured::Constraint>,
    cache: KvCache,
    prompt_tokens: usize,
    tokens: Vec<u32>,
    /// Set when a stop string cut the text; otherwise the text is decoded once at the end.
    cut_text: Option<String>,
    max_new: usize,
    finish_reason: FinishReason,
}

impl<'o> Sequence<'o> {
    /// Checks the options, compiles the response format (a bad schema fails before the prompt runs)
    /// and runs the prompt; returns the first token's logits.
    fn start(
        model: &TextModel,
        prompt: &[u32],
        opts: &'o GenerateOptions,
        adapter: Option<&LoraAdapter>,
    ) -> Result<(Self, Tensor)> {
        opts.validate()?;
        let context = model.llama.config.max_position_embeddings;
        if prompt.len() >= context {
            return Err(Error::PromptTooLong { tokens: prompt.len(), context });
        }
        let constraint = match &opts.response_format {
            Some(format) => Some(model.structured()?.matcher(format)?),
            None => None,
        };
        let (logits, cache) = prefill(model, prompt, adapter)?;
        let seq = Sequence {
            opts,
            sampler: Sampler::new(opts.seed, opts.temperature, opts.top_p),
            constraint,
            cache,
            prompt_tokens: prompt.len(),
            tokens: Vec::new(),
            cut_text: None,
            max_new: opts.max_tokens.min(context - prompt.len()),
            finish_reason: FinishReason::Length,
        };
        Ok((seq, logits))
    }

    /// Picks the next token from `logits`: `Some(token)` to run it and go on, `None` when the
    /// sequence has ended (end of turn, a stop string, the format complete, or `max_tokens`).
    fn step(&mut self, model: &TextModel, logits: Vec<f32>) -> Result<Option<u32>> {
        if self.tokens.len() >= self.max_new {
            return Ok(None);
        }
        let next = match &mut self.constraint {
            None => self.sampler.sample(logits, None)?,
            Some(c) => self.sampler.sample(logits, Some(&c.mask()?))?,
        };
        if model.tokenizer.is_stop(next) {
            self.finish_reason = FinishReason::Stop;
            return Ok(None);
        }
        self.tokens.push(next);
        if let Some(c) = &mut self.constraint {
            c.consume(next)?;
            if c.is_finished() {
                self.finish_reason = FinishReason::Stop;
                return Ok(None);
            }
        }
        if !self.opts.stop.is_empty() {
            let mut text = model.tokenizer.decode(&self.tokens)?;
            if let Some(cut) = self.opts.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(cut);
                self.cut_text = Some(text);
                self.finish_reason = FinishReason::Stop;
                return Ok(None);
            }
        }
        Ok((self.tokens.len() < self.max_new).then_some(next))
    }

    fn finish(self, model: &TextModel) -> Result<Generation> {
        if self.constraint.is_some() && self.finish_reason == FinishReason::Length {
            // Half a JSON value is no reply: say what to change rather than return text that won't parse.
            let partial = model.tokenizer.decode(&self.tokens)?;
            let shown: String = partial.chars().take(120).collect();
            let more = if shown.len() < partial.len() { "..." } else { "" };
            return Err(Error::ReplyIncomplete { max_tokens: self.tokens.len(), partial: format!("{shown}{more}") });
        }
        let text = match self.cut_text {
            Some(t) => t,
            None => model.tokenizer.decode(&self.tokens)?,
        };
        Ok(Generation {
            text,
            tokens: self.tokens,
            prompt_tokens: self.prompt_tokens,
            finish_reason: self.finish_reason,
        })
    }
}
