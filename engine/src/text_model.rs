//! A loaded chat model: weights, tokenizer and chat template from one GGUF file.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::error::Result;
use crate::formats::chat_template::{ChatTemplate, Message, CHATML_TEMPLATE};
use crate::formats::gguf::GgufFile;
use crate::formats::prepared::{BuildLock, PreparedWeights, SourceId};
use crate::formats::tokenizer::Tokenizer;
use crate::infer::generation::{generate_with, GenerateOptions, Generation};
use crate::infer::prefix_cache::PrefixCache;
use crate::infer::structured::{Structured, StructuredCell};
use crate::lora::LoraAdapter;
use crate::models::llama::{Llama, WeightFormat};

/// How a loaded model's linear weights are held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightSharing {
    /// Mapped read-only from the prepared file at `path`, one copy per machine in the page cache;
    /// `built` says why this load (re)wrote the file, when it did.
    Shared { path: PathBuf, built: Option<String> },
    /// This process's own copy, because the prepared file could not be used: why.
    Private { reason: String },
    /// Not asked for, or nothing to share: f32 weights (training), a checkpoint directory, a CPU
    /// without the int8 kernels (candle's own layout).
    Unshared,
}

pub struct TextModel {
    pub llama: Llama,
    /// Whether the weights are this process's own or shared through a prepared file.
    pub sharing: WeightSharing,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// Keys and values of recent prompts, reused by the next prompt's common prefix.
    pub prefix: PrefixCache,
    /// llguidance's view of the vocabulary, built on the first `response_format`.
    structured: StructuredCell,
}

impl TextModel {
    /// A GGUF file, or a Hugging Face checkpoint directory (config.json, safetensors, tokenizer.json).
    pub fn load(path: &Path, format: WeightFormat, device: &Device) -> Result<Self> {
        Self::load_with(path, format, device, None)
    }

    pub fn load_hf_dir(dir: &Path, format: WeightFormat, device: &Device) -> Result<Self> {
        let (tokenizer, source) = Tokenizer::from_hf_dir(dir)?;
        let source = source.unwrap_or_else(|| CHATML_TEMPLATE.to_string());
        let template = ChatTemplate::new(&source, &tokenizer.bos_token, &tokenizer.eos_token)?;
        let llama = Llama::from_hf_dir(dir, format, device)?;
        Ok(Self::new(llama, WeightSharing::Unshared, tokenizer, template))
    }

    fn new(llama: Llama, sharing: WeightSharing, tokenizer: Tokenizer, template: ChatTemplate) -> Self {
        Self {
            llama,
            sharing,
            tokenizer,
            template,
            prefix: PrefixCache::default(),
            structured: StructuredCell::default(),
        }
    }

    pub fn load_gguf(path: &Path, format: WeightFormat, device: &Device) -> Result<Self> {
        Self::load_gguf_with(path, format, device, None)
    }

    /// [`TextModel::load`] with the linear weights shared between processes where they can be: mapped
    /// from the prepared file beside a GGUF model (`formats/prepared.rs`), which this writes first when
    /// it is missing, stale or damaged; while another process writes it, this one waits for it
    /// (asking `cancelled` every 50 ms). Where it cannot be written (a read-only model directory), the
    /// model is loaded as [`TextModel::load`] loads it and `sharing` says why.
    pub fn load_shared(
        path: &Path,
        format: WeightFormat,
        device: &Device,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self> {
        Self::load_with(path, format, device, Some(cancelled))
    }

    /// A checkpoint directory (never shared), or a GGUF file, shared when `share` is given.
    fn load_with(path: &Path, format: WeightFormat, device: &Device, share: Option<&dyn Fn() -> bool>) -> Result<Self> {
        if path.is_dir() {
            Self::load_hf_dir(path, format, device)
        } else {
            Self::load_gguf_with(path, format, device, share)
        }
    }

    fn load_gguf_with(
        path: &Path,
        format: WeightFormat,
        device: &Device,
        share: Option<&dyn Fn() -> bool>,
    ) -> Result<Self> {
        let mut gguf = GgufFile::open(path)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let source = gguf.opt_str("tokenizer.chat_template").unwrap_or(CHATML_TEMPLATE).to_string();
        let template = ChatTemplate::new(&source, &tokenizer.bos_token, &tokenizer.eos_token)?;
        let (llama, sharing) = if let Some(cancelled) = share {
            shared_llama(&mut gguf, path, format, device, cancelled)?
        } else {
            (Llama::from_gguf(&mut gguf, format, device)?, WeightSharing::Unshared)
        };
        Ok(Self::new(llama, sharing, tokenizer, template))
    }

    /// The grammar compiler over this model's vocabulary (structured outputs).
    pub fn structured(&self) -> Result<&Structured> {
        self.structured.get(&self.tokenizer, self.llama.config.vocab_size)
    }

    /// Token ids of `messages` rendered with the chat template, ready for the assistant's turn.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.template.render(messages, true)?;
        self.tokenizer.encode_prompt(&text)
    }

    /// The assistant's reply to `messages`.
    pub fn chat(&self, messages: &[Message], opts: &GenerateOptions) -> Result<Generation> {
        self.chat_with(messages, opts, None)
    }

    /// [`chat`](Self::chat) with a LoRA adapter applied over these base weights (unmerged).
    pub fn chat_with(
        &self,
        messages: &[Message],
        opts: &GenerateOptions,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Generation> {
        let prompt = self.chat_prompt(messages)?;
        generate_with(self, &prompt, opts, adapter)
    }

    /// The reply to one user message, the way `distill.complete(model, prompt)` asks.
    pub fn complete(&self, prompt: &str, opts: &GenerateOptions) -> Result<Generation> {
        self.chat(&[Message::user(prompt)], opts)
    }

    /// The replies to many conversations, decoded together (see
    /// [`generate_batch`](crate::infer::generation::generate_batch)); a conversation that cannot be
    /// rendered or run has its own error.
    pub fn chat_batch(
        &self,
        conversations: &[Vec<Message>],
        opts: &GenerateOptions,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Vec<Result<Generation>>> {
        let prompts: Vec<Result<Vec<u32>>> = conversations.iter().map(|m| self.chat_prompt(m)).collect();
        let ok: Vec<Vec<u32>> = prompts.iter().filter_map(|p| p.as_ref().ok().cloned()).collect();
        let mut done = crate::infer::generation::generate_batch(self, &ok, opts, adapter)?.into_iter();
        Ok(prompts.into_iter().map(|p| p.and_then(|_| done.next().expect("one result per prompt"))).collect())
    }

    /// Which of `choices` the model answers to one user message (see [`crate::infer::choices`]).
    pub fn choose_with(
        &self,
        prompt: &str,
        choices: &[String],
        scores: bool,
        adapter: Option<&LoraAdapter>,
    ) -> Result<crate::infer::choices::Choice> {
        self.choose_chat(&[Message::user(prompt)], choices, scores, adapter)
    }

    /// Which of `choices` the assistant's reply to `messages` is.
    pub fn choose_chat(
        &self,
        messages: &[Message],
        choices: &[String],
        scores: bool,
        adapter: Option<&LoraAdapter>,
    ) -> Result<crate::infer::choices::Choice> {
        let ids = self.chat_prompt(messages)?;
        crate::infer::choices::choose(self, &ids, choices, scores, adapter)
    }

    /// Tokens of `text` alone (no chat template, no special tokens added).
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.tokenizer.encode(text)?.len())
    }

    /// [`complete`](Self::complete) through a fine-tuned adapter of this base model.
    pub fn complete_with(
        &self,
        prompt: &str,
        opts: &GenerateOptions,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Generation> {
        self.chat_with(&[Message::user(prompt)], opts, adapter)
    }
}

/// The Llama of `gguf` with its linear weights mapped from the prepared file beside `path`, writing
/// that file first when it is missing, stale or damaged (from a private load, dropped once written).
fn shared_llama(
    gguf: &mut GgufFile,
    path: &Path,
    format: WeightFormat,
    device: &Device,
    cancelled: &dyn Fn() -> bool,
) -> Result<(Llama, WeightSharing)> {
    let name = match format {
        WeightFormat::Quantized => "quantized",
        WeightFormat::Q8_0 => "q8_0",
        WeightFormat::F32 | WeightFormat::Bf16 => {
            return Ok((Llama::from_gguf(gguf, format, device)?, WeightSharing::Unshared))
        }
    };
    if !device.is_cpu() || !crate::kernels::available() {
        return Ok((Llama::from_gguf(gguf, format, device)?, WeightSharing::Unshared));
    }
    let source = SourceId::of(path)?;
    let prepared = PreparedWeights::path_for(path, name);
    let open = |gguf: &mut GgufFile| -> Result<std::result::Result<Llama, String>> {
        Ok(match PreparedWeights::open(&prepared, &source, name) {
            Ok(mut p) => Ok(Llama::from_gguf_prepared(gguf, format, device, Some(&mut p))?),
            Err(why) => Err(why.to_string()),
        })
    };
    if let Ok(llama) = open(gguf)? {
        return Ok((llama, WeightSharing::Shared { path: prepared.clone(), built: None }));
    }
    // One writer at a time; whoever waited finds the file its writer made.
    let _lock = BuildLock::acquire(&prepared, cancelled)?;
    let why = match open(gguf)? {
        Ok(llama) => return Ok((llama, WeightSharing::Shared { path: prepared.clone(), built: None })),
        Err(why) => why,
    };
    let private = Llama::from_gguf(gguf, format, device)?;
    if let Err(e) = PreparedWeights::write(&prepared, &source, name, &private.quant_weights()) {
        let reason = format!("cannot write {}: {e}", prepared.display());
        return Ok((private, WeightSharing::Private { reason }));
    }
    drop(private);
    match open(gguf)? {
        Ok(llama) => Ok((llama, WeightSharing::Shared { path: prepared.clone(), built: Some(why) })),
        Err(e) => {
            let reason = format!("{} was written but cannot be used: {e}", prepared.display());
            Ok((Llama::from_gguf(gguf, format, device)?, WeightSharing::Private { reason }))
        }
    }
}
