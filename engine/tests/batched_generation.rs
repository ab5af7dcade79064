//! Batched decoding (`generate_batch`, `TextModel::chat_batch`) gives every row what generating it
//! alone gives: same tokens greedy and sampled, stop strings and response formats per row, and one
//! row's error its own.

mod common;

use distill_engine::infer::structured::ResponseFormat;
use distill_engine::{Error, GenerateOptions, Generation, Message};

const PROMPTS: [&str; 6] = [
    "Classify this support ticket: My phone bill has roaming charges from my trip to Spain.",
    "Classify this support ticket: I want to add a new line for my daughter.",
    "What is the capital of France?",
    "Write a haiku about databases.",
    "Classify this support ticket: Data is very slow since yesterday.",
    "Say yes.",
];

fn conversations() -> Vec<Vec<Message>> {
    PROMPTS.iter().map(|p| vec![Message::user(p)]).collect()
}

fn alone(opts: &GenerateOptions) -> Vec<Generation> {
    let m = common::smollm2();
    conversations().iter().map(|c| m.chat_with(c, opts, None).unwrap()).collect()
}

fn together(opts: &GenerateOptions) -> Vec<Generation> {
    let m = common::smollm2();
    m.chat_batch(&conversations(), opts, None).unwrap().into_iter().map(Result::unwrap).collect()
}

fn same(a: &[Generation], b: &[Generation]) {
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.tokens, y.tokens, "{:?} vs {:?}", x.text, y.text);
        assert_eq!((&x.text, x.finish_reason, x.prompt_tokens), (&y.text, y.finish_reason, y.prompt_tokens));
    }
    assert_eq!(a.len(), b.len());
}

#[test]
fn greedy_rows_decoded_together_equal_rows_decoded_alone() {
    let opts = GenerateOptions { max_tokens: 40, ..Default::default() };
    let (a, b) = (alone(&opts), together(&opts));
    same(&a, &b);
    // Rows finish at different steps, and the others go on.
    assert!(b.iter().any(|g| g.tokens.len() < 40) && b.iter().any(|g| g.tokens.len() == 40), "{b:?}");
}

#[test]
fn sampled_rows_keep_their_own_seeded_sampler() {
    let opts = GenerateOptions { max_tokens: 10, temperature: 0.9, seed: 7, ..Default::default() };
    same(&alone(&opts), &together(&opts));
}

#[test]
fn stop_strings_and_response_formats_apply_per_row() {
    let opts = GenerateOptions { max_tokens: 20, stop: vec![".".into(), "\n".into()], ..Default::default() };
    same(&alone(&opts), &together(&opts));
    let schema = serde_json::json!({"type": "object", "properties": {"topic": {"type": "string", "maxLength": 20}},
                                     "required": ["topic"], "additionalProperties": false});
    let opts = GenerateOptions {
        max_tokens: 40,
        response_format: Some(ResponseFormat::Json { schema: Some(schema) }),
        ..Default::default()
    };
    same(&alone(&opts), &together(&opts));
}

#[test]
fn one_rows_error_is_its_own() {
    let m = common::smollm2();
    let context = m.llama.config.max_position_embeddings;
    let long = "word ".repeat(context + 10);
    let mut convs = conversations();
    convs.insert(2, vec![Message::user(&long)]);
    let opts = GenerateOptions { max_tokens: 6, ..Default::default() };
    let out = m.chat_batch(&convs, &opts, None).unwrap();
    assert!(matches!(out[2], Err(Error::PromptTooLong { .. })), "{:?}", out[2].as_ref().map(|g| &g.text));
    let ok: Vec<Generation> = out.into_iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, r)| r.unwrap()).collect();
    same(&alone(&opts), &ok);
}
