//! Quantized matmul for CPU inference: weights as 8- or 4-bit codes in blocks of 32 with a scale and
//! an offset per block (`w = d * code + m`), activations quantized per block of 32 to int8 as llama.cpp
//! does, products summed in int32. Two kernels over one weight layout:
//! - AVX-512 VNNI: `vpdpbusd`, 64 multiply-adds per instruction (Sapphire Rapids, Zen 4);
//! - AVX2: `vpmaddubsw` + `vpmaddwd`, 32 per pair (every x86-64 CPU since Haswell / Zen 1).
//!
//! Both compute the same integer sums and scale them in the same order, so they give bit-identical
//! results (the tests check it where both run).
//!
//! Why our own kernels: candle 0.11's quantized CPU matmul has AVX-512 VNNI only for inner dimensions
//! that are multiples of 256 (SmolLM2's 576 falls back to its AVX2 dot product) and no SIMD at all for
//! Q4_1, the default model's format (a scalar loop, 10x slower than llama.cpp on AVX2). Here every
//! weight block of 16 output rows is laid out as the instructions read it, and one weight load serves
//! several tokens of a prompt.
//!
//! The file's Q4_1 and Q8_0 blocks are taken over exactly (same values, same activation rounding as
//! llama.cpp's `Q4_1 x Q8_1`); any other weight is requantized to 8 bits per block of 32. The best kernel
//! the CPU has is used; `DISTILL_QUANT_KERNEL=vnni|avx2|candle` picks one (candle: candle's kernels,
//! for comparisons; a kernel the CPU lacks falls back to candle's).

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::threads::SendPtr;

/// Output rows per kernel step: one 512-bit register of int32 sums (two 256-bit ones on AVX2).
const ROWS: usize = 16;
/// Inner-dimension block sharing one scale.
pub const BLOCK: usize = 32;
/// Tokens of a prompt that share one load of a weight block.
const TOKENS: usize = 4;

/// The instruction sets a kernel is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 F/BW + VNNI.
    Vnni,
    /// AVX2 + FMA + F16C.
    Avx2,
}

impl Kernel {
    pub const ALL: [Kernel; 2] = [Kernel::Vnni, Kernel::Avx2];

    /// True when this CPU has the kernel's instructions.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Kernel::Vnni => {
                    is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vnni")
                }
                Kernel::Avx2 => {
                    is_x86_feature_detected!("avx2")
                        && is_x86_feature_detected!("fma")
                        && is_x86_feature_detected!("f16c")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// The kernel inference uses here: the best the CPU has, or `DISTILL_QUANT_KERNEL`'s choice; `None` when
/// candle's kernels are to be used.
pub fn kernel() -> Option<Kernel> {
    static K: OnceLock<Option<Kernel>> = OnceLock::new();
    *K.get_or_init(|| {
        let choice = std::env::var("DISTILL_QUANT_KERNEL").unwrap_or_default();
        match choice.as_str() {
            "vnni" => Some(Kernel::Vnni),
            "avx2" => Some(Kernel::Avx2),
            "candle" => None,
            other => {
                if !other.is_empty() {
                    // Not an error (inference still works), but a typo should not pass unnoticed.
                    eprintln!("pg_distill: DISTILL_QUANT_KERNEL={other:?} is not vnni, avx2 or candle; using the best kernel for this CPU");
                }
                Kernel::ALL.into_iter().find(|k| k.supported())
            }
        }
        .filter(|k| k.supported())
    })
}

/// True when inference runs on these kernels (see [`kernel`]).
pub fn available() -> bool {
    kernel().is_some()
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
        assert!(k.is_multiple_of(BLOCK), "inner dimension {k} is not a multiple of {BLOCK}");
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

/// Which SIMD quantizes activations: every path rounds identically, so this follows the CPU alone.
static QUANTIZER: OnceLock<Option<Kernel>> = OnceLock::new();

/// One block's input and outputs as the zipped iterators of `QuantActivations::new` hand them out:
/// (((input, codes), scale), sum of codes), scaled sum.
type BlockOut<'a> = ((((&'a [f32], &'a mut [i8]), &'a mut f32), &'a mut i32), &'a mut f32);

impl QuantActivations {
    /// llama.cpp's `quantize_row_q8_1` on x86: `q = round-half-even(x * 127 / max|x|)`, `d` and `s` in f16.
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        assert_eq!(x.len(), m * k);
        assert!(k.is_multiple_of(BLOCK));
        let blocks = m * k / BLOCK;
        let mut q = vec![0i8; m * k];
        let (mut d, mut sum, mut s) = (vec![0f32; blocks], vec![0i32; blocks], vec![0f32; blocks]);
        let f16 = |v: f32| half::f16::from_f32(v).to_f32();
        let simd = *QUANTIZER.get_or_init(|| Kernel::ALL.into_iter().find(|k| k.supported()));
        let quantize = |((((xb, qb), d), sum), s): BlockOut| {
            let (amax, total) = match simd {
                // SAFETY: the CPU has the kernel's instructions; both blocks hold 32 elements.
                #[cfg(target_arch = "x86_64")]
                Some(Kernel::Vnni) => unsafe { quantize_block(xb.as_ptr(), qb.as_mut_ptr()) },
                // SAFETY: as above, for the AVX2 kernel.
                #[cfg(target_arch = "x86_64")]
                Some(Kernel::Avx2) => unsafe { avx2::quantize_block(xb.as_ptr(), qb.as_mut_ptr()) },
                _ => {
                    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
                    let mut total = 0i32;
                    for (o, v) in qb.iter_mut().zip(xb) {
                        let c = (v * id).round_ties_even() as i32;
                        total += c;
                        *o = c as i8;
                    }
                    (amax, total)
                }
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

/// `x Wᵀ` for a row-major `x (m, k)` on [`kernel`]: returns `(m, n)` row-major. Requires [`available`].
pub fn matmul(x: &[f32], m: usize, w: &QuantWeight) -> Vec<f32> {
    matmul_with(kernel().expect("quant_matmul::matmul called without a kernel for this CPU"), x, m, w)
}

/// [`matmul`] on a given kernel (tests compare the kernels). Panics if the CPU lacks its instructions.
pub fn matmul_with(kernel: Kernel, x: &[f32], m: usize, w: &QuantWeight) -> Vec<f32> {
    matmul_many_with(kernel, x, m, &[w]).pop().expect("one output per weight")
}

/// `x Wᵢᵀ` for several weights with the same inner dimension (q, k and v; gate and up): `x` is
/// quantized once and all their row groups share one parallel pass, so a generated token waits on
/// threads once instead of once per weight.
pub fn matmul_many(x: &[f32], m: usize, ws: &[&QuantWeight]) -> Vec<Vec<f32>> {
    matmul_many_with(kernel().expect("quant_matmul::matmul called without a kernel for this CPU"), x, m, ws)
}

fn matmul_many_with(kernel: Kernel, x: &[f32], m: usize, ws: &[&QuantWeight]) -> Vec<Vec<f32>> {
    assert!(kernel.supported(), "this CPU lacks the {kernel:?} kernel's instructions");
    let k = ws.first().map_or(0, |w| w.k);
    assert!(ws.iter().all(|w| w.k == k), "weights of different inner dimensions");
    assert_eq!(x.len(), m * k, "input is not (m, {k})");
    let xq = QuantActivations::new(x, m, k);
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| Vec::with_capacity(m * w.n)).collect();
    let ptrs: Vec<SendPtr<f32>> = outs.iter_mut().map(|o| SendPtr(o.as_mut_ptr())).collect();
    // Every (weight, row group) pair is one task.
    let tasks: Vec<(usize, usize)> =
        ws.iter().enumerate().flat_map(|(i, w)| (0..w.groups).map(move |g| (i, g))).collect();
    // Tasks of at least ~256k multiply-adds: thread hand-off costs a few microseconds.
    let per_group = m * k * ROWS;
    let min_len = (1usize << 18).div_ceil(per_group).max(1);
    tasks.into_par_iter().with_min_len(min_len).for_each(|(i, g)| {
        let out_ptr = &ptrs[i];
        // SAFETY: supported() checked the CPU features; group g writes rows g*16.. of every token of
        // weight i's output only.
        unsafe { group(kernel, ws[i], g, &xq, m, out_ptr.0) };
    });
    for (o, w) in outs.iter_mut().zip(ws) {
        // SAFETY: the groups together wrote every one of the m x n outputs.
        unsafe { o.set_len(m * w.n) };
    }
    outs
}

/// Outputs of row group `g` for all `m` tokens, `TOKENS` at a time.
#[cfg(target_arch = "x86_64")]
unsafe fn group(kernel: Kernel, w: &QuantWeight, g: usize, x: &QuantActivations, m: usize, out: *mut f32) {
    match kernel {
        Kernel::Vnni => group_vnni(w, g, x, m, out),
        Kernel::Avx2 => avx2::group(w, g, x, m, out),
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn group(_: Kernel, _: &QuantWeight, _: usize, _: &QuantActivations, _: usize, _: *mut f32) {
    unreachable!("no kernel is supported off x86_64")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn group_vnni(w: &QuantWeight, g: usize, x: &QuantActivations, m: usize, out: *mut f32) {
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
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile<const T: usize, const U4: bool>(
    w: &QuantWeight,
    g: usize,
    x: &QuantActivations,
    t0: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
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

/// The AVX2 kernel: the same blocks, read as two halves of 8 rows (one 256-bit register of int32 sums
/// each). AVX2 has no `vpdpbusd`: `vpmaddubsw` multiplies unsigned by signed bytes and adds pairs into
/// saturating int16, `vpmaddwd` by ones widens to int32 (llama.cpp's AVX2 path does the same).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Codes, QuantActivations, QuantWeight, BLOCK, ROWS, TOKENS};

    /// Rows per half of a block.
    const HALF: usize = ROWS / 2;

    /// [`super::quantize_block`] in 256-bit registers: the same codes, scale and sum.
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
}
