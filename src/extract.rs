//! `distill.extract(model, text, NULL::some_type [, options])`: a row of a composite type filled from
//! free text. The type's JSON schema (src/type_schema.rs) constrains decoding, so the reply always
//! parses; `jsonb_populate_record` (in the SQL wrapper, sql/views.sql) turns it into the typed row,
//! so a value the type refuses (a domain's CHECK) is Postgres's own error.

use distill_engine::infer::structured::ResponseFormat;
use distill_engine::{GenerateOptions, Message};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;

use crate::complete::{check_input_size, check_model_name, reply, Request};
use crate::errors::{invalid, OrReport};
use crate::model_cache;
use crate::type_schema;

/// The JSON object `extract()` fills its row from; `type` names a composite type.
#[pg_extern(volatile, parallel_safe)]
fn extract_json(model: &str, input: &str, r#type: pg_sys::Oid, options: default!(JsonB, "'{}'")) -> JsonB {
    JsonB(extract(model, input, r#type, options.0))
}

/// Options: `complete()`'s generation options, `"nulls": false` (every field must get a value),
/// `"max_items"` (the most elements of an array column, default 10),
/// `"instruction"` (replaces the instruction a base model is given). A base model is told the fields
/// (with their COMMENTs); a tuned model gets `input` as it is, the prompt it was trained on.
fn extract(model: &str, input: &str, type_oid: pg_sys::Oid, options: Value) -> Value {
    check_model_name(model);
    check_input_size("text", input.len());
    if input.trim().is_empty() {
        invalid("text is empty");
    }
    let Value::Object(mut options) = options else { invalid("options must be a JSON object") };
    let nulls = match options.remove("nulls") {
        None => true,
        Some(Value::Bool(b)) => b,
        Some(_) => invalid("nulls must be true or false"),
    };
    let max_items = match options.remove("max_items") {
        None => 10,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=1000) => n as usize,
            _ => invalid("max_items must be a whole number from 1 to 1000"),
        },
    };
    let instruction = match options.remove("instruction") {
        None => None,
        Some(Value::String(s)) => {
            check_input_size("instruction", s.len());
            Some(s)
        }
        Some(_) => invalid("instruction must be a string"),
    };
    if let Some(k) = ["response_format", "choices", "scores", "stop"].iter().find(|k| options.contains_key(**k)) {
        invalid(format!("option \"{k}\" does not apply to extract() (the type decides the reply's shape)"));
    }
    let ts = type_schema::for_type(type_oid, nulls, max_items);
    let mut opts: GenerateOptions =
        serde_json::from_value(Value::Object(options)).unwrap_or_else(|e| invalid(format!("invalid options: {e}")));
    opts.response_format = Some(ResponseFormat::Json { schema: Some(ts.schema) });
    opts.validate().or_report();
    let prompt = if model_cache::is_tuned(model).or_report() && instruction.is_none() {
        input.to_string()
    } else {
        let head = instruction.unwrap_or_else(|| {
            let empty = if nulls { " Use null for a field the text does not give." } else { "" };
            format!("Extract these fields from the text and reply with a JSON object.{empty}")
        });
        format!("{head}\nFields:\n{}\n\nText: {input}", ts.fields.join("\n"))
    };
    let r = reply(model, &[Message::user(&prompt)], &Request::Generate(opts));
    // The grammar guarantees this; an error here would be an engine bug, said plainly.
    serde_json::from_str(&r.text)
        .unwrap_or_else(|e| invalid(format!("the reply for {} is not JSON ({e}): {}", ts.type_name, r.text)))
}
