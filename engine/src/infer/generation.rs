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
    opts.validate()?;
    let context = model.llama.config.max_position_embeddings;
    if prompt.len() >= context {
        return Err(Error::PromptTooLong { tokens: prompt.len(), context });
    }
    let mut sampler = Sampler::new(opts.seed, opts.temperature, opts.top_p);
    // Compiled before the prompt runs: a bad schema fails at once.
    let mut constraint = match &opts.response_format {
        Some(format) => Some(model.structured()?.matcher(format)?),
        None => None,
    };
    let (mut logits, mut cache) = prefill(model, prompt, adapter)?;
    let mut tokens = Vec::new();
    // Set when a stop string cut the text; otherwise the text is decoded once at the end.
    let mut cut_text = None;
    let max_new = opts.max_tokens.min(context - prompt.len());
    let mut finish_reason = FinishReason::Length;
    while tokens.len() < max_new {
        let next = match &mut constraint {
            None => sampler.sample(&logits, None)?,
            Some(c) => sampler.sample(&logits, Some(&c.mask()?))?,
        };
        if model.tokenizer.is_stop(next) {
            finish_reason = FinishReason::Stop;
            break;
        }
        tokens.push(next);
        if let Some(c) = &mut constraint {
            c.consume(next)?;
            if c.is_finished() {
                finish_reason = FinishReason::Stop;
                break;
            }
        }
        if !opts.stop.is_empty() {
            let mut text = model.tokenizer.decode(&tokens)?;
            if let Some(cut) = opts.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(cut);
                cut_text = Some(text);
                finish_reason = FinishReason::Stop;
                break;
            }
        }
        if tokens.len() == max_new {
            break;
        }
        crate::interrupt::check()?;
        logits = model.llama.forward_with(&[next], &mut cache, adapter)?;
    }
    if constraint.is_some() && finish_reason == FinishReason::Length {
        // Half a JSON value is no reply: say what to change rather than return text that won't parse.
        let partial = model.tokenizer.decode(&tokens)?;
        let shown: String = partial.chars().take(120).collect();
        let more = if shown.len() < partial.len() { "..." } else { "" };
        return Err(Error::ReplyIncomplete { max_tokens: tokens.len(), partial: format!("{shown}{more}") });
    }
    let text = match cut_text {
        Some(t) => t,
        None => model.tokenizer.decode(&tokens)?,
    };
    Ok(Generation { text, tokens, prompt_tokens: prompt.len(), finish_reason })
}
