//! What structured outputs cost per generated token: llguidance's mask (computing it, applying it to
//! the logits, and advancing the parser) timed apart from the model's forward pass, greedy, on two
//! schemas: the e2e_nlg restaurant slots (enums and strings) and a 24-field record with numbers,
//! dates, arrays and a nested object. The same prompts run free (no format) as the peer.
//!
//! cargo run -p distill-engine --example bench_structured -- [--threads N] [--rows N] [--model-dir DIR]

use std::path::PathBuf;
use std::time::Instant;

use distill_engine::infer::generation::prefill;
use distill_engine::infer::structured::ResponseFormat;
use distill_engine::{Message, ModelStore, TextModel, WeightFormat};
use serde_json::json;

fn main() -> distill_engine::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
    let threads: usize = arg("--threads").map(|v| v.parse().unwrap()).unwrap_or(2);
    let rows: usize = arg("--rows").map(|v| v.parse().unwrap()).unwrap_or(12);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = arg("--model-dir").map(PathBuf::from).unwrap_or_else(|| root.join("models"));
    let path = ModelStore::new(dir, false).resolve("smollm2-135m")?;
    let data = root.join("../shared/data/e2e_nlg/test.csv");
    let mut reader = csv::Reader::from_path(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    // Descriptions (the `ref` column) spread over the file.
    let texts: Vec<String> = reader.records().map(|r| r.unwrap()[3].to_string()).step_by(7).take(rows).collect();
    let pool = distill_engine::threads::pool(threads)?;
    let model = TextModel::load_gguf(&path, WeightFormat::Q8_0, &candle_core::Device::Cpu)?;

    // The e2e_nlg slots, as bench/e2e_sql.sh constrains its extraction replies.
    let e2e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("bench/e2e_schema.json"))?).unwrap();
    let mut wide = serde_json::Map::new();
    for i in 0..6 {
        wide.insert(format!("text_{i}"), json!({"type": "string", "maxLength": 30}));
        wide.insert(format!("count_{i}"), json!({"type": "integer", "minimum": 0, "maximum": 10000}));
        wide.insert(format!("date_{i}"), json!({"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]}));
        wide.insert(
            format!("tags_{i}"),
            json!({"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 2}),
        );
    }
    wide.insert("owner".into(), json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"], "additionalProperties": false}));
    let keys: Vec<String> = wide.keys().cloned().collect();
    let wide = json!({"type": "object", "properties": wide, "required": keys, "additionalProperties": false});

    println!("structured outputs: mask cost per generated token, {threads} threads, {} prompts from e2e_nlg test.csv, greedy, Q8_0 weights", texts.len());
    println!(
        "{:<24} {:>8} {:>12} {:>14} {:>14} {:>12} {:>12}",
        "schema", "tokens", "mask/fwd", "mask us/tok", "mask p99 us", "fwd ms/tok", "tok/s"
    );
    for (name, format) in [
        ("none (free text)", None),
        ("e2e slots (8 fields)", Some(ResponseFormat::Json { schema: Some(e2e) })),
        ("24 fields + nested", Some(ResponseFormat::Json { schema: Some(wide) })),
    ] {
        let (mut masks, mut forward, mut tokens, mut total) = (Vec::new(), 0.0, 0usize, 0.0);
        // Compiling once first keeps the vocabulary's one-time trie build out of the figures.
        if let Some(f) = &format {
            model.structured()?.matcher(f)?;
        }
        for text in &texts {
            let prompt = model
                .chat_prompt(&[Message::user(&format!("Extract the restaurant's details as JSON.\nText: {text}"))])?;
            let started = Instant::now();
            let mut constraint = format.as_ref().map(|f| model.structured().and_then(|s| s.matcher(f))).transpose()?;
            let (mut logits, mut cache) = pool.install(|| prefill(&model, &prompt, None))?;
            for _ in 0..200 {
                let mut l: Vec<f32> = logits.to_vec1()?;
                if let Some(c) = &mut constraint {
                    let t = Instant::now();
                    let mask = c.mask()?;
                    for (id, v) in l.iter_mut().enumerate() {
                        if !mask.is_allowed(id as u32) {
                            *v = f32::NEG_INFINITY;
                        }
                    }
                    masks.push(t.elapsed().as_secs_f64());
                }
                let next = l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap();
                if model.tokenizer.is_stop(next) {
                    break;
                }
                tokens += 1;
                if let Some(c) = &mut constraint {
                    let t = Instant::now();
                    c.consume(next)?;
                    *masks.last_mut().unwrap() += t.elapsed().as_secs_f64();
                    if c.is_finished() {
                        break;
                    }
                }
                let t = Instant::now();
                logits = pool.install(|| model.llama.forward_with(&[next], &mut cache, None))?;
                forward += t.elapsed().as_secs_f64();
            }
            total += started.elapsed().as_secs_f64();
        }
        masks.sort_by(f64::total_cmp);
        let mean = if masks.is_empty() { 0.0 } else { masks.iter().sum::<f64>() / masks.len() as f64 };
        let p99 = masks.get(masks.len().saturating_sub(1) * 99 / 100).copied().unwrap_or(0.0);
        let fwd = forward / tokens.max(1) as f64;
        println!(
            "{:<24} {:>8} {:>11.1}% {:>14.0} {:>14.0} {:>12.2} {:>12.1}",
            name,
            tokens,
            100.0 * mean / fwd,
            mean * 1e6,
            p99 * 1e6,
            fwd * 1e3,
            tokens as f64 / total
        );
    }
    Ok(())
}
