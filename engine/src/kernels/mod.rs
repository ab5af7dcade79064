//! Quantized matmul for CPU inference, laid out as ggml lays out its CPU kernels: weights as 8- or
//! 4-bit codes in blocks of 32 with a scale and an offset per block (`w = d * code + m`; `block.rs`),
//! activations quantized per block of 32 to int8 as llama.cpp does (`activations.rs`), products summed
//! in int32. One weight layout, one file per instruction set:
//! - `scalar.rs`: the reference, plain Rust, on any CPU; the tests hold the others to it bit for bit;
//! - `avx512_vnni.rs`: `vpdpbusd`, 64 multiply-adds per instruction (Sapphire Rapids, Zen 4);
//! - `avx2.rs`: `vpmaddubsw` + `vpmaddwd`, 32 per pair (every x86-64 CPU since Haswell / Zen 1);
//! - `amx.rs` apart: bf16 tiles for training's f32 matmuls, not for quantized weights.
//!
//! All compute the same integer sums and scale them in the same order with fused multiply-adds, so
//! they give bit-identical results.
//!
//! Why our own kernels: candle 0.11's quantized CPU matmul has AVX-512 VNNI only for inner dimensions
//! that are multiples of 256 (SmolLM2's 576 falls back to its AVX2 dot product) and no SIMD at all for
//! Q4_1, the default model's format (a scalar loop, 10x slower than llama.cpp on AVX2). Here every
//! weight block of 16 output rows is laid out as the instructions read it, and one weight load serves
//! several tokens of a prompt.
//!
//! The file's Q4_1 and Q8_0 blocks are taken over exactly (same values, same activation rounding as
//! llama.cpp's `Q4_1 x Q8_1`); any other weight is requantized to 8 bits per block of 32. The best SIMD
//! kernel the CPU has is used; `DISTILL_QUANT_KERNEL=vnni|avx2|scalar|candle` picks one (candle:
//! candle's kernels, for comparisons; a kernel the CPU lacks falls back to candle's). Without SIMD
//! kernels inference uses candle's, which are faster than the scalar reference.

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::threads::SendPtr;

mod activations;
pub mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512_vnni;
mod block;
pub mod buffer;
mod scalar;

pub use activations::QuantActivations;
pub use block::{Codes, QuantWeight};
pub use buffer::Buffer;

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
    /// Plain Rust: the reference the others are tested against (never chosen on its own).
    Scalar,
}

impl Kernel {
    /// The SIMD kernels, best first.
    pub const SIMD: [Kernel; 2] = [Kernel::Vnni, Kernel::Avx2];

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
                Kernel::Scalar => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Kernel::Scalar
        }
    }
}

/// The kernel inference uses here: the best SIMD kernel the CPU has, or `DISTILL_QUANT_KERNEL`'s
/// choice; `None` when candle's kernels are to be used.
pub fn kernel() -> Option<Kernel> {
    static K: OnceLock<Option<Kernel>> = OnceLock::new();
    *K.get_or_init(|| {
        let choice = std::env::var("DISTILL_QUANT_KERNEL").unwrap_or_default();
        match choice.as_str() {
            "vnni" => Some(Kernel::Vnni),
            "avx2" => Some(Kernel::Avx2),
            "scalar" => Some(Kernel::Scalar),
            "candle" => None,
            other => {
                if !other.is_empty() {
                    // Not an error (inference still works), but a typo should not pass unnoticed.
                    eprintln!("pg_distill: DISTILL_QUANT_KERNEL={other:?} is not vnni, avx2, scalar or candle; using the best kernel for this CPU");
                }
                Kernel::SIMD.into_iter().find(|k| k.supported())
            }
        }
        .filter(|k| k.supported())
    })
}

/// True when inference runs on these kernels (see [`kernel`]).
pub fn available() -> bool {
    kernel().is_some()
}

/// `x Wᵀ` for a row-major `x (m, k)` on [`kernel`]: returns `(m, n)` row-major. Requires [`available`].
pub fn matmul(x: &[f32], m: usize, w: &QuantWeight) -> Vec<f32> {
    matmul_with(kernel().expect("kernels::matmul called without a kernel for this CPU"), x, m, w)
}

/// [`matmul`] on a given kernel (tests compare the kernels). Panics if the CPU lacks its instructions.
pub fn matmul_with(kernel: Kernel, x: &[f32], m: usize, w: &QuantWeight) -> Vec<f32> {
    matmul_many_with(kernel, x, m, &[w]).pop().expect("one output per weight")
}

/// `x Wᵢᵀ` for several weights with the same inner dimension (q, k and v; gate and up): `x` is
/// quantized once and all their row groups share one parallel pass, so a generated token waits on
/// threads once instead of once per weight.
pub fn matmul_many(x: &[f32], m: usize, ws: &[&QuantWeight]) -> Vec<Vec<f32>> {
    matmul_many_with(kernel().expect("kernels::matmul called without a kernel for this CPU"), x, m, ws)
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

/// Outputs of row group `g` for all `m` tokens.
///
/// # Safety
/// The CPU has `kernel`'s instructions; `x` holds `m` tokens of `w.k()` columns; `out` points to `m`
/// rows of `w.n()` floats, of which this writes row group `g`'s columns only.
unsafe fn group(kernel: Kernel, w: &QuantWeight, g: usize, x: &QuantActivations, m: usize, out: *mut f32) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Vnni => avx512_vnni::group(w, g, x, m, out),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => avx2::group(w, g, x, m, out),
        Kernel::Scalar => scalar::group(w, g, x, m, out),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only the scalar kernel exists off x86_64"),
    }
}
