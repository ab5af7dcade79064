//! The training forward over a packed batch, through ops with a hand-written backward
//! (`train/ops.rs`, `train/attention.rs`) so that candle's autograd reaches the adapter's variables.

use candle_core::Tensor;
use std::sync::Arc;

use super::{Dropout, Llama, PackedBatch};
use crate::error::Result;
use crate::lora::{LoraAdapter, Target};
use crate::train::attention::{packed_attention, packed_attention_stacked, PackedAttention};
use crate::train::ops;

impl Llama {
    /// The attention op's view of a packed batch: its sequences and each token's rotary angles.
    pub(super) fn packed_attention(&self, batch: &PackedBatch) -> Result<Arc<PackedAttention>> {
        let c = &self.config;
        if let Some(p) = batch.positions.iter().find(|&&p| p as usize >= c.max_position_embeddings) {
            return Err(crate::Error::InvalidInput(format!("position {p} is beyond the model's context")));
        }
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for &p in &batch.positions {
            let (co, si) = self.rope.rows(p as usize, 1);
            cos.extend(co.into_iter().map(f64::from));
            sin.extend(si.into_iter().map(f64::from));
        }
        Ok(Arc::new(PackedAttention {
            segments: batch.segments.clone(),
            context: batch.continues.iter().map(|c| c.map(|c| batch.segments[c])).collect(),
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            cos,
            sin,
            interleaved: c.rope_interleaved,
        }))
    }

    /// Training forward over a packed batch: logits `(loss_positions, vocab)` with gradients flowing to
    /// the adapter's variables only. Uses ops with a backward (see `ops.rs`); needs f32 weights.
    pub fn forward_train(&self, batch: &PackedBatch, adapter: &LoraAdapter, dropout: &mut Dropout) -> Result<Tensor> {
        if self.device_path {
            return self.forward_train_device(batch, adapter, dropout);
        }
        let dev = &self.device;
        let att = self.packed_attention(batch)?;
        let scale = adapter.config.scale();
        let mut x = self.token_embd.lookup(&batch.ids, dev)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let lora = |t: Target| adapter.get(i, t).map(|p| (p, scale));
            let h = b.attn_norm.forward_train(&x)?;
            let y = match &b.stacked {
                // Dropout draws a mask per layer input; the stacked op has one input for all three.
                Some((qkv, _)) if dropout.p <= 0.0 => {
                    let parts =
                        [(&b.attn_q, lora(Target::Q)), (&b.attn_k, lora(Target::K)), (&b.attn_v, lora(Target::V))];
                    packed_attention_stacked(&qkv.forward_train_stacked(&h, &parts)?, &att)?
                }
                _ => {
                    let q = b.attn_q.forward_train(&h, lora(Target::Q), dropout)?;
                    let k = b.attn_k.forward_train(&h, lora(Target::K), dropout)?;
                    let v = b.attn_v.forward_train(&h, lora(Target::V), dropout)?;
                    packed_attention(&q, &k, &v, &att)?
                }
            };
            x = (x + b.attn_output.forward_train(&y, lora(Target::O), dropout)?)?;
            let h = b.ffn_norm.forward_train(&x)?;
            let act = match &b.stacked {
                Some((_, gate_up)) if dropout.p <= 0.0 => {
                    let parts = [(&b.ffn_gate, lora(Target::Gate)), (&b.ffn_up, lora(Target::Up))];
                    ops::silu_mul_stacked(&gate_up.forward_train_stacked(&h, &parts)?)?
                }
                _ => {
                    let gate = b.ffn_gate.forward_train(&h, lora(Target::Gate), dropout)?;
                    let up = b.ffn_up.forward_train(&h, lora(Target::Up), dropout)?;
                    ops::silu_mul(&gate, &up)?
                }
            };
            x = (x + b.ffn_down.forward_train(&act, lora(Target::Down), dropout)?)?;
        }
        // Logits only where the loss needs them: the vocabulary projection is the largest matmul.
        let picked = Tensor::new(batch.loss_positions.as_slice(), dev)?;
        let h = x.index_select(&picked, 0)?;
        let h = self.output_norm.forward_train(&h)?;
        let (w, packed) = self.output.frozen_parts()?;
        let logits = ops::frozen_linear_packed(&h, w, packed)?;
        Ok(match &self.output.bias {
            Some(b) => logits.broadcast_add(b)?,
            None => logits,
        })
    }
}
