//! LoRA adapters: low-rank updates `W x + (alpha / r) B A x` on a frozen base, as Hugging Face PEFT
//! defines them, stored in PEFT's file format.
//!
//! Inside the engine, q/k adapters live in the GGUF row order of the base weights (GGUF permutes
//! Llama's q/k rows for interleaved RoPE). Export to and import from PEFT convert `lora_B`'s rows so an
//! exported adapter applies unchanged to the Hugging Face checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::formats::peft_zip::SafetensorsHeader;
use crate::models::llama::Config;

/// A linear layer an adapter can attach to, by its Hugging Face module name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    #[serde(rename = "q_proj")]
    Q,
    #[serde(rename = "k_proj")]
    K,
    #[serde(rename = "v_proj")]
    V,
    #[serde(rename = "o_proj")]
    O,
    #[serde(rename = "gate_proj")]
    Gate,
    #[serde(rename = "up_proj")]
    Up,
    #[serde(rename = "down_proj")]
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    pub fn hf_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        let short = name.strip_suffix("_proj").unwrap_or(name);
        Target::ALL.into_iter().find(|t| t.hf_name().strip_suffix("_proj") == Some(short)).ok_or_else(|| {
            Error::InvalidInput(format!("unknown LoRA target \"{name}\" (use q, k, v, o, gate, up, down)"))
        })
    }

    fn peft_module(self) -> &'static str {
        match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            _ => "mlp",
        }
    }

    /// PEFT's key of this target's `lora_A` or `lora_B` (`ab`) weight in transformer block `layer`.
    fn peft_key(self, layer: usize, ab: &str) -> String {
        format!("base_model.model.model.layers.{layer}.{}.{}.lora_{ab}.weight", self.peft_module(), self.hf_name())
    }

    /// (in, out) features of this layer.
    pub fn dims(self, c: &Config) -> (usize, usize) {
        let q = c.num_attention_heads * c.head_dim;
        let kv = c.num_key_value_heads * c.head_dim;
        match self {
            Target::Q => (c.hidden_size, q),
            Target::K | Target::V => (c.hidden_size, kv),
            Target::O => (q, c.hidden_size),
            Target::Gate | Target::Up => (c.hidden_size, c.intermediate_size),
            Target::Down => (c.intermediate_size, c.hidden_size),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<Target>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { r: 8, alpha: 16.0, dropout: 0.0, targets: Target::ALL.to_vec() }
    }
}

impl LoraConfig {
    /// The targets by their Hugging Face module names, sorted (PEFT's `target_modules`).
    pub fn target_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&str> = self.targets.iter().map(|t| t.hf_name()).collect();
        names.sort();
        names
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=256).contains(&self.r) {
            return Err(Error::InvalidInput(format!("lora_r must be between 1 and 256, got {}", self.r)));
        }
        if !(self.alpha > 0.0 && self.alpha <= 4096.0) {
            return Err(Error::InvalidInput(format!("lora_alpha must be in (0, 4096], got {}", self.alpha)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::InvalidInput(format!("lora_dropout must be in [0, 1), got {}", self.dropout)));
        }
        if self.targets.is_empty() {
            return Err(Error::InvalidInput("target_modules must name at least one module".into()));
        }
        Ok(())
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }
}

/// One adapted layer: `A (r, in)`, `B (out, r)`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
}

/// Adapters for every targeted layer of a model.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub config: LoraConfig,
    /// Per transformer block, the adapted layers.
    pub layers: Vec<BTreeMap<Target, LoraPair>>,
    /// Tells adapters apart in [`crate::infer::prefix_cache`]; 0 for one still being trained (its weights
    /// change, so nothing computed with it may be reused).
    pub(crate) cache_id: u64,
}

/// A fresh id for an adapter whose weights will not change.
fn new_cache_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl LoraAdapter {
    /// A fresh adapter as PEFT initialises one: A Kaiming-uniform (a = sqrt 5, so U(-1/sqrt(in), 1/sqrt(in))),
    /// B zero, so training starts from the base model. Returns the trainable variables too.
    pub fn init(config: &LoraConfig, model: &Config, seed: u64, device: &Device) -> Result<(Self, Vec<Var>)> {
        config.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut vars = Vec::new();
        let mut layers = Vec::with_capacity(model.num_hidden_layers);
        for _ in 0..model.num_hidden_layers {
            let mut layer = BTreeMap::new();
            for &t in &config.targets {
                let (fan_in, fan_out) = t.dims(model);
                let bound = 1.0 / (fan_in as f32).sqrt();
                let a: Vec<f32> = (0..config.r * fan_in).map(|_| rng.random_range(-bound..bound)).collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (config.r, fan_in), device)?)?;
                let b = Var::zeros((fan_out, config.r), DType::F32, device)?;
                layer.insert(t, LoraPair { a: a.as_tensor().clone(), b: b.as_tensor().clone() });
                vars.push(a);
                vars.push(b);
            }
            layers.push(layer);
        }
        Ok((Self { config: config.clone(), layers, cache_id: 0 }, vars))
    }

    pub fn get(&self, layer: usize, target: Target) -> Option<&LoraPair> {
        self.layers.get(layer)?.get(&target)
    }

    /// A copy with storage of its own: later optimizer steps on this adapter's variables leave it as
    /// it is now ([`Self::detached`] shares their storage).
    pub fn snapshot(&self) -> Result<Self> {
        self.map_tensors(|t| Ok(t.detach().copy()?))
    }

    /// The same values, cut off from any autograd graph (for inference and saving).
    pub fn detached(&self) -> Self {
        self.map_tensors(|t| Ok(t.detach())).expect("detach does not fail")
    }

    /// The same adapter with every A and B tensor replaced by `f` of it, under a new cache id.
    /// This adapter with its tensors on `device` (where the model it serves is).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        if self.layers.iter().flat_map(|l| l.values()).all(|p| p.a.device().same_device(device)) {
            return Ok(self.clone());
        }
        self.map_tensors(|t| Ok(t.to_device(device)?))
    }

    fn map_tensors(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| l.iter().map(|(t, p)| Ok((*t, LoraPair { a: f(&p.a)?, b: f(&p.b)? }))).collect::<Result<_>>())
            .collect::<Result<_>>()?;
        Ok(Self { config: self.config.clone(), layers, cache_id: new_cache_id() })
    }

    /// Tensors under PEFT's key names, with q/k `lora_B` rows in Hugging Face order.
    fn peft_tensors(&self, model: &Config) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (&t, pair) in layer {
                let b = match t {
                    Target::Q => unpermute_rows(&pair.b, model.num_attention_heads, model.rope_interleaved)?,
                    Target::K => unpermute_rows(&pair.b, model.num_key_value_heads, model.rope_interleaved)?,
                    _ => pair.b.clone(),
                };
                out.insert(t.peft_key(i, "A"), pair.a.detach().contiguous()?);
                out.insert(t.peft_key(i, "B"), b.detach().contiguous()?);
            }
        }
        Ok(out)
    }

    /// Every tensor a PEFT adapter with `config` holds for `model`: its key, layer, target, and
    /// shape (`lora_A` is `(r, in)`, `lora_B` `(out, r)`).
    fn peft_layout(config: &LoraConfig, model: &Config) -> Vec<(String, usize, Target, [usize; 2])> {
        let mut out = Vec::new();
        for i in 0..model.num_hidden_layers {
            for &t in &config.targets {
                let (fan_in, fan_out) = t.dims(model);
                out.push((t.peft_key(i, "A"), i, t, [config.r, fan_in]));
                out.push((t.peft_key(i, "B"), i, t, [fan_out, config.r]));
            }
        }
        out
    }

    /// Checks a safetensors header against what `config` on `model` needs: every tensor's name and
    /// shape, none missing and none extra (the header reader admits float dtypes only). Reads no
    /// tensor data.
    pub fn check_header(config: &LoraConfig, header: &SafetensorsHeader, model: &Config) -> Result<()> {
        let bad = |m: String| Error::InvalidInput(format!("adapter does not fit the base model: {m}"));
        let mut expected: HashMap<String, [usize; 2]> =
            Self::peft_layout(config, model).into_iter().map(|(key, _, _, shape)| (key, shape)).collect();
        for t in &header.tensors {
            let Some(shape) = expected.remove(&t.name) else {
                return Err(bad(format!(
                    "unexpected tensor {} (more layers or modules than the base model has)",
                    t.name
                )));
            };
            if t.shape != shape {
                return Err(bad(format!("tensor {} has shape {:?}, the base model needs {shape:?}", t.name, t.shape)));
            }
        }
        // The first missing one in layer order, for a stable message.
        if let Some((key, ..)) = Self::peft_layout(config, model).into_iter().find(|(k, ..)| expected.contains_key(k)) {
            return Err(bad(format!("missing tensor {key}")));
        }
        Ok(())
    }

    /// The adapter from PEFT tensors whose names and shapes [`check_header`](Self::check_header) passed.
    fn from_peft_tensors(config: LoraConfig, mut tensors: HashMap<String, Tensor>, model: &Config) -> Result<Self> {
        let mut layers = vec![BTreeMap::new(); model.num_hidden_layers];
        let mut a_of = HashMap::new();
        for (key, i, t, _) in Self::peft_layout(&config, model) {
            let tensor = tensors.remove(&key).ok_or_else(|| Error::InvalidInput(format!("missing tensor {key}")))?;
            let tensor = tensor.to_dtype(DType::F32)?;
            check_finite(&key, &tensor)?;
            let Some(a) = a_of.remove(&(i, t)) else {
                a_of.insert((i, t), tensor);
                continue;
            };
            let b = match t {
                Target::Q => permute_rows(&tensor, model.num_attention_heads, model.rope_interleaved)?,
                Target::K => permute_rows(&tensor, model.num_key_value_heads, model.rope_interleaved)?,
                _ => tensor,
            };
            layers[i].insert(t, LoraPair { a, b });
        }
        Ok(Self { config, layers, cache_id: new_cache_id() })
    }

    /// PEFT's `adapter_config.json`.
    pub fn peft_config_json(&self, base_model: &str) -> serde_json::Value {
        let targets = self.config.target_names();
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.config.r,
            "lora_alpha": self.config.alpha,
            "lora_dropout": self.config.dropout,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "revision": null
        })
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir`.
    pub fn save_peft(&self, dir: &Path, base_model: &str, model: &Config) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let config = serde_json::to_string_pretty(&self.peft_config_json(base_model)).expect("json");
        std::fs::write(dir.join("adapter_config.json"), config)?;
        std::fs::write(dir.join("adapter_model.safetensors"), self.to_safetensors(None, model)?)?;
        Ok(())
    }

    pub fn load_peft(dir: &Path, model: &Config) -> Result<Self> {
        let config = std::fs::read_to_string(dir.join("adapter_config.json"))?;
        let config: serde_json::Value =
            serde_json::from_str(&config).map_err(|e| Error::InvalidInput(format!("adapter_config.json: {e}")))?;
        let bytes = std::fs::read(dir.join("adapter_model.safetensors"))?;
        Self::from_peft_parts(&config, &bytes, model)
    }

    /// One self-contained blob (for the registry table): PEFT's safetensors file with
    /// `adapter_config.json` stored in its metadata.
    pub fn to_bytes(&self, base_model: &str, model: &Config) -> Result<Vec<u8>> {
        self.to_safetensors(Some(self.peft_config_json(base_model)), model)
    }

    pub fn from_bytes(bytes: &[u8], model: &Config) -> Result<Self> {
        Self::from_peft_parts(&Self::blob_config(bytes)?, bytes, model)
    }

    /// A registry blob as a PEFT zip (see [`crate::formats::peft_zip`]); the blob itself is PEFT's
    /// safetensors file (its extra metadata entry is ignored by PEFT).
    pub fn blob_to_archive(blob: &[u8]) -> Result<Vec<u8>> {
        let config = Self::blob_config(blob)?;
        crate::formats::peft_zip::write_zip(&crate::formats::peft_zip::AdapterFiles {
            config,
            safetensors: blob.to_vec(),
        })
    }

    /// An adapter from a PEFT zip, checked against the base model: tensor names, dtypes and shapes
    /// from the safetensors header before any tensor data is inflated, and nothing larger than
    /// `max_bytes` read (see [`read_zip_checked`](crate::formats::peft_zip::read_zip_checked)).
    pub fn from_archive(archive: &[u8], model: &Config, max_bytes: u64) -> Result<Self> {
        let files = crate::formats::peft_zip::read_zip_checked(archive, max_bytes, |config, header| {
            Self::check_header(&lora_config_from_peft(config)?, header, model)
        })?;
        Self::from_peft_parts(&files.config, &files.safetensors, model)
    }

    fn blob_config(bytes: &[u8]) -> Result<serde_json::Value> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::InvalidInput(format!("adapter blob is not a safetensors file: {e}")))?;
        let config = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("adapter_config"))
            .ok_or_else(|| Error::InvalidInput("adapter blob has no adapter_config metadata".into()))?;
        serde_json::from_str(config).map_err(|e| Error::InvalidInput(format!("adapter_config: {e}")))
    }

    /// The base model name recorded in a blob, without loading its tensors.
    pub fn base_model_of(bytes: &[u8]) -> Option<String> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).ok()?;
        let config: serde_json::Value = serde_json::from_str(meta.metadata().as_ref()?.get("adapter_config")?).ok()?;
        config["base_model_name_or_path"].as_str().map(String::from)
    }

    fn to_safetensors(&self, config: Option<serde_json::Value>, model: &Config) -> Result<Vec<u8>> {
        let tensors = self.peft_tensors(model)?;
        // A run that diverged must not be stored: every later use of the adapter would output garbage.
        for (name, t) in &tensors {
            check_finite(name, t)?;
        }
        let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let metadata = config.map(|c| {
            HashMap::from([("adapter_config".to_string(), c.to_string()), ("format".to_string(), "pt".to_string())])
        });
        let bytes =
            safetensors::serialize(sorted, metadata).map_err(|e| Error::InvalidInput(format!("safetensors: {e}")))?;
        Ok(sorted_metadata(bytes))
    }

    fn from_peft_parts(config: &serde_json::Value, bytes: &[u8], model: &Config) -> Result<Self> {
        let config = lora_config_from_peft(config)?;
        Self::check_header(&config, &crate::formats::peft_zip::parse_header(bytes)?, model)?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| Error::InvalidInput(format!("adapter tensors: {e}")))?;
        Self::from_peft_tensors(config, tensors, model)
    }
}

/// The LoRA settings of PEFT's `adapter_config.json`; refuses PEFT variants this engine does not run.
fn lora_config_from_peft(config: &serde_json::Value) -> Result<LoraConfig> {
    let bad = |m: &str| Error::InvalidInput(format!("adapter_config: {m}"));
    if config["peft_type"].as_str() != Some("LORA") {
        return Err(bad("peft_type must be LORA"));
    }
    for (key, unsupported) in [("use_dora", true), ("use_rslora", true)] {
        if config[key].as_bool() == Some(unsupported) {
            return Err(bad(&format!("{key} adapters are not supported")));
        }
    }
    if config["rank_pattern"].as_object().is_some_and(|m| !m.is_empty())
        || config["alpha_pattern"].as_object().is_some_and(|m| !m.is_empty())
    {
        return Err(bad("per-layer rank_pattern/alpha_pattern is not supported"));
    }
    let r = config["r"].as_u64().ok_or_else(|| bad("r is missing"))? as usize;
    let alpha = config["lora_alpha"].as_f64().ok_or_else(|| bad("lora_alpha is missing"))?;
    let dropout = config["lora_dropout"].as_f64().unwrap_or(0.0);
    let targets = match &config["target_modules"] {
        // PEFT's shorthand for every linear layer but the output head: the seven targets here.
        serde_json::Value::String(s) if s == "all-linear" => Target::ALL.to_vec(),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().ok_or_else(|| bad("target_modules must be strings")).and_then(Target::parse))
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(bad("target_modules must be a list")),
    };
    let config = LoraConfig { r, alpha, dropout, targets };
    config.validate()?;
    Ok(config)
}

/// Refuses a tensor holding NaN or infinity (`name` says which, in PEFT's key names).
fn check_finite(name: &str, t: &Tensor) -> Result<()> {
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if values.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!("adapter tensor {name} holds non-finite values (NaN or infinity)")))
    }
}

/// GGUF order -> Hugging Face order for the rows of a q/k projection output (`(heads*head_dim, cols)`).
/// llama.cpp's converter maps HF rows `(head, half, i)` to `(head, i, half)`; this undoes it.
fn unpermute_rows(w: &Tensor, heads: usize, interleaved: bool) -> Result<Tensor> {
    if !interleaved {
        return Ok(w.clone());
    }
    let (rows, cols) = w.dims2()?;
    Ok(w.reshape((heads, rows / heads / 2, 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?)
}

/// Hugging Face order -> GGUF order (llama.cpp's `permute`).
fn permute_rows(w: &Tensor, heads: usize, interleaved: bool) -> Result<Tensor> {
    if !interleaved {
        return Ok(w.clone());
    }
    let (rows, cols) = w.dims2()?;
    Ok(w.reshape((heads, 2, rows / heads / 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?)
}

/// The same safetensors bytes with the header's `__metadata__` keys in sorted order: safetensors
/// writes them in its HashMap's order, which differs from process to process, so the same adapter
/// trained in two workers came out as two different byte strings. The header keeps its length (the
/// same entries, reordered), so the tensor data is untouched.
fn sorted_metadata(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(len) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize) else {
        return bytes;
    };
    let Some(header) = bytes.get(8..8 + len) else { return bytes };
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(header) else { return bytes };
    if let Some(serde_json::Value::Object(meta)) = value.get_mut("__metadata__") {
        let mut entries: Vec<(String, serde_json::Value)> = std::mem::take(meta).into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        meta.extend(entries);
    }
    let Ok(mut text) = serde_json::to_vec(&value) else { return bytes };
    if text.len() > len {
        return bytes;
    }
    // safetensors pads its header with spaces to a multiple of 8 bytes.
    text.resize(len, b' ');
    bytes[8..8 + len].copy_from_slice(&text);
    bytes
}
