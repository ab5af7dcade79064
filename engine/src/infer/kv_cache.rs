//! The keys and values of the positions a sequence has seen, per layer, as rows that grow in place.

use crate::models::llama::Config;

/// Keys and values of the positions seen so far: per layer, rows of `kv_heads * head_dim` that grow in
/// place (appending a token copies only its own row).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(crate) rows: Vec<(Vec<f32>, Vec<f32>)>,
    pub(crate) len: usize,
}

impl KvCache {
    pub fn new(config: &Config) -> Self {
        Self { rows: vec![Default::default(); config.num_hidden_layers], len: 0 }
    }
    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Drops the positions from `len` on, in place (nothing when it holds no more): scoring choices
    /// runs one branch after another from the same prompt (`choices::log_probs`).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        // Each layer's rows hold `self.len` positions of equal width (`self.len > len >= 0` here).
        for (k, v) in &mut self.rows {
            let width = k.len() / self.len;
            k.truncate(width * len);
            v.truncate(width * len);
        }
        self.len = len;
    }
    /// A copy of the first `len` positions only.
    pub fn truncated(&self, len: usize) -> Self {
        if len >= self.len {
            return self.clone();
        }
        let keep = |r: &Vec<f32>| r[..r.len() / self.len * len].to_vec();
        Self { rows: self.rows.iter().map(|(k, v)| (keep(k), keep(v))).collect(), len }
    }
}
