//! Differentiable versions of the ops the training forward needs.
//!
//! candle's fused `rms_norm`, `softmax_last_dim` and `rope_i` have no backward (they silently stop
//! gradients), and its matmul backward also computes the gradient of a frozen weight, which training
//! then throws away. These custom ops compute the same forward on the CPU and a backward written by
//! hand; `engine/tests/grad_check.rs` checks each against finite differences. Attention (softmax and
//! RoPE included) is one op of its own, in `attention.rs`.
//!
//! Forwards are generic over f32 and f64 so the gradient checks can run in double precision.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, WithDType, D,
};
use rayon::prelude::*;
use std::sync::Arc;

use crate::amx;

pub(crate) trait Float: WithDType + num_traits::Float + Send + Sync + 'static {}
impl Float for f32 {}
impl Float for f64 {}

pub(crate) fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => bail!("custom op needs a contiguous input"),
    }
}

macro_rules! dispatch_float {
    ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            DType::F32 => CpuStorage::F32($f::<f32>($($arg),*)?),
            DType::F64 => CpuStorage::F64($f::<f64>($($arg),*)?),
            d => bail!("custom op: unsupported dtype {d:?}"),
        }
    };
}

// ---------------------------------------------------------------------------------------------------
// Frozen linear layer: y = x W^T, gradient for x only.

/// `x W^T` where `W (out, in)` is frozen: the backward returns the input gradient and never computes
/// the weight gradient that candle's matmul backward would.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    frozen_linear_packed(x, w, None)
}

/// [`frozen_linear`] that runs both matmuls on AMX bf16 tiles when `packed` is given and the input is
/// f32 (see `amx.rs`); f64 inputs (the gradient checks) take the f32/f64 path.
pub fn frozen_linear_packed(x: &Tensor, w: &Tensor, packed: Option<&Arc<FrozenBf16>>) -> Result<Tensor> {
    x.apply_op1_arc(Arc::new(Box::new(FrozenLinear { w: w.clone(), packed: packed.cloned() })))
}

/// A frozen weight `W (out, in)` packed for AMX twice: as `Wᵀ` for the forward `x Wᵀ` and as `W` for
/// the input gradient `g W`.
#[derive(Debug)]
pub struct FrozenBf16 {
    forward: amx::PackedB,
    backward: amx::PackedB,
}

impl FrozenBf16 {
    pub fn new(w: &Tensor) -> Result<Self> {
        let (out_dim, in_dim) = w.dims2()?;
        let data = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self {
            forward: amx::PackedB::new(&data, out_dim, in_dim, true),
            backward: amx::PackedB::new(&data, out_dim, in_dim, false),
        })
    }

    pub fn size_bytes(&self) -> usize {
        self.forward.size_bytes() + self.backward.size_bytes()
    }
}

struct FrozenLinear {
    w: Tensor,
    packed: Option<Arc<FrozenBf16>>,
}

/// `x Wᵀ` for a contiguous `x (.., in)`: `(m, out)` and the output shape.
fn frozen_forward(w: &Tensor, packed: Option<&Arc<FrozenBf16>>, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let (out_dim, in_dim) = w.dims2()?;
    let dims = l.shape().dims();
    if dims.last() != Some(&in_dim) || !l.is_contiguous() {
        bail!("frozen-linear: input {:?} (contiguous: {}) vs weight ({out_dim}, {in_dim})", dims, l.is_contiguous());
    }
    let m = l.shape().elem_count() / in_dim;
    let mut out = dims.to_vec();
    *out.last_mut().unwrap() = out_dim;
    if let (Some(p), CpuStorage::F32(_)) = (packed, s) {
        let y = amx::matmul(contiguous::<f32>(s, l)?, m, &p.forward);
        return Ok((CpuStorage::F32(y), Shape::from(out)));
    }
    let x_layout = Layout::contiguous_with_offset((m, in_dim), l.start_offset());
    let wt = w.t()?;
    let (w_storage, wt_layout) = wt.storage_and_layout();
    let Storage::Cpu(w_storage) = &*w_storage else { bail!("frozen-linear: weight is not on the CPU") };
    let y = s.matmul(w_storage, (1, m, out_dim, in_dim), &x_layout, wt_layout)?;
    Ok((y, Shape::from(out)))
}

/// The input gradient `g W` as `(m, in)`.
fn frozen_backward(w: &Tensor, packed: Option<&Arc<FrozenBf16>>, grad: &Tensor) -> Result<Tensor> {
    let (out_dim, in_dim) = w.dims2()?;
    let m = grad.elem_count() / out_dim;
    if let (Some(p), DType::F32, true) = (packed, grad.dtype(), grad.device().is_cpu()) {
        let g = grad.contiguous()?.flatten_all()?;
        let (storage, layout) = g.storage_and_layout();
        let Storage::Cpu(storage) = &*storage else { bail!("frozen-linear: gradient is not on the CPU") };
        let dx = amx::matmul(contiguous::<f32>(storage, layout)?, m, &p.backward);
        return Tensor::from_vec(dx, (m, in_dim), grad.device());
    }
    grad.contiguous()?.reshape((m, out_dim))?.matmul(w)
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        frozen_forward(&self.w, self.packed.as_ref(), s, l)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(frozen_backward(&self.w, self.packed.as_ref(), grad)?.reshape(arg.shape())?))
    }
}

// ---------------------------------------------------------------------------------------------------
// LoRA linear layer: y = x W^T + scale (x A^T) B^T, W frozen, A and B trained.

/// A frozen linear layer with a LoRA adapter beside it, as one op: built from candle ops it was six
/// graph nodes (two matmuls, a transpose, a scale, an add, the frozen matmul), each allocating an
/// output the size of `y` or of its gradient. The backward returns gradients for x, A and B.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    packed: Option<&Arc<FrozenBf16>>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, LoraLinear { w: w.clone(), packed: packed.cloned(), scale })
}

struct LoraLinear {
    w: Tensor,
    packed: Option<Arc<FrozenBf16>>,
    scale: f64,
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (mut y, shape) = frozen_forward(&self.w, self.packed.as_ref(), x, xl)?;
        let ((r, k), (n, r2)) = (al.shape().dims2()?, bl.shape().dims2()?);
        if r != r2 || k != *xl.dims().last().unwrap() || n != self.w.dim(0)? {
            bail!("lora-linear: x {:?}, A {:?}, B {:?}, W {:?}", xl.dims(), al.dims(), bl.dims(), self.w.dims());
        }
        let m = xl.shape().elem_count() / k;
        // u = x Aᵀ (m, r), then z = u Bᵀ (m, n), added into y scaled.
        let u = x.matmul(a, (1, m, r, k), &Layout::contiguous_with_offset((m, k), xl.start_offset()), &al.transpose(0, 1)?)?;
        let z = u.matmul(b, (1, m, n, r), &Layout::contiguous((m, r)), &bl.transpose(0, 1)?)?;
        match (&mut y, &z) {
            (CpuStorage::F32(y), CpuStorage::F32(z)) => {
                let s = self.scale as f32;
                y.iter_mut().zip(z).for_each(|(y, z)| *y += s * z);
            }
            (CpuStorage::F64(y), CpuStorage::F64(z)) => y.iter_mut().zip(z).for_each(|(y, z)| *y += self.scale * z),
            _ => bail!("lora-linear: unsupported dtype {:?}", x.dtype()),
        }
        Ok((y, shape))
    }

    /// dx = g W + s (g B) A;  dA = s (g B)ᵀ x;  dB = s gᵀ (x Aᵀ).
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, k) = (b.dim(0)?, a.dim(1)?);
        let m = grad.elem_count() / n;
        let g = grad.contiguous()?.reshape((m, n))?;
        let xm = x.reshape((m, k))?;
        let gb = (g.matmul(b)? * self.scale)?;
        let dx = (frozen_backward(&self.w, self.packed.as_ref(), &g)? + gb.matmul(a)?)?;
        let da = gb.t()?.matmul(&xm)?;
        let db = (g.t()?.matmul(&xm.matmul(&a.t()?)?)? * self.scale)?;
        Ok((Some(dx.reshape(x.shape())?), Some(da), Some(db)))
    }
}

// ---------------------------------------------------------------------------------------------------
// RMSNorm with a frozen scale: y = x / sqrt(mean(x^2) + eps) * w.

pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(w, RmsNorm { eps })
}

struct RmsNorm {
    eps: f64,
}

fn rms_norm_fwd<T: Float>(x: &CpuStorage, xl: &Layout, w: &CpuStorage, wl: &Layout, eps: f64) -> Result<Vec<T>> {
    let x = contiguous::<T>(x, xl)?;
    let w = contiguous::<T>(w, wl)?;
    let d = w.len();
    let eps = T::from(eps).unwrap();
    let n = T::from(d).unwrap();
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
        let ms = x.iter().fold(T::zero(), |a, &v| a + v * v) / n;
        let r = (ms + eps).sqrt().recip();
        for i in 0..d {
            y[i] = x[i] * r * w[i];
        }
    });
    Ok(y)
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm-trainable"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout, w: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        if xl.dims().last() != Some(&wl.shape().elem_count()) {
            bail!("rms-norm: input {:?} vs weight {:?}", xl.dims(), wl.dims());
        }
        let y = dispatch_float!(x.dtype(), rms_norm_fwd(x, xl, w, wl, self.eps));
        Ok((y, xl.shape().clone()))
    }

    /// dx = r (g w) - x r^3 mean(x g w); the scale w is frozen, so no gradient for it. One pass per
    /// row on the CPU: composed from candle ops it was eight tensors the size of x per norm.
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !x.device().is_cpu() {
            let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
            let gw = g.broadcast_mul(w)?;
            let dot = (x * &gw)?.mean_keepdim(D::Minus1)?;
            let dx = (gw.broadcast_mul(&r)? - x.broadcast_mul(&(r.powf(3.0)? * dot)?)?)?;
            return Ok((Some(dx), None));
        }
        let dx = match x.dtype() {
            DType::F32 => rms_norm_bwd::<f32>(x, w, g, self.eps)?,
            DType::F64 => rms_norm_bwd::<f64>(x, w, g, self.eps)?,
            d => bail!("rms-norm: unsupported dtype {d:?}"),
        };
        Ok((Some(dx), None))
    }
}

fn rms_norm_bwd<T: Float>(x: &Tensor, w: &Tensor, g: &Tensor, eps: f64) -> Result<Tensor> {
    let (xv, wv, gv) = (cpu_values::<T>(x)?, cpu_values::<T>(w)?, cpu_values::<T>(g)?);
    let d = wv.len();
    let (eps, n) = (T::from(eps).unwrap(), T::from(d).unwrap());
    let mut dx = vec![T::zero(); xv.len()];
    dx.par_chunks_mut(d).zip(xv.par_chunks(d).zip(gv.par_chunks(d))).for_each(|(dx, (x, g))| {
        let (mut ss, mut dot) = (T::zero(), T::zero());
        for i in 0..d {
            ss = ss + x[i] * x[i];
            dot = dot + x[i] * g[i] * wv[i];
        }
        let r = (ss / n + eps).sqrt().recip();
        let c = r * r * r * dot / n;
        for i in 0..d {
            dx[i] = r * g[i] * wv[i] - x[i] * c;
        }
    });
    Tensor::from_vec(dx, x.shape(), x.device())
}

/// A CPU tensor's values in row-major order (a copy; one pass, far cheaper than the ops it replaces).
fn cpu_values<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}

// ---------------------------------------------------------------------------------------------------
// SwiGLU gating: y = silu(gate) * up, as one op.

/// `silu(gate) * up`: the feed-forward gating. As candle ops (silu, then mul) its backward was about
/// a dozen element-wise tensors the size of the hidden layer; here forward and backward are one pass.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !gate.device().is_cpu() {
        return gate.silu()? * up;
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

struct SiluMul;

/// Elements per rayon task: enough work per task to amortise the scheduling, and 2+ tasks per layer.
const SILU_CHUNK: usize = 4096;

fn sigmoid<T: Float>(x: T) -> T {
    (T::one() + (-x).exp()).recip()
}

fn silu_mul_fwd<T: Float>(g: &CpuStorage, gl: &Layout, u: &CpuStorage, ul: &Layout) -> Result<Vec<T>> {
    let (g, u) = (contiguous::<T>(g, gl)?, contiguous::<T>(u, ul)?);
    let mut y = vec![T::zero(); g.len()];
    y.par_chunks_mut(SILU_CHUNK).zip(g.par_chunks(SILU_CHUNK).zip(u.par_chunks(SILU_CHUNK))).for_each(|(y, (g, u))| {
        for i in 0..y.len() {
            y[i] = g[i] * sigmoid(g[i]) * u[i];
        }
    });
    Ok(y)
}

/// d gate = grad up s (1 + gate (1 - s)) with s = sigmoid(gate); d up = grad silu(gate).
fn silu_mul_bwd<T: Float>(gate: &Tensor, up: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    let (g, u, dy) = (cpu_values::<T>(gate)?, cpu_values::<T>(up)?, cpu_values::<T>(grad)?);
    let mut dg = vec![T::zero(); g.len()];
    let mut du = vec![T::zero(); g.len()];
    dg.par_chunks_mut(SILU_CHUNK)
        .zip(du.par_chunks_mut(SILU_CHUNK))
        .zip(g.par_chunks(SILU_CHUNK).zip(u.par_chunks(SILU_CHUNK)).zip(dy.par_chunks(SILU_CHUNK)))
        .for_each(|((dg, du), ((g, u), dy))| {
            for i in 0..dg.len() {
                let s = sigmoid(g[i]);
                dg[i] = dy[i] * u[i] * s * (T::one() + g[i] * (T::one() - s));
                du[i] = dy[i] * g[i] * s;
            }
        });
    Ok((Tensor::from_vec(dg, gate.shape(), gate.device())?, Tensor::from_vec(du, up.shape(), up.device())?))
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(&self, g: &CpuStorage, gl: &Layout, u: &CpuStorage, ul: &Layout) -> Result<(CpuStorage, Shape)> {
        if gl.shape() != ul.shape() {
            bail!("silu-mul: gate {:?} vs up {:?}", gl.dims(), ul.dims());
        }
        let y = dispatch_float!(g.dtype(), silu_mul_fwd(g, gl, u, ul));
        Ok((y, gl.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = match gate.dtype() {
            DType::F32 => silu_mul_bwd::<f32>(gate, up, grad)?,
            DType::F64 => silu_mul_bwd::<f64>(gate, up, grad)?,
            d => bail!("silu-mul: unsupported dtype {d:?}"),
        };
        Ok((Some(dg), Some(du)))
    }
}
