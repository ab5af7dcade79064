//! Structured outputs: decoding masked so that the reply always matches a JSON schema or a regex.
//!
//! llguidance (the structured-output engine of llama.cpp, vLLM and SGLang) compiles the schema into a
//! grammar and, before each token, computes the set of tokens that keep the text a valid prefix; the
//! sampler picks among those only, and end-of-turn is allowed only once the text is complete. So the
//! reply parses and validates by construction, greedy or sampled, base model or tuned.

use std::sync::{Arc, OnceLock};

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{InferenceCapabilities, SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::formats::tokenizer::Tokenizer;

/// `response_format` of `complete()`'s options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ResponseFormat {
    /// A JSON value valid under `schema` (any JSON object when there is none). The schema may also
    /// be a string holding the schema's JSON: it keeps the properties' order, which llguidance
    /// writes them in, where a schema inside a Postgres `jsonb` value has had its keys sorted.
    Json {
        #[serde(default)]
        schema: Option<Value>,
    },
    /// Text that the regex (Rust `regex` syntax) matches whole.
    Regex { pattern: String },
}

/// Schemas and patterns larger than this are refused before compiling (they are user input).
pub const MAX_FORMAT_BYTES: usize = 64 * 1024;

impl ResponseFormat {
    fn grammar(&self) -> Result<TopLevelGrammar> {
        let size = match self {
            ResponseFormat::Json { schema } => schema.as_ref().map_or(0, |s| s.to_string().len()),
            ResponseFormat::Regex { pattern } => pattern.len(),
        };
        if size > MAX_FORMAT_BYTES {
            return Err(Error::InvalidInput(format!(
                "response_format is {size} bytes long; the limit is {MAX_FORMAT_BYTES}"
            )));
        }
        Ok(match self {
            ResponseFormat::Json { schema } => {
                let mut schema = match schema {
                    None => json!({"type": "object"}),
                    // serde_json's preserve_order keeps the text's key order.
                    Some(Value::String(text)) => serde_json::from_str(text).map_err(|e| {
                        Error::InvalidInput(format!("response_format's schema is a string but not JSON: {e}"))
                    })?,
                    Some(v) => v.clone(),
                };
                let Value::Object(map) = &mut schema else {
                    return Err(Error::InvalidInput("response_format's schema must be a JSON object".into()));
                };
                // Compact JSON, as json.dumps writes it (and training completions usually are):
                // llguidance's default allows any whitespace between tokens, in which a small model
                // can wander until max_tokens. A schema's own "x-guidance" wins.
                map.entry("x-guidance").or_insert_with(
                    || json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
                );
                TopLevelGrammar::from_json_schema(schema)
            }
            ResponseFormat::Regex { pattern } => {
                // Checked here for a clear error: llguidance's own message on a bad regex is its parser's.
                regex_syntax::Parser::new()
                    .parse(pattern)
                    .map_err(|e| Error::InvalidInput(format!("response_format's pattern is not a valid regex: {e}")))?;
                TopLevelGrammar::from_regex(pattern)
            }
        })
    }
}

/// One model's vocabulary as llguidance sees it, and the factory that compiles grammars over it.
/// Built once per loaded model (the token trie of a 49k vocabulary takes tens of milliseconds).
pub struct Structured {
    factory: ParserFactory,
}

struct VocabEnv {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |s| self.tokenizer.encode_bytes(s.as_bytes()))
    }
}

impl Structured {
    /// `vocab` is the model's output size (its logits' length).
    pub fn new(tokenizer: &Tokenizer, vocab: usize) -> Result<Self> {
        let words = tokenizer.token_bytes(vocab);
        let mut info = TokRxInfo::new(vocab as u32, tokenizer.eos_id);
        info.tok_bos = tokenizer.bos_id;
        // Every token that ends the turn is an end of the structured reply too.
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&tokenizer.stop_ids);
        let env: TokEnv = Arc::new(VocabEnv { trie, tokenizer: tokenizer.clone() });
        let mut factory = ParserFactory::new(
            &env,
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| Error::Unsupported(format!("structured outputs for this vocabulary: {e}")))?;
        factory.quiet();
        // A backend's memory is shared with everything else: a fifth of the default lexer states
        // (each 1-2 kB), still far beyond what schemas of a few dozen fields need.
        *factory.limits_mut() = ParserLimits { max_lexer_states: 50_000, ..ParserLimits::default() };
        Ok(Self { factory })
    }

    /// A fresh matcher for one reply; a schema llguidance cannot compile (an unsupported keyword
    /// names itself in the message) is an error here, before any token is generated.
    pub fn matcher(&self, format: &ResponseFormat) -> Result<Constraint> {
        let parser = self.factory.create_parser(format.grammar()?).map_err(|e| bad_format(&e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(bad_format(&e));
        }
        Ok(Constraint { matcher })
    }
}

fn bad_format(message: &str) -> Error {
    Error::InvalidInput(format!("invalid response_format: {}", message.trim()))
}

/// The state of one constrained reply.
pub struct Constraint {
    matcher: Matcher,
}

impl Constraint {
    /// The tokens allowed next (end-of-turn tokens among them once the reply is complete).
    pub fn mask(&mut self) -> Result<SimpleVob> {
        self.matcher.compute_mask().map_err(|e| internal(&e.to_string()))
    }

    pub fn consume(&mut self, token: u32) -> Result<()> {
        self.matcher.consume_token(token).map_err(|e| internal(&e.to_string()))
    }

    /// The grammar allows no further token: the reply is complete.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

fn internal(message: &str) -> Error {
    Error::Unsupported(format!("structured decoding failed: {message}"))
}

/// Per-model lazy holder, so that models that never see a `response_format` never build the trie.
#[derive(Default)]
pub struct StructuredCell(OnceLock<std::result::Result<Structured, String>>);

impl StructuredCell {
    pub fn get(&self, tokenizer: &Tokenizer, vocab: usize) -> Result<&Structured> {
        self.0
            .get_or_init(|| Structured::new(tokenizer, vocab).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Unsupported(e.clone()))
    }
}
