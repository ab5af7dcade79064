//! Fine-tune on a CSV of (text, label) rows and measure exact-match accuracy on another, greedy, both
//! free and answering from the training labels (what `complete()` does on a model whose completions
//! are a closed label set): the engine alone, no Postgres.
//!
//! cargo run -p distill-engine --example finetune_eval -- --train data/support_tickets/train.csv \
//!     --test data/support_tickets/test.csv [--epochs 3] [--lr 1e-3] [--batch 8] [--r 8] [--alpha 16]
//!     [--targets q,k,v,o,gate,up,down] [--seed 42] [--threads 2] [--save DIR] [--holdout K]
//!     [--instruction TEXT]
//!
//! `--holdout K` moves the last K training rows of each label to a validation set: the epoch with the
//! lowest validation loss is kept (TrainConfig::keep_best, the SQL default), chosen without the test rows.
//!
//! CSV columns: id,text,label (the shipped data sets). The prompt lists the labels seen in training.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use distill_engine::train::{train, Progress, TrainObserver};
use distill_engine::{Example, GenerateOptions, LoraConfig, ModelStore, Target, TextModel, TrainConfig, WeightFormat};

struct Printer {
    started: Instant,
}

impl TrainObserver for Printer {
    fn progress(&mut self, p: &Progress) {
        if p.step.is_multiple_of(10) || p.step == p.total_steps {
            let secs = self.started.elapsed().as_secs_f64();
            eprintln!(
                "step {:>4}/{} epoch {} loss {:.4} lr {:.2e} tokens {} ({:.0} tok/s)",
                p.step,
                p.total_steps,
                p.epoch,
                p.loss,
                p.learning_rate,
                p.tokens,
                p.tokens as f64 / secs
            );
        }
    }
    fn epoch_end(&mut self, epoch: usize, train_loss: f64, eval_loss: Option<f64>) {
        eprintln!("epoch {epoch}: train loss {train_loss:.4}, eval loss {eval_loss:?}");
    }
}

fn read(path: &str) -> Vec<(String, String)> {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    r.records().map(|rec| rec.unwrap()).map(|rec| (rec[1].to_string(), rec[2].to_string())).collect()
}

fn main() -> distill_engine::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
    let num = |flag: &str, default: f64| arg(flag).map(|v| v.parse::<f64>().unwrap()).unwrap_or(default);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut train_rows = read(&arg("--train").expect("--train CSV"));
    let holdout = num("--holdout", 0.0) as usize;
    let mut valid_rows = Vec::new();
    if holdout > 0 {
        // The last `holdout` rows of each label, in file order, leave the training rows.
        let mut seen = std::collections::HashMap::<String, usize>::new();
        for (_, l) in &train_rows {
            *seen.entry(l.clone()).or_default() += 1;
        }
        let mut kept = Vec::new();
        for row in train_rows.drain(..) {
            let left = seen.get_mut(&row.1).unwrap();
            *left -= 1;
            if *left < holdout {
                valid_rows.push(row);
            } else {
                kept.push(row);
            }
        }
        train_rows = kept;
        eprintln!("{} training rows, {} validation rows held out", train_rows.len(), valid_rows.len());
    }
    let test_rows = read(&arg("--test").expect("--test CSV"));
    let labels: BTreeSet<&str> = train_rows.iter().map(|(_, l)| l.as_str()).collect();
    // `--instruction` replaces the default one (which lists the labels), e.g. bench/finetune_sql.sh's
    // BANKING77 instruction that names none of its 77 intents.
    let instruction = arg("--instruction").unwrap_or_else(|| {
        format!(
            "Classify this customer request into one of: {}. Reply with the category only.",
            labels.iter().copied().collect::<Vec<_>>().join(", ")
        )
    });
    let prompt = |text: &str| format!("{instruction}\nRequest: {text}");
    let examples: Vec<Example> = train_rows.iter().map(|(t, l)| Example::new(&prompt(t), l)).collect();
    let valid: Vec<Example> = valid_rows.iter().map(|(t, l)| Example::new(&prompt(t), l)).collect();
    let targets = match arg("--targets") {
        Some(t) => t.split(',').map(Target::parse).collect::<distill_engine::Result<Vec<_>>>()?,
        None => Target::ALL.to_vec(),
    };
    let config = TrainConfig {
        epochs: num("--epochs", 3.0) as usize,
        learning_rate: num("--lr", 1e-3),
        batch_size: num("--batch", 8.0) as usize,
        seed: num("--seed", 42.0) as u64,
        lora: LoraConfig { r: num("--r", 8.0) as usize, alpha: num("--alpha", 16.0), targets, ..Default::default() },
        ..Default::default()
    };
    let dir = arg("--model-dir").map(PathBuf::from).unwrap_or_else(|| root.join("models"));
    let path = ModelStore::new(dir, false).resolve("smollm2-135m")?;
    let pool = distill_engine::threads::pool(num("--threads", 2.0) as usize)?;
    let model = TextModel::load_gguf(&path, WeightFormat::F32, &candle_core::Device::Cpu)?;

    let started = Instant::now();
    let (adapter, report) = pool.install(|| train(&model, &examples, &valid, &config, &mut Printer { started }))?;
    let train_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "trained {} steps, {} tokens in {train_secs:.1}s ({} truncated); kept epoch {} (validation losses {:?})",
        report.steps, report.trained_tokens, report.truncated, report.kept_epoch, report.eval_loss
    );
    if let Some(dir) = arg("--save") {
        adapter.save_peft(std::path::Path::new(&dir), "HuggingFaceTB/SmolLM2-135M-Instruct", &model.llama.config)?;
    }

    let serve = TextModel::load(&path, WeightFormat::Q8_0, &candle_core::Device::Cpu)?;
    let opts = GenerateOptions { max_tokens: 16, ..Default::default() };
    let label_set = distill_engine::train::label_set::closed_label_set(examples.iter().map(|e| e.completion.as_str()));
    let started = Instant::now();
    let (mut correct, mut correct_labels) = (0, 0);
    for (text, label) in &test_rows {
        let ids = serve.chat_prompt(&[distill_engine::Message::user(&prompt(text))])?;
        let out =
            pool.install(|| distill_engine::infer::generation::generate_with(&serve, &ids, &opts, Some(&adapter)))?;
        if out.text.trim() == label.trim() {
            correct += 1;
        } else {
            eprintln!("miss: want {label:?}, got {:?}", out.text);
        }
        if let Some(labels) = &label_set {
            let c = pool.install(|| serve.choose_with(&prompt(text), labels, false, Some(&adapter)))?;
            correct_labels += (c.text.trim() == label.trim()) as usize;
        }
    }
    let accuracy = correct as f64 / test_rows.len() as f64;
    let with_labels = match &label_set {
        Some(_) => {
            format!("{:.4} ({correct_labels}/{})", correct_labels as f64 / test_rows.len() as f64, test_rows.len())
        }
        None => "n/a (the completions are no closed label set)".into(),
    };
    println!(
        "accuracy {accuracy:.4} ({correct}/{}) free, {with_labels} from the label set, train {train_secs:.1}s, {:.0} train tok/s, eval {:.1}s, final train loss {:.4}",
        test_rows.len(),
        report.trained_tokens as f64 / train_secs,
        started.elapsed().as_secs_f64(),
        report.train_loss.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
