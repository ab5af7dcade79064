//! The tokenizer, built from the vocabulary and merges stored inside a GGUF file.
//!
//! We assemble a Hugging Face `tokenizers::Tokenizer` (BPE model, byte-level pre-tokenizer and decoder)
//! rather than writing BPE by hand: it is the reference implementation the checkpoints were trained with.
//! candle's `TokenizerFromGguf` ignores `tokenizer.ggml.pre` and so gives wrong ids for SmolLM (digits).

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Llama 3's split regex (its tokenizer.json `pre_tokenizer`); also used by SmolLM3 and others.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex: like Llama 3's but one digit per piece.
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: u32,
    /// Tokens that end generation: EOS plus end-of-turn tokens when the file names them.
    pub stop_ids: Vec<u32>,
    pub add_bos: bool,
    pub bos_token: String,
    pub eos_token: String,
}

impl Tokenizer {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf.opt_str("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" {
            return Err(Error::Unsupported(format!(
                "tokenizer model \"{model}\" (only byte-level BPE, \"gpt2\", is supported in GGUF files)"
            )));
        }
        let tokens = gguf.str_array("tokenizer.ggml.tokens")?;
        let merges = gguf.str_array("tokenizer.ggml.merges")?;
        let types = gguf.int_array("tokenizer.ggml.token_type").unwrap_or_default();
        let pre = gguf.opt_str("tokenizer.ggml.pre").unwrap_or("default");

        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::Tokenizer(format!("malformed merge \"{m}\"")))
            })
            .collect::<Result<_>>()?;

        // Llama 3 style tokenizers look whole words up in the vocabulary before merging.
        let ignore_merges = matches!(pre, "llama-bpe" | "llama3" | "smollm3");
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);

        let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
            Ok(Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)?.into())
        };
        let byte_level = |use_regex| PreTokenizerWrapper::from(ByteLevel::new(false, true, use_regex));
        let pre_tokenizer = match pre {
            // SmolLM/SmolLM2: each digit is its own token, then GPT-2's byte-level split, no prefix space.
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true)]),
            "gpt2" | "default" | "gpt-2" => Sequence::new(vec![byte_level(true)]),
            "llama-bpe" | "llama3" | "smollm3" => Sequence::new(vec![split(LLAMA3_PATTERN)?, byte_level(false)]),
            "qwen2" => {
                inner.with_normalizer(Some(NFC))?;
                Sequence::new(vec![split(QWEN2_PATTERN)?, byte_level(false)])
            }
            other => {
                return Err(Error::Unsupported(format!("pre-tokenizer \"{other}\" (tokenizer.ggml.pre)")));
            }
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        // Control tokens (<|im_start|>, ...) are matched in text as single special tokens, as HF and llama.cpp do.
        let added: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
            .map(|(i, &t)| AddedToken::from(tokens[i].to_string(), t == TOKEN_TYPE_CONTROL).normalized(false))
            .collect();
        inner.add_special_tokens(added)?;

        let id = |key: &str| gguf.opt_u64(key).map(|v| v as u32).filter(|&v| (v as usize) < tokens.len());
        let eos_id = id("tokenizer.ggml.eos_token_id")
            .ok_or_else(|| Error::Tokenizer("tokenizer.ggml.eos_token_id is missing".into()))?;
        let bos_id = id("tokenizer.ggml.bos_token_id");
        let mut stop_ids = vec![eos_id];
        if let Some(eot) = id("tokenizer.ggml.eot_token_id") {
            if eot != eos_id {
                stop_ids.push(eot);
            }
        }
        let text_of = |id: Option<u32>| id.map(|i| tokens[i as usize].to_string()).unwrap_or_default();
        Ok(Self {
            inner,
            bos_id,
            eos_id,
            stop_ids,
            add_bos: gguf.opt_bool("tokenizer.ggml.add_bos_token").unwrap_or(false) && bos_id.is_some(),
            bos_token: text_of(bos_id),
            eos_token: text_of(Some(eos_id)),
        })
    }

    /// From a Hugging Face checkpoint directory (`tokenizer.json`, `tokenizer_config.json`, optionally
    /// `generation_config.json`); also returns the chat template the config carries.
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<(Self, Option<String>)> {
        let inner = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))?;
        let read = |name: &str| -> serde_json::Value {
            std::fs::read_to_string(dir.join(name)).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default()
        };
        let cfg = read("tokenizer_config.json");
        // Special tokens are written either as a string or as {"content": ...}.
        let token = |v: &serde_json::Value| v.as_str().or_else(|| v["content"].as_str()).map(String::from);
        let eos_token = token(&cfg["eos_token"])
            .ok_or_else(|| Error::Tokenizer("tokenizer_config.json names no eos_token".into()))?;
        let eos_id = inner
            .token_to_id(&eos_token)
            .ok_or_else(|| Error::Tokenizer(format!("eos_token {eos_token} is not in the vocabulary")))?;
        let bos_token = token(&cfg["bos_token"]).unwrap_or_default();
        let bos_id = inner.token_to_id(&bos_token);
        let mut stop_ids = vec![eos_id];
        let gen = read("generation_config.json");
        let extra: Vec<u32> = match &gen["eos_token_id"] {
            serde_json::Value::Number(n) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_u64().map(|v| v as u32)).collect(),
            _ => vec![],
        };
        for id in extra {
            if !stop_ids.contains(&id) {
                stop_ids.push(id);
            }
        }
        let template = match &cfg["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(list) => {
                list.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str().map(String::from))
            }
            _ => None,
        };
        let tokenizer = Self {
            inner,
            bos_id,
            eos_id,
            stop_ids,
            add_bos: cfg["add_bos_token"].as_bool().unwrap_or(false) && bos_id.is_some(),
            bos_token,
            eos_token,
        };
        Ok((tokenizer, template))
    }

    /// Token ids of `text`; special tokens written in the text are parsed as such. No BOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode_fast(text, false)?.get_ids().to_vec())
    }

    /// Ids for a rendered chat prompt: BOS is prepended when the model wants it and the template did not.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        if let (true, Some(bos)) = (self.add_bos, self.bos_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(self.inner.decode(ids, true)?)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }
    /// The bytes each token id stands for, as llguidance's token trie wants them: byte-level BPE
    /// symbols mapped back to bytes (GPT-2's table), special tokens as their name after toktrie's
    /// marker byte (so no text can produce them). `vocab` pads ids the tokenizer lacks (a model's
    /// embedding may have more rows than its vocabulary) as special tokens.
    ///
    /// Written here rather than taken from `toktrie_hf_tokenizers`: that crate pins tokenizers 0.21,
    /// a second copy of the whole tokenizer library beside ours (0.23) for these few lines.
    pub(crate) fn token_bytes(&self, vocab: usize) -> Vec<Vec<u8>> {
        let mut to_byte = std::collections::HashMap::new();
        let mut next = 0x100u32;
        for b in 0..=255u8 {
            let c = b as char;
            if matches!(c, '!'..='~' | '\u{A1}'..='\u{AC}' | '\u{AE}'..='\u{FF}') {
                to_byte.insert(c, b);
            } else {
                to_byte.insert(char::from_u32(next).expect("a BMP code point"), b);
                next += 1;
            }
        }
        let special: std::collections::HashSet<u32> =
            self.inner.get_added_tokens_decoder().into_iter().filter(|(_, t)| t.special).map(|(id, _)| id).collect();
        let special_name = |name: &str| {
            let mut bytes = vec![llguidance::toktrie::TokTrie::SPECIAL_TOKEN_MARKER];
            bytes.extend_from_slice(name.as_bytes());
            bytes
        };
        (0..vocab as u32)
            .map(|id| match self.inner.id_to_token(id) {
                Some(name) if special.contains(&id) => special_name(&name),
                // A symbol outside the byte table (none in byte-level vocabularies) cannot be generated.
                Some(name) => {
                    name.chars().map(|c| to_byte.get(&c).copied()).collect::<Option<Vec<u8>>>().unwrap_or_default()
                }
                None => special_name(&format!("<[{id}]>")),
            })
            .collect()
    }

    /// Token ids of raw bytes (lossy for invalid UTF-8, which byte-level BPE text never is here).
    pub(crate) fn encode_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        self.inner
            .encode_fast(String::from_utf8_lossy(bytes).as_ref(), false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }
}
