//! The engine's side of the PEFT round trip (`bench/peft_roundtrip.sh`): for each prompt, the token
//! ids `complete()` would run and the next-token logits with a PEFT adapter zip applied, as JSON.
//!
//! cargo run -p distill-engine --example adapter_logits -- --gguf MODEL.gguf --adapter A.zip \
//!     --prompts prompts.json > logits.json

use std::path::PathBuf;

use candle_core::Device;
use distill_engine::models::llama::KvCache;
use distill_engine::{LoraAdapter, Message, TextModel, WeightFormat};

fn main() -> distill_engine::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        let i = args.iter().position(|a| a == name).unwrap_or_else(|| panic!("{name} is required"));
        args[i + 1].clone()
    };
    // f32 weights: the same numbers the Hugging Face checkpoint dequantized from this GGUF holds.
    let model = TextModel::load(&PathBuf::from(arg("--gguf")), WeightFormat::F32, &Device::Cpu)?;
    let adapter = LoraAdapter::from_archive(&std::fs::read(arg("--adapter"))?, &model.llama.config, u64::MAX)?;
    let prompts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(arg("--prompts"))?).expect("a JSON list of strings");
    let mut out = Vec::new();
    for prompt in &prompts {
        let ids = model.chat_prompt(&[Message::user(prompt)])?;
        let mut cache = KvCache::new(&model.llama.config);
        let logits = model.llama.forward_with(&ids, &mut cache, Some(&adapter))?;
        let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        out.push(serde_json::json!({"prompt": prompt, "ids": ids, "logits": logits}));
    }
    println!("{}", serde_json::Value::Array(out));
    Ok(())
}
