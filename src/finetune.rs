//! `distill.finetune(verb, ...)`: the Cortex FINETUNE verbs. CREATE checks everything it can in the
//! caller's session and queues a job for the background worker ([`crate::worker`]); DESCRIBE, SHOW and
//! CANCEL read or flag the job registry.

use distill_engine::{LoraConfig, ModelStore, Target, TrainConfig};
use pgrx::prelude::*;
use pgrx::JsonB;
use pgrx::PgSqlErrorCode::*;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::errors::{invalid, report_sql, OrReport};
use crate::{guc, registry, user_query, worker};

/// SHOW.
#[pg_extern(volatile, parallel_unsafe, name = "finetune")]
fn finetune_show(verb: Option<&str>) -> JsonB {
    match verb_of(verb).as_str() {
        "SHOW" => JsonB(Value::Array(registry::job_rows().iter().map(summary).collect())),
        v => wrong_arity(v),
    }
}

/// DESCRIBE and CANCEL.
#[pg_extern(volatile, parallel_unsafe, name = "finetune")]
fn finetune_job(verb: Option<&str>, job_id: Option<&str>) -> JsonB {
    let verb = verb_of(verb);
    if !matches!(verb.as_str(), "DESCRIBE" | "CANCEL") {
        wrong_arity(&verb);
    }
    let id = job_id.filter(|s| !s.trim().is_empty()).unwrap_or_else(|| invalid(format!("{verb} needs a job id")));
    let Some(mut row) = registry::job_row(id) else { no_such_job() };
    if verb == "CANCEL" {
        crate::errors::refuse_on_standby("finetune('CANCEL')");
        if !registry::cancel_job(id) {
            report_sql(
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                &format!("finetune job has already finished ({})", row["status"].as_str().unwrap_or("?")),
                None,
            );
        }
        // The row after the request: CANCELLED, or still running with cancel_requested.
        let Some(after) = registry::job_row(id) else { no_such_job() };
        row = after;
    }
    JsonB(describe(&row))
}

/// CREATE: returns the new job's id at once; training runs in the background worker.
#[pg_extern(volatile, parallel_unsafe, name = "finetune")]
fn finetune_create(
    verb: Option<&str>,
    name: Option<&str>,
    base_model: Option<&str>,
    training_sql: Option<&str>,
    validation_sql: default!(Option<&str>, "NULL"),
    options: default!(Option<JsonB>, "NULL"),
) -> String {
    crate::errors::refuse_on_standby("finetune('CREATE')");
    let verb = verb_of(verb);
    if verb != "CREATE" {
        wrong_arity(&verb);
    }
    let required = |v: Option<&str>, what: &str| -> String {
        match v.map(str::trim) {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => invalid(format!("CREATE needs a {what}")),
        }
    };
    let name = required(name, "model name");
    let base_model = required(base_model, "base model");
    let training_sql = required(training_sql, "training query");
    let validation_sql = validation_sql.map(str::trim).filter(|s| !s.is_empty()).map(String::from);
    let options = options.map(|o| o.0).unwrap_or_else(|| json!({}));

    check_model_name(&name);
    let _ = train_config(&options).or_report();
    worker::check_can_run_jobs();
    check_new_model(&name, &base_model);
    user_query::check("training_sql", &training_sql);
    if let Some(v) = &validation_sql {
        user_query::check("validation_sql", v);
    }
    let search_path =
        Spi::get_one::<String>("SELECT pg_catalog.current_setting('search_path')").ok().flatten().unwrap_or_default();
    let job = registry::NewJob {
        model: &name,
        base_model: &base_model,
        owner: registry::caller().0,
        training_sql: &training_sql,
        validation_sql: validation_sql.as_deref(),
        options,
        search_path,
    };
    registry::insert_job(&job).unwrap_or_else(|| taken(&name, "a pending fine-tuning job"))
}

/// A name for a new tuned model of `base_model`: valid, not a base model's, not taken; the base a
/// readable base model (not a tuned one).
pub fn check_new_model(name: &str, base_model: &str) {
    check_model_name(name);
    let store = ModelStore::new(guc::model_dir(), false);
    // A base model file wins over a tuned model's name, as in complete().
    let base_path = store.resolve(base_model).unwrap_or_else(|e| {
        if let Some(tuned) = registry::find_model(base_model) {
            // Its base is named only to a role that may use it.
            let hint = tuned.usable.then(|| format!("Use its base model, \"{}\".", tuned.base_model));
            report_sql(
                ERRCODE_FEATURE_NOT_SUPPORTED,
                &format!("\"{base_model}\" is a fine-tuned model, not a base model"),
                hint.as_deref(),
            );
        }
        crate::errors::report(e)
    });
    if base_path.is_file() {
        // Reads the header and checks every tensor lies inside the file: a truncated or corrupt base
        // model fails here rather than in the worker.
        distill_engine::formats::gguf::GgufFile::open(&base_path).or_report();
    }
    if store.resolve(name).is_ok() || distill_engine::model_store::BUILTIN_MODELS.iter().any(|b| b.name == name) {
        taken(name, "a base model");
    }
    if registry::model_taken(name) {
        taken(name, "an existing model");
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FinetuneOptions {
    max_epochs: Option<usize>,
    learning_rate: Option<f64>,
    lora_r: Option<usize>,
    lora_alpha: Option<f64>,
    lora_dropout: Option<f64>,
    target_modules: Option<Vec<String>>,
    max_seq_len: Option<usize>,
    batch_size: Option<usize>,
    seed: Option<u64>,
    /// Share of the training rows held out for validation when no validation query is given.
    validation_fraction: Option<f64>,
    /// Keep the adapter of the epoch with the lowest validation loss (default true).
    keep_best_epoch: Option<bool>,
    /// Stop once validation loss has not improved for `patience` epochs (default false, patience 1).
    early_stopping: Option<bool>,
    patience: Option<usize>,
}

/// Default share of training rows held out as the validation set when CREATE has no validation_sql.
pub const DEFAULT_VALIDATION_FRACTION: f64 = 0.1;

/// The engine's training configuration from CREATE's options (validated), and the holdout fraction.
pub fn train_config(options: &Value) -> distill_engine::Result<(TrainConfig, f64)> {
    use distill_engine::Error::InvalidInput;
    if !options.is_object() {
        return Err(InvalidInput("options must be a JSON object, e.g. '{\"max_epochs\": 2}'".into()));
    }
    let o: FinetuneOptions =
        serde_json::from_value(options.clone()).map_err(|e| InvalidInput(format!("invalid options: {e}")))?;
    let d = TrainConfig::default();
    let targets = match &o.target_modules {
        None => LoraConfig::default().targets,
        Some(t) if t.is_empty() => return Err(InvalidInput("target_modules must not be empty".into())),
        Some(t) => {
            let mut v = t.iter().map(|s| Target::parse(s)).collect::<distill_engine::Result<Vec<_>>>()?;
            v.sort();
            v.dedup();
            v
        }
    };
    let lora = LoraConfig {
        r: o.lora_r.unwrap_or(d.lora.r),
        alpha: o.lora_alpha.unwrap_or(d.lora.alpha),
        dropout: o.lora_dropout.unwrap_or(d.lora.dropout),
        targets,
    };
    let config = TrainConfig {
        epochs: o.max_epochs.unwrap_or(d.epochs),
        learning_rate: o.learning_rate.unwrap_or(d.learning_rate),
        batch_size: o.batch_size.unwrap_or(d.batch_size),
        max_seq_len: o.max_seq_len.unwrap_or(d.max_seq_len),
        seed: o.seed.unwrap_or(d.seed),
        lora,
        keep_best: o.keep_best_epoch.unwrap_or(d.keep_best),
        early_stopping: o.early_stopping.unwrap_or(d.early_stopping),
        patience: o.patience.unwrap_or(d.patience),
        ..d
    };
    if o.patience.is_some() && !config.early_stopping {
        return Err(InvalidInput("patience needs \"early_stopping\": true".into()));
    }
    config.validate()?;
    let fraction = o.validation_fraction.unwrap_or(DEFAULT_VALIDATION_FRACTION);
    if !(0.0..=0.5).contains(&fraction) {
        return Err(InvalidInput(format!("validation_fraction must be between 0 and 0.5, got {fraction}")));
    }
    Ok((config, fraction))
}

/// Cortex's DESCRIBE fields, then ours (per-epoch losses, ETA, data counts, recent step losses).
pub fn describe(row: &Value) -> Value {
    let f = |k: &str| row.get(k).cloned().unwrap_or(Value::Null);
    let result = if row["training_loss"].is_null() && row["validation_loss"].is_null() {
        Value::Null
    } else {
        json!({"training_loss": f("training_loss"), "validation_loss": f("validation_loss")})
    };
    json!({
        "id": f("id"),
        "status": f("status"),
        "progress": f("progress"),
        "progress_bar": crate::job_display::progress_bar(row["progress"].as_f64().unwrap_or(0.0)),
        "loss_sparkline": crate::job_display::sparkline_json(&row["recent_losses"]),
        "base_model": f("base_model"),
        "model": f("model"),
        "created_on": f("created_on"),
        "started_on": f("started_on"),
        "finished_on": f("finished_on"),
        "training_data": f("training_sql"),
        "validation_data": f("validation_sql"),
        "trained_tokens": f("trained_tokens"),
        "training_result": result,
        "error": f("error"),
        "options": f("options"),
        "owner": f("owner"),
        "step": f("step"),
        "total_steps": f("total_steps"),
        "eta_seconds": f("eta_seconds"),
        "epochs": f("epochs"),
        "recent_losses": f("recent_losses"),
        "data": f("data"),
        "validation_metrics": f("validation_metrics"),
        "attempts": f("attempts"),
        "cancel_requested": f("cancel_requested"),
    })
}

fn summary(row: &Value) -> Value {
    let f = |k: &str| row.get(k).cloned().unwrap_or(Value::Null);
    json!({"id": f("id"), "status": f("status"), "base_model": f("base_model"), "model": f("model"), "created_on": f("created_on")})
}

fn verb_of(verb: Option<&str>) -> String {
    let Some(verb) = verb.map(|v| v.trim().to_uppercase()) else {
        report_sql(
            ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "finetune verb is NULL",
            Some("Use CREATE, DESCRIBE, SHOW or CANCEL."),
        )
    };
    if !matches!(verb.as_str(), "CREATE" | "DESCRIBE" | "SHOW" | "CANCEL") {
        report_sql(
            ERRCODE_INVALID_PARAMETER_VALUE,
            &format!("unknown finetune verb \"{verb}\""),
            Some("Use CREATE, DESCRIBE, SHOW or CANCEL."),
        );
    }
    verb
}

fn wrong_arity(verb: &str) -> ! {
    let usage = match verb {
        "CREATE" => "finetune('CREATE', name, base_model, training_sql [, validation_sql [, options]])",
        "DESCRIBE" => "finetune('DESCRIBE', job_id)",
        "CANCEL" => "finetune('CANCEL', job_id)",
        _ => "finetune('SHOW')",
    };
    report_sql(ERRCODE_INVALID_PARAMETER_VALUE, &format!("wrong arguments for {verb}"), Some(&format!("Call {usage}.")))
}

/// Also what a role is told about another role's job: it cannot tell the two apart.
fn no_such_job() -> ! {
    report_sql(
        ERRCODE_UNDEFINED_OBJECT,
        "finetune job does not exist",
        Some("SELECT distill.finetune('SHOW') lists your jobs."),
    )
}

pub fn taken(name: &str, by: &str) -> ! {
    report_sql(
        ERRCODE_DUPLICATE_OBJECT,
        &format!("model name \"{name}\" is already taken by {by}"),
        Some("Choose another name, or drop the model first with distill.drop_model(name)."),
    )
}

/// Names of tuned models: what SQL users type unquoted, and safe as a file or directory name.
pub fn check_model_name(name: &str) {
    let ok = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        report_sql(
            ERRCODE_INVALID_NAME,
            &format!("invalid model name \"{name}\""),
            Some("Use up to 63 letters, digits, _, - or ., starting with a letter."),
        );
    }
}

/// `distill.wait(job_id [, timeout_seconds])`: blocks until a job finishes and returns its DESCRIBE,
/// with a NOTICE whenever it advances (for psql scripts; cancel it with Ctrl-C). Needs READ COMMITTED,
/// where each look at the job sees the worker's latest commit.
#[pg_extern(volatile, parallel_unsafe)]
fn wait(job_id: &str, timeout_seconds: default!(f64, 3600.0)) -> JsonB {
    if crate::pg::backend::repeatable_read_or_stricter() {
        invalid("distill.wait() needs READ COMMITTED isolation: a REPEATABLE READ snapshot never sees the job advance");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(timeout_seconds.clamp(0.0, 1e7));
    let mut last = (-1i64, Value::Null);
    loop {
        // A new snapshot each time: the registry reads are read-only, which would otherwise see the
        // statement's snapshot, taken before the job advanced.
        let Some(row) = crate::pg::backend::with_fresh_snapshot(|| registry::job_row(job_id)) else { no_such_job() };
        let status = row["status"].as_str().unwrap_or_default().to_string();
        if !matches!(status.as_str(), "PENDING" | "IN_PROGRESS") {
            return JsonB(describe(&row));
        }
        let now = (row["step"].as_i64().unwrap_or(0), row["data"]["validation_rows_answered"].clone());
        if status == "IN_PROGRESS" && now != last && now.0 > 0 {
            notice!("{}", progress_line(&row));
            last = now;
        }
        if std::time::Instant::now() >= deadline {
            report_sql(
                ERRCODE_QUERY_CANCELED,
                &format!("finetune job is still {status} after {timeout_seconds} s"),
                Some("The job keeps running; wait again or DESCRIBE it later."),
            );
        }
        crate::pg::interrupts::wait_latch(std::time::Duration::from_millis(500));
        pgrx::check_for_interrupts!();
    }
}

/// "step 12/36 (33%), loss 0.412, about 3 min left"
fn progress_line(row: &Value) -> String {
    let mut s = format!(
        "{}: step {}/{} ({:.0}%)",
        row["model"].as_str().unwrap_or_default(),
        row["step"],
        row["total_steps"],
        row["progress"].as_f64().unwrap_or(0.0) * 100.0
    );
    if let Some(l) = row["recent_losses"].as_array().and_then(|a| a.last()).and_then(Value::as_f64) {
        s += &format!(", loss {l:.3}");
    }
    if let Some(answered) = row["data"]["validation_rows_answered"].as_str() {
        return s + &format!(", trained; answering validation rows {answered}");
    }
    if let Some(eta) = row["eta_seconds"].as_f64() {
        s += &if eta >= 90.0 {
            format!(", about {:.0} min left", eta / 60.0)
        } else {
            format!(", about {eta:.0} s left")
        };
    }
    s
}
