//! Shared helpers: where the test model and fixtures are.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use distill_engine::{ModelStore, TextModel, WeightFormat};

/// The repository's root: $DISTILL_REPO_ROOT (a test binary run on another machine,
/// scripts/device_check.sh), else where this file was compiled.
pub fn repo_root() -> PathBuf {
    std::env::var_os("DISTILL_REPO_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf())
}

/// The model directory: $DISTILL_MODEL_DIR, or `models/` at the repository root where set-up puts it.
pub fn model_dir() -> PathBuf {
    std::env::var_os("DISTILL_MODEL_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("models"))
}

pub fn fixture(name: &str) -> serde_json::Value {
    let path = repo_root().join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The default model, loaded once per test binary.
pub fn smollm2() -> &'static TextModel {
    static MODEL: OnceLock<TextModel> = OnceLock::new();
    MODEL.get_or_init(|| smollm2_with(WeightFormat::Quantized))
}

pub fn smollm2_with(format: WeightFormat) -> TextModel {
    let path = ModelStore::new(model_dir(), false)
        .resolve("smollm2-135m")
        .unwrap_or_else(|e| panic!("{e}: {:?} (run scripts/setup.sh first)", e.hint()));
    TextModel::load_gguf(&path, format, &candle_core::Device::Cpu).unwrap()
}

/// Deterministic values in [-1, 1) (an LCG): test inputs without a random-number crate.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Kernels the machine is known to have, from `DISTILL_EXPECT_KERNELS` (comma-separated: `vnni`, `avx2`,
/// `amx`; CI sets it from /proc/cpuinfo in scripts/test.sh): for these a missing kernel fails the test
/// instead of skipping it, so a detection bug cannot pass as "this CPU lacks it".
pub fn expected(kernel: &str) -> bool {
    std::env::var("DISTILL_EXPECT_KERNELS").is_ok_and(|v| v.split(',').any(|k| k.trim() == kernel))
}

/// True (after saying why) when kernel `name`'s CPU features are missing, so its test checks nothing
/// more; a failure when [`expected`] says the machine has them.
pub fn skip_without(available: bool, name: &str, what: &str) -> bool {
    if !available {
        assert!(!expected(name), "DISTILL_EXPECT_KERNELS names {name}, but the {what} kernel is not available");
        eprintln!("no {what} on this CPU (or a DISTILL_* variable turned it off): kernel not checked");
    }
    !available
}
