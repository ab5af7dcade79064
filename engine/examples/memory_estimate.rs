//! `train::estimate_memory` against what a training run really holds: loads the f32 model the way
//! the fine-tuning worker does, trains on the largest batch the estimate assumes, evaluates the loss
//! on the validation rows after each epoch and answers a few of them, and prints one JSON line with
//! the estimate and the peak resident memory (VmHWM) of the whole process (a fresh worker: model
//! load, training, validation) and of the part after loading (a worker whose model is loaded already).
//!
//! cargo run -p distill-engine --example memory_estimate -- --data ../shared/data/support_tickets \
//!     [--batch 8] [--steps 3] [--threads 2] [--eval-rows 200] [--gen-rows 5] [--max-seq-len 512]
//!     [--targets all|q,v] [--dropout 0] [--no-share-prefix] [--format f32|bf16] [--device cpu|cuda]
//!
//! `--format bf16` loads the model as a GPU does and trains on the device path (`device_path.rs`); on
//! the CPU its tensors are then what a GPU would hold, so the peak after loading checks the estimate's
//! `device_estimate_mib`; `--device cuda` prints the GPU's own figures (`cuda_used_mib`).
//!
//! DIR holds train.csv and test.csv (id,text,label). Prompts are those of the quickstart
//! (examples/tickets.sql) and of bench/finetune_sql.sh's banking77_10intent: the labels seen in
//! training in byte order, then the request. The validation rows are the first of test.csv, at most
//! 200 (the benchmark's validation set; the quickstart's 27 test rows).

use std::collections::BTreeSet;
use std::path::PathBuf;

use distill_engine::models::llama::PackedBatch;
use distill_engine::train::{estimate_memory, example_orders, tokenize_example, train, NoObserver};
use distill_engine::{Example, GenerateOptions, LoraConfig, ModelStore, Target, TextModel, TrainConfig, WeightFormat};

fn read(path: &PathBuf) -> Vec<(String, String)> {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    r.records().map(|rec| rec.unwrap()).map(|rec| (rec[1].to_string(), rec[2].to_string())).collect()
}

/// A line of /proc/self/status in MiB ("VmHWM", "VmRSS").
fn status_mib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key}"));
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

fn main() -> distill_engine::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
    let num = |flag: &str, default: usize| arg(flag).map(|v| v.parse::<usize>().unwrap()).unwrap_or(default);
    let data = PathBuf::from(arg("--data").expect("--data DIR with train.csv and test.csv"));
    let (train_rows, test_rows) = (read(&data.join("train.csv")), read(&data.join("test.csv")));
    let labels: BTreeSet<&str> = train_rows.iter().map(|(_, l)| l.as_str()).collect();
    let instruction = format!(
        "Classify this customer request into one of: {}. Reply with the category only.",
        labels.iter().copied().collect::<Vec<_>>().join(", ")
    );
    let ex = |(t, l): &(String, String)| Example::new(&format!("{instruction}\nRequest: {t}"), l);
    let train_set: Vec<Example> = train_rows.iter().map(ex).collect();
    let eval_set: Vec<Example> = test_rows.iter().take(num("--eval-rows", 200)).map(ex).collect();
    let targets = match arg("--targets").as_deref() {
        None | Some("all") => Target::ALL.to_vec(),
        Some(t) => t.split(',').map(Target::parse).collect::<distill_engine::Result<Vec<_>>>()?,
    };
    let batch = num("--batch", 8);
    let config = TrainConfig {
        epochs: num("--steps", 3),
        batch_size: batch,
        max_seq_len: num("--max-seq-len", 512),
        lora: LoraConfig {
            targets,
            dropout: arg("--dropout").map(|v| v.parse().unwrap()).unwrap_or(0.0),
            ..Default::default()
        },
        share_prefix: !args.iter().any(|a| a == "--no-share-prefix"),
        ..Default::default()
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = arg("--model-dir").map(PathBuf::from).unwrap_or_else(|| root.join("models"));
    let path = ModelStore::new(dir, false).resolve("smollm2-135m")?;
    let format = match arg("--format").as_deref() {
        None | Some("f32") => WeightFormat::F32,
        Some("bf16") => WeightFormat::Bf16,
        Some(f) => panic!("--format f32 or bf16, not {f}"),
    };
    let choice = distill_engine::device::DeviceChoice::parse(arg("--device").as_deref().unwrap_or("cpu"), "--device")?;
    let device = distill_engine::device::select(choice, "--device")?;
    let model = TextModel::load(&path, format, &device)?;
    let device_free_after_load = distill_engine::device::memory_info(&device).map(|m| m.0);
    let loaded_rss = status_mib("VmRSS:");
    let load_peak = status_mib("VmHWM:");
    // From here the peak counts afresh, as in a worker that has its model loaded already.
    std::fs::write("/proc/self/clear_refs", "5")?;

    let estimate = estimate_memory(&model, &train_set, &config)?;
    // The `batch` longest examples are the largest batch; as the whole training set, every step
    // (one per epoch) is that batch.
    let mut by_len: Vec<(usize, &Example)> = train_set
        .iter()
        .map(|e| Ok((tokenize_example(&model, e, config.max_seq_len)?.0.len(), e)))
        .collect::<distill_engine::Result<_>>()?;
    by_len.sort_by_key(|e| std::cmp::Reverse(e.0));
    let worst: Vec<Example> = by_len.iter().take(batch).map(|(_, e)| (*e).clone()).collect();

    // The largest batch a whole run (3 epochs, seed 42: the defaults) meets in its shuffled order, for
    // comparison with a worker's measured peak: it need not meet the largest possible batch.
    let ids: Vec<(Vec<u32>, usize)> = train_set
        .iter()
        .map(|e| tokenize_example(&model, e, config.max_seq_len).map(|(ids, start, _)| (ids, start)))
        .collect::<distill_engine::Result<_>>()?;
    let run_largest = example_orders(ids.len(), 3, 42)
        .iter()
        .flat_map(|order| order.chunks(batch).map(|c| c.to_vec()).collect::<Vec<_>>())
        .map(|chunk| {
            let mut b = PackedBatch::default();
            b.push_shared(&chunk.iter().map(|&i| (ids[i].0.as_slice(), ids[i].1)).collect::<Vec<_>>());
            b.ids.len()
        })
        .max()
        .unwrap_or(0);

    let pool = distill_engine::threads::pool(num("--threads", 2))?;
    let (adapter, report) = pool.install(|| train(&model, &worst, &eval_set, &config, &mut NoObserver))?;
    let trained_peak = status_mib("VmHWM:");
    // On a GPU: what it has in use now beyond what it had after loading (candle's allocator keeps
    // freed blocks cached, so this is near the run's peak, not a measurement of it).
    let cuda_used = device_free_after_load
        .zip(distill_engine::device::memory_info(&device))
        .map(|(before, now)| before.saturating_sub(now.0) >> 20);
    // The worker then answers the validation rows with the adapter (greedy, a reply budget).
    let budget = distill_engine::metrics::reply_budget(&model, eval_set.iter().map(|e| e.completion.as_str()))?;
    let opts = GenerateOptions { max_tokens: budget, ..Default::default() };
    for e in eval_set.iter().take(num("--gen-rows", 5)) {
        pool.install(|| model.complete_with(&e.prompt, &opts, Some(&adapter)))?;
    }
    let after_load_peak = status_mib("VmHWM:");
    println!(
        "{}",
        serde_json::json!({
            "data": data.file_name().map(|n| n.to_string_lossy().to_string()),
            "train_rows": train_set.len(),
            "eval_rows": eval_set.len(),
            "batch_size": batch,
            "share_prefix": config.share_prefix,
            "amx": distill_engine::kernels::amx::available(),
            "format": format!("{format:?}"),
            "device": distill_engine::device::device_name(&device),
            "estimate_mib": estimate.bytes >> 20,
            "device_estimate_mib": estimate.device_bytes.map(|b| b >> 20),
            "cuda_used_mib": cuda_used,
            "largest_batch_tokens": estimate.largest_batch_tokens,
            "largest_batch_computed_tokens": estimate.largest_batch_computed_tokens,
            "run_largest_batch_computed_tokens": run_largest,
            "longest_example_tokens": estimate.longest_example_tokens,
            "trained_tokens_per_step": report.trained_tokens / report.steps.max(1),
            "computed_tokens_per_step": report.computed_tokens / report.steps.max(1),
            "rss_after_load_mib": loaded_rss,
            "peak_while_loading_mib": load_peak,
            "peak_after_load_mib": after_load_peak,
            "peak_training_mib": trained_peak,
            "peak_whole_process_mib": load_peak.max(after_load_peak),
        })
    );
    Ok(())
}
