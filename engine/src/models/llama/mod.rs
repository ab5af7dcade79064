//! Llama-family decoder (Llama 2/3, SmolLM, Mistral-style GQA) loaded from GGUF.
//!
//! Field names follow the GGUF checkpoint's tensor names (`blk.N.attn_q`, `ffn_gate`, ...), so the
//! loader reads like the file. Linear layers go through [`Linear`], the one place where LoRA adapters
//! and a training path attach. The KV cache lives outside the weights ([`KvCache`]) so one loaded
//! model can serve any number of sequences.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use serde::{Deserialize, Serialize};

use crate::attention::{packed_attention, packed_attention_stacked, PackedAttention};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::lora::{LoraAdapter, LoraPair, Target};
use crate::{amx, infer_ops, ops, quant_matmul};
use std::sync::{Arc, OnceLock};

mod train_step;
pub use train_step::StepGradients;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// RoPE rotates adjacent pairs (2i, 2i+1) when true: GGUF stores Llama's q/k rows permuted for it.
    /// Hugging Face checkpoints rotate halves (i, i + d/2) instead.
    pub rope_interleaved: bool,
    /// q/k/v projections carry a bias (Qwen2).
    #[serde(default)]
    pub attention_bias: bool,
}

impl Config {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.str("general.architecture")?;
        if arch != "llama" && arch != "qwen2" {
            return Err(Error::Unsupported(format!(
                "architecture \"{arch}\" (supported: llama (Llama, SmolLM, Mistral) and qwen2)"
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = g.u64(&key("embedding_length"))? as usize;
        let num_attention_heads = g.u64(&key("attention.head_count"))? as usize;
        let num_key_value_heads =
            g.opt_u64(&key("attention.head_count_kv")).unwrap_or(num_attention_heads as u64) as usize;
        let head_dim = hidden_size / num_attention_heads;
        let rope_dim = g.opt_u64(&key("rope.dimension_count")).unwrap_or(head_dim as u64) as usize;
        if rope_dim != head_dim || !num_attention_heads.is_multiple_of(num_key_value_heads) {
            return Err(Error::Unsupported(format!(
                "partial RoPE or uneven GQA (rope dim {rope_dim}, head dim {head_dim}, heads {num_attention_heads}/{num_key_value_heads})"
            )));
        }
        if g.opt_u64(&key("expert_count")).unwrap_or(0) > 1 {
            return Err(Error::Unsupported("mixture-of-experts models".into()));
        }
        let vocab_size = match g.opt_u64(&key("vocab_size")) {
            Some(v) => v as usize,
            None => g.str_array("tokenizer.ggml.tokens")?.len(),
        };
        Ok(Self {
            vocab_size,
            hidden_size,
            intermediate_size: g.u64(&key("feed_forward_length"))? as usize,
            num_hidden_layers: g.u64(&key("block_count"))? as usize,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: g.f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: g.opt_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
            max_position_embeddings: g.opt_u64(&key("context_length")).unwrap_or(2048) as usize,
            tie_word_embeddings: !g.has_tensor("output.weight"),
            // llama.cpp permutes q/k rows of "llama" checkpoints for interleaved RoPE; qwen2 keeps HF's halves.
            rope_interleaved: arch == "llama",
            attention_bias: g.has_tensor("blk.0.attn_q.bias"),
        })
    }

    /// From a Hugging Face `config.json` (Llama, Mistral, Qwen2 and their derivatives).
    pub fn from_hf_json(json: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Hf {
            model_type: String,
            vocab_size: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            head_dim: Option<usize>,
            rms_norm_eps: f64,
            rope_theta: Option<f64>,
            max_position_embeddings: usize,
            #[serde(default)]
            tie_word_embeddings: bool,
            attention_bias: Option<bool>,
            rope_scaling: Option<serde_json::Value>,
        }
        let hf: Hf = serde_json::from_str(json).map_err(|e| Error::InvalidInput(format!("config.json: {e}")))?;
        if !matches!(hf.model_type.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(Error::Unsupported(format!(
                "model_type \"{}\" (supported: llama, mistral, qwen2)",
                hf.model_type
            )));
        }
        if hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(Error::Unsupported("rope_scaling".into()));
        }
        let num_key_value_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
        if !hf.num_attention_heads.is_multiple_of(num_key_value_heads) {
            return Err(Error::Unsupported("uneven grouped-query attention".into()));
        }
        Ok(Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads,
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads),
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta.unwrap_or(10_000.0),
            max_position_embeddings: hf.max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings,
            rope_interleaved: false,
            attention_bias: hf.attention_bias.unwrap_or(hf.model_type == "qwen2"),
        })
    }
}

/// Where weights come from, by their GGUF names (`blk.N.attn_q.weight`, `token_embd.weight`, ...).
pub enum Weight {
    Quantized(QTensor),
    Dense(Tensor),
}

impl Weight {
    fn cols(&self) -> Result<usize> {
        Ok(match self {
            Weight::Quantized(q) => *q.shape().dims().last().unwrap_or(&0),
            Weight::Dense(t) => t.dim(candle_core::D::Minus1)?,
        })
    }

    fn dense(self, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Weight::Quantized(q) => q.dequantize(device)?,
            Weight::Dense(t) => t.to_dtype(DType::F32)?,
        })
    }
}

pub trait WeightSource {
    fn weight(&mut self, name: &str, device: &Device) -> Result<Weight>;
    fn has(&self, name: &str) -> bool;
}

impl WeightSource for GgufFile {
    fn weight(&mut self, name: &str, device: &Device) -> Result<Weight> {
        Ok(Weight::Quantized(self.tensor(name, device)?))
    }
    fn has(&self, name: &str) -> bool {
        self.has_tensor(name)
    }
}

/// Safetensors weights of a Hugging Face checkpoint, looked up by GGUF names.
pub struct HfWeights {
    pub tensors: std::collections::HashMap<String, Tensor>,
}

impl HfWeights {
    /// `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn open(dir: &std::path::Path, device: &Device) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let files: Vec<std::path::PathBuf> = if single.is_file() {
            vec![single]
        } else {
            let index = std::fs::read_to_string(dir.join("model.safetensors.index.json"))?;
            let index: serde_json::Value =
                serde_json::from_str(&index).map_err(|e| Error::InvalidInput(format!("safetensors index: {e}")))?;
            let mut shards: Vec<String> = index["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        };
        let mut tensors = std::collections::HashMap::new();
        for f in files {
            tensors.extend(
                candle_core::safetensors::load(&f, device)
                    .map_err(|e| Error::BadModelFile { path: f.clone(), reason: e.to_string() })?,
            );
        }
        Ok(Self { tensors })
    }

    fn hf_name(gguf: &str) -> String {
        const LAYER: [(&str, &str); 13] = [
            ("attn_norm.weight", "input_layernorm.weight"),
            ("ffn_norm.weight", "post_attention_layernorm.weight"),
            ("attn_q.weight", "self_attn.q_proj.weight"),
            ("attn_k.weight", "self_attn.k_proj.weight"),
            ("attn_v.weight", "self_attn.v_proj.weight"),
            ("attn_q.bias", "self_attn.q_proj.bias"),
            ("attn_k.bias", "self_attn.k_proj.bias"),
            ("attn_v.bias", "self_attn.v_proj.bias"),
            ("attn_output.weight", "self_attn.o_proj.weight"),
            ("ffn_gate.weight", "mlp.gate_proj.weight"),
            ("ffn_up.weight", "mlp.up_proj.weight"),
            ("ffn_down.weight", "mlp.down_proj.weight"),
            ("", ""),
        ];
        match gguf {
            "token_embd.weight" => "model.embed_tokens.weight".into(),
            "output_norm.weight" => "model.norm.weight".into(),
            "output.weight" => "lm_head.weight".into(),
            _ => {
                let rest = gguf.strip_prefix("blk.").unwrap_or(gguf);
                let (layer, name) = rest.split_once('.').unwrap_or(("", rest));
                let hf = LAYER.iter().find(|(g, _)| *g == name).map(|(_, h)| *h).unwrap_or(name);
                format!("model.layers.{layer}.{hf}")
            }
        }
    }
}

impl WeightSource for HfWeights {
    fn weight(&mut self, name: &str, _device: &Device) -> Result<Weight> {
        let hf = Self::hf_name(name);
        self.tensors
            .remove(&hf)
            .map(Weight::Dense)
            .ok_or_else(|| Error::InvalidInput(format!("checkpoint has no tensor {hf}")))
    }
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(&Self::hf_name(name))
    }
}

/// How the weights of linear layers are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WeightFormat {
    /// As stored in the file (Q4_1, Q8_0, ...): least memory; matmuls quantize activations on the fly
    /// (llama.cpp's arithmetic). Q4_1 and Q8_0 run on our int8 kernels (`quant_matmul.rs`: AVX-512
    /// VNNI or AVX2) where the CPU has them.
    #[default]
    Quantized,
    /// Dequantized to f32: about 4x the memory, exact activations, and the path training uses.
    F32,
    /// Requantized to 8 bits per weight (blocks of 32) at load.
    Q8_0,
}

/// Where a linear layer's weight lives and which kernel multiplies by it.
#[derive(Debug, Clone)]
enum Weights {
    Candle(QMatMul),
    /// Blocks laid out for our int8 kernels (`quant_matmul.rs`); shared with the embedding lookup of a tied head.
    Quant(Arc<quant_matmul::QuantWeight>),
}

/// A linear layer `y = x W^T (+ b)`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weights,
    bias: Option<Tensor>,
    /// The f32 weight packed for AMX, made by the first training step that needs it (inference never
    /// does) and shared by clones of the model.
    amx: Arc<OnceLock<Arc<ops::FrozenBf16>>>,
}

impl Linear {
    fn new(w: Weight, bias: Option<Tensor>, format: WeightFormat, device: &Device) -> Result<Self> {
        if format != WeightFormat::F32
            && device.is_cpu()
            && quant_matmul::available()
            && w.cols()? % quant_matmul::BLOCK == 0
        {
            if let Some(q) = quant_weight(&w, format, device)? {
                return Ok(Self { weight: Weights::Quant(Arc::new(q)), bias, amx: Arc::default() });
            }
        }
        let weight = match (format, w) {
            (WeightFormat::Quantized, Weight::Quantized(q)) => QMatMul::from_qtensor(q)?,
            (WeightFormat::Q8_0, Weight::Quantized(q)) if q.dtype() == candle_core::quantized::GgmlDType::Q8_0 => {
                QMatMul::from_qtensor(q)?
            }
            (WeightFormat::Q8_0, w) if w.cols()? % 32 == 0 => {
                QMatMul::from_qtensor(QTensor::quantize(&w.dense(device)?, candle_core::quantized::GgmlDType::Q8_0)?)?
            }
            // Unquantized checkpoints are served in Q8_0 (a quarter of f32's memory, near-lossless).
            (WeightFormat::Quantized, Weight::Dense(t)) if t.dim(1)? % 32 == 0 => QMatMul::from_qtensor(
                QTensor::quantize(&t.to_dtype(DType::F32)?, candle_core::quantized::GgmlDType::Q8_0)?,
            )?,
            (_, w) => QMatMul::Tensor(w.dense(device)?),
        };
        Ok(Self::from_parts(weight, bias))
    }

    fn from_parts(weight: QMatMul, bias: Option<Tensor>) -> Self {
        Self { weight: Weights::Candle(weight), bias, amx: Arc::default() }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weights::Candle(w) => w.forward(x)?,
            Weights::Quant(w) => quant_forward(x, w)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// `W x + scale * B A x`: the adapter's low-rank update applied beside the frozen weight, unmerged,
    /// so one base serves any number of adapters.
    fn forward_lora(&self, x: &Tensor, lora: Option<(&LoraPair, f64)>) -> Result<Tensor> {
        let y = self.forward(x)?;
        match lora {
            None => Ok(y),
            Some((p, scale)) => Ok((y + (x.broadcast_matmul(&p.a.t()?)?.broadcast_matmul(&p.b.t()?)? * scale)?)?),
        }
    }

    /// [`Linear::forward_lora`] on `m` plain rows (the CPU inference path).
    fn forward_rows(&self, x: &[f32], m: usize, lora: Option<(&LoraPair, f64)>) -> Result<Vec<f32>> {
        let y = match &self.weight {
            Weights::Quant(w) => quant_matmul::matmul(x, m, w),
            Weights::Candle(w) => {
                let k = x.len() / m;
                w.forward(&Tensor::from_slice(x, (m, k), &Device::Cpu)?)?.flatten_all()?.to_vec1::<f32>()?
            }
        };
        self.finish_rows(y, x, m, lora)
    }

    /// [`Linear::forward_rows`] of several layers reading the same input (q, k, v; gate, up): on our
    /// int8 kernels in one parallel pass over `x` quantized once.
    fn forward_rows_many<const N: usize>(
        layers: [(&Linear, Option<(&LoraPair, f64)>); N],
        x: &[f32],
        m: usize,
    ) -> Result<[Vec<f32>; N]> {
        let quant: Vec<&quant_matmul::QuantWeight> = layers
            .iter()
            .filter_map(|(l, _)| match &l.weight {
                Weights::Quant(w) => Some(&**w),
                Weights::Candle(_) => None,
            })
            .collect();
        let outs: Vec<Vec<f32>> = if quant.len() == N {
            let ys = quant_matmul::matmul_many(x, m, &quant);
            layers.iter().zip(ys).map(|((l, lora), y)| l.finish_rows(y, x, m, *lora)).collect::<Result<_>>()?
        } else {
            layers.iter().map(|(l, lora)| l.forward_rows(x, m, *lora)).collect::<Result<_>>()?
        };
        Ok(outs.try_into().expect("one output per layer"))
    }

    /// Bias and adapter added to `y = x Wᵀ`.
    fn finish_rows(&self, mut y: Vec<f32>, x: &[f32], m: usize, lora: Option<(&LoraPair, f64)>) -> Result<Vec<f32>> {
        let n = y.len() / m;
        if let Some(b) = &self.bias {
            with_cpu_f32(b, |b| y.chunks_mut(n).for_each(|row| infer_ops::add_in_place(row, b)))?;
        }
        if let Some((p, scale)) = lora {
            let k = x.len() / m;
            if m > 1 {
                // A prompt: two small matmuls.
                let delta =
                    (Tensor::from_slice(x, (m, k), &Device::Cpu)?.matmul(&p.a.t()?)?.matmul(&p.b.t()?)? * scale)?;
                with_cpu_f32(&delta, |d| infer_ops::add_in_place(&mut y, d))?;
            } else {
                // One generated token: y += scale * B (A x) as two short loops, cheaper than two matmul calls.
                with_cpu_f32(&p.a, |a| {
                    with_cpu_f32(&p.b, |b| {
                        let r = a.len() / k;
                        let t: Vec<f32> = a
                            .chunks(k)
                            .map(|ar| ar.iter().zip(x).map(|(u, v)| u * v).sum::<f32>() * scale as f32)
                            .collect();
                        for (yv, br) in y.iter_mut().zip(b.chunks(r)) {
                            *yv += br.iter().zip(&t).map(|(u, v)| u * v).sum::<f32>();
                        }
                    })
                })??;
            }
        }
        Ok(y)
    }

    /// The f32 weight, for training (requires [`WeightFormat::F32`]).
    fn dense(&self) -> Result<&Tensor> {
        match &self.weight {
            Weights::Candle(QMatMul::Tensor(t)) => Ok(t),
            _ => Err(Error::InvalidInput("training needs a model loaded with f32 weights".into())),
        }
    }

    /// The f32 weight and, where the CPU has AMX, its bf16 packing (made on first use).
    fn frozen_parts(&self) -> Result<(&Tensor, Option<&Arc<ops::FrozenBf16>>)> {
        let w = self.dense()?;
        if !amx::available() || !w.device().is_cpu() {
            return Ok((w, None));
        }
        if self.amx.get().is_none() {
            let _ = self.amx.set(Arc::new(ops::FrozenBf16::new(w)?));
        }
        Ok((w, self.amx.get()))
    }

    /// The f32 weights of layers that read the same input (q, k, v; gate, up), stacked into one layer
    /// whose output is theirs side by side; the layers become views into its weight (no second copy).
    /// `None`, and the layers untouched, where any of them has a bias or no f32 weight.
    fn stacked<const N: usize>(layers: [&mut Linear; N]) -> Result<Option<Linear>> {
        if layers.iter().any(|l| l.bias.is_some() || l.dense().is_err()) {
            return Ok(None);
        }
        let weights = layers.iter().map(|l| l.dense().cloned()).collect::<Result<Vec<_>>>()?;
        let stacked = Tensor::cat(&weights, 0)?;
        let mut row = 0;
        for (l, w) in layers.into_iter().zip(&weights) {
            let n = w.dim(0)?;
            l.weight = Weights::Candle(QMatMul::Tensor(stacked.narrow(0, row, n)?));
            row += n;
        }
        Ok(Some(Linear::from_parts(QMatMul::Tensor(stacked), None)))
    }

    /// Training forward of a stacked layer ([`Linear::stacked`]) given the layers it stacks, each with
    /// its adapter and scale (one scale for all): their outputs side by side.
    fn forward_train_stacked(&self, x: &Tensor, parts: &[(&Linear, Option<(&LoraPair, f64)>)]) -> Result<Tensor> {
        let (w, packed) = self.frozen_parts()?;
        let scale = parts.iter().find_map(|(_, lora)| lora.map(|(_, s)| s)).unwrap_or(0.0);
        let parts = parts
            .iter()
            .map(|(l, lora)| Ok((l.dense()?.dim(0)?, lora.map(|(p, _)| (&p.a, &p.b)))))
            .collect::<Result<Vec<_>>>()?;
        Ok(ops::lora_linear_stacked(x, w, packed, &parts, scale)?)
    }

    /// Training forward: frozen weight (input gradient only) plus the adapter's trainable update.
    fn forward_train(&self, x: &Tensor, lora: Option<(&LoraPair, f64)>, dropout: &mut Dropout) -> Result<Tensor> {
        let (w, packed) = self.frozen_parts()?;
        let y = match lora {
            None => ops::frozen_linear_packed(x, w, packed)?,
            Some((p, scale)) if dropout.p <= 0.0 => ops::lora_linear(x, w, packed, &p.a, &p.b, scale)?,
            Some((p, scale)) => {
                let y = ops::frozen_linear_packed(x, w, packed)?;
                let x = dropout.apply(x)?;
                (y + (x.broadcast_matmul(&p.a.t()?)?.broadcast_matmul(&p.b.t()?)? * scale)?)?
            }
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// The int8-kernel form of a weight, where there is one: the file's Q4_1/Q8_0 blocks as they are (`Quantized`),
/// or 8-bit blocks (`Q8_0`, and dense checkpoints served quantized). Other ggml types keep candle's kernels.
fn quant_weight(w: &Weight, format: WeightFormat, device: &Device) -> Result<Option<quant_matmul::QuantWeight>> {
    use candle_core::quantized::GgmlDType;
    let dense = |t: Tensor| -> Result<quant_matmul::QuantWeight> {
        let (n, k) = t.dims2()?;
        Ok(quant_matmul::QuantWeight::quantize(&t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?, n, k))
    };
    Ok(match (format, w) {
        (_, Weight::Quantized(q)) => {
            let (n, k) = q.shape().dims2()?;
            match (format, q.dtype()) {
                (WeightFormat::Quantized, GgmlDType::Q4_1) => {
                    Some(quant_matmul::QuantWeight::from_q4_1(&q.data()?, n, k))
                }
                (_, GgmlDType::Q8_0) => Some(quant_matmul::QuantWeight::from_q8_0(&q.data()?, n, k)),
                (WeightFormat::Q8_0, _) => Some(dense(q.dequantize(device)?)?),
                _ => None,
            }
        }
        (_, Weight::Dense(t)) => Some(dense(t.clone())?),
    })
}

/// Calls `f` with a CPU f32 tensor's elements, borrowed.
fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        return Err(Error::InvalidInput("expected a CPU tensor".into()));
    };
    Ok(f(ops::contiguous::<f32>(storage, layout)?))
}

/// `x Wᵀ` on our int8 kernels for f32 `x (.., k)`.
fn quant_forward(x: &Tensor, w: &quant_matmul::QuantWeight) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let mut dims = x.dims().to_vec();
    let m = x.elem_count() / w.k();
    let y = {
        let (storage, layout) = x.storage_and_layout();
        let candle_core::Storage::Cpu(storage) = &*storage else {
            return Err(Error::InvalidInput("int8-kernel weights need CPU tensors".into()));
        };
        quant_matmul::matmul(ops::contiguous::<f32>(storage, layout)?, m, w)
    };
    *dims.last_mut().unwrap() = w.n();
    Ok(Tensor::from_vec(y, dims, x.device())?)
}

/// The token embedding table: dense, or the rows of a tied output head held in int8-kernel blocks (no second
/// f32 copy of the largest matrix).
#[derive(Debug, Clone)]
enum Embedding {
    Dense(Tensor),
    Rows(Arc<quant_matmul::QuantWeight>),
}

impl Embedding {
    fn lookup(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => Ok(t.index_select(&Tensor::new(ids, device)?, 0)?),
            Embedding::Rows(q) => {
                let rows: Vec<f32> = ids.iter().flat_map(|&i| q.row(i as usize)).collect();
                Ok(Tensor::from_vec(rows, (ids.len(), q.k()), device)?)
            }
        }
    }
}

/// Seeded dropout on the LoRA branch's input (PEFT's `lora_dropout`).
pub struct Dropout {
    p: f64,
    rng: rand::rngs::StdRng,
}

impl Dropout {
    pub fn new(p: f64, seed: u64) -> Self {
        use rand::SeedableRng;
        Self { p, rng: rand::rngs::StdRng::seed_from_u64(seed) }
    }

    fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        use rand::Rng;
        if self.p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 / (1.0 - self.p) as f32;
        let p = self.p;
        let mask: Vec<f32> =
            (0..x.elem_count()).map(|_| if self.rng.random::<f64>() < p { 0.0 } else { keep }).collect();
        Ok((x * Tensor::from_vec(mask, x.shape(), x.device())?)?)
    }
}

/// Token sequences packed back to back for training: no padding, each sequence attends only to
/// itself and to the segment it continues, if any; its positions restart at 0 or go on from there.
#[derive(Debug, Clone, Default)]
pub struct PackedBatch {
    pub ids: Vec<u32>,
    /// (start, len) of each sequence in `ids`.
    pub segments: Vec<(usize, usize)>,
    /// For each segment, the segment whose tokens come before its own ([`Self::push_shared`]: a prompt
    /// prefix packed once for several examples). Its tokens attend to that segment's as to their own
    /// earlier ones, and their positions continue from its end.
    pub continues: Vec<Option<usize>>,
    /// Position of each token within its sequence.
    pub positions: Vec<u32>,
    /// Indices into `ids` whose next-token logits are scored.
    pub loss_positions: Vec<u32>,
    /// The token expected after each of `loss_positions`.
    pub targets: Vec<u32>,
}

impl PackedBatch {
    pub fn push(&mut self, ids: &[u32], first_target: usize) {
        self.push_segment(ids, 0, None, first_target);
    }

    /// Examples `(ids, first target)` with the tokens they all start with packed once. In a causal model
    /// a shared prefix's hidden states are the same in every example, and the gradient reaching them is
    /// the sum of what each example sends back, so the loss and gradients are those of [`Self::push`]
    /// on each example (to rounding), for the prefix's compute once instead of once per example. The
    /// prefix stops before the first scored position of any example (a scored token's target differs
    /// between examples). With fewer than two examples or nothing shared, the same as `push` on each.
    pub fn push_shared(&mut self, examples: &[(&[u32], usize)]) {
        let Some(&(first, _)) = examples.first() else { return };
        let shared = Self::shared_prefix(examples);
        if examples.len() < 2 || shared == 0 {
            examples.iter().for_each(|&(ids, t)| self.push(ids, t));
            return;
        }
        let prefix = self.segments.len();
        self.push_segment(&first[..shared], 0, None, usize::MAX);
        for &(ids, t) in examples {
            self.push_segment(&ids[shared..], shared, Some(prefix), t);
        }
    }

    /// How many tokens [`push_shared`](Self::push_shared) packs once for these examples: those they
    /// all start with, up to the position before the first scored one of any of them.
    pub fn shared_prefix(examples: &[(&[u32], usize)]) -> usize {
        let Some(&(first, _)) = examples.first() else { return 0 };
        let mut shared = examples.iter().map(|&(ids, t)| ids.len().min(t.max(1)).saturating_sub(1)).min().unwrap_or(0);
        for &(ids, _) in &examples[1..] {
            shared = first.iter().zip(ids).take(shared).take_while(|(a, b)| a == b).count();
        }
        shared
    }

    /// `ids` are the tokens from position `offset` of an example (the earlier ones are segment
    /// `continues`); `first_target` counts from the example's start (usize::MAX: none scored).
    fn push_segment(&mut self, ids: &[u32], offset: usize, continues: Option<usize>, first_target: usize) {
        let start = self.ids.len();
        self.ids.extend_from_slice(ids);
        self.segments.push((start, ids.len()));
        self.continues.push(continues);
        self.positions.extend((offset..offset + ids.len()).map(|p| p as u32));
        // Example position t is predicted at position t - 1, which lies in this segment (t - 1 >= offset).
        for t in first_target.max(1).max(offset + 1)..offset + ids.len() {
            self.loss_positions.push((start + t - 1 - offset) as u32);
            self.targets.push(ids[t - offset]);
        }
    }
}

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    /// The same weight as plain values, for the CPU inference path.
    values: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }

    fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::rms_norm(x, &self.weight, self.eps as f64)?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: RmsNorm,
    attn_q: Linear,
    attn_k: Linear,
    attn_v: Linear,
    attn_output: Linear,
    ffn_norm: RmsNorm,
    ffn_gate: Linear,
    ffn_up: Linear,
    ffn_down: Linear,
    /// f32 weights on the CPU: q/k/v and gate/up stacked into one matrix each, for training's wider
    /// matmuls (see [`Linear::stacked`]); the separate layers above are views into them.
    stacked: Option<(Linear, Linear)>,
}

/// Keys and values of the positions seen so far, per layer: as tensors `(batch, kv_heads, positions,
/// head_dim)` on a GPU, as rows of `kv_heads * head_dim` that grow in place on the CPU.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    rows: Vec<(Vec<f32>, Vec<f32>)>,
    len: usize,
}

impl KvCache {
    pub fn new(config: &Config) -> Self {
        Self {
            layers: vec![None; config.num_hidden_layers],
            rows: vec![Default::default(); config.num_hidden_layers],
            len: 0,
        }
    }
    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Drops the positions from `len` on, in place (nothing when it holds no more): scoring choices
    /// runs one branch after another from the same prompt (`choices::log_probs`).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len {
            return Ok(());
        }
        for layer in &mut self.layers {
            if let Some((k, v)) = layer.take() {
                if len > 0 {
                    *layer = Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?));
                }
            }
        }
        // Each layer's rows hold `self.len` positions of equal width (`self.len > len >= 0` here).
        for (k, v) in &mut self.rows {
            let width = k.len() / self.len;
            k.truncate(width * len);
            v.truncate(width * len);
        }
        self.len = len;
        Ok(())
    }
    /// The first `len` positions only (shares the tensors; later appends make new ones).
    pub fn truncated(&self, len: usize) -> Result<Self> {
        if len >= self.len {
            return Ok(self.clone());
        }
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) if len > 0 => Ok(Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?))),
                _ => Ok(None),
            })
            .collect::<Result<_>>()?;
        let keep = |r: &Vec<f32>| r[..r.len() / self.len * len].to_vec();
        let rows = self.rows.iter().map(|(k, v)| (keep(k), keep(v))).collect();
        Ok(Self { layers, rows, len })
    }
}

pub struct Llama {
    pub config: Config,
    token_embd: Embedding,
    blocks: Vec<Block>,
    output_norm: RmsNorm,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    /// `cos`/`sin` as plain values, for the CPU inference path.
    rope_values: Arc<(Vec<f32>, Vec<f32>)>,
    device: Device,
}

impl Llama {
    pub fn from_gguf(g: &mut GgufFile, format: WeightFormat, device: &Device) -> Result<Self> {
        let config = Config::from_gguf(g)?;
        Self::load(config, g, format, device)
    }

    /// A Hugging Face checkpoint directory: `config.json` + safetensors.
    pub fn from_hf_dir(dir: &std::path::Path, format: WeightFormat, device: &Device) -> Result<Self> {
        let config = Config::from_hf_json(&std::fs::read_to_string(dir.join("config.json"))?)?;
        Self::load(config, &mut HfWeights::open(dir, device)?, format, device)
    }

    pub fn load(config: Config, src: &mut dyn WeightSource, format: WeightFormat, device: &Device) -> Result<Self> {
        let eps = config.rms_norm_eps as f32;
        let norm = |src: &mut dyn WeightSource, name: &str| -> Result<RmsNorm> {
            let weight = src.weight(name, device)?.dense(device)?;
            Ok(RmsNorm { values: weight.to_dtype(DType::F32)?.to_vec1::<f32>()?, weight, eps })
        };
        let output_norm = norm(src, "output_norm.weight")?;
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let linear = |src: &mut dyn WeightSource, name: &str| -> Result<Linear> {
                let w = src.weight(&format!("blk.{i}.{name}.weight"), device)?;
                let bias_name = format!("blk.{i}.{name}.bias");
                let bias = if config.attention_bias && src.has(&bias_name) {
                    Some(src.weight(&bias_name, device)?.dense(device)?)
                } else {
                    None
                };
                Linear::new(w, bias, format, device)
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
        let token_embd_w = src.weight("token_embd.weight", device)?;
        let (token_embd, output) = match (token_embd_w, format, config.tie_word_embeddings) {
            // Generating reads the whole head for every token: its quantized form is the fast one.
            (Weight::Quantized(q), WeightFormat::Quantized | WeightFormat::Q8_0, true) => {
                let dense = q.dequantize(device)?;
                let head = Linear::new(Weight::Quantized(q), None, format, device)?;
                match &head.weight {
                    // Lookups read the head's own blocks: exact for the file's Q4_1/Q8_0.
                    Weights::Quant(w) if format == WeightFormat::Quantized => (Embedding::Rows(w.clone()), head),
                    _ => (Embedding::Dense(dense), head),
                }
            }
            (w, _, true) => {
                // Tied and dense (training, or a dense checkpoint): the head is the embedding table itself.
                let dense = w.dense(device)?;
                let head = match format {
                    WeightFormat::F32 => Linear::from_parts(QMatMul::Tensor(dense.clone()), None),
                    _ => Linear::new(Weight::Dense(dense.clone()), None, format, device)?,
                };
                (Embedding::Dense(dense), head)
            }
            (w, _, false) => (
                Embedding::Dense(w.dense(device)?),
                Linear::new(src.weight("output.weight", device)?, None, format, device)?,
            ),
        };
        let (cos, sin) = rope_tables(&config, device)?;
        let values = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let rope_values = Arc::new((values(&cos)?, values(&sin)?));
        Ok(Self { config, token_embd, blocks, output_norm, output, cos, sin, rope_values, device: device.clone() })
    }

    pub fn device(&self) -> &Device {
        &self.device
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
                Weights::Candle(QMatMul::Tensor(t)) => t.clone(),
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
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            rope_values: self.rope_values.clone(),
            device: self.device.clone(),
        })
    }

    /// Runs `ids` (one sequence) after the positions already in `cache`, appends them to it, and returns
    /// the logits of the last position, shape `(vocab,)`.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        self.forward_with(ids, cache, None)
    }

    /// [`Llama::forward`] with a LoRA adapter applied.
    pub fn forward_with(&self, ids: &[u32], cache: &mut KvCache, adapter: Option<&LoraAdapter>) -> Result<Tensor> {
        let seq_len = ids.len();
        if seq_len == 0 {
            return Err(Error::InvalidInput("no tokens to run".into()));
        }
        let pos = cache.len;
        if pos + seq_len > self.config.max_position_embeddings {
            return Err(Error::PromptTooLong { tokens: pos + seq_len, context: self.config.max_position_embeddings });
        }
        if self.device.is_cpu() {
            return self.forward_rows(ids, cache, adapter);
        }
        let mut x = self.token_embd.lookup(ids, &self.device)?.unsqueeze(0)?;
        let mask = if seq_len > 1 { Some(causal_mask(seq_len, pos, &self.device)?) } else { None };
        let cos = self.cos.narrow(0, pos, seq_len)?;
        let sin = self.sin.narrow(0, pos, seq_len)?;
        for (i, (block, layer_cache)) in self.blocks.iter().zip(cache.layers.iter_mut()).enumerate() {
            let lora = |t: Target| adapter.and_then(|a| Some((a.get(i, t)?, a.config.scale())));
            let h =
                self.attention(block, &block.attn_norm.forward(&x)?, &cos, &sin, mask.as_ref(), layer_cache, &lora)?;
            x = (x + h)?;
            let h = block.ffn_norm.forward(&x)?;
            let gate = candle_nn::ops::silu(&block.ffn_gate.forward_lora(&h, lora(Target::Gate))?)?;
            let up = block.ffn_up.forward_lora(&h, lora(Target::Up))?;
            x = (x + block.ffn_down.forward_lora(&(gate * up)?, lora(Target::Down))?)?;
        }
        cache.len += seq_len;
        let last = x.narrow(1, seq_len - 1, 1)?;
        let logits = self.output.forward(&self.output_norm.forward(&last)?)?;
        Ok(logits.flatten_all()?)
    }

    /// [`Llama::forward_with`] on the CPU: activations as plain rows between the matmuls (see
    /// `infer_ops.rs` for why).
    fn forward_rows(&self, ids: &[u32], cache: &mut KvCache, adapter: Option<&LoraAdapter>) -> Result<Tensor> {
        let c = &self.config;
        let (m, pos, d) = (ids.len(), cache.len, c.head_dim);
        let (cos, sin) = (&self.rope_values.0, &self.rope_values.1);
        let mut x = self.token_embd.lookup(ids, &self.device)?.flatten_all()?.to_vec1::<f32>()?;
        for (i, (b, (kc, vc))) in self.blocks.iter().zip(cache.rows.iter_mut()).enumerate() {
            let lora = |t: Target| adapter.and_then(|a| Some((a.get(i, t)?, a.config.scale())));
            let h = infer_ops::rms_norm(&x, &b.attn_norm.values, b.attn_norm.eps);
            let qkv = [(&b.attn_q, lora(Target::Q)), (&b.attn_k, lora(Target::K)), (&b.attn_v, lora(Target::V))];
            let [mut q, mut k, v] = Linear::forward_rows_many(qkv, &h, m)?;
            infer_ops::rope(&mut q, c.num_attention_heads, d, pos, cos, sin, c.rope_interleaved);
            infer_ops::rope(&mut k, c.num_key_value_heads, d, pos, cos, sin, c.rope_interleaved);
            kc.extend_from_slice(&k);
            vc.extend_from_slice(&v);
            let y = infer_ops::attention(&q, kc, vc, m, pos, c.num_attention_heads, c.num_key_value_heads, d);
            infer_ops::add_in_place(&mut x, &b.attn_output.forward_rows(&y, m, lora(Target::O))?);
            let h = infer_ops::rms_norm(&x, &b.ffn_norm.values, b.ffn_norm.eps);
            let [gate, up] =
                Linear::forward_rows_many([(&b.ffn_gate, lora(Target::Gate)), (&b.ffn_up, lora(Target::Up))], &h, m)?;
            let a = infer_ops::silu_mul(&gate, &up);
            infer_ops::add_in_place(&mut x, &b.ffn_down.forward_rows(&a, m, lora(Target::Down))?);
        }
        cache.len += m;
        let last = &x[(m - 1) * c.hidden_size..];
        let h = infer_ops::rms_norm(last, &self.output_norm.values, self.output_norm.eps);
        let logits = self.output.forward_rows(&h, 1, None)?;
        let n = logits.len();
        Ok(Tensor::from_vec(logits, n, &self.device)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention<'a>(
        &self,
        b: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut Option<(Tensor, Tensor)>,
        lora: &dyn Fn(Target) -> Option<(&'a LoraPair, f64)>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (batch, seq_len, _) = x.dims3()?;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((batch, seq_len, n, c.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads(b.attn_q.forward_lora(x, lora(Target::Q))?, c.num_attention_heads)?;
        let k = heads(b.attn_k.forward_lora(x, lora(Target::K))?, c.num_key_value_heads)?;
        let v = heads(b.attn_v.forward_lora(x, lora(Target::V))?, c.num_key_value_heads)?;
        let rope = if c.rope_interleaved { candle_nn::rotary_emb::rope_i } else { candle_nn::rotary_emb::rope };
        let q = rope(&q, cos, sin)?;
        let k = rope(&k, cos, sin)?;
        let (k, v) = match cache.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));

        let n_rep = c.num_attention_heads / c.num_key_value_heads;
        let k = repeat_kv(k, n_rep)?;
        let v = repeat_kv(v, n_rep)?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (c.head_dim as f64).sqrt()))?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = probs.matmul(&v)?;
        let y = y.transpose(1, 2)?.reshape((batch, seq_len, c.num_attention_heads * c.head_dim))?;
        b.attn_output.forward_lora(&y, lora(Target::O))
    }

    /// The attention op's view of a packed batch: its sequences and each token's rotary angles.
    fn packed_attention(&self, batch: &PackedBatch) -> Result<Arc<PackedAttention>> {
        let c = &self.config;
        let positions = Tensor::new(batch.positions.as_slice(), &self.device)?;
        let angles = |t: &Tensor| -> Result<Vec<f64>> {
            Ok(t.index_select(&positions, 0)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
        };
        Ok(Arc::new(PackedAttention {
            segments: batch.segments.clone(),
            context: batch.continues.iter().map(|c| c.map(|c| batch.segments[c])).collect(),
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            cos: angles(&self.cos)?,
            sin: angles(&self.sin)?,
            interleaved: c.rope_interleaved,
        }))
    }

    /// Training forward over a packed batch: logits `(loss_positions, vocab)` with gradients flowing to
    /// the adapter's variables only. Uses ops with a backward (see `ops.rs`); needs f32 weights.
    pub fn forward_train(&self, batch: &PackedBatch, adapter: &LoraAdapter, dropout: &mut Dropout) -> Result<Tensor> {
        let dev = &self.device;
        let att = self.packed_attention(batch)?;
        let scale = adapter.config.scale();
        let mut x = self.token_embd.lookup(&batch.ids, dev)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let lora = |t: Target| adapter.get(i, t).map(|p| (p, scale));
            let h = b.attn_norm.forward_train(&x)?;
            let y = match &b.stacked {
                // Dropout draws a mask per layer input; the stacked op has one input for all three.
                Some((qkv, _)) if dropout.p <= 0.0 => {
                    let parts =
                        [(&b.attn_q, lora(Target::Q)), (&b.attn_k, lora(Target::K)), (&b.attn_v, lora(Target::V))];
                    packed_attention_stacked(&qkv.forward_train_stacked(&h, &parts)?, &att)?
                }
                _ => {
                    let q = b.attn_q.forward_train(&h, lora(Target::Q), dropout)?;
                    let k = b.attn_k.forward_train(&h, lora(Target::K), dropout)?;
                    let v = b.attn_v.forward_train(&h, lora(Target::V), dropout)?;
                    packed_attention(&q, &k, &v, &att)?
                }
            };
            x = (x + b.attn_output.forward_train(&y, lora(Target::O), dropout)?)?;
            let h = b.ffn_norm.forward_train(&x)?;
            let act = match &b.stacked {
                Some((_, gate_up)) if dropout.p <= 0.0 => {
                    let parts = [(&b.ffn_gate, lora(Target::Gate)), (&b.ffn_up, lora(Target::Up))];
                    ops::silu_mul_stacked(&gate_up.forward_train_stacked(&h, &parts)?)?
                }
                _ => {
                    let gate = b.ffn_gate.forward_train(&h, lora(Target::Gate), dropout)?;
                    let up = b.ffn_up.forward_train(&h, lora(Target::Up), dropout)?;
                    ops::silu_mul(&gate, &up)?
                }
            };
            x = (x + b.ffn_down.forward_train(&act, lora(Target::Down), dropout)?)?;
        }
        // Logits only where the loss needs them: the vocabulary projection is the largest matmul.
        let picked = Tensor::new(batch.loss_positions.as_slice(), dev)?;
        let h = x.index_select(&picked, 0)?;
        let h = self.output_norm.forward_train(&h)?;
        let (w, packed) = self.output.frozen_parts()?;
        let logits = ops::frozen_linear_packed(&h, w, packed)?;
        Ok(match &self.output.bias {
            Some(b) => logits.broadcast_add(b)?,
            None => logits,
        })
    }
}

/// Grouped-query attention: each key/value head serves `n_rep` query heads.
fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kv_heads, seq, d) = x.dims4()?;
    // cat then reshape: a plain copy, faster than a strided broadcast.
    Ok(Tensor::cat(&vec![&x; n_rep], 2)?.reshape((b, kv_heads * n_rep, seq, d))?)
}

/// cos/sin of position * inverse frequency, `(max_positions, head_dim / 2)`.
fn rope_tables(c: &Config, device: &Device) -> Result<(Tensor, Tensor)> {
    let inv_freq: Vec<f32> =
        (0..c.head_dim).step_by(2).map(|i| 1.0 / (c.rope_theta as f32).powf(i as f32 / c.head_dim as f32)).collect();
    let inv_freq = Tensor::new(inv_freq.as_slice(), device)?.unsqueeze(0)?;
    let positions =
        Tensor::arange(0u32, c.max_position_embeddings as u32, device)?.to_dtype(DType::F32)?.unsqueeze(1)?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// Additive mask `(seq_len, past + seq_len)`: 0 where a query may attend, -inf where it may not.
fn causal_mask(seq_len: usize, past: usize, device: &Device) -> Result<Tensor> {
    let total = past + seq_len;
    let mask: Vec<f32> = (0..seq_len)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (seq_len, total), device)?)
}
