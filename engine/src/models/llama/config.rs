//! The checkpoint's hyper-parameters, from GGUF metadata or a Hugging Face `config.json`, with the
//! architectures this model file cannot run refused by name.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;

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
