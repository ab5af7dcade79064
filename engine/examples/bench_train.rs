//! One LoRA training run, measured: real (non-padding) tokens/s, wall time, peak RSS, eval loss.
//! Prints one JSON line; bench/train_vs_peft.sh runs it beside torch+PEFT on the same token ids.
//!
//! cargo run -p distill-engine --example bench_train -- --data ../shared/data/banking77_10intent \
//!     [--targets q,v|all] [--epochs 1] [--batch 8] [--lr 1e-3] [--r 8] [--alpha 16] [--threads 2]
//!     [--train-rows N] [--eval-rows 200] [--no-share-prefix] [--device cpu|cuda|cuda:N]  (a GPU trains the
//!     device path on bf16 weights) [--dump-tokens FILE]   (FILE: the tokenized examples and the order
//!     training visits them in, for the peer; then exit) [--dump-init DIR]   (DIR: the adapter training starts
//!     from, in PEFT's format, for the peer; then exit)

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use distill_engine::train::{evaluate_loss, example_orders, tokenize_example, train, NoObserver};
use distill_engine::{Example, LoraAdapter, LoraConfig, ModelStore, Target, TextModel, TrainConfig, WeightFormat};

fn read(path: &PathBuf) -> Vec<(String, String)> {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    r.records().map(|rec| rec.unwrap()).map(|rec| (rec[1].to_string(), rec[2].to_string())).collect()
}

fn peak_rss_mib() -> f64 {
    // SAFETY: rusage is plain old data (all-zero is valid); getrusage fills it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid rusage for the call to fill.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss as f64 / 1024.0
}

fn main() -> distill_engine::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
    let num = |flag: &str, default: f64| arg(flag).map(|v| v.parse::<f64>().unwrap()).unwrap_or(default);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = PathBuf::from(arg("--data").expect("--data DIR with train.csv and test.csv"));
    let (train_rows, test_rows) = (read(&data.join("train.csv")), read(&data.join("test.csv")));
    let labels: BTreeSet<&str> = train_rows.iter().map(|(_, l)| l.as_str()).collect();
    let instruction = format!(
        "Classify this customer request into one of: {}. Reply with the category only.",
        labels.iter().copied().collect::<Vec<_>>().join(", ")
    );
    let ex = |(t, l): &(String, String)| Example::new(&format!("{instruction}\nRequest: {t}"), l);
    let train_rows: Vec<_> = train_rows.into_iter().take(num("--train-rows", f64::MAX) as usize).collect();
    let train_set: Vec<Example> = train_rows.iter().map(ex).collect();
    let eval_set: Vec<Example> = test_rows.iter().take(num("--eval-rows", 200.0) as usize).map(ex).collect();
    let targets = match arg("--targets").as_deref() {
        None | Some("all") => Target::ALL.to_vec(),
        Some(t) => t.split(',').map(Target::parse).collect::<distill_engine::Result<Vec<_>>>()?,
    };
    let config = TrainConfig {
        epochs: num("--epochs", 1.0) as usize,
        learning_rate: num("--lr", 1e-3),
        batch_size: num("--batch", 8.0) as usize,
        lora: LoraConfig {
            r: num("--r", 8.0) as usize,
            alpha: num("--alpha", 16.0),
            targets: targets.clone(),
            ..Default::default()
        },
        share_prefix: !args.iter().any(|a| a == "--no-share-prefix"),
        ..Default::default()
    };
    let dir = arg("--model-dir").map(PathBuf::from).unwrap_or_else(|| root.join("models"));
    let path = ModelStore::new(dir, false).resolve("smollm2-135m")?;
    let choice = distill_engine::device::DeviceChoice::parse(arg("--device").as_deref().unwrap_or("cpu"), "--device")?;
    let device = distill_engine::device::select(choice, "--device")?;
    let format = if device.is_cpu() { WeightFormat::F32 } else { WeightFormat::Bf16 };
    let model = TextModel::load(&path, format, &device)?;

    if let Some(file) = arg("--dump-tokens") {
        let dump = |set: &[Example]| -> distill_engine::Result<Vec<serde_json::Value>> {
            set.iter()
                .map(|e| {
                    let (ids, start, _) = tokenize_example(&model, e, config.max_seq_len)?;
                    Ok(serde_json::json!({"ids": ids, "completion_start": start}))
                })
                .collect()
        };
        let orders = example_orders(train_set.len(), config.epochs, config.seed);
        let json = serde_json::json!({"train": dump(&train_set)?, "eval": dump(&eval_set)?, "orders": orders});
        std::fs::write(&file, json.to_string())?;
        return Ok(());
    }

    if let Some(dir) = arg("--dump-init") {
        // The adapter `train` starts from (same config and seed), in PEFT's format, for the peer.
        let (init, _) = LoraAdapter::init(&config.lora, &model.llama.config, config.seed, model.llama.device())?;
        return init.save_peft(&PathBuf::from(dir), "smollm2-135m", &model.llama.config);
    }

    let pool = distill_engine::threads::pool(num("--threads", 2.0) as usize)?;
    let started = Instant::now();
    let (adapter, report) = pool.install(|| train(&model, &train_set, &[], &config, &mut NoObserver))?;
    let wall = started.elapsed().as_secs_f64();
    let eval_loss = pool.install(|| evaluate_loss(&model, &adapter, &eval_set, &config))?;
    let names: Vec<&str> = targets.iter().map(|t| t.hf_name()).collect();
    println!(
        "{}",
        serde_json::json!({
            "impl": if config.share_prefix { "pg_distill engine" } else { "pg_distill engine, no shared prefix" },
            "targets": names.join(","),
            "device": distill_engine::device::device_name(&device),
            "computed_tokens": report.computed_tokens,
            "real_tokens": report.trained_tokens,
            "padded_tokens": report.trained_tokens,
            "wall_s": wall,
            "real_tokens_per_s": report.trained_tokens as f64 / wall,
            "peak_rss_mib": peak_rss_mib(),
            "eval_loss": eval_loss,
            "train_loss": report.train_loss.last(),
            "steps": report.steps,
        })
    );
    Ok(())
}
