//! The classification benchmark's engine-only run: greedy replies (max 12 tokens) to a list of
//! prompts, one after another as `SELECT complete(...) FROM t` runs them, or `--batch N` at a time
//! decoded together as `distill.complete_rows` runs them, with a time breakdown.
//!
//! cargo run -p distill-engine --example classify_rows -- --prompts prompts.json \
//!     [--format file|q8_0|f32|bf16] [--device cpu|cuda|cuda:N] [--model-dir DIR] [--threads 2] [--max-tokens 12]
//!     [--batch N] [--no-prefix-cache] [--out FILE]

use std::path::PathBuf;
use std::time::Instant;

use distill_engine::{GenerateOptions, Message, ModelStore, TextModel, WeightFormat};

fn main() -> distill_engine::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
    let format = match arg("--format").as_deref() {
        None | Some("file") => WeightFormat::Quantized,
        Some("q8_0") => WeightFormat::Q8_0,
        Some("f32") => WeightFormat::F32,
        Some("bf16") => WeightFormat::Bf16,
        Some(f) => panic!("unknown format {f}"),
    };
    let threads: usize = arg("--threads").map(|v| v.parse().unwrap()).unwrap_or(2);
    let max_tokens: usize = arg("--max-tokens").map(|v| v.parse().unwrap()).unwrap_or(12);
    let prefix_cache = !args.iter().any(|a| a == "--no-prefix-cache");
    let batch: usize = arg("--batch").map(|v| v.parse().unwrap()).unwrap_or(1).max(1);
    // Batched decoding starts each prompt through the prefix cache too: it cannot be switched off there.
    assert!(prefix_cache || batch == 1, "--no-prefix-cache runs rows one at a time: drop --batch");
    let prompts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(arg("--prompts").expect("--prompts FILE"))?).expect("JSON list");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = arg("--model-dir").map(PathBuf::from).unwrap_or_else(|| root.join("models"));
    let path = ModelStore::new(dir, false).resolve("smollm2-135m")?;
    let pool = distill_engine::threads::pool(threads)?;
    let loaded = Instant::now();
    let choice = distill_engine::device::DeviceChoice::parse(arg("--device").as_deref().unwrap_or("cpu"), "--device")?;
    let device = distill_engine::device::select(choice, "--device")?;
    // A GPU holds bf16 (or f32) weights: its quantized formats have CPU kernels only.
    let format = if device.is_cpu() || format == WeightFormat::F32 { format } else { WeightFormat::Bf16 };
    let model = TextModel::load(&path, format, &device)?;
    let load_s = loaded.elapsed().as_secs_f64();
    let opts = GenerateOptions { max_tokens, ..Default::default() };
    let (mut prompt_tokens, mut generated) = (0, 0);
    let started = Instant::now();
    let mut take = |g: distill_engine::Generation| {
        prompt_tokens += g.prompt_tokens;
        generated += g.tokens.len();
        g.text.trim().to_string()
    };
    let outputs: Vec<String> = pool.install(|| {
        if batch == 1 {
            prompts
                .iter()
                .map(|p| {
                    if !prefix_cache {
                        model.prefix.clear();
                    }
                    Ok(take(model.complete(p, &opts)?))
                })
                .collect::<distill_engine::Result<_>>()
        } else {
            let mut out = Vec::with_capacity(prompts.len());
            for chunk in prompts.chunks(batch) {
                let conversations: Vec<_> = chunk.iter().map(|p| vec![Message::user(p)]).collect();
                for g in model.chat_batch(&conversations, &opts, None)? {
                    out.push(take(g?));
                }
            }
            Ok(out)
        }
    })?;
    let secs = started.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "format": format!("{format:?}"),
        "device": distill_engine::device::device_name(&device),
        "prefix_cache": prefix_cache,
        "batch": batch,
        "rows": prompts.len(),
        "seconds": secs,
        "rows_per_s": prompts.len() as f64 / secs,
        "load_seconds": load_s,
        "prompt_tokens": prompt_tokens,
        "generated_tokens": generated,
        "outputs": outputs,
    });
    match arg("--out") {
        Some(f) => std::fs::write(f, report.to_string())?,
        None => println!("{report}"),
    }
    Ok(())
}
