//! The forward for CUDA: inference over the KV cache and training over a packed batch, written with
//! candle's own ops so that they run on any device candle has. The tests run this path on the CPU
//! against the CPU path (`infer.rs`, `train_step.rs`: plain rows and hand-written kernels, faster
//! there), so what CUDA runs is what the CPU checks.
//!
//! Precision: frozen weights are held in bf16 on a GPU (f32 when loaded so, as the tests do); their
//! matmuls run in that dtype. The residual stream, norms, rotary embedding, attention and the
//! adapters are f32: rounding a weight to bf16's 8-bit mantissa costs little, rounding a running sum
//! would not. Training attention is one masked matmul over the whole packed batch (`(heads, m, m)`
//! scores with the mask of [`PackedBatch`]: each token sees its own sequence's earlier tokens and the
//! segment it continues): few kernel launches, at a cost quadratic in the batch's tokens.

use candle_core::{DType, Device, Tensor, D};

use super::{KvCache, Linear, Llama, PackedBatch, RmsNorm};
use crate::error::{Error, Result};
use crate::lora::{LoraAdapter, LoraPair, Target};
use crate::train::dropout::Dropout;
use crate::train::frozen_matmul::frozen_matmul;

/// `x Wᵀ + b + scale B A x` for `x (m, in)` f32: the frozen product in the weight's dtype.
fn linear(l: &Linear, x: &Tensor, lora: Option<(&LoraPair, f64)>, dropout: Option<&mut Dropout>) -> Result<Tensor> {
    let w = l.dense()?;
    let mut y = frozen_matmul(&x.to_dtype(w.dtype())?, w)?.to_dtype(DType::F32)?;
    if let Some(b) = &l.bias {
        y = y.broadcast_add(&b.to_dtype(DType::F32)?)?;
    }
    if let Some((p, scale)) = lora {
        let x = match dropout {
            Some(d) => d.apply(x)?,
            None => x.clone(),
        };
        let (a, b) = (p.a.to_device(x.device())?, p.b.to_device(x.device())?);
        y = (y + (x.matmul(&a.t()?)?.matmul(&b.t()?)? * scale)?)?;
    }
    Ok(y)
}

/// `x / rms(x) * w` over the last dimension.
fn rms_norm(x: &Tensor, n: &RmsNorm) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + n.eps as f64)?.sqrt()?)?.broadcast_mul(&n.weight)?)
}

/// Rotates `x (t, heads, d)` by the angles `cos`, `sin` `(t, d/2)`: pairs `(2j, 2j+1)` when interleaved
/// (GGUF Llama), else halves `(j, j + d/2)`; as `row_ops::rope` does.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    let (t, heads, d) = x.dims3()?;
    let half = d / 2;
    let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
    let (x0, x1) = if interleaved {
        let x = x.reshape((t, heads, half, 2))?;
        (x.narrow(3, 0, 1)?.squeeze(3)?, x.narrow(3, 1, 1)?.squeeze(3)?)
    } else {
        (x.narrow(2, 0, half)?, x.narrow(2, half, half)?)
    };
    let r0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let r1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Ok(if interleaved { Tensor::stack(&[r0, r1], 3)?.reshape((t, heads, d))? } else { Tensor::cat(&[r0, r1], 2)? })
}

/// `(t, kv_heads, d)` as `(heads, t, d)`: query head `h` reads key/value head `h / (heads / kv_heads)`.
fn expand_kv(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (t, kv_heads, d) = x.dims3()?;
    let x = x.transpose(0, 1)?;
    if kv_heads == heads {
        return Ok(x.contiguous()?);
    }
    Ok(x.unsqueeze(1)?.expand((kv_heads, heads / kv_heads, t, d))?.reshape((heads, t, d))?)
}

/// Softmax attention of `q (tq, heads, d)` over `k`, `v` `(tk, kv_heads, d)` plus an additive `mask`
/// `(tq, tk)`: `(tq, heads * d)`. `training` takes candle's composed softmax (it has a backward).
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, training: bool) -> Result<Tensor> {
    let (tq, heads, d) = q.dims3()?;
    let q = q.transpose(0, 1)?.contiguous()?;
    let (k, v) = (expand_kv(k, heads)?, expand_kv(v, heads)?);
    let mut scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    let probs = if training {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    Ok(probs.matmul(&v)?.transpose(0, 1)?.reshape((tq, heads * d))?)
}

/// Positions `pos..pos + len` as rotary `cos`, `sin` tensors on `device`.
fn rope_rows(llama: &Llama, positions: impl Iterator<Item = usize>, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = llama.config.head_dim / 2;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    let mut n = 0;
    for p in positions {
        let (c, s) = llama.rope.rows(p, 1);
        cos.extend(c);
        sin.extend(s);
        n += 1;
    }
    Ok((Tensor::from_vec(cos, (n, half), device)?, Tensor::from_vec(sin, (n, half), device)?))
}

impl Llama {
    /// The device path's inference forward: what `forward_segments` (`infer.rs`) computes, with the
    /// keys and values kept as tensors on the device (`KvCache::tensors`).
    pub(super) fn forward_segments_device(
        &self,
        ids: &[u32],
        segments: &mut [(&mut KvCache, usize)],
        adapter: Option<&LoraAdapter>,
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let dev = &self.device;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let ropes =
            segments.iter().map(|(k, len)| rope_rows(self, k.len..k.len + len, dev)).collect::<Result<Vec<_>>>()?;
        // Each prompt's causal mask (one generated token needs none).
        let masks = segments
            .iter()
            .map(|(k, len)| {
                if *len == 1 {
                    return Ok(None);
                }
                let (past, total) = (k.len, k.len + len);
                let m: Vec<f32> = (0..*len)
                    .flat_map(|i| (0..total).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY }))
                    .collect();
                Ok(Some(Tensor::from_vec(m, (*len, total), dev)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut x = self.token_embd.lookup(ids, dev)?.to_dtype(DType::F32)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let lora = |t: Target| adapter.and_then(|a| Some((a.get(i, t)?, a.config.scale())));
            let h = rms_norm(&x, &b.attn_norm)?;
            let q = linear(&b.attn_q, &h, lora(Target::Q), None)?;
            let k = linear(&b.attn_k, &h, lora(Target::K), None)?;
            let v = linear(&b.attn_v, &h, lora(Target::V), None)?;
            let mut ys = Vec::with_capacity(segments.len());
            let mut row = 0;
            for (((cache, len), (cos, sin)), mask) in segments.iter_mut().zip(&ropes).zip(&masks) {
                let len = *len;
                let q = rope(&q.narrow(0, row, len)?.reshape((len, heads, d))?, cos, sin, c.rope_interleaved)?;
                let k = rope(&k.narrow(0, row, len)?.reshape((len, kv_heads, d))?, cos, sin, c.rope_interleaved)?;
                let v = v.narrow(0, row, len)?.reshape((len, kv_heads, d))?;
                let (k, v) = cache.append_tensors(i, k, v)?;
                ys.push(attend(&q, &k, &v, mask.as_ref(), false)?);
                row += len;
            }
            let y = Tensor::cat(&ys, 0)?;
            x = (x + linear(&b.attn_output, &y, lora(Target::O), None)?)?;
            let h = rms_norm(&x, &b.ffn_norm)?;
            let gate = linear(&b.ffn_gate, &h, lora(Target::Gate), None)?;
            let up = linear(&b.ffn_up, &h, lora(Target::Up), None)?;
            x = (x + linear(&b.ffn_down, &(gate.silu()? * up)?, lora(Target::Down), None)?)?;
        }
        // Only each segment's last row goes through the output layer.
        let mut last = Vec::with_capacity(segments.len());
        let mut end = 0;
        for (cache, len) in segments.iter_mut() {
            cache.len += *len;
            end += *len;
            last.push(end as u32 - 1);
        }
        let h = rms_norm(&x.index_select(&Tensor::new(last, dev)?, 0)?, &self.output_norm)?;
        Ok(linear(&self.output, &h, None, None)?.to_device(&Device::Cpu)?.to_vec2::<f32>()?)
    }

    /// The device path's training forward: the logits of `batch.loss_positions`, with gradients
    /// reaching the adapter's variables through candle's autograd.
    pub(super) fn forward_train_device(
        &self,
        batch: &PackedBatch,
        adapter: &LoraAdapter,
        dropout: &mut Dropout,
    ) -> Result<Tensor> {
        let c = &self.config;
        let dev = &self.device;
        let m = batch.ids.len();
        if let Some(p) = batch.positions.iter().find(|&&p| p as usize >= c.max_position_embeddings) {
            return Err(Error::InvalidInput(format!("position {p} is beyond the model's context")));
        }
        let (heads, kv_heads, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let (cos, sin) = rope_rows(self, batch.positions.iter().map(|&p| p as usize), dev)?;
        let mask = Tensor::from_vec(packed_mask(batch), (m, m), dev)?;
        let scale = adapter.config.scale();
        let mut x = self.token_embd.lookup(&batch.ids, dev)?.to_dtype(DType::F32)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let lora = |t: Target| adapter.get(i, t).map(|p| (p, scale));
            let h = rms_norm(&x, &b.attn_norm)?;
            let q = linear(&b.attn_q, &h, lora(Target::Q), Some(dropout))?;
            let k = linear(&b.attn_k, &h, lora(Target::K), Some(dropout))?;
            let v = linear(&b.attn_v, &h, lora(Target::V), Some(dropout))?;
            let q = rope(&q.reshape((m, heads, d))?, &cos, &sin, c.rope_interleaved)?;
            let k = rope(&k.reshape((m, kv_heads, d))?, &cos, &sin, c.rope_interleaved)?;
            let y = attend(&q, &k, &v.reshape((m, kv_heads, d))?, Some(&mask), true)?;
            x = (x + linear(&b.attn_output, &y, lora(Target::O), Some(dropout))?)?;
            let h = rms_norm(&x, &b.ffn_norm)?;
            let gate = linear(&b.ffn_gate, &h, lora(Target::Gate), Some(dropout))?;
            let up = linear(&b.ffn_up, &h, lora(Target::Up), Some(dropout))?;
            x = (x + linear(&b.ffn_down, &(gate.silu()? * up)?, lora(Target::Down), Some(dropout))?)?;
        }
        // Logits only where the loss needs them: the vocabulary projection is the largest matmul.
        let h = x.index_select(&Tensor::new(batch.loss_positions.as_slice(), dev)?, 0)?;
        linear(&self.output, &rms_norm(&h, &self.output_norm)?, None, None)
    }
}

/// The additive mask `(m, m)` of a packed batch: token `i` sees token `j` when `j` is an earlier (or
/// the same) token of its own segment, or any token of the segment its segment continues.
fn packed_mask(batch: &PackedBatch) -> Vec<f32> {
    let m = batch.ids.len();
    let mut mask = vec![f32::NEG_INFINITY; m * m];
    for (s, &(start, len)) in batch.segments.iter().enumerate() {
        let context = batch.continues[s].map(|c| batch.segments[c]);
        for i in start..start + len {
            let row = &mut mask[i * m..(i + 1) * m];
            row[start..=i].fill(0.0);
            if let Some((cs, cl)) = context {
                row[cs..cs + cl].fill(0.0);
            }
        }
    }
    mask
}
