//! The inference forward on the CPU: activations as plain rows between the matmuls (see
//! `infer/row_ops.rs` for why), keys and values appended to the [`KvCache`] in place.

use candle_core::Tensor;

use super::{KvCache, Linear, Llama};
use crate::error::{Error, Result};
use crate::infer::row_ops;
use crate::lora::{LoraAdapter, Target};

impl Llama {
    /// Runs `ids` (one sequence) after the positions already in `cache`, appends them to it, and returns
    /// the logits of the last position, shape `(vocab,)`.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        self.forward_with(ids, cache, None)
    }

    /// [`Llama::forward`] with a LoRA adapter applied.
    pub fn forward_with(&self, ids: &[u32], cache: &mut KvCache, adapter: Option<&LoraAdapter>) -> Result<Tensor> {
        let mut logits = self.forward_segments(ids, &mut [(cache, ids.len())], adapter)?;
        let logits = logits.pop().expect("one segment gives one row of logits");
        let n = logits.len();
        Ok(Tensor::from_vec(logits, n, &self.device)?)
    }

    /// One next token for each of several sequences at once (batched decoding): `ids[i]` runs after
    /// the positions in `caches[i]` and is appended to it. The matmuls see one row per sequence, so a
    /// single pass over the weights serves every sequence (the cost of a decoding step on the CPU is
    /// reading the weights); attention and RoPE stay per sequence. Returns each sequence's logits.
    pub fn forward_batch(
        &self,
        ids: &[u32],
        caches: &mut [&mut KvCache],
        adapter: Option<&LoraAdapter>,
    ) -> Result<Vec<Vec<f32>>> {
        if ids.len() != caches.len() {
            return Err(Error::InvalidInput(format!("{} tokens for {} sequences", ids.len(), caches.len())));
        }
        let mut segments: Vec<(&mut KvCache, usize)> = caches.iter_mut().map(|c| (&mut **c, 1)).collect();
        self.forward_segments(ids, &mut segments, adapter)
    }

    /// The one inference forward: `ids` is several sequences' new tokens one after the other, segment
    /// `s` being `segments[s].1` tokens that run after the positions in its cache and are appended to
    /// it. The matmuls run over all the rows at once; RoPE and attention per segment. Returns the
    /// logits of each segment's last token.
    fn forward_segments(
        &self,
        ids: &[u32],
        segments: &mut [(&mut KvCache, usize)],
        adapter: Option<&LoraAdapter>,
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let m = ids.len();
        if m == 0 || segments.iter().any(|(_, len)| *len == 0) {
            return Err(Error::InvalidInput("no tokens to run".into()));
        }
        if segments.iter().map(|(_, len)| len).sum::<usize>() != m {
            return Err(Error::InvalidInput(format!("{m} tokens do not fill the segments given")));
        }
        if let Some((cache, len)) = segments.iter().find(|(k, len)| k.len + len > c.max_position_embeddings) {
            return Err(Error::PromptTooLong { tokens: cache.len + len, context: c.max_position_embeddings });
        }
        if self.device_path {
            return self.forward_segments_device(ids, segments, adapter);
        }
        let d = c.head_dim;
        let (qw, kw) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        // Each segment's rotary rows, once for all layers.
        let ropes: Vec<(Vec<f32>, Vec<f32>)> = segments.iter().map(|(k, len)| self.rope.rows(k.len, *len)).collect();
        let mut x = self.token_embd.lookup(ids, &self.device)?.flatten_all()?.to_vec1::<f32>()?;
        for (i, b) in self.blocks.iter().enumerate() {
            let lora = |t: Target| adapter.and_then(|a| Some((a.get(i, t)?, a.config.scale())));
            let h = row_ops::rms_norm(&x, &b.attn_norm.values, b.attn_norm.eps);
            let qkv = [(&b.attn_q, lora(Target::Q)), (&b.attn_k, lora(Target::K)), (&b.attn_v, lora(Target::V))];
            let [mut q, mut k, v] = Linear::forward_rows_many(qkv, &h, m)?;
            let mut y = Vec::with_capacity(m * qw);
            let mut row = 0;
            for ((cache, len), (cos, sin)) in segments.iter_mut().zip(&ropes) {
                let (pos, len) = (cache.len, *len);
                let q = &mut q[row * qw..][..len * qw];
                let k = &mut k[row * kw..][..len * kw];
                row_ops::rope(q, c.num_attention_heads, d, 0, cos, sin, c.rope_interleaved);
                row_ops::rope(k, c.num_key_value_heads, d, 0, cos, sin, c.rope_interleaved);
                let (kc, vc) = &mut cache.rows[i];
                kc.extend_from_slice(k);
                vc.extend_from_slice(&v[row * kw..][..len * kw]);
                y.extend(row_ops::attention(q, kc, vc, len, pos, c.num_attention_heads, c.num_key_value_heads, d));
                row += len;
            }
            row_ops::add_in_place(&mut x, &b.attn_output.forward_rows(&y, m, lora(Target::O))?);
            let h = row_ops::rms_norm(&x, &b.ffn_norm.values, b.ffn_norm.eps);
            let [gate, up] =
                Linear::forward_rows_many([(&b.ffn_gate, lora(Target::Gate)), (&b.ffn_up, lora(Target::Up))], &h, m)?;
            let a = row_ops::silu_mul(&gate, &up);
            row_ops::add_in_place(&mut x, &b.ffn_down.forward_rows(&a, m, lora(Target::Down))?);
        }
        // Only each segment's last row goes through the output layer.
        let mut last = Vec::with_capacity(segments.len() * c.hidden_size);
        let mut end = 0;
        for (cache, len) in segments.iter_mut() {
            cache.len += *len;
            end += *len;
            last.extend_from_slice(&x[(end - 1) * c.hidden_size..][..c.hidden_size]);
        }
        let h = row_ops::rms_norm(&last, &self.output_norm.values, self.output_norm.eps);
        let logits = self.output.forward_rows(&h, segments.len(), None)?;
        Ok(logits.chunks(logits.len() / segments.len()).map(<[f32]>::to_vec).collect())
    }
}
