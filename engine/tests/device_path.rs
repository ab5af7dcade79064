//! The device path (`models/llama/device_path.rs`: what a GPU runs, candle's own ops) against the CPU
//! path, on the device `DISTILL_TEST_DEVICE` names: the CPU by default, `cuda:0` where
//! `scripts/device_check.sh` runs these tests on a GPU machine. The CPU path is the reference in exact
//! f32 (AMX off); the device path is checked in f32 (same arithmetic, other summation orders) and in
//! bf16 (the GPU's weight format).
mod common;

use candle_core::{Device, Tensor, Var};
use distill_engine::device::{select, DeviceChoice};
use distill_engine::models::llama::{Dropout, KvCache, PackedBatch};
use distill_engine::train::{train, Progress, TrainObserver};
use distill_engine::{Example, LoraAdapter, LoraConfig, ModelStore, TextModel, TrainConfig, WeightFormat};
use std::sync::OnceLock;

/// The CPU reference computes in exact f32: AMX's bf16 tiles would blur it as much as bf16 weights do.
fn exact_cpu() {
    std::env::set_var("DISTILL_NO_AMX", "1");
}

fn test_device() -> Device {
    let setting = std::env::var("DISTILL_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    select(DeviceChoice::parse(&setting, "DISTILL_TEST_DEVICE").unwrap(), "DISTILL_TEST_DEVICE").unwrap()
}

fn load(format: WeightFormat, device: &Device) -> TextModel {
    let path = ModelStore::new(common::model_dir(), false).resolve("smollm2-135m").unwrap();
    TextModel::load_gguf(&path, format, device).unwrap()
}

/// The CPU path, f32 weights.
fn cpu() -> &'static TextModel {
    static M: OnceLock<TextModel> = OnceLock::new();
    M.get_or_init(|| {
        exact_cpu();
        load(WeightFormat::F32, &Device::Cpu)
    })
}

/// The device path with f32 weights on the test device.
fn device_f32() -> &'static TextModel {
    static M: OnceLock<TextModel> = OnceLock::new();
    M.get_or_init(|| {
        let mut m = load(WeightFormat::F32, &test_device());
        m.llama.use_device_path().unwrap();
        m
    })
}

/// The device path with bf16 weights (a GPU's format) on the test device.
fn device_bf16() -> &'static TextModel {
    static M: OnceLock<TextModel> = OnceLock::new();
    M.get_or_init(|| {
        let m = load(WeightFormat::Bf16, &test_device());
        assert!(m.llama.uses_device_path());
        m
    })
}

/// An adapter with every A and B random (an initialised one has B = 0, which would leave A's
/// gradients and the adapter's effect zero), the same values on any device.
fn random_adapter(model: &TextModel) -> (LoraAdapter, Vec<Var>) {
    let cfg = LoraConfig::default();
    let (adapter, vars) = LoraAdapter::init(&cfg, &model.llama.config, 7, model.llama.device()).unwrap();
    for (i, v) in vars.iter().enumerate() {
        let t = Tensor::from_vec(common::values(v.elem_count(), i as u64), v.shape(), v.device()).unwrap();
        v.set(&(t * 0.05).unwrap()).unwrap();
    }
    (adapter, vars)
}

fn ids(model: &TextModel, text: &str) -> Vec<u32> {
    model.tokenizer.encode(text).unwrap()
}

/// The largest difference between two logit rows, relative to the largest logit's magnitude.
fn relative_diff(want: &[f32], got: &[f32]) -> f32 {
    assert_eq!(want.len(), got.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    want.iter().zip(got).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

fn row(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Prompts, then tokens one at a time for two sequences batched, then a cache cut back and run again
/// (as `choices` does): every logit row of the device path beside the CPU path's.
fn inference_rows(model: &TextModel, adapter: Option<&LoraAdapter>, prompts: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let llama = &model.llama;
    let mut out = Vec::new();
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| KvCache::new(&llama.config)).collect();
    for (p, c) in prompts.iter().zip(&mut caches) {
        out.push(row(&llama.forward_with(p, c, adapter).unwrap()));
    }
    // Fixed next tokens (the same for both paths), three steps of batched decoding.
    for step in 0..3u32 {
        let next: Vec<u32> = (0..prompts.len() as u32).map(|i| 100 + 37 * i + 5 * step).collect();
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        out.extend(llama.forward_batch(&next, &mut refs, adapter).unwrap());
    }
    let cut = prompts[0].len() - 2;
    caches[0].truncate(cut);
    out.push(row(&llama.forward_with(&prompts[0][cut..], &mut caches[0], adapter).unwrap()));
    out
}

#[test]
fn inference_in_f32_matches_the_cpu_path() {
    let (cpu, dev) = (cpu(), device_f32());
    let prompts = vec![
        ids(cpu, "Classify this support ticket.\nTicket: I was charged twice for roaming in Spain last month."),
        ids(cpu, "Write one sentence about databases."),
    ];
    let (a_cpu, _) = random_adapter(cpu);
    let a_dev = a_cpu.to_device(dev.llama.device()).unwrap();
    for (label, ac, ad) in [("base", None, None), ("adapter", Some(&a_cpu), Some(&a_dev))] {
        let want = inference_rows(cpu, ac, &prompts);
        let got = inference_rows(dev, ad, &prompts);
        let worst = want.iter().zip(&got).map(|(w, g)| relative_diff(w, g)).fold(0f32, f32::max);
        eprintln!("f32 {label}: largest relative difference {worst:.2e} over {} rows", want.len());
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            let d = relative_diff(w, g);
            // f32 both ways; only the order of the sums differs (candle's gemm, composed softmax).
            assert!(d < 1e-4, "{label} row {i}: relative difference {d}");
            assert_eq!(argmax(w), argmax(g), "{label} row {i}");
        }
    }
}

#[test]
fn inference_in_bf16_tracks_f32() {
    let (cpu, dev) = (cpu(), device_bf16());
    let prompts = vec![
        ids(cpu, "Classify this support ticket.\nTicket: My internet has been down since Monday."),
        ids(cpu, "The capital of France is"),
    ];
    let want = inference_rows(cpu, None, &prompts);
    let got = inference_rows(dev, None, &prompts);
    let worst = want.iter().zip(&got).map(|(w, g)| relative_diff(w, g)).fold(0f32, f32::max);
    eprintln!("bf16: largest relative difference {worst:.2e} over {} rows", want.len());
    let mut same_top = 0;
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let d = relative_diff(w, g);
        // bf16 weights (8-bit mantissa) through 30 layers move logits by a few percent of their range.
        assert!(d < 0.05, "row {i}: relative difference {d}");
        same_top += (argmax(w) == argmax(g)) as usize;
    }
    assert!(same_top + 1 >= want.len(), "the top token differs on {} of {} rows", want.len() - same_top, want.len());
    // Whole replies: greedy text through the generation loop (prefix cache, batched decoding).
    let opts = distill_engine::GenerateOptions { max_tokens: 12, ..Default::default() };
    let a = cpu.complete("What is the capital of France?", &opts).unwrap();
    let b = dev.complete("What is the capital of France?", &opts).unwrap();
    assert!(a.text.contains("Paris") && b.text.contains("Paris"), "{:?} / {:?}", a.text, b.text);
}

/// A batch with a shared prompt prefix (three examples continuing it) and an example of its own.
fn batch(model: &TextModel) -> PackedBatch {
    let prefix = ids(model, "Classify this support ticket.\nTicket:");
    let mut examples = Vec::new();
    for (ticket, label) in
        [(" roaming charges", " billing"), (" no signal at home", " network"), (" new SIM", " account")]
    {
        let mut e = prefix.clone();
        e.extend(ids(model, ticket));
        let t = e.len();
        e.extend(ids(model, label));
        examples.push((e, t));
    }
    let mut b = PackedBatch::default();
    b.push_shared(&examples.iter().map(|(e, t)| (e.as_slice(), *t)).collect::<Vec<_>>());
    let own = ids(model, "Summarise: the router reboots every hour. Answer: hardware");
    b.push(&own, own.len() - 3);
    assert!(b.continues.iter().any(Option::is_some), "the batch shares a prefix");
    b
}

#[test]
fn gradients_in_f32_match_the_hand_written_step() {
    let (cpu, dev) = (cpu(), device_f32());
    let b = batch(cpu);
    let (a_cpu, _) = random_adapter(cpu);
    let want = cpu.llama.train_step(&b, &a_cpu, &Dropout::new(0.0, 0)).unwrap().expect("the CPU's hand-written step");
    let (a_dev, _) = random_adapter(dev);
    let logits = dev.llama.forward_train(&b, &a_dev, &mut Dropout::new(0.0, 0)).unwrap();
    let targets = Tensor::new(b.targets.as_slice(), logits.device()).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &targets).unwrap();
    let grads = loss.backward().unwrap();
    let loss = loss.to_device(&Device::Cpu).unwrap().to_scalar::<f32>().unwrap();
    assert!((loss - want.loss).abs() < 1e-4 * want.loss.abs(), "loss {loss} vs {}", want.loss);
    let by_id: std::collections::HashMap<_, _> = want.grads.iter().map(|(t, g)| (t.id(), g)).collect();
    eprintln!("loss {loss} (CPU {})", want.loss);
    let (mut compared, mut worst) = (0, 0f32);
    for (layer, (lc, ld)) in a_cpu.layers.iter().zip(&a_dev.layers).enumerate() {
        for ((target, pc), pd) in lc.iter().zip(ld.values()) {
            for (name, tc, td) in [("A", &pc.a, &pd.a), ("B", &pc.b, &pd.b)] {
                let w = row(by_id[&tc.id()]);
                let g = row(grads.get(td).unwrap_or_else(|| panic!("no gradient for layer {layer} {target:?} {name}")));
                let d = relative_diff(&w, &g);
                worst = worst.max(d);
                assert!(d < 1e-3, "layer {layer} {target:?} {name}: relative difference {d}");
                compared += 1;
            }
        }
    }
    eprintln!("{compared} adapter gradients, largest relative difference {worst:.2e}");
    assert_eq!(compared, 2 * a_cpu.layers.iter().map(|l| l.len()).sum::<usize>());
}

struct Losses(Vec<f64>);
impl TrainObserver for Losses {
    fn progress(&mut self, p: &Progress) {
        self.0.push(p.loss);
    }
}

fn tickets() -> Vec<Example> {
    let path = common::repo_root().join("data/support_tickets/train.csv");
    let mut r = csv::Reader::from_path(path).unwrap();
    r.records()
        .take(12)
        .map(|rec| {
            let rec = rec.unwrap();
            Example::new(&format!("Classify this support ticket.\nTicket: {}", &rec[1]), &rec[2])
        })
        .collect()
}

/// Each step's loss of a short run (3 steps of 4 tickets), and the adapter it made.
fn short_run(model: &TextModel) -> (Vec<f64>, LoraAdapter) {
    let cfg = TrainConfig { epochs: 1, batch_size: 4, ..Default::default() };
    let mut losses = Losses(Vec::new());
    let (adapter, report) = train(model, &tickets(), &[], &cfg, &mut losses).unwrap();
    assert_eq!(report.steps, 3);
    (losses.0, adapter)
}

#[test]
fn training_runs_track_the_cpu_and_export_the_same_format() {
    let (want, a_cpu) = short_run(cpu());
    for (label, model, tolerance) in [("f32", device_f32(), 1e-4), ("bf16", device_bf16(), 0.01)] {
        let (got, a_dev) = short_run(model);
        eprintln!("{label} losses {got:?} (CPU {want:?})");
        for (step, (w, g)) in want.iter().zip(&got).enumerate() {
            // Same data, order, initialisation and optimizer: each step's loss is the CPU's.
            assert!((w - g).abs() < tolerance * w, "{label} step {step}: loss {g} vs {w}");
        }
        // The adapter a GPU trains is stored as the CPU's is: same PEFT tensors, names and shapes.
        let dir = std::env::temp_dir().join(format!("distill-device-path-{label}-{}", std::process::id()));
        let cpu_dir = dir.join("cpu");
        a_cpu.save_peft(&cpu_dir, "smollm2-135m", &cpu().llama.config).unwrap();
        a_dev.save_peft(&dir, "smollm2-135m", &model.llama.config).unwrap();
        let read = |d: &std::path::Path| {
            let t = candle_core::safetensors::load(d.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
            let mut shapes: Vec<_> = t.iter().map(|(k, v)| (k.clone(), v.dims().to_vec(), v.dtype())).collect();
            shapes.sort_by(|a, b| a.0.cmp(&b.0));
            shapes
        };
        assert_eq!(read(&dir), read(&cpu_dir), "{label}");
        assert_eq!(
            std::fs::read_to_string(dir.join("adapter_config.json")).unwrap(),
            std::fs::read_to_string(cpu_dir.join("adapter_config.json")).unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn the_memory_estimate_counts_the_device() {
    let cfg = TrainConfig { batch_size: 4, ..Default::default() };
    let data = tickets();
    let on_cpu = distill_engine::train::estimate_memory(cpu(), &data, &cfg).unwrap();
    assert!(on_cpu.device_bytes.is_none());
    let on_device = distill_engine::train::estimate_memory(device_bf16(), &data, &cfg).unwrap();
    let device = on_device.device_bytes.expect("the device path's estimate");
    // The process keeps little; the device holds the weights, activations and attention.
    assert!(on_device.bytes < on_cpu.bytes && device > on_cpu.bytes / 2, "{on_device:?} vs {on_cpu:?}");
    let wider = TrainConfig { batch_size: 8, ..cfg };
    let more = distill_engine::train::estimate_memory(device_bf16(), &data, &wider).unwrap().device_bytes.unwrap();
    assert!(more > device, "a larger batch needs more: {more} vs {device}");
}
