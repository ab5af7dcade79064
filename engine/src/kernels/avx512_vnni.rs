//! The AVX-512 VNNI kernel (`vpdpbusd`: 64 multiply-adds per instruction; Sapphire Rapids, Zen 4)
//! and the AVX-512 activation quantizer.

use std::arch::x86_64::*;

use super::{Codes, QuantActivations, QuantWeight, BLOCK, ROWS, TOKENS};

/// One block of 32: codes `round-half-even(x * 127 / max|x|)` (the default rounding of `vcvtps2dq`);
/// returns `max|x|` and the sum of the codes.
///
/// # Safety
/// The CPU has the instructions named in `target_feature`; `x` and `q` point to 32 readable floats and
/// 32 writable bytes.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quantize_block(x: *const f32, q: *mut i8) -> (f32, i32) {
    let (v0, v1) = (_mm512_loadu_ps(x), _mm512_loadu_ps(x.add(16)));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    let id = _mm512_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
    let (q0, q1) = (_mm512_cvtps_epi32(_mm512_mul_ps(v0, id)), _mm512_cvtps_epi32(_mm512_mul_ps(v1, id)));
    _mm_storeu_si128(q as *mut __m128i, _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(q.add(16) as *mut __m128i, _mm512_cvtepi32_epi8(q1));
    (amax, _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)))
}

/// Outputs of row group `g` for all `m` tokens, `TOKENS` at a time (see [`super::group`]).
///
/// # Safety
/// The CPU has the instructions named in `target_feature`; `x` holds `m` tokens of `w.k()` columns;
/// `out` points to `m` rows of `w.n()` floats (this writes row group `g`'s columns only).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn group(w: &QuantWeight, g: usize, x: &QuantActivations, m: usize, out: *mut f32) {
    let mut t = 0;
    while t + TOKENS <= m {
        match w.codes {
            Codes::U8 => tile::<TOKENS, false>(w, g, x, t, out),
            Codes::U4 => tile::<TOKENS, true>(w, g, x, t, out),
        }
        t += TOKENS;
    }
    while t < m {
        match w.codes {
            Codes::U8 => tile::<1, false>(w, g, x, t, out),
            Codes::U4 => tile::<1, true>(w, g, x, t, out),
        }
        t += 1;
    }
}

/// 16 outputs of `T` tokens: for each block, `int32 sums = codes · xq` (8 `vpdpbusd`, the token's
/// 4-byte groups broadcast), then for 8-bit codes (`w = d (code - 128)`)
/// `acc += (sums - 128 sum(xq)) * d_w d_x`, and for 4-bit ones (`w = d code + m`, Q4_1)
/// `acc += sums * d_w d_x + m_w s_x` as llama.cpp computes it.
/// Written with every index constant after unrolling so that codes and sums stay in registers.
///
/// # Safety
/// As for `group`, and tokens `t0..t0 + T` are among its `m`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile<const T: usize, const U4: bool>(
    w: &QuantWeight,
    g: usize,
    x: &QuantActivations,
    t0: usize,
    out: *mut f32,
) {
    let (k, kb, n) = (w.k, w.blocks, w.n);
    let bytes = w.codes.block_bytes();
    assert!(T == 1 || T == 4);
    let (mut a0, mut a1, mut a2, mut a3) =
        (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
    let nibble = _mm512_set1_epi8(0x0f);
    let xq = x.q.as_ptr().add(t0 * k) as *const i32;
    for b in 0..kb {
        let blk = g * kb + b;
        let base = w.data.as_ptr().add(blk * bytes) as *const __m512i;
        let wv: [__m512i; 8] = if U4 {
            let (v0, v1, v2, v3) = (
                _mm512_loadu_si512(base),
                _mm512_loadu_si512(base.add(1)),
                _mm512_loadu_si512(base.add(2)),
                _mm512_loadu_si512(base.add(3)),
            );
            [
                _mm512_and_si512(v0, nibble),
                _mm512_and_si512(v1, nibble),
                _mm512_and_si512(v2, nibble),
                _mm512_and_si512(v3, nibble),
                _mm512_and_si512(_mm512_srli_epi16::<4>(v0), nibble),
                _mm512_and_si512(_mm512_srli_epi16::<4>(v1), nibble),
                _mm512_and_si512(_mm512_srli_epi16::<4>(v2), nibble),
                _mm512_and_si512(_mm512_srli_epi16::<4>(v3), nibble),
            ]
        } else {
            [
                _mm512_loadu_si512(base),
                _mm512_loadu_si512(base.add(1)),
                _mm512_loadu_si512(base.add(2)),
                _mm512_loadu_si512(base.add(3)),
                _mm512_loadu_si512(base.add(4)),
                _mm512_loadu_si512(base.add(5)),
                _mm512_loadu_si512(base.add(6)),
                _mm512_loadu_si512(base.add(7)),
            ]
        };
        let wd = _mm512_cvtph_ps(_mm256_loadu_si256(w.d.as_ptr().add(blk * ROWS) as *const __m256i));
        let wm = if U4 {
            _mm512_cvtph_ps(_mm256_loadu_si256(w.m.as_ptr().add(blk * ROWS) as *const __m256i))
        } else {
            _mm512_setzero_ps()
        };
        // One token's step, as a macro: closures here would not be inlined with the target features
        // (the intrinsics become calls), and a loop over tokens would keep its accumulators on the stack.
        macro_rules! step {
            ($acc:ident, $t:expr) => {{
                // Token t's 32 codes of block b: eight 4-byte groups, each broadcast to all 16 rows.
                let xp = xq.add($t * k / 4 + b * BLOCK / 4);
                // Two chains of four: half the latency of one chain of eight.
                let mut s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[0], _mm512_set1_epi32(xp.read_unaligned()));
                let mut s1 =
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[4], _mm512_set1_epi32(xp.add(4).read_unaligned()));
                s0 = _mm512_dpbusd_epi32(s0, wv[1], _mm512_set1_epi32(xp.add(1).read_unaligned()));
                s1 = _mm512_dpbusd_epi32(s1, wv[5], _mm512_set1_epi32(xp.add(5).read_unaligned()));
                s0 = _mm512_dpbusd_epi32(s0, wv[2], _mm512_set1_epi32(xp.add(2).read_unaligned()));
                s1 = _mm512_dpbusd_epi32(s1, wv[6], _mm512_set1_epi32(xp.add(6).read_unaligned()));
                s0 = _mm512_dpbusd_epi32(s0, wv[3], _mm512_set1_epi32(xp.add(3).read_unaligned()));
                s1 = _mm512_dpbusd_epi32(s1, wv[7], _mm512_set1_epi32(xp.add(7).read_unaligned()));
                let sums = _mm512_add_epi32(s0, s1);
                let xi = (t0 + $t) * kb + b;
                let scale = _mm512_mul_ps(wd, _mm512_set1_ps(*x.d.get_unchecked(xi)));
                if U4 {
                    $acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, $acc);
                    $acc = _mm512_fmadd_ps(wm, _mm512_set1_ps(*x.s.get_unchecked(xi)), $acc);
                } else {
                    let sums = _mm512_sub_epi32(sums, _mm512_set1_epi32(128 * *x.sum.get_unchecked(xi)));
                    $acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, $acc);
                }
            }};
        }
        step!(a0, 0);
        if T == 4 {
            step!(a1, 1);
            step!(a2, 2);
            step!(a3, 3);
        }
    }
    let valid = ROWS.min(n - g * ROWS);
    let mask: __mmask16 = if valid == ROWS { 0xffff } else { (1u16 << valid) - 1 };
    for (t, a) in [a0, a1, a2, a3].iter().take(T).enumerate() {
        _mm512_mask_storeu_ps(out.add((t0 + t) * n + g * ROWS), mask, *a);
    }
}
