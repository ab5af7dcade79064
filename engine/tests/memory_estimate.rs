//! `train::estimate_memory` against the peak resident memory of this process when it loads the f32
//! model and trains on the largest batch the estimate assumes (as the fine-tuning worker does). The
//! only test in its binary: the peak measured is the whole process's.
mod common;

use distill_engine::train::{estimate_memory, tokenize_example, train, NoObserver};
use distill_engine::{Example, TrainConfig, WeightFormat};

/// VmHWM (peak resident set) of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() << 10
}

#[test]
fn estimate_is_a_little_above_the_measured_peak() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("no /proc: peak memory not measured");
        return;
    }
    let model = common::smollm2_with(WeightFormat::F32);
    // The quickstart's prompts (examples/tickets.sql).
    let path = common::repo_root().join("data/support_tickets/train.csv");
    let examples: Vec<Example> = csv::Reader::from_path(path)
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .map(|r| {
            let prompt = format!(
                "Classify this customer request into one of: Add new line, Closing account, Roaming fees, Slow data speed. \
                 Reply with the category only.\nRequest: {}",
                &r[1]
            );
            Example::new(&prompt, &r[2])
        })
        .collect();
    let config = TrainConfig { epochs: 1, ..Default::default() };
    let est = estimate_memory(&model, &examples, &config).unwrap();

    // Sharing the prompt prefix computes fewer tokens, and the estimate counts that.
    let unshared = estimate_memory(&model, &examples, &TrainConfig { share_prefix: false, ..config.clone() }).unwrap();
    assert_eq!(unshared.largest_batch_computed_tokens, unshared.largest_batch_tokens);
    assert!(est.largest_batch_computed_tokens + 7 * 40 < est.largest_batch_tokens, "{est:?}");
    assert!(unshared.bytes > est.bytes);

    // Train one step on the batch the estimate assumes: the batch_size longest examples.
    let mut longest: Vec<(usize, &Example)> =
        examples.iter().map(|e| (tokenize_example(&model, e, config.max_seq_len).unwrap().0.len(), e)).collect();
    longest.sort_by_key(|e| std::cmp::Reverse(e.0));
    let batch: Vec<Example> = longest.iter().take(config.batch_size).map(|(_, e)| (*e).clone()).collect();
    let pool = distill_engine::threads::pool(2).unwrap();
    let (_, report) = pool.install(|| train(&model, &batch, &[], &config, &mut NoObserver)).unwrap();
    assert_eq!((report.steps, report.computed_tokens), (1, est.largest_batch_computed_tokens));
    let measured = peak_rss();
    let ratio = est.bytes as f64 / measured as f64;
    eprintln!("estimate {} MiB, measured peak {} MiB ({ratio:.2}x)", est.bytes >> 20, measured >> 20);
    assert!((1.0..1.35).contains(&ratio), "estimate {} MiB, measured peak {} MiB", est.bytes >> 20, measured >> 20);
}
