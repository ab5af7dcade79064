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
use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::sync::Arc;

use crate::kernels::amx;
use crate::threads::SendPtr;

pub(crate) trait Float: WithDType + num_traits::Float + Send + Sync + 'static {
    /// The values as f32 when they are f32: the AMX path takes f32 only.
    fn as_f32(v: &[Self]) -> Option<&[f32]>;
    fn from_f32_vec(v: Vec<f32>) -> Vec<Self>;
}
impl Float for f32 {
    fn as_f32(v: &[f32]) -> Option<&[f32]> {
        Some(v)
    }
    fn from_f32_vec(v: Vec<f32>) -> Vec<f32> {
        v
    }
}
impl Float for f64 {
    fn as_f32(_: &[f64]) -> Option<&[f32]> {
        None
    }
    fn from_f32_vec(v: Vec<f32>) -> Vec<f64> {
        v.into_iter().map(f64::from).collect()
    }
}

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
}

struct FrozenLinear {
    w: Tensor,
    packed: Option<Arc<FrozenBf16>>,
}

/// `x Wᵀ` for a contiguous `x (.., in)`: `(m, out)` and the output shape.
fn frozen_forward(
    w: &Tensor,
    packed: Option<&Arc<FrozenBf16>>,
    s: &CpuStorage,
    l: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (out_dim, in_dim) = w.dims2()?;
    let dims = l.shape().dims();
    if dims.last() != Some(&in_dim) || !l.is_contiguous() {
        bail!("frozen-linear: input {:?} (contiguous: {}) vs weight ({out_dim}, {in_dim})", dims, l.is_contiguous());
    }
    let mut out = dims.to_vec();
    *out.last_mut().unwrap() = out_dim;
    let y = match s {
        CpuStorage::F32(_) => {
            CpuStorage::F32(with_values(w, |w| Ok(frozen_forward_rows::<f32>(w, out_dim, packed, contiguous(s, l)?)))?)
        }
        CpuStorage::F64(_) => {
            CpuStorage::F64(with_values(w, |w| Ok(frozen_forward_rows::<f64>(w, out_dim, packed, contiguous(s, l)?)))?)
        }
        _ => bail!("frozen-linear: unsupported dtype {:?}", s.dtype()),
    };
    Ok((y, Shape::from(out)))
}

/// `x Wᵀ` for the rows of `x (m, in)` and `W (out, in)`: on AMX bf16 tiles where packed (f32 only).
fn frozen_forward_rows<T: Float>(w: &[T], out_dim: usize, packed: Option<&Arc<FrozenBf16>>, x: &[T]) -> Vec<T> {
    let in_dim = w.len() / out_dim;
    let m = x.len() / in_dim;
    if let (Some(p), Some(x)) = (packed, T::as_f32(x)) {
        return T::from_f32_vec(amx::matmul(x, m, &p.forward));
    }
    // W (out, in) read as the (in, out) matrix Wᵀ: column stride `in`.
    row_split_matmul(m, out_dim, in_dim, x, w, (in_dim, 1))
}

/// Rows of the output per task at least: below this, the weight packing each task repeats costs more
/// than the split gains.
const MIN_SPLIT_ROWS: usize = 64;

/// `lhs (m, k) · rhs (k, n)` for a row-major `lhs`, `rhs` given by its (column, row) strides.
pub(crate) fn row_split_matmul<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[T],
    rhs: &[T],
    rhs_strides: (usize, usize),
) -> Vec<T> {
    let mut dst = vec![T::zero(); m * n];
    row_split_matmul_into(&mut dst, n, T::one(), false, m, n, k, lhs, k, rhs, rhs_strides);
    dst
}

/// `dst (m, n) = beta lhs rhs` (or `dst += beta lhs rhs` with `accumulate`), with the rows split into
/// one block per pool thread, each a single-threaded gemm call. On 2 AVX2 cores this ran the frozen
/// weights' shapes at ~100 GFLOP/s against ~88 for gemm's own rayon split (which splits the columns
/// too, and synchronises between its blocks); the frozen matmuls are two-thirds of a training step.
/// `dst` and `lhs` are row-major with row strides `dst_stride >= n` and `lhs_stride >= k` (so either
/// can be a block of columns of a wider matrix); `rhs` is given by its (column, row) strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn row_split_matmul_into<T: Float>(
    dst: &mut [T],
    dst_stride: usize,
    beta: T,
    accumulate: bool,
    m: usize,
    n: usize,
    k: usize,
    lhs: &[T],
    lhs_stride: usize,
    rhs: &[T],
    (rhs_cs, rhs_rs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    let fits = |len: usize, stride: usize, cols: usize| cols <= stride && (m - 1) * stride + cols <= len;
    assert!(
        fits(dst.len(), dst_stride, n) && fits(lhs.len(), lhs_stride, k),
        "row_split_matmul: ({m}, {k}) x ({k}, {n}) does not fit dst/lhs"
    );
    assert!(k == 0 || (k - 1) * rhs_rs + (n - 1) * rhs_cs < rhs.len(), "row_split_matmul: rhs too short");
    let threads = rayon::current_num_threads();
    let tasks = threads.min(m / MIN_SPLIT_ROWS).max(1);
    let rows = m.div_ceil(tasks);
    let d = SendPtr(dst.as_mut_ptr());
    // SAFETY: the rows of dst and lhs lie inside their slices (asserted above) and each task writes only
    // its own rows of dst (with strides >= widths, rows never overlap); rhs holds every (k, n) element.
    let block = |first: usize, par: Parallelism| unsafe {
        // The whole SendPtr into the closure: edition 2021 would capture just its raw pointer, not Send.
        #[allow(clippy::redundant_locals)]
        let d = d;
        let count = rows.min(m - first);
        gemm(
            count,
            n,
            k,
            d.0.add(first * dst_stride),
            1,
            dst_stride as isize,
            accumulate,
            lhs.as_ptr().add(first * lhs_stride),
            1,
            lhs_stride as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::one(),
            beta,
            false,
            false,
            false,
            par,
        );
    };
    if tasks == 1 {
        // Too few rows to split: gemm's own split of the columns (the output head's few loss rows).
        return block(0, if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None });
    }
    (0..tasks).into_par_iter().for_each(|t| block(t * rows, Parallelism::None));
}

/// The input gradient `g W` as `(m, in)`.
fn frozen_backward(w: &Tensor, packed: Option<&Arc<FrozenBf16>>, grad: &Tensor) -> Result<Tensor> {
    let (out_dim, in_dim) = w.dims2()?;
    let m = grad.elem_count() / out_dim;
    if !grad.device().is_cpu() {
        return grad.contiguous()?.reshape((m, out_dim))?.matmul(w);
    }
    let dev = grad.device();
    match grad.dtype() {
        DType::F32 => Tensor::from_vec(
            with_values(grad, |g| with_values(w, |w| Ok(frozen_backward_rows::<f32>(w, out_dim, packed, g))))?,
            (m, in_dim),
            dev,
        ),
        DType::F64 => Tensor::from_vec(
            with_values(grad, |g| with_values(w, |w| Ok(frozen_backward_rows::<f64>(w, out_dim, packed, g))))?,
            (m, in_dim),
            dev,
        ),
        d => bail!("frozen-linear: unsupported dtype {d:?}"),
    }
}

/// `g W` for the rows of `g (m, out)` and `W (out, in)`: on AMX bf16 tiles where packed (f32 only).
fn frozen_backward_rows<T: Float>(w: &[T], out_dim: usize, packed: Option<&Arc<FrozenBf16>>, g: &[T]) -> Vec<T> {
    let (in_dim, m) = (w.len() / out_dim, g.len() / out_dim);
    if let (Some(p), Some(g)) = (packed, T::as_f32(g)) {
        return T::from_f32_vec(amx::matmul(g, m, &p.backward));
    }
    row_split_matmul(m, in_dim, out_dim, g, w, (1, in_dim))
}

/// Runs `f` on a CPU tensor's values in row-major order, borrowing them when the tensor is contiguous.
pub(crate) fn with_values<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(storage) = &*storage else { bail!("expected a CPU tensor") };
    f(contiguous::<T>(storage, layout)?)
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
/// output the size of `y` or of its gradient. The backward returns gradients for x, A and B; the
/// adapter's products are accumulated into the frozen product's output in place (gemm reads it back).
/// It is [`lora_linear_stacked`] with one layer.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    packed: Option<&Arc<FrozenBf16>>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    lora_linear_stacked(x, w, packed, &[(w.dim(0)?, Some((a, b)))], scale)
}

/// `C = beta · op(lhs) · rhs` for small products whose inner dimension is the token axis (the adapter
/// gradients), on gemm's own split: `lhs` and `rhs` given by (column, row) strides.
#[allow(clippy::too_many_arguments)]
fn small_matmul<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[T],
    lhs_strides: (usize, usize),
    rhs: &[T],
    rhs_strides: (usize, usize),
    beta: T,
) -> Vec<T> {
    let last = |(cs, rs): (usize, usize), rows: usize, cols: usize| (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs;
    assert!(
        last(lhs_strides, m, k) < lhs.len().max(1) && last(rhs_strides, k, n) < rhs.len().max(1),
        "small_matmul: operand too short"
    );
    let mut dst = vec![T::zero(); m * n];
    if m * n * k == 0 {
        return dst;
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: dst is m x n row-major; every (m, k) and (k, n) element lies within lhs and rhs (asserted).
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_strides.0 as isize,
            lhs_strides.1 as isize,
            rhs.as_ptr(),
            rhs_strides.0 as isize,
            rhs_strides.1 as isize,
            T::zero(),
            beta,
            false,
            false,
            false,
            par,
        );
    }
    dst
}

// ---------------------------------------------------------------------------------------------------
// Several LoRA linear layers over one input (q, k, v; gate, up) as one wider matmul.

/// The layers `y_i = x W_iᵀ + scale (x A_iᵀ) B_iᵀ` that read the same `x`, as one op over their weights
/// stacked `W (Σ n_i, k)`: output `(.., Σ n_i)`, the layers' outputs side by side. One frozen matmul
/// 960 (q, k, v) or 3072 (gate, up) columns wide instead of three or two narrower ones, and in the
/// backward one input gradient `g W` (inner dimension Σ n_i) instead of two or three that candle then
/// adds up. `parts` gives each layer's width and adapter (all adapters of one rank; a layer without one
/// is frozen).
pub fn lora_linear_stacked(
    x: &Tensor,
    w: &Tensor,
    packed: Option<&Arc<FrozenBf16>>,
    parts: &[(usize, Option<(&Tensor, &Tensor)>)],
    scale: f64,
) -> Result<Tensor> {
    let adapters: Vec<(&Tensor, &Tensor)> = parts.iter().filter_map(|p| p.1).collect();
    if parts.iter().map(|p| p.0).sum::<usize>() != w.dim(0)? {
        bail!(
            "lora-linear-stacked: parts {:?} vs weight {:?}",
            parts.iter().map(|p| p.0).collect::<Vec<_>>(),
            w.dims()
        );
    }
    if adapters.is_empty() {
        return frozen_linear_packed(x, w, packed);
    }
    let r = adapters[0].0.dim(0)?;
    for (&(n, _), (a, b)) in parts.iter().filter(|p| p.1.is_some()).zip(&adapters) {
        if a.dims() != [r, w.dim(1)?] || b.dims() != [n, r] {
            bail!(
                "lora-linear-stacked: A {:?}, B {:?} for a layer ({n}, {}) of rank {r}",
                a.dims(),
                b.dims(),
                w.dim(1)?
            );
        }
    }
    // The adapters stacked too (small copies, with cat's backward splitting their gradients again).
    let a = Tensor::cat(&adapters.iter().map(|p| p.0).collect::<Vec<_>>(), 0)?.contiguous()?;
    let b = Tensor::cat(&adapters.iter().map(|p| p.1).collect::<Vec<_>>(), 0)?.contiguous()?;
    let op = LoraStacked::new(w, packed, parts.iter().map(|p| (p.0, p.1.is_some())).collect(), r, scale)?;
    x.contiguous()?.apply_op3(&a, &b, op)
}

pub(crate) struct LoraStacked {
    w: Tensor,
    packed: Option<Arc<FrozenBf16>>,
    scale: f64,
    r: usize,
    /// Width of each layer and whether it has an adapter.
    parts: Vec<(usize, bool)>,
}

impl LoraStacked {
    /// The layers of widths `parts` (each with or without an adapter of rank `r`) over their stacked
    /// weight `w`, for the hand-written training step, which calls [`Self::forward_rows`] and
    /// [`Self::backward_rows`] directly.
    pub(crate) fn new(
        w: &Tensor,
        packed: Option<&Arc<FrozenBf16>>,
        parts: Vec<(usize, bool)>,
        r: usize,
        scale: f64,
    ) -> Result<Self> {
        if parts.iter().map(|p| p.0).sum::<usize>() != w.dim(0)? {
            bail!("lora-linear-stacked: parts {parts:?} vs weight {:?}", w.dims());
        }
        Ok(Self { w: w.clone(), packed: packed.cloned(), scale, r, parts })
    }

    /// `(column of y, first row of the stacked B, adapter index)` of each layer with an adapter, and its width.
    fn adapted(&self) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
        let mut column = 0;
        let mut row = 0;
        let mut index = 0;
        self.parts.iter().filter_map(move |&(n, lora)| {
            let at = (column, row, index, n);
            column += n;
            if !lora {
                return None;
            }
            row += n;
            index += 1;
            Some(at)
        })
    }

    /// y = x Wᵀ, then each layer's block of columns += s u_j B_jᵀ with u = x Aᵀ `(m, R)`.
    /// `a` holds the adapters' A stacked `(R, k)`, `b` their B one after another.
    pub(crate) fn forward_rows<T: Float>(&self, x: &[T], a: &[T], b: &[T]) -> Result<Vec<T>> {
        let (n, k) = self.w.dims2()?;
        let (m, r, big_r) = (x.len() / k, self.r, a.len() / k);
        let mut y = with_values(&self.w, |w| Ok(frozen_forward_rows(w, n, self.packed.as_ref(), x)))?;
        if big_r == 0 {
            return Ok(y);
        }
        let u = row_split_matmul(m, big_r, k, x, a, (k, 1));
        let s = T::from(self.scale).unwrap();
        for (col, brow, j, nj) in self.adapted() {
            row_split_matmul_into(&mut y[col..], n, s, true, m, nj, r, &u[j * r..], big_r, &b[brow * r..], (r, 1));
        }
        Ok(y)
    }

    /// dx = g W + (s g_j B_j)_j A;  dA = (s g_j B_j)_jᵀ x;  dB_j = s g_jᵀ u_j.
    pub(crate) fn backward_rows<T: Float>(
        &self,
        x: &[T],
        a: &[T],
        b: &[T],
        g: &[T],
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let (n, k) = self.w.dims2()?;
        let (m, r, big_r) = (x.len() / k, self.r, a.len() / k);
        if big_r == 0 {
            return Ok((
                with_values(&self.w, |w| Ok(frozen_backward_rows(w, n, self.packed.as_ref(), g)))?,
                vec![],
                vec![],
            ));
        }
        let s = T::from(self.scale).unwrap();
        let mut gb = vec![T::zero(); m * big_r];
        for (col, brow, j, nj) in self.adapted() {
            row_split_matmul_into(&mut gb[j * r..], big_r, s, false, m, r, nj, &g[col..], n, &b[brow * r..], (1, r));
        }
        let mut dx = with_values(&self.w, |w| Ok(frozen_backward_rows(w, n, self.packed.as_ref(), g)))?;
        row_split_matmul_into(&mut dx, k, T::one(), true, m, k, big_r, &gb, big_r, a, (1, k));
        let da = small_matmul(big_r, k, m, &gb, (big_r, 1), x, (1, k), T::one());
        let u = row_split_matmul(m, big_r, k, x, a, (k, 1));
        let mut db = Vec::with_capacity(b.len());
        for (col, _, j, nj) in self.adapted() {
            db.extend(small_matmul(nj, r, m, &g[col..], (n, 1), &u[j * r..], (1, big_r), s));
        }
        Ok((dx, da, db))
    }

    fn backward<T: Float>(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dev = x.device();
        let (dx, da, db) = with_values::<T, _>(x, |x| {
            with_values(a, |a| with_values(b, |b| with_values(grad, |g| self.backward_rows(x, a, b, g))))
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(da, a.shape(), dev)?),
            Some(Tensor::from_vec(db, b.shape(), dev)?),
        ))
    }
}

impl CustomOp3 for LoraStacked {
    fn name(&self) -> &'static str {
        "lora-linear-stacked"
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
        let (n, k) = self.w.dims2()?;
        if xl.dims().last() != Some(&k) || !xl.is_contiguous() {
            bail!("lora-linear-stacked: x {:?} vs weight {:?}", xl.dims(), self.w.dims());
        }
        let y = match x {
            CpuStorage::F32(_) => {
                CpuStorage::F32(self.forward_rows(contiguous(x, xl)?, contiguous(a, al)?, contiguous(b, bl)?)?)
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(self.forward_rows(contiguous(x, xl)?, contiguous(a, al)?, contiguous(b, bl)?)?)
            }
            _ => bail!("lora-linear-stacked: unsupported dtype {:?}", x.dtype()),
        };
        let mut out = xl.dims().to_vec();
        *out.last_mut().unwrap() = n;
        Ok((y, Shape::from(out)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        match x.dtype() {
            DType::F32 => self.backward::<f32>(x, a, b, grad),
            DType::F64 => self.backward::<f64>(x, a, b, grad),
            d => bail!("lora-linear-stacked: unsupported dtype {d:?}"),
        }
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
    Ok(rms_norm_rows(contiguous::<T>(x, xl)?, contiguous::<T>(w, wl)?, eps))
}

/// RMSNorm of each row of `x` (rows of `w.len()`).
pub(crate) fn rms_norm_rows<T: Float>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
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
    y
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
    let dx = with_values::<T, _>(x, |xv| {
        with_values(w, |wv| {
            with_values(g, |gv| {
                let mut dx = vec![T::zero(); xv.len()];
                rms_norm_grad_rows(xv, wv, gv, eps, &mut dx, false);
                Ok(dx)
            })
        })
    })?;
    Tensor::from_vec(dx, x.shape(), x.device())
}

/// The input gradient of [`rms_norm_rows`] for the output gradient `g`, written to `dx` (added to it
/// with `accumulate`: the residual stream's gradient in the hand-written training step).
pub(crate) fn rms_norm_grad_rows<T: Float>(x: &[T], w: &[T], g: &[T], eps: f64, dx: &mut [T], accumulate: bool) {
    let d = w.len();
    assert!(x.len() == g.len() && x.len() == dx.len() && x.len().is_multiple_of(d), "rms_norm_grad_rows: shapes");
    let (eps, n) = (T::from(eps).unwrap(), T::from(d).unwrap());
    dx.par_chunks_mut(d).zip(x.par_chunks(d).zip(g.par_chunks(d))).for_each(|(dx, (x, g))| {
        let (mut ss, mut dot) = (T::zero(), T::zero());
        for i in 0..d {
            ss += x[i] * x[i];
            dot += x[i] * g[i] * w[i];
        }
        let r = (ss / n + eps).sqrt().recip();
        let c = r * r * r * dot / n;
        for i in 0..d {
            let v = r * g[i] * w[i] - x[i] * c;
            dx[i] = if accumulate { dx[i] + v } else { v };
        }
    });
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
    with_values::<T, _>(gate, |g| with_values(up, |u| with_values(grad, |dy| silu_mul_grad(gate, up, g, u, dy))))
}

fn silu_mul_grad<T: Float>(gate: &Tensor, up: &Tensor, g: &[T], u: &[T], dy: &[T]) -> Result<(Tensor, Tensor)> {
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

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = match gate.dtype() {
            DType::F32 => silu_mul_bwd::<f32>(gate, up, grad)?,
            DType::F64 => silu_mul_bwd::<f64>(gate, up, grad)?,
            d => bail!("silu-mul: unsupported dtype {d:?}"),
        };
        Ok((Some(dg), Some(du)))
    }
}

/// [`silu_mul`] of the two halves of each row of `gate_up (.., 2h)`: the output of the stacked
/// gate/up projection ([`lora_linear_stacked`]) read in place, and its gradient written as one tensor.
pub fn silu_mul_stacked(gate_up: &Tensor) -> Result<Tensor> {
    gate_up.contiguous()?.apply_op1(SiluMulStacked)
}

struct SiluMulStacked;

/// Rows per rayon task for a hidden width `h` (about [`SILU_CHUNK`] elements).
fn silu_rows(h: usize) -> usize {
    (SILU_CHUNK / h.max(1)).max(1)
}

pub(crate) fn silu_mul_stacked_fwd<T: Float>(gu: &[T], h: usize) -> Vec<T> {
    let mut y = vec![T::zero(); gu.len() / 2];
    let rows = silu_rows(h);
    y.par_chunks_mut(rows * h).zip(gu.par_chunks(rows * 2 * h)).for_each(|(y, gu)| {
        for (y, gu) in y.chunks_mut(h).zip(gu.chunks(2 * h)) {
            let (g, u) = gu.split_at(h);
            for i in 0..h {
                y[i] = g[i] * sigmoid(g[i]) * u[i];
            }
        }
    });
    y
}

fn silu_mul_stacked_bwd<T: Float>(gu: &Tensor, grad: &Tensor) -> Result<Tensor> {
    let h = gu.dim(D::Minus1)? / 2;
    let d = with_values::<T, _>(gu, |gu| with_values(grad, |dy| Ok(silu_mul_stacked_grad_rows(gu, dy, h))))?;
    Tensor::from_vec(d, gu.shape(), gu.device())
}

/// The gradient of [`silu_mul_stacked_fwd`] for the output gradient `dy`: gate and up halves of each row.
pub(crate) fn silu_mul_stacked_grad_rows<T: Float>(gu_v: &[T], dy: &[T], h: usize) -> Vec<T> {
    assert!(gu_v.len() == 2 * dy.len(), "silu_mul_stacked_grad_rows: shapes");
    let mut d = vec![T::zero(); gu_v.len()];
    let rows = silu_rows(h);
    d.par_chunks_mut(rows * 2 * h).zip(gu_v.par_chunks(rows * 2 * h).zip(dy.par_chunks(rows * h))).for_each(
        |(d, (gu, dy))| {
            for (d, (gu, dy)) in d.chunks_mut(2 * h).zip(gu.chunks(2 * h).zip(dy.chunks(h))) {
                let (g, u) = gu.split_at(h);
                let (dg, du) = d.split_at_mut(h);
                for i in 0..h {
                    let s = sigmoid(g[i]);
                    dg[i] = dy[i] * u[i] * s * (T::one() + g[i] * (T::one() - s));
                    du[i] = dy[i] * g[i] * s;
                }
            }
        },
    );
    d
}

impl CustomOp1 for SiluMulStacked {
    fn name(&self) -> &'static str {
        "silu-mul-stacked"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut dims = l.dims().to_vec();
        let Some(last) = dims.last_mut().filter(|w| **w % 2 == 0) else {
            bail!("silu-mul-stacked: the last dimension of {:?} must hold gate and up halves", l.dims());
        };
        *last /= 2;
        let h = *last;
        let y = match s {
            CpuStorage::F32(_) => CpuStorage::F32(silu_mul_stacked_fwd::<f32>(contiguous(s, l)?, h)),
            CpuStorage::F64(_) => CpuStorage::F64(silu_mul_stacked_fwd::<f64>(contiguous(s, l)?, h)),
            _ => bail!("silu-mul-stacked: unsupported dtype {:?}", s.dtype()),
        };
        Ok((y, Shape::from(dims)))
    }

    fn bwd(&self, gu: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(match gu.dtype() {
            DType::F32 => silu_mul_stacked_bwd::<f32>(gu, grad)?,
            DType::F64 => silu_mul_stacked_bwd::<f64>(gu, grad)?,
            d => bail!("silu-mul-stacked: unsupported dtype {d:?}"),
        }))
    }
}
