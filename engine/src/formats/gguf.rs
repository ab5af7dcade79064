//! Reading GGUF files: the header (metadata + tensor index) and typed metadata accessors.
//! Tensor data is read lazily by the model loader through [`GgufFile::tensor`].

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

use crate::error::{Error, Result};

pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadModelFile { path: path.to_path_buf(), reason };
        let file = File::open(path).map_err(|e| bad(e.to_string()))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| bad(format!("not a valid GGUF file ({e})")))?;
        // A truncated download still has a readable header: check that every tensor lies inside the file.
        let len = std::fs::metadata(path)?.len();
        let needed = content
            .tensor_infos
            .values()
            .map(|info| {
                let bytes = info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
                content.tensor_data_offset + info.offset + bytes as u64
            })
            .max()
            .unwrap_or(0);
        if needed > len {
            return Err(bad(format!("file is truncated: its tensors need {needed} bytes, the file has {len}")));
        }
        Ok(Self { path: path.to_path_buf(), content, reader })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn missing(&self, key: &str) -> Error {
        Error::BadModelFile {
            path: self.path.clone(),
            reason: format!("metadata key {key} is missing or of the wrong type"),
        }
    }

    pub fn u64(&self, key: &str) -> Result<u64> {
        self.get(key).and_then(value_as_u64).ok_or_else(|| self.missing(key))
    }

    pub fn opt_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(value_as_u64)
    }

    pub fn opt_f64(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Value::F32(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            v => value_as_u64(v).map(|v| v as f64),
        }
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key).ok_or_else(|| self.missing(key))
    }

    pub fn opt_bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn opt_str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        }
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        self.opt_str(key).ok_or_else(|| self.missing(key))
    }

    pub fn str_array(&self, key: &str) -> Result<Vec<&str>> {
        let arr = self.get(key).and_then(|v| v.to_vec().ok()).ok_or_else(|| self.missing(key))?;
        arr.iter().map(|v| v.to_string().map(|s| s.as_str()).map_err(|_| self.missing(key))).collect()
    }

    pub fn int_array(&self, key: &str) -> Option<Vec<i64>> {
        let arr = self.get(key)?.to_vec().ok()?;
        arr.iter()
            .map(|v| {
                value_as_u64(v).map(|x| x as i64).or(match v {
                    Value::I32(x) => Some(*x as i64),
                    Value::I64(x) => Some(*x),
                    _ => None,
                })
            })
            .collect()
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// A tensor's shape (outermost first, as [`GgufFile::tensor`] gives it), without reading it.
    pub fn tensor_dims(&self, name: &str) -> Option<Vec<usize>> {
        self.content.tensor_infos.get(name).map(|info| info.shape.dims().to_vec())
    }

    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.has_tensor(name) {
            return Err(Error::BadModelFile { path: self.path.clone(), reason: format!("tensor {name} is missing") });
        }
        Ok(self.content.tensor(&mut self.reader, name, device)?)
    }
}

fn value_as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) if *x >= 0 => Some(*x as u64),
        Value::I16(x) if *x >= 0 => Some(*x as u64),
        Value::I32(x) if *x >= 0 => Some(*x as u64),
        Value::I64(x) if *x >= 0 => Some(*x as u64),
        _ => None,
    }
}
