//! The reference kernel: plain Rust over the same blocks, computing the same int32 sums and scaling
//! them in the same order with the same fused multiply-adds as the SIMD kernels, so that their results
//! must equal it bit for bit (`engine/tests/kernels.rs`). It runs on any CPU, but inference prefers
//! candle's kernels where no SIMD kernel of ours runs: this one is written to be read, not to be fast.

use super::{Codes, QuantActivations, QuantWeight, BLOCK, ROWS};

/// One block of 32 activations: codes `round-half-even(x * 127 / max|x|)`; returns `max|x|` and the
/// sum of the codes.
pub(super) fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    let mut total = 0i32;
    for (o, v) in q.iter_mut().zip(x) {
        let c = (v * id).round_ties_even() as i32;
        total += c;
        *o = c as i8;
    }
    (amax, total)
}

/// Outputs of row group `g` for all `m` tokens (see [`super::group`]): per token, row and block,
/// `sums = codes · xq` in int32; then for 8-bit codes `acc += (sums - 128 sum(xq)) * (d_w d_x)`, for
/// 4-bit ones `acc += sums * (d_w d_x)` and `acc += m_w s_x`.
///
/// # Safety
/// `out` points to `m` rows of `w.n()` floats; `x` holds `m` tokens of `w.k()` columns.
pub(super) unsafe fn group(w: &QuantWeight, g: usize, x: &QuantActivations, m: usize, out: *mut f32) {
    let (n, k) = (w.n(), w.k());
    let blocks = k / BLOCK;
    let f16 = |h: u16| half::f16::from_bits(h).to_f32();
    for t in 0..m {
        for r in g * ROWS..n.min((g + 1) * ROWS) {
            let mut acc = 0f32;
            for b in 0..blocks {
                let xi = t * blocks + b;
                let xq = &x.q[xi * BLOCK..(xi + 1) * BLOCK];
                let sums: i32 = (0..BLOCK).map(|c| w.code(r, b * BLOCK + c) as i32 * xq[c] as i32).sum();
                let i = w.scale_index(r, b);
                let scale = f16(w.d[i]) * x.d[xi];
                match w.codes() {
                    Codes::U4 => {
                        acc = (sums as f32).mul_add(scale, acc);
                        acc = f16(w.m[i]).mul_add(x.s[xi], acc);
                    }
                    Codes::U8 => acc = ((sums - 128 * x.sum[xi]) as f32).mul_add(scale, acc),
                }
            }
            // SAFETY: t < m and r < n: inside the caller's m x n output.
            unsafe { *out.add(t * n + r) = acc };
        }
    }
}
