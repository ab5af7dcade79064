//! The int8 quantized matmul kernels: the scalar reference (`kernels/scalar.rs`) against a product
//! computed from the same codes in f64 and against candle's own quantized kernels on Q4_1 and Q8_0
//! weights; each SIMD kernel (AVX-512 VNNI, AVX2) against the scalar reference, bit for bit, and
//! against the f64 product and candle too. A SIMD kernel the CPU lacks is skipped with a message (a
//! failure where `DISTILL_EXPECT_KERNELS` names it); the layout tests need no instructions.

mod common;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use distill_engine::kernels::{self, Kernel, QuantWeight};

use common::values;

/// Shapes with rows off the 16-row grid, one token, a few tokens off the 4-token tile, and the model's.
const SHAPES: [(usize, usize, usize); 5] = [(1, 32, 5), (2, 64, 16), (7, 64, 37), (5, 576, 192), (33, 1536, 576)];

/// `x Wᵀ` in f64 from W's dequantized values and x quantized as the kernel does (per block of 32,
/// round half to even of x * 127 / max|x|, scale rounded to f16).
fn reference(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f64> {
    let mut xq = vec![0f64; m * k];
    for (xb, qb) in x.chunks(32).zip(xq.chunks_mut(32)) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let d = half::f16::from_f32(amax / 127.0).to_f32() as f64;
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as f64 * d;
        }
    }
    (0..m)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| (0..k).map(|c| xq[i * k + c] * w[j * k + c] as f64).sum())
        .collect()
}

/// The name `DISTILL_EXPECT_KERNELS` gives a kernel.
fn kernel_name(k: Kernel) -> &'static str {
    match k {
        Kernel::Vnni => "vnni",
        Kernel::Avx2 => "avx2",
        Kernel::Scalar => "scalar",
    }
}

/// The SIMD kernels this CPU can run (a message for each it cannot).
fn simd_kernels() -> Vec<Kernel> {
    Kernel::SIMD
        .into_iter()
        .filter(|&k| !common::skip_without(k.supported(), kernel_name(k), &format!("{k:?} kernel instructions")))
        .collect()
}

/// The scalar reference, then the SIMD kernels this CPU can run.
fn all_kernels() -> Vec<Kernel> {
    std::iter::once(Kernel::Scalar).chain(simd_kernels()).collect()
}

#[test]
fn quantize_rounds_each_weight_to_its_block_grid() {
    let (n, k) = (37, 96);
    let w = values(n * k, 3);
    let q = QuantWeight::quantize(&w, n, k);
    let back = q.dequantize();
    for r in 0..n {
        for b in 0..k / 32 {
            let block = &w[r * k + b * 32..r * k + b * 32 + 32];
            // Half a step, plus the f16 rounding of the scale (2^-11 relative) times up to 127 steps.
            let step = block.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0 * (1.0 + 127.0 / 2048.0 * 2.0);
            for (i, v) in block.iter().enumerate() {
                let got = back[r * k + b * 32 + i];
                assert!((got - v).abs() <= step * 0.5 + 1e-6, "row {r} col {}: {got} vs {v}", b * 32 + i);
            }
        }
    }
    assert_eq!(q.row(5), back[5 * k..6 * k].to_vec());
}

#[test]
fn ggml_blocks_are_taken_over_exactly() {
    let (n, k) = (37, 128);
    let w = Tensor::from_vec(values(n * k, 4), (n, k), &Device::Cpu).unwrap();
    for (dtype, from) in [
        (GgmlDType::Q4_1, QuantWeight::from_q4_1 as fn(&[u8], usize, usize) -> QuantWeight),
        (GgmlDType::Q8_0, QuantWeight::from_q8_0),
    ] {
        let qt = QTensor::quantize(&w, dtype).unwrap();
        let ours = from(&qt.data().unwrap(), n, k).dequantize();
        let theirs = qt.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(ours, theirs, "{dtype:?}");
    }
    // Requantizing f32 gives ggml's own Q8_0 values.
    let flat = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let theirs = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap().dequantize(&Device::Cpu).unwrap();
    assert_eq!(
        QuantWeight::quantize(&flat, n, k).dequantize(),
        theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

#[test]
fn matmul_matches_f64_reference_on_8_bit_codes() {
    for kernel in all_kernels() {
        for &(m, k, n) in &SHAPES {
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            let q = QuantWeight::quantize(&w, n, k);
            let got = kernels::matmul_with(kernel, &x, m, &q);
            let want = reference(&x, m, &q.dequantize(), n, k);
            assert_eq!(got.len(), m * n);
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                // Exact integer sums; f32 only in the per-block scaling and the accumulation.
                let tol = 1e-5 * (k as f64).sqrt() + 1e-5 * r.abs();
                assert!((*g as f64 - r).abs() <= tol, "{kernel:?} ({m},{k},{n}) [{i}]: {g} vs {r}");
            }
        }
    }
}

#[test]
fn matmul_on_q4_1_matches_candle_and_the_reference() {
    for kernel in all_kernels() {
        // candle's Q4_1 kernel wants an even number of blocks.
        for &(m, k, n) in SHAPES.iter().filter(|s| s.1 % 64 == 0) {
            let (x, w) = (values(m * k, 5), values(n * k, 6));
            let qt = QTensor::quantize(&Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap(), GgmlDType::Q4_1).unwrap();
            let q = QuantWeight::from_q4_1(&qt.data().unwrap(), n, k);
            let got = kernels::matmul_with(kernel, &x, m, &q);
            // The offset term uses llama.cpp's f16 `s`, so this agrees with the exact reference to f16 rounding.
            let want = reference(&x, m, &q.dequantize(), n, k);
            let candle = QMatMul::from_qtensor(qt)
                .unwrap()
                .forward(&Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
            for i in 0..m * n {
                let (g, r) = (got[i], want[i]);
                assert!((g as f64 - r).abs() <= 2e-3 * scale, "{kernel:?} ({m},{k},{n}) [{i}]: {g} vs {r}");
                assert!(
                    (g - candle[i]).abs() as f64 <= 2e-3 * scale,
                    "{kernel:?} ({m},{k},{n}) [{i}]: {g} vs candle {}",
                    candle[i]
                );
            }
        }
    }
}

#[test]
fn simd_kernels_equal_the_scalar_reference_bit_for_bit() {
    // Same integer sums, same scaling order, same fused multiply-adds: every kernel must give the
    // scalar reference's floats exactly, so greedy text does not depend on which one the CPU runs.
    // Shapes include rows off the 8- and 16-row grids and token counts off the 4-token tile.
    for &(m, k, n) in &SHAPES {
        let (x, w) = (values(m * k, 7), values(n * k, 8));
        let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
        let q4 = QuantWeight::from_q4_1(&QTensor::quantize(&wt, GgmlDType::Q4_1).unwrap().data().unwrap(), n, k);
        for q in [QuantWeight::quantize(&w, n, k), q4] {
            let want = kernels::matmul_with(Kernel::Scalar, &x, m, &q);
            for kernel in simd_kernels() {
                let got = kernels::matmul_with(kernel, &x, m, &q);
                let differ = got.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(differ, None, "({m},{k},{n}) {:?} on {kernel:?}: first differing output", q.codes());
            }
        }
    }
}

#[test]
fn kernel_choice_follows_the_cpu_or_the_variable() {
    // DISTILL_QUANT_KERNEL picks a kernel (candle: none). Unset, the best one the machine has, as
    // DISTILL_EXPECT_KERNELS says from the OS's CPU flags (a source independent of the kernels' own
    // CPUID checks); without that variable only the consistency of kernel() and available() is checked.
    let chosen = kernels::kernel();
    assert_eq!(kernels::available(), chosen.is_some());
    match std::env::var("DISTILL_QUANT_KERNEL").as_deref() {
        Ok("candle") => assert_eq!(chosen, None),
        Ok("vnni") if common::expected("vnni") => assert_eq!(chosen, Some(Kernel::Vnni)),
        Ok("avx2") if common::expected("avx2") => assert_eq!(chosen, Some(Kernel::Avx2)),
        Ok("scalar") => assert_eq!(chosen, Some(Kernel::Scalar)),
        Ok(_) => {}
        Err(_) if common::expected("vnni") => assert_eq!(chosen, Some(Kernel::Vnni)),
        Err(_) if common::expected("avx2") => assert_eq!(chosen, Some(Kernel::Avx2)),
        Err(_) => {}
    }
}

#[test]
fn several_weights_in_one_pass_equal_one_at_a_time() {
    if common::skip_without(kernels::available(), "avx2", "int8 kernel") {
        return;
    }
    // q, k, v-like shapes (different row counts, one of them off the 16-row grid), for a prompt and a token.
    let k = 128;
    let ws: Vec<QuantWeight> = [(64, 9), (32, 10), (37, 11)]
        .iter()
        .map(|&(n, seed)| QuantWeight::quantize(&values(n * k, seed), n, k))
        .collect();
    for m in [1, 6] {
        let x = values(m * k, 12);
        let refs: Vec<&QuantWeight> = ws.iter().collect();
        let many = kernels::matmul_many(&x, m, &refs);
        let one: Vec<Vec<f32>> = ws.iter().map(|w| kernels::matmul(&x, m, w)).collect();
        assert_eq!(many, one, "m = {m}");
    }
}
