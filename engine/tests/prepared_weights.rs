//! Shared weights (formats/prepared.rs): a model loaded through its prepared file computes exactly
//! what a private load computes, reads only mapped weights, and a missing, damaged or stale file is
//! rebuilt rather than trusted.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use distill_engine::models::llama::KvCache;
use distill_engine::{Message, TextModel, WeightFormat, WeightSharing};

fn model_file() -> PathBuf {
    distill_engine::ModelStore::new(common::model_dir(), false).resolve("smollm2-135m").unwrap()
}

fn logits(m: &TextModel) -> Vec<f32> {
    let prompt = m.chat_prompt(&[Message::user("Classify: my data is slow since Monday.")]).unwrap();
    let mut cache = KvCache::new(&m.llama.config);
    m.llama.forward_with(&prompt, &mut cache, None).unwrap().to_vec1::<f32>().unwrap()
}

fn all_mapped(m: &TextModel) -> bool {
    let ws = m.llama.quant_weights();
    !ws.is_empty() && ws.iter().all(|(_, w)| w.is_mapped())
}

fn built(m: &TextModel) -> Option<String> {
    match &m.sharing {
        WeightSharing::Shared { built, .. } => built.clone(),
        other => panic!("not shared: {other:?}"),
    }
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("distill-prepared-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn load(path: &Path) -> TextModel {
    TextModel::load_shared(path, WeightFormat::Quantized, &Device::Cpu, &|| false).unwrap()
}

#[test]
fn shared_weights_compute_what_private_ones_do_and_bad_files_are_rebuilt() {
    if !distill_engine::kernels::available() {
        eprintln!("skipped: no int8 kernels on this CPU, so nothing is prepared");
        return;
    }
    let private = TextModel::load_gguf(&model_file(), WeightFormat::Quantized, &Device::Cpu).unwrap();
    assert_eq!(private.sharing, WeightSharing::Unshared);
    assert!(!all_mapped(&private));
    let want = logits(&private);

    let dir = scratch("main");
    let model = dir.join("model.gguf");
    std::os::unix::fs::symlink(model_file(), &model).unwrap();
    let prepared = dir.join("model.gguf.quantized.prepared");

    // First load writes the file, then serves from it.
    let first = load(&model);
    assert_eq!(built(&first).as_deref(), Some("missing"));
    assert!(prepared.is_file() && all_mapped(&first));
    assert_eq!(logits(&first), want, "bit-identical to the private copy");
    assert_eq!(first.llama.quant_weights().len(), private.llama.quant_weights().len());

    // Later loads map it as it is.
    let second = load(&model);
    assert_eq!(built(&second), None);
    assert!(all_mapped(&second));
    assert_eq!(logits(&second), want);

    // A damaged file is rebuilt; the first models keep their (unchanged) old mapping.
    let mut bytes = std::fs::read(&prepared).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(dir.join("damaged"), &bytes).unwrap();
    std::fs::rename(dir.join("damaged"), &prepared).unwrap();
    let third = load(&model);
    assert!(built(&third).unwrap().starts_with("corrupt"), "{:?}", third.sharing);
    assert_eq!(logits(&third), want);
    assert_eq!(logits(&first), want);

    // Another model file at the same path (here: one more byte at its end) makes the file stale.
    std::fs::remove_file(&model).unwrap();
    let mut copy = std::fs::read(model_file()).unwrap();
    copy.push(0);
    std::fs::write(&model, &copy).unwrap();
    let fourth = load(&model);
    assert!(built(&fourth).unwrap().starts_with("stale"), "{:?}", fourth.sharing);
    assert_eq!(logits(&fourth), want);

    // Another weight format has its own file.
    let q8 = TextModel::load_shared(&model, WeightFormat::Q8_0, &Device::Cpu, &|| false).unwrap();
    assert_eq!(built(&q8).as_deref(), Some("missing"));
    assert!(dir.join("model.gguf.q8_0.prepared").is_file());
    let q8_private = TextModel::load_gguf(&model, WeightFormat::Q8_0, &Device::Cpu).unwrap();
    assert_eq!(logits(&q8), logits(&q8_private));

    // Training's f32 weights are not shared.
    let f32 = TextModel::load_shared(&model, WeightFormat::F32, &Device::Cpu, &|| false).unwrap();
    assert_eq!(f32.sharing, WeightSharing::Unshared);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unwritable_prepared_file_falls_back_to_a_private_copy() {
    if !distill_engine::kernels::available() {
        return;
    }
    let dir = scratch("readonly");
    let model = dir.join("model.gguf");
    std::os::unix::fs::symlink(model_file(), &model).unwrap();
    // A directory where the file should go: the rename fails even for root (tests run as root in CI,
    // where a read-only directory would not stop the write; tests/replica.sh covers that case).
    std::fs::create_dir(dir.join("model.gguf.quantized.prepared")).unwrap();
    let m = load(&model);
    match &m.sharing {
        WeightSharing::Private { reason } => assert!(reason.contains("cannot write"), "{reason}"),
        other => panic!("expected a private copy, got {other:?}"),
    }
    assert!(!all_mapped(&m));
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 3, "no temporary file left behind (the model, the directory, the lock): {left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn processes_loading_at_once_build_the_file_once_and_a_waiter_can_be_cancelled() {
    if !distill_engine::kernels::available() {
        return;
    }
    let dir = scratch("race");
    let model = dir.join("model.gguf");
    std::os::unix::fs::symlink(model_file(), &model).unwrap();
    // Four loads at once: one writes the file, the others wait for it and map it.
    let loads: Vec<TextModel> = std::thread::scope(|s| {
        (0..4).map(|_| s.spawn(|| load(&model))).collect::<Vec<_>>().into_iter().map(|h| h.join().unwrap()).collect()
    });
    let builders = loads.iter().filter(|m| built(m).is_some()).count();
    assert_eq!(builders, 1, "{:?}", loads.iter().map(|m| &m.sharing).collect::<Vec<_>>());
    assert!(loads.iter().all(all_mapped));
    let want = logits(&loads[0]);
    assert!(loads.iter().all(|m| logits(m) == want));

    // A load waiting on a writer (here: this test holding the lock) stops when cancelled.
    std::fs::remove_file(dir.join("model.gguf.quantized.prepared")).unwrap();
    let prepared = dir.join("model.gguf.quantized.prepared");
    let lock = distill_engine::formats::prepared::BuildLock::acquire(&prepared, &|| false).unwrap();
    let asked = std::sync::atomic::AtomicUsize::new(0);
    let cancelled = || asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= 3;
    let r = TextModel::load_shared(&model, WeightFormat::Quantized, &Device::Cpu, &cancelled);
    assert!(matches!(r, Err(distill_engine::Error::Interrupted)), "{:?}", r.err());
    drop(lock);
    assert_eq!(built(&load(&model)).as_deref(), Some("missing"));
    std::fs::remove_dir_all(&dir).unwrap();
}
