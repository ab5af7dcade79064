//! Llama-family decoder (Llama 2/3, SmolLM, Mistral-style GQA) loaded from GGUF, split as candle
//! splits its models: `config.rs` (the checkpoint's hyper-parameters), `weights.rs` (where weights come
//! from and how they are held), `layers.rs` (linear layers, norms, blocks), this file (the model and
//! its loading), `infer.rs` (the inference forward over the KV cache), `train.rs` (the training forward
//! through ops with a backward) and `train_step.rs` (the same step's forward and backward by hand), all
//! three the CPU path; `device_path.rs` is the forward and training forward of a GPU (candle's ops
//! only, on any device).
//!
//! Field names follow the GGUF checkpoint's tensor names (`blk.N.attn_q`, `ffn_gate`, ...), so the
//! loader reads like the file. Linear layers go through [`Linear`], the one place where LoRA adapters
//! and a training path attach. The KV cache lives outside the weights ([`KvCache`]) so one loaded
//! model can serve any number of sequences. A model on a GPU holds its weights dense (bf16, or f32)
//! and runs the device path; on the CPU the tests run the same path against the CPU one.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;
use crate::formats::prepared::PreparedWeights;
pub use crate::infer::kv_cache::KvCache;
use crate::kernels;
use crate::lora::{LoraAdapter, LoraPair, Target};
pub use crate::train::dropout::Dropout;
pub use crate::train::packed_batch::PackedBatch;

mod config;
mod device_path;
mod infer;
mod layers;
mod train;
mod train_step;
mod weights;

pub use config::Config;
use layers::{Block, Linear, RmsNorm, Weights};
pub use train_step::StepGradients;
use weights::{Embedding, HfWeights, Weight};
pub use weights::{WeightFormat, WeightSource};

pub struct Llama {
    pub config: Config,
    token_embd: Embedding,
    blocks: Vec<Block>,
    output_norm: RmsNorm,
    output: Linear,
    rope: Rope,
    device: Device,
    /// Runs `device_path.rs` instead of the CPU path: on a GPU, and for the tests on the CPU.
    device_path: bool,
}

impl Llama {
    pub fn from_gguf(g: &mut GgufFile, format: WeightFormat, device: &Device) -> Result<Self> {
        Self::from_gguf_prepared(g, format, device, None)
    }

    /// [`Llama::from_gguf`] taking the linear weights that `prepared` holds from it (mapped, shared
    /// with every process that maps the same file) instead of reading and re-laying them out.
    pub fn from_gguf_prepared(
        g: &mut GgufFile,
        format: WeightFormat,
        device: &Device,
        prepared: Option<&mut PreparedWeights>,
    ) -> Result<Self> {
        let config = Config::from_gguf(g)?;
        Self::load_prepared(config, g, format, device, prepared)
    }

    /// A Hugging Face checkpoint directory: `config.json` + safetensors.
    pub fn from_hf_dir(dir: &std::path::Path, format: WeightFormat, device: &Device) -> Result<Self> {
        let config = Config::from_hf_json(&std::fs::read_to_string(dir.join("config.json"))?)?;
        Self::load(config, &mut HfWeights::open(dir, &Device::Cpu)?, format, device)
    }

    pub fn load(config: Config, src: &mut dyn WeightSource, format: WeightFormat, device: &Device) -> Result<Self> {
        Self::load_prepared(config, src, format, device, None)
    }

    fn load_prepared(
        config: Config,
        src: &mut dyn WeightSource,
        format: WeightFormat,
        device: &Device,
        mut prepared: Option<&mut PreparedWeights>,
    ) -> Result<Self> {
        let device_path = !device.is_cpu() || format == WeightFormat::Bf16;
        if !device.is_cpu() && !matches!(format, WeightFormat::Bf16 | WeightFormat::F32) {
            return Err(Error::InvalidInput(format!(
                "a model on {} holds its weights as bf16 or f32, not {format:?}",
                crate::device::device_name(device)
            )));
        }
        // Checkpoints are read on the host (GGUF blocks are dequantized there) and what the model keeps
        // is moved to its device.
        let host = &Device::Cpu;
        let eps = config.rms_norm_eps as f32;
        let norm = |src: &mut dyn WeightSource, name: &str| -> Result<RmsNorm> {
            let weight = src.weight(name, host)?.dense(host)?;
            let values = weight.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            Ok(RmsNorm { values, weight: weight.to_device(device)?, eps })
        };
        let output_norm = norm(src, "output_norm.weight")?;
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let mut linear = |src: &mut dyn WeightSource, name: &str| -> Result<Linear> {
                let weight_name = format!("blk.{i}.{name}.weight");
                let bias_name = format!("blk.{i}.{name}.bias");
                let bias = if config.attention_bias && src.has(&bias_name) {
                    Some(src.weight(&bias_name, host)?.dense(host)?.to_device(device)?)
                } else {
                    None
                };
                if let Some(q) = take_prepared(&mut prepared, src, &weight_name) {
                    return Ok(Linear::from_quant(Arc::new(q), bias));
                }
                Linear::new(src.weight(&weight_name, host)?, bias, format, device)
            };
            blocks.push(Block {
                attn_q: linear(src, "attn_q")?,
                attn_k: linear(src, "attn_k")?,
                attn_v: linear(src, "attn_v")?,
                attn_output: linear(src, "attn_output")?,
                ffn_gate: linear(src, "ffn_gate")?,
                ffn_up: linear(src, "ffn_up")?,
                ffn_down: linear(src, "ffn_down")?,
                attn_norm: norm(src, &format!("blk.{i}.attn_norm.weight"))?,
                ffn_norm: norm(src, &format!("blk.{i}.ffn_norm.weight"))?,
                stacked: None,
            });
            if format == WeightFormat::F32 && device.is_cpu() {
                let b = blocks.last_mut().expect("just pushed");
                let qkv = Linear::stacked([&mut b.attn_q, &mut b.attn_k, &mut b.attn_v])?;
                let gate_up = Linear::stacked([&mut b.ffn_gate, &mut b.ffn_up])?;
                b.stacked = qkv.zip(gate_up);
            }
        }
        let prepared_head = take_prepared(&mut prepared, src, head_name(&config)).map(Arc::new);
        let (token_embd, output) = match prepared_head {
            // A tied head from the prepared file: lookups read its rows, as below.
            Some(q) if config.tie_word_embeddings && format == WeightFormat::Quantized => {
                (Embedding::Rows(q.clone()), Linear::from_quant(q, None))
            }
            Some(q) => {
                (Embedding::Dense(src.weight("token_embd.weight", host)?.dense(host)?), Linear::from_quant(q, None))
            }
            None => Self::load_head(&config, src, format, device)?,
        };
        let rope = Rope::new(&config);
        Ok(Self { config, token_embd, blocks, output_norm, output, rope, device: device.clone(), device_path })
    }

    /// The token embedding and the output head, read from the checkpoint.
    fn load_head(
        config: &Config,
        src: &mut dyn WeightSource,
        format: WeightFormat,
        device: &Device,
    ) -> Result<(Embedding, Linear)> {
        let host = &Device::Cpu;
        let token_embd_w = src.weight("token_embd.weight", host)?;
        Ok(match (token_embd_w, format, config.tie_word_embeddings) {
            // Generating reads the whole head for every token: its quantized form is the fast one.
            (Weight::Quantized(q), WeightFormat::Quantized | WeightFormat::Q8_0, true) => {
                let dense = q.dequantize(host)?;
                let head = Linear::new(Weight::Quantized(q), None, format, device)?;
                match &head.weight {
                    // Lookups read the head's own blocks: exact for the file's Q4_1/Q8_0.
                    Weights::Quant(w) if format == WeightFormat::Quantized => (Embedding::Rows(w.clone()), head),
                    _ => (Embedding::Dense(dense), head),
                }
            }
            (w, _, true) => {
                // Tied and dense (training, or a dense checkpoint): the head is the embedding table itself.
                let dense = w.dense(host)?.to_device(device)?;
                let head = match format {
                    WeightFormat::F32 => Linear::from_parts(QMatMul::Tensor(dense.clone()), None),
                    _ => Linear::new(Weight::Dense(dense.clone()), None, format, device)?,
                };
                (Embedding::Dense(dense), head)
            }
            (w, _, false) => (
                Embedding::Dense(w.dense(host)?.to_device(device)?),
                Linear::new(src.weight("output.weight", host)?, None, format, device)?,
            ),
        })
    }

    /// The linear weights held in the kernels' layout, by GGUF name: what a prepared-weights file
    /// holds (`formats/prepared.rs`).
    pub fn quant_weights(&self) -> Vec<(String, &kernels::QuantWeight)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            for (name, l) in [
                ("attn_q", &b.attn_q),
                ("attn_k", &b.attn_k),
                ("attn_v", &b.attn_v),
                ("attn_output", &b.attn_output),
                ("ffn_gate", &b.ffn_gate),
                ("ffn_up", &b.ffn_up),
                ("ffn_down", &b.ffn_down),
            ] {
                if let Weights::Quant(w) = &l.weight {
                    out.push((format!("blk.{i}.{name}.weight"), &**w));
                }
            }
        }
        if let Weights::Quant(w) = &self.output.weight {
            out.push((head_name(&self.config).to_string(), &**w));
        }
        out
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the linear layers' weights as held (quantized ones count as one byte a weight).
    pub fn weight_dtype(&self) -> DType {
        match &self.output.weight {
            Weights::Candle(QMatMul::Tensor(t)) => t.dtype(),
            Weights::Candle(QMatMul::TensorF16(_)) => DType::F16,
            _ => DType::U8,
        }
    }

    /// Whether this model runs the device path (`device_path.rs`).
    pub fn uses_device_path(&self) -> bool {
        self.device_path
    }

    /// Runs the device path from now on, on this model's own device: what a GPU runs, run where the
    /// weights are (the tests run it on the CPU beside the CPU path). Needs dense weights (`F32`, `Bf16`).
    pub fn use_device_path(&mut self) -> Result<()> {
        let dense = |l: &Linear| l.dense().is_ok();
        if !dense(&self.output) || self.blocks.iter().any(|b| !b.linears().into_iter().all(dense)) {
            return Err(Error::InvalidInput("the device path needs a model loaded with f32 or bf16 weights".into()));
        }
        self.device_path = true;
        Ok(())
    }

    /// A private copy with the adapter merged into its weights (`W + scale B A`, in f32) and no adapter
    /// cost per token. Layers the adapter does not touch keep sharing the original's weights.
    /// Used to measure merged against unmerged serving (bench_generate); serving keeps adapters unmerged.
    pub fn merged(&self, adapter: &LoraAdapter) -> Result<Self> {
        let scale = adapter.config.scale();
        let merge = |l: &Linear, pair: Option<&LoraPair>| -> Result<Linear> {
            let Some(p) = pair else { return Ok(l.clone()) };
            let w = match &l.weight {
                Weights::Candle(QMatMul::QTensor(q)) => q.dequantize(&self.device)?,
                Weights::Candle(QMatMul::Tensor(t)) => t.to_dtype(DType::F32)?,
                Weights::Candle(QMatMul::TensorF16(t)) => t.to_dtype(DType::F32)?,
                Weights::Quant(q) => Tensor::from_vec(q.dequantize(), (q.n(), q.k()), &self.device)?,
            };
            let w = (w + (p.b.matmul(&p.a)? * scale)?)?;
            Ok(Linear::from_parts(QMatMul::Tensor(w), l.bias.clone()))
        };
        let blocks = self
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let g = |t| adapter.get(i, t);
                Ok(Block {
                    attn_q: merge(&b.attn_q, g(Target::Q))?,
                    attn_k: merge(&b.attn_k, g(Target::K))?,
                    attn_v: merge(&b.attn_v, g(Target::V))?,
                    attn_output: merge(&b.attn_output, g(Target::O))?,
                    ffn_gate: merge(&b.ffn_gate, g(Target::Gate))?,
                    ffn_up: merge(&b.ffn_up, g(Target::Up))?,
                    ffn_down: merge(&b.ffn_down, g(Target::Down))?,
                    attn_norm: b.attn_norm.clone(),
                    ffn_norm: b.ffn_norm.clone(),
                    stacked: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: self.config.clone(),
            token_embd: self.token_embd.clone(),
            blocks,
            output_norm: self.output_norm.clone(),
            output: self.output.clone(),
            rope: self.rope.clone(),
            device: self.device.clone(),
            device_path: self.device_path,
        })
    }
}

/// The GGUF name of the output head's weight: the embedding table itself when they are tied.
fn head_name(c: &Config) -> &'static str {
    if c.tie_word_embeddings {
        "token_embd.weight"
    } else {
        "output.weight"
    }
}

/// The weight `name` from `prepared` when it holds it with the checkpoint's shape.
fn take_prepared(
    prepared: &mut Option<&mut PreparedWeights>,
    src: &dyn WeightSource,
    name: &str,
) -> Option<kernels::QuantWeight> {
    let dims = src.dims(name)?;
    let [n, k] = dims.as_slice() else { return None };
    prepared.as_deref_mut()?.take(name, *n, *k)
}

/// The rotary embedding: cos/sin of position x inverse frequency, computed for the positions a forward
/// runs (a table over the whole context would cost each session 2 MB for SmolLM2's 8192 positions,
/// more than the computing). f32 as a table made with candle's ops was: `(p as f32 * f).cos()`.
#[derive(Debug, Clone)]
pub(super) struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    fn new(c: &Config) -> Self {
        let theta = c.rope_theta as f32;
        Self { inv_freq: (0..c.head_dim).step_by(2).map(|i| 1.0 / theta.powf(i as f32 / c.head_dim as f32)).collect() }
    }

    /// cos and sin for positions `start..start + len`, each `(len, head_dim / 2)` row-major.
    pub(super) fn rows(&self, start: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
        let angles = (start..start + len).flat_map(|p| self.inv_freq.iter().map(move |f| p as f32 * f));
        angles.map(|a| (a.cos(), a.sin())).unzip()
    }
}
