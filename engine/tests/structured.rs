//! Structured outputs: every reply under a `response_format` parses and validates (checked by the
//! `jsonschema` crate, a validator no one here wrote), greedy and sampled; bad schemas are errors that
//! name the problem; a reply cut by max_tokens is an error, not half a JSON value.

mod common;

use distill_engine::infer::structured::ResponseFormat;
use distill_engine::{GenerateOptions, Message};
use serde_json::{json, Value};

fn ask(prompt: &str, format: ResponseFormat, temperature: f64, seed: u64) -> distill_engine::Result<String> {
    let opts =
        GenerateOptions { max_tokens: 200, temperature, seed, response_format: Some(format), ..Default::default() };
    Ok(common::smollm2().chat(&[Message::user(prompt)], &opts)?.text)
}

fn json_format(schema: Value) -> ResponseFormat {
    ResponseFormat::Json { schema: Some(schema) }
}

/// The reply parses, and validates against `schema` with formats asserted.
fn check_valid(schema: &Value, reply: &str) -> Value {
    let value: Value = serde_json::from_str(reply).unwrap_or_else(|e| panic!("{reply:?} is not JSON: {e}"));
    let validator = jsonschema::options().should_validate_formats(true).build(schema).expect("a valid schema");
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{reply} fails {schema}: {errors:?}");
    value
}

/// Each schema feature the README lists, on the base model, greedy and sampled with two seeds.
#[test]
fn replies_validate_against_each_schema_feature() {
    let cases: Vec<(&str, Value)> = vec![
        (
            "Extract the customer's name, age and whether they are a member: Anna Berg, 34, member since 2019.",
            json!({"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 40},
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "member": {"type": "boolean"},
                "note": {"type": "string"}},
              "required": ["name", "age", "member"], "additionalProperties": false}),
        ),
        (
            "What kind of ticket is this: my roaming charges are wrong",
            json!({"type": "object", "properties": {
                "category": {"enum": ["billing", "roaming", "other"]},
                "version": {"const": 2},
                "urgent": {"type": ["boolean", "null"]}},
              "required": ["category", "version", "urgent"]}),
        ),
        (
            "When was the order placed and when did it ship? Ordered 3 March 2024, shipped the 5th at noon UTC.",
            json!({"type": "object", "properties": {
                "ordered": {"type": "string", "format": "date"},
                "shipped": {"type": "string", "format": "date-time"},
                "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
              "required": ["ordered", "shipped", "code"]}),
        ),
        (
            "Give the prices of three items on the menu.",
            json!({"type": "object", "properties": {
                "prices": {"type": "array", "items": {"type": "number", "minimum": 0.5, "maximum": 99.5},
                           "minItems": 2, "maxItems": 3}},
              "required": ["prices"]}),
        ),
        (
            "Describe the restaurant The Eagle near the river, a cheap pub.",
            json!({"$defs": {"place": {"type": "object", "properties": {
                        "area": {"enum": ["riverside", "city centre"]},
                        "near": {"anyOf": [{"type": "string", "maxLength": 30}, {"type": "null"}]}},
                      "required": ["area", "near"], "additionalProperties": false}},
                   "type": "object", "properties": {
                     "name": {"type": "string", "maxLength": 30},
                     "place": {"$ref": "#/$defs/place"},
                     "price": {"anyOf": [{"enum": ["cheap", "high"]}, {"type": "integer", "minimum": 1, "maximum": 5}]}},
                   "required": ["name", "place", "price"], "additionalProperties": false}),
        ),
    ];
    for (prompt, schema) in &cases {
        for (temperature, seed) in [(0.0, 42), (1.0, 1), (1.0, 2)] {
            let reply = ask(prompt, json_format(schema.clone()), temperature, seed)
                .unwrap_or_else(|e| panic!("{schema} at temperature {temperature}: {e}"));
            check_valid(schema, &reply);
        }
    }
}

#[test]
fn no_schema_means_a_json_object_and_regex_matches_whole() {
    let reply = ask("Say hello as JSON.", ResponseFormat::Json { schema: None }, 0.0, 42).unwrap();
    assert!(serde_json::from_str::<Value>(&reply).unwrap().is_object(), "{reply}");

    let pattern = "[A-Z]{3}-[0-9]{4}";
    for (temperature, seed) in [(0.0, 42), (1.0, 7)] {
        let reply =
            ask("Invent a ticket code.", ResponseFormat::Regex { pattern: pattern.into() }, temperature, seed).unwrap();
        let b = reply.as_bytes();
        assert!(
            b.len() == 8
                && b[..3].iter().all(u8::is_ascii_uppercase)
                && b[3] == b'-'
                && b[4..].iter().all(u8::is_ascii_digit),
            "{reply:?} does not match {pattern}"
        );
    }
}

#[test]
fn unsupported_keywords_and_bad_formats_are_errors_that_say_why() {
    let err = |format: ResponseFormat| ask("Hello", format, 0.0, 42).unwrap_err().to_string();
    // A keyword llguidance does not implement is named, never ignored.
    let e = err(json_format(json!({"type": "array", "items": {"type": "integer"}, "uniqueItems": true})));
    assert!(e.contains("uniqueItems"), "{e}");
    let e = err(json_format(json!({"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}})));
    assert!(e.contains("invalid response_format"), "{e}");
    let e = err(json_format(json!(["not", "an", "object"])));
    assert!(e.contains("must be a JSON object"), "{e}");
    let e = err(ResponseFormat::Regex { pattern: "[unclosed".into() });
    assert!(e.contains("not a valid regex"), "{e}");
    let big = "a".repeat(distill_engine::infer::structured::MAX_FORMAT_BYTES + 1);
    let e = err(ResponseFormat::Regex { pattern: big });
    assert!(e.contains("limit"), "{e}");
    // Options are checked as a whole: a stop string would cut a JSON value in half.
    let opts = GenerateOptions {
        stop: vec!["}".into()],
        response_format: Some(ResponseFormat::Json { schema: None }),
        ..Default::default()
    };
    let e = common::smollm2().complete("Hello", &opts).unwrap_err().to_string();
    assert!(e.contains("stop does not apply"), "{e}");
}

#[test]
fn a_reply_cut_by_max_tokens_is_an_error_not_half_a_value() {
    let opts = GenerateOptions {
        max_tokens: 3,
        response_format: Some(json_format(json!({"type": "object", "properties": {
            "summary": {"type": "string", "minLength": 20}}, "required": ["summary"]}))),
        ..Default::default()
    };
    let e = common::smollm2().complete("Summarise: the phone line is down.", &opts).unwrap_err().to_string();
    assert!(e.contains("raise max_tokens"), "{e}");
}

/// Masking removes tokens and never reorders the rest: under a regex that allows letters, the greedy
/// reply starts with the free reply's leading letters (the model's own picks while they were allowed).
#[test]
fn masking_only_removes_tokens() {
    let model = common::smollm2();
    let free = model
        .complete("Name a colour. Reply with one word.", &GenerateOptions { max_tokens: 8, ..Default::default() })
        .unwrap()
        .text;
    let opts = GenerateOptions {
        max_tokens: 12,
        response_format: Some(ResponseFormat::Regex { pattern: "[A-Za-z]+".into() }),
        ..Default::default()
    };
    let constrained = model.complete("Name a colour. Reply with one word.", &opts).unwrap().text;
    let first_word: String = free.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    assert!(!first_word.is_empty(), "{free:?}");
    assert!(constrained.starts_with(&first_word), "{constrained:?} vs free text {free:?}");
}

/// llguidance writes properties in the schema's order; a schema given as text keeps the order it was
/// written in (a jsonb value's keys arrive sorted, shortest first).
#[test]
fn a_schema_given_as_text_keeps_its_property_order() {
    let text = r#"{"type": "object", "properties": {"zeta": {"type": "integer", "minimum": 0, "maximum": 9},
        "alpha": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["zeta", "alpha"],
        "additionalProperties": false}"#;
    let reply = ask("Give two digits as JSON.", json_format(Value::String(text.into())), 0.0, 42).unwrap();
    assert!(reply.starts_with(r#"{"zeta": "#), "{reply}");
    check_valid(&serde_json::from_str(text).unwrap(), &reply);
    let e = ask("Hello", json_format(Value::String("{not json".into())), 0.0, 42).unwrap_err().to_string();
    assert!(e.contains("not JSON"), "{e}");
}
