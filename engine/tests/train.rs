//! LoRA training on the real default model: the training forward agrees with inference, packing is
//! exact, training lowers eval loss, and adapters survive save -> load bit for bit.
mod common;

use candle_core::Tensor;
use distill_engine::models::llama::{Dropout, KvCache, PackedBatch};
use distill_engine::train::{evaluate_loss, train, NoObserver};
use distill_engine::{Example, LoraAdapter, LoraConfig, TextModel, TrainConfig, WeightFormat};

fn f32_model() -> &'static TextModel {
    static M: std::sync::OnceLock<TextModel> = std::sync::OnceLock::new();
    M.get_or_init(|| common::smollm2_with(WeightFormat::F32))
}

fn tickets(file: &str) -> Vec<Example> {
    let path = common::repo_root().join("data/support_tickets").join(file);
    let mut r = csv::Reader::from_path(path).unwrap();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            Example::new(&format!("Classify this support ticket.\nTicket: {}", &rec[1]), &rec[2])
        })
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn trained_adapter(model: &TextModel, steps_of: usize) -> LoraAdapter {
    let data = tickets("train.csv");
    let cfg = TrainConfig { epochs: 1, batch_size: 4, ..Default::default() };
    train(model, &data[..steps_of * 4], &[], &cfg, &mut NoObserver).unwrap().0
}

#[test]
fn training_forward_matches_inference_and_packing_is_exact() {
    let model = f32_model();
    let adapter = trained_adapter(model, 2);
    let a = model.tokenizer.encode("The quick brown fox jumps over the lazy dog").unwrap();
    let b = model.tokenizer.encode("Roaming fees on my bill").unwrap();
    let inference =
        |ids: &[u32]| model.llama.forward_with(ids, &mut KvCache::new(&model.llama.config), Some(&adapter)).unwrap();
    let mut batch = PackedBatch::default();
    batch.push(&a, a.len() - 1);
    batch.push(&b, b.len() - 1);
    // Loss positions: the last token of each sequence predicts the one after... take all but the last
    // token's logits, i.e. the second-to-last position of each; compare with inference at that prefix.
    let logits = model.llama.forward_train(&batch, &adapter, &mut Dropout::new(0.0, 0)).unwrap();
    assert_eq!(logits.dims()[0], 2);
    // Packing is exact: each sequence gives the same logits alone as packed beside the other.
    for (i, ids) in [&a, &b].into_iter().enumerate() {
        let mut alone = PackedBatch::default();
        alone.push(ids, ids.len() - 1);
        let want = model.llama.forward_train(&alone, &adapter, &mut Dropout::new(0.0, 0)).unwrap();
        assert!(max_diff(&logits.get(i).unwrap(), &want.get(0).unwrap()) < 1e-4);
    }
    // The training forward computes what inference does: exactly in f32; on AMX its matmuls round
    // their inputs to bf16 (8-bit mantissa), which moves logits by about 1% of their range.
    let tolerance = if distill_engine::kernels::amx::available() { 0.02 } else { 1e-4 };
    for (i, ids) in [&a, &b].into_iter().enumerate() {
        let want = inference(&ids[..ids.len() - 1]);
        let range = want.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let diff = max_diff(&logits.get(i).unwrap(), &want);
        assert!(diff < tolerance * range, "sequence {i}: max difference {diff}, logit range {range}");
    }
}

/// The hand-written training step (`Llama::train_step`, what `train` runs on an f32 CPU model) against
/// candle's autograd through `forward_train`: same loss, same gradient for every adapter tensor, with
/// all seven targets and with q, v only (layers without adapters in the stacked groups).
#[test]
fn hand_written_step_equals_autograd() {
    use candle_core::Device;
    use distill_engine::train::gradient_store;
    use distill_engine::Target;
    let model = f32_model();
    let enc = |t: &str| model.tokenizer.encode(t).unwrap();
    let (a, b) = (enc("My bill shows roaming charges from a trip I never took."), enc("Add a line"));
    let mut batch = PackedBatch::default();
    batch.push(&a, 4);
    batch.push(&b, 1);
    for targets in [Target::ALL.to_vec(), vec![Target::Q, Target::V]] {
        let config = LoraConfig { targets: targets.clone(), ..Default::default() };
        let (adapter, vars) = LoraAdapter::init(&config, &model.llama.config, 7, &Device::Cpu).unwrap();
        // Non-zero B (it starts at zero, which would make every A gradient zero).
        for (i, v) in vars.iter().enumerate() {
            let x: Vec<f32> = common::values(v.elem_count(), i as u64).iter().map(|x| x * 0.05).collect();
            v.set(&Tensor::from_vec(x, v.shape(), &Device::Cpu).unwrap()).unwrap();
        }
        let step = model
            .llama
            .train_step(&batch, &adapter, &Dropout::new(0.0, 0))
            .unwrap()
            .expect("an f32 CPU model takes the hand-written step");
        let logits = model.llama.forward_train(&batch, &adapter, &mut Dropout::new(0.0, 0)).unwrap();
        let targets_t = Tensor::new(batch.targets.as_slice(), &Device::Cpu).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &targets_t).unwrap();
        let want = loss.backward().unwrap();
        let loss = loss.to_scalar::<f32>().unwrap();
        assert!(
            (step.loss - loss).abs() < 1e-4 * loss.abs().max(1.0),
            "{targets:?}: loss {} vs autograd {loss}",
            step.loss
        );
        assert_eq!(step.grads.len(), vars.len(), "{targets:?}: one gradient per adapter tensor");
        let store = gradient_store(&step.grads).unwrap();
        for (t, g) in &step.grads {
            let w = want.get(t).expect("autograd has a gradient for every adapter tensor");
            let scale = w.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(scale > 0.0, "{targets:?}: a zero gradient {:?} checks nothing", t.dims());
            let diff = max_diff(g, w);
            assert!(diff <= 1e-3 * scale, "{targets:?}: gradient {:?} differs by {diff} (max {scale})", t.dims());
            // The store handed to the optimizer holds exactly these gradients.
            assert_eq!(max_diff(store.get(t).unwrap(), g), 0.0);
        }
        // Dropout draws masks per layer: that stays on the autograd path.
        assert!(model.llama.train_step(&batch, &adapter, &Dropout::new(0.1, 0)).unwrap().is_none());
    }
}

#[test]
fn training_lowers_eval_loss() {
    let model = f32_model();
    let data = tickets("train.csv");
    let (train_set, eval_set) = (&data[..32], &data[100..116]);
    let cfg = TrainConfig { epochs: 2, batch_size: 8, ..Default::default() };
    let (init, _) = LoraAdapter::init(&cfg.lora, &model.llama.config, cfg.seed, model.llama.device()).unwrap();
    let before = evaluate_loss(model, &init, eval_set, &cfg).unwrap();
    let (adapter, report) = train(model, train_set, eval_set, &cfg, &mut NoObserver).unwrap();
    let after = evaluate_loss(model, &adapter, eval_set, &cfg).unwrap();
    assert_eq!(report.steps, 8);
    assert_eq!(report.eval_loss.len(), 2);
    assert!((report.eval_loss[1] - after).abs() < 1e-4);
    assert!(after < before * 0.5, "eval loss {before} -> {after}");
}

#[test]
fn training_is_reproducible() {
    let model = f32_model();
    let a = trained_adapter(model, 1);
    let b = trained_adapter(model, 1);
    let (pa, pb) = (a.get(3, distill_engine::Target::Q).unwrap(), b.get(3, distill_engine::Target::Q).unwrap());
    assert_eq!(max_diff(&pa.b, &pb.b), 0.0);
    assert!(pa.b.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "B moved off zero");
}

#[test]
fn adapter_save_load_reproduces_logits_exactly() {
    let model = f32_model();
    let adapter = trained_adapter(model, 1);
    let ids = model.tokenizer.encode("I lost my phone yesterday").unwrap();
    let run =
        |a: &LoraAdapter| model.llama.forward_with(&ids, &mut KvCache::new(&model.llama.config), Some(a)).unwrap();
    let want = run(&adapter);

    let dir = std::env::temp_dir().join(format!("distill-peft-{}", std::process::id()));
    adapter.save_peft(&dir, "HuggingFaceTB/SmolLM2-135M-Instruct", &model.llama.config).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 8);
    let from_dir = LoraAdapter::load_peft(&dir, &model.llama.config).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(max_diff(&run(&from_dir), &want), 0.0);

    let blob = adapter.to_bytes("HuggingFaceTB/SmolLM2-135M-Instruct", &model.llama.config).unwrap();
    assert_eq!(LoraAdapter::base_model_of(&blob).as_deref(), Some("HuggingFaceTB/SmolLM2-135M-Instruct"));
    assert_eq!(max_diff(&run(&LoraAdapter::from_bytes(&blob, &model.llama.config).unwrap()), &want), 0.0);

    // A tampered blob is refused, not half-loaded.
    let mut bad = blob.clone();
    bad.truncate(blob.len() - 100);
    assert!(LoraAdapter::from_bytes(&bad, &model.llama.config).is_err());
}

#[test]
fn bad_training_input_is_refused() {
    let model = f32_model();
    let cfg = TrainConfig::default();
    assert!(train(model, &[], &[], &cfg, &mut NoObserver).is_err());
    assert!(train(model, &[Example::new("x", "")], &[], &cfg, &mut NoObserver).is_err());
    let bad = TrainConfig { lora: LoraConfig { r: 0, ..Default::default() }, ..Default::default() };
    assert!(train(model, &tickets("train.csv")[..2], &[], &bad, &mut NoObserver).is_err());
    let bad = TrainConfig { epochs: 11, ..Default::default() };
    assert!(train(model, &tickets("train.csv")[..2], &[], &bad, &mut NoObserver).is_err());
}

#[test]
fn holdout_is_seeded_disjoint_and_rounded_up() {
    let all = tickets("train.csv");
    let n = all.len();
    let (t1, e1) = distill_engine::train::split_holdout(all.clone(), 0.1, 42);
    let (t2, e2) = distill_engine::train::split_holdout(all.clone(), 0.1, 42);
    assert_eq!((t1.clone(), e1.clone()), (t2, e2), "same seed, same split");
    assert_eq!(e1.len(), (n as f64 * 0.1).ceil() as usize);
    assert_eq!(t1.len() + e1.len(), n);
    let sorted = |v: Vec<&Example>| {
        let mut p: Vec<String> = v.iter().map(|e| format!("{}\u{0}{}", e.prompt, e.completion)).collect();
        p.sort();
        p
    };
    assert_eq!(sorted(t1.iter().chain(&e1).collect()), sorted(all.iter().collect()), "a partition of the rows");
    let (_, e3) = distill_engine::train::split_holdout(all.clone(), 0.1, 7);
    assert_ne!(e1, e3, "another seed, another split");
    // Too few rows to hold any out; and at least one row is always left to train on.
    assert_eq!(distill_engine::train::split_holdout(all[..1].to_vec(), 0.1, 42).1.len(), 0);
    assert_eq!(distill_engine::train::split_holdout(all[..2].to_vec(), 0.5, 42).1.len(), 1);
}

#[test]
fn memory_estimate_grows_with_the_batch() {
    let model = f32_model();
    let all = tickets("train.csv");
    let est = |batch_size: usize| {
        let config = TrainConfig { batch_size, ..TrainConfig::default() };
        distill_engine::train::estimate_memory(model, &all, &config).unwrap()
    };
    let (small, large) = (est(1), est(16));
    assert!(small.largest_batch_tokens < large.largest_batch_tokens);
    assert!(small.bytes < large.bytes);
    // At least the f32 weights (135M parameters), and not absurd for 16 short tickets.
    assert!(small.bytes > 500 << 20 && large.bytes < 32 << 30, "{small:?} {large:?}");
}

/// `push_shared` on token ids: the common prefix once, stopped before the first scored position,
/// suffixes continuing its positions, the same targets as `push`; nothing shared falls back to `push`.
#[test]
fn push_shared_packs_the_common_prefix_once() {
    let (a, b) = ([1u32, 2, 3, 4, 5, 6], [1u32, 2, 3, 4, 9]);
    let mut shared = PackedBatch::default();
    // b's completion starts at 3: position 2 predicts it, so only tokens 0..2 can be shared.
    shared.push_shared(&[(&a[..], 5), (&b[..], 3)]);
    assert_eq!(shared.ids, [1, 2, 3, 4, 5, 6, 3, 4, 9]);
    assert_eq!(shared.segments, [(0, 2), (2, 4), (6, 3)]);
    assert_eq!(shared.continues, [None, Some(0), Some(0)]);
    assert_eq!(shared.positions, [0, 1, 2, 3, 4, 5, 2, 3, 4]);
    let mut plain = PackedBatch::default();
    plain.push(&a, 5);
    plain.push(&b, 3);
    assert_eq!(shared.targets, plain.targets);
    assert_eq!(shared.targets, [6, 4, 9]);
    assert_eq!(shared.loss_positions, [4, 6, 7]);
    // Nothing in common, or one example: as `push`.
    for examples in [&[(&a[..], 5), (&[7u32, 2, 3][..], 2)][..], &[(&a[..], 5)][..]] {
        let (mut s, mut p) = (PackedBatch::default(), PackedBatch::default());
        s.push_shared(examples);
        examples.iter().for_each(|&(ids, t)| p.push(ids, t));
        assert_eq!(
            (s.ids, s.segments, s.continues, s.positions, s.loss_positions),
            (p.ids, p.segments, p.continues, p.positions, p.loss_positions)
        );
    }
}

/// Three examples with the same instruction, packed with their shared prompt prefix once and packed
/// whole: the same logits, loss and adapter gradients, by the hand-written step and by autograd.
#[test]
fn shared_prefix_gives_the_same_loss_and_gradients() {
    use candle_core::Device;
    use distill_engine::train::tokenize_example;
    let model = f32_model();
    let examples = [
        Example::new(
            "Classify this support ticket.\nTicket: My bill shows roaming charges from a trip I never took.",
            "billing",
        ),
        Example::new("Classify this support ticket.\nTicket: Add a line", "account management"),
        Example::new("Classify this support ticket.\nTicket: No signal at home since Monday", "network"),
    ];
    let toks: Vec<(Vec<u32>, usize)> =
        examples.iter().map(|e| tokenize_example(model, e, 512).map(|(ids, s, _)| (ids, s)).unwrap()).collect();
    let refs: Vec<(&[u32], usize)> = toks.iter().map(|(ids, s)| (ids.as_slice(), *s)).collect();
    let (mut plain, mut shared) = (PackedBatch::default(), PackedBatch::default());
    refs.iter().for_each(|&(ids, s)| plain.push(ids, s));
    shared.push_shared(&refs);
    let prefix = shared.segments[0].1;
    assert!(prefix > 10, "the chat template and the instruction are shared: {prefix} tokens");
    assert_eq!(shared.ids.len() + 2 * prefix, plain.ids.len());
    assert_eq!(shared.targets, plain.targets);

    let config = LoraConfig::default();
    let (adapter, vars) = LoraAdapter::init(&config, &model.llama.config, 7, &Device::Cpu).unwrap();
    for (i, v) in vars.iter().enumerate() {
        let x: Vec<f32> = common::values(v.elem_count(), i as u64).iter().map(|x| x * 0.05).collect();
        v.set(&Tensor::from_vec(x, v.shape(), &Device::Cpu).unwrap()).unwrap();
    }
    let no_dropout = || Dropout::new(0.0, 0);
    let logits = |b: &PackedBatch| model.llama.forward_train(b, &adapter, &mut no_dropout()).unwrap();
    let (want, got) = (logits(&plain), logits(&shared));
    let range = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(max_diff(&got, &want) < 1e-4 * range, "logits differ by {} (range {range})", max_diff(&got, &want));

    let want = model.llama.train_step(&plain, &adapter, &no_dropout()).unwrap().unwrap();
    let got = model.llama.train_step(&shared, &adapter, &no_dropout()).unwrap().unwrap();
    assert!((got.loss - want.loss).abs() < 1e-5 * want.loss.abs().max(1.0), "loss {} vs {}", got.loss, want.loss);
    // The autograd path through the attention op's backward with a context, on the shared batch.
    let targets = Tensor::new(shared.targets.as_slice(), &Device::Cpu).unwrap();
    let autograd = candle_nn::loss::cross_entropy(&logits(&shared), &targets).unwrap().backward().unwrap();
    for ((t, g), (_, w)) in got.grads.iter().zip(&want.grads) {
        let scale = w.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(scale > 0.0, "a zero gradient {:?} checks nothing", t.dims());
        for (name, g) in [("hand-written", g), ("autograd", autograd.get(t).unwrap())] {
            let diff = max_diff(g, w);
            assert!(diff <= 1e-3 * scale, "{name}: gradient {:?} differs by {diff} (max {scale})", t.dims());
        }
    }
}

/// `train` packs shared prefixes by default: the same losses as without, fewer tokens computed.
#[test]
fn training_with_and_without_shared_prefixes_agrees() {
    let model = f32_model();
    let data = &tickets("train.csv")[..8];
    let run = |share_prefix: bool| {
        let cfg = TrainConfig { epochs: 1, batch_size: 4, share_prefix, ..Default::default() };
        train(model, data, &data[..4], &cfg, &mut NoObserver).unwrap().1
    };
    let (on, off) = (run(true), run(false));
    assert_eq!(on.trained_tokens, off.trained_tokens);
    assert_eq!(off.computed_tokens, off.trained_tokens);
    assert!(
        on.computed_tokens * 10 < on.trained_tokens * 9,
        "{} of {} tokens computed",
        on.computed_tokens,
        on.trained_tokens
    );
    let close = |a: f64, b: f64| (a - b).abs() < 1e-4 * b.abs().max(1.0);
    assert!(close(on.train_loss[0], off.train_loss[0]), "train loss {:?} vs {:?}", on.train_loss, off.train_loss);
    assert!(close(on.eval_loss[0], off.eval_loss[0]), "eval loss {:?} vs {:?}", on.eval_loss, off.eval_loss);
}

/// Validation rows that contradict the training rows (the same tickets with another ticket's label):
/// the better the model learns the training labels, the worse its validation loss.
fn contradicting_sets() -> (Vec<Example>, Vec<Example>) {
    let data = tickets("train.csv");
    let train: Vec<Example> = data[..16].to_vec();
    let labels: Vec<String> = data[..16].iter().map(|e| e.completion.clone()).collect();
    let eval = train
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let other = labels.iter().cycle().skip(i + 1).find(|l| **l != e.completion).unwrap();
            Example::new(&e.prompt, other)
        })
        .collect();
    (train, eval)
}

#[test]
fn the_best_epoch_is_kept_and_early_stopping_stops_when_validation_worsens() {
    let model = f32_model();
    let (train_set, eval_set) = contradicting_sets();
    let lora = LoraConfig { targets: vec![distill_engine::Target::Q, distill_engine::Target::V], ..Default::default() };
    let cfg = TrainConfig { epochs: 4, batch_size: 4, learning_rate: 3e-3, lora, ..Default::default() };

    // Without early stopping every epoch runs; the adapter returned is the lowest-validation-loss one.
    let (adapter, report) = train(model, &train_set, &eval_set, &cfg, &mut NoObserver).unwrap();
    assert_eq!(report.eval_loss.len(), 4);
    assert!(!report.stopped_early);
    let best = (1..=4).min_by(|&a, &b| report.eval_loss[a - 1].total_cmp(&report.eval_loss[b - 1])).unwrap();
    assert!(report.eval_loss[3] > report.eval_loss[best - 1], "validation loss should rise: {:?}", report.eval_loss);
    assert_eq!(report.kept_epoch, best);
    // The kept adapter is that epoch's, not the last one's: its validation loss is the epoch's.
    let kept_loss = evaluate_loss(model, &adapter, &eval_set, &cfg).unwrap();
    assert!((kept_loss - report.eval_loss[best - 1]).abs() < 1e-4, "{kept_loss} vs {:?}", report.eval_loss);

    // keep_best off: the last epoch's adapter.
    let last = TrainConfig { keep_best: false, ..cfg.clone() };
    let (adapter, report) = train(model, &train_set, &eval_set, &last, &mut NoObserver).unwrap();
    assert_eq!(report.kept_epoch, 4);
    let last_loss = evaluate_loss(model, &adapter, &eval_set, &cfg).unwrap();
    assert!((last_loss - report.eval_loss[3]).abs() < 1e-4);

    // Early stopping with patience 1 ends the run at the first epoch that does not improve.
    let early = TrainConfig { early_stopping: true, patience: 1, ..cfg.clone() };
    let (_, report) = train(model, &train_set, &eval_set, &early, &mut NoObserver).unwrap();
    let l = &report.eval_loss;
    let n = l.len();
    assert!(report.stopped_early && (2..4).contains(&n), "{l:?}");
    let min_before = |k: usize| l[..k].iter().copied().fold(f64::INFINITY, f64::min);
    assert!(l[n - 1] >= min_before(n - 1), "the last epoch run did not improve: {l:?}");
    assert!((1..n - 1).all(|k| l[k] < min_before(k)), "every earlier epoch improved: {l:?}");
    assert_eq!(report.kept_epoch, n - 1);
}
