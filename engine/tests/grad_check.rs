//! Every custom op's backward against central finite differences (in f64), and its forward against
//! the candle ops it replaces (in f32).

use candle_core::{DType, Device, Tensor, Var, D};
use std::sync::Arc;

use distill_engine::train::attention::{packed_attention, packed_attention_stacked, PackedAttention};
use distill_engine::train::ops;

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
    let analytic: Vec<f64> = grads
        .get(var.as_tensor())
        .unwrap_or_else(|| panic!("{name}: no gradient"))
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
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
    assert!(
        max_diff(
            &ops::frozen_linear(&x, &w).unwrap().to_dtype(DType::F32).unwrap(),
            &want.to_dtype(DType::F32).unwrap()
        ) < 1e-6
    );
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
fn silu_mul_gradient_and_forward() {
    let up = randn(&[3, 5], 11);
    check("silu_mul d gate", &randn(&[3, 5], 12), |g| ops::silu_mul(g, &up).unwrap());
    let gate = randn(&[3, 5], 12);
    check("silu_mul d up", &up, |u| ops::silu_mul(&gate, u).unwrap());
    let (gate, up) = (gate.to_dtype(DType::F32).unwrap(), up.to_dtype(DType::F32).unwrap());
    let composed = (gate.silu().unwrap() * &up).unwrap();
    assert!(max_diff(&ops::silu_mul(&gate, &up).unwrap(), &composed) < 1e-6);
}

/// Random angles for `tokens` positions as the attention op takes them: `(tokens, 2)` cos and sin.
fn angles(tokens: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let a: Vec<f64> = (randn(&[tokens, 2], seed) * 3.0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    (a.iter().map(|x| x.cos()).collect(), a.iter().map(|x| x.sin()).collect())
}

/// Four query heads over two kv heads, head_dim 4.
fn attention(segments: Vec<(usize, usize)>, tokens: usize, interleaved: bool) -> Arc<PackedAttention> {
    let (cos, sin) = angles(tokens, 11);
    let context = vec![None; segments.len()];
    Arc::new(PackedAttention { segments, context, heads: 4, kv_heads: 2, head_dim: 4, cos, sin, interleaved })
}

/// A prompt prefix packed once (tokens 0..3) and two sequences continuing it (3..5, 5..9): gradients
/// against finite differences, and forward and gradients equal to packing the prefix into each sequence.
#[test]
fn packed_attention_with_a_shared_context() {
    // Positions: the prefix 0..3, then each sequence from 3. Angles belong to positions.
    let positions = [0, 1, 2, 3, 4, 3, 4, 5, 6];
    let (cos_p, sin_p) = angles(7, 11);
    let table = |p: &[usize], t: &[f64]| p.iter().flat_map(|&i| t[i * 2..i * 2 + 2].to_vec()).collect::<Vec<f64>>();
    let layout = |segments: Vec<(usize, usize)>, context, positions: &[usize], interleaved| {
        let (cos, sin) = (table(positions, &cos_p), table(positions, &sin_p));
        Arc::new(PackedAttention { segments, context, heads: 4, kv_heads: 2, head_dim: 4, cos, sin, interleaved })
    };
    for interleaved in [true, false] {
        let shared =
            layout(vec![(0, 3), (3, 2), (5, 4)], vec![None, Some((0, 3)), Some((0, 3))], &positions, interleaved);
        // The same tokens with the prefix copied into both sequences: rows of the shared layout.
        let rows = [0u32, 1, 2, 3, 4, 0, 1, 2, 5, 6, 7, 8];
        let whole = layout(vec![(0, 5), (5, 7)], vec![None, None], &[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6], interleaved);
        let (q, k, v) = (randn(&[9, 16], 12), randn(&[9, 8], 13), randn(&[9, 8], 14));
        check("context dq", &q, |q| packed_attention(q, &k, &v, &shared).unwrap());
        check("context dk", &k, |k| packed_attention(&q, k, &v, &shared).unwrap());
        check("context dv", &v, |v| packed_attention(&q, &k, v, &shared).unwrap());
        // Each copy of a prefix row in the whole layout reads the shared row: its output is the shared
        // output, and the gradient reaching a shared row is the sum over its copies.
        let idx = Tensor::new(&rows[..], &Device::Cpu).unwrap();
        let ours = |t: &[&Tensor]| packed_attention(t[0], t[1], t[2], &shared).unwrap().index_select(&idx, 0).unwrap();
        let theirs = |t: &[&Tensor]| {
            let copy = |x: &Tensor| x.index_select(&idx, 0).unwrap();
            packed_attention(&copy(t[0]), &copy(t[1]), &copy(t[2]), &whole).unwrap()
        };
        same_forward_and_gradients(&[q, k, v], ours, theirs);
    }
}

#[test]
fn packed_attention_gradient() {
    // Two packed sequences, grouped-query heads.
    let (q, k, v) = (randn(&[7, 16], 12), randn(&[7, 8], 13), randn(&[7, 8], 14));
    for interleaved in [true, false] {
        let att = attention(vec![(0, 3), (3, 4)], 7, interleaved);
        check("attention dq", &q, |q| packed_attention(q, &k, &v, &att).unwrap());
        check("attention dk", &k, |k| packed_attention(&q, k, &v, &att).unwrap());
        check("attention dv", &v, |v| packed_attention(&q, &k, v, &att).unwrap());
    }
}

#[test]
fn packed_attention_matches_candle_ops() {
    // The composition it replaced: per sequence, candle's RoPE, repeated kv heads, a causal mask and
    // softmax, in f32.
    let f32 = |t: Tensor| t.to_dtype(DType::F32).unwrap();
    let (q, k, v) = (f32(randn(&[7, 16], 12)), f32(randn(&[7, 8], 13)), f32(randn(&[7, 8], 14)));
    for interleaved in [true, false] {
        let att = attention(vec![(0, 3), (3, 4)], 7, interleaved);
        let got = packed_attention(&q, &k, &v, &att).unwrap();
        let table = |t: &[f64]| {
            Tensor::from_vec(t.iter().map(|&x| x as f32).collect::<Vec<_>>(), (7, 2), &Device::Cpu).unwrap()
        };
        let (cos, sin) = (table(&att.cos), table(&att.sin));
        let rope = if interleaved { candle_nn::rotary_emb::rope_i } else { candle_nn::rotary_emb::rope };
        let heads = |t: &Tensor, n: usize, s: usize, len: usize| {
            t.narrow(0, s, len).unwrap().reshape((1, len, n, 4)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
        };
        let mut outs = vec![];
        for &(s, n) in &att.segments {
            let (c, si) = (cos.narrow(0, s, n).unwrap(), sin.narrow(0, s, n).unwrap());
            let qs = rope(&heads(&q, 4, s, n), &c, &si).unwrap();
            // kv head g serves query heads 2g and 2g+1.
            let repeat = |t: Tensor| Tensor::cat(&[&t, &t], 2).unwrap().reshape((1, 4, n, 4)).unwrap();
            let ks = repeat(rope(&heads(&k, 2, s, n), &c, &si).unwrap());
            let vs = repeat(heads(&v, 2, s, n));
            let mask: Vec<f32> = (0..n * n).map(|i| if i % n > i / n { f32::NEG_INFINITY } else { 0.0 }).collect();
            let mask = Tensor::from_vec(mask, (n, n), &Device::Cpu).unwrap();
            let scores = (qs.matmul(&ks.t().unwrap()).unwrap() * 0.5).unwrap().broadcast_add(&mask).unwrap();
            let y = candle_nn::ops::softmax_last_dim(&scores).unwrap().matmul(&vs).unwrap();
            outs.push(y.transpose(1, 2).unwrap().reshape((n, 16)).unwrap());
        }
        let want = Tensor::cat(&outs, 0).unwrap();
        assert!(max_diff(&got, &want) < 1e-5, "interleaved {interleaved}: {}", max_diff(&got, &want));
    }
}

#[test]
fn lora_linear_gradient_and_forward() {
    let (w, a, b) = (randn(&[5, 4], 15), randn(&[2, 4], 16), randn(&[5, 2], 17));
    let x = randn(&[2, 3, 4], 18);
    check("lora dx", &x, |x| ops::lora_linear(x, &w, None, &a, &b, 1.5).unwrap());
    check("lora dA", &a, |a| ops::lora_linear(&x, &w, None, a, &b, 1.5).unwrap());
    check("lora dB", &b, |b| ops::lora_linear(&x, &w, None, &a, b, 1.5).unwrap());
    let lora = x.broadcast_matmul(&a.t().unwrap()).unwrap().broadcast_matmul(&b.t().unwrap()).unwrap();
    let want = (x.broadcast_matmul(&w.t().unwrap()).unwrap() + (lora * 1.5).unwrap()).unwrap();
    let got = ops::lora_linear(&x, &w, None, &a, &b, 1.5).unwrap();
    assert!(max_diff(&got.to_dtype(DType::F32).unwrap(), &want.to_dtype(DType::F32).unwrap()) < 1e-6);
}

/// Enough rows that the frozen and adapter matmuls split them across the pool's threads (at least 64
/// rows per task), in uneven blocks: forward and every gradient against candle's own ops, in f64.
#[test]
fn lora_and_frozen_linear_split_across_threads_match_candle_ops() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    pool.install(|| {
        let w = randn(&[37, 24], 21);
        let [x, a, b] =
            [randn(&[301, 24], 24), randn(&[4, 24], 22), randn(&[37, 4], 23)].map(|t| Var::from_tensor(&t).unwrap());
        let r = randn(&[301, 37], 25);
        let grads = |y: Tensor| (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let ours = ops::lora_linear(&x, &w, None, &a, &b, 1.5).unwrap();
        let lora = x.matmul(&a.t().unwrap()).unwrap().matmul(&b.t().unwrap()).unwrap();
        let theirs = (x.matmul(&w.t().unwrap()).unwrap() + (lora * 1.5).unwrap()).unwrap();
        let close = |p: &Tensor, q: &Tensor, what: &str| {
            let d = (p - q).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
            assert!(d < 1e-10, "{what}: differs by {d}");
        };
        close(&ours, &theirs, "lora forward");
        let (g1, g2) = (grads(ours), grads(theirs));
        for (v, what) in [(&x, "dx"), (&a, "dA"), (&b, "dB")] {
            close(g1.get(v).unwrap(), g2.get(v).unwrap(), what);
        }
        let ours = ops::frozen_linear(&x, &w).unwrap();
        let theirs = x.matmul(&w.t().unwrap()).unwrap();
        close(&ours, &theirs, "frozen forward");
        close(grads(ours).get(&x).unwrap(), grads(theirs).get(&x).unwrap(), "frozen dx");
    });
}

#[test]
fn lora_linear_computes_no_gradient_for_the_frozen_weight() {
    let w = Var::from_tensor(&randn(&[5, 4], 15)).unwrap();
    let (a, b) = (Var::from_tensor(&randn(&[2, 4], 16)).unwrap(), Var::from_tensor(&randn(&[5, 2], 17)).unwrap());
    let x = Var::from_tensor(&randn(&[3, 4], 18)).unwrap();
    let y = ops::lora_linear(x.as_tensor(), w.as_tensor(), None, a.as_tensor(), b.as_tensor(), 2.0).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    for t in [&x, &a, &b] {
        assert!(grads.get(t.as_tensor()).is_some());
    }
    assert!(grads.get(w.as_tensor()).is_none(), "a frozen weight must not get a gradient");
}

#[test]
fn composed_attention_block_gradient() {
    // The ops together, as the training forward chains them.
    let w = randn(&[4, 4], 8);
    let norm = randn(&[4], 9);
    check("norm+linear+softmax", &randn(&[3, 4], 10), |x| {
        let h = ops::rms_norm(x, &norm, 1e-5).unwrap();
        let q = ops::frozen_linear(&h, &w).unwrap();
        let att = attention(vec![(0, 1), (1, 2)], 3, true);
        let kv = Tensor::cat(&[&q, &h], 1).unwrap();
        packed_attention(&Tensor::cat(&[&q, &h, &q, &h], 1).unwrap(), &kv, &kv, &att)
            .unwrap()
            .sum_keepdim(D::Minus1)
            .unwrap()
            .broadcast_mul(&q)
            .unwrap()
    });
}

// Stacked layers (q/k/v and gate/up as one op): gradients against finite differences, and forward and
// gradients equal to the separate ops they stand for.

/// Forward and the gradients of sum(f(inputs) * r) of two ways of computing the same thing.
fn same_forward_and_gradients(
    inputs: &[Tensor],
    ours: impl Fn(&[&Tensor]) -> Tensor,
    theirs: impl Fn(&[&Tensor]) -> Tensor,
) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
    let (y1, y2) = (ours(&ts), theirs(&ts));
    let diff = |p: &Tensor, q: &Tensor| {
        (p - q).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    };
    assert!(diff(&y1, &y2) < 1e-10, "forward differs by {}", diff(&y1, &y2));
    let r = randn(y1.dims(), 77);
    let g1 = (y1 * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = (y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, t) in ts.iter().enumerate() {
        let (a, b) = (g1.get(t).expect("our gradient"), g2.get(t).expect("their gradient"));
        assert!(diff(a, b) < 1e-10, "gradient of input {i} differs by {}", diff(a, b));
    }
}

#[test]
fn lora_linear_stacked_equals_the_separate_layers() {
    // Three layers of widths 5, 3, 3 over x (.., 4); adapters of rank 2 on the first and last only.
    let w = randn(&[11, 4], 31);
    let x = randn(&[9, 4], 32);
    let (a0, b0, a2, b2) = (randn(&[2, 4], 33), randn(&[5, 2], 34), randn(&[2, 4], 35), randn(&[3, 2], 36));
    let stacked = |t: &[&Tensor]| {
        ops::lora_linear_stacked(t[0], &w, None, &[(5, Some((t[1], t[2]))), (3, None), (3, Some((t[3], t[4])))], 1.5)
            .unwrap()
    };
    let separate = |t: &[&Tensor]| {
        let y0 = ops::lora_linear(t[0], &w.narrow(0, 0, 5).unwrap(), None, t[1], t[2], 1.5).unwrap();
        let y1 = ops::frozen_linear(t[0], &w.narrow(0, 5, 3).unwrap().contiguous().unwrap()).unwrap();
        let y2 =
            ops::lora_linear(t[0], &w.narrow(0, 8, 3).unwrap().contiguous().unwrap(), None, t[3], t[4], 1.5).unwrap();
        Tensor::cat(&[y0, y1, y2], 1).unwrap()
    };
    let inputs = [x.clone(), a0.clone(), b0.clone(), a2.clone(), b2.clone()];
    same_forward_and_gradients(&inputs, stacked, separate);
    for (i, name) in ["dx", "dA0", "dB0", "dA2", "dB2"].iter().enumerate() {
        check(name, &inputs[i], |t| {
            let mut v: Vec<&Tensor> = inputs.iter().collect();
            v[i] = t;
            stacked(&v)
        });
    }
    // Enough rows to split across a pool's threads, and no adapter at all.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    pool.install(|| {
        let big = [randn(&[301, 4], 37), a0.clone(), b0.clone(), a2.clone(), b2.clone()];
        same_forward_and_gradients(&big, stacked, separate);
    });
    let frozen = ops::lora_linear_stacked(&x, &w, None, &[(5, None), (6, None)], 1.5).unwrap();
    let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    assert!(max_diff(&f32(&frozen), &f32(&x.matmul(&w.t().unwrap()).unwrap())) < 1e-6);
    assert!(
        ops::lora_linear_stacked(&x, &w, None, &[(5, None), (5, None)], 1.5).is_err(),
        "widths must add up to the weight's rows"
    );
}

#[test]
fn silu_mul_stacked_equals_silu_mul_of_the_halves() {
    let gu = randn(&[7, 10], 41);
    check("silu_mul_stacked", &gu, |t| ops::silu_mul_stacked(t).unwrap());
    same_forward_and_gradients(
        &[gu],
        |t| ops::silu_mul_stacked(t[0]).unwrap(),
        |t| ops::silu_mul(&t[0].narrow(1, 0, 5).unwrap(), &t[0].narrow(1, 5, 5).unwrap()).unwrap(),
    );
    assert!(ops::silu_mul_stacked(&randn(&[2, 3], 1)).is_err(), "an odd width has no halves");
}

#[test]
fn packed_attention_stacked_equals_packed_attention() {
    let qkv = randn(&[7, 32], 42);
    for interleaved in [true, false] {
        let att = attention(vec![(0, 3), (3, 4)], 7, interleaved);
        check("attention stacked", &qkv, |t| packed_attention_stacked(t, &att).unwrap());
        same_forward_and_gradients(
            std::slice::from_ref(&qkv),
            |t| packed_attention_stacked(t[0], &att).unwrap(),
            |t| {
                packed_attention(
                    &t[0].narrow(1, 0, 16).unwrap(),
                    &t[0].narrow(1, 16, 8).unwrap(),
                    &t[0].narrow(1, 24, 8).unwrap(),
                    &att,
                )
                .unwrap()
            },
        );
        assert!(packed_attention_stacked(&randn(&[7, 31], 1), &att).is_err());
    }
}
