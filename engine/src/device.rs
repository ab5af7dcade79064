//! Which device computes: `distill.device` for sessions, `distill.training_device` for jobs, each
//! `auto`, `cpu`, `cuda` or `cuda:N`.
//!
//! Every model runs on the CPU today: the int8 kernels, the LoRA training ops and the generation loop
//! are CPU code, and their CUDA forms are not written yet. So `auto` is the CPU, and CUDA is an error
//! that says which of the two reasons applies: a build without the `cuda` feature has no CUDA at all;
//! a CUDA build first checks that the device answers (a missing driver or GPU is its own error), then
//! says no model runs there yet. Nothing claims a device that did not do the work.

use candle_core::Device;

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

/// The device a choice means here, or why it cannot be had.
pub fn select(choice: DeviceChoice, what: &str) -> Result<Device> {
    match choice {
        DeviceChoice::Auto | DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => {
            if !CUDA_BUILD {
                return Err(Error::DeviceUnavailable(format!(
                    "{what} = 'cuda' needs a CUDA build of pg_distill (built with --features cuda; scripts/build_cuda.sh); this build runs models on the CPU only"
                )));
            }
            Device::new_cuda(n).map_err(|e| {
                Error::DeviceUnavailable(format!("{what} = 'cuda:{n}': no usable CUDA device {n} ({e})"))
            })?;
            Err(Error::DeviceUnavailable(format!(
                "{what} = 'cuda:{n}': the GPU answers, but no model runs on CUDA in this version (the kernels, training ops and generation are CPU code); use 'cpu' or 'auto'"
            )))
        }
    }
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
        assert!(select(DeviceChoice::Auto, "d").unwrap().is_cpu());
        assert!(select(DeviceChoice::Cpu, "d").unwrap().is_cpu());
        let e = select(DeviceChoice::Cuda(0), "distill.device").unwrap_err().to_string();
        if CUDA_BUILD {
            assert!(e.contains("cuda:0"), "{e}");
        } else {
            assert!(e.contains("needs a CUDA build"), "{e}");
        }
    }
}
