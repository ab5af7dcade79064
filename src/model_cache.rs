//! Models loaded in this backend, kept for the backend's lifetime so a query over many rows loads
//! each model once.
//!
//! No lock is needed: a backend runs SQL on one thread, and the engine's worker threads only ever see
//! a borrowed `&TextModel` inside `pool.install`, never this cache.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use candle_core::Device;
use distill_engine::{ModelStore, Result, TextModel, WeightFormat};

use crate::guc;

thread_local! {
    static MODELS: RefCell<HashMap<(PathBuf, String, WeightFormat), Rc<TextModel>>> = RefCell::new(HashMap::new());
    static POOL: OnceCell<rayon::ThreadPool> = const { OnceCell::new() };
    static LOADS: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` with the model called `name`, on this backend's signal-safe thread pool.
pub fn with_model<R: Send>(name: &str, f: impl FnOnce(&TextModel) -> Result<R> + Send) -> Result<R> {
    let model = get(name)?;
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
        pool.install(|| f(model))
    })
}

fn get(name: &str) -> Result<Rc<TextModel>> {
    let key = (guc::model_dir(), name.to_string(), guc::weight_format()?);
    if let Some(m) = MODELS.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(m);
    }
    let store = ModelStore::new(key.0.clone(), guc::hub_download());
    let path = store.resolve(name)?;
    let model = Rc::new(TextModel::load(&path, key.2, &Device::Cpu)?);
    LOADS.with(|n| n.set(n.get() + 1));
    MODELS.with(|c| c.borrow_mut().insert(key, model.clone()));
    Ok(model)
}

/// How many times this backend has loaded a model from disk.
#[cfg_attr(not(any(test, feature = "pg_test")), allow(dead_code))]
pub fn loads() -> usize {
    LOADS.with(|n| n.get())
}

#[cfg_attr(not(any(test, feature = "pg_test")), allow(dead_code))]
pub fn clear() {
    MODELS.with(|c| c.borrow_mut().clear());
    LOADS.with(|n| n.set(0));
}
