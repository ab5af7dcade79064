//! An adapter as one zip file, the way Hugging Face PEFT keeps it on disk: `adapter_config.json` +
//! `adapter_model.safetensors`. `distill.export_adapter()` writes it, `distill.import_adapter()`
//! reads it (from PEFT's `save_pretrained` directory zipped, e.g. `zip -j a.zip dir/*`).
//!
//! Zip rather than tar: Python (`zipfile`, `shutil.unpack_archive`), every OS and `unzip` read it
//! without extra tools, and entries can be found without reading the whole archive.

use std::io::{Cursor, Read, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::error::{Error, Result};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Larger than any LoRA adapter of a model this engine serves; guards against zip bombs.
const MAX_ENTRY_BYTES: u64 = 1 << 30;

/// The two files of a PEFT adapter directory.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterFiles {
    pub config: serde_json::Value,
    pub safetensors: Vec<u8>,
}

/// A zip holding `adapter_config.json` (pretty-printed) and `adapter_model.safetensors`.
pub fn write_zip(files: &AdapterFiles) -> Result<Vec<u8>> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    // Stored: f32 weights barely compress, and any zip reader handles stored entries.
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored).large_file(false);
    let config = serde_json::to_string_pretty(&files.config).expect("a JSON value serialises");
    zip.start_file(CONFIG_FILE, options).map_err(zip_error)?;
    zip.write_all(config.as_bytes())?;
    zip.start_file(WEIGHTS_FILE, options).map_err(zip_error)?;
    zip.write_all(&files.safetensors)?;
    Ok(zip.finish().map_err(zip_error)?.into_inner())
}

/// The adapter files in a zip; they may sit in a folder inside it (zipping a directory does that).
pub fn read_zip(bytes: &[u8]) -> Result<AdapterFiles> {
    let mut zip = ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
        Error::InvalidInput(format!("the adapter archive is not a readable zip file ({e})"))
    })?;
    let mut config = None;
    let mut safetensors = None;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(zip_error)?;
        let name = entry.name().map_err(zip_error)?.to_string();
        let base = name.rsplit('/').next().unwrap_or(&name);
        let slot = match base {
            CONFIG_FILE => &mut config,
            WEIGHTS_FILE => &mut safetensors,
            _ => continue,
        };
        if slot.is_some() {
            return Err(Error::InvalidInput(format!("the adapter archive holds more than one {base}")));
        }
        if entry.size() > MAX_ENTRY_BYTES {
            return Err(Error::InvalidInput(format!("{name} in the adapter archive is larger than 1 GB")));
        }
        let mut data = Vec::with_capacity(entry.size() as usize);
        (&mut entry).take(MAX_ENTRY_BYTES).read_to_end(&mut data).map_err(|e| {
            Error::InvalidInput(format!("{name} in the adapter archive cannot be read ({e})"))
        })?;
        *slot = Some(data);
    }
    let missing = |f: &str| Error::InvalidInput(format!("the adapter archive has no {f}"));
    let config = config.ok_or_else(|| missing(CONFIG_FILE))?;
    let config = serde_json::from_slice(&config)
        .map_err(|e| Error::InvalidInput(format!("{CONFIG_FILE} in the adapter archive is not JSON ({e})")))?;
    Ok(AdapterFiles { config, safetensors: safetensors.ok_or_else(|| missing(WEIGHTS_FILE))? })
}

fn zip_error(e: zip::result::ZipError) -> Error {
    Error::InvalidInput(format!("adapter archive: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_folder_inside() {
        let files = AdapterFiles { config: serde_json::json!({"peft_type": "LORA", "r": 2}), safetensors: vec![1, 2, 3] };
        assert_eq!(read_zip(&write_zip(&files).unwrap()).unwrap(), files);

        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        let o = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        zip.start_file("out/README.md", o).unwrap();
        zip.write_all(b"hello").unwrap();
        zip.start_file("out/adapter_config.json", o).unwrap();
        zip.write_all(br#"{"r": 4}"#).unwrap();
        zip.start_file("out/adapter_model.safetensors", o).unwrap();
        zip.write_all(&[9; 100]).unwrap();
        let got = read_zip(&zip.finish().unwrap().into_inner()).unwrap();
        assert_eq!(got.config["r"], 4);
        assert_eq!(got.safetensors, vec![9; 100]);
    }

    #[test]
    fn bad_archives() {
        let err = |b: &[u8]| read_zip(b).unwrap_err().to_string();
        assert!(err(b"not a zip").contains("not a readable zip file"), "{}", err(b"not a zip"));
        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file(CONFIG_FILE, SimpleFileOptions::default()).unwrap();
        zip.write_all(b"{}").unwrap();
        let only_config = zip.finish().unwrap().into_inner();
        assert_eq!(err(&only_config), "the adapter archive has no adapter_model.safetensors");
        let good = write_zip(&AdapterFiles { config: serde_json::json!({}), safetensors: vec![0; 64] }).unwrap();
        assert!(err(&good[..good.len() / 2]).contains("not a readable zip file"));
    }
}
