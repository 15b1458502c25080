//! Compute backends: which Burn device the models run on.
//!
//! Model code never names a backend: it takes a [`Device`] (Burn 0.22 picks the
//! backend from the device). This module turns a user's choice into one:
//! `cpu` is Burn's pure-Rust Flex backend (native and wasm), `wgpu` the GPU
//! through wgpu (Vulkan/Metal/DX12 natively, WebGPU in the browser). CUDA is
//! not built (its build script downloads LLVM, which these machines cannot).
//!
//! Also the device-dependent helpers the models call: how many patches to batch,
//! yielding to the browser between passes, and reading tensors back.

pub use burn::tensor::Device;

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, Param, ParamGroup, Quantizer};
use burn::tensor::quantization::{Calibration, QuantScheme, QuantStore, QuantValue, ScaleDtype};
use burn::tensor::{Bool, Int, Tensor};

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

/// In the browser, let the page paint and take input (a Cancel click), e.g. between
/// slices; natively nothing.
pub async fn yield_to_page() {
    #[cfg(target_arch = "wasm32")]
    yield_to_browser().await;
}

/// How many MedLAM patches to stack in one forward pass: `native` (better use of a GPU or
/// of the CPU's threads), but 1 in the browser on the CPU backend, where a pass blocks the
/// page until it ends (~0.3 s per 48³ patch, wasm running on one thread, 2-3 times that on
/// a busy machine); [`yield_on_cpu`] follows each pass.
pub fn patch_batch(device: &burn::tensor::Device, native: usize) -> usize {
    #[cfg(target_arch = "wasm32")]
    if *device == burn::tensor::Device::flex() {
        return native.min(1);
    }
    let _ = device;
    native
}

/// In the browser on the CPU backend, where every tensor operation computes
/// synchronously, let the page run (see [`yield_to_page`]); elsewhere nothing (on
/// WebGPU the work is queued on the GPU and the page is not blocked).
pub async fn yield_on_cpu(device: &burn::tensor::Device) {
    #[cfg(target_arch = "wasm32")]
    if *device == burn::tensor::Device::flex() {
        yield_to_browser().await;
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = device;
}

/// Gives the page a turn ([`yield_on_cpu`]) when more than 100 ms of work passed since
/// the last one: for loops of many small steps on the CPU backend in the browser (the
/// registration's optimisers), where yielding at every step would cost more than it gives.
pub struct Pacer {
    last: std::cell::Cell<web_time::Instant>,
}

impl Default for Pacer {
    fn default() -> Self {
        Self {
            last: std::cell::Cell::new(web_time::Instant::now()),
        }
    }
}

impl Pacer {
    /// Yield to the page if its last turn is over 100 ms ago (wasm CPU backend only).
    pub async fn tick(&self, device: &burn::tensor::Device) {
        if self.last.get().elapsed() > std::time::Duration::from_millis(100) {
            yield_on_cpu(device).await;
            self.last.set(web_time::Instant::now());
        }
    }
}

/// The pause of synchronous versions of pausing computations (`*_pausing(…, &mut no_pause)`):
/// none.
pub fn no_pause() -> std::future::Ready<()> {
    std::future::ready(())
}

/// Let the browser run (paint, handle input) before continuing: a zero-delay timeout.
#[cfg(target_arch = "wasm32")]
pub async fn yield_to_browser() {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, 0);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// Read a tensor back as `f32` values (async: the browser allows no blocking reads).
pub async fn read_f32<const D: usize>(t: burn::tensor::Tensor<D>) -> Result<Vec<f32>> {
    yield_on_cpu(&t.device()).await;
    let data = t
        .into_data_async()
        .await
        .map_err(|e| Error::Backend(format!("reading a tensor back: {e:?}")))?;
    data.convert::<f32>()
        .try_into_vec()
        .map_err(|e| Error::Backend(format!("reading a tensor back: {e:?}")))
}

/// The page's int8 weights: each named parameter of `weights` quantised with its block shape
/// (symmetric int8, min–max calibration, one f16 scale per block, native i8 storage), on the
/// CPU backend, where the page reads them too ([`to_f32_on`] makes them f32 again).
pub fn quantize_int8<M: Module>(model: M, weights: Vec<(String, Vec<u8>)>) -> M {
    let scheme = QuantScheme::default()
        .with_value(QuantValue::Q8S)
        .with_store(QuantStore::Native);
    let mut groups: BTreeMap<Vec<u8>, Vec<String>> = BTreeMap::new();
    for (name, block) in weights {
        groups.entry(block).or_default().push(name);
    }
    let mut model = model.to_device(&Device::flex());
    for (block, names) in groups {
        let mut q = Quantizer::new(
            Calibration::MinMax,
            scheme.per_block(&block, ScaleDtype::F16),
        );
        model = model.quantize_weights_group(&mut q, ParamGroup::from_paths(names));
    }
    model
}

/// Every float parameter of `model` dequantised (where int8) and copied to `device` as f32,
/// the other parameters and constants moved. The page's int8 weight files are read on the
/// CPU backend and passed through this: on WebGPU (Chromium's Tint) Burn 0.22's int8
/// dequantisation kernels fail to compile, while f32 weights run (tests/web_browser.rs).
pub fn to_f32_on<M: Module>(model: M, device: &Device) -> M {
    struct ToF32<'a>(&'a Device);
    impl ModuleMapper for ToF32<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| Tensor::from_data(t.dequantize().into_data(), self.0))
        }
        fn map_int<const D: usize>(
            &mut self,
            param: Param<Tensor<D, Int>>,
        ) -> Param<Tensor<D, Int>> {
            param.map(|t| Tensor::from_data(t.into_data(), self.0))
        }
        fn map_bool<const D: usize>(
            &mut self,
            param: Param<Tensor<D, Bool>>,
        ) -> Param<Tensor<D, Bool>> {
            param.map(|t| Tensor::from_data(t.into_data(), self.0))
        }
    }
    // Constants (e.g. TinyViT's attention-bias index) are not parameters: move them too.
    model.map(&mut ToF32(device)).to_device(device)
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
