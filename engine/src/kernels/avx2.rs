//! The AVX2 kernel: the same blocks, read as two halves of 8 rows (one 256-bit register of int32 sums
//! each). AVX2 has no `vpdpbusd`: `vpmaddubsw` multiplies unsigned by signed bytes and adds pairs into
//! saturating int16, `vpmaddwd` by ones widens to int32 (llama.cpp's AVX2 path does the same).

use std::arch::x86_64::*;

use super::{Codes, QuantActivations, QuantWeight, BLOCK, ROWS, TOKENS};

/// Rows per half of a block.
const HALF: usize = ROWS / 2;

/// [`super::avx512_vnni::quantize_block`] in 256-bit registers: the same codes, scale and sum.
///
/// # Safety
/// The CPU has the instructions named in `target_feature`; `x` and `q` point to 32 readable floats and
/// 32 writable bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_block(x: *const f32, q: *mut i8) -> (f32, i32) {
    let v = [_mm256_loadu_ps(x), _mm256_loadu_ps(x.add(8)), _mm256_loadu_ps(x.add(16)), _mm256_loadu_ps(x.add(24))];
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let m = _mm256_max_ps(
        _mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)),
        _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)),
    );
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    let id = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
    let c = [
        _mm256_cvtps_epi32(_mm256_mul_ps(v[0], id)),
        _mm256_cvtps_epi32(_mm256_mul_ps(v[1], id)),
        _mm256_cvtps_epi32(_mm256_mul_ps(v[2], id)),
        _mm256_cvtps_epi32(_mm256_mul_ps(v[3], id)),
    ];
    // int32 -> int8 by packing, which interleaves the 128-bit lanes; a permute puts them back in order.
    let packed = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
    let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(q as *mut __m256i, packed);
    let s = _mm256_add_epi32(_mm256_add_epi32(c[0], c[1]), _mm256_add_epi32(c[2], c[3]));
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
    let s = _mm_hadd_epi32(s, s);
    (amax, _mm_cvtsi128_si32(_mm_hadd_epi32(s, s)))
}

/// Outputs of row group `g` for all `m` tokens: each half of 8 rows, `TOKENS` tokens at a time.
///
/// # Safety
/// The CPU has the instructions named in `target_feature`; `x` holds `m` tokens of `w.k()` columns;
/// `out` points to `m` rows of `w.n()` floats (this writes row group `g`'s columns only).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn group(w: &QuantWeight, g: usize, x: &QuantActivations, m: usize, out: *mut f32) {
    for half in 0..2 {
        if g * ROWS + half * HALF >= w.n {
            break;
        }
        let mut t = 0;
        while t + TOKENS <= m {
            match w.codes {
                Codes::U8 => tile::<TOKENS, false>(w, g, half, x, t, out),
                Codes::U4 => tile::<TOKENS, true>(w, g, half, x, t, out),
            }
            t += TOKENS;
        }
        while t < m {
            match w.codes {
                Codes::U8 => tile::<1, false>(w, g, half, x, t, out),
                Codes::U4 => tile::<1, true>(w, g, half, x, t, out),
            }
            t += 1;
        }
    }
}

/// 8 outputs (rows `8 half..8 half + 8` of group `g`) of `T` tokens. Per block, the int32 sums
/// `codes · xq`, then the VNNI kernel's scaling in its order (so both kernels round alike):
/// - 4-bit codes (0..15) go straight into `vpmaddubsw`; all 8 runs add up in int16 without
///   saturating (8 x 2 x 15 x 127 < 2^15), then one `vpmaddwd`;
/// - 8-bit codes would saturate int16 (2 x 255 x 127), so they are made signed (`code - 128`, which
///   also drops the VNNI kernel's `- 128 sum(xq)` term), and multiplied as |code| times xq with the
///   code's sign moved onto xq (`vpsignb`); each run widens to int32 at once.
///
/// # Safety
/// As for `group`, and `half` is 0 or 1, and tokens `t0..t0 + T` are among its `m`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile<const T: usize, const U4: bool>(
    w: &QuantWeight,
    g: usize,
    half: usize,
    x: &QuantActivations,
    t0: usize,
    out: *mut f32,
) {
    let (k, kb, n) = (w.k, w.blocks, w.n);
    let bytes = w.codes.block_bytes();
    assert!(T == 1 || T == 4);
    let (mut a0, mut a1, mut a2, mut a3) =
        (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
    let ones = _mm256_set1_epi16(1);
    let nibble = _mm256_set1_epi8(0x0f);
    let flip = _mm256_set1_epi8(-128);
    let xq = x.q.as_ptr().add(t0 * k) as *const i32;
    for b in 0..kb {
        let blk = g * kb + b;
        // Run i of this half: 32 bytes = 8 rows x 4 codes, at byte 64 i (+ 32 for the upper half).
        // (Macros, not closures: see the VNNI kernel.)
        macro_rules! run {
            ($i:expr) => {
                _mm256_loadu_si256(w.data.as_ptr().add(blk * bytes + $i * 64 + half * 32) as *const __m256i)
            };
        }
        // Token t's 4-byte group i of block b, broadcast to all 8 rows.
        macro_rules! xb {
            ($t:expr, $i:expr) => {
                _mm256_set1_epi32(xq.add($t * k / 4 + b * BLOCK / 4 + $i).read_unaligned())
            };
        }
        // int32 sums of the 8 rows, one register per token.
        let (mut s0, mut s1, mut s2, mut s3) =
            (_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256());
        if U4 {
            macro_rules! nibbles {
                ($s:ident, $t:expr, $lo:expr, $hi:expr, $j:expr) => {{
                    $s = _mm256_add_epi16($s, _mm256_maddubs_epi16($lo, xb!($t, $j)));
                    $s = _mm256_add_epi16($s, _mm256_maddubs_epi16($hi, xb!($t, $j + 4)));
                }};
            }
            for j in 0..4 {
                let v = run!(j);
                let (lo, hi) = (_mm256_and_si256(v, nibble), _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble));
                nibbles!(s0, 0, lo, hi, j);
                if T == 4 {
                    nibbles!(s1, 1, lo, hi, j);
                    nibbles!(s2, 2, lo, hi, j);
                    nibbles!(s3, 3, lo, hi, j);
                }
            }
            s0 = _mm256_madd_epi16(s0, ones);
            if T == 4 {
                s1 = _mm256_madd_epi16(s1, ones);
                s2 = _mm256_madd_epi16(s2, ones);
                s3 = _mm256_madd_epi16(s3, ones);
            }
        } else {
            macro_rules! signed {
                ($s:ident, $t:expr, $c:expr, $a:expr, $i:expr) => {{
                    let p = _mm256_maddubs_epi16($a, _mm256_sign_epi8(xb!($t, $i), $c));
                    $s = _mm256_add_epi32($s, _mm256_madd_epi16(p, ones));
                }};
            }
            for i in 0..8 {
                let c = _mm256_xor_si256(run!(i), flip);
                let a = _mm256_sign_epi8(c, c);
                signed!(s0, 0, c, a, i);
                if T == 4 {
                    signed!(s1, 1, c, a, i);
                    signed!(s2, 2, c, a, i);
                    signed!(s3, 3, c, a, i);
                }
            }
        }
        let scales = w.d.as_ptr().add(blk * ROWS + half * HALF) as *const __m128i;
        let wd = _mm256_cvtph_ps(_mm_loadu_si128(scales));
        let wm = if U4 {
            _mm256_cvtph_ps(_mm_loadu_si128(w.m.as_ptr().add(blk * ROWS + half * HALF) as *const __m128i))
        } else {
            _mm256_setzero_ps()
        };
        macro_rules! scale {
            ($acc:ident, $s:ident, $t:expr) => {{
                let xi = (t0 + $t) * kb + b;
                let scale = _mm256_mul_ps(wd, _mm256_set1_ps(*x.d.get_unchecked(xi)));
                $acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps($s), scale, $acc);
                if U4 {
                    $acc = _mm256_fmadd_ps(wm, _mm256_set1_ps(*x.s.get_unchecked(xi)), $acc);
                }
            }};
        }
        scale!(a0, s0, 0);
        if T == 4 {
            scale!(a1, s1, 1);
            scale!(a2, s2, 2);
            scale!(a3, s3, 3);
        }
    }
    let first = g * ROWS + half * HALF;
    let valid = HALF.min(n - first);
    for (t, a) in [a0, a1, a2, a3].iter().take(T).enumerate() {
        let dst = out.add((t0 + t) * n + first);
        if valid == HALF {
            _mm256_storeu_ps(dst, *a);
        } else {
            let mut tmp = [0f32; HALF];
            _mm256_storeu_ps(tmp.as_mut_ptr(), *a);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, valid);
        }
    }
}
