//! Seeded dropout on the LoRA branch's input.

use candle_core::Tensor;

use crate::error::Result;

/// Seeded dropout on the LoRA branch's input (PEFT's `lora_dropout`).
pub struct Dropout {
    pub(crate) p: f64,
    rng: rand::rngs::StdRng,
}

impl Dropout {
    pub fn new(p: f64, seed: u64) -> Self {
        use rand::SeedableRng;
        Self { p, rng: rand::rngs::StdRng::seed_from_u64(seed) }
    }

    pub(crate) fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        use rand::Rng;
        if self.p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 / (1.0 - self.p) as f32;
        let p = self.p;
        let mask: Vec<f32> =
            (0..x.elem_count()).map(|_| if self.rng.random::<f64>() < p { 0.0 } else { keep }).collect();
        Ok((x * Tensor::from_vec(mask, x.shape(), x.device())?)?)
    }
}
