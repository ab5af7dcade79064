//! Every custom op's backward against central finite differences (in f64), and its forward against
//! candle's fused op (in f32).

use candle_core::{DType, Device, Tensor, Var, D};
use distill_engine::ops;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // Deterministic pseudo-random values without depending on candle's RNG.
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let v: Vec<f64> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Checks d/dx sum(f(x) * r) from backward against finite differences for every element of x.
fn check(name: &str, x: &Tensor, f: impl Fn(&Tensor) -> Tensor) {
    let r = randn(f(x).dims(), 99);
    let var = Var::from_tensor(x).unwrap();
    let loss = (f(var.as_tensor()) * &r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let analytic: Vec<f64> = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient")).flatten_all().unwrap().to_vec1().unwrap();
    let base: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
    let eps = 1e-6;
    let mut worst = 0f64;
    for i in 0..base.len() {
        let at = |delta: f64| {
            let mut v = base.clone();
            v[i] += delta;
            let xt = Tensor::from_vec(v, x.shape(), &Device::Cpu).unwrap();
            (f(&xt) * &r).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
        let err = (numeric - analytic[i]).abs() / (1.0 + numeric.abs());
        worst = worst.max(err);
    }
    assert!(worst < 1e-6, "{name}: worst relative gradient error {worst}");
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn frozen_linear_gradient() {
    let w = randn(&[5, 4], 1);
    check("frozen_linear", &randn(&[2, 3, 4], 2), |x| ops::frozen_linear(x, &w).unwrap());
    let x = randn(&[2, 3, 4], 2);
    let want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
    assert!(max_diff(&ops::frozen_linear(&x, &w).unwrap().to_dtype(DType::F32).unwrap(), &want.to_dtype(DType::F32).unwrap()) < 1e-6);
}

#[test]
fn frozen_linear_computes_no_weight_gradient() {
    let w = Var::from_tensor(&randn(&[5, 4], 1)).unwrap();
    let x = Var::from_tensor(&randn(&[3, 4], 2)).unwrap();
    let grads = ops::frozen_linear(x.as_tensor(), w.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(x.as_tensor()).is_some());
    assert!(grads.get(w.as_tensor()).is_none(), "a frozen weight must not get a gradient");
}

#[test]
fn rms_norm_gradient_and_forward() {
    let w = randn(&[6], 3);
    check("rms_norm", &randn(&[3, 6], 4), |x| ops::rms_norm(x, &w, 1e-5).unwrap());
    let (x, w) = (randn(&[2, 3, 6], 4).to_dtype(DType::F32).unwrap(), w.to_dtype(DType::F32).unwrap());
    let fused = candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap();
    assert!(max_diff(&ops::rms_norm(&x, &w, 1e-5).unwrap(), &fused) < 1e-5);
}

#[test]
fn softmax_gradient_and_forward() {
    check("softmax", &(randn(&[2, 3, 5], 5) * 3.0).unwrap(), |x| ops::softmax_last_dim(x).unwrap());
    let x = randn(&[2, 3, 5], 5).to_dtype(DType::F32).unwrap();
    assert!(max_diff(&ops::softmax_last_dim(&x).unwrap(), &candle_nn::ops::softmax_last_dim(&x).unwrap()) < 1e-6);
}

#[test]
fn softmax_of_a_masked_causal_row_ignores_future() {
    let x = Tensor::new(&[[1f32, f32::NEG_INFINITY], [1.0, 2.0]], &Device::Cpu).unwrap();
    let p = ops::softmax_last_dim(&x).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(p[0], vec![1.0, 0.0]);
    assert!((p[1][0] + p[1][1] - 1.0).abs() < 1e-6);
}

#[test]
fn rope_gradient_and_forward() {
    let angles = (randn(&[2, 3, 2], 6) * 3.0).unwrap();
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    for interleaved in [true, false] {
        check("rope", &randn(&[2, 2, 3, 4], 7), |x| ops::rope(x, &cos, &sin, interleaved).unwrap());
    }
    // Same rotation as candle's fused kernels (batch 1, per-position tables).
    let x = randn(&[1, 2, 3, 4], 7).to_dtype(DType::F32).unwrap();
    let (c, s) = (cos.narrow(0, 0, 1).unwrap().to_dtype(DType::F32).unwrap(), sin.narrow(0, 0, 1).unwrap().to_dtype(DType::F32).unwrap());
    let (c2, s2) = (c.squeeze(0).unwrap(), s.squeeze(0).unwrap());
    assert!(max_diff(&ops::rope(&x, &c, &s, true).unwrap(), &candle_nn::rotary_emb::rope_i(&x, &c2, &s2).unwrap()) < 1e-6);
    assert!(max_diff(&ops::rope(&x, &c, &s, false).unwrap(), &candle_nn::rotary_emb::rope(&x, &c2, &s2).unwrap()) < 1e-6);
}

#[test]
fn composed_attention_block_gradient() {
    // The ops together, as the training forward chains them.
    let w = randn(&[4, 4], 8);
    let norm = randn(&[4], 9);
    check("norm+linear+softmax", &randn(&[3, 4], 10), |x| {
        let h = ops::rms_norm(x, &norm, 1e-5).unwrap();
        let q = ops::frozen_linear(&h, &w).unwrap();
        ops::softmax_last_dim(&q.matmul(&h.t().unwrap()).unwrap()).unwrap().sum_keepdim(D::Minus1).unwrap()
            .broadcast_mul(&q).unwrap()
    });
}
