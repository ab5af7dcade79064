//! Hugging Face checkpoint directories: a tiny random Llama (and Qwen2) written as safetensors and as
//! GGUF (q/k rows permuted as llama.cpp does) give the same logits; a LoRA adapter exported from the
//! GGUF model applies unchanged to the HF checkpoint, as PEFT would apply it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use distill_engine::formats::gguf::GgufFile;
use distill_engine::models::llama::{Config, KvCache, Llama};
use distill_engine::{LoraAdapter, LoraConfig, WeightFormat};

const LAYERS: usize = 2;
const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const INTER: usize = 128;
const VOCAB: usize = 96;

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// HF-named random weights.
fn weights(qwen2: bool) -> HashMap<String, Tensor> {
    let mut w = HashMap::new();
    let mut seed = 1;
    let mut put = |name: String, shape: &[usize]| {
        seed += 1;
        w.insert(name, rand(shape, seed));
    };
    put("model.embed_tokens.weight".into(), &[VOCAB, HIDDEN]);
    put("model.norm.weight".into(), &[HIDDEN]);
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        put(format!("{p}.input_layernorm.weight"), &[HIDDEN]);
        put(format!("{p}.post_attention_layernorm.weight"), &[HIDDEN]);
        put(format!("{p}.self_attn.q_proj.weight"), &[HEADS * HEAD_DIM, HIDDEN]);
        put(format!("{p}.self_attn.k_proj.weight"), &[KV_HEADS * HEAD_DIM, HIDDEN]);
        put(format!("{p}.self_attn.v_proj.weight"), &[KV_HEADS * HEAD_DIM, HIDDEN]);
        put(format!("{p}.self_attn.o_proj.weight"), &[HIDDEN, HEADS * HEAD_DIM]);
        put(format!("{p}.mlp.gate_proj.weight"), &[INTER, HIDDEN]);
        put(format!("{p}.mlp.up_proj.weight"), &[INTER, HIDDEN]);
        put(format!("{p}.mlp.down_proj.weight"), &[HIDDEN, INTER]);
        if qwen2 {
            put(format!("{p}.self_attn.q_proj.bias"), &[HEADS * HEAD_DIM]);
            put(format!("{p}.self_attn.k_proj.bias"), &[KV_HEADS * HEAD_DIM]);
            put(format!("{p}.self_attn.v_proj.bias"), &[KV_HEADS * HEAD_DIM]);
        }
    }
    // Ones-ish norms keep activations sane.
    for (k, v) in w.iter_mut() {
        if k.ends_with("norm.weight") {
            *v = (v.clone() + 1.0).unwrap();
        }
    }
    w
}

fn write_hf(dir: &Path, w: &HashMap<String, Tensor>, qwen2: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "model_type": if qwen2 { "qwen2" } else { "llama" },
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": INTER,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128,
        "tie_word_embeddings": true, "rope_scaling": null
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    candle_core::safetensors::save(w, dir.join("model.safetensors")).unwrap();
}

/// llama.cpp's `permute` for q/k rows: HF (head, half, i) -> GGUF (head, i, half).
fn permute(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

fn write_gguf(path: &Path, w: &HashMap<String, Tensor>, qwen2: bool) {
    let arch = if qwen2 { "qwen2" } else { "llama" };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |name: String, t: &Tensor| tensors.push((name, QTensor::quantize(t, GgmlDType::F32).unwrap()));
    add("token_embd.weight".into(), &w["model.embed_tokens.weight"]);
    add("output_norm.weight".into(), &w["model.norm.weight"]);
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        let q = &w[&format!("{p}.self_attn.q_proj.weight")];
        let k = &w[&format!("{p}.self_attn.k_proj.weight")];
        // Only "llama" GGUFs are permuted for interleaved RoPE.
        let (q, k) = if qwen2 { (q.clone(), k.clone()) } else { (permute(q, HEADS), permute(k, KV_HEADS)) };
        add(format!("blk.{i}.attn_q.weight"), &q);
        add(format!("blk.{i}.attn_k.weight"), &k);
        for (g, h) in [
            ("attn_v.weight", "self_attn.v_proj.weight"),
            ("attn_output.weight", "self_attn.o_proj.weight"),
            ("ffn_gate.weight", "mlp.gate_proj.weight"),
            ("ffn_up.weight", "mlp.up_proj.weight"),
            ("ffn_down.weight", "mlp.down_proj.weight"),
            ("attn_norm.weight", "input_layernorm.weight"),
            ("ffn_norm.weight", "post_attention_layernorm.weight"),
        ] {
            add(format!("blk.{i}.{g}"), &w[&format!("{p}.{h}")]);
        }
        if qwen2 {
            for x in ["q", "k", "v"] {
                add(format!("blk.{i}.attn_{x}.bias"), &w[&format!("{p}.self_attn.{x}_proj.bias")]);
            }
        }
    }
    let u = |v: usize| Value::U32(v as u32);
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (format!("{arch}.vocab_size"), u(VOCAB)),
        (format!("{arch}.embedding_length"), u(HIDDEN)),
        (format!("{arch}.feed_forward_length"), u(INTER)),
        (format!("{arch}.block_count"), u(LAYERS)),
        (format!("{arch}.attention.head_count"), u(HEADS)),
        (format!("{arch}.attention.head_count_kv"), u(KV_HEADS)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (format!("{arch}.rope.freq_base"), Value::F32(10000.0)),
        (format!("{arch}.context_length"), u(128)),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    candle_core::quantized::gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("distill-hf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn logits(m: &Llama, ids: &[u32], adapter: Option<&LoraAdapter>) -> Tensor {
    m.forward_with(ids, &mut KvCache::new(&m.config), adapter).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn both(name: &str, qwen2: bool) -> (Llama, Llama, PathBuf) {
    let dir = tmp(name);
    let w = weights(qwen2);
    write_hf(&dir.join("hf"), &w, qwen2);
    write_gguf(&dir.join("model.gguf"), &w, qwen2);
    let hf = Llama::from_hf_dir(&dir.join("hf"), WeightFormat::F32, &Device::Cpu).unwrap();
    let mut g = GgufFile::open(&dir.join("model.gguf")).unwrap();
    let gg = Llama::from_gguf(&mut g, WeightFormat::F32, &Device::Cpu).unwrap();
    (hf, gg, dir)
}

const IDS: [u32; 7] = [5, 17, 3, 90, 42, 42, 7];

#[test]
fn hf_llama_and_permuted_gguf_agree() {
    let (hf, gg, dir) = both("llama", false);
    assert!(!hf.config.rope_interleaved && gg.config.rope_interleaved);
    let d = max_diff(&logits(&hf, &IDS, None), &logits(&gg, &IDS, None));
    assert!(d < 1e-4, "max logit difference {d}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn hf_qwen2_with_biases_and_gguf_agree() {
    let (hf, gg, dir) = both("qwen2", true);
    assert!(hf.config.attention_bias && gg.config.attention_bias);
    let d = max_diff(&logits(&hf, &IDS, None), &logits(&gg, &IDS, None));
    assert!(d < 1e-4, "max logit difference {d}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn quantized_serving_of_a_dense_checkpoint_stays_close() {
    let dir = tmp("q8");
    write_hf(&dir, &weights(false), false);
    let f32m = Llama::from_hf_dir(&dir, WeightFormat::F32, &Device::Cpu).unwrap();
    let q8 = Llama::from_hf_dir(&dir, WeightFormat::Quantized, &Device::Cpu).unwrap();
    let d = max_diff(&logits(&f32m, &IDS, None), &logits(&q8, &IDS, None));
    assert!(d < 0.05, "Q8_0 vs f32 max logit difference {d}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// An adapter made on the GGUF model (q/k rows in GGUF order), exported in PEFT format, loaded onto the
/// HF checkpoint: same outputs. This is what PEFT does with an exported adapter.
#[test]
fn exported_adapter_applies_to_the_hf_checkpoint() {
    let (hf, gg, dir) = both("adapter", false);
    let cfg = LoraConfig::default();
    let (mut adapter, _) = LoraAdapter::init(&cfg, &gg.config, 7, &Device::Cpu).unwrap();
    // Give B values so the adapter changes the output (fresh adapters start at B = 0).
    for (l, layer) in adapter.layers.iter_mut().enumerate() {
        for (t, pair) in layer.iter_mut() {
            pair.b = rand(pair.b.dims(), 1000 + l as u64 * 10 + *t as u64);
        }
    }
    let peft = dir.join("peft");
    adapter.save_peft(&peft, "tiny", &gg.config).unwrap();
    let on_hf = LoraAdapter::load_peft(&peft, &hf.config).unwrap();
    let base = logits(&gg, &IDS, None);
    let tuned = logits(&gg, &IDS, Some(&adapter));
    assert!(max_diff(&base, &tuned) > 1e-2, "the adapter changes the output");
    let d = max_diff(&tuned, &logits(&hf, &IDS, Some(&on_hf)));
    assert!(d < 1e-4, "max logit difference {d}");
    // And a mismatched adapter is refused.
    let other = Config { num_hidden_layers: 3, ..hf.config.clone() };
    assert!(LoraAdapter::load_peft(&peft, &other).is_err());
    std::fs::remove_dir_all(dir).unwrap();
    let _ = DType::F32;
}
