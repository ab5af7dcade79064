//! Models loaded in this backend, kept for the backend's lifetime so a query over many rows loads
//! each model once. A fine-tuned model is its base model (loaded once, shared by every tuned model of
//! that base) plus its LoRA adapter (small, cached by registry version: a dropped or replaced model is
//! noticed on the next call, because every call looks the name up in the registry).
//! A base model's linear weights are mapped from its prepared file (`distill.share_weights`), so
//! every backend on the machine reads the same pages.
//!
//! No lock is needed: a backend runs SQL on one thread, and the engine's threads only ever see
//! borrowed `&TextModel`/`&LoraAdapter` for the length of one call (a scoped thread), never this cache.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use distill_engine::{LoraAdapter, Result, TextModel, WeightFormat, WeightSharing};

use crate::pg::interrupts;
use crate::{guc, registry};

/// A loaded base model's identity: model directory, name, weight format, device (`cpu`, `cuda:0`).
type ModelKey = (PathBuf, String, WeightFormat, String);

thread_local! {
    static MODELS: RefCell<HashMap<ModelKey, Rc<TextModel>>> = RefCell::new(HashMap::new());
    static ADAPTERS: RefCell<HashMap<String, (i64, Rc<LoraAdapter>)>> = RefCell::new(HashMap::new());
    static POOL: RefCell<distill_engine::threads::SizedPool> = RefCell::new(Default::default());
    static LOADS: Cell<usize> = const { Cell::new(0) };
    static WARNED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the model called `name` (a base model, or a fine-tuned one as base + adapter) on
/// this backend's signal-safe thread pool, driven from an engine thread while this (the backend's
/// main) thread watches for query cancel and `statement_timeout`: the engine stops within one
/// token and the cancel is raised here, as Postgres raises it.
///
/// A base model file wins over a fine-tuned model of the same name: a model installed by the
/// administrator must not be answered by someone's adapter that took its name first.
pub fn with_model<R: Send>(
    name: &str,
    f: impl FnOnce(&TextModel, Option<&LoraAdapter>) -> Result<R> + Send,
) -> Result<R> {
    with_resolved(name, resolve(name)?, f)
}

/// [`with_model`] for a name already looked up with [`resolve`].
pub fn with_resolved<R: Send>(
    name: &str,
    resolution: Resolution,
    f: impl FnOnce(&TextModel, Option<&LoraAdapter>) -> Result<R> + Send,
) -> Result<R> {
    let (model, adapter) = match resolution.0 {
        Resolved::Base(path) => {
            forget_adapter(name);
            (get(name, Some(path))?, None)
        }
        Resolved::Tuned(tuned) if !tuned.usable => {
            return Err(distill_engine::Error::PermissionDenied(format!("permission denied for model \"{name}\"")))
        }
        Resolved::Endpoint(_) => {
            return Err(distill_engine::Error::InvalidInput(format!(
                "\"{name}\" is an endpoint; this function needs a local model (a base or fine-tuned model)"
            )))
        }
        Resolved::Tuned(tuned) => {
            let base = get(&tuned.base_model, None)?;
            let adapter = adapter(name, &tuned, &base)?;
            (base, Some(adapter))
        }
    };
    // Threads for this call under distill.max_threads, held until it returns.
    let budget = crate::thread_budget::reserve(guc::threads());
    let pool = POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.current().is_none() {
            // Anything that reaches rayon outside our pool must not spawn signal-receiving threads either.
            distill_engine::threads::init_global_pool(1);
        }
        p.of_size(budget.threads())
    })?;
    let pool: &rayon::ThreadPool = &pool;
    let model: &TextModel = &model;
    let adapter: Option<&LoraAdapter> = adapter.as_deref();
    let r = distill_engine::threads::run_watched(|| pool.install(|| f(model, adapter)), interrupts::cancel_pending);
    drop(budget);
    distill_engine::threads::release_free_memory();
    raise_if_interrupted(r)
}

/// An engine call stopped by a pending cancel (or timeout, or termination) raises it here, with
/// Postgres's own message; anything else is returned as it is.
fn raise_if_interrupted<T>(r: Result<T>) -> Result<T> {
    if let Err(distill_engine::Error::Interrupted) = r {
        pgrx::check_for_interrupts!();
    }
    r
}

/// The label set stored with tuned model `name` (a classifier's, see
/// `distill_engine::train::label_set`); None for a base model, a model without one, or one the caller
/// may not use (its call then fails as [`with_model`] says, telling it nothing more).
pub fn stored_labels(name: &str) -> Result<Option<Vec<String>>> {
    Ok(resolve(name)?.labels())
}

/// A model name looked up once (model directory, registry, endpoints): a call that needs several
/// answers about one model (is it an endpoint, its label set, the model itself) asks them of this
/// rather than looking the name up for each (a registry query apiece for a tuned model).
pub struct Resolution(Resolved);

pub fn resolve(name: &str) -> Result<Resolution> {
    Ok(Resolution(base_or_tuned(name)?))
}

impl Resolution {
    /// See [`stored_labels`].
    pub fn labels(&self) -> Option<Vec<String>> {
        match &self.0 {
            Resolved::Tuned(tuned) if tuned.usable => tuned.labels.clone(),
            _ => None,
        }
    }

    /// See [`endpoint`].
    pub fn endpoint(&self, name: &str) -> Result<Option<distill_engine::endpoint::Endpoint>> {
        match &self.0 {
            Resolved::Endpoint(row) => Ok(Some(crate::endpoints::resolve(name, row)?)),
            _ => Ok(None),
        }
    }
}

/// A tuned model (in the registry) rather than a base model file.
pub fn is_tuned(name: &str) -> Result<bool> {
    Ok(matches!(base_or_tuned(name)?, Resolved::Tuned(_)))
}

enum Resolved {
    Base(PathBuf),
    Tuned(registry::TunedModel),
    Endpoint(Box<crate::endpoint_registry::EndpointRow>),
}

/// The endpoint `name` names (after base model files and tuned models, which win), key read; None
/// for a local model. A caller that may not use it gets the error a tuned model gives.
pub fn endpoint(name: &str) -> Result<Option<distill_engine::endpoint::Endpoint>> {
    resolve(name)?.endpoint(name)
}

/// A base model file, a tuned model or an unfinished job's model has this name.
pub fn is_model(name: &str) -> bool {
    guc::model_store().resolve(name).is_ok() || registry::model_taken(name) || registry::job_holds_name(name)
}

/// A file in the model directory first, then the registry, then the endpoints; a tuned model's or
/// endpoint's name never has a '/',
/// so Hub ids (org/repo) go to the store, which may download them.
fn base_or_tuned(name: &str) -> Result<Resolved> {
    let store = guc::model_store();
    if name.contains('/') {
        return Ok(Resolved::Base(store.resolve(name)?));
    }
    match store.resolve(name) {
        Ok(path) => Ok(Resolved::Base(path)),
        Err(not_found @ distill_engine::Error::ModelNotFound { .. }) => match registry::find_model(name) {
            Some(tuned) => Ok(Resolved::Tuned(tuned)),
            None => match crate::endpoint_registry::find(name) {
                Some(row) => Ok(Resolved::Endpoint(Box::new(row))),
                None => Err(not_found),
            },
        },
        Err(e) => Err(e),
    }
}

/// The base model `name`, loaded once per backend; `path` when the caller already resolved it.
fn get(name: &str, path: Option<PathBuf>) -> Result<Rc<TextModel>> {
    // Checked before the cache: a device that cannot be had is an error even for a model in memory.
    let device = guc::device()?;
    let format = guc::weight_format_on(&device)?;
    let key = (guc::model_dir(), name.to_string(), format, distill_engine::device::device_name(&device));
    if let Some(m) = MODELS.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(m);
    }
    let path = match path {
        Some(p) => p,
        None => guc::model_store().resolve(name)?,
    };
    let model = if guc::share_weights() {
        // Cancelled while another session writes the prepared file: raised as any cancel is.
        raise_if_interrupted(TextModel::load_shared(&path, key.2, &device, &interrupts::cancel_pending))?
    } else {
        TextModel::load(&path, key.2, &device)?
    };
    report_sharing(name, &model.sharing);
    distill_engine::threads::release_free_memory();
    let model = Rc::new(model);
    LOADS.with(|n| n.set(n.get() + 1));
    MODELS.with(|c| c.borrow_mut().insert(key, model.clone()));
    Ok(model)
}

/// Says, once per backend, that a model could not be shared (its weights then cost this backend
/// their full size), and logs each (re)written prepared file.
fn report_sharing(name: &str, sharing: &WeightSharing) {
    match sharing {
        WeightSharing::Private { reason } => {
            // The reason names the model directory, which only superusers may see: the server log gets it.
            pgrx::log!("pg_distill: model \"{name}\" is not shared: {reason}");
            if !WARNED.with(|w| w.replace(true)) {
                pgrx::warning!(
                    "model \"{name}\" is loaded as this session's own copy, not shared with other sessions: its prepared weights could not be written beside the model (the server log says why)"
                )
            }
        }
        WeightSharing::Shared { path, built: Some(why) } => {
            pgrx::log!("pg_distill: wrote the prepared weights {} (the file was {why})", path.display())
        }
        _ => {}
    }
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
    let adapter = LoraAdapter::from_bytes(&blob, &base.llama.config).map_err(|e| {
        distill_engine::Error::InvalidInput(format!("the stored adapter of model \"{name}\" is unusable: {e}"))
    })?;
    // Beside a model on a GPU, the adapter's tensors live there too.
    let adapter = Rc::new(adapter.to_device(base.llama.device())?);
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
