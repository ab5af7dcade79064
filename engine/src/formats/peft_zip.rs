//! An adapter as one zip file, the way Hugging Face PEFT keeps it on disk: `adapter_config.json` +
//! `adapter_model.safetensors`. `distill.export_adapter()` writes it, `distill.import_adapter()`
//! reads it (from PEFT's `save_pretrained` directory zipped, e.g. `zip -j a.zip dir/*`).
//!
//! Zip rather than tar: Python (`zipfile`, `shutil.unpack_archive`), every OS and `unzip` read it
//! without extra tools, and entries can be found without reading the whole archive.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::error::{Error, Result};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// A limit on archives for callers without a setting of their own: several times a rank-8 adapter
/// of SmolLM2-135M on all seven targets (10 MB).
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Largest `adapter_config.json` read: PEFT writes about 1 KB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest safetensors header read: it names every tensor (about 40 KB for 30 layers x 7 targets).
pub const MAX_HEADER_BYTES: u64 = 1 << 20;

/// The two files of a PEFT adapter directory.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterFiles {
    pub config: serde_json::Value,
    pub safetensors: Vec<u8>,
}

/// One tensor as a safetensors header describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// safetensors' name of the element type: `F32`, `F16`, `BF16` or `F64` (no other is accepted).
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// What a safetensors file says it holds, read before any of its tensor data.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetensorsHeader {
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` entry (string values), empty without one.
    pub metadata: BTreeMap<String, String>,
    /// Bytes of the JSON header (the file starts with their count, 8 bytes little-endian).
    pub header_len: u64,
    /// Bytes of tensor data after the header, as the tensors' shapes and offsets require.
    pub data_len: u64,
}

impl SafetensorsHeader {
    /// The whole file's length as the header describes it.
    pub fn file_len(&self) -> u64 {
        (8 + self.header_len).saturating_add(self.data_len)
    }
}

/// Reads a safetensors header (at most [`MAX_HEADER_BYTES`]) from the start of `r`, no tensor data.
pub fn read_header(r: &mut impl Read) -> Result<SafetensorsHeader> {
    Ok(read_header_raw(r, u64::MAX)?.0)
}

/// [`read_header`], refusing a file whose header alone passes `max_bytes`; also returns the bytes
/// read (length and JSON), the start of the file.
fn read_header_raw(r: &mut impl Read, max_bytes: u64) -> Result<(SafetensorsHeader, Vec<u8>)> {
    let bad = |m: String| Error::InvalidInput(format!("{WEIGHTS_FILE}: {m}"));
    let mut len = [0u8; 8];
    r.read_exact(&mut len).map_err(|e| bad(format!("cannot read the header length ({e})")))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(format!("the header is {header_len} bytes long, above the limit of {MAX_HEADER_BYTES}")));
    }
    if 8 + header_len > max_bytes {
        return Err(too_large(WEIGHTS_FILE, 8 + header_len, max_bytes));
    }
    let mut raw = vec![0u8; 8 + header_len as usize];
    raw[..8].copy_from_slice(&len);
    r.read_exact(&mut raw[8..]).map_err(|e| bad(format!("cannot read the {header_len}-byte header ({e})")))?;
    let json = &raw[8..];
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| bad(format!("the header is not a JSON object ({e})")))?;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::new();
    for (name, info) in map {
        if name == "__metadata__" {
            let m = info.as_object().ok_or_else(|| bad("__metadata__ is not an object".into()))?;
            for (k, v) in m {
                let v = v.as_str().ok_or_else(|| bad(format!("__metadata__ entry {k} is not a string")))?;
                metadata.insert(k.clone(), v.to_string());
            }
            continue;
        }
        let dtype = info["dtype"].as_str().ok_or_else(|| bad(format!("tensor {name} has no dtype")))?.to_string();
        let size = match dtype.as_str() {
            "F64" => 8,
            "F32" => 4,
            "F16" | "BF16" => 2,
            _ => {
                return Err(bad(format!("tensor {name} has dtype {dtype}; adapter tensors are F32, F16, BF16 or F64")))
            }
        };
        let numbers = |key: &str| -> Option<Vec<u64>> { info[key].as_array()?.iter().map(|v| v.as_u64()).collect() };
        let shape = numbers("shape").ok_or_else(|| bad(format!("tensor {name} has no valid shape")))?;
        let offsets = numbers("data_offsets").filter(|o| o.len() == 2 && o[0] <= o[1]);
        let offsets = offsets.ok_or_else(|| bad(format!("tensor {name} has no valid data_offsets")))?;
        let bytes = shape.iter().try_fold(size, |n: u64, &d| n.checked_mul(d));
        if bytes != Some(offsets[1] - offsets[0]) {
            return Err(bad(format!(
                "tensor {name}: shape {shape:?} of {dtype} does not fill data_offsets {offsets:?}"
            )));
        }
        let shape = shape.into_iter().map(|d| d as usize).collect();
        tensors.push((offsets[0], offsets[1], TensorInfo { name, dtype, shape }));
    }
    // The data is the tensors back to back, in some order, with nothing between or after them.
    tensors.sort_by_key(|(start, end, _)| (*start, *end));
    let mut data_len = 0;
    for (start, end, info) in &tensors {
        if *start != data_len {
            return Err(bad(format!("tensor {} starts at byte {start} of the data, expected {data_len}", info.name)));
        }
        data_len = *end;
    }
    let tensors = tensors.into_iter().map(|(_, _, t)| t).collect();
    Ok((SafetensorsHeader { tensors, metadata, header_len, data_len }, raw))
}

/// The header of a whole safetensors file in memory, which must be exactly as long as it says.
pub fn parse_header(bytes: &[u8]) -> Result<SafetensorsHeader> {
    let header = read_header(&mut Cursor::new(bytes))?;
    if header.file_len() != bytes.len() as u64 {
        return Err(Error::InvalidInput(format!(
            "{WEIGHTS_FILE}: {} bytes, its header describes {}",
            bytes.len(),
            header.file_len()
        )));
    }
    Ok(header)
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
/// See [`read_zip_checked`] for the limits.
pub fn read_zip(bytes: &[u8], max_bytes: u64) -> Result<AdapterFiles> {
    read_zip_checked(bytes, max_bytes, |_, _| Ok(()))
}

/// [`read_zip`], calling `check` on the config and the safetensors header before any tensor data is
/// decompressed. Nothing larger than `max_bytes` is read or inflated: not the archive, not an entry
/// by its declared size nor by what it actually inflates to (the declared size is never trusted),
/// not the tensor data the header describes; the config at most [`MAX_CONFIG_BYTES`] and the header
/// at most [`MAX_HEADER_BYTES`]. The tensor data must be exactly as long as the header says.
pub fn read_zip_checked(
    bytes: &[u8],
    max_bytes: u64,
    check: impl FnOnce(&serde_json::Value, &SafetensorsHeader) -> Result<()>,
) -> Result<AdapterFiles> {
    if bytes.len() as u64 > max_bytes {
        return Err(Error::InvalidInput(format!(
            "the adapter archive is {} bytes, above the limit of {max_bytes} bytes",
            bytes.len()
        )));
    }
    let mut zip = ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| Error::InvalidInput(format!("the adapter archive is not a readable zip file ({e})")))?;
    // Where the two files are, by the central directory alone: nothing is inflated yet.
    let (mut config_at, mut weights_at) = (None, None);
    for i in 0..zip.len() {
        let name = zip.name_for_index(i).expect("an index below len").map_err(zip_error)?;
        let base = name.rsplit('/').next().unwrap_or(&name);
        let slot = match base {
            CONFIG_FILE => &mut config_at,
            WEIGHTS_FILE => &mut weights_at,
            _ => continue,
        };
        if slot.is_some() {
            return Err(Error::InvalidInput(format!("the adapter archive holds more than one {base}")));
        }
        *slot = Some(i);
    }
    let missing = |f: &str| Error::InvalidInput(format!("the adapter archive has no {f}"));
    let (config_at, weights_at) =
        (config_at.ok_or_else(|| missing(CONFIG_FILE))?, weights_at.ok_or_else(|| missing(WEIGHTS_FILE))?);

    let config = {
        let limit = max_bytes.min(MAX_CONFIG_BYTES);
        let (name, entry) = open_entry(&mut zip, config_at, limit)?;
        let mut data = Vec::new();
        entry.take(limit + 1).read_to_end(&mut data).map_err(|e| read_error(&name, e))?;
        if data.len() as u64 > limit {
            return Err(inflates_beyond(&name, limit));
        }
        serde_json::from_slice(&data)
            .map_err(|e| Error::InvalidInput(format!("{CONFIG_FILE} in the adapter archive is not JSON ({e})")))?
    };

    let (name, mut entry) = open_entry(&mut zip, weights_at, max_bytes)?;
    let (header, mut safetensors) = read_header_raw(&mut entry, max_bytes)?;
    if header.file_len() > max_bytes {
        return Err(too_large(&name, header.file_len(), max_bytes));
    }
    check(&config, &header)?;
    // One byte more than the header describes, to tell an entry with more data from an exact one.
    entry.take(header.data_len + 1).read_to_end(&mut safetensors).map_err(|e| read_error(&name, e))?;
    let data = safetensors.len() as u64 - 8 - header.header_len;
    if data != header.data_len {
        let held = if data > header.data_len { "more".to_string() } else { data.to_string() };
        return Err(Error::InvalidInput(format!(
            "{name} in the adapter archive holds {held} bytes of tensor data, its header describes {}",
            header.data_len
        )));
    }
    Ok(AdapterFiles { config, safetensors })
}

/// Entry `i` of `zip` and its name, refused when it declares more than `limit` bytes.
fn open_entry<'a, 'b>(
    zip: &'a mut ZipArchive<Cursor<&'b [u8]>>,
    i: usize,
    limit: u64,
) -> Result<(String, zip::read::ZipFile<'a, Cursor<&'b [u8]>>)> {
    let entry = zip.by_index(i).map_err(zip_error)?;
    let name = entry.name().map_err(zip_error)?.to_string();
    if entry.size() > limit {
        return Err(too_large(&name, entry.size(), limit));
    }
    Ok((name, entry))
}

fn too_large(name: &str, bytes: u64, limit: u64) -> Error {
    Error::InvalidInput(format!("{name} in the adapter archive is {bytes} bytes, above the limit of {limit} bytes"))
}

fn inflates_beyond(name: &str, limit: u64) -> Error {
    Error::InvalidInput(format!("{name} in the adapter archive inflates to more than the limit of {limit} bytes"))
}

fn read_error(name: &str, e: std::io::Error) -> Error {
    Error::InvalidInput(format!("{name} in the adapter archive cannot be read ({e})"))
}

fn zip_error(e: zip::result::ZipError) -> Error {
    Error::InvalidInput(format!("adapter archive: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of one F32 tensor `w` of `n` values.
    fn safetensors_file(n: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n], &data).unwrap();
        safetensors::serialize([("w", view)], None).unwrap()
    }

    /// A zip of `(name, bytes)` entries, deflated.
    fn deflated_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        let o = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        for (name, bytes) in entries {
            zip.start_file(*name, o).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    /// Sets the uncompressed size that the local and the central header of entry `name` declare.
    fn declare_size(zip: &mut [u8], name: &str, size: u32) {
        let mut patched = 0;
        for i in 0..zip.len() - 4 {
            let (sig, size_at, name_at) = match &zip[i..i + 4] {
                [0x50, 0x4b, 0x03, 0x04] => ("local", 22, 30),
                [0x50, 0x4b, 0x01, 0x02] => ("central", 24, 46),
                _ => continue,
            };
            if zip.get(i + name_at..i + name_at + name.len()) == Some(name.as_bytes()) {
                zip[i + size_at..i + size_at + 4].copy_from_slice(&size.to_le_bytes());
                patched += 1;
                let _ = sig;
            }
        }
        assert_eq!(patched, 2, "both headers of {name}");
    }

    #[test]
    fn round_trip_and_folder_inside() {
        let files =
            AdapterFiles { config: serde_json::json!({"peft_type": "LORA", "r": 2}), safetensors: safetensors_file(3) };
        assert_eq!(read_zip(&write_zip(&files).unwrap(), DEFAULT_MAX_BYTES).unwrap(), files);

        let weights = safetensors_file(100);
        let zip = deflated_zip(&[
            ("out/README.md", b"hello"),
            ("out/adapter_config.json", br#"{"r": 4}"#),
            ("out/adapter_model.safetensors", &weights),
        ]);
        let got = read_zip(&zip, DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(got.config["r"], 4);
        assert_eq!(got.safetensors, weights);
        let header = parse_header(&weights).unwrap();
        assert_eq!(header.tensors, [TensorInfo { name: "w".into(), dtype: "F32".into(), shape: vec![100] }]);
        assert_eq!((header.data_len, header.file_len()), (400, weights.len() as u64));
    }

    #[test]
    fn bad_archives() {
        let err = |b: &[u8]| read_zip(b, DEFAULT_MAX_BYTES).unwrap_err().to_string();
        assert!(err(b"not a zip").contains("not a readable zip file"), "{}", err(b"not a zip"));
        let only_config = deflated_zip(&[(CONFIG_FILE, b"{}")]);
        assert_eq!(err(&only_config), "the adapter archive has no adapter_model.safetensors");
        let good =
            write_zip(&AdapterFiles { config: serde_json::json!({}), safetensors: safetensors_file(16) }).unwrap();
        assert!(err(&good[..good.len() / 2]).contains("not a readable zip file"));
        // Tensor data shorter or longer than the header says.
        let weights = safetensors_file(16);
        let short = deflated_zip(&[(CONFIG_FILE, b"{}"), (WEIGHTS_FILE, &weights[..weights.len() - 4])]);
        assert!(err(&short).ends_with("holds 60 bytes of tensor data, its header describes 64"), "{}", err(&short));
        let long = deflated_zip(&[(CONFIG_FILE, b"{}"), (WEIGHTS_FILE, &[&weights[..], &[0; 4]].concat())]);
        assert!(err(&long).ends_with("holds more bytes of tensor data, its header describes 64"), "{}", err(&long));
        // A header that claims more than the limit on headers.
        let huge_header = [&(2u64 << 20).to_le_bytes()[..], &[b' '; 64]].concat();
        let zip = deflated_zip(&[(CONFIG_FILE, b"{}"), (WEIGHTS_FILE, &huge_header)]);
        assert!(err(&zip).contains("the header is 2097152 bytes long, above the limit of 1048576"), "{}", err(&zip));
    }

    /// Nothing larger than the limit is read or inflated: the archive, an entry by its declared size,
    /// an entry that inflates to more than it declares, tensor data the header describes.
    #[test]
    fn size_limits() {
        let limit = 1 << 20;
        let err = |b: &[u8]| read_zip(b, limit).unwrap_err().to_string();
        let stored =
            write_zip(&AdapterFiles { config: serde_json::json!({}), safetensors: safetensors_file(300_000) }).unwrap();
        assert!(stored.len() > 1 << 20);
        assert_eq!(
            err(&stored),
            format!("the adapter archive is {} bytes, above the limit of 1048576 bytes", stored.len())
        );

        // 40 MB of zeros deflate to about 40 KB: refused by the size the entry declares.
        let bomb = [&safetensors_file(4)[..], &vec![0; 40 << 20]].concat();
        let mut zip = deflated_zip(&[(CONFIG_FILE, b"{}"), (WEIGHTS_FILE, &bomb)]);
        assert!(zip.len() < 100 << 10, "{} bytes", zip.len());
        assert_eq!(
            err(&zip),
            format!(
                "adapter_model.safetensors in the adapter archive is {} bytes, above the limit of 1048576 bytes",
                bomb.len()
            )
        );
        // The same entry declaring 100 bytes: reading stops one byte after the 16 its header describes.
        declare_size(&mut zip, WEIGHTS_FILE, 100);
        assert!(err(&zip).starts_with("adapter_model.safetensors in the adapter archive"), "{}", err(&zip));
        // A config that declares 10 bytes and inflates to 2 MB.
        let mut zip = deflated_zip(&[(CONFIG_FILE, &vec![b' '; 2 << 20]), (WEIGHTS_FILE, &safetensors_file(4))]);
        declare_size(&mut zip, CONFIG_FILE, 10);
        assert!(err(&zip).starts_with("adapter_config.json in the adapter archive"), "{}", err(&zip));
        assert!(read_zip(&zip, u64::MAX).is_err(), "the config is read to at most 1 MiB whatever the limit");

        // A header describing more tensor data than the limit: refused before it is read.
        let header = br#"{"w":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}"#;
        let big = [&(header.len() as u64).to_le_bytes()[..], header].concat();
        let zip = deflated_zip(&[(CONFIG_FILE, b"{}"), (WEIGHTS_FILE, &big)]);
        assert_eq!(
            err(&zip),
            "adapter_model.safetensors in the adapter archive is 4000074 bytes, above the limit of 1048576 bytes"
        );
    }

    /// The check sees the config and header before any tensor data is read.
    #[test]
    fn check_runs_on_the_header_before_the_data() {
        let weights = safetensors_file(8);
        // No tensor data at all: the check's verdict comes first.
        let header_only = &weights[..weights.len() - 32];
        let zip = deflated_zip(&[(CONFIG_FILE, br#"{"r": 4}"#), (WEIGHTS_FILE, header_only)]);
        let refused = read_zip_checked(&zip, DEFAULT_MAX_BYTES, |config, header| {
            assert_eq!(config["r"], 4);
            assert_eq!(header.tensors[0].shape, [8]);
            Err(Error::InvalidInput("wrong shape".into()))
        });
        assert_eq!(refused.unwrap_err().to_string(), "wrong shape");
        let accepted = read_zip_checked(&zip, DEFAULT_MAX_BYTES, |_, _| Ok(()));
        assert!(accepted.unwrap_err().to_string().contains("holds 0 bytes of tensor data"));
    }

    #[test]
    fn headers_must_describe_their_data() {
        let file = |json: &str, data: usize| {
            [&(json.len() as u64).to_le_bytes()[..], json.as_bytes(), &vec![0; data]].concat()
        };
        let err = |json: &str, data: usize| parse_header(&file(json, data)).unwrap_err().to_string();
        assert!(
            err(r#"{"w":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#, 16).contains("tensor w has dtype I64")
        );
        assert!(
            err(r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8).contains("does not fill data_offsets")
        );
        assert!(err(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#, 16)
            .contains("starts at byte 8 of the data, expected 0"));
        assert!(err(r#"{"w":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}}"#, 8)
            .contains("does not fill"));
        let json = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let n = 8 + json.len() + 8;
        assert!(err(json, 9).ends_with(&format!("{} bytes, its header describes {n}", n + 1)), "{}", err(json, 9));
        let ok = parse_header(&file(
            r#"{"__metadata__":{"a":"b"},"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}}"#,
            8,
        ))
        .unwrap();
        assert_eq!((ok.metadata["a"].as_str(), ok.data_len), ("b", 8));
    }
}
