//! The layers of a block: [`Linear`] (frozen weight, LoRA beside it, the inference rows path and the
//! training forward), [`RmsNorm`] and [`Block`] itself.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use std::sync::{Arc, OnceLock};

use super::weights::{quant_weight, Weight, WeightFormat};
use crate::error::{Error, Result};
use crate::infer::row_ops;
use crate::kernels::{self, amx};
use crate::lora::LoraPair;
use crate::train::dropout::Dropout;
use crate::train::ops;

/// Where a linear layer's weight lives and which kernel multiplies by it.
#[derive(Debug, Clone)]
pub(super) enum Weights {
    Candle(QMatMul),
    /// Blocks laid out for our int8 kernels (`kernels/`); shared with the embedding lookup of a tied head.
    Quant(Arc<kernels::QuantWeight>),
}

/// A linear layer `y = x W^T (+ b)`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub(super) weight: Weights,
    pub(super) bias: Option<Tensor>,
    /// The f32 weight packed for AMX, made by the first training step that needs it (inference never
    /// does) and shared by clones of the model.
    pub(super) amx: Arc<OnceLock<Arc<ops::FrozenBf16>>>,
}

impl Linear {
    /// A layer of `device` from the checkpoint's weight `w`, read on the host.
    pub(super) fn new(w: Weight, bias: Option<Tensor>, format: WeightFormat, device: &Device) -> Result<Self> {
        let host = &Device::Cpu;
        let quantized = matches!(format, WeightFormat::Quantized | WeightFormat::Q8_0);
        if quantized && device.is_cpu() && kernels::available() && w.cols()? % kernels::BLOCK == 0 {
            if let Some(q) = quant_weight(&w, format, device)? {
                return Ok(Self::from_quant(Arc::new(q), bias));
            }
        }
        let device = match format {
            WeightFormat::Bf16 | WeightFormat::F32 => device,
            // Quantized formats are CPU-only (`Llama::load` refuses them elsewhere).
            _ => host,
        };
        let weight = match (format, w) {
            (WeightFormat::Bf16, w) => QMatMul::Tensor(w.dense(host)?.to_dtype(DType::BF16)?.to_device(device)?),
            (WeightFormat::Quantized, Weight::Quantized(q)) => QMatMul::from_qtensor(q)?,
            (WeightFormat::Q8_0, Weight::Quantized(q)) if q.dtype() == candle_core::quantized::GgmlDType::Q8_0 => {
                QMatMul::from_qtensor(q)?
            }
            (WeightFormat::Q8_0, w) if w.cols()? % 32 == 0 => {
                QMatMul::from_qtensor(QTensor::quantize(&w.dense(device)?, candle_core::quantized::GgmlDType::Q8_0)?)?
            }
            // Unquantized checkpoints are served in Q8_0 (a quarter of f32's memory, near-lossless).
            (WeightFormat::Quantized, Weight::Dense(t)) if t.dim(1)? % 32 == 0 => QMatMul::from_qtensor(
                QTensor::quantize(&t.to_dtype(DType::F32)?, candle_core::quantized::GgmlDType::Q8_0)?,
            )?,
            (_, w) => QMatMul::Tensor(w.dense(host)?.to_device(device)?),
        };
        Ok(Self::from_parts(weight, bias))
    }

    /// A weight already in the kernels' layout (a prepared-weights file's).
    pub(super) fn from_quant(q: Arc<kernels::QuantWeight>, bias: Option<Tensor>) -> Self {
        Self { weight: Weights::Quant(q), bias, amx: Arc::default() }
    }

    pub(super) fn from_parts(weight: QMatMul, bias: Option<Tensor>) -> Self {
        Self { weight: Weights::Candle(weight), bias, amx: Arc::default() }
    }

    /// `x Wᵀ + b + scale B A x` on `m` plain rows (the inference path): the adapter's low-rank update
    /// applied beside the frozen weight, unmerged, so one base serves any number of adapters.
    pub(super) fn forward_rows(&self, x: &[f32], m: usize, lora: Option<(&LoraPair, f64)>) -> Result<Vec<f32>> {
        let y = match &self.weight {
            Weights::Quant(w) => kernels::matmul(x, m, w),
            Weights::Candle(w) => {
                let k = x.len() / m;
                w.forward(&Tensor::from_slice(x, (m, k), &Device::Cpu)?)?.flatten_all()?.to_vec1::<f32>()?
            }
        };
        self.finish_rows(y, x, m, lora)
    }

    /// [`Linear::forward_rows`] of several layers reading the same input (q, k, v; gate, up): on our
    /// int8 kernels in one parallel pass over `x` quantized once.
    pub(super) fn forward_rows_many<const N: usize>(
        layers: [(&Linear, Option<(&LoraPair, f64)>); N],
        x: &[f32],
        m: usize,
    ) -> Result<[Vec<f32>; N]> {
        let quant: Vec<&kernels::QuantWeight> = layers
            .iter()
            .filter_map(|(l, _)| match &l.weight {
                Weights::Quant(w) => Some(&**w),
                Weights::Candle(_) => None,
            })
            .collect();
        let outs: Vec<Vec<f32>> = if quant.len() == N {
            let ys = kernels::matmul_many(x, m, &quant);
            layers.iter().zip(ys).map(|((l, lora), y)| l.finish_rows(y, x, m, *lora)).collect::<Result<_>>()?
        } else {
            layers.iter().map(|(l, lora)| l.forward_rows(x, m, *lora)).collect::<Result<_>>()?
        };
        Ok(outs.try_into().expect("one output per layer"))
    }

    /// Bias and adapter added to `y = x Wᵀ`.
    pub(super) fn finish_rows(
        &self,
        mut y: Vec<f32>,
        x: &[f32],
        m: usize,
        lora: Option<(&LoraPair, f64)>,
    ) -> Result<Vec<f32>> {
        let n = y.len() / m;
        if let Some(b) = &self.bias {
            with_cpu_f32(b, |b| y.chunks_mut(n).for_each(|row| row_ops::add_in_place(row, b)))?;
        }
        if let Some((p, scale)) = lora {
            let k = x.len() / m;
            if m > 1 {
                // A prompt: two small matmuls.
                let delta =
                    (Tensor::from_slice(x, (m, k), &Device::Cpu)?.matmul(&p.a.t()?)?.matmul(&p.b.t()?)? * scale)?;
                with_cpu_f32(&delta, |d| row_ops::add_in_place(&mut y, d))?;
            } else {
                // One generated token: y += scale * B (A x) as two short loops, cheaper than two matmul calls.
                with_cpu_f32(&p.a, |a| {
                    with_cpu_f32(&p.b, |b| {
                        let r = a.len() / k;
                        let t: Vec<f32> = a
                            .chunks(k)
                            .map(|ar| ar.iter().zip(x).map(|(u, v)| u * v).sum::<f32>() * scale as f32)
                            .collect();
                        for (yv, br) in y.iter_mut().zip(b.chunks(r)) {
                            *yv += br.iter().zip(&t).map(|(u, v)| u * v).sum::<f32>();
                        }
                    })
                })??;
            }
        }
        Ok(y)
    }

    /// The dense weight: f32 for training on the CPU ([`WeightFormat::F32`]), or bf16 on the device
    /// path ([`WeightFormat::Bf16`]).
    pub(super) fn dense(&self) -> Result<&Tensor> {
        match &self.weight {
            Weights::Candle(QMatMul::Tensor(t)) => Ok(t),
            _ => Err(Error::InvalidInput("training needs a model loaded with f32 (or bf16) weights".into())),
        }
    }

    /// The f32 weight and, where the CPU has AMX, its bf16 packing (made on first use).
    pub(super) fn frozen_parts(&self) -> Result<(&Tensor, Option<&Arc<ops::FrozenBf16>>)> {
        let w = self.dense()?;
        if !amx::available() || !w.device().is_cpu() {
            return Ok((w, None));
        }
        if self.amx.get().is_none() {
            let _ = self.amx.set(Arc::new(ops::FrozenBf16::new(w)?));
        }
        Ok((w, self.amx.get()))
    }

    /// The f32 weights of layers that read the same input (q, k, v; gate, up), stacked into one layer
    /// whose output is theirs side by side; the layers become views into its weight (no second copy).
    /// `None`, and the layers untouched, where any of them has a bias or no f32 weight.
    pub(super) fn stacked<const N: usize>(layers: [&mut Linear; N]) -> Result<Option<Linear>> {
        if layers.iter().any(|l| l.bias.is_some() || l.dense().is_err()) {
            return Ok(None);
        }
        let weights = layers.iter().map(|l| l.dense().cloned()).collect::<Result<Vec<_>>>()?;
        let stacked = Tensor::cat(&weights, 0)?;
        let mut row = 0;
        for (l, w) in layers.into_iter().zip(&weights) {
            let n = w.dim(0)?;
            l.weight = Weights::Candle(QMatMul::Tensor(stacked.narrow(0, row, n)?));
            row += n;
        }
        Ok(Some(Linear::from_parts(QMatMul::Tensor(stacked), None)))
    }

    /// Training forward of a stacked layer ([`Linear::stacked`]) given the layers it stacks, each with
    /// its adapter and scale (one scale for all): their outputs side by side.
    pub(super) fn forward_train_stacked(
        &self,
        x: &Tensor,
        parts: &[(&Linear, Option<(&LoraPair, f64)>)],
    ) -> Result<Tensor> {
        let (w, packed) = self.frozen_parts()?;
        let scale = parts.iter().find_map(|(_, lora)| lora.map(|(_, s)| s)).unwrap_or(0.0);
        let parts = parts
            .iter()
            .map(|(l, lora)| Ok((l.dense()?.dim(0)?, lora.map(|(p, _)| (&p.a, &p.b)))))
            .collect::<Result<Vec<_>>>()?;
        Ok(ops::lora_linear_stacked(x, w, packed, &parts, scale)?)
    }

    /// Training forward: frozen weight (input gradient only) plus the adapter's trainable update.
    pub(super) fn forward_train(
        &self,
        x: &Tensor,
        lora: Option<(&LoraPair, f64)>,
        dropout: &mut Dropout,
    ) -> Result<Tensor> {
        let (w, packed) = self.frozen_parts()?;
        let y = match lora {
            None => ops::frozen_linear_packed(x, w, packed)?,
            Some((p, scale)) if dropout.p <= 0.0 => ops::lora_linear(x, w, packed, &p.a, &p.b, scale)?,
            Some((p, scale)) => {
                let y = ops::frozen_linear_packed(x, w, packed)?;
                let x = dropout.apply(x)?;
                (y + (x.broadcast_matmul(&p.a.t()?)?.broadcast_matmul(&p.b.t()?)? * scale)?)?
            }
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Calls `f` with a CPU f32 tensor's elements, borrowed.
pub(super) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        return Err(Error::InvalidInput("expected a CPU tensor".into()));
    };
    Ok(f(ops::contiguous::<f32>(storage, layout)?))
}

#[derive(Debug, Clone)]
pub(super) struct RmsNorm {
    pub(super) weight: Tensor,
    /// The same weight as plain values, for the CPU inference path.
    pub(super) values: Vec<f32>,
    pub(super) eps: f32,
}

impl RmsNorm {
    pub(super) fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::rms_norm(x, &self.weight, self.eps as f64)?)
    }
}

#[derive(Debug, Clone)]
pub(super) struct Block {
    pub(super) attn_norm: RmsNorm,
    pub(super) attn_q: Linear,
    pub(super) attn_k: Linear,
    pub(super) attn_v: Linear,
    pub(super) attn_output: Linear,
    pub(super) ffn_norm: RmsNorm,
    pub(super) ffn_gate: Linear,
    pub(super) ffn_up: Linear,
    pub(super) ffn_down: Linear,
    /// f32 weights on the CPU: q/k/v and gate/up stacked into one matrix each, for training's wider
    /// matmuls (see [`Linear::stacked`]); the separate layers above are views into them.
    pub(super) stacked: Option<(Linear, Linear)>,
}

impl Block {
    pub(super) fn linears(&self) -> [&Linear; 7] {
        [&self.attn_q, &self.attn_k, &self.attn_v, &self.attn_output, &self.ffn_gate, &self.ffn_up, &self.ffn_down]
    }
}
