//! The training step of an f32 model on the CPU written out by hand: the forward through the blocks,
//! keeping what the backward reads, the loss, and the backward block by block through the training
//! ops' own row functions (`train/ops.rs`, `train/attention.rs`), the residual stream's gradient added to in place.
//!
//! Why not candle's autograd ([`Llama::forward_train`] + `loss.backward()`, still the path for
//! dropout, biases and weights that are not stacked): it gives every edge of the graph a
//! zero-filled tensor and an add (`GradStore::or_insert`), about ten tensors the size of a layer's
//! activations per block, and wraps each op's output in a new tensor. The arithmetic here is the
//! same; `engine/tests/train.rs` checks the two paths against each other.

use rayon::prelude::*;

use super::*;
use crate::train::ops::{
    rms_norm_grad_rows, rms_norm_rows, silu_mul_stacked_fwd, silu_mul_stacked_grad_rows, LoraStacked,
};

/// A step's mean loss over the batch's targets and the gradient of each adapter tensor (A and B of
/// every adapted layer) as `(tensor, gradient)`.
pub struct StepGradients {
    pub loss: f32,
    pub grads: Vec<(Tensor, Tensor)>,
}

/// Linear layers over one input (q/k/v, gate/up, or one layer alone) as one op, with the values of
/// their adapters stacked as the op takes them.
struct Group<'a> {
    op: LoraStacked,
    pairs: Vec<&'a LoraPair>,
    /// The adapters' A stacked `(R, in)` and their B one after another.
    a: Vec<f32>,
    b: Vec<f32>,
}

impl<'a> Group<'a> {
    /// `layer` holds the (stacked) weight; `parts` each layer's width and adapter.
    fn new(layer: &Linear, parts: &[(usize, Option<&'a LoraPair>)], adapter: &LoraAdapter) -> Result<Self> {
        let (w, packed) = layer.frozen_parts()?;
        let pairs: Vec<&LoraPair> = parts.iter().filter_map(|p| p.1).collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for p in &pairs {
            a.extend(p.a.flatten_all()?.to_vec1::<f32>()?);
            b.extend(p.b.flatten_all()?.to_vec1::<f32>()?);
        }
        let parts = parts.iter().map(|p| (p.0, p.1.is_some())).collect();
        let op = LoraStacked::new(w, packed, parts, adapter.config.r, adapter.config.scale())?;
        Ok(Self { op, pairs, a, b })
    }

    fn forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        Ok(self.op.forward_rows(x, &self.a, &self.b)?)
    }

    /// The input gradient for the output gradient `g`; the adapters' gradients go onto `grads`.
    fn backward(&self, x: &[f32], g: &[f32], grads: &mut Vec<(Tensor, Tensor)>) -> Result<Vec<f32>> {
        let (dx, da, db) = self.op.backward_rows(x, &self.a, &self.b, g)?;
        let (mut at_a, mut at_b) = (0, 0);
        for p in &self.pairs {
            let (na, nb) = (p.a.elem_count(), p.b.elem_count());
            grads.push((p.a.clone(), Tensor::from_slice(&da[at_a..at_a + na], p.a.shape(), p.a.device())?));
            grads.push((p.b.clone(), Tensor::from_slice(&db[at_b..at_b + nb], p.b.shape(), p.b.device())?));
            (at_a, at_b) = (at_a + na, at_b + nb);
        }
        Ok(dx)
    }
}

/// One block's layer groups.
struct BlockGroups<'a> {
    qkv: Group<'a>,
    o: Group<'a>,
    gate_up: Group<'a>,
    down: Group<'a>,
}

/// What one block's backward reads: its input, the norms' outputs, the projections' outputs.
struct Saved {
    x: Vec<f32>,
    h1: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    x_mid: Vec<f32>,
    h2: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
}

fn add_into(y: &mut [f32], x: &[f32]) {
    y.par_chunks_mut(4096).zip(x.par_chunks(4096)).for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y += x));
}

impl Llama {
    /// The loss of [`Self::forward_train`] (mean cross-entropy of `batch.targets`) and its gradients,
    /// without candle's autograd. `None` where this model, device or dropout takes the autograd path.
    pub fn train_step(
        &self,
        batch: &PackedBatch,
        adapter: &LoraAdapter,
        dropout: &Dropout,
    ) -> Result<Option<StepGradients>> {
        let plain = |l: &Linear| l.bias.is_none() && l.dense().is_ok();
        if dropout.p > 0.0
            || self.device_path
            || !self.device.is_cpu()
            || batch.targets.is_empty()
            || !plain(&self.output)
            || self.blocks.iter().any(|b| b.stacked.is_none() || !plain(&b.attn_output) || !plain(&b.ffn_down))
        {
            return Ok(None);
        }
        let c = &self.config;
        let (d, m) = (c.hidden_size, batch.ids.len());
        let att = self.packed_attention(batch)?;
        let (hq, hk) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
        let widths = (hq, hk, hq + 2 * hk);
        let width = |l: &Linear| -> Result<usize> { Ok(l.dense()?.dim(0)?) };

        let mut x = self.token_embd.lookup(&batch.ids, &self.device)?.flatten_all()?.to_vec1::<f32>()?;
        let mut saved = Vec::with_capacity(self.blocks.len());
        let mut groups = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.iter().enumerate() {
            let (qkv, gate_up) = b.stacked.as_ref().expect("checked above");
            let lora = |t: Target| adapter.get(i, t);
            let g = BlockGroups {
                qkv: Group::new(
                    qkv,
                    &[
                        (width(&b.attn_q)?, lora(Target::Q)),
                        (width(&b.attn_k)?, lora(Target::K)),
                        (width(&b.attn_v)?, lora(Target::V)),
                    ],
                    adapter,
                )?,
                o: Group::new(&b.attn_output, &[(width(&b.attn_output)?, lora(Target::O))], adapter)?,
                gate_up: Group::new(
                    gate_up,
                    &[(width(&b.ffn_gate)?, lora(Target::Gate)), (width(&b.ffn_up)?, lora(Target::Up))],
                    adapter,
                )?,
                down: Group::new(&b.ffn_down, &[(width(&b.ffn_down)?, lora(Target::Down))], adapter)?,
            };
            let h1 = rms_norm_rows(&x, &b.attn_norm.values, b.attn_norm.eps as f64);
            let qkv = g.qkv.forward(&h1)?;
            let att_out = att.forward_stacked(&qkv, widths);
            let mut x_mid = g.o.forward(&att_out)?;
            add_into(&mut x_mid, &x);
            let h2 = rms_norm_rows(&x_mid, &b.ffn_norm.values, b.ffn_norm.eps as f64);
            let gate_up = g.gate_up.forward(&h2)?;
            let act = silu_mul_stacked_fwd(&gate_up, gate_up.len() / m / 2);
            let mut x_out = g.down.forward(&act)?;
            add_into(&mut x_out, &x_mid);
            let x_in = std::mem::replace(&mut x, x_out);
            saved.push(Saved { x: x_in, h1, qkv, att: att_out, x_mid, h2, gate_up, act });
            groups.push(g);
        }

        // The head on the loss rows only, and the cross-entropy's gradient (softmax - one-hot) / n in
        // place of the logits.
        let picked: Vec<usize> = batch.loss_positions.iter().map(|&p| p as usize).collect();
        let xf: Vec<f32> = picked.iter().flat_map(|&p| x[p * d..(p + 1) * d].iter().copied()).collect();
        drop(x);
        let norm = &self.output_norm;
        let hf = rms_norm_rows(&xf, &norm.values, norm.eps as f64);
        let head = Group::new(&self.output, &[(width(&self.output)?, None)], adapter)?;
        let mut dlogits = head.forward(&hf)?;
        let n = picked.len();
        let vocab = dlogits.len() / n;
        let inv_n = 1.0 / n as f32;
        let loss_sum: f64 = dlogits
            .par_chunks_mut(vocab)
            .zip(batch.targets.par_iter())
            .map(|(row, &t)| {
                let max = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let target = row[t as usize] - max;
                // The sum in f64: 49,152 terms added one by one in f32 would lose ~1e-4 of it.
                let mut sum = 0f64;
                for z in row.iter_mut() {
                    *z = (*z - max).exp();
                    sum += *z as f64;
                }
                let k = (inv_n as f64 / sum) as f32;
                row.iter_mut().for_each(|z| *z *= k);
                row[t as usize] -= inv_n;
                sum.ln() - target as f64
            })
            .sum();
        let mut grads = Vec::new();
        let dhf = head.backward(&hf, &dlogits, &mut grads)?;
        drop(dlogits);
        let mut dxf = vec![0f32; n * d];
        rms_norm_grad_rows(&xf, &norm.values, &dhf, norm.eps as f64, &mut dxf, false);
        let mut dx = vec![0f32; m * d];
        for (i, &p) in picked.iter().enumerate() {
            dx[p * d..(p + 1) * d].iter_mut().zip(&dxf[i * d..(i + 1) * d]).for_each(|(a, b)| *a += b);
        }

        // Blocks in reverse; dx is the gradient of the block's output, then of its input.
        for (b, (s, g)) in self.blocks.iter().zip(saved.into_iter().zip(groups)).rev() {
            let d_act = g.down.backward(&s.act, &dx, &mut grads)?;
            let d_gate_up = silu_mul_stacked_grad_rows(&s.gate_up, &d_act, d_act.len() / m);
            let d_h2 = g.gate_up.backward(&s.h2, &d_gate_up, &mut grads)?;
            rms_norm_grad_rows(&s.x_mid, &b.ffn_norm.values, &d_h2, b.ffn_norm.eps as f64, &mut dx, true);
            let d_att = g.o.backward(&s.att, &dx, &mut grads)?;
            let d_qkv = att.backward_stacked(&s.qkv, &d_att, widths);
            let d_h1 = g.qkv.backward(&s.h1, &d_qkv, &mut grads)?;
            rms_norm_grad_rows(&s.x, &b.attn_norm.values, &d_h1, b.attn_norm.eps as f64, &mut dx, true);
        }
        Ok(Some(StepGradients { loss: (loss_sum / n as f64) as f32, grads }))
    }
}
