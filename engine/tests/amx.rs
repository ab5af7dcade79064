//! The AMX bf16 matmul against an f64 reference, and the training ops with and without it.
//! On a CPU without AMX-BF16 these tests say so and check nothing else (the f32 path is what runs
//! there, and grad_check.rs covers it).

mod common;

use std::sync::Arc;

use candle_core::{Device, Tensor, Var};
use distill_engine::kernels::amx;
use distill_engine::train::ops;

use common::values;

fn skip() -> bool {
    common::skip_without(amx::available(), "amx", "AMX-BF16")
}

#[test]
fn matmul_matches_f64_within_bf16_rounding() {
    if skip() {
        return;
    }
    // Shapes off the tile grid in every dimension, and the model's own.
    for &(m, k, n) in &[(1, 1, 1), (37, 70, 50), (33, 576, 192), (130, 1536, 576)] {
        let (a, w) = (values(m * k, 1), values(n * k, 2));
        for transpose in [true, false] {
            // transpose: B = wᵀ with w (n, k); else B = w read as (k, n).
            let b = amx::PackedB::new(&w, if transpose { n } else { k }, if transpose { k } else { n }, transpose);
            let c = amx::matmul(&a, m, &b);
            assert_eq!(c.len(), m * n);
            for i in 0..m {
                for j in 0..n {
                    let (mut want, mut mag) = (0f64, 0f64);
                    for t in 0..k {
                        let bw = if transpose { w[j * k + t] } else { w[t * n + j] } as f64;
                        want += a[i * k + t] as f64 * bw;
                        mag += (a[i * k + t] as f64 * bw).abs();
                    }
                    // Two bf16 roundings (2^-8 each) per product, accumulated in f32.
                    let err = (c[i * n + j] as f64 - want).abs();
                    assert!(err <= 1e-2 * mag + 1e-6, "({m},{k},{n}) [{i},{j}]: {} vs {want}", c[i * n + j]);
                }
            }
        }
    }
}

#[test]
fn lora_linear_on_amx_matches_f32_and_its_gradients() {
    if skip() {
        return;
    }
    let dev = Device::Cpu;
    let (m, k, n, r) = (45, 96, 64, 8);
    let w = Tensor::from_vec(values(n * k, 3), (n, k), &dev).unwrap();
    let packed = Arc::new(ops::FrozenBf16::new(&w).unwrap());
    let x = Var::from_tensor(&Tensor::from_vec(values(m * k, 4), (m, k), &dev).unwrap()).unwrap();
    let a = Var::from_tensor(&Tensor::from_vec(values(r * k, 5), (r, k), &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::from_vec(values(n * r, 6), (n, r), &dev).unwrap()).unwrap();
    let run = |p: Option<&Arc<ops::FrozenBf16>>| {
        let y = ops::lora_linear(x.as_tensor(), &w, p, a.as_tensor(), b.as_tensor(), 2.0).unwrap();
        let g = (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
        let get = |v: &Var| g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), get(&x), get(&a), get(&b))
    };
    let (f32_path, amx_path) = (run(None), run(Some(&packed)));
    let close = |name: &str, want: &[f32], got: &[f32]| {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = want.iter().zip(got).fold(0f32, |m, (w, g)| m.max((w - g).abs()));
        assert!(worst <= 2e-2 * scale, "{name}: worst difference {worst} at scale {scale}");
    };
    close("y", &f32_path.0, &amx_path.0);
    close("dx", &f32_path.1, &amx_path.1);
    close("dA", &f32_path.2, &amx_path.2);
    close("dB", &f32_path.3, &amx_path.3);
}
