//! The GGUF-built tokenizer reproduces the reference ids (HF transformers and llama.cpp agree on them).
mod common;

#[test]
fn reproduces_reference_ids() {
    let model = common::smollm2();
    let fixture = common::fixture("smollm2_tokenizer_reference.json");
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = model.tokenizer.encode(text).unwrap();
        assert_eq!(got, want, "ids of {text:?}");
    }
}

#[test]
fn decode_inverts_encode() {
    let model = common::smollm2();
    for text in ["Hello world!", "Ünïcödé 日本語 🙂 12345", "  two  spaces  "] {
        let ids = model.tokenizer.encode(text).unwrap();
        assert_eq!(model.tokenizer.decode(&ids).unwrap(), text);
    }
}

#[test]
fn special_tokens_and_stop_ids_come_from_the_file() {
    let t = &common::smollm2().tokenizer;
    assert_eq!(t.eos_token, "<|im_end|>");
    assert_eq!(t.eos_id, 2);
    assert!(t.is_stop(2));
    assert!(!t.add_bos);
}
