//! Models loaded in this backend, kept for the backend's lifetime so a query over many rows loads
//! each model once. A fine-tuned model is its base model (loaded once, shared by every tuned model of
//! that base) plus its LoRA adapter (small, cached by registry version: a dropped or replaced model is
//! noticed on the next call, because every call looks the name up in the registry).
//!
//! No lock is needed: a backend runs SQL on one thread, and the engine's worker threads only ever see
//! borrowed `&TextModel`/`&LoraAdapter` inside `pool.install`, never this cache.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use candle_core::Device;
use distill_engine::{LoraAdapter, Result, TextModel, WeightFormat};

use crate::{guc, registry};

thread_local! {
    static MODELS: RefCell<HashMap<(PathBuf, String, WeightFormat), Rc<TextModel>>> = RefCell::new(HashMap::new());
    static ADAPTERS: RefCell<HashMap<String, (i64, Rc<LoraAdapter>)>> = RefCell::new(HashMap::new());
    static POOL: OnceCell<rayon::ThreadPool> = const { OnceCell::new() };
    static LOADS: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` with the model called `name` (a base model, or a fine-tuned one as base + adapter), on
/// this backend's signal-safe thread pool.
pub fn with_model<R: Send>(
    name: &str,
    f: impl FnOnce(&TextModel, Option<&LoraAdapter>) -> Result<R> + Send,
) -> Result<R> {
    let (model, adapter) = match registry::find_model(name) {
        Some(tuned) if !tuned.usable => {
            return Err(distill_engine::Error::PermissionDenied(format!(
                "permission denied for model \"{name}\": it belongs to {}",
                tuned.owner
            )))
        }
        Some(tuned) => {
            let base = get(&tuned.base_model)?;
            let adapter = adapter(name, &tuned, &base)?;
            (base, Some(adapter))
        }
        None => {
            forget_adapter(name);
            (get(name)?, None)
        }
    };
    POOL.with(|cell| {
        let pool = match cell.get() {
            Some(p) => p,
            None => {
                // Anything that reaches rayon outside our pool must not spawn signal-receiving threads either.
                distill_engine::threads::init_global_pool(1);
                let _ = cell.set(distill_engine::threads::pool(guc::threads())?);
                cell.get().expect("just set")
            }
        };
        let model: &TextModel = &model;
        let adapter: Option<&LoraAdapter> = adapter.as_deref();
        pool.install(|| f(model, adapter))
    })
}

fn get(name: &str) -> Result<Rc<TextModel>> {
    let key = (guc::model_dir(), name.to_string(), guc::weight_format()?);
    if let Some(m) = MODELS.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(m);
    }
    let path = guc::model_store().resolve(name)?;
    let model = Rc::new(TextModel::load(&path, key.2, &Device::Cpu)?);
    LOADS.with(|n| n.set(n.get() + 1));
    MODELS.with(|c| c.borrow_mut().insert(key, model.clone()));
    Ok(model)
}

fn adapter(name: &str, tuned: &registry::TunedModel, base: &TextModel) -> Result<Rc<LoraAdapter>> {
    if let Some((v, a)) = ADAPTERS.with(|c| c.borrow().get(name).cloned()) {
        if v == tuned.version {
            return Ok(a);
        }
    }
    let blob = registry::adapter_blob(name, tuned.version).ok_or_else(|| {
        distill_engine::Error::InvalidInput(format!("model \"{name}\" was dropped or replaced while loading; retry"))
    })?;
    let adapter = Rc::new(LoraAdapter::from_bytes(&blob, &base.llama.config).map_err(|e| {
        distill_engine::Error::InvalidInput(format!("the stored adapter of model \"{name}\" is unusable: {e}"))
    })?);
    ADAPTERS.with(|c| c.borrow_mut().insert(name.to_string(), (tuned.version, adapter.clone())));
    Ok(adapter)
}

/// Drops this backend's cached adapter of `name` (after drop_model, or when the name is no longer a tuned model).
pub fn forget_adapter(name: &str) {
    ADAPTERS.with(|c| c.borrow_mut().remove(name));
}

/// How many times this backend has loaded a model from disk.
#[cfg_attr(not(any(test, feature = "pg_test")), allow(dead_code))]
pub fn loads() -> usize {
    LOADS.with(|n| n.get())
}

#[cfg_attr(not(any(test, feature = "pg_test")), allow(dead_code))]
pub fn clear() {
    MODELS.with(|c| c.borrow_mut().clear());
    ADAPTERS.with(|c| c.borrow_mut().clear());
    LOADS.with(|n| n.set(0));
}
