//! `x Wᵀ` with `W` frozen, on any device candle has: the forward is candle's own matmul (its CPU gemm,
//! cuBLAS on CUDA), the backward returns the input's gradient only. candle's matmul backward also
//! computes the weight's gradient (a second matmul as large as the first, and a weight-sized buffer
//! to add it into) whether or not anything reads it, and LoRA training never does. The CPU path has
//! its own frozen op (`ops.rs`, with AMX); this one is the device path's (`models/llama/device_path.rs`).

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};
use std::sync::Arc;

/// `x (m, in) · W (out, in)ᵀ`, `x` in `W`'s dtype and on its device; no gradient for `W`.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op1_arc(Arc::new(Box::new(FrozenMatmul(w.clone()))))
}

struct FrozenMatmul(Tensor);

/// The product on one backend's storages, through that backend's matmul with `W` read transposed.
fn forward<S: BackendStorage>(x: &S, xl: &Layout, w: &S, wl: &Layout) -> Result<(S, Shape)> {
    let (n, k) = wl.shape().dims2()?;
    let (m, xk) = xl.shape().dims2()?;
    if xk != k {
        bail!("frozen-matmul: input ({m}, {xk}) against weight ({n}, {k})");
    }
    let y = x.matmul(w, (1, m, n, k), xl, &wl.transpose(0, 1)?)?;
    Ok((y, Shape::from((m, n))))
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (ws, wl) = self.0.storage_and_layout();
        let Storage::Cpu(w) = &*ws else { bail!("frozen-matmul: the weight is not on the CPU") };
        forward(s, l, w, wl)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let (ws, wl) = self.0.storage_and_layout();
        let Storage::Cuda(w) = &*ws else { bail!("frozen-matmul: the weight is not on the GPU") };
        forward(s, l, w, wl)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // d(x Wᵀ)/dx = g W, in W's dtype (the caller's cast back to f32 has its own backward).
        Ok(Some(grad.matmul(&self.0)?))
    }
}
