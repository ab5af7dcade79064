//! Quantized matmul for inference on AVX-512 VNNI: weights as 8- or 4-bit codes in blocks of 32 with
//! a scale and an offset per block (`w = d * code + m`), activations quantized per block of 32 to int8
//! as llama.cpp does, products summed in int32 by `vpdpbusd` (64 multiply-adds per instruction).
//!
//! Why our own kernel: candle 0.11's quantized CPU matmul has AVX-512 VNNI only for inner dimensions
//! that are multiples of 256, and converts each block's f16 scale one at a time; SmolLM2's 576 falls
//! back to its AVX2 dot product, which made generation 2.5x slower than llama.cpp. Here every weight
//! block of 16 output rows is laid out as the instruction reads it, scales are f32 once at load, and
//! one weight load serves several tokens of a prompt.
//!
//! The file's Q4_1 and Q8_0 blocks are taken over exactly (same values, same activation rounding as
//! llama.cpp's `Q4_1 x Q8_1`); any other weight is requantized to 8 bits per block of 32. Used where the
//! CPU has AVX-512 F/BW/VNNI; `DISTILL_NO_VNNI=1` forces candle's kernels (tests run both).

use std::sync::OnceLock;

use rayon::prelude::*;

/// Output rows per kernel step: one 512-bit register of int32 sums.
const ROWS: usize = 16;
/// Inner-dimension block sharing one scale.
pub const BLOCK: usize = 32;
/// Tokens of a prompt that share one load of a weight block.
const TOKENS: usize = 4;

/// True when the VNNI kernels can run here (and `DISTILL_NO_VNNI` is unset).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| std::env::var_os("DISTILL_NO_VNNI").is_none() && detect())
}

#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

/// Width of the codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codes {
    /// One byte per weight (0..=255).
    U8,
    /// Two weights per byte (0..=15), half the memory; unpacked in registers.
    U4,
}

impl Codes {
    /// Bytes of one block of 16 rows x 32 columns.
    fn block_bytes(self) -> usize {
        match self {
            Codes::U8 => ROWS * BLOCK,
            Codes::U4 => ROWS * BLOCK / 2,
        }
    }
}

/// A weight `W (n, k)` for `x Wᵀ`, in blocks of 16 rows x 32 columns.
///
/// U8 block: 8 runs of 64 bytes; run `i` holds, for rows 0..16, the 4 codes of columns `4i..4i+4`
/// (the operand layout of `vpdpbusd`). U4 block: 4 runs; run `j` holds run `j` in its low nibbles and
/// run `j + 4` in its high ones. Scales `d` and offsets `m`: 16 f16 per block, in the same order (f16 as
/// in the file: generating one token reads every weight, and f32 scales were a third of the bytes).
#[derive(Clone)]
pub struct QuantWeight {
    n: usize,
    k: usize,
    blocks: usize,
    groups: usize,
    codes: Codes,
    data: Vec<u8>,
    d: Vec<u16>,
    m: Vec<u16>,
}

impl std::fmt::Debug for QuantWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantWeight {{ n: {}, k: {}, codes: {:?} }}", self.n, self.k, self.codes)
    }
}

impl QuantWeight {
    fn empty(n: usize, k: usize, codes: Codes) -> Self {
        assert!(k % BLOCK == 0, "inner dimension {k} is not a multiple of {BLOCK}");
        let (blocks, groups) = (k / BLOCK, n.div_ceil(ROWS));
        Self {
            n,
            k,
            blocks,
            groups,
            codes,
            data: vec![0; groups * blocks * codes.block_bytes()],
            d: vec![0; groups * blocks * ROWS],
            m: vec![0; groups * blocks * ROWS],
        }
    }

    /// Code `u` of row `r`, column `c`.
    fn put(&mut self, r: usize, c: usize, u: u8) {
        let (g, row, b, kk) = (r / ROWS, r % ROWS, c / BLOCK, c % BLOCK);
        let base = (g * self.blocks + b) * self.codes.block_bytes();
        let (run, lane) = (kk / 4, row * 4 + kk % 4);
        match self.codes {
            Codes::U8 => self.data[base + run * 64 + lane] = u,
            Codes::U4 => self.data[base + (run % 4) * 64 + lane] |= (u & 0xf) << (4 * (run / 4)),
        }
    }

    fn set_scale(&mut self, r: usize, b: usize, d: f32, m: f32) {
        let i = ((r / ROWS) * self.blocks + b) * ROWS + r % ROWS;
        self.d[i] = half::f16::from_f32(d).to_bits();
        self.m[i] = half::f16::from_f32(m).to_bits();
    }

    fn code(&self, r: usize, c: usize) -> u8 {
        let (g, row, b, kk) = (r / ROWS, r % ROWS, c / BLOCK, c % BLOCK);
        let base = (g * self.blocks + b) * self.codes.block_bytes();
        let (run, lane) = (kk / 4, row * 4 + kk % 4);
        match self.codes {
            Codes::U8 => self.data[base + run * 64 + lane],
            Codes::U4 => (self.data[base + (run % 4) * 64 + lane] >> (4 * (run / 4))) & 0xf,
        }
    }

    /// Quantizes a row-major f32 `w (n, k)` to 8 bits per weight, symmetric per block of 32, exactly as
    /// ggml's Q8_0 does (`d = max|w| / 127` stored in f16, `code = round(w / d) + 128`).
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        let mut q = Self::empty(n, k, Codes::U8);
        for r in 0..n {
            for b in 0..k / BLOCK {
                let block = &w[r * k + b * BLOCK..r * k + (b + 1) * BLOCK];
                let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                for (i, v) in block.iter().enumerate() {
                    q.put(r, b * BLOCK + i, ((v * id).round().clamp(-127.0, 127.0) as i32 + 128) as u8);
                }
                let d = half::f16::from_f32(d).to_f32();
                q.set_scale(r, b, d, -128.0 * d);
            }
        }
        q
    }

    /// ggml `Q8_0` blocks (f16 scale, 32 int8) of a `(n, k)` tensor, taken over exactly.
    pub fn from_q8_0(raw: &[u8], n: usize, k: usize) -> Self {
        const SIZE: usize = 2 + BLOCK;
        assert_eq!(raw.len(), n * k / BLOCK * SIZE, "Q8_0 data size");
        let mut q = Self::empty(n, k, Codes::U8);
        for (i, blk) in raw.chunks_exact(SIZE).enumerate() {
            let (r, b) = (i / q.blocks, i % q.blocks);
            let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            for (j, &c) in blk[2..].iter().enumerate() {
                q.put(r, b * BLOCK + j, (c as i8 as i32 + 128) as u8);
            }
            q.set_scale(r, b, d, -128.0 * d);
        }
        q
    }

    /// ggml `Q4_1` blocks (f16 scale and minimum, 16 bytes of nibbles: byte `j` holds weights `j` and
    /// `j + 16`) of a `(n, k)` tensor, taken over exactly.
    pub fn from_q4_1(raw: &[u8], n: usize, k: usize) -> Self {
        const SIZE: usize = 4 + BLOCK / 2;
        assert_eq!(raw.len(), n * k / BLOCK * SIZE, "Q4_1 data size");
        let mut q = Self::empty(n, k, Codes::U4);
        for (i, blk) in raw.chunks_exact(SIZE).enumerate() {
            let (r, b) = (i / q.blocks, i % q.blocks);
            let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            let m = half::f16::from_le_bytes([blk[2], blk[3]]).to_f32();
            for (j, &c) in blk[4..].iter().enumerate() {
                q.put(r, b * BLOCK + j, c & 0xf);
                q.put(r, b * BLOCK + j + 16, c >> 4);
            }
            q.set_scale(r, b, d, m);
        }
        q
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn codes(&self) -> Codes {
        self.codes
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        self.data.len() + 2 * (self.d.len() + self.m.len())
    }

    /// Row `r` in f32 (embedding lookups of a tied head).
    pub fn row(&self, r: usize) -> Vec<f32> {
        (0..self.k)
            .map(|c| {
                let i = ((r / ROWS) * self.blocks + c / BLOCK) * ROWS + r % ROWS;
                let f = |h: u16| half::f16::from_bits(h).to_f32();
                f(self.d[i]) * self.code(r, c) as f32 + f(self.m[i])
            })
            .collect()
    }

    /// The whole weight in f32, row-major `(n, k)`.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.n).flat_map(|r| self.row(r)).collect()
    }
}

/// Activations `x (m, k)` quantized per block of 32: int8 codes, their scale and their sum.
pub struct QuantActivations {
    q: Vec<i8>,
    /// Scale, rounded to f16 as llama.cpp stores it.
    d: Vec<f32>,
    /// Sum of the codes (8-bit weights subtract `128 * sum` exactly, in integers).
    sum: Vec<i32>,
    /// `d * sum` rounded to f16, llama.cpp's `s` (the Q4_1 offset term uses it).
    s: Vec<f32>,
}

impl QuantActivations {
    /// llama.cpp's `quantize_row_q8_1` on x86: `q = round-half-even(x * 127 / max|x|)`, `d` and `s` in f16.
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        assert_eq!(x.len(), m * k);
        assert!(k % BLOCK == 0);
        let blocks = m * k / BLOCK;
        let mut q = vec![0i8; m * k];
        let (mut d, mut sum, mut s) = (vec![0f32; blocks], vec![0i32; blocks], vec![0f32; blocks]);
        let f16 = |v: f32| half::f16::from_f32(v).to_f32();
        let simd = available();
        let quantize = |((((xb, qb), d), sum), s): ((((&[f32], &mut [i8]), &mut f32), &mut i32), &mut f32)| {
            let (amax, total) = if simd {
                // SAFETY: available() checked AVX-512; both blocks hold 32 elements.
                unsafe { quantize_block(xb.as_ptr(), qb.as_mut_ptr()) }
            } else {
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
                let mut total = 0i32;
                for (o, v) in qb.iter_mut().zip(xb) {
                    let c = (v * id).round_ties_even() as i32;
                    total += c;
                    *o = c as i8;
                }
                (amax, total)
            };
            let d32 = amax / 127.0;
            *d = f16(d32);
            *sum = total;
            *s = f16(d32 * total as f32);
        };
        let it = x.par_chunks(BLOCK).zip(q.par_chunks_mut(BLOCK)).zip(d.par_iter_mut()).zip(sum.par_iter_mut());
        // Per-token work is well under a microsecond: only long prompts are worth splitting.
        it.zip(s.par_iter_mut()).with_min_len(4096).for_each(quantize);
        Self { q, d, sum, s }
    }
}

/// One block of 32: codes `round-half-even(x * 127 / max|x|)` (the default rounding of `vcvtps2dq`);
/// returns `max|x|` and the sum of the codes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_block(x: *const f32, q: *mut i8) -> (f32, i32) {
    use std::arch::x86_64::*;
    let (v0, v1) = (_mm512_loadu_ps(x), _mm512_loadu_ps(x.add(16)));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    let id = _mm512_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
    let (q0, q1) = (_mm512_cvtps_epi32(_mm512_mul_ps(v0, id)), _mm512_cvtps_epi32(_mm512_mul_ps(v1, id)));
    _mm_storeu_si128(q as *mut __m128i, _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(q.add(16) as *mut __m128i, _mm512_cvtepi32_epi8(q1));
    (amax, _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)))
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn quantize_block(_: *const f32, _: *mut i8) -> (f32, i32) {
    unreachable!("available() is false off x86_64")
}

/// `x Wᵀ` for a row-major `x (m, k)`: returns `(m, n)` row-major. Requires [`available`].
pub fn matmul(x: &[f32], m: usize, w: &QuantWeight) -> Vec<f32> {
    assert!(available(), "vnni::matmul called without AVX-512 VNNI");
    assert_eq!(x.len(), m * w.k, "input is not (m, {})", w.k);
    let xq = QuantActivations::new(x, m, w.k);
    let n = w.n;
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let out_ptr = SendPtr(out.as_mut_ptr());
    // Tasks of at least ~256k multiply-adds: thread hand-off costs a few microseconds.
    let per_group = m * w.k * ROWS;
    let min_len = (1usize << 18).div_ceil(per_group).max(1);
    (0..w.groups).into_par_iter().with_min_len(min_len).for_each(|g| {
        let out_ptr = &out_ptr;
        // SAFETY: available() checked the CPU features; group g writes rows g*16.. of every token only.
        unsafe { group(w, g, &xq, m, out_ptr.0) };
    });
    // SAFETY: the groups together wrote every one of the m x n outputs.
    unsafe { out.set_len(m * n) };
    out
}

struct SendPtr(*mut f32);
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// Outputs of row group `g` for all `m` tokens, `TOKENS` at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn group(w: &QuantWeight, g: usize, x: &QuantActivations, m: usize, out: *mut f32) {
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

#[cfg(not(target_arch = "x86_64"))]
unsafe fn group(_: &QuantWeight, _: usize, _: &QuantActivations, _: usize, _: *mut f32) {
    unreachable!("available() is false off x86_64")
}

/// 16 outputs of `T` tokens: for each block, `int32 sums = codes · xq` (8 `vpdpbusd`, the token's
/// 4-byte groups broadcast), then for 8-bit codes (`w = d (code - 128)`)
/// `acc += (sums - 128 sum(xq)) * d_w d_x`, and for 4-bit ones (`w = d code + m`, Q4_1)
/// `acc += sums * d_w d_x + m_w s_x` as llama.cpp computes it.
/// Written with every index constant after unrolling so that codes and sums stay in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile<const T: usize, const U4: bool>(w: &QuantWeight, g: usize, x: &QuantActivations, t0: usize, out: *mut f32) {
    use std::arch::x86_64::*;
    let (k, kb, n) = (w.k, w.blocks, w.n);
    let bytes = w.codes.block_bytes();
    assert!(T == 1 || T == 4);
    let (mut a0, mut a1, mut a2, mut a3) = (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
    let nibble = _mm512_set1_epi8(0x0f);
    let xq = x.q.as_ptr().add(t0 * k) as *const i32;
    for b in 0..kb {
        let blk = g * kb + b;
        let base = w.data.as_ptr().add(blk * bytes) as *const __m512i;
        let wv: [__m512i; 8] = if U4 {
            let (v0, v1, v2, v3) =
                (_mm512_loadu_si512(base), _mm512_loadu_si512(base.add(1)), _mm512_loadu_si512(base.add(2)), _mm512_loadu_si512(base.add(3)));
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
                let mut s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[4], _mm512_set1_epi32(xp.add(4).read_unaligned()));
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
