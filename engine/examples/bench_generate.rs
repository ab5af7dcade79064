//! Engine speed: prompt (prefill) tokens/s and generated (decode) tokens/s, for the quantized and the
//! dequantized-f32 weight paths, on the reference prompt and on a 512-token prompt.
//!
//! cargo run -p distill-engine --example bench_generate -- [--threads N] [--model-dir DIR] [--decode N]

use std::path::PathBuf;
use std::time::Instant;

use distill_engine::models::llama::{KvCache, Llama};
use distill_engine::{LoraAdapter, LoraConfig, Message, ModelStore, TextModel, WeightFormat};

fn main() -> distill_engine::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
    let threads: usize = arg("--threads").map(|v| v.parse().unwrap()).unwrap_or(2);
    let decode: usize = arg("--decode").map(|v| v.parse().unwrap()).unwrap_or(64);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = arg("--model-dir").map(PathBuf::from).unwrap_or_else(|| root.join("models"));
    let path = ModelStore::new(dir, false).resolve("smollm2-135m")?;
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("tests/fixtures/smollm2_greedy_reference.json"))?)
            .unwrap();
    let pool = distill_engine::threads::pool(threads)?;

    println!("engine speed, {threads} threads, model {}", path.display());
    println!("{:<10} {:<22} {:>8} {:>14} {:>14}", "weights", "prompt", "tokens", "prompt tok/s", "gen tok/s");
    for format in [WeightFormat::Quantized, WeightFormat::Q8_0, WeightFormat::F32] {
        let model = TextModel::load_gguf(&path, format, &candle_core::Device::Cpu)?;
        let reference = model.chat_prompt(&[Message::user(fixture["user_message"].as_str().unwrap())])?;
        let long = long_prompt(&model, 512)?;
        for (label, prompt) in [("reference (fixture)", &reference), ("512 tokens", &long)] {
            let (prefill, gen) = pool.install(|| measure(&model.llama, prompt, decode, None))?;
            println!("{:<10} {:<22} {:>8} {:>14.1} {:>14.1}", format!("{format:?}"), label, prompt.len(), prefill, gen);
        }
        // A LoRA adapter (r 8, all seven targets, B non-zero) applied unmerged, and merged into a copy.
        let (mut adapter, _) =
            LoraAdapter::init(&LoraConfig::default(), &model.llama.config, 1, &candle_core::Device::Cpu)?;
        for layer in adapter.layers.iter_mut() {
            for pair in layer.values_mut() {
                pair.b =
                    (candle_core::Tensor::ones(pair.b.shape(), candle_core::DType::F32, &candle_core::Device::Cpu)?
                        * 0.001)?;
            }
        }
        let (prefill, gen) = pool.install(|| measure(&model.llama, &reference, decode, Some(&adapter)))?;
        println!(
            "{:<10} {:<22} {:>8} {:>14.1} {:>14.1}",
            format!("{format:?}"),
            "+ adapter, unmerged",
            reference.len(),
            prefill,
            gen
        );
        let merged = model.llama.merged(&adapter)?;
        let (prefill, gen) = pool.install(|| measure(&merged, &reference, decode, None))?;
        println!(
            "{:<10} {:<22} {:>8} {:>14.1} {:>14.1}",
            format!("{format:?}"),
            "+ adapter, merged",
            reference.len(),
            prefill,
            gen
        );
    }
    Ok(())
}

/// Best of three runs: prefill tokens/s, then `decode` greedy steps' tokens/s (stop tokens ignored).
fn measure(
    model: &Llama,
    prompt: &[u32],
    decode: usize,
    adapter: Option<&LoraAdapter>,
) -> distill_engine::Result<(f64, f64)> {
    let (mut best_prefill, mut best_gen) = (0f64, 0f64);
    for _ in 0..3 {
        let mut cache = KvCache::new(&model.config);
        let t = Instant::now();
        let mut logits = model.forward_with(prompt, &mut cache, adapter)?;
        best_prefill = best_prefill.max(prompt.len() as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..decode {
            let next = logits.argmax(0)?.to_scalar::<u32>()?;
            logits = model.forward_with(&[next], &mut cache, adapter)?;
        }
        best_gen = best_gen.max(decode as f64 / t.elapsed().as_secs_f64());
    }
    Ok((best_prefill, best_gen))
}

/// A chat prompt of exactly `n` tokens made of support-ticket text.
fn long_prompt(model: &TextModel, n: usize) -> distill_engine::Result<Vec<u32>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("data/support_tickets/test.csv"))?;
    let mut ids = model.chat_prompt(&[Message::user(&text)])?;
    if ids.len() < n {
        return Err(distill_engine::Error::InvalidInput(format!("only {} tokens of text", ids.len())));
    }
    ids.truncate(n);
    Ok(ids)
}
