//! The inference forward's non-matmul work on plain f32 rows: RMSNorm, RoPE, attention over the KV
//! cache, SiLU-gating.
//!
//! Why not candle ops: generating one token runs ~25 small ops per layer; as tensors each allocates,
//! dispatches and (for the KV cache) re-concatenates everything seen so far, which cost 15 of the
//! 20 ms a token took. Here they are loops over the rows, the cache grows in place, and work is
//! split across threads only where a prompt makes it worth it.

use rayon::prelude::*;

/// `x / rms(x) * w` for each row of `x` (rows of `w.len()`).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (o, r) in out.chunks_mut(w.len()).zip(x.chunks(w.len())) {
        let ms = r.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        let s = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in o.iter_mut().zip(r).zip(w) {
            *o = v * s * g;
        }
    }
    out
}

/// Rotates each head of each row in place; row `i` is at position `pos + i`. `cos`/`sin` are
/// `(positions, head_dim / 2)`. Interleaved pairs `(2j, 2j+1)` (GGUF Llama) or halves `(j, j + d/2)`.
pub fn rope(x: &mut [f32], heads: usize, head_dim: usize, pos: usize, cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = head_dim / 2;
    for (i, row) in x.chunks_mut(heads * head_dim).enumerate() {
        let (c, s) = (&cos[(pos + i) * half..][..half], &sin[(pos + i) * half..][..half]);
        for h in row.chunks_mut(head_dim) {
            for j in 0..half {
                let (a, b) = if interleaved { (2 * j, 2 * j + 1) } else { (j, j + half) };
                let (x0, x1) = (h[a], h[b]);
                h[a] = x0 * c[j] - x1 * s[j];
                h[b] = x0 * s[j] + x1 * c[j];
            }
        }
    }
}

/// Causal attention of `q` (`m` rows of `heads * head_dim`, positions `past..past+m`) over the cache
/// `k`, `v` (`past + m` rows of `kv_heads * head_dim`); grouped-query heads share a key/value head.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    m: usize,
    past: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let group = heads / kv_heads;
    let mut out = vec![0f32; m * heads * head_dim];
    let a = Attention { q, k, v, past, heads, kv_heads, head_dim };
    let avx2 = avx2();
    let one = |(idx, o): (usize, &mut [f32])| {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: avx2() checked the CPU.
            return unsafe { a.group_avx2(idx, o) };
        }
        a.group(idx, o)
    };
    // A generated token's 3 groups are a few microseconds each: threads only for prompts.
    if m * (past + m) < 4096 {
        out.chunks_mut(group * head_dim).enumerate().for_each(one);
    } else {
        out.par_chunks_mut(group * head_dim).enumerate().with_min_len(2).for_each(one);
    }
    out
}

/// True where the CPU has AVX2 (the same check as the AVX2 matmul kernel's). The build targets
/// baseline x86-64 (SSE2), so the attention loops are also compiled for AVX2 and picked at run time:
/// 8 lanes instead of 4, the same arithmetic (no fused multiply-adds are formed), so the same results.
fn avx2() -> bool {
    crate::kernels::Kernel::Avx2.supported()
}

struct Attention<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    past: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention<'_> {
    /// [`Self::group`] with AVX2 + FMA.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn group_avx2(&self, idx: usize, o: &mut [f32]) {
        self.group(idx, o)
    }

    /// Outputs `o` of query row `idx / kv_heads` for the query heads sharing key/value head
    /// `idx % kv_heads`: each key and value row is read once for all of them (read once per head,
    /// they were most of the attention's time).
    #[inline(always)]
    fn group(&self, idx: usize, o: &mut [f32]) {
        let d = self.head_dim;
        let group = self.heads / self.kv_heads;
        let kw = self.kv_heads * d;
        let (i, kh) = (idx / self.kv_heads, idx % self.kv_heads);
        let scale = 1.0 / (d as f32).sqrt();
        let qs = &self.q[(i * self.heads + kh * group) * d..][..group * d];
        let n = self.past + i + 1;
        // Scores, head-major: p[h * n + j].
        let mut p = vec![0f32; group * n];
        for j in 0..n {
            let kj = &self.k[j * kw + kh * d..][..d];
            for (h, qh) in qs.chunks_exact(d).enumerate() {
                p[h * n + j] = dot(qh, kj) * scale;
            }
        }
        let mut inv = vec![0f32; group];
        for (ph, inv) in p.chunks_exact_mut(n).zip(inv.iter_mut()) {
            let max = ph.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0f32;
            for e in ph.iter_mut() {
                *e = (*e - max).exp();
                total += *e;
            }
            *inv = 1.0 / total;
        }
        for j in 0..n {
            let vj = &self.v[j * kw + kh * d..][..d];
            for (h, oh) in o.chunks_exact_mut(d).enumerate() {
                let w = p[h * n + j] * inv[h];
                for (o, x) in oh.iter_mut().zip(vj) {
                    *o += w * x;
                }
            }
        }
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums so the compiler keeps them in vector lanes.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// `silu(gate) * up`, element-wise.
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()
}

/// `x += y`.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
