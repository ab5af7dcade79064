//! Settings (GUCs) under `distill.*`.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting};

use crate::pg::backend;

/// `$sharedir` is expanded at use, like `$libdir` in `dynamic_library_path`, so the default follows the
/// installation and `SHOW distill.model_dir` still says where models are.
static MODEL_DIR: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"$sharedir/pg_distill/models"));
static THREADS: GucSetting<i32> = GucSetting::<i32>::new(0);
static MAX_THREADS: GucSetting<i32> = GucSetting::<i32>::new(0);
static HUB_DOWNLOAD: GucSetting<bool> = GucSetting::<bool>::new(true);
static SHARE_WEIGHTS: GucSetting<bool> = GucSetting::<bool>::new(true);
static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
static WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);
static TRAINING_THREADS: GucSetting<i32> = GucSetting::<i32>::new(0);
static MAX_TRAINING_MEMORY_MB: GucSetting<i32> = GucSetting::<i32>::new(8192);
static INJECT_FAULT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static WEIGHT_FORMAT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"file"));
static DEVICE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"auto"));
static TRAINING_DEVICE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"auto"));
// Limits a superuser sets (a role cannot raise its own); see README "Security and limits".
static MAX_PENDING_JOBS_PER_ROLE: GucSetting<i32> = GucSetting::<i32>::new(3);
static MAX_JOBS_PER_ROLE: GucSetting<i32> = GucSetting::<i32>::new(1000);
static MAX_MODELS_PER_ROLE: GucSetting<i32> = GucSetting::<i32>::new(100);
static MAX_QUERY_BYTES: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024);
static MAX_INPUT_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);
static MAX_ADAPTER_BYTES: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024 * 1024);
static MAX_TRAINING_ROWS: GucSetting<i32> = GucSetting::<i32>::new(1_000_000);

pub fn init() {
    define_limits();
    GucRegistry::define_string_guc(
        c"distill.database",
        c"Database whose fine-tuning jobs the background workers run.",
        c"finetune('CREATE', ...) works in this database only (like pg_cron's cron.database_name).",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"distill.workers",
        c"Background workers that run fine-tuning jobs, each one job at a time.",
        c"Needs pg_distill in shared_preload_libraries.",
        &WORKERS,
        0,
        16,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"distill.training_threads",
        c"Threads one fine-tuning job computes with (0 = one per CPU core).",
        c"Read when a worker starts.",
        &TRAINING_THREADS,
        0,
        256,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"distill.max_training_memory",
        c"A fine-tuning job whose estimated peak memory exceeds this is refused before it starts.",
        c"The estimate covers base weights, activations of the largest batch, attention and logits.",
        &MAX_TRAINING_MEMORY_MB,
        64,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_string_guc(
        c"distill.model_dir",
        c"Directory holding base model files (.gguf).",
        c"$sharedir expands to the installation's share directory (pg_config --sharedir). Hugging Face downloads go to its hub/ subdirectory.",
        &MODEL_DIR,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"distill.threads",
        c"Threads one backend uses for model computation (0 = one per CPU core).",
        c"Read when a session first runs a model.",
        &THREADS,
        0,
        256,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"distill.max_threads",
        c"Threads that models compute with, across all sessions and workers of the server (0 = one per CPU core).",
        c"A call gets distill.threads (a job distill.training_threads) or what is left under this cap while it runs, never fewer than one. Needs pg_distill in shared_preload_libraries.",
        &MAX_THREADS,
        0,
        4096,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"distill.inject_fault",
        c"For tests: makes a failure happen on purpose (training_panic: the training engine panics at step 1).",
        c"Like PostgreSQL's injection points; empty (the default) injects nothing.",
        &INJECT_FAULT,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL | GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"distill.weight_format",
        c"How a session holds model weights: file (as stored, e.g. Q4_1), q8_0 (requantized at load), f32.",
        c"file is the least memory and, on CPUs with AVX-512 VNNI, the fastest (Q4_1 and Q8_0 blocks run on our own kernels); q8_0 suits files in other formats; f32 takes 4x the memory. Outputs can differ slightly between formats.",
        &WEIGHT_FORMAT,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"distill.device",
        c"Where a session runs models: auto, cpu, cuda or cuda:N.",
        c"auto is CUDA device 0 in a CUDA build where it answers, else the CPU; cuda is an error that says why it cannot be had (a build without CUDA, or no usable GPU). On a GPU weights are held in bf16.",
        &DEVICE,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"distill.training_device",
        c"Where fine-tuning jobs train: auto, cpu, cuda or cuda:N.",
        c"As distill.device, for the background workers; DESCRIBE's data.device says where a job trained.",
        &TRAINING_DEVICE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"distill.share_weights",
        c"Whether sessions and workers share one copy of a model's weights through a prepared file beside the model.",
        c"The file (<model>.<format>.prepared) is written by the first session that loads the model and memory-mapped by every later one; a session that cannot write it keeps its own copy and says so in a WARNING. Off: every session loads its own copy. Read when a session first loads a model.",
        &SHARE_WEIGHTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"distill.hub_download",
        c"Whether model names of the form org/repo[/file.gguf] may be downloaded from the Hugging Face Hub.",
        c"Needs internet access from the database server; files are cached in distill.model_dir/hub.",
        &HUB_DOWNLOAD,
        GucContext::Suset,
        GucFlags::default(),
    );
}

fn define_limits() {
    fn limit(
        name: &'static CStr,
        short: &'static CStr,
        long: &'static CStr,
        setting: &'static GucSetting<i32>,
        min: i32,
        max: i32,
        context: GucContext,
    ) {
        GucRegistry::define_int_guc(name, short, long, setting, min, max, context, GucFlags::default())
    }
    limit(
        c"distill.max_pending_jobs_per_role",
        c"Unfinished (PENDING or IN_PROGRESS) fine-tuning jobs one role may have; CREATE past it is refused.",
        c"Keeps one role from filling the queue ahead of everyone else.",
        &MAX_PENDING_JOBS_PER_ROLE,
        1,
        100_000,
        GucContext::Suset,
    );
    limit(
        c"distill.max_jobs_per_role",
        c"Fine-tuning job rows (finished ones included) kept for one role; CREATE past it is refused.",
        c"Job rows hold the queries' text and results; a superuser deletes old ones from distill.job_registry.",
        &MAX_JOBS_PER_ROLE,
        1,
        i32::MAX,
        GucContext::Suset,
    );
    limit(
        c"distill.max_models_per_role",
        c"Fine-tuned or imported models (and unfinished jobs) one role may own; CREATE and import_adapter past it are refused.",
        c"Each model stores an adapter of up to distill.max_adapter_bytes.",
        &MAX_MODELS_PER_ROLE,
        1,
        i32::MAX,
        GucContext::Suset,
    );
    limit(
        c"distill.max_query_bytes",
        c"Longest training, validation or evaluation query text accepted, in bytes.",
        c"Checked before the query is parsed.",
        &MAX_QUERY_BYTES,
        1024,
        i32::MAX,
        GucContext::Suset,
    );
    limit(
        c"distill.max_input_bytes",
        c"Longest prompt, chat, classify text or count_tokens text accepted, in bytes.",
        c"Checked before tokenizing; every choice list counts too.",
        &MAX_INPUT_BYTES,
        1024,
        i32::MAX,
        GucContext::Suset,
    );
    limit(
        c"distill.max_adapter_bytes",
        c"Largest adapter archive import_adapter accepts, and the largest file inside it once decompressed, in bytes.",
        c"Checked before anything is decompressed; tensor shapes are checked from the safetensors header before any data is read.",
        &MAX_ADAPTER_BYTES,
        1024,
        i32::MAX,
        GucContext::Suset,
    );
    limit(
        c"distill.max_training_rows",
        c"Most rows a fine-tuning job's training and validation queries may return together; the job ends in ERROR past it.",
        c"Counted as the worker reads them, before the rows are all in memory.",
        &MAX_TRAINING_ROWS,
        1,
        i32::MAX,
        GucContext::Sighup,
    );
}

pub fn max_pending_jobs_per_role() -> i64 {
    MAX_PENDING_JOBS_PER_ROLE.get() as i64
}

pub fn max_jobs_per_role() -> i64 {
    MAX_JOBS_PER_ROLE.get() as i64
}

pub fn max_models_per_role() -> i64 {
    MAX_MODELS_PER_ROLE.get() as i64
}

pub fn max_query_bytes() -> usize {
    MAX_QUERY_BYTES.get().max(0) as usize
}

pub fn max_input_bytes() -> usize {
    MAX_INPUT_BYTES.get().max(0) as usize
}

pub fn max_adapter_bytes() -> u64 {
    MAX_ADAPTER_BYTES.get().max(0) as u64
}

pub fn max_training_rows() -> usize {
    MAX_TRAINING_ROWS.get().max(0) as usize
}

pub fn model_dir() -> PathBuf {
    let raw = MODEL_DIR.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
    PathBuf::from(raw.replace("$sharedir", &backend::share_dir()))
}

pub fn threads() -> usize {
    thread_count(THREADS.get())
}

pub fn max_threads() -> usize {
    thread_count(MAX_THREADS.get())
}

/// A thread-count setting: 0 means one per CPU core.
fn thread_count(setting: i32) -> usize {
    match setting {
        n if n > 0 => n as usize,
        _ => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    }
}

pub fn weight_format() -> distill_engine::Result<distill_engine::WeightFormat> {
    use distill_engine::WeightFormat;
    let raw = WEIGHT_FORMAT.get().map(|c| c.to_string_lossy().to_lowercase()).unwrap_or_default();
    match raw.as_str() {
        "file" | "" => Ok(WeightFormat::Quantized),
        "q8_0" => Ok(WeightFormat::Q8_0),
        "f32" => Ok(WeightFormat::F32),
        other => Err(distill_engine::Error::InvalidInput(format!(
            "distill.weight_format must be file, q8_0 or f32, not \"{other}\""
        ))),
    }
}

/// The weight format of a model on `device`: `distill.weight_format` on the CPU; on a GPU bf16 (its
/// quantized formats have CPU kernels only), or f32 when that is the setting.
pub fn weight_format_on(device: &candle_core::Device) -> distill_engine::Result<distill_engine::WeightFormat> {
    use distill_engine::WeightFormat;
    Ok(match weight_format()? {
        f if device.is_cpu() => f,
        WeightFormat::F32 => WeightFormat::F32,
        _ => WeightFormat::Bf16,
    })
}

/// The device `distill.device` names, or why it cannot be used.
pub fn device() -> distill_engine::Result<candle_core::Device> {
    device_setting(&DEVICE, "distill.device")
}

/// The device `distill.training_device` names, or why it cannot be used.
pub fn training_device() -> distill_engine::Result<candle_core::Device> {
    device_setting(&TRAINING_DEVICE, "distill.training_device")
}

fn device_setting(setting: &GucSetting<Option<CString>>, name: &str) -> distill_engine::Result<candle_core::Device> {
    use distill_engine::device::{select, DeviceChoice};
    let raw = setting.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
    select(DeviceChoice::parse(&raw, name)?, name)
}

pub fn share_weights() -> bool {
    SHARE_WEIGHTS.get()
}

pub fn inject_fault() -> String {
    INJECT_FAULT.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
}

pub fn database() -> String {
    DATABASE.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
}

pub fn workers() -> usize {
    WORKERS.get().max(0) as usize
}

pub fn training_threads() -> usize {
    thread_count(TRAINING_THREADS.get())
}

pub fn max_training_memory_bytes() -> u64 {
    MAX_TRAINING_MEMORY_MB.get().max(0) as u64 * 1024 * 1024
}

/// Where a session finds base models. Downloading from the Hub writes files on the server, so it is
/// for roles that may do that: superusers and members of pg_write_server_files.
pub fn model_store() -> distill_engine::ModelStore {
    let dir = model_dir();
    if !hub_download() {
        return distill_engine::ModelStore::new(dir, false);
    }
    let may_write = backend::is_superuser()
        || backend::has_privs_of_role(backend::current_user(), pg_sys::Oid::from(pg_sys::ROLE_PG_WRITE_SERVER_FILES));
    if may_write {
        distill_engine::ModelStore::new(dir, true)
    } else {
        distill_engine::ModelStore::refusing_downloads(
            dir,
            "downloading writes files on the database server, which needs superuser or membership in pg_write_server_files",
        )
    }
}

pub fn hub_download() -> bool {
    HUB_DOWNLOAD.get()
}
