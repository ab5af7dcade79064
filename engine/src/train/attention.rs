//! Causal self-attention over a packed batch, rotary embedding included, as one differentiable op.
//!
//! Built from candle ops, each layer's training attention was some twenty graph nodes per packed
//! sequence (head reshapes and copies, RoPE, grouped-query repeats, scores, mask, softmax, a matmul,
//! concatenation), each one allocating, and each with its own backward and gradient accumulation.
//! Here the forward and backward are written out per (sequence, head) with the matmuls on the gemm
//! crate (the kernels candle itself uses) and softmax probabilities recomputed in the backward rather
//! than stored. Inputs and output stay in the `(tokens, heads * head_dim)` layout of the projections,
//! so no transposes are needed around it. `engine/tests/grad_check.rs` checks it against finite
//! differences and against the composition of candle ops it replaces.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use crate::threads::SendPtr;
use crate::train::ops::{contiguous, with_values, Float};

/// What the op needs to know about the packed batch: the sequences, the heads, and each token's
/// rotary angles.
#[derive(Debug)]
pub struct PackedAttention {
    /// `(first token, length)` of each sequence in the packed token axis.
    pub segments: Vec<(usize, usize)>,
    /// For each sequence, the tokens `(first, length)` it attends to before its own, all of them (a
    /// prompt prefix packed once for several examples, `PackedBatch::push_shared`), or none.
    pub context: Vec<Option<(usize, usize)>>,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// `(tokens, head_dim / 2)` cosines and sines of each token's rotary angles.
    pub cos: Vec<f64>,
    pub sin: Vec<f64>,
    /// Rotary pairs are `(2i, 2i+1)` (GGUF Llama) rather than `(i, i + head_dim/2)` (Hugging Face).
    pub interleaved: bool,
}

/// `q (tokens, heads * head_dim)`, `k` and `v (tokens, kv_heads * head_dim)`, all un-rotated, to the
/// attention output `(tokens, heads * head_dim)`; each sequence attends to its context and causally
/// within itself.
pub fn packed_attention(q: &Tensor, k: &Tensor, v: &Tensor, att: &Arc<PackedAttention>) -> Result<Tensor> {
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, Op(att.clone()))
}

struct Op(Arc<PackedAttention>);

/// The token indices of `ranges`, one range after another.
fn tokens(ranges: &[(usize, usize)]) -> impl Iterator<Item = usize> + '_ {
    ranges.iter().flat_map(|&(from, len)| from..from + len)
}

impl PackedAttention {
    fn rep(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Rotates the `d` values at `x` for token `t` into `y`, times `scale`; `inverse` rotates back
    /// (the transpose of a rotation, used by the backward).
    fn rotate<T: Float>(&self, x: &[T], t: usize, scale: T, inverse: bool, y: &mut [T]) {
        let half = self.head_dim / 2;
        for i in 0..half {
            let c = T::from(self.cos[t * half + i]).unwrap();
            let s = T::from(self.sin[t * half + i]).unwrap();
            let s = if inverse { -s } else { s };
            let (a, b) = if self.interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
            let (xa, xb) = (x[a], x[b]);
            y[a] = (xa * c - xb * s) * scale;
            y[b] = (xa * s + xb * c) * scale;
        }
    }

    /// Rotated copies `(rows, d)` of one head's rows in `ranges` (one after another), times `scale`.
    fn rotated<T: Float>(&self, x: &[T], row: usize, head: usize, ranges: &[(usize, usize)], scale: T) -> Vec<T> {
        let d = self.head_dim;
        let mut y = vec![T::zero(); ranges.iter().map(|r| r.1).sum::<usize>() * d];
        for (i, t) in tokens(ranges).enumerate() {
            let at = t * row + head * d;
            self.rotate(&x[at..at + d], t, scale, false, &mut y[i * d..(i + 1) * d]);
        }
        y
    }

    /// The token ranges sequence `s` attends to: its context, then itself.
    fn keys(&self, s: usize) -> Vec<(usize, usize)> {
        self.context[s].into_iter().chain([self.segments[s]]).collect()
    }

    /// Softmax of `qr krᵀ` (already scaled), `(n, m)` for `n` queries over `m` keys, the last `n` of
    /// which are the queries' own tokens: query `i` sees keys `..=m - n + i`, zeros after.
    fn probabilities<T: Float>(&self, qr: &[T], kr: &[T], n: usize, m: usize) -> Vec<T> {
        let d = self.head_dim;
        let mut p = vec![T::zero(); n * m];
        // SAFETY: p is n x m, qr n x d and kr m x d, all row-major.
        unsafe {
            gemm(
                n,
                m,
                d,
                p.as_mut_ptr(),
                1,
                m as isize,
                false,
                qr.as_ptr(),
                1,
                d as isize,
                kr.as_ptr(),
                d as isize,
                1,
                T::zero(),
                T::one(),
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        for i in 0..n {
            let (row, seen) = (&mut p[i * m..(i + 1) * m], m - n + i + 1);
            let max = row[..seen].iter().fold(T::neg_infinity(), |a, &v| num_traits::Float::max(a, v));
            let mut sum = T::zero();
            for v in &mut row[..seen] {
                *v = (*v - max).exp();
                sum += *v;
            }
            row[..seen].iter_mut().for_each(|v| *v /= sum);
            row[seen..].iter_mut().for_each(|v| *v = T::zero());
        }
        p
    }

    /// The output `(tokens, heads * head_dim)`. `q`, `k`, `v` start at their first column and have row
    /// strides `qs`, `ks`, `vs` (their own widths, or the width of the stacked q/k/v projection).
    fn forward<T: Float>(&self, (q, qs): (&[T], usize), (k, ks): (&[T], usize), (v, vs): (&[T], usize)) -> Vec<T> {
        let (d, hq) = (self.head_dim, self.heads * self.head_dim);
        let tokens = self.tokens();
        let scale = T::from(1.0 / (d as f64).sqrt()).unwrap();
        let mut out = vec![T::zero(); tokens * hq];
        let o = SendPtr(out.as_mut_ptr());
        let tasks: Vec<(usize, usize)> =
            (0..self.segments.len()).flat_map(|s| (0..self.heads).map(move |h| (s, h))).collect();
        tasks.into_par_iter().for_each(|(s, h)| {
            // The whole SendPtr into the closure: edition 2021 would capture just its raw pointer, not Send.
            #[allow(clippy::redundant_locals)]
            let o = o;
            let seg @ (start, n) = self.segments[s];
            let keys = self.keys(s);
            let m = keys.iter().map(|r| r.1).sum();
            let g = h / self.rep();
            let qr = self.rotated(q, qs, h, &[seg], scale);
            let kr = self.rotated(k, ks, g, &keys, T::one());
            let p = self.probabilities(&qr, &kr, n, m);
            // out[seg, head h] = p · v[keys, kv head g], one product per key range, read in place.
            let mut col = 0;
            for (r, &(from, len)) in keys.iter().enumerate() {
                // SAFETY: each (sequence, head) block of the output is written by this task only; strides
                // stay inside the buffers.
                unsafe {
                    gemm(
                        n,
                        d,
                        len,
                        o.0.add(start * hq + h * d),
                        1,
                        hq as isize,
                        r > 0,
                        p.as_ptr().add(col),
                        1,
                        m as isize,
                        v.as_ptr().add(from * vs + g * d),
                        1,
                        vs as isize,
                        T::one(),
                        T::one(),
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                col += len;
            }
        });
        out
    }

    /// Gradients for q, k and v given the output's gradient `go`, written to `dq`, `dk`, `dv` (each with
    /// the row stride beside it, like the inputs).
    ///
    /// # Safety
    /// `dq`, `dk` and `dv` must each hold `tokens` rows of their stride, with the `heads * head_dim`
    /// (resp. `kv_heads * head_dim`) columns written here disjoint from each other's.
    #[allow(clippy::too_many_arguments)]
    unsafe fn backward<T: Float>(
        &self,
        (q, qs): (&[T], usize),
        (k, ks): (&[T], usize),
        (v, vs): (&[T], usize),
        go: &[T],
        (pq, dq_stride): (SendPtr<T>, usize),
        (pk, dk_stride): (SendPtr<T>, usize),
        (pv, dv_stride): (SendPtr<T>, usize),
    ) {
        let (d, hq) = (self.head_dim, self.heads * self.head_dim);
        let scale = T::from(1.0 / (d as f64).sqrt()).unwrap();
        // One task per (sequence, kv head): the query heads sharing a kv head add into its dk, dv.
        let tasks: Vec<(usize, usize)> =
            (0..self.segments.len()).flat_map(|s| (0..self.kv_heads).map(move |g| (s, g))).collect();
        // Each task writes its own rows of dk and dv and returns what its queries send to their context's
        // keys and values, which other sequences share: added once all tasks are done.
        let to_context: Vec<(usize, usize, Vec<T>, Vec<T>)> = tasks
            .into_par_iter()
            .filter_map(|(s, g)| {
                let (pq, pk, pv) = (pq, pk, pv);
                let seg @ (start, n) = self.segments[s];
                let keys = self.keys(s);
                let m: usize = keys.iter().map(|r| r.1).sum();
                let kr = self.rotated(k, ks, g, &keys, T::one());
                let (mut dkr, mut dvs) = (vec![T::zero(); m * d], vec![T::zero(); m * d]);
                let (mut dp, mut dqr) = (vec![T::zero(); n * m], vec![T::zero(); n * d]);
                for h in g * self.rep()..(g + 1) * self.rep() {
                    let qr = self.rotated(q, qs, h, &[seg], scale);
                    let p = self.probabilities(&qr, &kr, n, m);
                    // SAFETY: `start * hq + h * d` is within `go`, which holds (tokens, heads * d) values.
                    let gos = unsafe { go.as_ptr().add(start * hq + h * d) };
                    // SAFETY: (all gemm calls) row-major buffers of the stated shapes; go and v are read
                    // through their (tokens, heads * d) strides.
                    unsafe {
                        // dv += pᵀ go
                        gemm(
                            m,
                            d,
                            n,
                            dvs.as_mut_ptr(),
                            1,
                            d as isize,
                            true,
                            p.as_ptr(),
                            m as isize,
                            1,
                            gos,
                            1,
                            hq as isize,
                            T::one(),
                            T::one(),
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                        // dp = go vᵀ, one block of columns per key range
                        let mut col = 0;
                        for &(from, len) in &keys {
                            gemm(
                                n,
                                len,
                                d,
                                dp.as_mut_ptr().add(col),
                                1,
                                m as isize,
                                false,
                                gos,
                                1,
                                hq as isize,
                                v.as_ptr().add(from * vs + g * d),
                                vs as isize,
                                1,
                                T::zero(),
                                T::one(),
                                false,
                                false,
                                false,
                                Parallelism::None,
                            );
                            col += len;
                        }
                    }
                    // ds = p (dp - rowsum(p dp)), in place of dp.
                    for i in 0..n {
                        let seen = m - n + i + 1;
                        let (pr, dr) = (&p[i * m..i * m + seen], &mut dp[i * m..(i + 1) * m]);
                        let dot = pr.iter().zip(dr.iter()).fold(T::zero(), |a, (&x, &y)| a + x * y);
                        for j in 0..seen {
                            dr[j] = pr[j] * (dr[j] - dot);
                        }
                        dr[seen..].iter_mut().for_each(|x| *x = T::zero());
                    }
                    // SAFETY: row-major buffers of the stated shapes, as for the gemm calls above.
                    unsafe {
                        // dqr = ds kr;  dkr += dsᵀ qr
                        gemm(
                            n,
                            d,
                            m,
                            dqr.as_mut_ptr(),
                            1,
                            d as isize,
                            false,
                            dp.as_ptr(),
                            1,
                            m as isize,
                            kr.as_ptr(),
                            1,
                            d as isize,
                            T::zero(),
                            T::one(),
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                        gemm(
                            m,
                            d,
                            n,
                            dkr.as_mut_ptr(),
                            1,
                            d as isize,
                            true,
                            dp.as_ptr(),
                            m as isize,
                            1,
                            qr.as_ptr(),
                            1,
                            d as isize,
                            T::one(),
                            T::one(),
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                    // dq = scale * rotate⁻¹(dqr).
                    for i in 0..n {
                        // SAFETY: this task owns rows seg of head h in dq.
                        let dst =
                            unsafe { std::slice::from_raw_parts_mut(pq.0.add((start + i) * dq_stride + h * d), d) };
                        self.rotate(&dqr[i * d..(i + 1) * d], start + i, scale, true, dst);
                    }
                }
                // Un-rotated key gradients, in place: token by token, as the keys were rotated.
                let mut row = vec![T::zero(); d];
                for (i, t) in tokens(&keys).enumerate() {
                    row.copy_from_slice(&dkr[i * d..(i + 1) * d]);
                    self.rotate(&row, t, T::one(), true, &mut dkr[i * d..(i + 1) * d]);
                }
                // SAFETY: this task owns rows seg of kv head g in dk and dv (its own tokens are the last n keys).
                let own = (m - n) * d;
                for i in 0..n {
                    // SAFETY: row i of this sequence, kv head g: written by this task only, within the buffer.
                    let dst = unsafe { std::slice::from_raw_parts_mut(pk.0.add((start + i) * dk_stride + g * d), d) };
                    dst.copy_from_slice(&dkr[own + i * d..own + (i + 1) * d]);
                    // SAFETY: as for the key gradient above.
                    let dst = unsafe { std::slice::from_raw_parts_mut(pv.0.add((start + i) * dv_stride + g * d), d) };
                    dst.copy_from_slice(&dvs[own + i * d..own + (i + 1) * d]);
                }
                (own > 0).then(|| {
                    dkr.truncate(own);
                    dvs.truncate(own);
                    (s, g, dkr, dvs)
                })
            })
            .collect();
        for (s, g, dkc, dvc) in to_context {
            let (cs, cn) = self.context[s].expect("only sequences with a context send to it");
            for i in 0..cn {
                // SAFETY: every task has finished; the context's rows of kv head g are inside dk and dv.
                let dk = unsafe { std::slice::from_raw_parts_mut(pk.0.add((cs + i) * dk_stride + g * d), d) };
                dk.iter_mut().zip(&dkc[i * d..(i + 1) * d]).for_each(|(a, &b)| *a += b);
                // SAFETY: as for dk.
                let dv = unsafe { std::slice::from_raw_parts_mut(pv.0.add((cs + i) * dv_stride + g * d), d) };
                dv.iter_mut().zip(&dvc[i * d..(i + 1) * d]).for_each(|(a, &b)| *a += b);
            }
        }
    }

    /// [`Self::forward`] of q, k and v side by side in rows of `w = hq + 2 hk` (the stacked projection).
    pub(crate) fn forward_stacked<T: Float>(&self, x: &[T], (hq, hk, w): (usize, usize, usize)) -> Vec<T> {
        self.forward((x, w), (&x[hq..], w), (&x[hq + hk..], w))
    }

    /// The gradient of [`Self::forward_stacked`] for the output gradient `go`, in the input's layout.
    pub(crate) fn backward_stacked<T: Float>(&self, x: &[T], go: &[T], (hq, hk, w): (usize, usize, usize)) -> Vec<T> {
        assert!(x.len() == self.tokens() * w && go.len() == self.tokens() * hq, "backward_stacked: shapes");
        let mut d = vec![T::zero(); x.len()];
        let p = d.as_mut_ptr();
        // SAFETY: one buffer of the input's shape; q, k and v gradients fill disjoint column blocks.
        unsafe {
            self.backward(
                (x, w),
                (&x[hq..], w),
                (&x[hq + hk..], w),
                go,
                (SendPtr(p), w),
                (SendPtr(p.add(hq)), w),
                (SendPtr(p.add(hq + hk)), w),
            );
        }
        d
    }

    pub(crate) fn tokens(&self) -> usize {
        self.cos.len() / (self.head_dim / 2)
    }

    /// The shape checks of both ops: `dims` of q, k, v must be `(tokens, widths)`.
    fn check(&self, dims: [&[usize]; 3]) -> Result<()> {
        let tokens = self.tokens();
        let (hq, hk) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        if dims != [&[tokens, hq][..], &[tokens, hk], &[tokens, hk]] {
            bail!(
                "packed attention: q {:?}, k {:?}, v {:?} for {tokens} tokens, {hq}/{hk} columns",
                dims[0],
                dims[1],
                dims[2]
            );
        }
        if !self.heads.is_multiple_of(self.kv_heads) || !self.head_dim.is_multiple_of(2) {
            bail!("packed attention: {} heads, {} kv heads, head_dim {}", self.heads, self.kv_heads, self.head_dim);
        }
        if self.segments.iter().chain(self.context.iter().flatten()).any(|&(s, n)| n == 0 || s + n > tokens) {
            bail!("packed attention: a sequence lies outside the {tokens} tokens");
        }
        if self.context.len() != self.segments.len() {
            bail!("packed attention: {} contexts for {} sequences", self.context.len(), self.segments.len());
        }
        Ok(())
    }

    /// Widths of q and of k (= v) in the stacked projection, and its checked row width.
    pub(crate) fn stacked_widths(&self, dims: &[usize]) -> Result<(usize, usize, usize)> {
        let (hq, hk) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let tokens = dims.first().copied().unwrap_or(0);
        self.check([&[tokens, hq], &[tokens, hk], &[tokens, hk]])?;
        if dims != [tokens, hq + 2 * hk] {
            bail!("packed attention: stacked q/k/v {dims:?}, expected ({tokens}, {})", hq + 2 * hk);
        }
        Ok((hq, hk, hq + 2 * hk))
    }
}

impl CustomOp3 for Op {
    fn name(&self) -> &'static str {
        "packed-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.0.check([ql.dims(), kl.dims(), vl.dims()])?;
        let (hq, hk) = (ql.dims()[1], kl.dims()[1]);
        let out = match q.dtype() {
            DType::F32 => CpuStorage::F32(self.0.forward::<f32>(
                (contiguous(q, ql)?, hq),
                (contiguous(k, kl)?, hk),
                (contiguous(v, vl)?, hk),
            )),
            DType::F64 => CpuStorage::F64(self.0.forward::<f64>(
                (contiguous(q, ql)?, hq),
                (contiguous(k, kl)?, hk),
                (contiguous(v, vl)?, hk),
            )),
            d => bail!("packed attention: unsupported dtype {d:?}"),
        };
        Ok((out, ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        fn run<T: Float>(
            att: &PackedAttention,
            q: &Tensor,
            k: &Tensor,
            v: &Tensor,
            grad: &Tensor,
        ) -> Result<(Tensor, Tensor, Tensor)> {
            let (hq, hk) = (q.dim(1)?, k.dim(1)?);
            let (mut dq, mut dk, mut dv) =
                (vec![T::zero(); q.elem_count()], vec![T::zero(); k.elem_count()], vec![T::zero(); v.elem_count()]);
            with_values::<T, _>(q, |q_v| {
                with_values(k, |k_v| {
                    with_values(v, |v_v| {
                        with_values(grad, |go| {
                            // SAFETY: three separate buffers of the inputs' shapes.
                            unsafe {
                                att.backward(
                                    (q_v, hq),
                                    (k_v, hk),
                                    (v_v, hk),
                                    go,
                                    (SendPtr(dq.as_mut_ptr()), hq),
                                    (SendPtr(dk.as_mut_ptr()), hk),
                                    (SendPtr(dv.as_mut_ptr()), hk),
                                );
                            }
                            Ok(())
                        })
                    })
                })
            })?;
            let dev = q.device();
            Ok((
                Tensor::from_vec(dq, q.shape(), dev)?,
                Tensor::from_vec(dk, k.shape(), dev)?,
                Tensor::from_vec(dv, v.shape(), dev)?,
            ))
        }
        let (dq, dk, dv) = match q.dtype() {
            DType::F32 => run::<f32>(&self.0, q, k, v, grad)?,
            DType::F64 => run::<f64>(&self.0, q, k, v, grad)?,
            d => bail!("packed attention: unsupported dtype {d:?}"),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// [`packed_attention`] reading q, k and v side by side in one `(tokens, (heads + 2 kv_heads) *
/// head_dim)` tensor, the output of the stacked q/k/v projection (`ops::lora_linear_stacked`), and
/// writing their gradients into one tensor of that shape: no slicing copies either way.
pub fn packed_attention_stacked(qkv: &Tensor, att: &Arc<PackedAttention>) -> Result<Tensor> {
    qkv.contiguous()?.apply_op1_arc(Arc::new(Box::new(Stacked(att.clone()))))
}

struct Stacked(Arc<PackedAttention>);

impl CustomOp1 for Stacked {
    fn name(&self) -> &'static str {
        "packed-attention-stacked"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (hq, hk, w) = self.0.stacked_widths(l.dims())?;
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(self.0.forward_stacked(contiguous::<f32>(s, l)?, (hq, hk, w))),
            DType::F64 => CpuStorage::F64(self.0.forward_stacked(contiguous::<f64>(s, l)?, (hq, hk, w))),
            d => bail!("packed attention: unsupported dtype {d:?}"),
        };
        Ok((out, Shape::from((l.dims()[0], hq))))
    }

    fn bwd(&self, qkv: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        fn run<T: Float>(att: &PackedAttention, qkv: &Tensor, grad: &Tensor) -> Result<Tensor> {
            let widths = att.stacked_widths(qkv.dims())?;
            let d = with_values::<T, _>(qkv, |x| with_values(grad, |go| Ok(att.backward_stacked(x, go, widths))))?;
            Tensor::from_vec(d, qkv.shape(), qkv.device())
        }
        Ok(Some(match qkv.dtype() {
            DType::F32 => run::<f32>(&self.0, qkv, grad)?,
            DType::F64 => run::<f64>(&self.0, qkv, grad)?,
            d => bail!("packed attention: unsupported dtype {d:?}"),
        }))
    }
}
