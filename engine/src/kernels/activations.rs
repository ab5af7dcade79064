//! Activations quantized per block of 32 to int8, as llama.cpp's `quantize_row_q8_1` does, by the best
//! instructions the CPU has (every path rounds identically).

use std::sync::OnceLock;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512_vnni};
use super::{scalar, Kernel, BLOCK};

/// Activations `x (m, k)` quantized per block of 32: int8 codes, their scale and their sum.
pub struct QuantActivations {
    pub(super) q: Vec<i8>,
    /// Scale, rounded to f16 as llama.cpp stores it.
    pub(super) d: Vec<f32>,
    /// Sum of the codes (8-bit weights subtract `128 * sum` exactly, in integers).
    pub(super) sum: Vec<i32>,
    /// `d * sum` rounded to f16, llama.cpp's `s` (the Q4_1 offset term uses it).
    pub(super) s: Vec<f32>,
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
        let simd = *QUANTIZER.get_or_init(|| Kernel::SIMD.into_iter().find(|k| k.supported()));
        let quantize = |((((xb, qb), d), sum), s): BlockOut| {
            let (amax, total) = match simd {
                // SAFETY: the CPU has the kernel's instructions; both blocks hold 32 elements.
                #[cfg(target_arch = "x86_64")]
                Some(Kernel::Vnni) => unsafe { avx512_vnni::quantize_block(xb.as_ptr(), qb.as_mut_ptr()) },
                // SAFETY: as above, for the AVX2 kernel.
                #[cfg(target_arch = "x86_64")]
                Some(Kernel::Avx2) => unsafe { avx2::quantize_block(xb.as_ptr(), qb.as_mut_ptr()) },
                _ => scalar::quantize_block(xb, qb),
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
