//! One fine-tuning job, start to finish, inside a background worker:
//!
//! 1. read the training (and validation) rows through SPI **as the job's owner**, in a read-only
//!    transaction that ends before training starts;
//! 2. estimate peak memory and refuse the job above `distill.max_training_memory`;
//! 3. train on an engine thread (signals blocked, no Postgres calls) while this, the worker's main
//!    thread, reports progress to the job row every couple of seconds and relays CANCEL and SIGTERM
//!    to the engine, which checks them between steps;
//! 4. store the adapter and the final status in one transaction.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use distill_engine::metrics;
use distill_engine::train::{self, Progress, TrainObserver};
use distill_engine::{Example, LoraAdapter, ModelStore, TextModel, TrainConfig, TrainReport, WeightFormat};
use pgrx::prelude::*;
use pgrx::JsonB;
use pgrx::PgSqlErrorCode::*;
use serde_json::{json, Value};

use crate::job_error::JobError;
use crate::pg::backend::shutdown_requested;
use crate::pg::elevated::Elevated;
use crate::pg::interrupts;
use crate::pg::transaction::transaction;
use crate::worker::Job;
use crate::{finetune, guc, registry, user_query};

/// How often the job row gets the latest progress (and the worker learns of a CANCEL).
const REPORT_EVERY: Duration = Duration::from_secs(2);
/// How long a worker told to shut down waits for the current training step to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Step losses kept in the job row for DESCRIBE.
const RECENT_LOSSES: usize = 50;
/// Validation rows the finished model answers for DESCRIBE's `validation_metrics` (a bound on the
/// time added to a job: about a second per row on 2 cores).
const METRICS_ROWS: usize = 200;

/// A worker's long-lived state: f32 base models (loaded once, reused by later jobs) and the pool.
pub struct Runner {
    models: HashMap<(PathBuf, String), Arc<TextModel>>,
    pool: distill_engine::threads::SizedPool,
}

impl Runner {
    pub fn new() -> Self {
        Self { models: HashMap::new(), pool: Default::default() }
    }

    pub fn run(&mut self, job: Job) {
        set_activity(pg_sys::BackendState::STATE_RUNNING, &format!("fine-tuning {} ({})", job.id, job.model));
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.run_job(&job)));
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(panic) => Some(JobError::internal(format!("internal error: {}", panic_text(&*panic)))),
        };
        if let Some(error) = error {
            // A CANCEL that interrupted the job's query is not an error: the row says it was asked
            // for (this UPDATE waits for the CANCEL's transaction to commit, then sees its flag).
            let done = transaction(|| {
                Spi::run_with_args(
                    "UPDATE distill.job_registry j SET
                            status = CASE WHEN j.cancel_requested THEN 'CANCELLED' ELSE 'ERROR' END,
                            error = CASE WHEN j.cancel_requested THEN NULL ELSE $2 END,
                            data = j.data OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('error_sqlstate',
                                   CASE WHEN j.cancel_requested THEN NULL ELSE $3 END),
                            finished_on = pg_catalog.now(), updated_on = pg_catalog.now(), worker_pid = NULL
                     WHERE j.id OPERATOR(pg_catalog.=) $1",
                    &[job.id.as_str().into(), error.message.as_str().into(), error.sqlstate().into()],
                )
            });
            if let Err(e) = done {
                log!("pg_distill worker: could not record the failure of job {}: {e}", job.id);
            }
        }
        set_activity(pg_sys::BackendState::STATE_IDLE, "");
    }

    fn run_job(&mut self, job: &Job) -> Result<(), JobError> {
        let (config, holdout_fraction) = finetune::train_config(&job.options)?;
        // While the job's queries run, CANCEL may interrupt them (see registry::cancel_job); a cancel
        // that lands just after they end must not fail the worker's next statement.
        interrupts::forget_query_cancel();
        set_activity(pg_sys::BackendState::STATE_RUNNING, &registry::reading_activity(&job.id));
        let rows = transaction(|| read_rows(job));
        set_activity(pg_sys::BackendState::STATE_RUNNING, &format!("fine-tuning {} ({})", job.id, job.model));
        interrupts::forget_query_cancel();
        let (train_rows, validation_rows) = rows??;
        reset_peak_rss();
        let no_rows = |label: &str, skipped: usize| {
            JobError::new(
                ERRCODE_NO_DATA_FOUND,
                format!("{label} returned no usable rows ({skipped} skipped for a NULL or blank prompt or completion)"),
            )
        };
        if train_rows.examples.is_empty() {
            return Err(no_rows("training_sql", train_rows.skipped));
        }
        let skipped = train_rows.skipped + validation_rows.as_ref().map_or(0, |v| v.skipped);
        let (train_set, eval_set, validation_source) = match validation_rows {
            Some(v) if v.examples.is_empty() => return Err(no_rows("validation_sql", v.skipped)),
            Some(v) => (train_rows.examples, v.examples, "validation_sql".to_string()),
            None => {
                let (t, e) = train::split_holdout(train_rows.examples, holdout_fraction, config.seed);
                let source = if e.is_empty() {
                    "none (fewer than 2 training rows)".to_string()
                } else {
                    format!("{} training rows held out ({}%, seed {})", e.len(), holdout_fraction * 100.0, config.seed)
                };
                (t, e, source)
            }
        };
        // A classifier's training set: the model will answer from these labels by default.
        let labels = train::label_set::closed_label_set(train_set.iter().map(|e| e.completion.as_str()));
        let model = self.model(&job.base_model)?;
        let estimate = train::estimate_memory(&model, &train_set, &config)?;
        let limit = guc::max_training_memory_bytes();
        if estimate.bytes > limit {
            return Err(JobError::new(
                ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                format!(
                    "this job would need about {} MB of memory to train, above distill.max_training_memory ({} MB) \
                 (hint: lower batch_size or max_seq_len in the options, or raise distill.max_training_memory)",
                    estimate.bytes >> 20,
                    limit >> 20
                ),
            ));
        }
        // On a GPU the device's own memory bounds the job: what it has free now, before the wait below.
        if let (Some(need), Some((free, total))) =
            (estimate.device_bytes, distill_engine::device::memory_info(model.llama.device()))
        {
            if need > free {
                return Err(JobError::new(
                    ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                    format!(
                        "this job would need about {} MB of GPU memory to train; {} has {} MB free of {} MB \
                         (hint: lower batch_size or max_seq_len in the options)",
                        need >> 20,
                        distill_engine::device::device_name(model.llama.device()),
                        free >> 20,
                        total >> 20
                    ),
                ));
            }
        }
        // Jobs training in other workers count against the same limit: wait for room.
        if !reserve_memory(job, estimate.bytes >> 20, limit >> 20)? {
            return if shutdown_requested() { requeue(job) } else { finish_cancelled(job) };
        }
        // Training threads under distill.max_threads, held for the rest of the job.
        let budget = crate::thread_budget::reserve(guc::training_threads());
        let total_steps = config.total_steps(train_set.len());
        let mut data = json!({
            "training_rows": train_set.len(),
            "validation_rows": eval_set.len(),
            "skipped_rows": skipped,
            "validation_source": validation_source,
            "memory_estimate_mb": estimate.bytes >> 20,
            "device_memory_estimate_mb": estimate.device_bytes.map(|b| b >> 20),
            "largest_batch_tokens": estimate.largest_batch_tokens,
            "threads": budget.threads(),
            "device": distill_engine::device::device_name(model.llama.device()),
            "labels": labels,
        });
        let cancelled = transaction(|| {
            Spi::get_one_with_args::<bool>(
                "UPDATE distill.job_registry j SET data = $2, total_steps = $3, updated_on = pg_catalog.now()
                 WHERE j.id OPERATOR(pg_catalog.=) $1 RETURNING j.cancel_requested",
                &[job.id.as_str().into(), JsonB(data.clone()).into(), (total_steps as i32).into()],
            )
        })?;
        if let Ok(Some(true)) = cancelled {
            return finish_cancelled(job);
        }

        let started = Instant::now();
        self.pool.of_size(budget.threads())?;
        let outcome = self.train_reporting(job, model.clone(), train_set, eval_set, config.clone(), labels.clone())?;
        let (adapter, report, validation_metrics) = match outcome {
            Trained::Done(done) => *done,
            Trained::Cancelled if shutdown_requested() => return requeue(job),
            Trained::Cancelled => return finish_cancelled(job),
        };
        data["truncated_examples"] = json!(report.truncated);
        data["kept_epoch"] = json!(report.kept_epoch);
        data["kept_because"] = json!(kept_because(&report, &config));
        data["stopped_early"] = json!(report.stopped_early);
        // Training alone (what tokens/s is measured over), the validation loss passes, and the whole job.
        data["train_seconds"] = json!(report.train_seconds);
        data["validation_loss_seconds"] = json!(report.eval_seconds);
        data["job_seconds"] = json!(started.elapsed().as_secs_f64());
        // Beside memory_estimate_mb: what the worker process really reached (rows, model, training).
        data["peak_rss_mb"] = json!(peak_rss_mb());
        store(job, &model, &adapter, &report, &data, labels, validation_metrics)
    }

    /// Trains on an engine thread; meanwhile reports progress and relays CANCEL and shutdown.
    fn train_reporting(
        &mut self,
        job: &Job,
        model: Arc<TextModel>,
        train_set: Vec<Example>,
        eval_set: Vec<Example>,
        config: TrainConfig,
        labels: Option<Vec<String>>,
    ) -> Result<Trained, JobError> {
        let total_steps = config.total_steps(train_set.len());
        let pool = self.pool.current().expect("run() sized the pool before training");
        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let panic_at_step = (guc::inject_fault() == "training_panic").then_some(1);
        let mut observer = ChannelObserver { tx, cancel: cancel.clone(), panic_at_step };
        let handle = distill_engine::threads::spawn("distill-train", move || {
            pool.install(|| {
                let (adapter, report) = train::train(&model, &train_set, &eval_set, &config, &mut observer)?;
                let metrics = match report.cancelled {
                    true => None,
                    false => validation_metrics(&model, &adapter, &eval_set, labels.as_deref(), &observer)?,
                };
                Ok::<_, distill_engine::Error>((adapter, report, metrics))
            })
        })
        .map_err(|e| JobError::internal(format!("could not start the training thread: {e}")))?;

        let mut state = ProgressState { total_steps, started: Some(Instant::now()), ..Default::default() };
        let mut last_report = Instant::now();
        let mut shutdown_since: Option<Instant> = None;
        loop {
            interrupts::wait_latch(Duration::from_millis(200));
            while let Ok(event) = rx.try_recv() {
                state.apply(event);
            }
            if shutdown_requested() {
                cancel.store(true, Ordering::Relaxed);
                // A step can take longer than a fast shutdown should: past SHUTDOWN_GRACE the job is
                // requeued at once and the engine thread dies with the process (it holds no Postgres state).
                if shutdown_since.get_or_insert_with(Instant::now).elapsed() >= SHUTDOWN_GRACE {
                    return Ok(Trained::Cancelled);
                }
            }
            if handle.is_finished() {
                break;
            }
            if last_report.elapsed() >= REPORT_EVERY {
                last_report = Instant::now();
                match transaction(|| state.report(&job.id)) {
                    Ok(Ok(Some(true))) => cancel.store(true, Ordering::Relaxed),
                    Ok(_) => {}
                    Err(e) => log!("pg_distill worker: progress of job {}: {e}", job.id),
                }
            }
        }
        while let Ok(event) = rx.try_recv() {
            state.apply(event);
        }
        match handle.join() {
            Ok(Ok((_, report, _))) if report.cancelled => Ok(Trained::Cancelled),
            // Cancelled while answering the validation rows: as cancelled as during training.
            Ok(Ok((_, _, None))) if cancel.load(Ordering::Relaxed) => Ok(Trained::Cancelled),
            Ok(Ok((adapter, report, metrics))) => Ok(Trained::Done(Box::new((adapter, report, metrics)))),
            Ok(Err(e)) => Err(e.into()),
            Err(panic) => {
                Err(JobError::internal(format!("internal error in the training engine: {}", panic_text(&*panic))))
            }
        }
    }

    /// The base model with dense weights (training needs them), loaded once per worker.
    fn model(&mut self, name: &str) -> Result<Arc<TextModel>, JobError> {
        let key = (guc::model_dir(), name.to_string());
        if let Some(m) = self.models.get(&key) {
            return Ok(m.clone());
        }
        let path = ModelStore::new(key.0.clone(), guc::hub_download()).resolve(name)?;
        let device = guc::training_device()?;
        // f32 on the CPU (its training path); a GPU holds the frozen base in bf16.
        let format = if device.is_cpu() { WeightFormat::F32 } else { WeightFormat::Bf16 };
        let model = Arc::new(TextModel::load(&path, format, &device)?);
        self.models.insert(key, model.clone());
        Ok(model)
    }
}

/// The tuned model's replies to (up to [`METRICS_ROWS`]) validation rows, scored as `distill.evaluate()`
/// does (from its label set, when it has one, as `complete()` will answer); None when there are no
/// validation rows or the job was cancelled meanwhile.
fn validation_metrics(
    model: &TextModel,
    adapter: &LoraAdapter,
    eval_set: &[Example],
    labels: Option<&[String]>,
    observer: &ChannelObserver,
) -> distill_engine::Result<Option<Value>> {
    let rows = &eval_set[..eval_set.len().min(METRICS_ROWS)];
    if rows.is_empty() {
        return Ok(None);
    }
    let adapter = adapter.detached();
    let opts = distill_engine::GenerateOptions {
        max_tokens: metrics::reply_budget(model, rows.iter().map(|e| e.completion.as_str()))?,
        ..Default::default()
    };
    let started = Instant::now();
    // One reply per distinct prompt (generation data repeats a prompt per reference).
    let mut replies: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    for e in rows {
        if observer.cancelled() {
            return Ok(None);
        }
        if replies.contains_key(e.prompt.as_str()) {
            continue;
        }
        let _ = observer.tx.send(Event::Answered { done: replies.len(), of: rows.len() });
        let text = match labels {
            Some(labels) => model.choose_with(&e.prompt, labels, false, Some(&adapter))?.text,
            None => model.complete_with(&e.prompt, &opts, Some(&adapter))?.text,
        };
        replies.insert(&e.prompt, text);
    }
    // A classifier is scored as labels; otherwise as its completions call for (JSON objects: per
    // field; free text: ROUGE, BLEU, chrF), as evaluate() does by default.
    let expected: Vec<&str> = rows.iter().map(|e| e.completion.as_str()).collect();
    let kind = match labels {
        Some(_) => metrics::MetricKind::Labels,
        None => metrics::default_metric_kind(&expected),
    };
    let scored: Vec<(&str, &str, &str)> =
        rows.iter().map(|e| (e.prompt.as_str(), e.completion.as_str(), replies[e.prompt.as_str()].as_str())).collect();
    let mut v = match metrics::score(&[kind], &scored) {
        Ok(v) => v,
        // Too much text to score: the job keeps its model; DESCRIBE says why there are no metrics.
        Err(e) => return Ok(Some(json!({"skipped": e.to_string()}))),
    };
    v["of_validation_rows"] = json!(eval_set.len());
    v["seconds"] = json!(started.elapsed().as_secs_f64());
    Ok(Some(v))
}

enum Trained {
    /// Boxed: the adapter and report are large beside `Cancelled`.
    Done(Box<(LoraAdapter, TrainReport, Option<Value>)>),
    Cancelled,
}

/// Reads the job's rows in the current transaction as the job's owner (see [`Elevated::job_owner`]),
/// with the owner's search_path from CREATE time, read-only; at most `distill.max_training_rows`
/// rows and `distill.max_training_memory` bytes of text, counted as they arrive.
fn read_rows(job: &Job) -> Result<(user_query::Rows, Option<user_query::Rows>), JobError> {
    let role_exists = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) $1)",
        &[job.owner.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !role_exists {
        return Err(JobError::new(ERRCODE_UNDEFINED_OBJECT, "the role that created this job no longer exists"));
    }
    let mut budget = user_query::Budget::training();
    let _owner = Elevated::job_owner(job.owner, &job.search_path);
    let train = user_query::read("training_sql", &job.training_sql, &mut budget);
    let validation = job.validation_sql.as_deref().map(|sql| user_query::read("validation_sql", sql, &mut budget));
    Ok((train, validation))
}

/// Adapter and final status in one transaction. A model name taken meanwhile (another job, an
/// import) fails the job rather than replacing that model.
fn store(
    job: &Job,
    model: &TextModel,
    adapter: &LoraAdapter,
    report: &TrainReport,
    data: &Value,
    labels: Option<Vec<String>>,
    validation_metrics: Option<Value>,
) -> Result<(), JobError> {
    let peft_base = distill_engine::model_store::peft_base_name(&job.base_model);
    let blob = adapter.to_bytes(peft_base, &model.llama.config)?;
    // The losses of the epoch whose adapter is stored.
    let (training_loss, validation_loss) = report.kept_losses();
    let epochs = epochs_json(report);
    let metrics = json!({
        "training_loss": training_loss,
        "validation_loss": validation_loss,
        "epochs": epochs,
        "trained_tokens": report.trained_tokens,
        "steps": report.steps,
        "examples": report.examples,
        "truncated_examples": report.truncated,
        "validation_metrics": validation_metrics,
        "kept_epoch": report.kept_epoch,
        "labels": labels,
    });
    let status = transaction(|| {
        Spi::get_one_with_args::<String>(
            "WITH m AS (
                INSERT INTO distill.model_registry (name, base_model, owner, job_id, adapter, options, metrics)
                SELECT j.model, j.base_model, j.owner, j.id, $2, j.options, $3 FROM distill.job_registry j
                WHERE j.id OPERATOR(pg_catalog.=) $1
                ON CONFLICT (name) DO NOTHING RETURNING name)
             UPDATE distill.job_registry j SET
                status = CASE WHEN EXISTS (SELECT FROM m) THEN 'SUCCESS' ELSE 'ERROR' END,
                error = CASE WHEN EXISTS (SELECT FROM m) THEN NULL
                             ELSE pg_catalog.format('model name %s was taken while this job ran', pg_catalog.quote_literal(j.model)) END,
                progress = 1, step = $4, trained_tokens = $5, training_loss = $6, validation_loss = $7,
                epochs = $8, data = $9, validation_metrics = $10, eta_seconds = 0, finished_on = pg_catalog.now(),
                updated_on = pg_catalog.now(), worker_pid = NULL
             WHERE j.id OPERATOR(pg_catalog.=) $1 RETURNING j.status",
            &[
                job.id.as_str().into(),
                blob.into(),
                JsonB(metrics.clone()).into(),
                (report.steps as i32).into(),
                (report.trained_tokens as i64).into(),
                training_loss.into(),
                validation_loss.into(),
                JsonB(epochs.clone()).into(),
                JsonB(data.clone()).into(),
                validation_metrics.map(JsonB).into(),
            ],
        )
    })?;
    status.map(|_| ()).map_err(JobError::from)
}

/// Waits until this job's memory estimate (MB) fits under `limit_mb` beside the estimates of the jobs
/// other workers are training (`distill.workers` > 1), and records it in the job's `data`, where the
/// next job to check sees it. Check and record happen under one advisory lock, so two workers cannot
/// both take the last room. False when the job was cancelled or the server is shutting down while it
/// waited. DESCRIBE shows the wait in `data.waiting_for_memory`.
fn reserve_memory(job: &Job, estimate_mb: u64, limit_mb: u64) -> Result<bool, JobError> {
    let mut announced = false;
    loop {
        let reserved = transaction(|| {
            Spi::get_one_with_args::<i64>(
                "WITH lock AS (SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pg_distill training memory')))
                 SELECT COALESCE(pg_catalog.sum((j.data OPERATOR(pg_catalog.->>) 'memory_estimate_mb')::pg_catalog.int8), 0)::pg_catalog.int8
                 FROM distill.job_registry j, lock
                 WHERE j.status OPERATOR(pg_catalog.=) 'IN_PROGRESS' AND j.id OPERATOR(pg_catalog.<>) $1
                   AND j.data OPERATOR(pg_catalog.?) 'memory_estimate_mb'",
                &[job.id.as_str().into()],
            )
            .map(|others| {
                let others = others.unwrap_or(0).max(0) as u64;
                let fits = others + estimate_mb <= limit_mb;
                let note = if fits {
                    serde_json::json!({"memory_estimate_mb": estimate_mb})
                } else {
                    serde_json::json!({"waiting_for_memory": format!(
                        "{estimate_mb} MB needed, {others} MB held by running jobs, distill.max_training_memory {limit_mb} MB"
                    )})
                };
                let cancelled = Spi::get_one_with_args::<bool>(
                    "UPDATE distill.job_registry j SET data = (j.data OPERATOR(pg_catalog.-) 'waiting_for_memory')
                            OPERATOR(pg_catalog.||) $2, updated_on = pg_catalog.now()
                     WHERE j.id OPERATOR(pg_catalog.=) $1 RETURNING j.cancel_requested",
                    &[job.id.as_str().into(), JsonB(note).into()],
                );
                (fits, matches!(cancelled, Ok(Some(true))))
            })
        })??;
        match reserved {
            (_, true) => return Ok(false),
            (true, false) => return Ok(true),
            (false, false) => {}
        }
        if shutdown_requested() {
            return Ok(false);
        }
        if !announced {
            log!("pg_distill worker: job {} waits for memory held by running jobs", job.id);
            announced = true;
        }
        interrupts::wait_latch(Duration::from_secs(2));
    }
}

fn finish_cancelled(job: &Job) -> Result<(), JobError> {
    transaction(|| {
        Spi::run_with_args(
            "UPDATE distill.job_registry j SET status = 'CANCELLED', finished_on = pg_catalog.now(),
                    updated_on = pg_catalog.now(), worker_pid = NULL, eta_seconds = NULL
             WHERE j.id OPERATOR(pg_catalog.=) $1",
            &[job.id.as_str().into()],
        )
    })?
    .map_err(JobError::from)
}

/// Shutdown during training: the job goes back to the queue and starts over when a worker is back.
fn requeue(job: &Job) -> Result<(), JobError> {
    transaction(|| {
        Spi::run_with_args(
            "UPDATE distill.job_registry j SET status = CASE WHEN j.cancel_requested THEN 'CANCELLED' ELSE 'PENDING' END,
                    finished_on = CASE WHEN j.cancel_requested THEN pg_catalog.now() END, worker_pid = NULL,
                    progress = 0, step = 0, eta_seconds = NULL, updated_on = pg_catalog.now()
             WHERE j.id OPERATOR(pg_catalog.=) $1",
            &[job.id.as_str().into()],
        )
    })?
    .map_err(JobError::from)
}

/// Why DESCRIBE's model is the adapter of `report.kept_epoch`.
fn kept_because(report: &TrainReport, config: &TrainConfig) -> String {
    let run = report.train_loss.len();
    let stopped = if report.stopped_early {
        format!("; early stopping ended the run after epoch {run} of {}", config.epochs)
    } else {
        String::new()
    };
    match report.kept_losses().1 {
        None => format!("the last epoch: there were no validation rows to choose by{stopped}"),
        Some(_) if !config.keep_best => format!("the last epoch: keep_best_epoch is off{stopped}"),
        Some(l) => format!("the lowest validation loss ({l:.4}) of the {run} epochs run{stopped}"),
    }
}

fn epochs_json(report: &TrainReport) -> Value {
    Value::Array(
        report
            .train_loss
            .iter()
            .enumerate()
            .map(|(i, l)| json!({"epoch": i + 1, "training_loss": l, "validation_loss": report.eval_loss.get(i)}))
            .collect(),
    )
}

enum Event {
    Step(Progress),
    /// Validation rows the tuned model has answered (for `validation_metrics`).
    Answered {
        done: usize,
        of: usize,
    },
    Epoch {
        epoch: usize,
        train_loss: f64,
        eval_loss: Option<f64>,
    },
}

/// The engine thread's side: sends events, never touches Postgres.
struct ChannelObserver {
    tx: mpsc::Sender<Event>,
    cancel: Arc<AtomicBool>,
    /// Set by `distill.inject_fault = 'training_panic'` (tests of the panic path).
    panic_at_step: Option<usize>,
}

impl TrainObserver for ChannelObserver {
    fn progress(&mut self, p: &Progress) {
        if self.panic_at_step == Some(p.step) {
            panic!("injected fault: distill.inject_fault = 'training_panic'");
        }
        let _ = self.tx.send(Event::Step(p.clone()));
    }
    fn epoch_end(&mut self, epoch: usize, train_loss: f64, eval_loss: Option<f64>) {
        let _ = self.tx.send(Event::Epoch { epoch, train_loss, eval_loss });
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// What the main thread knows of the run, written to the job row by [`ProgressState::report`].
#[derive(Default)]
struct ProgressState {
    total_steps: usize,
    step: usize,
    tokens: usize,
    recent: VecDeque<f64>,
    epoch_sum: f64,
    epoch_steps: usize,
    epochs: Vec<Value>,
    last_train_loss: Option<f64>,
    last_eval_loss: Option<f64>,
    started: Option<Instant>,
    answered: Option<(usize, usize)>,
}

impl ProgressState {
    fn apply(&mut self, e: Event) {
        match e {
            Event::Step(p) => {
                self.step = p.step;
                self.total_steps = p.total_steps;
                self.tokens = p.tokens;
                self.recent.push_back(p.loss);
                if self.recent.len() > RECENT_LOSSES {
                    self.recent.pop_front();
                }
                self.epoch_sum += p.loss;
                self.epoch_steps += 1;
            }
            Event::Answered { done, of } => self.answered = Some((done, of)),
            Event::Epoch { epoch, train_loss, eval_loss } => {
                self.epochs.push(json!({"epoch": epoch, "training_loss": train_loss, "validation_loss": eval_loss}));
                self.last_train_loss = Some(train_loss);
                self.last_eval_loss = eval_loss.or(self.last_eval_loss);
                self.epoch_sum = 0.0;
                self.epoch_steps = 0;
            }
        }
    }

    /// Writes progress; returns whether a CANCEL was requested.
    fn report(&self, id: &str) -> Result<Option<bool>, pgrx::spi::SpiError> {
        let progress = if self.total_steps == 0 { 0.0 } else { self.step as f64 / self.total_steps as f64 };
        let eta = match self.started {
            Some(t) if self.step > 0 => Some(
                t.elapsed().as_secs_f64() / self.step as f64
                    * (self.total_steps - self.step.min(self.total_steps)) as f64,
            ),
            _ => None,
        };
        // Until the first epoch ends, the running mean of this epoch's steps.
        let train_loss =
            self.last_train_loss.or((self.epoch_steps > 0).then(|| self.epoch_sum / self.epoch_steps as f64));
        Spi::get_one_with_args::<bool>(
            "UPDATE distill.job_registry j SET progress = $2, step = $3, trained_tokens = $4, recent_losses = $5,
                    epochs = $6, eta_seconds = $7, training_loss = $8, validation_loss = $9, updated_on = pg_catalog.now(),
                    data = CASE WHEN $10::pg_catalog.text IS NULL THEN j.data
                                ELSE j.data OPERATOR(pg_catalog.||)
                                     pg_catalog.jsonb_build_object('validation_rows_answered', $10::pg_catalog.text) END
                           OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('peak_rss_mb', $11::pg_catalog.int8)
             WHERE j.id OPERATOR(pg_catalog.=) $1 RETURNING j.cancel_requested",
            &[
                id.into(),
                progress.into(),
                (self.step as i32).into(),
                (self.tokens as i64).into(),
                JsonB(json!(self.recent)).into(),
                JsonB(Value::Array(self.epochs.clone())).into(),
                eta.into(),
                train_loss.into(),
                self.last_eval_loss.into(),
                self.answered.map(|(done, of)| format!("{done}/{of}")).into(),
                peak_rss_mb().map(|mb| mb as i64).into(),
            ],
        )
    }
}

/// What pg_stat_activity shows for this worker.
fn set_activity(state: pg_sys::BackendState::Type, text: &str) {
    crate::pg::backend::report_activity(state, text);
}

/// Starts this process's peak-RSS count afresh (Linux: "5" to clear_refs resets VmHWM), so that a
/// job reports its own peak rather than an earlier, larger job's.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory since [`reset_peak_rss`], in MB (None off Linux).
fn peak_rss_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(e) = p.downcast_ref::<pgrx::pg_sys::panic::CaughtError>() {
        JobError::from(e).message
    } else {
        "unknown panic".into()
    }
}
