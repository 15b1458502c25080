//! Compute backends: which Burn device the models run on.
//!
//! Model code never names a backend: it takes a [`Device`] (Burn 0.22 picks the
//! backend from the device). This module turns a user's choice into one:
//! `cpu` is Burn's pure-Rust Flex backend (native and wasm), `wgpu` the GPU
//! through wgpu (Vulkan/Metal/DX12 natively, WebGPU in the browser). CUDA is
//! not built (its build script downloads LLVM, which these machines cannot).

pub use burn::tensor::Device;

use crate::{Error, Result};

/// A compute backend a user can ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// Burn Flex: pure-Rust CPU (multi-threaded natively).
    #[default]
    Cpu,
    /// wgpu: the default GPU adapter (natively Vulkan/Metal/DX12; in the browser WebGPU).
    Wgpu,
}

impl BackendChoice {
    /// Parse `cpu`, `wgpu` (alias `gpu`, `vulkan`, `webgpu`); `cuda` gets a clear refusal.
    pub fn parse(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "wgpu" | "gpu" | "vulkan" | "webgpu" => Ok(Self::Wgpu),
            "cuda" => Err(Error::InvalidArgument(
                "the cuda backend is not built into this binary (its build needs a download of LLVM); \
                 use --backend wgpu for the GPU (Vulkan) or --backend cpu"
                    .into(),
            )),
            other => Err(Error::InvalidArgument(format!(
                "unknown backend '{other}': use cpu or wgpu"
            ))),
        }
    }

    /// Name as accepted by [`Self::parse`].
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
        }
    }

    /// The Burn device for this backend (native: created lazily, initialised on first use).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn device(self) -> Device {
        match self {
            Self::Cpu => Device::flex(),
            Self::Wgpu => Device::wgpu(Default::default()),
        }
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backends_and_refuses_cuda_clearly() {
        assert_eq!(BackendChoice::parse("CPU").unwrap(), BackendChoice::Cpu);
        assert_eq!(BackendChoice::parse("vulkan").unwrap(), BackendChoice::Wgpu);
        let e = BackendChoice::parse("cuda").unwrap_err().to_string();
        assert!(e.contains("not built"), "{e}");
        let e = BackendChoice::parse("tpu").unwrap_err().to_string();
        assert!(e.contains("unknown backend 'tpu'"), "{e}");
    }
}
