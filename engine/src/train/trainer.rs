//! LoRA fine-tuning: (prompt, completion) examples -> a trained [`LoraAdapter`].
//!
//! Examples are rendered exactly as `complete()` will later see them (prompt as the user turn through
//! the chat template, completion as the assistant's reply ending in EOS) and the loss is taken on the
//! completion tokens only. A batch packs its examples back to back without padding. AdamW with linear
//! warm-up and decay, global-norm clipping, seeded shuffling and initialisation: the same inputs give
//! the same adapter.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::formats::chat_template::Message;
use crate::lora::{LoraAdapter, LoraConfig};
use crate::models::llama::{Dropout, PackedBatch};
use crate::text_model::TextModel;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub prompt: String,
    pub completion: String,
}

impl Example {
    pub fn new(prompt: &str, completion: &str) -> Self {
        Self { prompt: prompt.into(), completion: completion.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    pub learning_rate: f64,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Longer examples are cut to this many tokens (prompt shortened, completion kept).
    pub max_seq_len: usize,
    /// Fraction of all steps spent warming the learning rate up from 0.
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    /// Gradients are scaled down to this global L2 norm when above it (0 = off).
    pub max_grad_norm: f64,
    pub seed: u64,
    pub lora: LoraConfig,
    /// Pack the prompt prefix that a batch's examples share (the instruction every row starts with)
    /// once per batch: the same loss and gradients for less compute (`PackedBatch::push_shared`). Off
    /// to measure what it saves; never with LoRA dropout, whose masks it would share too.
    pub share_prefix: bool,
    /// With an evaluation set, return the adapter of the epoch with the lowest evaluation loss, not the
    /// last one (a later epoch that overfits does not replace a better one).
    pub keep_best: bool,
    /// With an evaluation set, stop once the evaluation loss has not improved for `patience` epochs.
    pub early_stopping: bool,
    /// Epochs without improvement that early stopping waits for.
    pub patience: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            learning_rate: 1e-3,
            batch_size: 8,
            max_seq_len: 512,
            warmup_ratio: 0.1,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 42,
            lora: LoraConfig::default(),
            share_prefix: true,
            keep_best: true,
            early_stopping: false,
            patience: 1,
        }
    }
}

impl TrainConfig {
    /// Optimizer steps of a run over `examples` training examples: one per batch, every epoch.
    pub fn total_steps(&self, examples: usize) -> usize {
        examples.div_ceil(self.batch_size) * self.epochs
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if !(1..=10).contains(&self.epochs) {
            return bad(format!("max_epochs must be between 1 and 10, got {}", self.epochs));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return bad(format!("learning_rate must be in (0, 1], got {}", self.learning_rate));
        }
        if !(1..=512).contains(&self.batch_size) {
            return bad(format!("batch_size must be between 1 and 512, got {}", self.batch_size));
        }
        if !(16..=32768).contains(&self.max_seq_len) {
            return bad(format!("max_seq_len must be between 16 and 32768, got {}", self.max_seq_len));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio)
            || !(0.0..=1.0).contains(&self.weight_decay)
            || self.max_grad_norm < 0.0
        {
            return bad("warmup_ratio must be in [0, 1), weight_decay in [0, 1], max_grad_norm >= 0".into());
        }
        if !(1..=10).contains(&self.patience) {
            return bad(format!("patience must be between 1 and 10, got {}", self.patience));
        }
        self.lora.validate()
    }
}

/// Reported after every optimizer step.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    /// Tokens processed so far (prompt + completion, no padding exists).
    pub tokens: usize,
    pub loss: f64,
    pub learning_rate: f64,
}

/// The caller's view of a run: progress reports and a cancel flag, checked between steps.
pub trait TrainObserver {
    fn progress(&mut self, _p: &Progress) {}
    fn epoch_end(&mut self, _epoch: usize, _train_loss: f64, _eval_loss: Option<f64>) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// Observes nothing.
pub struct NoObserver;
impl TrainObserver for NoObserver {}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TrainReport {
    /// Mean loss per epoch over the training steps (completion tokens).
    pub train_loss: Vec<f64>,
    /// Loss on the evaluation set after each epoch (empty without one).
    pub eval_loss: Vec<f64>,
    pub steps: usize,
    /// The training examples' tokens, every epoch (prompt and completion; no padding exists).
    pub trained_tokens: usize,
    /// Tokens run through the model: `trained_tokens` less the shared prompt prefixes packed once.
    pub computed_tokens: usize,
    /// Completion tokens the loss was taken on.
    pub loss_tokens: usize,
    pub examples: usize,
    /// Examples cut to max_seq_len.
    pub truncated: usize,
    pub cancelled: bool,
    /// The epoch whose adapter was returned (1-based): the one with the lowest evaluation loss under
    /// `keep_best`, else the last one run.
    pub kept_epoch: usize,
    /// Early stopping ended the run before its last epoch.
    pub stopped_early: bool,
    /// Seconds spent training (tokenizing and optimizer steps), without the evaluation passes.
    pub train_seconds: f64,
    /// Seconds spent on the per-epoch evaluation loss.
    pub eval_seconds: f64,
}

impl TrainReport {
    /// The training and evaluation losses of the kept epoch (None where it has none).
    pub fn kept_losses(&self) -> (Option<f64>, Option<f64>) {
        let i = self.kept_epoch.checked_sub(1);
        (i.and_then(|i| self.train_loss.get(i).copied()), i.and_then(|i| self.eval_loss.get(i).copied()))
    }
}

/// An example as token ids: the whole sequence and where its completion starts.
#[derive(Debug, Clone)]
struct Tokenized {
    ids: Vec<u32>,
    completion_start: usize,
}

/// How many tokens of a too-long prompt's end are kept: the template's closing of the user turn and
/// opening of the assistant turn, which the model must see right before answering.
const PROMPT_TAIL: usize = 8;

fn tokenize(model: &TextModel, ex: &Example, max_len: usize) -> Result<(Tokenized, bool)> {
    if ex.completion.is_empty() {
        return Err(Error::InvalidInput("an example has an empty completion".into()));
    }
    let mut prompt = model.chat_prompt(&[Message::user(&ex.prompt)])?;
    let mut completion = model.tokenizer.encode(&ex.completion)?;
    completion.push(model.tokenizer.eos_id);
    let mut truncated = false;
    if prompt.len() + completion.len() > max_len {
        truncated = true;
        if completion.len() + PROMPT_TAIL + 1 > max_len {
            completion.truncate(max_len.saturating_sub(PROMPT_TAIL + 1).max(1));
        }
        let keep = max_len - completion.len();
        if prompt.len() > keep {
            let tail = prompt.split_off(prompt.len() - PROMPT_TAIL.min(keep));
            prompt.truncate(keep - tail.len());
            prompt.extend(tail);
        }
    }
    let completion_start = prompt.len();
    prompt.extend(completion);
    Ok((Tokenized { ids: prompt, completion_start }, truncated))
}

/// An example's token ids as training sees them, where its completion starts, and whether it was cut.
pub fn tokenize_example(model: &TextModel, ex: &Example, max_len: usize) -> Result<(Vec<u32>, usize, bool)> {
    let (t, cut) = tokenize(model, ex, max_len)?;
    Ok((t.ids, t.completion_start, cut))
}

fn pack(examples: &[&Tokenized], share_prefix: bool) -> PackedBatch {
    let mut b = PackedBatch::default();
    if share_prefix {
        b.push_shared(&examples.iter().map(|e| (e.ids.as_slice(), e.completion_start)).collect::<Vec<_>>());
    } else {
        examples.iter().for_each(|e| b.push(&e.ids, e.completion_start));
    }
    b
}

/// Mean cross-entropy of the completion tokens, and how many there were.
fn batch_loss(model: &TextModel, batch: &PackedBatch, adapter: &LoraAdapter, dropout: &mut Dropout) -> Result<Tensor> {
    let logits = model.llama.forward_train(batch, adapter, dropout)?;
    let targets = Tensor::new(batch.targets.as_slice(), logits.device())?;
    Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
}

/// A step's loss and the adapter's gradients: by hand where the model allows it
/// ([`Llama::train_step`](crate::models::llama::Llama::train_step): f32 on the CPU, no dropout), else
/// through candle's autograd. Same arithmetic either way.
fn loss_and_gradients(
    model: &TextModel,
    batch: &PackedBatch,
    adapter: &LoraAdapter,
    dropout: &mut Dropout,
) -> Result<(f64, GradStore)> {
    if let Some(step) = model.llama.train_step(batch, adapter, dropout)? {
        return Ok((step.loss as f64, gradient_store(&step.grads)?));
    }
    let loss = batch_loss(model, batch, adapter, dropout)?;
    let grads = loss.backward()?;
    Ok((loss.to_scalar::<f32>()? as f64, grads))
}

/// `grads` as the `GradStore` candle's optimizer takes (it has no public constructor): the backward
/// of `sum(cat(t ⊙ g))`, whose gradient for each tensor `t` is exactly its `g` (times ones). One
/// `cat` rather than a chain of adds keeps the graph two nodes deep.
pub fn gradient_store(grads: &[(Tensor, Tensor)]) -> Result<GradStore> {
    if grads.is_empty() {
        return Err(Error::InvalidInput("the adapter has no layers to train".into()));
    }
    let terms = grads.iter().map(|(t, g)| (t * g)?.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&terms, 0)?.sum_all()?.backward()?)
}

/// Loss over `examples` with the adapter's current values, no gradients.
pub fn evaluate_loss(
    model: &TextModel,
    adapter: &LoraAdapter,
    examples: &[Example],
    config: &TrainConfig,
) -> Result<f64> {
    let adapter = adapter.detached();
    let toks: Vec<Tokenized> =
        examples.iter().map(|e| tokenize(model, e, config.max_seq_len).map(|t| t.0)).collect::<Result<_>>()?;
    let mut dropout = Dropout::new(0.0, 0);
    let (mut sum, mut count) = (0.0, 0usize);
    for chunk in toks.chunks(config.batch_size) {
        let refs: Vec<&Tokenized> = chunk.iter().collect();
        let batch = pack(&refs, config.share_prefix);
        let n = batch.targets.len();
        sum += batch_loss(model, &batch, &adapter, &mut dropout)?.to_scalar::<f32>()? as f64 * n as f64;
        count += n;
    }
    Ok(if count == 0 { f64::NAN } else { sum / count as f64 })
}

/// Fine-tunes a LoRA adapter on `train`; evaluates on `eval` after each epoch.
/// The model must be loaded with f32 weights. Runs on the rayon pool it is called in.
pub fn train(
    model: &TextModel,
    train: &[Example],
    eval: &[Example],
    config: &TrainConfig,
    observer: &mut dyn TrainObserver,
) -> Result<(LoraAdapter, TrainReport)> {
    config.validate()?;
    if train.is_empty() {
        return Err(Error::InvalidInput("no training examples".into()));
    }
    let started = std::time::Instant::now();
    let mut report = TrainReport { examples: train.len(), ..Default::default() };
    let mut toks = Vec::with_capacity(train.len());
    for e in train {
        let (t, cut) = tokenize(model, e, config.max_seq_len)?;
        report.truncated += cut as usize;
        toks.push(t);
    }
    let (adapter, vars) = LoraAdapter::init(&config.lora, &model.llama.config, config.seed, model.llama.device())?;
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW { lr: config.learning_rate, weight_decay: config.weight_decay, ..Default::default() },
    )?;
    let total_steps = config.total_steps(toks.len());
    let warmup = (config.warmup_ratio * total_steps as f64).ceil() as usize;
    let mut dropout = Dropout::new(config.lora.dropout, config.seed ^ 0x5eed);
    let share_prefix = config.share_prefix && config.lora.dropout == 0.0;
    // (evaluation loss, epoch, the adapter then: a copy, since the optimizer updates the variables in place)
    let mut best: Option<(f64, usize, Option<LoraAdapter>)> = None;
    let mut epochs_since_best = 0;
    'epochs: for (epoch, order) in example_orders(toks.len(), config.epochs, config.seed).into_iter().enumerate() {
        let (mut epoch_loss, mut epoch_tokens) = (0.0, 0usize);
        for chunk in order.chunks(config.batch_size) {
            if observer.cancelled() {
                report.cancelled = true;
                break 'epochs;
            }
            let lr = learning_rate(config.learning_rate, report.steps, warmup, total_steps);
            opt.set_learning_rate(lr);
            let refs: Vec<&Tokenized> = chunk.iter().map(|&i| &toks[i]).collect();
            let batch = pack(&refs, share_prefix);
            let (loss, mut grads) = loss_and_gradients(model, &batch, &adapter, &mut dropout)?;
            clip_grad_norm(&mut grads, &vars, config.max_grad_norm)?;
            opt.step(&grads)?;
            if !loss.is_finite() {
                return Err(Error::InvalidInput(format!(
                    "training diverged (loss {loss} at step {}); lower learning_rate",
                    report.steps + 1
                )));
            }
            let n = batch.targets.len();
            epoch_loss += loss * n as f64;
            epoch_tokens += n;
            report.steps += 1;
            report.trained_tokens += refs.iter().map(|t| t.ids.len()).sum::<usize>();
            report.computed_tokens += batch.ids.len();
            report.loss_tokens += n;
            observer.progress(&Progress {
                step: report.steps,
                total_steps,
                epoch: epoch + 1,
                tokens: report.trained_tokens,
                loss,
                learning_rate: lr,
            });
        }
        let train_loss = epoch_loss / epoch_tokens.max(1) as f64;
        report.train_loss.push(train_loss);
        let evaluating = std::time::Instant::now();
        let eval_loss = if eval.is_empty() { None } else { Some(evaluate_loss(model, &adapter, eval, config)?) };
        report.eval_seconds += evaluating.elapsed().as_secs_f64();
        if let Some(l) = eval_loss {
            report.eval_loss.push(l);
            if best.as_ref().is_none_or(|b| l < b.0) {
                let last_epoch = epoch + 1 == config.epochs;
                // The last epoch's adapter is the one returned anyway: no copy needed.
                let snapshot = if config.keep_best && !last_epoch { Some(adapter.snapshot()?) } else { None };
                best = Some((l, epoch + 1, snapshot));
                epochs_since_best = 0;
            } else {
                epochs_since_best += 1;
            }
        }
        observer.epoch_end(epoch + 1, train_loss, eval_loss);
        if config.early_stopping && epochs_since_best >= config.patience && epoch + 1 < config.epochs {
            report.stopped_early = true;
            break;
        }
    }
    report.train_seconds = started.elapsed().as_secs_f64() - report.eval_seconds;
    report.kept_epoch = report.train_loss.len();
    match best {
        Some((_, epoch, Some(snapshot))) if config.keep_best && epoch < report.kept_epoch => {
            report.kept_epoch = epoch;
            Ok((snapshot, report))
        }
        _ => Ok((adapter.detached(), report)),
    }
}

/// The order [`train`] visits `examples` in, one shuffle per epoch, drawn from `seed` (the LoRA
/// initialisation draws from its own generator). Public so a benchmark can give a peer the same order.
pub fn example_orders(examples: usize, epochs: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..examples).collect();
    (0..epochs)
        .map(|_| {
            order.shuffle(&mut rng);
            order.clone()
        })
        .collect()
}

/// Linear warm-up from 0 to `peak`, then linear decay to 0 at the last step (Hugging Face's "linear").
fn learning_rate(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        peak * (step + 1) as f64 / warmup as f64
    } else {
        peak * (total - step) as f64 / (total - warmup).max(1) as f64
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm` (torch's clip_grad_norm_).
fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// Splits off a seeded `fraction` of `examples` (rounded up, at least one when there are two or more)
/// as an evaluation set, for runs given no separate one. Returns (train, eval).
pub fn split_holdout(examples: Vec<Example>, fraction: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let n = examples.len();
    if n < 2 || fraction <= 0.0 {
        return (examples, Vec::new());
    }
    let held = ((n as f64 * fraction).ceil() as usize).clamp(1, n - 1);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 0x401d));
    let mut is_eval = vec![false; n];
    for &i in &order[..held] {
        is_eval[i] = true;
    }
    let (mut train, mut eval) = (Vec::with_capacity(n - held), Vec::with_capacity(held));
    for (e, ev) in examples.into_iter().zip(is_eval) {
        if ev {
            eval.push(e)
        } else {
            train.push(e)
        }
    }
    (train, eval)
}

/// What a training run will hold in memory at its peak, estimated before it starts.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryEstimate {
    pub bytes: u64,
    /// Tokens of the largest possible batch (the `batch_size` longest examples, after truncation).
    pub largest_batch_tokens: usize,
    /// Of those, the tokens run through the model: less the prompt prefix that every example shares,
    /// packed once per batch (`TrainConfig::share_prefix`).
    pub largest_batch_computed_tokens: usize,
    pub longest_example_tokens: usize,
    /// On the device path (a GPU): what the device holds at the peak, by [`estimate_memory`]'s method
    /// for that path; `bytes` is then the worker process's own memory.
    pub device_bytes: Option<u64>,
}

/// Peak resident memory of a process that loads the f32 model and runs [`train`] on these examples
/// (the fine-tuning worker), for the largest batch they can form. Sums what is held at the end of
/// that batch's forward pass, where the step peaks:
///
/// - the f32 weights and, where the CPU has AMX, their bf16 packings (forward and backward: 2 x 2
///   bytes per weight of every matmul, the output head included; made by the first step);
/// - per token computed: what the backward reads. The hand-written step keeps per block its input, the
///   two norms' outputs, the q/k/v, attention, gate/up and activation outputs (`4h + 2hq + 2hk + 3i`
///   values) plus one block's backward buffers; candle's autograd (dropout, biases, GPUs) keeps every
///   op's output and a gradient per graph edge: about `40h + 20i` values per block (6.2 MiB per token
///   measured on SmolLM2-135M, batch 8, dropout 0.1);
/// - the head's logits on the completion tokens (and their gradient);
/// - attention's per-task buffers: scores and their gradient, `(tokens, keys)` for one (sequence,
///   head) on each thread of the pool this is called in;
/// - the adapter: its values, AdamW's two moments, the gradients and the step's copies of them;
/// - 100 MiB for the process itself (code, tokenizer, thread stacks; a worker's own Postgres memory).
///
/// The sum is then raised by 15%, for allocator slack and run-to-run variation: it predicts the
/// measured peaks within a few percent (`engine/examples/memory_estimate.rs`: SmolLM2-135M, batch 8,
/// all seven targets: the quickstart's tickets 2,139 MiB with AMX and 1,561 without;
/// banking77_10intent 1,849 MiB), and the memory guard that uses it needs to err high, not low.
pub fn estimate_memory(model: &TextModel, examples: &[Example], config: &TrainConfig) -> Result<MemoryEstimate> {
    let c = &model.llama.config;
    let mut toks = Vec::with_capacity(examples.len());
    for e in examples {
        crate::interrupt::check()?;
        toks.push(tokenize(model, e, config.max_seq_len)?.0);
    }
    let k = config.batch_size.min(toks.len());
    let top = |mut v: Vec<usize>| -> usize {
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.iter().take(k).sum()
    };
    let batch_tokens = top(toks.iter().map(|t| t.ids.len()).collect());
    let completion_tokens = top(toks.iter().map(|t| t.ids.len() - t.completion_start).collect());
    let longest = toks.iter().map(|t| t.ids.len()).max().unwrap_or(0);
    // Any batch shares at least what all examples share, so this bounds every batch's computed tokens.
    let share_prefix = config.share_prefix && config.lora.dropout == 0.0;
    let shared = if share_prefix && k >= 2 {
        PackedBatch::shared_prefix(&toks.iter().map(|t| (t.ids.as_slice(), t.completion_start)).collect::<Vec<_>>())
    } else {
        0
    };
    let computed = batch_tokens - (k.max(1) - 1) * shared;

    let (h, i, l, vocab) =
        (c.hidden_size as u64, c.intermediate_size as u64, c.num_hidden_layers as u64, c.vocab_size as u64);
    let hq = (c.num_attention_heads * c.head_dim) as u64;
    let hk = (c.num_key_value_heads * c.head_dim) as u64;
    // Weights of the blocks' matmuls and of the output head (a matmul whether tied or not).
    let matmul_params = l * (2 * h * hq + 2 * h * hk + 3 * h * i) + vocab * h;
    let params = matmul_params + if c.tie_word_embeddings { 0 } else { vocab * h };
    let adapter_params: u64 =
        config.lora.targets.iter().map(|t| t.dims(c)).map(|(fan_in, fan_out)| (fan_in + fan_out) as u64).sum::<u64>()
            * config.lora.r as u64
            * l;
    let adapter = adapter_params * 4 * 7;
    if model.llama.uses_device_path() {
        // The device holds the frozen weights in their dtype (the embedding table beside them in f32),
        // what candle's autograd keeps per token (as below), the attention groups' scores and
        // probabilities (`heads x tokens²` per group and layer: `masked_softmax`), the logits and their
        // log-softmax and gradient, the adapter. The process itself holds little: tokenizer, rows.
        let weights = matmul_params * model.llama.weight_dtype().size_in_bytes() as u64 + vocab * h * 4;
        let per_token = l * (40 * h + 20 * i) * 4;
        // A group is one example, or a shared prefix with every example continuing it: the whole batch.
        let group_tokens = ((k * longest * longest) as u64).max((computed as u64).pow(2));
        let attention = l * c.num_attention_heads as u64 * group_tokens * 4 * 2;
        let logits = completion_tokens as u64 * vocab * 4 * 3;
        let sum = weights + per_token * computed as u64 + attention + logits + adapter;
        return Ok(MemoryEstimate {
            bytes: 200 << 20,
            largest_batch_tokens: batch_tokens,
            largest_batch_computed_tokens: computed,
            longest_example_tokens: longest,
            device_bytes: Some(sum + sum * 15 / 100),
        });
    }
    let packed = if crate::kernels::amx::available() { matmul_params * 2 * 2 } else { 0 };
    // The conditions of `Llama::train_step` that a configuration decides (f32 weights are a given).
    let hand_written = config.lora.dropout == 0.0 && !c.attention_bias && model.llama.device().is_cpu();
    let per_token = if hand_written {
        l * (4 * h + 2 * hq + 2 * hk + 3 * i) + (2 * h + 4 * i + 2 * hq + 2 * hk)
    } else {
        l * (40 * h + 20 * i)
    } * 4;
    let logits = completion_tokens as u64 * vocab * 4 * 2;
    let attention = rayon::current_num_threads() as u64 * 3 * (longest as u64).pow(2) * 4;
    let sum = params * 4 + packed + per_token * computed as u64 + logits + attention + adapter + (100 << 20);
    Ok(MemoryEstimate {
        bytes: sum + sum * 15 / 100,
        largest_batch_tokens: batch_tokens,
        largest_batch_computed_tokens: computed,
        longest_example_tokens: longest,
        device_bytes: None,
    })
}
