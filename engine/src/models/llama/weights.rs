//! Where weights come from (a GGUF file or a Hugging Face checkpoint's safetensors, both looked up by
//! GGUF names) and how a linear layer's weight is held ([`WeightFormat`], the int8-kernel blocks).

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;
use crate::kernels;

/// Where weights come from, by their GGUF names (`blk.N.attn_q.weight`, `token_embd.weight`, ...).
// A CUDA build's QTensor is larger (232 bytes); a Weight lives only while a model loads, one at a time.
#[allow(clippy::large_enum_variant)]
pub enum Weight {
    Quantized(QTensor),
    Dense(Tensor),
}

impl Weight {
    pub(super) fn cols(&self) -> Result<usize> {
        Ok(match self {
            Weight::Quantized(q) => *q.shape().dims().last().unwrap_or(&0),
            Weight::Dense(t) => t.dim(candle_core::D::Minus1)?,
        })
    }

    pub(super) fn dense(self, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Weight::Quantized(q) => q.dequantize(device)?,
            Weight::Dense(t) => t.to_dtype(DType::F32)?,
        })
    }
}

pub trait WeightSource {
    fn weight(&mut self, name: &str, device: &Device) -> Result<Weight>;
    fn has(&self, name: &str) -> bool;
    /// The weight's shape, without reading it.
    fn dims(&self, name: &str) -> Option<Vec<usize>>;
}

impl WeightSource for GgufFile {
    fn weight(&mut self, name: &str, device: &Device) -> Result<Weight> {
        Ok(Weight::Quantized(self.tensor(name, device)?))
    }
    fn has(&self, name: &str) -> bool {
        self.has_tensor(name)
    }
    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.tensor_dims(name)
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
    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(&Self::hf_name(name)).map(|t| t.dims().to_vec())
    }
}

/// How the weights of linear layers are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WeightFormat {
    /// As stored in the file (Q4_1, Q8_0, ...): least memory; matmuls quantize activations on the fly
    /// (llama.cpp's arithmetic). Q4_1 and Q8_0 run on our int8 kernels (`kernels/`: AVX-512
    /// VNNI or AVX2) where the CPU has them.
    #[default]
    Quantized,
    /// Dequantized to f32: about 4x the memory, exact activations, and the path training uses.
    F32,
    /// Requantized to 8 bits per weight (blocks of 32) at load.
    Q8_0,
    /// Dequantized to bf16 on the model's device: what a GPU holds (inference, and training's frozen
    /// base), half of f32's memory; runs the device path (`device_path.rs`) wherever it is loaded.
    Bf16,
}

/// The int8-kernel form of a weight, where there is one: the file's Q4_1/Q8_0 blocks as they are (`Quantized`),
/// or 8-bit blocks (`Q8_0`, and dense checkpoints served quantized). Other ggml types keep candle's kernels.
pub(super) fn quant_weight(w: &Weight, format: WeightFormat, device: &Device) -> Result<Option<kernels::QuantWeight>> {
    use candle_core::quantized::GgmlDType;
    let dense = |t: Tensor| -> Result<kernels::QuantWeight> {
        let (n, k) = t.dims2()?;
        Ok(kernels::QuantWeight::quantize(&t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?, n, k))
    };
    Ok(match (format, w) {
        (_, Weight::Quantized(q)) => {
            let (n, k) = q.shape().dims2()?;
            match (format, q.dtype()) {
                (WeightFormat::Quantized, GgmlDType::Q4_1) => Some(kernels::QuantWeight::from_q4_1(&q.data()?, n, k)),
                (_, GgmlDType::Q8_0) => Some(kernels::QuantWeight::from_q8_0(&q.data()?, n, k)),
                (WeightFormat::Q8_0, _) => Some(dense(q.dequantize(device)?)?),
                _ => None,
            }
        }
        (_, Weight::Dense(t)) => Some(dense(t.clone())?),
    })
}

/// The token embedding table: dense, or the rows of a tied output head held in int8-kernel blocks (no second
/// f32 copy of the largest matrix).
#[derive(Debug, Clone)]
pub(super) enum Embedding {
    Dense(Tensor),
    Rows(Arc<kernels::QuantWeight>),
}

impl Embedding {
    pub(super) fn lookup(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => Ok(t.index_select(&Tensor::new(ids, device)?, 0)?),
            Embedding::Rows(q) => {
                let rows: Vec<f32> = ids.iter().flat_map(|&i| q.row(i as usize)).collect();
                Ok(Tensor::from_vec(rows, (ids.len(), q.k()), device)?)
            }
        }
    }
}
