//! The prepared-weights file: a model's linear weights already in the kernels' layout
//! (`kernels/block.rs`), written once beside the model and memory-mapped read-only by every backend and
//! worker that serves it, so the page cache holds one copy per machine instead of one per process.
//!
//! Layout: `MAGIC`, the layout version (u32), the header's length (u32), a JSON [`Header`] (the
//! source file's SHA-256 and length, the weight format, each weight's shape and offsets, the payload's
//! SHA-256), zeros up to a page boundary, then the payload: each weight's codes, scales and offsets,
//! every array 64-byte aligned, little-endian. A file is used only when all of that checks out
//! (magic, version, source checksum, format, sizes, payload checksum, every weight's lengths);
//! anything else is reported as [`Invalid`] and the caller rebuilds it. A file is never changed in
//! place: it is written whole under a temporary name and renamed over the old one, so a process that
//! has the old one mapped keeps reading the old, unchanged pages.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kernels::{Buffer, Codes, QuantWeight};

/// Bump when the kernels' layout (block.rs) or this file's layout changes: older files are rebuilt.
pub const LAYOUT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"DSTLPREP";
const PAGE: usize = 4096;
const ALIGN: usize = 64;
/// A header larger than this is not one we wrote.
const MAX_HEADER: usize = 16 << 20;

/// The model file a prepared file was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceId {
    pub sha256: String,
    pub len: u64,
}

impl SourceId {
    /// Reads the whole file through SHA-256 (about 60 ms for the default model's 98 MB on SHA-NI).
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        Ok(Self { sha256: hex(&hasher.finalize()), len })
    }
}

/// Why a prepared file was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    Missing,
    /// Made from another model file, another format or an older layout.
    Stale(String),
    /// Not a file we wrote, or damaged.
    Corrupt(String),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Missing => write!(f, "missing"),
            Invalid::Stale(why) => write!(f, "stale ({why})"),
            Invalid::Corrupt(why) => write!(f, "corrupt ({why})"),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    source_sha256: String,
    source_len: u64,
    format: String,
    payload_len: u64,
    payload_sha256: String,
    weights: Vec<Entry>,
}

/// One weight: shape, codes and the payload offsets of its three arrays (their lengths follow from
/// the shape).
#[derive(Serialize, Deserialize)]
struct Entry {
    name: String,
    n: usize,
    k: usize,
    codes: String,
    data: usize,
    d: usize,
    m: usize,
}

fn codes_name(c: Codes) -> &'static str {
    match c {
        Codes::U8 => "u8",
        Codes::U4 => "u4",
    }
}

/// The weights of one prepared file, mapped.
pub struct PreparedWeights {
    pub path: PathBuf,
    weights: HashMap<String, QuantWeight>,
}

impl PreparedWeights {
    /// Where the prepared file of `model` in weight format `format` lives: beside the model file.
    pub fn path_for(model: &Path, format: &str) -> PathBuf {
        let name = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        model.with_file_name(format!("{name}.{format}.prepared"))
    }

    /// The prepared file at `path`, checked against the model file it must have been made from.
    pub fn open(path: &Path, source: &SourceId, format: &str) -> Result<Self, Invalid> {
        if cfg!(target_endian = "big") {
            return Err(Invalid::Stale("prepared files are little-endian".into()));
        }
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Invalid::Missing),
            Err(e) => return Err(Invalid::Corrupt(format!("cannot open: {e}"))),
        };
        // SAFETY: the map is read-only and private to this process. Files at this path are only ever
        // replaced by rename, never written or truncated in place (see `write`), so its pages do not
        // change while mapped. A file truncated by someone else would fault on access; the checks
        // below read every byte first, so that happens here, at load, if at all.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Invalid::Corrupt(format!("cannot map: {e}")))?;
        let map = Arc::new(map);
        let corrupt = |why: &str| Invalid::Corrupt(why.to_string());
        if map.len() < 16 || &map[..8] != MAGIC {
            return Err(corrupt("not a prepared-weights file"));
        }
        let version = u32::from_le_bytes(map[8..12].try_into().expect("4 bytes"));
        if version != LAYOUT_VERSION {
            return Err(Invalid::Stale(format!("layout version {version}, this build writes {LAYOUT_VERSION}")));
        }
        let header_len = u32::from_le_bytes(map[12..16].try_into().expect("4 bytes")) as usize;
        if header_len > MAX_HEADER || 16 + header_len > map.len() {
            return Err(corrupt("header length out of range"));
        }
        let header: Header =
            serde_json::from_slice(&map[16..16 + header_len]).map_err(|e| corrupt(&format!("header: {e}")))?;
        if header.source_sha256 != source.sha256 || header.source_len != source.len {
            return Err(Invalid::Stale("made from another version of the model file".into()));
        }
        if header.format != format {
            return Err(Invalid::Stale(format!("weight format {}, wanted {format}", header.format)));
        }
        let start = (16 + header_len).next_multiple_of(PAGE);
        if start as u64 + header.payload_len != map.len() as u64 {
            return Err(corrupt("file size does not match its header"));
        }
        if hex(&Sha256::digest(&map[start..])) != header.payload_sha256 {
            return Err(corrupt("payload checksum mismatch"));
        }
        let mut weights = HashMap::with_capacity(header.weights.len());
        for e in header.weights {
            let codes = match e.codes.as_str() {
                "u8" => Codes::U8,
                "u4" => Codes::U4,
                other => return Err(corrupt(&format!("unknown codes {other}"))),
            };
            let (bytes, scales) = QuantWeight::part_lengths(e.n, e.k, codes)
                .ok_or_else(|| corrupt(&format!("{}: impossible shape", e.name)))?;
            let at = |off: usize| start.checked_add(off).filter(|_| off.is_multiple_of(ALIGN));
            let parts = (|| {
                let data = Buffer::mapped(&map, at(e.data)?, bytes)?;
                let d = Buffer::mapped(&map, at(e.d)?, scales)?;
                let m = Buffer::mapped(&map, at(e.m)?, scales)?;
                QuantWeight::from_parts(e.n, e.k, codes, data, d, m)
            })();
            let w = parts.ok_or_else(|| corrupt(&format!("{}: arrays out of range", e.name)))?;
            weights.insert(e.name, w);
        }
        Ok(Self { path: path.to_path_buf(), weights })
    }

    /// The weight called `name` (its GGUF name) if this file holds it with shape `(n, k)`; each
    /// weight is taken once.
    pub fn take(&mut self, name: &str, n: usize, k: usize) -> Option<QuantWeight> {
        let w = self.weights.remove(name)?;
        (w.n() == n && w.k() == k).then_some(w)
    }

    /// Writes `weights` (by GGUF name) as the prepared file at `path` for `source` in `format`:
    /// into a new temporary file beside it, flushed to disk, then renamed over `path`. On failure
    /// nothing is left behind and `path` is untouched.
    pub fn write(
        path: &Path,
        source: &SourceId,
        format: &str,
        weights: &[(String, &QuantWeight)],
    ) -> std::io::Result<()> {
        if cfg!(target_endian = "big") {
            return Err(std::io::Error::other("prepared files are little-endian"));
        }
        // Payload offsets first: each array 64-byte aligned.
        let mut entries = Vec::with_capacity(weights.len());
        let mut at = 0usize;
        let mut place = |bytes: usize| {
            let off = at.next_multiple_of(ALIGN);
            at = off + bytes;
            off
        };
        for (name, w) in weights {
            let (data, d, m) = w.parts();
            entries.push(Entry {
                name: name.clone(),
                n: w.n(),
                k: w.k(),
                codes: codes_name(w.codes()).into(),
                data: place(data.len()),
                d: place(d.len() * 2),
                m: place(m.len() * 2),
            });
        }
        let payload_len = at;
        let offsets: Vec<[usize; 3]> = entries.iter().map(|e| [e.data, e.d, e.m]).collect();
        // The payload in order, through the hash and into the file alike.
        let mut payload_sha = Sha256::new();
        let emit = |out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>| -> std::io::Result<()> {
            let mut pos = 0usize;
            let zeros = [0u8; ALIGN];
            for ((_, w), [od, osc, om]) in weights.iter().zip(&offsets) {
                let (data, d, m) = w.parts();
                for (off, bytes) in [(*od, u8_bytes(data)), (*osc, u16_bytes(d)), (*om, u16_bytes(m))] {
                    out(&zeros[..off - pos])?;
                    out(&bytes)?;
                    pos = off + bytes.len();
                }
            }
            out(&zeros[..payload_len - pos])
        };
        emit(&mut |b| {
            payload_sha.update(b);
            Ok(())
        })?;
        let header = Header {
            source_sha256: source.sha256.clone(),
            source_len: source.len,
            format: format.into(),
            payload_len: payload_len as u64,
            payload_sha256: hex(&payload_sha.finalize()),
            weights: entries,
        };
        let header = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
        let start = (16 + header.len()).next_multiple_of(PAGE);

        let dir = path.parent().unwrap_or(Path::new("."));
        let stem = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let tmp = dir.join(format!(".{stem}.{}.{nanos}.tmp", std::process::id()));
        let result = (|| {
            let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            out.write_all(MAGIC)?;
            out.write_all(&LAYOUT_VERSION.to_le_bytes())?;
            out.write_all(&(header.len() as u32).to_le_bytes())?;
            out.write_all(&header)?;
            out.write_all(&vec![0u8; start - 16 - header.len()])?;
            emit(&mut |b| out.write_all(b))?;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            set_readable(&tmp)?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Serialises the writers of one prepared file: an exclusive `flock` on `<file>.lock` beside it,
/// held while one process builds and writes the file and released when dropped (or by the kernel when
/// the process ends, however it ends). Without it, a pool of new connections after a restart would
/// each load a private copy and write the file at once: N times the model's memory.
pub struct BuildLock {
    _file: Option<std::fs::File>,
}

impl BuildLock {
    /// Waits for the lock, asking `cancelled` every 50 ms (a query cancel ends the wait with
    /// [`crate::Error::Interrupted`]). Where no lock file can be made (a directory this process may
    /// not write) there is no writer to wait for: it returns at once, and the write will fail.
    pub fn acquire(prepared: &Path, cancelled: &dyn Fn() -> bool) -> crate::Result<Self> {
        let mut name = prepared.as_os_str().to_owned();
        name.push(".lock");
        let file = match std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&name) {
            Ok(f) => f,
            Err(_) => return Ok(Self { _file: None }),
        };
        let _ = set_readable(Path::new(&name));
        loop {
            if try_lock(&file)? {
                return Ok(Self { _file: Some(file) });
            }
            if cancelled() {
                return Err(crate::Error::Interrupted);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// An exclusive `flock` without waiting: false while another open file description holds it.
fn try_lock(file: &std::fs::File) -> std::io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor this File owns; released when the File is closed.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(false);
        }
        Err(e)
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Ok(true)
    }
}

/// Every process that serves the model reads the file, whatever its umask.
fn set_readable(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

fn u8_bytes(v: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    std::borrow::Cow::Borrowed(v)
}

fn u16_bytes(v: &[u16]) -> std::borrow::Cow<'_, [u8]> {
    std::borrow::Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weight(n: usize, k: usize, seed: u32) -> QuantWeight {
        let w: Vec<f32> =
            (0..n * k).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect();
        QuantWeight::quantize(&w, n, k)
    }

    fn source() -> SourceId {
        SourceId { sha256: "ab".repeat(32), len: 123 }
    }

    #[test]
    fn round_trip_maps_identical_weights() {
        let dir = std::env::temp_dir().join(format!("prepared-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.gguf.quantized.prepared");
        let (a, b) = (weight(40, 64, 1), weight(16, 96, 2));
        PreparedWeights::write(&path, &source(), "quantized", &[("a".into(), &a), ("b".into(), &b)]).unwrap();
        let mut p = PreparedWeights::open(&path, &source(), "quantized").unwrap();
        let got = p.take("a", 40, 64).unwrap();
        assert!(got.is_mapped());
        assert_eq!(got.parts(), a.parts());
        assert!(p.take("b", 16, 95).is_none(), "a wrong shape is not served");
        assert!(p.take("a", 40, 64).is_none(), "taken once");

        // Stale: another source, another format, another layout version.
        let other = SourceId { sha256: "cd".repeat(32), len: 123 };
        assert!(matches!(PreparedWeights::open(&path, &other, "quantized"), Err(Invalid::Stale(_))));
        assert!(matches!(PreparedWeights::open(&path, &source(), "q8_0"), Err(Invalid::Stale(_))));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8] = 99;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(PreparedWeights::open(&path, &source(), "quantized"), Err(Invalid::Stale(_))));

        // Corrupt: a flipped payload byte, a truncated file, garbage.
        bytes[8] = LAYOUT_VERSION as u8;
        let last = bytes.len() - 100;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(PreparedWeights::open(&path, &source(), "quantized"), Err(Invalid::Corrupt(_))));
        std::fs::write(&path, &bytes[..bytes.len() - 64]).unwrap();
        assert!(matches!(PreparedWeights::open(&path, &source(), "quantized"), Err(Invalid::Corrupt(_))));
        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(PreparedWeights::open(&path, &source(), "quantized"), Err(Invalid::Corrupt(_))));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(PreparedWeights::open(&path, &source(), "quantized").err(), Some(Invalid::Missing));

        // A failed write leaves nothing behind: the target is a directory, so the rename fails.
        std::fs::create_dir(&path).unwrap();
        assert!(PreparedWeights::write(&path, &source(), "quantized", &[("a".into(), &a)]).is_err());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "only the directory remains: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
