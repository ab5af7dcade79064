//! Which device computes: `distill.device` for sessions, `distill.training_device` for jobs, each
//! `auto`, `cpu`, `cuda` or `cuda:N`.
//!
//! On a GPU a model holds its weights in bf16 and runs the device path (`models/llama/device_path.rs`,
//! candle's own ops); on the CPU it runs the CPU path (int8 kernels, hand-written training ops). `auto`
//! is CUDA device 0 when the build has CUDA and the device answers, else the CPU; `cuda` is an error
//! that says why when it cannot be had (a build without the `cuda` feature, or no usable device: no
//! GPU, no driver). The answer is kept per process: a CUDA context is costly to make, and a model
//! loaded on one must be fed tensors of the same one.

use candle_core::Device;
use parking_lot::Mutex;
use std::collections::HashMap;

use crate::error::{Error, Result};

/// A parsed device setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceChoice {
    pub fn parse(setting: &str, what: &str) -> Result<Self> {
        let s = setting.trim().to_ascii_lowercase();
        let bad = || Error::InvalidInput(format!("{what} must be auto, cpu, cuda or cuda:N, not \"{setting}\""));
        match s.as_str() {
            "" | "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) if n < 64 => Ok(Self::Cuda(n)),
                _ => Err(bad()),
            },
        }
    }
}

/// Whether this build has candle's CUDA backend (`--features cuda`).
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

/// CUDA device `n` of this process, made once (or why it could not be).
fn cuda(n: usize) -> std::result::Result<Device, String> {
    static DEVICES: Mutex<Option<HashMap<usize, std::result::Result<Device, String>>>> = Mutex::new(None);
    DEVICES
        .lock()
        .get_or_insert_with(HashMap::new)
        .entry(n)
        .or_insert_with(|| {
            // candle's error carries a backtrace when RUST_BACKTRACE is set: its first line says it.
            Device::new_cuda(n).map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())
        })
        .clone()
}

/// The device a choice means here, or why it cannot be had.
pub fn select(choice: DeviceChoice, what: &str) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto if !CUDA_BUILD => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(cuda(0).unwrap_or(Device::Cpu)),
        DeviceChoice::Cuda(_) if !CUDA_BUILD => Err(Error::DeviceUnavailable(format!(
            "{what} = 'cuda' needs a CUDA build of pg_distill (built with --features cuda; scripts/build_cuda.sh); this build runs models on the CPU only"
        ))),
        DeviceChoice::Cuda(n) => cuda(n)
            .map_err(|e| Error::DeviceUnavailable(format!("{what} = 'cuda:{n}': no usable CUDA device {n} ({e})"))),
    }
}

/// Free and total bytes of a GPU's memory (None for the CPU, or where the driver does not say).
pub fn memory_info(device: &Device) -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
        return Some((free as u64, total as u64));
    }
    let _ = device;
    None
}

/// A device as the settings name it (`cpu`, `cuda:0`), for DESCRIBE.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_cuda_is_a_clear_error() {
        assert_eq!(DeviceChoice::parse("AUTO", "d").unwrap(), DeviceChoice::Auto);
        assert_eq!(DeviceChoice::parse("", "d").unwrap(), DeviceChoice::Auto);
        assert_eq!(DeviceChoice::parse("cpu", "d").unwrap(), DeviceChoice::Cpu);
        assert_eq!(DeviceChoice::parse("cuda", "d").unwrap(), DeviceChoice::Cuda(0));
        assert_eq!(DeviceChoice::parse("cuda:3", "d").unwrap(), DeviceChoice::Cuda(3));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:99", "metal"] {
            let e = DeviceChoice::parse(bad, "distill.device").unwrap_err().to_string();
            assert!(e.contains("auto, cpu, cuda or cuda:N") && e.contains(bad), "{e}");
        }
        assert!(select(DeviceChoice::Cpu, "d").unwrap().is_cpu());
        match select(DeviceChoice::Cuda(0), "distill.device") {
            // A CUDA build on a machine with a GPU: auto is that GPU.
            Ok(d) => {
                assert!(CUDA_BUILD && d.is_cuda());
                assert!(select(DeviceChoice::Auto, "d").unwrap().same_device(&d));
            }
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains(if CUDA_BUILD { "no usable CUDA device 0" } else { "needs a CUDA build" }), "{e}");
                assert!(select(DeviceChoice::Auto, "d").unwrap().is_cpu());
            }
        }
    }
}
