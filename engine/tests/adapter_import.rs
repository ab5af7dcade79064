//! Importing adapters is safe against hostile files: archives are read within a byte limit, their
//! tensors are checked against the base model from the safetensors header before any tensor data is
//! inflated, and adapters holding NaN or infinity are refused, on import, from the registry and
//! when a trained adapter is stored.
mod common;

use std::collections::HashMap;
use std::io::Write;

use candle_core::{Device, Tensor};
use distill_engine::formats::peft_zip::{self, DEFAULT_MAX_BYTES};
use distill_engine::models::llama::Config;
use distill_engine::{LoraAdapter, LoraConfig};

/// A two-layer model's shapes: no weights are needed to check an adapter against them.
fn tiny() -> Config {
    let mut c = Config::from_hf_json(
        &serde_json::json!({
            "model_type": "llama", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128, "tie_word_embeddings": true
        })
        .to_string(),
    )
    .unwrap();
    // As a GGUF model: export and import then permute q/k rows.
    c.rope_interleaved = true;
    c
}

/// An adapter of all seven targets with non-zero values everywhere.
fn adapter(model: &Config) -> LoraAdapter {
    let (adapter, vars) = LoraAdapter::init(&LoraConfig::default(), model, 3, &Device::Cpu).unwrap();
    for (i, v) in vars.iter().enumerate() {
        v.set(&Tensor::from_vec(common::values(v.elem_count(), i as u64), v.shape(), &Device::Cpu).unwrap()).unwrap();
    }
    adapter.detached()
}

fn tensors_of(blob: &[u8]) -> HashMap<String, Tensor> {
    candle_core::safetensors::load_buffer(blob, &Device::Cpu).unwrap()
}

/// A registry blob (PEFT safetensors with the config in its metadata) of these tensors.
fn blob_of(tensors: &HashMap<String, Tensor>, config: &serde_json::Value) -> Vec<u8> {
    let mut sorted: Vec<_> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let meta = HashMap::from([("adapter_config".to_string(), config.to_string())]);
    safetensors::serialize(sorted, Some(meta)).unwrap()
}

fn zip_of(config: &serde_json::Value, weights: &[u8]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file(peft_zip::CONFIG_FILE, o).unwrap();
    zip.write_all(config.to_string().as_bytes()).unwrap();
    zip.start_file(peft_zip::WEIGHTS_FILE, o).unwrap();
    zip.write_all(weights).unwrap();
    zip.finish().unwrap().into_inner()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn export_and_import_round_trip() {
    let model = tiny();
    let a = adapter(&model);
    let blob = a.to_bytes("base", &model).unwrap();
    let archive = LoraAdapter::blob_to_archive(&blob).unwrap();
    for b in [
        LoraAdapter::from_bytes(&blob, &model).unwrap(),
        LoraAdapter::from_archive(&archive, &model, DEFAULT_MAX_BYTES).unwrap(),
    ] {
        // PEFT lists target modules by name: the same set, in another order.
        let sorted = |c: &LoraConfig| LoraConfig {
            targets: {
                let mut t = c.targets.clone();
                t.sort();
                t
            },
            ..c.clone()
        };
        assert_eq!(sorted(&b.config), sorted(&a.config));
        for (la, lb) in a.layers.iter().zip(&b.layers) {
            assert_eq!(la.keys().collect::<Vec<_>>(), lb.keys().collect::<Vec<_>>());
            for (pa, pb) in la.values().zip(lb.values()) {
                assert_eq!((max_diff(&pa.a, &pb.a), max_diff(&pa.b, &pb.b)), (0.0, 0.0));
            }
        }
    }
    // The limit applies to the archive as a whole.
    let err = LoraAdapter::from_archive(&archive, &model, archive.len() as u64 - 1).unwrap_err().to_string();
    assert!(err.contains("above the limit of"), "{err}");
}

/// A header naming a wrong shape is refused by the header alone: the archive holds no tensor data
/// at all, so an importer that read the data first would fail on its length instead.
#[test]
fn the_same_adapter_is_the_same_bytes() {
    // safetensors writes its metadata in a HashMap's order, which each new map draws afresh: without
    // sorting it, the same adapter came out as different bytes (two workers, two digests).
    let model = tiny();
    let a = adapter(&model);
    let first = a.to_bytes("base", &model).unwrap();
    for _ in 0..32 {
        assert_eq!(a.to_bytes("base", &model).unwrap(), first);
    }
    let b = LoraAdapter::from_bytes(&first, &model).unwrap();
    assert_eq!(b.to_bytes("base", &model).unwrap(), first, "and it reads back as itself");
}

#[test]
fn shapes_are_checked_from_the_header_before_the_data() {
    let model = tiny();
    let a = adapter(&model);
    let config = a.peft_config_json("base");
    let key = "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight";
    let mut tensors = tensors_of(&a.to_bytes("base", &model).unwrap());
    tensors.insert(key.into(), Tensor::zeros((8, 100), candle_core::DType::F32, &Device::Cpu).unwrap());
    let blob = blob_of(&tensors, &config);
    let header_len = u64::from_le_bytes(blob[..8].try_into().unwrap()) as usize;
    let header_only = &blob[..8 + header_len];
    let want =
        format!("adapter does not fit the base model: tensor {key} has shape [8, 100], the base model needs [8, 128]");
    let err = LoraAdapter::from_archive(&zip_of(&config, header_only), &model, DEFAULT_MAX_BYTES).unwrap_err();
    assert_eq!(err.to_string(), want);
    // The registry path checks the same way.
    assert_eq!(LoraAdapter::from_bytes(&blob, &model).unwrap_err().to_string(), want);

    // Missing and extra tensors, and a rank that differs from the config's.
    let mut fewer = tensors_of(&a.to_bytes("base", &model).unwrap());
    fewer.remove("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight");
    let err =
        LoraAdapter::from_archive(&zip_of(&config, &blob_of(&fewer, &config)), &model, DEFAULT_MAX_BYTES).unwrap_err();
    assert!(
        err.to_string().ends_with("missing tensor base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"),
        "{err}"
    );
    let mut more = tensors_of(&a.to_bytes("base", &model).unwrap());
    more.insert(
        "base_model.model.model.layers.2.mlp.up_proj.lora_A.weight".into(),
        Tensor::zeros((8, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let err =
        LoraAdapter::from_archive(&zip_of(&config, &blob_of(&more, &config)), &model, DEFAULT_MAX_BYTES).unwrap_err();
    assert!(
        err.to_string().contains("unexpected tensor base_model.model.model.layers.2.mlp.up_proj.lora_A.weight"),
        "{err}"
    );
    let mut r4 = config.clone();
    r4["r"] = 4.into();
    let err = LoraAdapter::from_archive(&zip_of(&r4, &a.to_bytes("base", &model).unwrap()), &model, DEFAULT_MAX_BYTES)
        .unwrap_err();
    assert!(err.to_string().contains(", the base model needs [4, "), "{err}");
}

/// A well-formed header followed by far more data than it describes (zeros deflate ~1000:1): refused
/// within the limit, whatever the entry declares.
#[test]
fn an_inflating_archive_is_refused_within_the_limit() {
    let model = tiny();
    let a = adapter(&model);
    let blob = a.to_bytes("base", &model).unwrap();
    let bomb = [&blob[..], &vec![0u8; 64 << 20]].concat();
    let archive = zip_of(&a.peft_config_json("base"), &bomb);
    assert!(archive.len() < 1 << 20, "{} bytes", archive.len());
    let limit = 4 << 20;
    let err = LoraAdapter::from_archive(&archive, &model, limit).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "adapter_model.safetensors in the adapter archive is {} bytes, above the limit of {limit} bytes",
            bomb.len()
        )
    );
    // Under a limit that allows the entry, the extra data is found after reading one byte past the tensors.
    let err = LoraAdapter::from_archive(&archive, &model, 128 << 20).unwrap_err().to_string();
    assert!(
        err.ends_with(&format!(
            "holds more bytes of tensor data, its header describes {}",
            blob.len() - 8 - u64::from_le_bytes(blob[..8].try_into().unwrap()) as usize
        )),
        "{err}"
    );
}

#[test]
fn non_finite_adapters_are_refused() {
    let model = tiny();
    let a = adapter(&model);
    let config = a.peft_config_json("base");
    let key = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight";
    let want = format!("adapter tensor {key} holds non-finite values (NaN or infinity)");
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut tensors = tensors_of(&a.to_bytes("base", &model).unwrap());
        let mut values = tensors[key].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        values[5] = bad;
        tensors.insert(key.into(), Tensor::from_vec(values, tensors[key].shape(), &Device::Cpu).unwrap());
        let blob = blob_of(&tensors, &config);
        assert_eq!(LoraAdapter::from_bytes(&blob, &model).unwrap_err().to_string(), want, "{bad}");
        assert_eq!(
            LoraAdapter::from_archive(&zip_of(&config, &blob), &model, DEFAULT_MAX_BYTES).unwrap_err().to_string(),
            want
        );
    }
    // A trained adapter that diverged cannot be stored.
    let (diverged, vars) = LoraAdapter::init(&LoraConfig::default(), &model, 3, &Device::Cpu).unwrap();
    let down_b = vars.iter().rev().find(|v| v.dims() == [64, 8]).unwrap();
    down_b.set(&Tensor::full(f32::NAN, (64, 8), &Device::Cpu).unwrap()).unwrap();
    assert_eq!(diverged.to_bytes("base", &model).unwrap_err().to_string(), want);
}
