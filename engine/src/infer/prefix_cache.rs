//! The keys and values of recent prompts, kept so that the next prompt computes only what it does
//! not share with one of them. Rows of one query usually start with the same instruction and differ
//! only in their own text, so a classification query over a table pays for the instruction once
//! (llama.cpp's server keeps a slot's cache the same way).
//!
//! One entry per adapter (the base model is one too), holding that adapter's last prompt; an adapter
//! still being trained is never cached (its weights change).

use parking_lot::Mutex;

use crate::infer::kv_cache::KvCache;
use crate::lora::LoraAdapter;
use crate::models::llama::Config;

/// Adapters remembered at once; the least recently used goes first.
const ENTRIES: usize = 4;

#[derive(Default)]
pub struct PrefixCache {
    /// (adapter id, 0 for none; prompt ids; their keys and values), most recently used last.
    entries: Mutex<Vec<(u64, Vec<u32>, KvCache)>>,
}

impl PrefixCache {
    /// A KV cache holding the longest prefix of `prompt` already computed with `adapter` (never the
    /// whole prompt: its last token must run to give the next token's logits), and its length.
    pub fn start(&self, config: &Config, prompt: &[u32], adapter: Option<&LoraAdapter>) -> KvCache {
        let Some(id) = key(adapter) else { return KvCache::new(config) };
        let entries = self.entries.lock();
        let Some((_, ids, cache)) = entries.iter().find(|(k, _, _)| *k == id) else {
            return KvCache::new(config);
        };
        let common = ids.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        cache.truncated(common.min(prompt.len().saturating_sub(1)))
    }

    /// Remembers `cache`, the keys and values of exactly `prompt`.
    pub fn keep(&self, prompt: &[u32], cache: &KvCache, adapter: Option<&LoraAdapter>) {
        let Some(id) = key(adapter) else { return };
        let mut entries = self.entries.lock();
        entries.retain(|(k, _, _)| *k != id);
        if entries.len() == ENTRIES {
            entries.remove(0);
        }
        entries.push((id, prompt.to_vec(), cache.clone()));
    }

    pub fn clear(&self) {
        self.entries.lock().clear();
    }
}

fn key(adapter: Option<&LoraAdapter>) -> Option<u64> {
    match adapter {
        None => Some(0),
        Some(a) if a.cache_id == 0 => None,
        Some(a) => Some(a.cache_id),
    }
}
