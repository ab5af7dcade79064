//! The keys and values of the positions a sequence has seen, per layer: as rows that grow in place
//! (the CPU path) or as tensors on the model's device (the device path, `models/llama/device_path.rs`).

use candle_core::Tensor;

use crate::error::Result;
use crate::models::llama::Config;

/// Keys and values of the positions seen so far: per layer, rows of `kv_heads * head_dim` that grow in
/// place (appending a token copies only its own row); on the device path, `(positions, kv_heads,
/// head_dim)` tensors instead, one model using one or the other.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(crate) rows: Vec<(Vec<f32>, Vec<f32>)>,
    pub(crate) tensors: Vec<Option<(Tensor, Tensor)>>,
    pub(crate) len: usize,
}

impl KvCache {
    pub fn new(config: &Config) -> Self {
        Self { rows: vec![Default::default(); config.num_hidden_layers], tensors: Vec::new(), len: 0 }
    }

    /// Appends `k`, `v` `(new positions, kv_heads, head_dim)` to layer `layer`'s tensors and returns
    /// the layer's keys and values so far.
    pub(crate) fn append_tensors(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        if self.tensors.len() <= layer {
            self.tensors.resize(layer + 1, None);
        }
        let kv = match self.tensors[layer].take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 0)?, Tensor::cat(&[&pv, &v], 0)?),
            None => (k.contiguous()?, v.contiguous()?),
        };
        self.tensors[layer] = Some(kv.clone());
        Ok(kv)
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
        self.tensors = Self::narrowed(&self.tensors, len);
        self.len = len;
    }
    /// A copy of the first `len` positions only.
    pub fn truncated(&self, len: usize) -> Self {
        if len >= self.len {
            return self.clone();
        }
        let keep = |r: &Vec<f32>| r[..r.len() / self.len * len].to_vec();
        Self {
            rows: self.rows.iter().map(|(k, v)| (keep(k), keep(v))).collect(),
            tensors: Self::narrowed(&self.tensors, len),
            len,
        }
    }

    /// The first `len` positions of each layer's tensors (views: appending makes new tensors).
    fn narrowed(tensors: &[Option<(Tensor, Tensor)>], len: usize) -> Vec<Option<(Tensor, Tensor)>> {
        let keep = |t: &Tensor| t.narrow(0, 0, len).expect("the cache holds more than len positions");
        tensors.iter().map(|kv| kv.as_ref().map(|(k, v)| (keep(k), keep(v)))).collect()
    }
}
