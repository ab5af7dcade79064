//! The forward for CUDA: inference over the KV cache and training over a packed batch, written with
//! candle's own ops so that they run on any device candle has. The tests run this path on the CPU
//! against the CPU path (`infer.rs`, `train_step.rs`: plain rows and hand-written kernels, faster
//! there), so what CUDA runs is what the CPU checks.
//!
//! Precision: frozen weights are held in bf16 on a GPU (f32 when loaded so, as the tests do); their
//! matmuls run in that dtype. The residual stream, norms, rotary embedding, attention and the
//! adapters are f32: rounding a weight to bf16's 8-bit mantissa costs little, rounding a running sum
//! would not. Training attention runs over the packed batch's groups (a sequence, or a shared prefix
//! with the sequences that continue it), padded to the longest and batched: one masked matmul for the
//! whole batch whose cost is quadratic in a group's tokens, not in the batch's (a mask over all `m`
//! tokens would take `heads x m²` scores per layer: 2.4 GB at 64 examples of 128 tokens).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Storage, Tensor, D};
use parking_lot::Mutex;
use std::sync::Arc;

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
/// `(tq, tk)`: `(tq, heads * d)` (inference; training's is [`Groups::attend`]).
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (tq, heads, d) = q.dims3()?;
    let q = q.transpose(0, 1)?.contiguous()?;
    let (k, v) = (expand_kv(k, heads)?, expand_kv(v, heads)?);
    let mut scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
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
                ys.push(attend(&q, &k, &v, mask.as_ref())?);
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
        let groups = Groups::new(batch, dev)?;
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
            let y = groups.attend(&q, &k, &v.reshape((m, kv_heads, d))?)?;
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

/// How training attention sees a packed batch: its groups (a segment and the segments continuing it)
/// padded to the longest, as indices into the batch's rows, the mask of each, and where each row went.
struct Groups {
    /// Row of the batch at each padded slot `(groups * longest)`; padding repeats row 0.
    gather: Tensor,
    /// Slot of each batch row, to bring the output back to the batch's order.
    scatter: Tensor,
    /// Additive mask `(groups, 1, longest, longest)`: a row sees earlier rows of its own segment and
    /// every row of the segment it continues; a padding row sees itself (its output is dropped).
    mask: Tensor,
    count: usize,
    longest: usize,
}

impl Groups {
    fn new(batch: &PackedBatch, device: &Device) -> Result<Self> {
        // Each segment's group: its own, or that of the segment it continues.
        let mut members: Vec<Vec<usize>> = Vec::new();
        let mut group_of = vec![usize::MAX; batch.segments.len()];
        for s in 0..batch.segments.len() {
            let g = match batch.continues[s] {
                Some(c) if group_of[c] != usize::MAX => group_of[c],
                _ => {
                    members.push(Vec::new());
                    members.len() - 1
                }
            };
            group_of[s] = g;
            members[g].push(s);
        }
        let rows = |g: &Vec<usize>| g.iter().map(|&s| batch.segments[s].1).sum::<usize>();
        let longest = members.iter().map(rows).max().unwrap_or(0);
        let count = members.len();
        let mut gather = vec![0u32; count * longest];
        let mut scatter = vec![0u32; batch.ids.len()];
        let mut mask = vec![f32::NEG_INFINITY; count * longest * longest];
        for (g, segs) in members.iter().enumerate() {
            let mask = &mut mask[g * longest * longest..][..longest * longest];
            // Each segment's first slot in the group.
            let mut at = Vec::with_capacity(segs.len());
            let mut slot = 0;
            for &s in segs {
                at.push(slot);
                let (start, len) = batch.segments[s];
                for r in 0..len {
                    gather[g * longest + slot + r] = (start + r) as u32;
                    scatter[start + r] = (g * longest + slot + r) as u32;
                }
                slot += len;
            }
            for (i, &s) in segs.iter().enumerate() {
                let len = batch.segments[s].1;
                let context = batch.continues[s].and_then(|c| segs.iter().position(|&t| t == c));
                for r in 0..len {
                    let row = &mut mask[(at[i] + r) * longest..][..longest];
                    row[at[i]..=at[i] + r].fill(0.0);
                    if let Some(c) = context {
                        row[at[c]..at[c] + batch.segments[segs[c]].1].fill(0.0);
                    }
                }
            }
            for pad in slot..longest {
                mask[pad * longest + pad] = 0.0;
            }
        }
        Ok(Self {
            gather: Tensor::new(gather, device)?,
            scatter: Tensor::new(scatter, device)?,
            mask: Tensor::from_vec(mask, (count, 1, longest, longest), device)?,
            count,
            longest,
        })
    }

    /// Attention of the batch's `q (m, heads, d)` over its `k`, `v` `(m, kv_heads, d)`: `(m, heads * d)`.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (_, heads, d) = q.dims3()?;
        let kv_heads = k.dim(1)?;
        let (g, l) = (self.count, self.longest);
        // (m, h, d) -> (groups, h, longest, d) in the padded order.
        let grouped = |x: &Tensor, h: usize| -> Result<Tensor> {
            Ok(x.index_select(&self.gather, 0)?.reshape((g, l, h, d))?.transpose(1, 2)?.contiguous()?)
        };
        let q = grouped(q, heads)?;
        let expand = |x: Tensor| -> Result<Tensor> {
            if kv_heads == heads {
                return Ok(x);
            }
            let x = x.unsqueeze(2)?.expand((g, kv_heads, heads / kv_heads, l, d))?;
            Ok(x.reshape((g, heads, l, d))?)
        };
        let (k, v) = (expand(grouped(k, kv_heads)?)?, expand(grouped(v, kv_heads)?)?);
        let q = (q * (1.0 / (d as f64).sqrt()))?;
        let probs = masked_softmax(&q.matmul(&k.t()?)?, &self.mask)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((g * l, heads * d))?;
        Ok(out.index_select(&self.scatter, 0)?)
    }
}

/// `softmax(scores + mask)` over the last dimension, with a backward. candle's fused softmax has none,
/// and its composed one (`candle_nn::ops::softmax`) keeps four tensors the size of the scores per
/// layer for the backward, the mask's sum a fifth: the largest buffers of training attention. Here
/// the fused kernel computes the probabilities outside the graph, and the op that hands them to the
/// graph keeps only its output: scores and probabilities, two such tensors a layer.
fn masked_softmax(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let probs = candle_nn::ops::softmax_last_dim(&scores.detach().broadcast_add(mask)?)?;
    Ok(scores.apply_op1_arc(Arc::new(Box::new(Softmax(Mutex::new(Some(probs))))))?)
}

/// Hands over the probabilities computed outside the graph, once.
struct Softmax(Mutex<Option<Tensor>>);

impl Softmax {
    fn take(&self) -> candle_core::Result<Tensor> {
        self.0.lock().take().ok_or_else(|| candle_core::Error::Msg("masked-softmax: run twice".into()))
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let probs = self.take()?;
        let (storage, layout) = probs.storage_and_layout();
        let Storage::Cpu(p) = &*storage else { candle_core::bail!("masked-softmax: not on the CPU") };
        Ok((p.try_clone(layout)?, layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let probs = self.take()?;
        let (storage, layout) = probs.storage_and_layout();
        let Storage::Cuda(p) = &*storage else { candle_core::bail!("masked-softmax: not on the GPU") };
        Ok((p.try_clone(layout)?, layout.shape().clone()))
    }

    fn bwd(&self, _scores: &Tensor, probs: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // d softmax: p ⊙ (g - Σ g ⊙ p) over the last dimension; the mask is a constant.
        let dot = (grad * probs)?.sum_keepdim(D::Minus1)?;
        Ok(Some((probs * grad.broadcast_sub(&dot)?)?))
    }
}
