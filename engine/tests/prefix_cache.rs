//! Reusing the keys and values of a previous prompt's common prefix changes nothing but the time.

mod common;

use distill_engine::infer::generation::{generate, prefill};
use distill_engine::models::llama::KvCache;
use distill_engine::{GenerateOptions, Message, WeightFormat};

fn prompt(m: &distill_engine::TextModel, request: &str) -> Vec<u32> {
    let text = format!("Classify this customer request into one of: Add new line, Closing account, Roaming fees, Slow data speed. Reply with the category only.\nRequest: {request}");
    m.chat_prompt(&[Message::user(&text)]).unwrap()
}

#[test]
fn shared_prefix_gives_the_same_logits_and_text() {
    for format in [WeightFormat::Quantized, WeightFormat::F32] {
        let m = common::smollm2_with(format);
        let a = prompt(&m, "I was charged for roaming in Spain.");
        let b = prompt(&m, "My data is slow since Monday.");
        let common_len = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        assert!(common_len > 20, "the prompts share the instruction ({common_len} tokens)");

        // Fresh: the whole prompt in one pass.
        let mut fresh = KvCache::new(&m.llama.config);
        let want = m.llama.forward_with(&b, &mut fresh, None).unwrap().to_vec1::<f32>().unwrap();

        // After `a`, `b` runs only its own tokens.
        prefill(&m, &a, None).unwrap();
        let (logits, cache) = prefill(&m, &b, None).unwrap();
        assert_eq!(cache.len(), b.len());
        let got = logits.to_vec1::<f32>().unwrap();
        let diff = want.iter().zip(&got).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-3, "{format:?}: max logit difference {diff}");

        // The same prompt twice, and generation after a shared prefix, match a cold model.
        let opts = GenerateOptions { max_tokens: 8, ..Default::default() };
        let warm = generate(&m, &b, &opts).unwrap();
        let again = generate(&m, &b, &opts).unwrap();
        m.prefix.clear();
        let cold = generate(&m, &b, &opts).unwrap();
        assert_eq!(warm.text, cold.text);
        assert_eq!(again.text, cold.text);
    }
}
