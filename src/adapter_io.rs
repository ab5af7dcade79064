//! PEFT interop: `distill.export_adapter(model)` gives a fine-tuned model's adapter as a zip of
//! `adapter_config.json` + `adapter_model.safetensors` (what Hugging Face PEFT's `from_pretrained`
//! reads), and `distill.import_adapter(name, base_model, archive)` serves an adapter trained
//! elsewhere (with PEFT, on the Hugging Face checkpoint of the base model) as a model here.
//! The q/k row order differs between GGUF and Hugging Face weights; the engine converts both ways.

use distill_engine::{model_store, LoraAdapter};
use pgrx::prelude::*;
use pgrx::JsonB;
use pgrx::PgSqlErrorCode::*;
use serde_json::json;

use crate::errors::{report_sql, OrReport};
use crate::model_cache::with_model;
use crate::{finetune, guc, registry};

/// Owner (or superuser) only: the weights are the model; a grant lets a role use it, not copy it.
#[pg_extern(volatile, parallel_safe)]
fn export_adapter(model: &str) -> Vec<u8> {
    crate::model_access::check_owner(model, "export it");
    let tuned = registry::find_model(model).expect("exists: checked above");
    let blob = registry::adapter_blob(model, tuned.version).unwrap_or_else(|| {
        report_sql(ERRCODE_OBJECT_IN_USE, &format!("model \"{model}\" was replaced while exporting; retry"), None)
    });
    LoraAdapter::blob_to_archive(&blob).or_report()
}

/// Checks the archive against the base model's shapes (layers, widths, target modules) before storing.
#[pg_extern(volatile, parallel_unsafe)]
fn import_adapter(name: &str, base_model: &str, archive: &[u8]) -> JsonB {
    crate::errors::refuse_on_standby("import_adapter()");
    let limit = guc::max_adapter_bytes();
    if archive.len() as u64 > limit {
        report_sql(
            ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            &format!("the adapter archive is {} bytes, more than distill.max_adapter_bytes ({limit})", archive.len()),
            None,
        );
    }
    finetune::check_new_model(name, base_model);
    let blob = with_model(base_model, |m, _| {
        // The same limit bounds each file once decompressed; shapes are checked from the header first.
        let adapter = LoraAdapter::from_archive(archive, &m.llama.config, limit)?;
        let blob = adapter.to_bytes(model_store::peft_base_name(base_model), &m.llama.config)?;
        Ok((adapter.config, blob))
    });
    let (config, blob) = blob.or_report();
    let targets = config.target_names();
    let summary = json!({
        "model": name,
        "base_model": base_model,
        "lora_r": config.r,
        "lora_alpha": config.alpha,
        "target_modules": targets,
        "imported": true,
        "adapter_bytes": blob.len(),
    });
    if registry::job_holds_name(name) || !registry::insert_model(name, base_model, blob, summary.clone()) {
        finetune::taken(name, "another model or a pending job");
    }
    JsonB(summary)
}
